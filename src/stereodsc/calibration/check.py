"""Check a rig on a real pair: rectify it, draw rows, and measure the row offset of matched features.

After a good rectification every match lies on the same row in both views. The matches are
filtered with a RANSAC fundamental matrix, which any correct match satisfies whatever the
rectification, so the measured offsets are not biased towards the rig being right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stereodsc.calibration.rectify import Rectifier
from stereodsc.calibration.rig import StereoRig
from stereodsc.errors import DataError

_MIN_MATCHES = 8  # a fundamental matrix needs 8 points; fewer says nothing about the rows
_LINE_STEP_PX = 32
_RATIO = 0.75  # Lowe's ratio test


@dataclass(frozen=True)
class CheckReport:
    """Row offsets |dy| (px) of matched features between the rectified views."""

    n_matches: int
    median_abs_dy: float
    p95_abs_dy: float
    mean_dy: float
    out_png: Path

    def summary(self) -> str:
        """Human-readable verdict."""
        if self.n_matches < _MIN_MATCHES:
            return (
                f"only {self.n_matches} feature matches: too few to measure the row error; use a textured "
                f"scene. Rectified pair written to {self.out_png}"
            )
        verdict = "good" if self.median_abs_dy < 0.5 else "poor: recalibrate"
        return (
            f"{self.n_matches} matches: row offset |dy| median {self.median_abs_dy:.2f} px, "
            f"p95 {self.p95_abs_dy:.2f} px, mean dy {self.mean_dy:+.2f} px ({verdict}). "
            f"Rectified pair with rows drawn: {self.out_png}"
        )


def _load(img: np.ndarray | str | Path, side: str) -> np.ndarray:
    if isinstance(img, np.ndarray):
        return img
    frame = cv2.imread(str(img), cv2.IMREAD_COLOR)
    if frame is None:
        raise DataError(f"cannot read the {side} image {img}: check the path and that it is an image file")
    return frame


def _valid_mask(rect: Rectifier) -> np.ndarray:
    """Pixels of the rectified frame that come from inside the raw frame, shrunk by a few pixels."""
    w, h = rect.input_size
    mask = rect(np.full((h, w), 255, np.uint8))
    return cv2.erode((mask == 255).astype(np.uint8) * 255, np.ones((7, 7), np.uint8))


def _match_features(
    left: np.ndarray, right: np.ndarray, masks: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Matched keypoints (left Nx2, right Nx2) of two rectified views, RANSAC-filtered."""
    sift = cv2.SIFT.create(nfeatures=4000)
    gl = cv2.cvtColor(left, cv2.COLOR_BGR2GRAY) if left.ndim == 3 else left
    gr = cv2.cvtColor(right, cv2.COLOR_BGR2GRAY) if right.ndim == 3 else right
    kl, dl = sift.detectAndCompute(gl, None if masks is None else masks[0])
    kr, dr = sift.detectAndCompute(gr, None if masks is None else masks[1])
    empty = np.zeros((0, 2), np.float32)
    if dl is None or dr is None or len(kl) < 2 or len(kr) < 2:
        return empty, empty
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dl, dr, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < _RATIO * m[1].distance]
    pl = np.array([kl[m.queryIdx].pt for m in good], np.float32).reshape(-1, 2)
    pr = np.array([kr[m.trainIdx].pt for m in good], np.float32).reshape(-1, 2)
    if len(good) < _MIN_MATCHES:
        return pl, pr
    _, inliers = cv2.findFundamentalMat(pl, pr, cv2.FM_RANSAC, 1.5, 0.999)
    if inliers is None:
        return empty, empty
    keep = inliers.ravel().astype(bool)
    return pl[keep], pr[keep]


ROW_CHECK_MIN_MATCHES = 30
"""Matches needed before `row_offset` concludes (a blurry low-rate decode gives too few to trust)."""


def row_offset(view: np.ndarray, side: np.ndarray) -> float | None:
    """Median |dy| (px) of the features matched between two views that should be row-aligned, e.g. a
    decoded dependent frame and its side image; None when fewer than ROW_CHECK_MIN_MATCHES match.
    A rectified pair gives well under 1 px; a pair shifted by k rows gives about k."""
    pl, pr = _match_features(view, side)
    if len(pl) < ROW_CHECK_MIN_MATCHES:
        return None
    return float(np.median(np.abs(pl[:, 1] - pr[:, 1])))


def check_rectification(
    rig: StereoRig,
    left_img: np.ndarray | str | Path,
    right_img: np.ndarray | str | Path,
    out_png: str | Path,
) -> CheckReport:
    """Rectify a raw pair with ``rig``, write it side by side with rows drawn, measure |dy| of matches.

    Images are arrays (BGR or grey uint8, as the camera delivers them) or paths. Matches are
    drawn green when they lie within 1 px of the same row, red otherwise.
    """
    out_png = Path(out_png)
    rect_l, rect_r = Rectifier.from_rig(rig, "left"), Rectifier.from_rig(rig, "right")
    left = rect_l(_load(left_img, "left"))
    right = rect_r(_load(right_img, "right"))
    pl, pr = _match_features(left, right, (_valid_mask(rect_l), _valid_mask(rect_r)))
    dy = (pl[:, 1] - pr[:, 1]).astype(np.float64)

    def bgr(img: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 or img.shape[2] == 1 else img[..., :3]

    canvas = np.hstack([bgr(left), bgr(right)])
    width = left.shape[1]
    for y in range(_LINE_STEP_PX // 2, canvas.shape[0], _LINE_STEP_PX):
        cv2.line(canvas, (0, y), (canvas.shape[1] - 1, y), (255, 200, 0), 1)
    for (xl, yl), (xr, yr), d in zip(pl, pr, dy, strict=True):
        color = (0, 200, 0) if abs(d) <= 1.0 else (0, 0, 255)
        cv2.circle(canvas, (round(float(xl)), round(float(yl))), 3, color, 1)
        cv2.circle(canvas, (round(float(xr)) + width, round(float(yr))), 3, color, 1)
    try:
        ok = cv2.imwrite(str(out_png), canvas)
    except cv2.error as exc:
        raise DataError(f"cannot write {out_png}: {exc}") from exc
    if not ok:
        raise DataError(f"cannot write {out_png}: check that the folder exists and the suffix is .png or .jpg")
    nan = math.nan
    n = len(dy)
    return CheckReport(
        n_matches=n,
        median_abs_dy=float(np.median(np.abs(dy))) if n else nan,
        p95_abs_dy=float(np.percentile(np.abs(dy), 95)) if n else nan,
        mean_dy=float(dy.mean()) if n else nan,
        out_png=out_png,
    )
