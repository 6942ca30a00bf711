"""Rebuild the bundled KITTI sample (src/stereodsc/sample/kitti_sample) from ../shared/data.

The sample is a KITTI raw drive in miniature: the same folder layout (image_02/03, timestamps,
calibration), so the same loader reads the sample and the full drive. Each frame is the paper
protocol's centre crop (370x740) resized to 192x384: small enough to ship, large enough that the
paper protocol (resize to 128x256) and the native mode (multiple of 64) both apply.

Beside it, ``kitti_native/`` holds one frame of the drive at the camera's own size (375x1242, frame
100: one of the drive's last 20 frames, which the native models never train on), in the same drive
layout with the original calibration: what the native models' quality pins and the native demo use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

CROP_H, CROP_W = 370, 740
OUT_H, OUT_W = 192, 384


def crop_box(h: int, w: int) -> tuple[int, int]:
    return (h - CROP_H) // 2, (w - CROP_W) // 2


def scaled_projection(p: np.ndarray, y0: int, x0: int, s: float) -> np.ndarray:
    """P of the cropped and resized image: shift the principal point, then scale rows 0 and 1."""
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64)
    scale = np.diag([s, s, 1.0])
    return scale @ shift @ p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--drive", type=Path, default=Path("../shared/data/kitti_raw_2011_09_26_drive_0001"))
    ap.add_argument("--out", type=Path, default=Path("src/stereodsc/sample/kitti_sample"))
    ap.add_argument("--first", type=int, default=40)
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--native-frame", type=int, default=100, help="held-out frame copied at full size")
    args = ap.parse_args()
    native = args.out.parent / "kitti_native"  # the same drive layout, one frame at full size
    for cam in ("02", "03"):
        src, dst = args.drive / f"image_{cam}", native / f"image_{cam}"
        (dst / "data").mkdir(parents=True, exist_ok=True)
        stamp = (src / "timestamps.txt").read_text().splitlines()[args.native_frame]
        (dst / "timestamps.txt").write_text(stamp + "\n")
        img = cv2.imread(str(src / "data" / f"{args.native_frame:010d}.png"), cv2.IMREAD_COLOR)
        cv2.imwrite(str(dst / "data" / f"{args.native_frame:010d}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    (native / "calib_cam_to_cam.txt").write_text((args.drive / "calib_cam_to_cam.txt").read_text())
    s = OUT_W / CROP_W
    for cam in ("02", "03"):
        src = args.drive / f"image_{cam}"
        dst = args.out / f"image_{cam}"
        (dst / "data").mkdir(parents=True, exist_ok=True)
        stamps = (src / "timestamps.txt").read_text().splitlines()
        keep = range(args.first, args.first + args.count)
        (dst / "timestamps.txt").write_text("\n".join(stamps[i] for i in keep) + "\n")
        for new_i, i in enumerate(keep):
            img = cv2.imread(str(src / "data" / f"{i:010d}.png"), cv2.IMREAD_COLOR)
            y0, x0 = crop_box(*img.shape[:2])
            img = img[y0 : y0 + CROP_H, x0 : x0 + CROP_W]
            img = cv2.resize(img, (OUT_W, OUT_H), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(dst / "data" / f"{new_i:010d}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    lines = []
    for line in (args.drive / "calib_cam_to_cam.txt").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith(("S_rect_", "P_rect_")):
            vals = np.array(value.split(), dtype=np.float64)
            if key.startswith("S_rect_"):
                vals = np.array([OUT_W, OUT_H], dtype=np.float64)
            else:
                y0, x0 = crop_box(375, 1242)
                vals = scaled_projection(vals.reshape(3, 4), y0, x0, s).ravel()
            value = " " + " ".join(f"{v:.6e}" for v in vals)
        lines.append(f"{key}:{value}")
    (args.out / "calib_cam_to_cam.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
