"""Ballé 2017 (factorized prior) and Ballé 2018 (scale hyperprior) single-image codecs.

DSIN builds on the factorized model; NDIC reuses the same priors (``priors.py``) and transforms.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from stereodsc.models.base import CompressionModel
from stereodsc.models.layers import analysis_transform, synthesis_transform
from stereodsc.models.priors import PRIORS


class BalleModel(CompressionModel):
    """g_a -> prior -> g_s with 4 x (conv 5x5 stride 2 + GDN) transforms; N, M channels."""

    prior_name: ClassVar[str]

    def __init__(self, N: int = 64, M: int = 96, **extra: Any) -> None:
        prior = PRIORS[self.prior_name](N, M)
        super().__init__({"N": N, "M": M, **extra}, stride=16 * prior.stride_factor)
        self.g_a = analysis_transform(N, M)
        self.prior = prior
        self.g_s = synthesis_transform((M, N, N, N), N)

    def code(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x -> (decoded image, likelihoods of the transmitted latents)."""
        latent_hat, likelihoods = self.prior(self.g_a(x))
        return self.g_s(latent_hat), likelihoods

    def forward(self, x: Tensor, y: Tensor | None = None) -> dict[str, Any]:
        self.check_inputs(x, y)
        x_hat, likelihoods = self.code(x)
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None = None) -> Tensor:
        return self.g_s(latents["y"]).clamp(0, 1)


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
