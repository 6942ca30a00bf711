"""Evaluation-protocol image helpers shared by evaluation and the training data pipeline (padding to a
codec's stride and cropping back are the codec's: `stereodsc.codec.geometry`).

Images are numpy arrays with height and width as the first two axes (HxW or HxWxC).
"""

from __future__ import annotations

import numpy as np

from stereodsc.errors import ConfigError, DataError

PAPER_SIZE = (128, 256)
"""(height, width) of the NDIC / NDIC-CAM / DSIN-at-NDIC evaluation protocol."""

KITTI_CROP = (370, 740)
"""Centre crop the papers take from KITTI frames before resizing (torchvision ``center_crop``)."""

# KITTI colour frames come in a few sizes (375x1242, 370x1224, 374x1238, 376x1241, ...).
_KITTI_HEIGHTS = range(370, 377)
_KITTI_WIDTHS = range(1224, 1243)


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise DataError(f"expected a non-empty HxW or HxWxC image, got shape {img.shape}")
    return img


def centre_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop to ``size`` = (h, w), offsets rounded as torchvision's ``center_crop`` does."""
    img = _check_image(img)
    h, w = img.shape[:2]
    ch, cw = size
    if not (0 < ch <= h and 0 < cw <= w):
        raise DataError(f"cannot centre-crop {ch}x{cw} from an image of {h}x{w}")
    top = round((h - ch) / 2.0)
    left = round((w - cw) / 2.0)
    return img[top : top + ch, left : left + cw]


def paper_protocol(img: np.ndarray, size: tuple[int, int] = PAPER_SIZE) -> np.ndarray:
    """Crop and resize a frame the way the published 128x256 results were produced.

    KITTI frames: centre crop 370x740, then resize. Other frames: the largest centre crop of the
    target aspect ratio (1:2), then resize. Resizing uses cv2.INTER_AREA (anti-aliased, like the
    papers' PIL bilinear resize of a larger image; the two differ by a fraction of a dB).
    """
    import cv2

    img = _check_image(img)
    h, w = img.shape[:2]
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ConfigError(f"paper_protocol size must be positive, got {size}")
    if h in _KITTI_HEIGHTS and w in _KITTI_WIDTHS:
        crop = centre_crop(img, KITTI_CROP)
    elif w * out_h >= h * out_w:
        crop = centre_crop(img, (h, max(1, round(h * out_w / out_h))))
    else:
        crop = centre_crop(img, (max(1, round(w * out_h / out_w)), w))
    if crop.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(crop)
    return cv2.resize(np.ascontiguousarray(crop), (out_w, out_h), interpolation=cv2.INTER_AREA)
