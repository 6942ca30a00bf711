"""The full-resolution refinement network: DSIN's SI-Net, and the same net as a post-filter.

DSIN refines its decode with the side image; a model with ``post_width`` > 0 runs the same dilated
chain on its decode alone (one image in), the post-filter that an intra decode can have as well.
Both read images in DSIN's fixed KITTI normalisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# DSIN's fixed KITTI normalisation on the 0-255 scale (notes §1.1; std = sqrt of its variances).
KITTI_MEAN = (93.7045, 98.2824, 94.8468)
KITTI_STD = (math.sqrt(5411.80), math.sqrt(5758.60), math.sqrt(5890.31))


def normalize(img: Tensor) -> Tensor:
    """[0, 1] image -> DSIN's standardised 0-255 values."""
    mean = img.new_tensor(KITTI_MEAN).view(1, 3, 1, 1)
    std = img.new_tensor(KITTI_STD).view(1, 3, 1, 1)
    return (255 * img - mean) / std


def denormalize(t: Tensor) -> Tensor:
    mean = t.new_tensor(KITTI_MEAN).view(1, 3, 1, 1)
    std = t.new_tensor(KITTI_STD).view(1, 3, 1, 1)
    return (t * std + mean) / 255


class RefineNet(nn.Module):
    """Refines x_dec (with side_syn, as DSIN's SI-Net): 9 dilated 3x3 convs (LeakyReLU 0.2) + 1x1 conv to 3.

    ``inputs`` is the number of images it reads: 2 for the SI-Net (x_dec, side_syn), 1 for a post-filter
    (x_dec). Identity-initialised (centre tap 1 on the diagonal) as the reference, also the last 1x1, so
    at init the network passes normalised x_dec through, up to the LeakyReLU, which scales its
    negative half by 0.2: a DSIN warm-started from an intra codec then begins several dB below it
    (at lambda 0.05, ~8 dB). ``residual=True`` predicts a correction instead, ``x_dec + net(...)``
    with the last 1x1 at zero, so training starts exactly at the decode it refines.
    """

    dilations = (1, 2, 4, 8, 16, 32, 64, 128, 1)

    def __init__(self, width: int = 32, residual: bool = False, inputs: int = 2) -> None:
        super().__init__()
        self.residual = residual
        self.inputs = inputs
        layers: list[nn.Module] = []
        in_ch = 3 * inputs
        for d in self.dilations:
            layers += [self._identity(nn.Conv2d(in_ch, width, 3, padding=d, dilation=d)), nn.LeakyReLU(0.2)]
            in_ch = width
        last = nn.Conv2d(width, 3, 1)
        if residual:
            nn.init.zeros_(last.weight)
            assert last.bias is not None
            nn.init.zeros_(last.bias)
        else:
            self._identity(last)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    @staticmethod
    def _identity(layer: nn.Conv2d) -> nn.Conv2d:
        nn.init.zeros_(layer.weight)
        assert layer.bias is not None
        nn.init.zeros_(layer.bias)
        k = layer.kernel_size[0] // 2
        with torch.no_grad():
            for i in range(min(layer.in_channels, layer.out_channels)):
                layer.weight[i, i, k, k] = 1.0
        return layer

    @property
    def width(self) -> int:
        first = self.net[0]
        assert isinstance(first, nn.Conv2d)
        return int(first.out_channels)

    def widened(self, multiple: int = 16) -> RefineNet:
        """The same function with the width rounded up to a multiple of `multiple`: the extra
        channels have zero weights and bias, so they stay 0 through every LeakyReLU and add exact
        zeros. For export: onnxruntime's CPU convolutions work in blocks of 8 or 16 channels
        (AVX2 / AVX-512) and convert the layout after every layer of a 12-channel chain, which made
        the 12-wide SI-Net 2x slower than a 16-wide one."""
        wide = RefineNet(-(-self.width // multiple) * multiple, self.residual, self.inputs)
        with torch.no_grad():
            for new, old in zip(wide.net, self.net, strict=True):
                if isinstance(new, nn.Conv2d) and isinstance(old, nn.Conv2d):
                    assert new.bias is not None and old.bias is not None
                    new.weight.zero_()
                    new.bias.zero_()
                    new.weight[: old.out_channels, : old.in_channels] = old.weight
                    new.bias[: old.out_channels] = old.bias
        return wide

    def forward(self, x_dec: Tensor, *side: Tensor) -> Tensor:
        """x_dec (and side_syn for the SI-Net), [B, 3, H, W] in [0, 1] -> the refined image."""
        out = self.net(torch.cat([normalize(t) for t in (x_dec, *side)], dim=1))
        if self.residual:  # the correction in normalised units: scale by std only, no mean
            return x_dec + out * out.new_tensor(KITTI_STD).view(1, 3, 1, 1) / 255
        return denormalize(out)
