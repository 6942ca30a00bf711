"""Image files in and out (uint8 RGB HxWx3), one place for every part of the package."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stereodsc.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as uint8 RGB HxWx3, or raise DataError saying which file failed."""
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot decode image {path}: is it a valid PNG/JPEG file?")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_rgb(path: Path, image: np.ndarray) -> None:
    """Write a uint8 RGB image (format from the suffix; PNG is lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise DataError(f"cannot write image {path}: check the folder and the file suffix")


def image_files(folder: Path) -> list[Path]:
    """Images in a folder, in name order; an empty or missing folder is an error."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files
