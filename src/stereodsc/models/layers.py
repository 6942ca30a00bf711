"""Small building blocks shared by every codec: lower bound, GDN, and the Ballé transforms.

Own code (no CompressAI dependency, see DESIGN decision 3) with CompressAI's behaviour and names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _LowerBoundFn(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it would push x back above the bound."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:
        ctx.save_for_backward(x, bound)
        return torch.maximum(x, bound)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad < 0)
        return pass_through.to(grad.dtype) * grad, None


class LowerBound(nn.Module):
    """Lower bound with CompressAI's straight-through gradient in training.

    In eval mode (and so in every exported graph) it is a plain ``torch.maximum``, which ONNX has.
    """

    bound: Tensor

    def __init__(self, bound: float) -> None:
        super().__init__()
        # Constants of the architecture (here and in every model buffer) are not saved in checkpoints: a
        # float16 compact checkpoint turned the likelihood floor 1e-9 into 0 (infinite rates in training).
        self.register_buffer("bound", torch.tensor(float(bound)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        bound = self.bound.to(x.dtype)
        if self.training and torch.is_grad_enabled():
            return _LowerBoundFn.apply(x, bound)
        return torch.maximum(x, bound)


class NonNegative(nn.Module):
    """Reparameterise a non-negative parameter as ``lower_bound(p)**2 - pedestal`` (Ballé 2017)."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2.0**-18) -> None:
        super().__init__()
        pedestal = reparam_offset**2
        self.register_buffer("pedestal", torch.tensor(pedestal), persistent=False)
        self.lower_bound = LowerBound((minimum + pedestal) ** 0.5)

    def init(self, value: Tensor) -> Tensor:
        return torch.sqrt(torch.clamp(value + self.pedestal, min=float(self.pedestal)))

    def forward(self, p: Tensor) -> Tensor:
        return self.lower_bound(p) ** 2 - self.pedestal


class GDN(nn.Module):
    """Generalised divisive normalisation: y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2).

    ``inverse=True`` gives IGDN (multiply instead of divide) for synthesis transforms.
    Init as NDIC/CompressAI: beta = 1, gamma = 0.1 I, reparameterisation offset 2^-18, beta >= 1e-6.
    """

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_reparam = NonNegative(minimum=beta_min)
        self.gamma_reparam = NonNegative()
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x * x, gamma, beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def conv(in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    """Output = input / stride for an input divisible by the stride (odd kernels, or kernel = stride)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2)


def deconv(in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Transposed conv that exactly inverts ``conv``'s size change (output = input * stride)."""
    return nn.ConvTranspose2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, output_padding=stride - 1)


def depthwise(channels: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    """Per-channel spatial conv (groups = channels): the cheap half of a depthwise-separable stage."""
    return nn.Conv2d(channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels)


def analysis_transform(N: int, M: int, in_ch: int = 3) -> nn.Sequential:
    """4 x (conv 5x5 stride 2), GDN between: the encoder of Ballé 2018 and of NDIC's three encoders."""
    return nn.Sequential(conv(in_ch, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


ENCODERS = ("full", "minimal")


def minimal_analysis_transform(M: int, edge_channels: Sequence[int], in_ch: int = 3) -> nn.Sequential:
    """The camera board's encoder: one dense 5x5/2 conv, then three 2x2/2 convs with a depthwise 3x3.

    Same stride (16) and GDN placement as ``analysis_transform``. A 2x2 stride-2 conv is a
    space-to-depth (lossless) followed by a 1x1 conv, so each stage sees every value of the stage
    before it; the depthwise 3x3 gives each stage spatial context for a few MACs per value. (The
    first version used strided depthwise 5x5 stages: each of those keeps one value per channel of
    four, so y held at most 64 independent values per 16x16 block and training saturated near
    24 dB on KITTI.) About 1.0 GMAC per 375x1242 frame with (24, 64, 96) and M = 128, against
    5.3 GMAC for ``analysis_transform(64, 96)``; the decoder (host) keeps its full width:
    distributed coding moves work from the encoder to the decoder. Flat ``nn.Sequential``, last
    layer a conv.
    """
    if len(edge_channels) != 3 or min(edge_channels) < 1:
        raise ValueError(f"minimal encoder needs 3 positive stage widths, got {list(edge_channels)}")
    e1, e2, e3 = (int(c) for c in edge_channels)
    return nn.Sequential(
        conv(in_ch, e1),
        GDN(e1),
        conv(e1, e2, 2, 2),
        depthwise(e2, 3, 1),
        GDN(e2),
        conv(e2, e3, 2, 2),
        depthwise(e3, 3, 1),
        GDN(e3),
        conv(e3, M, 2, 2),
    )


def encoder_transform(encoder: str, N: int, M: int, edge_channels: Sequence[int]) -> nn.Sequential:
    """The transmitted latent's analysis transform g_a: "full" (Ballé's, width N) or "minimal"."""
    if encoder == "minimal":
        return minimal_analysis_transform(M, edge_channels)
    if encoder == "full":
        return analysis_transform(N, M)
    raise ValueError(f"unknown encoder {encoder!r}; choose one of {list(ENCODERS)}")


def synthesis_transform(in_channels: Sequence[int], N: int, out_ch: int = 3) -> nn.Sequential:
    """Mirror of ``analysis_transform``: 4 stages (deconv 5x5 stride 2 + IGDN, the last without).

    ``in_channels`` gives each stage's input width, so decoders that concatenate extra features
    before a stage (NDIC's common information, NDIC-CAM's attention outputs) reuse this builder.
    Each stage is its own ``nn.Sequential`` so such decoders can run the stages one at a time.
    """
    if len(in_channels) != 4:
        raise ValueError(f"synthesis_transform needs 4 stage input widths, got {list(in_channels)}")
    stages = [nn.Sequential(deconv(c, N), GDN(N, inverse=True)) for c in in_channels[:3]]
    stages.append(nn.Sequential(deconv(in_channels[3], out_ch)))
    return nn.Sequential(*stages)
