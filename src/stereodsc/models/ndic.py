"""NDIC: neural distributed image compression with common information (Mital et al., DCC 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from stereodsc.models.base import CompressionModel, Distortion, bpp, check_choice
from stereodsc.models.entropy_models import EntropyBottleneck
from stereodsc.models.layers import analysis_transform, synthesis_transform
from stereodsc.models.priors import PRIORS


class NDIC(CompressionModel):
    """x is sent alone; the decoder derives common information w = f(y) from the side image.

    Parts (notes §2.1): ``g_a`` x -> transmitted latent (under the ``backbone`` prior);
    ``g_ay`` y -> h_y, the side image's private latent; ``f`` y -> w, the common information
    (w + sqrt(0.001) N(0, 1) in training); neither h_y nor w is quantised or sent: their rates are
    regularisers. ``g_s`` decodes x from concat(x latent, w); ``g_sy`` reconstructs y from
    concat(h_y, w), an auxiliary task.

    Loss: lmbda 255^2 [D(x, x_hat) + alpha D(y, y_hat)] + R_x + alpha R_y + beta R_w.

    Deviations from the reference code (ipc-lab/NDIC):
    - The intended decoder: four distinct deconvolutions. The reference decoders called deconv2
      twice and never used deconv3 (fixed upstream in 53a10a1; the published weights and curves
      still come from the buggy decoder).
    - backbone="balle2018" puts the scale hyperprior on the x latent only; the y branch keeps its
      continuous factorized rate (the reference also gave h_y a continuous hyperprior).
    - Symbols are round(latent) (no median offset), see ``entropy_models``.
    """

    name = "ndic"
    uses_side_info = True
    w_noise_std = math.sqrt(0.001)

    def __init__(
        self,
        N: int = 64,
        M: int = 96,
        backbone: str = "balle2017",
        alpha: float = 1.0,
        beta: float = 1.0,
        **extra: Any,
    ) -> None:
        check_choice(self.name, "backbone", backbone, PRIORS)
        prior = PRIORS[backbone](N, M)
        options = {"N": N, "M": M, "backbone": backbone, "alpha": alpha, "beta": beta, **extra}
        super().__init__(options, stride=16 * prior.stride_factor)
        self.alpha, self.beta = float(alpha), float(beta)
        self.g_a = analysis_transform(N, M)
        self.prior = prior
        self.g_ay = analysis_transform(N, M)
        self.f = analysis_transform(N, M)
        self.entropy_bottleneck_hy = EntropyBottleneck(M, quantize=False)
        self.entropy_bottleneck_w = EntropyBottleneck(M, quantize=False)
        self.g_s = self.build_x_decoder(N, M)
        self.g_sy = synthesis_transform((2 * M, N, N, N), N)

    def build_x_decoder(self, N: int, M: int) -> nn.Sequential:
        return synthesis_transform((2 * M, N, N, N), N)

    @property
    def side_depth(self) -> int:
        """How many y-decoder stages the x decoder needs at synthesis time (none for NDIC)."""
        return 0

    def y_features(self, h_y: Tensor, w: Tensor, depth: int) -> list[Tensor]:
        """Outputs of the first ``depth`` stages of the y decoder (the last one is y_hat)."""
        t = torch.cat([h_y, w], 1)
        features = []
        for stage in list(self.g_sy)[:depth]:
            t = stage(t)
            features.append(t)
        return features

    def decode_x(self, x_latent: Tensor, w: Tensor, y_feats: Sequence[Tensor]) -> Tensor:
        return self.g_s(torch.cat([x_latent, w], 1))

    def forward(self, x: Tensor, y: Tensor | None = None) -> dict[str, Any]:
        self.check_inputs(x, y)
        assert y is not None
        x_latent, likelihoods = self.prior(self.g_a(x))
        h_y, w = self.g_ay(y), self.f(y)
        if self.training:
            w = w + self.w_noise_std * torch.randn_like(w)
        _, h_y_likelihood = self.entropy_bottleneck_hy(h_y)
        _, w_likelihood = self.entropy_bottleneck_w(w)
        y_feats = self.y_features(h_y, w, depth=len(self.g_sy))
        return {
            "x_hat": self.decode_x(x_latent, w, y_feats),
            "likelihoods": likelihoods,
            "y_hat": y_feats[-1],
            "rates": {"h_y": bpp([h_y_likelihood], x), "w": bpp([w_likelihood], x)},
        }

    def loss(
        self, out: dict[str, Any], x: Tensor, y: Tensor | None, lmbda: float, distortion: Distortion
    ) -> dict[str, Tensor]:
        y = self.check_side(y, x.shape)
        terms = self.rd_loss(out, x, lmbda, distortion)
        d_y = distortion(out["y_hat"], y)
        rates = out["rates"]
        # A term whose weight is 0 is left out, not multiplied by 0: with alpha = 0 (NDIC-CAM's default)
        # nothing trains the y decoder's last stage, its output may overflow, and 0 * inf is NaN.
        if self.alpha:
            terms["loss"] = terms["loss"] + self.alpha * (lmbda * 255**2 * d_y + rates["h_y"])
        if self.beta:
            terms["loss"] = terms["loss"] + self.beta * rates["w"]
        terms.update(distortion_y=d_y, bpp_h_y=rates["h_y"], bpp_w=rates["w"])
        return terms

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None) -> Tensor:
        side = self.check_side(side)
        w = self.f(side)
        y_feats = self.y_features(self.g_ay(side), w, self.side_depth) if self.side_depth else []
        return self.decode_x(latents["y"], w, y_feats).clamp(0, 1)
