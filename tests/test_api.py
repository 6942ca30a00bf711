"""The Python API (`stereodsc.encode` / `stereodsc.decode`) on the shipped default bundle: a stereo
pair in four lines, the same bytes as the codec layer, and errors that name the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stereodsc
from stereodsc.bundle import load_bundle
from stereodsc.bundles import shipped_bundles
from stereodsc.codec import EdgeEncoder, HostDecoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.errors import ConfigError, DataError
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.images import read_rgb
from stereodsc.sample import drive_path
from stereodsc.wire import CrcMismatchError, Role, unpack


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    left, right = (read_rgb(kitti_frames(drive_path(), camera)[0][0]) for camera in ("left", "right"))
    return paper_protocol(left), paper_protocol(right)


def test_a_stereo_pair_in_four_lines(pair: tuple[np.ndarray, np.ndarray]) -> None:
    left, right = pair
    reference = stereodsc.encode(left, bundle="default", quality=2)
    dependent = stereodsc.encode(right, codec="side_info", quality=2, seq=7, t_capture_ns=5)
    left_hat = stereodsc.decode(reference)
    right_hat = stereodsc.decode(dependent, side=left_hat)

    bundle = load_bundle(shipped_bundles()["default"])
    frame = unpack(dependent)
    assert (frame.role, frame.quality, frame.seq, frame.t_capture_ns, frame.camera_id) == (Role.DEPENDENT, 2, 7, 5, 1)
    assert frame.segments == EdgeEncoder(bundle, "side_info", 2).encode(right).segments  # the codec layer's bytes
    assert np.array_equal(right_hat, HostDecoder(bundle).decode(frame, left_hat).image)
    assert left_hat.shape == left.shape and right_hat.dtype == np.uint8
    assert len(dependent) < len(reference)  # side information pays


def test_api_errors_name_the_fix(pair: tuple[np.ndarray, np.ndarray]) -> None:
    left, right = pair
    with pytest.raises(ConfigError, match="pass side="):
        stereodsc.decode(stereodsc.encode(right, codec="side_info"))
    with pytest.raises(ConfigError, match="neither a folder nor a shipped bundle"):
        stereodsc.encode(left, bundle="nonesuch")
    with pytest.raises(ConfigError, match="unknown codec role"):
        stereodsc.encode(left, codec="stereo")
    with pytest.raises(DataError, match="uint8"):
        stereodsc.encode(left.astype(np.float32))
    data = stereodsc.encode(left)
    with pytest.raises(CrcMismatchError):
        stereodsc.decode(data[:-1] + bytes([data[-1] ^ 1]))


def test_importing_the_package_stays_light() -> None:
    code = "import sys, stereodsc; stereodsc.encode; print(sorted({'torch', 'onnxruntime'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_decode_command_finds_the_shipped_bundle_by_the_frames_id(
    pair: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stereodsc.cli import main
    from stereodsc.images import write_rgb

    write_rgb(tmp_path / "left.png", pair[0])
    assert main(["encode", str(tmp_path / "left.png"), "--model", "default", "--codec", "intra", "--quality", "1",
                 "-o", str(tmp_path / "left.sdf")]) == 0  # fmt: skip
    assert main(["decode", str(tmp_path / "left.sdf"), "-o", str(tmp_path / "left.png")]) == 0  # no --model
    assert "balle2017 intra q1" in capsys.readouterr().out
    assert np.array_equal(read_rgb(tmp_path / "left.png"), stereodsc.decode((tmp_path / "left.sdf").read_bytes()))
