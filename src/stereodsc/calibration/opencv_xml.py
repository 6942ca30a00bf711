"""Import from OpenCV ``FileStorage`` files as OpenCV's ``stereo_calib`` sample reads and writes them.

The sample takes an image list (``stereo_calib.xml``: left, right, left, right, ...) and writes
``intrinsics.yml`` (M1, D1, M2, D2) and ``extrinsics.yml`` (R, T, R1, R2, P1, P2, Q). Neither file
stores the image size, so it comes from an ``image_size``/``imageSize`` or
``image_width``/``image_height`` entry when present, else from the caller.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stereodsc.calibration.rectify import rectified_rig
from stereodsc.calibration.rig import StereoRig
from stereodsc.errors import CalibrationError, DataError


def _open(path: Path) -> cv2.FileStorage:
    if not path.is_file():
        raise CalibrationError(f"OpenCV calibration file {path} not found")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as exc:
        raise CalibrationError(f"{path} is not an OpenCV FileStorage file (yml/xml/json): {exc}") from exc
    if not fs.isOpened():
        raise CalibrationError(f"{path} is not an OpenCV FileStorage file (yml/xml/json)")
    return fs


def _numbers(node: cv2.FileNode) -> np.ndarray | None:
    """A node's numbers whether it was written as a matrix or as a plain sequence."""
    if node.empty() or node.isNone():
        return None
    if node.isSeq():
        return np.array([node.at(i).real() for i in range(node.size())], dtype=np.float64)
    if node.isReal() or node.isInt():
        return np.array([node.real()])
    mat = node.mat()
    return None if mat is None else np.asarray(mat, dtype=np.float64)


def _image_size(entries: dict[str, np.ndarray]) -> tuple[int, int] | None:
    for key in ("image_size", "imageSize"):
        if key in entries and entries[key].size == 2:
            w, h = entries[key].ravel()
            return int(w), int(h)
    if "image_width" in entries and "image_height" in entries:
        return int(entries["image_width"].ravel()[0]), int(entries["image_height"].ravel()[0])
    return None


def rig_from_opencv(
    intrinsics: str | Path,
    extrinsics: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    alpha: float = 0.0,
) -> StereoRig:
    """A rig from ``intrinsics.yml`` (+ ``extrinsics.yml``), or one file holding all the entries.

    R1, R2, P1, P2, Q are taken as written when all five are present, so the rig reproduces the
    file's rectification exactly; otherwise they are computed with ``cv2.stereoRectify`` (``alpha``).
    """
    paths = [Path(intrinsics)] + ([Path(extrinsics)] if extrinsics is not None else [])
    keys = ["M1", "D1", "M2", "D2", "R", "T", "R1", "R2", "P1", "P2", "Q"]
    keys += ["image_size", "imageSize", "image_width", "image_height"]
    entries: dict[str, np.ndarray] = {}
    for path in paths:
        fs = _open(path)
        for key in keys:
            value = _numbers(fs.getNode(key))
            if value is not None:
                entries[key] = value
        fs.release()
    missing = [k for k in ("M1", "D1", "M2", "D2", "R", "T") if k not in entries]
    if missing:
        raise CalibrationError(
            f"{', '.join(map(str, paths))}: missing {', '.join(missing)} (stereo_calib writes M1 D1 M2 D2 "
            "to intrinsics.yml and R T to extrinsics.yml: pass both files)"
        )
    size = image_size or _image_size(entries)
    if size is None:
        raise CalibrationError(
            f"{paths[0]} does not store the image size: pass image_size=(width, height) of the images "
            "it was calibrated on"
        )
    R = entries["R"]
    if R.size == 3:  # a Rodrigues vector
        R = cv2.Rodrigues(R.reshape(3, 1))[0]
    K1, D1, K2, D2, T = (entries[k] for k in ("M1", "D1", "M2", "D2", "T"))
    source = "OpenCV " + " + ".join(p.name for p in paths)
    if not all(k in entries for k in ("R1", "R2", "P1", "P2", "Q")):
        return rectified_rig(size, K1, D1, K2, D2, R, T, alpha=alpha, source=source)
    return StereoRig(
        image_size=size,
        rectified_size=size,
        K1=K1,
        D1=D1,
        K2=K2,
        D2=D2,
        R=R,
        T=T,
        R1=entries["R1"],
        R2=entries["R2"],
        P1=entries["P1"],
        P2=entries["P2"],
        Q=entries["Q"],
        source=source,
    )


def pairs_from_opencv_imagelist(path: str | Path) -> tuple[list[Path], list[Path]]:
    """Left and right image paths from a ``stereo_calib.xml`` image list (alternating left, right).

    Relative names are resolved against the list's folder, as the OpenCV sample does with its
    data directory.
    """
    path = Path(path)
    fs = _open(path)
    node = fs.getNode("imagelist")
    if node.empty() or not node.isSeq():
        raise DataError(f"{path} has no 'imagelist' sequence: expected OpenCV's stereo_calib.xml format")
    names = [node.at(i).string() for i in range(node.size())]
    fs.release()
    if len(names) % 2:
        raise DataError(f"{path}: the image list has {len(names)} entries; it must alternate left, right")
    files = [p if p.is_absolute() else path.parent / p for p in map(Path, names)]
    return files[0::2], files[1::2]
