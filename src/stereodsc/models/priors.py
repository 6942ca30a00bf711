"""Latent priors: what sits between g_a and g_s, shared by every model's transmitted latent.

NDIC picks one with its ``backbone`` option; the Ballé models and DSIN use them directly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stereodsc.models.entropy_models import EntropyBottleneck, GaussianConditional
from stereodsc.models.layers import conv, deconv


class FactorizedPrior(nn.Module):
    """What sits between g_a and g_s in Ballé 2017: one factorized entropy bottleneck on y."""

    stride_factor = 1

    def __init__(self, N: int, M: int) -> None:
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(M)

    def forward(self, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        y_hat, likelihood = self.entropy_bottleneck(y)
        return y_hat, {"y": likelihood}

    def analysis(self, y: Tensor) -> dict[str, Tensor]:
        return {"y": torch.round(y)}

    def indexes(self, latents: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def entropy_models(self) -> dict[str, nn.Module]:
        return {"y": self.entropy_bottleneck}


class ScaleHyperprior(nn.Module):
    """Ballé 2018: z = h_a(|y|) is sent first (factorized); h_s(z_hat) gives y's Gaussian scales.

    h_a / h_s as CompressAI's bmshj2018 (the last ReLU keeps scales non-negative before the 0.11
    lower bound). It adds two stride-2 stages, so inputs must be multiples of 64.
    """

    stride_factor = 4

    def __init__(self, N: int, M: int) -> None:
        super().__init__()
        self.h_a = nn.Sequential(conv(M, N, 3, 1), nn.ReLU(), conv(N, N), nn.ReLU(), conv(N, N))
        self.h_s = nn.Sequential(deconv(N, N), nn.ReLU(), deconv(N, N), nn.ReLU(), conv(N, M, 3, 1), nn.ReLU())
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional()

    def forward(self, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z_hat, z_likelihood = self.entropy_bottleneck(self.h_a(torch.abs(y)))
        y_hat, y_likelihood = self.gaussian_conditional(y, self.h_s(z_hat))
        return y_hat, {"y": y_likelihood, "z": z_likelihood}

    def analysis(self, y: Tensor) -> dict[str, Tensor]:
        return {"y": torch.round(y), "z": torch.round(self.h_a(torch.abs(y)))}

    def indexes(self, latents: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"y": self.gaussian_conditional.build_indexes(self.h_s(latents["z"]))}

    def entropy_models(self) -> dict[str, nn.Module]:
        return {"y": self.gaussian_conditional, "z": self.entropy_bottleneck}


PRIORS: dict[str, type[FactorizedPrior] | type[ScaleHyperprior]] = {
    "balle2017": FactorizedPrior,
    "balle2018": ScaleHyperprior,
}
