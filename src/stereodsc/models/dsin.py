"""DSIN: decode x, find matching patches in the side image, refine (Ayzik & Avidan, ECCV 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stereodsc.errors import ConfigError
from stereodsc.models.balle import Balle2017
from stereodsc.models.base import Distortion, bpp

# DSIN's fixed KITTI normalisation on the 0-255 scale (notes §1.1; std = sqrt of its variances).
KITTI_MEAN = (93.7045, 98.2824, 94.8468)
KITTI_STD = (math.sqrt(5411.80), math.sqrt(5758.60), math.sqrt(5890.31))
# Windows whose summed squared deviation is below this (per value) count as flat, not as
# perfectly correlated: it keeps float32 cancellation in the variance from producing huge scores.
_FLAT = 1e-4


def normalize(img: Tensor) -> Tensor:
    """[0, 1] image -> DSIN's standardised 0-255 values."""
    mean = img.new_tensor(KITTI_MEAN).view(1, 3, 1, 1)
    std = img.new_tensor(KITTI_STD).view(1, 3, 1, 1)
    return (255 * img - mean) / std


def denormalize(t: Tensor) -> Tensor:
    mean = t.new_tensor(KITTI_MEAN).view(1, 3, 1, 1)
    std = t.new_tensor(KITTI_STD).view(1, 3, 1, 1)
    return (t * std + mean) / 255


def _colour_transform(t: Tensor) -> Tensor:
    """H1 = R + G, H2 = R - G, H3 = 0.5 (R + B), as the reference code (its docstring says -0.5)."""
    r, g, b = t.unbind(1)
    return torch.stack([r + g, r - g, 0.5 * (r + b)], dim=1)


def _gaussian_prior(n: int, size: int, positions: int, fwhm: float, device: torch.device) -> Tensor:
    """[n, positions]: weight of window start i for the n-th patch (start n * size), FWHM given."""
    d = torch.arange(positions, device=device)[None, :] - size * torch.arange(n, device=device)[:, None]
    return torch.exp(-4 * math.log(2) * d.double() ** 2 / fwhm**2).float()


@torch.no_grad()
def si_finder(
    x_dec: Tensor,
    y_dec: Tensor,
    y: Tensor,
    patch: Sequence[int] = (20, 24),
    gaussian_prior: bool = True,
    max_row_offset: int | None = None,
) -> Tensor:
    """Build y_syn: for each non-overlapping patch of x_dec, the patch of y at the position where
    y_dec correlates best (Pearson, colour-transformed standardised values; notes §1.3).

    Images are [B, 3, H, W] in [0, 1]. They are padded (replicate) to a multiple of the patch and
    y_syn cropped back. ``gaussian_prior`` weights each score by a 2-D Gaussian of the offset from
    the patch's own position (FWHM = half the image size). ``max_row_offset`` searches only window
    rows within that many rows of the patch's own (rectified pairs), which also skips the work.
    Scores: one grouped conv2d per row of patches (patches as filters), so memory holds one row's
    scores; cost ~P * (searched rows) * W * 1440 MACs: ~3 GMAC at 128x256 and ~600 GMAC at
    KITTI's full size for the exhaustive search, ~(2 k + 1) / H of that with max_row_offset = k.
    """
    b, _, h, w = x_dec.shape
    ph, pw = patch
    pad = (0, (-w) % pw, 0, (-h) % ph)
    x_dec, y_dec, y = (F.pad(t, pad, mode="replicate") for t in (x_dec, y_dec, y))
    hp, wp = x_dec.shape[-2:]
    nh, nw = hp // ph, wp // pw
    rows, cols = hp - ph + 1, wp - pw + 1  # window start positions
    n = 3 * ph * pw

    xs = _colour_transform(normalize(x_dec))
    ys = _colour_transform(normalize(y_dec))
    patches = xs.reshape(b, 3, nh, ph, nw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, nh, nw, n)
    patches = patches - patches.mean(dim=-1, keepdim=True)
    patches = (patches / patches.norm(dim=-1, keepdim=True).clamp_min(1e-6)).reshape(b, nh, nw * 3, ph, pw)
    # Pearson = <centred unit patch, window> / ||window - mean(window)||; window sums by box filter.
    s1 = F.avg_pool2d(ys.sum(1, keepdim=True), (ph, pw), stride=1) * (ph * pw)
    s2 = F.avg_pool2d((ys * ys).sum(1, keepdim=True), (ph, pw), stride=1) * (ph * pw)
    spread = (s2 - s1 * s1 / n).clamp_min(n * _FLAT).sqrt()  # [B, 1, rows, cols]
    prior_r = _gaussian_prior(nh, ph, rows, 0.5 * hp, ys.device)
    prior_c = _gaussian_prior(nw, pw, cols, 0.5 * wp, ys.device)

    best_r, best_c = [], []
    for i in range(nh):
        lo, hi = 0, rows  # searched window start rows [lo, hi)
        if max_row_offset is not None:
            lo, hi = max(0, i * ph - max_row_offset), min(rows, i * ph + max_row_offset + 1)
        band = ys[:, :, lo : hi - 1 + ph].reshape(1, b * 3, hi - 1 + ph - lo, wp)
        score = F.conv2d(band, patches[:, i].reshape(b * nw, 3, ph, pw), groups=b).reshape(b, nw, hi - lo, cols)
        score.div_(spread[:, :, lo:hi])
        if gaussian_prior:
            score.mul_(prior_r[i, lo:hi].view(1, 1, -1, 1)).mul_(prior_c.view(1, nw, 1, cols))
        best = score.reshape(b, nw, -1).argmax(dim=-1)  # [B, nw]
        best_r.append(lo + best // cols)
        best_c.append(best % cols)
    r0, c0 = torch.stack(best_r, dim=1), torch.stack(best_c, dim=1)  # [B, nh, nw]
    # Gather each chosen ph x pw window of the original y and tile them back in x's patch order.
    dr = torch.arange(ph, device=y.device).view(1, 1, ph, 1)
    dc = torch.arange(pw, device=y.device).view(1, 1, 1, pw)
    index = (r0.view(b, -1, 1, 1) + dr) * wp + (c0.view(b, -1, 1, 1) + dc)  # [B, P, ph, pw]
    picked = y.reshape(b, 3, hp * wp).gather(2, index.reshape(b, 1, -1).expand(b, 3, -1))
    y_syn = picked.reshape(b, 3, nh, nw, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(b, 3, hp, wp)
    return y_syn[..., :h, :w]


class SINet(nn.Module):
    """Refines x_dec with y_syn: 9 dilated 3x3 convs (32 ch, LeakyReLU 0.2) + 1x1 conv to 3.

    Identity-initialised (centre tap 1 on the diagonal) as the reference, also the last 1x1, so at
    init the network passes normalised x_dec through (up to the LeakyReLU on negative values).
    """

    dilations = (1, 2, 4, 8, 16, 32, 64, 128, 1)

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 6
        for d in self.dilations:
            layers += [self._identity(nn.Conv2d(in_ch, width, 3, padding=d, dilation=d)), nn.LeakyReLU(0.2)]
            in_ch = width
        layers.append(self._identity(nn.Conv2d(width, 3, 1)))
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

    def forward(self, x_dec: Tensor, y_syn: Tensor) -> Tensor:
        return denormalize(self.net(torch.cat([normalize(x_dec), normalize(y_syn)], dim=1)))


class DSIN(Balle2017):
    """DSIN on a Ballé 2017 backbone: x_dec = g_s(q(g_a(x))); y_syn = SI-Finder(x_dec, y_dec, y)
    with y_dec = the same autoencoder applied to y (rounded, no gradient); x_hat = SI-Net(x_dec, y_syn).

    Loss: lmbda 255^2 [(1 - si_weight) D(x, x_dec) + si_weight D(x, x_hat)] + R, si_weight = 0.7.

    Deviations from the paper / reference (ayziksha/DSIN):
    - Backbone: Ballé 2017 (4 x conv 5x5/2 + GDN, factorized prior) instead of Mentzer et al.'s
      CVPR 2018 codec (importance map, 6 learned centres, 3-D context model), so that all our
      models share one backbone and one entropy coder.
    - Rate control: the reference's beta * max(H - H_target, 0) hinge is replaced by the
      lambda-weighted rate used by every model here; equivalent to beta = 1 / (lmbda 255^2) on
      the rate with H_target = 0. The distortion is the trainer's (MSE or 1 - MS-SSIM), not MAE.
    - Matched windows are cut from y with integer offsets (the reference's crop_and_resize with
      normalised boxes resamples them slightly); images are padded (replicate) to a multiple of
      the patch; near-flat windows get a floored variance (see ``si_finder``).
    """

    name = "dsin"
    uses_side_info = True

    def __init__(
        self,
        N: int = 64,
        M: int = 96,
        patch: Sequence[int] = (20, 24),
        gaussian_prior: bool = True,
        max_row_offset: int | None = None,
        si_weight: float = 0.7,
    ) -> None:
        patch = [int(p) for p in patch]
        if len(patch) != 2 or min(patch) < 1:
            raise ConfigError(f"{self.name}: patch={patch} must be [height, width] of positive integers")
        if max_row_offset is not None and max_row_offset < 0:
            raise ConfigError(f"{self.name}: max_row_offset={max_row_offset} must be >= 0 or None (no band)")
        super().__init__(
            N,
            M,
            patch=patch,
            gaussian_prior=gaussian_prior,
            max_row_offset=max_row_offset,
            si_weight=si_weight,
        )
        self.patch = (patch[0], patch[1])
        self.gaussian_prior = bool(gaussian_prior)
        self.max_row_offset = max_row_offset
        self.si_weight = float(si_weight)
        self.si_net = SINet()

    def refine(self, x_dec: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(x_hat, y_syn) from the decoded x and the original side image y."""
        with torch.no_grad():
            y_dec = self.g_s(torch.round(self.g_a(y)))
            y_syn = si_finder(
                x_dec.clamp(0, 1), y_dec.clamp(0, 1), y, self.patch, self.gaussian_prior, self.max_row_offset
            )
        return self.si_net(x_dec, y_syn), y_syn

    def forward(self, x: Tensor, y: Tensor | None = None) -> dict[str, Any]:
        self.check_inputs(x, y)
        assert y is not None
        x_dec, likelihoods = self.code(x)
        x_hat, y_syn = self.refine(x_dec, y)
        return {"x_hat": x_hat, "likelihoods": likelihoods, "x_dec": x_dec, "y_syn": y_syn}

    def loss(
        self, out: dict[str, Any], x: Tensor, y: Tensor | None, lmbda: float, distortion: Distortion
    ) -> dict[str, Tensor]:
        rate = bpp(out["likelihoods"].values(), x)
        d_hat, d_dec = distortion(out["x_hat"], x), distortion(out["x_dec"], x)
        weighted = (1 - self.si_weight) * d_dec + self.si_weight * d_hat
        return {
            "loss": lmbda * 255**2 * weighted + rate,
            "bpp": rate,
            "distortion": d_hat,
            "distortion_dec": d_dec,
        }

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None = None) -> Tensor:
        x_hat, _ = self.refine(self.g_s(latents["y"]), self.check_side(side))
        return x_hat.clamp(0, 1)
