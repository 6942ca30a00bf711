"""The bundled KITTI sample (see README.md here): the demo's and the tests' data."""

from pathlib import Path


def drive_path() -> Path:
    """Folder of the KITTI raw drive miniature (image_02, image_03, timestamps, calibration)."""
    return Path(__file__).resolve().parent / "kitti_sample"


def native_pair_path() -> Path:
    """Folder of one held-out KITTI pair at full size (375x1242): ``<frame>_L.png`` / ``<frame>_R.png``."""
    return Path(__file__).resolve().parent / "kitti_native"
