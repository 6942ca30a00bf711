"""Bjøntegaard delta rate and delta quality between two rate-quality curves.

The default is the JCT-VC / JVET common-test-conditions variant: log10(rate) as a piecewise cubic
Hermite (PCHIP) function of quality, integrated over the quality interval both curves cover (the
original VCEG-M33 cubic polynomial fit is kept as ``method="cubic"``). BD-rate is the average rate
difference at equal quality, in percent: negative when curve ``a`` needs fewer bits than the
reference ``b``. The inputs may be any rate unit (bytes, bpp, kbit/s), the same for both curves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np

from stereodsc.errors import DataError

log = logging.getLogger(__name__)

Method = Literal["pchip", "cubic"]
_MIN_POINTS = {"pchip": 2, "cubic": 4}


class BDRateError(DataError):
    """The two curves do not allow a BD computation: too few usable points, or no common range."""


def monotone_curve(
    rate: Sequence[float] | np.ndarray,
    quality: Sequence[float] | np.ndarray,
    label: str = "curve",
    notes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The points sorted by rate, keeping only those that raise both rate and quality.

    Interpolation needs quality strictly increasing with rate; a point that costs more bits for no
    better quality (a saturated or noisy codec setting), or has an infinite quality (a lossless
    decode: PSNR = inf), is dropped, and a note says which.
    """
    r = np.asarray(rate, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if r.shape != q.shape:
        raise DataError(f"{label}: {r.size} rates but {q.size} quality values")
    if not np.all(np.isfinite(r)) or np.any(np.isnan(q)):
        raise DataError(f"{label}: rates must be finite and qualities not NaN, got {r.tolist()}, {q.tolist()}")
    if np.any(r <= 0):
        raise DataError(f"{label}: rates must be positive for a log-rate BD computation, got {r.tolist()}")
    order = np.lexsort((-q, r))  # by rate; at equal rates the best quality first
    r, q = r[order], q[order]
    keep: list[int] = []
    for i in range(r.size):
        if np.isfinite(q[i]) and (not keep or (r[i] > r[keep[-1]] and q[i] > q[keep[-1]])):
            keep.append(i)
    if len(keep) < r.size:
        dropped = [(float(r[i]), float(q[i])) for i in range(r.size) if i not in keep]
        message = f"{label}: dropped {len(dropped)} (rate, quality) point(s) that break monotonicity: {dropped}"
        log.warning("%s", message)
        if notes is not None:
            notes.append(message)
    return r[keep], q[keep]


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: Method) -> float:
    """Integral over [lo, hi] of the interpolant of y(x), x strictly increasing."""
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        return float(PchipInterpolator(x, y).integrate(lo, hi))
    antiderivative = np.polyint(np.polyfit(x, y, 3))
    return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))


def _prepare(
    rate_a: Sequence[float] | np.ndarray,
    q_a: Sequence[float] | np.ndarray,
    rate_b: Sequence[float] | np.ndarray,
    q_b: Sequence[float] | np.ndarray,
    method: Method,
    notes: list[str] | None,
    labels: tuple[str, str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if method not in _MIN_POINTS:
        raise DataError(f"unknown BD interpolation method {method!r}; use 'pchip' or 'cubic'")
    ra, qa = monotone_curve(rate_a, q_a, labels[0], notes)
    rb, qb = monotone_curve(rate_b, q_b, labels[1], notes)
    need = _MIN_POINTS[method]
    for label, n in zip(labels, (ra.size, rb.size), strict=True):
        if n < need:
            raise BDRateError(f"{label} has {n} usable point(s); BD with {method!r} interpolation needs {need}")
    return ra, qa, rb, qb


def _overlap(xa: np.ndarray, xb: np.ndarray, what: str, labels: tuple[str, str]) -> tuple[float, float]:
    lo = max(float(xa.min()), float(xb.min()))
    hi = min(float(xa.max()), float(xb.max()))
    if hi <= lo:
        raise BDRateError(
            f"the curves share no {what} range: {labels[0]} covers [{xa.min():.4g}, {xa.max():.4g}], "
            f"{labels[1]} covers [{xb.min():.4g}, {xb.max():.4g}]"
        )
    return lo, hi


def bd_rate(
    rate_a: Sequence[float] | np.ndarray,
    q_a: Sequence[float] | np.ndarray,
    rate_b: Sequence[float] | np.ndarray,
    q_b: Sequence[float] | np.ndarray,
    method: Method = "pchip",
    notes: list[str] | None = None,
    labels: tuple[str, str] = ("curve a", "reference b"),
) -> float:
    """Average rate difference of curve ``a`` against reference ``b`` at equal quality, in percent.

    Dropped points are logged and, when ``notes`` is a list, noted there; ``labels`` name the
    two curves in those notes and in errors.
    """
    ra, qa, rb, qb = _prepare(rate_a, q_a, rate_b, q_b, method, notes, labels)
    lo, hi = _overlap(qa, qb, "quality", labels)
    mean_a = _integral(qa, np.log10(ra), lo, hi, method) / (hi - lo)
    mean_b = _integral(qb, np.log10(rb), lo, hi, method) / (hi - lo)
    return float((10.0 ** (mean_a - mean_b) - 1.0) * 100.0)


def bd_quality(
    rate_a: Sequence[float] | np.ndarray,
    q_a: Sequence[float] | np.ndarray,
    rate_b: Sequence[float] | np.ndarray,
    q_b: Sequence[float] | np.ndarray,
    method: Method = "pchip",
    notes: list[str] | None = None,
    labels: tuple[str, str] = ("curve a", "reference b"),
    rate_range: tuple[float, float] | None = None,
) -> float:
    """Average quality difference (a minus b) at equal rate, over the common log-rate range
    (narrowed to `rate_range`, e.g. the 0.02-0.2 bpp a target names, where both curves reach it).

    With PSNR as the quality this is BD-PSNR in dB (positive: ``a`` is better).
    """
    ra, qa, rb, qb = _prepare(rate_a, q_a, rate_b, q_b, method, notes, labels)
    la, lb = np.log10(ra), np.log10(rb)
    lo, hi = _overlap(la, lb, "log10-rate", labels)
    if rate_range is not None:
        lo, hi = max(lo, float(np.log10(rate_range[0]))), min(hi, float(np.log10(rate_range[1])))
        if hi <= lo:
            raise BDRateError(f"the curves share no rate within {rate_range}")
    return float((_integral(la, qa, lo, hi, method) - _integral(lb, qb, lo, hi, method)) / (hi - lo))


bd_psnr = bd_quality
"""BD-PSNR: ``bd_quality`` with PSNR as the quality."""
