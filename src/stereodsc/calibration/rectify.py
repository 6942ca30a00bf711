"""Rectification: build a rig from calibrated cameras, and rectify frames with precomputed maps.

The camera node rectifies every frame before encoding, so the per-frame cost is one ``cv2.remap``
with fixed-point (CV_16SC2) maps computed once; frames that are already rectified (the KITTI
images) pass through untouched.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from stereodsc.calibration.rig import StereoRig
from stereodsc.errors import ConfigError, DataError

# A map that moves no pixel by more than this is treated as the identity (1/32 px is the
# resolution of OpenCV's fixed-point maps, so anything smaller is invisible after remap anyway).
_IDENTITY_TOL_PX = 1.0 / 64.0


def rectified_rig(
    image_size: tuple[int, int],
    K1: np.ndarray,
    D1: np.ndarray,
    K2: np.ndarray,
    D2: np.ndarray,
    R: np.ndarray,
    T: np.ndarray,
    alpha: float = 0.0,
    source: str = "",
) -> StereoRig:
    """Run ``cv2.stereoRectify`` on calibrated cameras and return the complete rig.

    ``alpha=0`` keeps only valid pixels in the rectified frames: black borders would cost bits in
    every encoded frame and carry no information. ``CALIB_ZERO_DISPARITY`` gives both rectified
    views the same principal point, so points at infinity have zero disparity.
    """
    K1, D1, K2, D2, R = (np.asarray(a, dtype=np.float64) for a in (K1, D1, K2, D2, R))
    T = np.asarray(T, dtype=np.float64).reshape(3, 1)
    R1, R2, P1, P2, Q, _, _ = cv2.stereoRectify(
        K1, D1, K2, D2, image_size, R, T, flags=cv2.CALIB_ZERO_DISPARITY, alpha=alpha, newImageSize=image_size
    )
    return StereoRig(
        image_size=image_size,
        rectified_size=image_size,
        K1=K1,
        D1=D1,
        K2=K2,
        D2=D2,
        R=R,
        T=T,
        R1=R1,
        R2=R2,
        P1=P1,
        P2=P2,
        Q=Q,
        source=source,
    )


class Rectifier:
    """Rectifies one camera's frames with maps computed once from the rig.

    Call it with a uint8 frame of the rig's ``image_size`` (HxW or HxWxC, C <= 4); it returns a
    uint8 frame of ``rectified_size``. A rig whose maps are the identity (already rectified
    frames) returns the input array itself, without a copy.
    """

    def __init__(
        self,
        map1: np.ndarray,
        map2: np.ndarray,
        input_size: tuple[int, int],
        output_size: tuple[int, int],
        identity: bool,
    ) -> None:
        self._map1 = map1
        self._map2 = map2
        self.input_size = input_size
        self.output_size = output_size
        self.identity = identity

    @classmethod
    def from_rig(cls, rig: StereoRig, which: Literal["left", "right"] = "left") -> Rectifier:
        """Precompute the remap tables of the ``which`` camera of ``rig``."""
        if which == "left":
            K, D, Rr, P = rig.K1, rig.D1, rig.R1, rig.P1
        elif which == "right":
            K, D, Rr, P = rig.K2, rig.D2, rig.R2, rig.P2
        else:
            raise ConfigError(f"camera must be 'left' or 'right', got {which!r}")
        fx, fy = cv2.initUndistortRectifyMap(K, D, Rr, P[:, :3], rig.rectified_size, cv2.CV_32FC1)
        w, h = rig.rectified_size
        identity = rig.rectified_size == rig.image_size and (
            float(np.abs(fx - np.arange(w, dtype=np.float32)[None, :]).max()) < _IDENTITY_TOL_PX
            and float(np.abs(fy - np.arange(h, dtype=np.float32)[:, None]).max()) < _IDENTITY_TOL_PX
        )
        map1, map2 = cv2.convertMaps(fx, fy, cv2.CV_16SC2)
        return cls(map1, map2, rig.image_size, rig.rectified_size, identity)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Rectify one frame (bilinear, black outside the raw frame)."""
        w, h = self.input_size
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            got = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
            raise DataError(f"rectifier expects a uint8 frame, got {got}: convert with np.clip(...).astype(np.uint8)")
        if img.shape[:2] != (h, w) or img.ndim not in (2, 3) or (img.ndim == 3 and not 1 <= img.shape[2] <= 4):
            raise DataError(
                f"rectifier expects a {w}x{h} frame (HxW or HxWxC = {h}x{w}[x3]), got shape {img.shape}: "
                "the camera resolution must match the rig's image_size; recalibrate at this resolution"
            )
        if self.identity:
            return img
        out = cv2.remap(np.ascontiguousarray(img), self._map1, self._map2, cv2.INTER_LINEAR)
        return out.reshape(out.shape[:2] + img.shape[2:])
