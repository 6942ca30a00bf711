"""Ballé 2017 (factorized prior) and Ballé 2018 (scale hyperprior) single-image codecs.

DSIN builds on these models; NDIC reuses the same priors (``priors.py``) and transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from stereodsc.models.base import CompressionModel, check_choice
from stereodsc.models.layers import ENCODERS, encoder_transform, synthesis_transform
from stereodsc.models.priors import PRIORS, FactorizedPrior, ScaleHyperprior
from stereodsc.models.refine_net import RefineNet

EDGE_CHANNELS = (32, 64, 64)


def build_backbone(
    backbone: str, N: int, M: int, encoder: str, edge_channels: Sequence[int], hyper_channels: int | None
) -> tuple[nn.Sequential, FactorizedPrior | ScaleHyperprior]:
    """(g_a, prior) of a transmitted latent: what every model's camera side is made of.

    ``hyper_channels`` is the width of the hyperprior's h_a / h_s and of z (None: N, as Ballé 2018);
    the factorized prior has no such part.
    """
    check_choice("backbone", "backbone", backbone, PRIORS)
    check_choice("backbone", "encoder", encoder, ENCODERS)
    prior = PRIORS[backbone](hyper_channels or N, M)
    return encoder_transform(encoder, N, M, edge_channels), prior


class BalleModel(CompressionModel):
    """g_a -> prior -> g_s; 4-stage transforms (``encoder`` picks g_a's form), N, M channels.

    ``post_width`` > 0 adds a residual post-filter on the host (``post_net``: the SI-Net's dilated
    chain on the decode alone, its last layer starting at zero): the full-resolution refinement that
    most of DSIN's SI-Net gain was, for an intra decode too. It changes nothing a camera sends.

    Data flow (the hyperprior part only for Ballé 2018)::

        x ──g_a──> y ──Q──> y_hat ──g_s (, post_net)──> x_hat
                   │          ^
                  |.|         │ scales (GaussianConditional)
                   v          │
                  h_a ──> z ──Q──> z_hat ──h_s──┘

        likelihoods = {"y": p(y_hat) (, "z": p(z_hat))}
    """

    prior_name: ClassVar[str]  # the default prior; a subclass with a ``backbone`` option passes it in ``extra``
    host_only_options = frozenset({"post_width"})
    fresh_modules: ClassVar[dict[str, str]] = {"post_width": "post_net."}

    def __init__(
        self,
        N: int = 64,
        M: int = 96,
        encoder: str = "full",
        edge_channels: Sequence[int] = EDGE_CHANNELS,
        hyper_channels: int | None = None,
        post_width: int = 0,
        **extra: Any,
    ) -> None:
        edge_channels = [int(c) for c in edge_channels]
        backbone = extra.get("backbone", self.prior_name)
        g_a, prior = build_backbone(backbone, N, M, encoder, edge_channels, hyper_channels)
        options = {
            "N": N,
            "M": M,
            "encoder": encoder,
            "edge_channels": edge_channels,
            "hyper_channels": hyper_channels,
            "post_width": post_width,
            **extra,
        }
        super().__init__(options, stride=16 * prior.stride_factor)
        self.g_a = g_a
        self.prior = prior
        self.g_s = synthesis_transform((M, N, N, N), N)
        self.post_net = RefineNet(post_width, residual=True, inputs=1) if post_width > 0 else None
        if encoder == "minimal" and hyper_channels is not None:
            # N is then the decoder's width alone: the host may grow it (one codec's qualities may differ)
            self.host_only_options = self.host_only_options | {"N"}

    def decode(self, y_hat: Tensor) -> Tensor:
        """y_hat -> the decoded image (unclamped): g_s, then the post-filter if the model has one."""
        x_dec = self.g_s(y_hat)
        return x_dec if self.post_net is None else self.post_net(x_dec)

    def code(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x -> (decoded image, likelihoods of the transmitted latents)."""
        y_hat, likelihoods = self.prior(self.g_a(x))
        return self.decode(y_hat), likelihoods

    def forward(self, x: Tensor, side: Tensor | None = None) -> dict[str, Any]:
        self.check_inputs(x, side)
        x_hat, likelihoods = self.code(x)
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None = None) -> Tensor:
        return self.decode(latents["y"]).clamp(0, 1)


class Balle2017(BalleModel):
    """Ballé et al. 2017 factorized prior, in the 4-stage form NDIC's encoders use (CompressAI's
    FactorizedPrior). Deviation: NDIC's own Ballé2017 baseline has a 3-stage 9x9/4, 5x5/2, 5x5/2
    encoder; we use the 4 x 5x5/2 backbone that NDIC, NDIC-CAM and our DSIN build on, so the
    no-side-information baseline differs from the SI models only by the side information."""

    name = "balle2017"
    prior_name = "balle2017"


class Balle2018(BalleModel):
    """Ballé et al. 2018 scale hyperprior (CompressAI's bmshj2018), zero-mean, sigma >= 0.11."""

    name = "balle2018"
    prior_name = "balle2018"
