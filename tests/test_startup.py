"""Start-up: compiled kernels are cached where a service user can write, and the codecs warm up
before the first frame, so no frame is lost to start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stereodsc.bundle import load_bundle
from stereodsc.codec import EdgeEncoder, HostDecoder
from tiny_models import bundle_dir

ENCODE_ONE = (
    "import numpy as np, numba, stereodsc\n"
    "stereodsc.encode(np.zeros((64, 128, 3), np.uint8))\n"
    "print(numba.config.CACHE_DIR)\n"
)


def _run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "STEREODSC_CACHE_DIR")}
    done = subprocess.run(
        [sys.executable, "-c", ENCODE_ONE], env=clean | env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.slow
def test_numba_caches_in_the_service_cache_directory(tmp_path: Path) -> None:
    """Under systemd (CacheDirectory= sets $CACHE_DIRECTORY) the kernels are cached there; a home
    folder that does not exist does not matter."""
    folder = _run({"CACHE_DIRECTORY": str(tmp_path), "HOME": "/nonexistent"})
    assert folder == str(tmp_path / "numba")
    assert any((tmp_path / "numba").rglob("*.nbi")), "no compiled kernel was cached"


@pytest.mark.slow
def test_an_unwritable_cache_folder_falls_back_to_a_private_temporary_one() -> None:
    folder = _run({"STEREODSC_CACHE_DIR": "/proc/stereodsc-cannot-write-here", "HOME": "/nonexistent"})
    assert Path(folder).name == f"stereodsc-numba-{os.getuid()}" and Path(folder).is_dir()


def test_warm_up_readies_every_graph_the_host_will_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = load_bundle(bundle_dir(tmp_path_factory, "stereo"))
    decoder = HostDecoder(bundle)
    assert decoder.warm_up([(64, 128)]) == 4  # intra and side_info, two qualities each
    assert len(decoder._sessions._sessions) == 4  # every host graph is open before the first frame
    dsin = HostDecoder(load_bundle(bundle_dir(tmp_path_factory, "dsin")))
    assert dsin.warm_up([(375, 1242)]) == 0  # its fixed-size graphs do not run there: nothing to do
    assert dsin.warm_up([(128, 256)]) == 1
    encoder = EdgeEncoder(bundle, "side_info", 1)
    encoder.warm_up((64, 120))
    assert len(encoder._sessions._sessions) == 1


def test_a_camera_refuses_at_start_up_a_size_its_bundle_cannot_decode(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sample's 192x384 frames against DSIN's host graphs (64x128 and 128x256 only): the camera
    stops before sending anything, exit status 2 (a configuration error: systemd does not restart it),
    with the sizes it could use; the failure does not wait for the host to see undecodable frames."""
    from stereodsc.cli import main
    from stereodsc.pipeline import STEREO, edge_config, free_port

    dsin = bundle_dir(tmp_path_factory, "dsin")
    config = edge_config(tmp_path, free_port(), dsin, STEREO[1], frames=3, fps=0.0)
    assert main(["edge", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "host graph" in err and "192x384" in err and "128x256" in err
    assert not (tmp_path / "edge1_frames.jsonl").exists() or not (tmp_path / "edge1_frames.jsonl").read_text()


@pytest.mark.slow
def test_the_demo_shows_every_frame_of_both_cameras(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's main command on the shipped bundle: all 12 frames of each camera are sent and
    decoded (the dependent ones with side information), also on a loaded machine, and it says so."""
    import json

    from stereodsc.demo import run_demo

    assert run_demo(tmp_path, frames=12) == 0
    summary = json.loads((tmp_path / "demo_report.json").read_text())["summary"]
    assert summary["frames_sent"] == {"0": 12, "1": 12} and summary["frames_decoded"] == 24
    assert summary["dependent_with_side_info"] == 12
    assert "camera 0 sent 12, host decoded 12; camera 1 sent 12, host decoded 12" in capsys.readouterr().out
    assert (tmp_path / "side_by_side.png").is_file()


@pytest.mark.slow
def test_the_native_demo_decodes_the_camera_resolution_with_side_information(tmp_path: Path) -> None:
    """`stereodsc demo --native`: the native bundle at its top quality on the held-out 375x1242 frame,
    through host and camera processes; the dependent view uses side information and pays for it: it
    is better than the same view coded by the intra codec at the same rate."""
    import json

    from stereodsc.demo import run_demo
    from stereodsc.images import read_rgb

    assert run_demo(tmp_path, native=True) == 0
    report = json.loads((tmp_path / "demo_report.json").read_text())
    summary = report["summary"]
    assert summary["frames_decoded"] == 2 and summary["dependent_with_side_info"] == 1
    assert summary["no_side_info_psnr_at_same_rate"] is not None
    assert summary["dependent"]["psnr"] > summary["no_side_info_psnr_at_same_rate"]
    assert read_rgb(tmp_path / "side_by_side.png").shape == (375, 3 * 1242 + 8, 3)


def test_a_camera_that_delivered_nothing_exits_1(tmp_path: Path) -> None:
    """No host at the endpoint: the camera runs, counts its frames dropped, and says with its exit
    status (1, not 0 and not 2) that nothing was delivered, so a supervisor can tell."""
    from stereodsc.cli import main
    from stereodsc.pipeline import STEREO, edge_config, free_port
    from stereodsc.tomlio import dump_toml, load_toml

    config = edge_config(tmp_path, free_port(), Path("default"), STEREO[0], frames=2, fps=0.0)
    raw = load_toml(config)  # the shipped default bundle, no host listening, no waiting for one
    raw["link"].update(wait_for_host_s=0.0, drain_s=0.2)
    config.write_text(dump_toml(raw))
    assert main(["edge", "--config", str(config)]) == 1


def test_a_rig_beyond_the_models_disparity_range_is_reported() -> None:
    """KITTI's rig (721 px focal, 0.54 m baseline) with a model that searches 96 px: objects from
    4.06 m on are matched; a rig expecting objects at 2 m needs 195 px and gets a warning naming fixes."""
    import logging

    from stereodsc.edge_encoder.daemon import disparity_report

    level, message = disparity_report(721.5, 0.54, 96, 0.0)
    assert level == logging.INFO and "from 4.06" in message and "min_depth_m" in message
    level, message = disparity_report(721.5, 0.54, 96, 5.0)
    assert level == logging.INFO and "at 78 px" in message
    level, message = disparity_report(721.5, 0.54, 96, 2.0)
    assert level == logging.WARNING and "195 px" in message and "larger max_disparity" in message
