"""Import a rig from KITTI's ``calib_cam_to_cam.txt``.

KITTI's calibration is relative to camera 0: ``X_i = R_0i @ X_0 + T_0i`` for raw camera i,
``R_rect_0i`` (= ``R_rect_00 @ R_0i.T``) rotates raw camera i into the common rectified frame, and
``P_rect_0i`` projects from rectified camera 0 coordinates into rectified image i, so its last
column carries camera i's offset from camera 0.

The KITTI images shipped as "synced+rectified" are already rectified, so the default rig
(``rectified=True``) describes that rectified pair: pinhole cameras ``P_rect[:, :3]`` without
distortion, identity rectifying rotations, ``P1``/``P2`` exactly KITTI's ``P_rect_0i`` and a
:class:`~stereodsc.calibration.rectify.Rectifier` that passes frames through. ``rectified=False``
describes the raw (unrectified) 1392x512 cameras with KITTI's own rectification, for raw footage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stereodsc.calibration.rig import StereoRig, q_matrix
from stereodsc.errors import CalibrationError

_SHAPES = {"S": (2,), "K": (3, 3), "D": (5,), "R": (3, 3), "T": (3,), "S_rect": (2,), "R_rect": (3, 3)}


def read_kitti_calib(path: str | Path) -> dict[str, np.ndarray]:
    """Parse a KITTI ``key: numbers`` calibration file; non-numeric lines (calib_time) are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CalibrationError(f"KITTI calibration {path} not found: pass the drive's calib_cam_to_cam.txt") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read KITTI calibration {path}: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            out[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            continue
    return out


def _get(calib: dict[str, np.ndarray], key: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    if key not in calib:
        raise CalibrationError(f"{path}: missing {key}: is this a KITTI raw calib_cam_to_cam.txt?")
    value = calib[key]
    if value.size != int(np.prod(shape)):
        raise CalibrationError(f"{path}: {key} has {value.size} numbers, expected {int(np.prod(shape))}")
    return value.reshape(shape)


def rig_from_kitti(
    calib_path: str | Path, left_cam: str = "02", right_cam: str = "03", rectified: bool = True
) -> StereoRig:
    """A rig for KITTI cameras ``left_cam``/``right_cam`` ("00".."03"; 02/03 are the colour pair).

    ``rectified=True`` (default) is for KITTI's rectified images; ``rectified=False`` for raw ones.
    Both return KITTI's ``P_rect`` unchanged as ``P1``/``P2``, and ``T`` is the translation between
    the two cameras (so ``rig.baseline`` is in metres: 0.532 m for cameras 02/03).
    """
    path = Path(calib_path)
    calib = read_kitti_calib(path)

    def cam(name: str) -> dict[str, np.ndarray]:
        got = {k: _get(calib, f"{k}_{name}", s, path) for k, s in _SHAPES.items()}
        got["P_rect"] = _get(calib, f"P_rect_{name}", (3, 4), path)
        return got

    a, b = cam(left_cam), cam(right_cam)
    P1, P2 = a["P_rect"], b["P_rect"]
    rect_size = (int(a["S_rect"][0]), int(a["S_rect"][1]))
    if tuple(b["S_rect"]) != tuple(a["S_rect"]):
        raise CalibrationError(f"{path}: S_rect_{left_cam} and S_rect_{right_cam} differ")
    source = f"KITTI {path.name}, cameras {left_cam}/{right_cam}, " + ("rectified" if rectified else "raw")
    Q = q_matrix(P1, P2)
    if rectified:
        # Rectified camera i sits at -t_i in rectified camera-0 coordinates, t_i = K^-1 P_rect_i[:, 3],
        # with the common rectified orientation, so the pair's relative pose is (I, t_b - t_a).
        t_a = np.linalg.solve(P1[:, :3], P1[:, 3])
        t_b = np.linalg.solve(P2[:, :3], P2[:, 3])
        eye = np.eye(3)
        return StereoRig(
            image_size=rect_size,
            rectified_size=rect_size,
            K1=P1[:, :3],
            D1=np.zeros(5),
            K2=P2[:, :3],
            D2=np.zeros(5),
            R=eye,
            T=t_b - t_a,
            R1=eye,
            R2=eye,
            P1=P1,
            P2=P2,
            Q=Q,
            source=source,
        )
    if tuple(b["S"]) != tuple(a["S"]):
        raise CalibrationError(f"{path}: S_{left_cam} and S_{right_cam} differ")
    R = b["R"] @ a["R"].T  # X_b = R_0b R_0a^T (X_a - T_0a) + T_0b
    return StereoRig(
        image_size=(int(a["S"][0]), int(a["S"][1])),
        rectified_size=rect_size,
        K1=a["K"],
        D1=a["D"],
        K2=b["K"],
        D2=b["D"],
        R=R,
        T=b["T"] - R @ a["T"],
        R1=a["R_rect"],
        R2=b["R_rect"],
        P1=P1,
        P2=P2,
        Q=Q,
        source=source,
    )
