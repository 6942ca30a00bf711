"""The interface every codec implements (training, and the edge/host split used by export)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from stereodsc.errors import ConfigError
from stereodsc.models.entropy_models import EntropyBottleneck
from stereodsc.models.priors import FactorizedPrior, ScaleHyperprior

Distortion = Callable[[Tensor, Tensor], Tensor]


def bits(likelihoods: Iterable[Tensor]) -> Tensor:
    """Estimated information content in bits: -sum log2 p."""
    return torch.stack([-torch.log2(p).sum() for p in likelihoods]).sum()


def bpp(likelihoods: Iterable[Tensor], x: Tensor) -> Tensor:
    """Bits per pixel of the image batch x (N x H x W pixels)."""
    return bits(likelihoods) / (x.shape[0] * x.shape[2] * x.shape[3])


class CompressionModel(nn.Module):
    """Base class: options bookkeeping, input checks, aux loss and parameter groups.

    Every model transmits ``prior(g_a(x))``, so ``analysis``, ``indexes`` and ``entropy_models``
    live here; subclasses set ``name``, ``uses_side_info``, ``g_a``, ``prior`` and implement
    ``forward`` and ``synthesis``. ``loss`` here is the plain rate-distortion objective
    ``lmbda * 255^2 * D(x_hat, x) + bpp`` (NDIC's scaling); models with more terms override it.
    """

    name: ClassVar[str]
    uses_side_info: ClassVar[bool] = False
    # Options that only shape the host's graph (not the edge graph, the latents or the wire): the qualities
    # of one exported codec may differ in them (DSIN's SI-Net width and residual form).
    host_only_options: frozenset[str] = frozenset()
    # Options that weigh the training loss and shape no graph (DSIN's si_weight): a warm start may change them
    loss_only_options: ClassVar[frozenset[str]] = frozenset()
    # host-only option -> the module (state_dict prefix) that starts fresh when a warm start changes it
    fresh_modules: ClassVar[dict[str, str]] = {}
    stride: int
    g_a: nn.Module  # x -> transmitted latent
    prior: FactorizedPrior | ScaleHyperprior  # entropy model(s) of what is transmitted

    def __init__(self, options: dict[str, Any], stride: int) -> None:
        super().__init__()
        self._options = dict(options)
        self.stride = stride

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable; ``build_model(**model.config)`` rebuilds the same architecture."""
        return {"name": self.name, **self._options}

    def check_image(self, x: Tensor) -> None:
        """Raise ValueError (naming the fix) for an image this model cannot take."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"{self.name}: image size {h}x{w} is not a multiple of {self.stride}; "
                f"pad the input to a multiple of {self.stride} and crop the output back"
            )

    def check_side(self, side: Tensor | None, shape: torch.Size | None = None) -> Tensor:
        """Return the side image, or raise ValueError naming the fix if it is missing or misshapen."""
        if side is None:
            raise ValueError(f"{self.name} decodes with side information: pass the other camera's image as side")
        if shape is not None and side.shape != shape:
            raise ValueError(
                f"{self.name}: side image has shape {tuple(side.shape)}, x has {tuple(shape)}; "
                "they must match (rectify/crop/pad both the same way)"
            )
        return side

    def check_inputs(self, x: Tensor, side: Tensor | None) -> None:
        self.check_image(x)
        if self.uses_side_info:
            self.check_side(side, x.shape)

    def forward(self, x: Tensor, side: Tensor | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def rd_loss(self, out: dict[str, Any], x: Tensor, lmbda: float, distortion: Distortion) -> dict[str, Tensor]:
        """The shared rate-distortion terms: transmitted bpp and distortion of x_hat."""
        rate = bpp(out["likelihoods"].values(), x)
        dist = distortion(out["x_hat"], x)
        return {"loss": lmbda * 255**2 * dist + rate, "bpp": rate, "distortion": dist}

    def loss(
        self, out: dict[str, Any], x: Tensor, side: Tensor | None, lmbda: float, distortion: Distortion
    ) -> dict[str, Tensor]:
        return self.rd_loss(out, x, lmbda, distortion)

    def aux_loss(self) -> Tensor:
        """Sum of the entropy bottlenecks' quantile losses (optimise with the aux parameters)."""
        losses = [m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck)]
        return torch.stack(losses).sum()

    def main_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith("quantiles")]

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.endswith("quantiles")]

    def analysis(self, x: Tensor) -> dict[str, Tensor]:
        """Edge side: rounded (integer-valued float) latents of everything transmitted."""
        self.check_image(x)
        return self.prior.analysis(self.g_a(x))

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None) -> Tensor:
        """Host side: x_hat in [0, 1] from the decoded latents (and the side image for SI models)."""
        raise NotImplementedError

    def indexes(self, latents: dict[str, Tensor]) -> dict[str, Tensor]:
        """Table row per element for latents coded with a conditional model (empty if none).

        The hyperprior's y is coded with ``GaussianConditional``: its rows come from h_s(z), which
        both the edge (to encode) and the host (to decode) must compute identically.
        """
        return self.prior.indexes(latents)

    def entropy_models(self) -> dict[str, nn.Module]:
        """Transmitted latent name -> its EntropyBottleneck / GaussianConditional."""
        return self.prior.entropy_models()


def check_choice(model: str, option: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ConfigError unless value is one of choices."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{model}: option {option}={value!r} is invalid; valid choices: {choices}")


def round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple
