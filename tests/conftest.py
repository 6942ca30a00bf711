"""Shared fixtures: the bundled sample, and ../shared/data when it is there (tests that need it skip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STEREODSC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def sample_drive() -> Path:
    from stereodsc.sample import drive_path

    return drive_path()


@pytest.fixture(scope="session")
def kitti_drive() -> Path:
    drive = SHARED_DATA / "kitti_raw_2011_09_26_drive_0001"
    if not drive.is_dir():
        pytest.skip(f"KITTI drive not available at {drive} (set STEREODSC_SHARED_DATA to ../shared/data)")
    return drive


@pytest.fixture(scope="session")
def pair_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ``<name>_L`` / ``<name>_R`` pairs of 100x200: not a multiple of the stride (16), and MS-SSIM's
    97 px a side at window 7 (read only: the eval tests share it)."""
    from stereodsc.images import write_rgb
    from tiny_models import sample_pair

    folder = tmp_path_factory.mktemp("pairs")
    for seed, name in enumerate(("a", "b")):
        x, y = sample_pair(100, 200, seed)
        write_rgb(folder / f"{name}_R.png", x)
        write_rgb(folder / f"{name}_L.png", y)
    return folder
