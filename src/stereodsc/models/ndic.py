"""NDIC: neural distributed image compression with common information (Mital et al., DCC 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from stereodsc.models.balle import EDGE_CHANNELS, build_backbone
from stereodsc.models.base import CompressionModel, Distortion, bpp
from stereodsc.models.entropy_models import EntropyBottleneck
from stereodsc.models.layers import analysis_transform, synthesis_transform


class NDIC(CompressionModel):
    """x is sent alone; the decoder derives common information w = f(side) from the side image.

    Data flow (only the top row runs on the camera; ``backbone`` picks the prior of y)::

        x ────g_a───> y ──Q──> y_hat ──┐
                                       cat ──g_s──> x_hat
        side ──f────> w ───────────────┤
        side ─g_a_side─> h_side ───────cat ──g_s_side──> side_hat   (training only: auxiliary task)

        likelihoods = {"y": p(y_hat) (, "z": p(z_hat))}; rates of h_side and w are regularisers

    Parts (notes §2.1): ``g_a`` x -> y, the transmitted latent (under the ``backbone`` prior);
    ``g_a_side`` side -> h_side, the side image's private latent; ``f`` side -> w, the common
    information (w + sqrt(0.001) N(0, 1) in training); neither h_side nor w is quantised or sent:
    their rates are regularisers. ``g_s`` decodes x from concat(y_hat, w); ``g_s_side``
    reconstructs the side image from concat(h_side, w), an auxiliary task.

    Loss: lmbda 255^2 [D(x, x_hat) + alpha D(side, side_hat)] + R_y + alpha R_h_side + beta R_w.

    Deviations from the reference code (ipc-lab/NDIC):
    - The intended decoder: four distinct deconvolutions. The reference decoders called deconv2
      twice and never used deconv3 (fixed upstream in 53a10a1; the published weights and curves
      still come from the buggy decoder).
    - backbone="balle2018" puts the scale hyperprior on y only; the side branch keeps its
      continuous factorized rate (the reference also gave h_y a continuous hyperprior).
    - encoder="minimal" makes g_a the camera-friendly encoder; f and g_a_side run on the host and
      keep the full transform.
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
        encoder: str = "full",
        edge_channels: Sequence[int] = EDGE_CHANNELS,
        hyper_channels: int | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        **extra: Any,
    ) -> None:
        edge_channels = [int(c) for c in edge_channels]
        g_a, prior = build_backbone(backbone, N, M, encoder, edge_channels, hyper_channels)
        options = {
            "N": N,
            "M": M,
            "backbone": backbone,
            "encoder": encoder,
            "edge_channels": edge_channels,
            "hyper_channels": hyper_channels,
            "alpha": alpha,
            "beta": beta,
            **extra,
        }
        super().__init__(options, stride=16 * prior.stride_factor)
        self.alpha, self.beta = float(alpha), float(beta)
        self.g_a = g_a
        self.prior = prior
        self.g_a_side = analysis_transform(N, M)
        self.f = analysis_transform(N, M)
        self.entropy_bottleneck_h_side = EntropyBottleneck(M, quantize=False)
        self.entropy_bottleneck_w = EntropyBottleneck(M, quantize=False)
        self.g_s = self.build_x_decoder(N, M)
        self.g_s_side = synthesis_transform((2 * M, N, N, N), N)

    def build_x_decoder(self, N: int, M: int) -> nn.Sequential:
        return synthesis_transform((2 * M, N, N, N), N)

    @property
    def side_depth(self) -> int:
        """How many side-decoder stages the x decoder needs at synthesis time (none for NDIC)."""
        return 0

    def side_features(self, h_side: Tensor, w: Tensor, depth: int) -> list[Tensor]:
        """Outputs of the first ``depth`` stages of the side decoder (the last one is side_hat)."""
        t = torch.cat([h_side, w], 1)
        features = []
        for stage in list(self.g_s_side)[:depth]:
            t = stage(t)
            features.append(t)
        return features

    def decode_x(self, y_hat: Tensor, w: Tensor, side_feats: Sequence[Tensor]) -> Tensor:
        return self.g_s(torch.cat([y_hat, w], 1))

    def forward(self, x: Tensor, side: Tensor | None = None) -> dict[str, Any]:
        self.check_inputs(x, side)
        assert side is not None
        y_hat, likelihoods = self.prior(self.g_a(x))
        h_side, w = self.g_a_side(side), self.f(side)
        if self.training:
            w = w + self.w_noise_std * torch.randn_like(w)
        _, h_side_likelihood = self.entropy_bottleneck_h_side(h_side)
        _, w_likelihood = self.entropy_bottleneck_w(w)
        side_feats = self.side_features(h_side, w, depth=len(self.g_s_side))
        return {
            "x_hat": self.decode_x(y_hat, w, side_feats),
            "likelihoods": likelihoods,
            "side_hat": side_feats[-1],
            "rates": {"h_side": bpp([h_side_likelihood], x), "w": bpp([w_likelihood], x)},
        }

    def loss(
        self, out: dict[str, Any], x: Tensor, side: Tensor | None, lmbda: float, distortion: Distortion
    ) -> dict[str, Tensor]:
        side = self.check_side(side, x.shape)
        terms = self.rd_loss(out, x, lmbda, distortion)
        d_side = distortion(out["side_hat"], side)
        rates = out["rates"]
        # A term whose weight is 0 is left out, not multiplied by 0: with alpha = 0 (NDIC-CAM's default)
        # nothing trains the side decoder's last stage, its output may overflow, and 0 * inf is NaN.
        if self.alpha:
            terms["loss"] = terms["loss"] + self.alpha * (lmbda * 255**2 * d_side + rates["h_side"])
        if self.beta:
            terms["loss"] = terms["loss"] + self.beta * rates["w"]
        terms.update(distortion_side=d_side, bpp_h_side=rates["h_side"], bpp_w=rates["w"])
        return terms

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None) -> Tensor:
        side = self.check_side(side)
        w = self.f(side)
        side_feats = self.side_features(self.g_a_side(side), w, self.side_depth) if self.side_depth else []
        return self.decode_x(latents["y"], w, side_feats).clamp(0, 1)
