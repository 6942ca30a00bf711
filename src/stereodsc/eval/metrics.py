"""Image quality metrics and bit rates, numpy only.

MS-SSIM follows the pytorch_msssim formulation that NDIC/NDIC-CAM report (and that CompressAI
uses), so that our numbers can sit on the same axes as the published curves: Gaussian window
(sigma 1.5, valid filtering), K1 = 0.01, K2 = 0.03, data range 255, five scales with 2x2 average
pooling (zero padding of odd sizes, counted in the average, as torch's ``avg_pool2d``), contrast-
structure of the first four scales and SSIM of the last, negative values clipped to 0, the
product taken per channel and then averaged over channels.
"""

from __future__ import annotations

import math

import numpy as np

from stereodsc.codec.geometry import bpp as bpp  # one definition: the codec counts bytes the same way
from stereodsc.errors import DataError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_K1, _K2 = 0.01, 0.03
_DATA_RANGE = 255.0
_SIGMA = 1.5


def _pair_as_float(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 HxWxC (a grey HxW image gets C = 1); shapes must match."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise DataError(f"images differ in shape: {a.shape} vs {b.shape}; compare an image with its decoding")
    if a.ndim not in (2, 3) or a.size == 0:
        raise DataError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels (peak 255); ``inf`` for identical images."""
    x, y = _pair_as_float(a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_DATA_RANGE**2 / mse)


def _gaussian_window(size: int) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(coords**2) / (2.0 * _SIGMA**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of an HxWxC array, 'valid' output (no padding), along H then W."""
    n = win.size
    h, w = x.shape[:2]
    rows = sum(win[k] * x[k : h - n + 1 + k] for k in range(n))
    return sum(win[k] * rows[:, k : w - n + 1 + k] for k in range(n))


def _ssim_and_cs(x: np.ndarray, y: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure term, one value per channel."""
    c1 = (_K1 * _DATA_RANGE) ** 2
    c2 = (_K2 * _DATA_RANGE) ** 2
    mu_x = _filter_valid(x, win)
    mu_y = _filter_valid(y, win)
    var_x = _filter_valid(x * x, win) - mu_x**2
    var_y = _filter_valid(y * y, win) - mu_y**2
    cov = _filter_valid(x * y, win) - mu_x * mu_y
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean(axis=(0, 1)), cs_map.mean(axis=(0, 1))


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling, stride 2; an odd side gets one zero row/column on each end, as torch does."""
    pad_h, pad_w = x.shape[0] % 2, x.shape[1] % 2
    if pad_h or pad_w:
        x = np.pad(x, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ms_ssim_min_side(win_size: int = 7) -> int:
    """Smallest image side MS-SSIM accepts: the fifth scale (side / 16) must exceed the window."""
    return (win_size - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1


def ms_ssim(a: np.ndarray, b: np.ndarray, win_size: int = 7) -> float:
    """Five-scale MS-SSIM (Wang et al. 2003) in [0, 1] of two uint8-range images.

    The window is 7 by default because the evaluation images are 128x256 (as in NDIC): the usual
    11 would need a smaller side of at least 161 pixels.
    """
    if win_size < 1 or win_size % 2 == 0:
        raise DataError(f"MS-SSIM window size must be a positive odd number, got {win_size}")
    x, y = _pair_as_float(a, b)
    min_side = ms_ssim_min_side(win_size)
    if min(x.shape[:2]) < min_side:
        raise DataError(
            f"image of shape {x.shape[:2]} is too small for 5-scale MS-SSIM with window {win_size}: "
            f"both sides must be at least {min_side} pixels"
        )
    win = _gaussian_window(win_size)
    terms = []
    for scale in range(len(MS_SSIM_WEIGHTS)):
        ssim_c, cs_c = _ssim_and_cs(x, y, win)
        if scale < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(np.maximum(cs_c, 0.0))
            x, y = _avg_pool2(x), _avg_pool2(y)
        else:
            terms.append(np.maximum(ssim_c, 0.0))
    weights = np.asarray(MS_SSIM_WEIGHTS)[:, None]
    per_channel = np.prod(np.stack(terms) ** weights, axis=0)
    return float(per_channel.mean())


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, -10 log10(1 - v): spreads the values near 1 for curves and BD-rate."""
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)
