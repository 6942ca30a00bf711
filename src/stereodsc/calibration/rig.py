"""The stereo rig: everything a camera node needs to rectify its frames, in one hashed TOML file.

This module needs numpy only (no OpenCV), so any part of the system can read a rig and its id.
Conventions are OpenCV's: ``R``, ``T`` map a point from the left camera's frame into the right
camera's (``X_r = R @ X_l + T``); ``R1``/``R2`` rotate each raw camera into its rectified frame;
``P1``/``P2`` project into the rectified images; ``Q`` reprojects (x, y, disparity) to 3-D.
``T`` and ``Q`` are in the unit of the calibration board's squares (metres for KITTI).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.errors import CalibrationError
from stereodsc.tomlio import load_toml

RIG_FORMAT = "stereodsc-rig"
RIG_VERSION = 1

# Key -> allowed shapes. Distortion vectors follow OpenCV's models (4, 5, 8, 12 or 14 terms).
_MATRIX_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "K1": ((3, 3),),
    "D1": ((4,), (5,), (8,), (12,), (14,)),
    "K2": ((3, 3),),
    "D2": ((4,), (5,), (8,), (12,), (14,)),
    "R": ((3, 3),),
    "T": ((3,),),
    "R1": ((3, 3),),
    "R2": ((3, 3),),
    "P1": ((3, 4),),
    "P2": ((3, 4),),
    "Q": ((4, 4),),
}


def _as_matrix(key: str, value: Any, where: str) -> np.ndarray:
    """Coerce one rig entry to a read-only float64 array of an allowed shape, or say which key is bad."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{where}: {key} is not a numeric array ({exc})") from exc
    allowed = _MATRIX_SHAPES[key]
    if key in ("D1", "D2", "T"):
        arr = arr.reshape(-1)  # OpenCV hands these out as 1xN or Nx1
    if arr.shape not in allowed:
        want = " or ".join("x".join(map(str, s)) for s in allowed)
        raise CalibrationError(f"{where}: {key} has shape {arr.shape}, expected {want}")
    if not np.all(np.isfinite(arr)):
        raise CalibrationError(f"{where}: {key} contains NaN or infinity")
    arr.setflags(write=False)
    return arr


def _as_size(key: str, value: Any, where: str) -> tuple[int, int]:
    """Validate an image size given as (width, height) of positive integers."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise CalibrationError(f"{where}: {key} must be [width, height] in positive integers, got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True, eq=False)
class StereoRig:
    """A calibrated, rectified stereo pair. Arrays are read-only; ``rig_id`` hashes the numbers.

    ``image_size`` is the (width, height) of the raw frames the cameras deliver and
    ``rectified_size`` that of the rectified frames (the same after a chessboard calibration;
    KITTI's raw calibration crops 1392x512 raw frames to 1242x375). ``rig_id`` is computed when
    left empty and checked when given, so a hand-edited rig file cannot keep an id that no longer
    describes it.
    """

    image_size: tuple[int, int]
    rectified_size: tuple[int, int]
    K1: np.ndarray
    D1: np.ndarray
    K2: np.ndarray
    D2: np.ndarray
    R: np.ndarray
    T: np.ndarray
    R1: np.ndarray
    R2: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    Q: np.ndarray
    source: str = ""
    rig_id: str = field(default="")

    def __post_init__(self) -> None:
        where = "stereo rig"
        object.__setattr__(self, "image_size", _as_size("image_size", self.image_size, where))
        object.__setattr__(self, "rectified_size", _as_size("rectified_size", self.rectified_size, where))
        for key in _MATRIX_SHAPES:
            object.__setattr__(self, key, _as_matrix(key, getattr(self, key), where))
        digest = self._digest()
        if not self.rig_id:
            object.__setattr__(self, "rig_id", digest)
        elif self.rig_id != digest:
            raise CalibrationError(
                f"rig_id {self.rig_id!r} does not match the rig's numbers (expected {digest!r}): "
                "the file was edited or corrupted; recalibrate, or delete the rig_id line to accept the edit"
            )

    def _digest(self) -> str:
        """Short sha256 over the sizes and every matrix, in a fixed order and byte layout.

        Signed zeros are folded, since writers disagree on them (OpenCV's YAML drops the sign).
        """
        h = hashlib.sha256()
        h.update(np.asarray([*self.image_size, *self.rectified_size], dtype="<i8").tobytes())
        for key in _MATRIX_SHAPES:
            arr: np.ndarray = getattr(self, key)
            h.update(key.encode())
            h.update(np.asarray(arr.shape, dtype="<i8").tobytes())
            h.update((np.ascontiguousarray(arr, dtype="<f8") + 0.0).tobytes())  # + 0.0 turns -0.0 into 0.0
        return h.hexdigest()[:16]

    @property
    def baseline(self) -> float:
        """Distance between the two camera centres, in the board's unit (metres for KITTI)."""
        return float(np.linalg.norm(self.T))

    @property
    def rectified_focal(self) -> float:
        """Focal length of the rectified views in pixels (depth = focal * baseline / disparity)."""
        return float(self.P2[0, 0])

    def save_toml(self, path: str | Path) -> Path:
        """Write the rig as TOML; a reload gives bit-identical matrices and the same ``rig_id``."""
        path = Path(path)
        lines = [
            "# stereodsc stereo rig. OpenCV conventions: X_right = R @ X_left + T;",
            "# R1/R2 rotate each raw camera into its rectified frame; P1/P2 project into the rectified",
            "# images. T and Q are in the unit of the board's squares. Sizes are [width, height] in pixels.",
            f'format = "{RIG_FORMAT}"',
            f"version = {RIG_VERSION}",
            f'rig_id = "{self.rig_id}"',
            f"source = {_toml_string(self.source)}",
            f"image_size = [{self.image_size[0]}, {self.image_size[1]}]",
            f"rectified_size = [{self.rectified_size[0]}, {self.rectified_size[1]}]",
        ]
        for key in _MATRIX_SHAPES:
            lines.append(f"{key} = {_toml_array(getattr(self, key))}")
        try:
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as exc:
            raise CalibrationError(f"cannot write rig file {path}: {exc.strerror}") from exc
        return path


def _toml_array(arr: np.ndarray) -> str:
    """A TOML array of floats; ``repr`` is the shortest text that reads back to the same double."""
    if arr.ndim == 1:
        return "[" + ", ".join(repr(float(v)) for v in arr) + "]"
    rows = ",\n".join("  [" + ", ".join(repr(float(v)) for v in row) + "]" for row in arr)
    return "[\n" + rows + ",\n]"


def _toml_string(text: str) -> str:
    """A TOML basic string: escape quotes, backslashes and control characters."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def load_rig(path: str | Path) -> StereoRig:
    """Read and validate a rig file written by :meth:`StereoRig.save_toml`.

    Every key is checked for presence, shape and finiteness, and the stored ``rig_id`` against the
    numbers, so a bad file fails here with the key named instead of deep inside OpenCV.
    """
    path = Path(path)
    if path.suffix.lower() in (".yml", ".yaml", ".xml"):
        raise CalibrationError(
            f"{path} looks like an OpenCV FileStorage file: import it with "
            "stereodsc.calibration.rig_from_opencv(...) and save it with rig.save_toml(...)"
        )
    if not path.is_file():
        raise CalibrationError(f"rig file {path} not found: run 'stereodsc calibrate' to create one")
    data = load_toml(path, CalibrationError)
    where = str(path)
    if data.get("format") != RIG_FORMAT:
        raise CalibrationError(f"{where}: format must be {RIG_FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != RIG_VERSION:
        raise CalibrationError(
            f"{where}: rig file version {data.get('version')!r} is not supported (this stereodsc reads "
            f"version {RIG_VERSION}); upgrade stereodsc or recalibrate"
        )
    for key in ("image_size", *_MATRIX_SHAPES):
        if key not in data:
            raise CalibrationError(f"{where}: missing key {key!r}")
    source = data.get("source", "")
    rig_id = data.get("rig_id", "")
    if not isinstance(source, str) or not isinstance(rig_id, str):
        raise CalibrationError(f"{where}: source and rig_id must be strings")
    image_size = _as_size("image_size", data["image_size"], where)
    rectified_size = _as_size("rectified_size", data.get("rectified_size", image_size), where)
    mats = {key: _as_matrix(key, data[key], where) for key in _MATRIX_SHAPES}
    try:
        return StereoRig(image_size=image_size, rectified_size=rectified_size, source=source, rig_id=rig_id, **mats)
    except CalibrationError as exc:
        raise CalibrationError(f"{where}: {exc}") from exc


def q_matrix(P1: np.ndarray, P2: np.ndarray) -> np.ndarray:
    """Disparity-to-depth matrix of a horizontally rectified pair, as ``cv2.stereoRectify`` builds it.

    Works when ``P1`` has a translation column too (KITTI's P_rect place the origin at camera 0):
    the baseline is the difference of the two rows' x offsets divided by the focal length.
    """
    f = float(P1[0, 0])
    tx = (float(P2[0, 3]) - float(P1[0, 3])) / f
    if math.isclose(tx, 0.0, abs_tol=1e-12):
        raise CalibrationError("P1 and P2 have no horizontal baseline: not a horizontally rectified pair")
    cx1, cy1, cx2 = float(P1[0, 2]), float(P1[1, 2]), float(P2[0, 2])
    return np.array(
        [
            [1.0, 0.0, 0.0, -cx1],
            [0.0, 1.0, 0.0, -cy1],
            [0.0, 0.0, 0.0, f],
            [0.0, 0.0, -1.0 / tx, (cx1 - cx2) / tx],
        ]
    )
