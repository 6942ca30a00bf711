"""Image geometry both ends agree on: pad to the codec's stride, crop back, check what comes in.

The analysis transform halves the image four times (six with a hyperprior), so the edge pads the
frame bottom/right by edge replication to a multiple of the codec's ``stride`` and the host crops
the decoded image back to the size the frame header carries. Rates are counted over the original
pixels (`bpp`), never the padded ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stereodsc.errors import ConfigError, DataError

MAX_PIXELS = 4096 * 4096
"""Largest image (pixels, after padding) the codecs accept: 16.8 MP; bounds encoder/decoder memory."""

Size = tuple[int, int]
"""(height, width): the one size order of the package (the CLI writes it HxW)."""


def padded_size(size: Size, stride: int) -> Size:
    """The size the graphs see: `size` rounded up to a multiple of `stride` on both sides."""
    if stride <= 0:
        raise ConfigError(f"stride must be positive, got {stride}")
    return -(-size[0] // stride) * stride, -(-size[1] // stride) * stride


def pad(image: np.ndarray, stride: int) -> np.ndarray:
    """`image` (HxW or HxWxC) padded bottom/right by edge replication to `padded_size`, C-contiguous."""
    image = _nonempty(image)
    h, w = image.shape[:2]
    ph, pw = padded_size((h, w), stride)
    if (ph, pw) != (h, w):
        image = np.pad(image, [(0, ph - h), (0, pw - w)] + [(0, 0)] * (image.ndim - 2), mode="edge")
    return np.ascontiguousarray(image)


def crop(image: np.ndarray, size: Size) -> np.ndarray:
    """The top-left `size` of a padded image: undoes `pad`."""
    image = _nonempty(image)
    h, w = size
    if not (0 < h <= image.shape[0] and 0 < w <= image.shape[1]):
        raise DataError(f"cannot crop {h}x{w} from an image of {image.shape[0]}x{image.shape[1]}")
    return image[:h, :w]


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of `num_bytes` over the original (unpadded) `height` x `width` pixels."""
    if height <= 0 or width <= 0:
        raise DataError(f"bpp needs a positive image size, got {height}x{width}")
    if num_bytes < 0:
        raise DataError(f"bpp needs a non-negative byte count, got {num_bytes}")
    return 8.0 * num_bytes / (height * width)


def format_size(size: Size) -> str:
    """ "HxW", the way every message and option of the package writes a size."""
    return f"{size[0]}x{size[1]}"


def parse_size(text: str, what: str = "size") -> Size:
    """ "HxW" (e.g. "375x1242") -> (height, width); a ConfigError that shows the form otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{what} {text!r}: write it HEIGHTxWIDTH, e.g. 375x1242") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{what} {text!r}: height and width must be positive (HEIGHTxWIDTH)")
    return h, w


def check_rgb(image: Any, what: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return `image` as a C-contiguous uint8 HxWx3 array, or raise DataError naming the fix."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"{what} must be a numpy array (uint8 HxWx3 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"{what} must be an HxWx3 RGB image, got shape {image.shape}; convert grey or RGBA frames to RGB"
        )
    if image.dtype != np.uint8:
        raise DataError(
            f"{what} must be uint8 (0..255), got {image.dtype}; scale and convert it "
            "(e.g. np.clip(x * 255, 0, 255).round().astype(np.uint8))"
        )
    h, w = image.shape[:2]
    if h < 1 or w < 1 or h * w > max_pixels:
        raise DataError(
            f"{what} is {h}x{w}, outside 1..{max_pixels} pixels; downscale or crop it (or raise max_pixels)"
        )
    return np.ascontiguousarray(image)


def _nonempty(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"expected a non-empty HxW or HxWxC image, got shape {image.shape}")
    return image
