"""Camera sources: where a camera node's frames come from.

Every source yields `Captured(image, t_capture_ns)` with `image` uint8 RGB HxWx3. Live sources
(a V4L2/USB device or a GStreamer pipeline through OpenCV) stamp frames with the wall clock when
they are read; recorded sources (a video file, an image folder, a KITTI drive, the bundled
sample) replay their own timestamps when they have them, so pairing by capture time works on
recordings exactly as it does live.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from stereodsc.errors import ConfigError, DataError
from stereodsc.images import image_files, read_rgb
from stereodsc.sample import drive_path

KITTI_CAMERAS = {"left": "image_02", "right": "image_03"}


@dataclass(frozen=True)
class Captured:
    image: np.ndarray  # uint8 RGB HxWx3
    t_capture_ns: int


def parse_kitti_timestamp(line: str) -> int:
    """'2011-09-26 13:02:25.961661696' (KITTI, UTC assumed) -> ns since the epoch, exact to the ns."""
    stamp, _, frac = line.strip().partition(".")
    try:
        whole = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise DataError(f"bad KITTI timestamp {line.strip()!r}: expected 'YYYY-MM-DD HH:MM:SS.fffffffff'") from e
    return int(whole.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])


def kitti_frames(drive: Path, camera: str) -> tuple[list[Path], list[int]]:
    """Image paths and capture times of one camera of a KITTI raw drive ('left' or 'right')."""
    if camera not in KITTI_CAMERAS:
        raise ConfigError(f"camera {camera!r}: a KITTI drive has cameras {list(KITTI_CAMERAS)}")
    cam_dir = drive / KITTI_CAMERAS[camera]
    files = image_files(cam_dir / "data")
    stamps_file = cam_dir / "timestamps.txt"
    if not stamps_file.is_file():
        raise DataError(f"{stamps_file} missing: a KITTI drive needs per-camera timestamps")
    stamps = [parse_kitti_timestamp(s) for s in stamps_file.read_text().splitlines() if s.strip()]
    if len(stamps) != len(files):
        raise DataError(f"{cam_dir}: {len(files)} images but {len(stamps)} timestamps")
    return files, stamps


def replay(files: list[Path], stamps: list[int] | None, loop: bool = False) -> Iterator[Captured]:
    """Recorded frames in order, with their own timestamps or, without any, the time of reading."""
    while True:
        for i, path in enumerate(files):
            yield Captured(read_rgb(path), stamps[i] if stamps else time.time_ns())
        if not loop:
            return


def capture(spec: str | int) -> Iterator[Captured]:
    """A live camera (device index or /dev/videoN), a GStreamer pipeline, or a video file, via OpenCV."""
    if isinstance(spec, int) or str(spec).isdigit():
        cap = cv2.VideoCapture(int(spec))
    elif "!" in str(spec):
        cap = cv2.VideoCapture(str(spec), cv2.CAP_GSTREAMER)
    else:
        cap = cv2.VideoCapture(str(spec))
    if not cap.isOpened():
        hint = " (PyPI's opencv has no GStreamer: use the system OpenCV on a Jetson)" if "!" in str(spec) else ""
        raise DataError(f"cannot open video source {spec!r}{hint}")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield Captured(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), time.time_ns())
    finally:
        cap.release()


def open_source(kind: str, path: str = "", camera: str = "left", loop: bool = False) -> Iterator[Captured]:
    """A source by configuration: kind = 'sample' | 'kitti' | 'folder' | 'video' | 'device' | 'gstreamer'."""
    if kind == "sample":
        return replay(*kitti_frames(drive_path(), camera), loop=loop)
    if kind == "kitti":
        return replay(*kitti_frames(Path(path), camera), loop=loop)
    if kind == "folder":
        return replay(image_files(Path(path)), None, loop=loop)
    if kind in ("video", "device", "gstreamer"):
        if not path:
            raise ConfigError(f"source kind {kind!r} needs a path (file, device index or pipeline)")
        return capture(path)
    raise ConfigError(f"unknown source kind {kind!r}; choose sample, kitti, folder, video, device or gstreamer")
