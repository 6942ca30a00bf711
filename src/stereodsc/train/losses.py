"""Distortion measures for training, on [0, 1] images (the rate terms live with each model).

MS-SSIM follows the pytorch_msssim formulation NDIC trains with (Gaussian window, sigma 1.5,
5 scales, window 7 at 128x256), so the numbers are comparable with `stereodsc.eval.metrics.ms_ssim`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from stereodsc.errors import ConfigError
from stereodsc.eval.metrics import MS_SSIM_WEIGHTS, ms_ssim_min_side


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' padding, per channel."""
    c = x.shape[1]
    x = F.conv2d(x, win.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, win.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_cs(
    x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    sxx = _filter(x * x, win) - mu_x**2
    syy = _filter(y * y, win) - mu_y**2
    sxy = _filter(x * y, win) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, win_size: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Mean 5-scale MS-SSIM of two NCHW batches (differentiable)."""
    levels = len(MS_SSIM_WEIGHTS)
    min_side = ms_ssim_min_side(win_size)
    if min(x.shape[-2:]) < min_side:
        raise ValueError(
            f"MS-SSIM with window {win_size} needs images of at least {min_side}px per side, "
            f"got {tuple(x.shape[-2:])}; use larger crops or distortion = 'mse'"
        )
    win = _gaussian_window(win_size, 1.5, x.device, x.dtype)
    weights = torch.tensor(MS_SSIM_WEIGHTS, device=x.device, dtype=x.dtype)
    values = []
    for level in range(levels):
        ssim, cs = _ssim_cs(x, y, win, data_range)
        values.append(torch.relu(cs if level < levels - 1 else ssim))
        if level < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=0)  # [levels, N, C]
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean()


def mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(x_hat, x)


def ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return 1.0 - ms_ssim(x_hat, x)


DISTORTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": mse,
    "ms_ssim": ms_ssim_loss,
}


def distortion_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return DISTORTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown distortion {name!r}; choose one of {list(DISTORTIONS)}") from None


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB of [0, 1] images, as 8-bit images would give (clamped, 255 peak)."""
    err = F.mse_loss(x_hat.clamp(0, 1), x).item()
    return float("inf") if err == 0 else 10.0 * torch.log10(torch.tensor(1.0 / err)).item()
