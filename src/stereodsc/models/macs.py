"""Multiply-accumulates of a model's parts at an image size: what the camera board pays per frame.

Counted from the layers' shapes (hooks on a copy on torch's "meta" device: nothing is computed):
convolutions and transposed convolutions (per output / input element, by groups), GDN's 1x1
normalisation (C^2 per pixel) and linear layers. Element-wise work (activations, rounding) is left
out: it is a few operations per value, against tens to thousands per value for the layers.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from stereodsc.models.base import CompressionModel, round_up
from stereodsc.models.layers import GDN
from stereodsc.models.priors import ScaleHyperprior

NATIVE_SIZE = (375, 1242)  # KITTI's rectified frame, the reference size for edge cost


def _layer_macs(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return inputs[0].numel() * (module.out_channels // module.groups) * k
    if isinstance(module, GDN):
        return output.numel() * output.shape[1]
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_macs(module: nn.Module, *inputs: Tensor) -> int:
    """MACs of one forward pass of ``module`` on ``inputs`` (shapes only: run on the meta device)."""
    meta = copy.deepcopy(module).to("meta").eval()
    total = 0

    def hook(layer: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += _layer_macs(layer, args, output)

    handles = [m.register_forward_hook(hook) for m in meta.modules()]
    try:
        with torch.no_grad():
            meta(*(t.to("meta") for t in inputs))
    finally:
        for h in handles:
            h.remove()
    return total


def edge_macs(model: CompressionModel, size: tuple[int, int] = NATIVE_SIZE) -> dict[str, int]:
    """MACs per frame of ``size`` (padded to the model's stride) of what runs on the camera.

    "g_a" and, with a scale hyperprior, "h_a" are the edge ONNX graph; "h_s" is the integer scale
    net, which the camera also runs (to pick y's tables) and the host too. "edge_graph" = g_a + h_a.
    """
    h, w = (round_up(s, model.stride) for s in size)
    counts = {"g_a": count_macs(model.g_a, torch.empty(1, 3, h, w, device="meta"))}
    if isinstance(model.prior, ScaleHyperprior):
        m, n = model.config["M"], model.prior.entropy_bottleneck.channels
        counts["h_a"] = count_macs(model.prior.h_a, torch.empty(1, m, h // 16, w // 16, device="meta"))
        counts["h_s"] = count_macs(model.prior.h_s, torch.empty(1, n, h // 64, w // 64, device="meta"))
    counts["edge_graph"] = counts["g_a"] + counts.get("h_a", 0)
    return counts
