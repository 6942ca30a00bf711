"""The bundled KITTI sample (see README.md here): the demo's and the tests' data."""

from pathlib import Path


def drive_path() -> Path:
    """Folder of the KITTI raw drive miniature (image_02, image_03, timestamps, calibration)."""
    return Path(__file__).resolve().parent / "kitti_sample"


def native_drive_path() -> Path:
    """A KITTI raw drive of one held-out frame at full size (375x1242), with its calibration."""
    return Path(__file__).resolve().parent / "kitti_native"
