"""End to end: a host service and two camera nodes as separate processes over loopback TCP.

Each test asserts what was decoded, what was dropped and why, and that nothing was lost silently.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from stereodsc.bundle import load_bundle
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.export import export_bundle
from stereodsc.host_decoder.config import host_config_from_dict
from stereodsc.host_decoder.service import HostService
from stereodsc.images import read_rgb
from stereodsc.pipeline import (
    STEREO,
    CameraSpec,
    collect,
    edge_config,
    free_port,
    host_config,
    run_pipeline,
    spawn,
    wait,
)
from stereodsc.records import decoded_name
from stereodsc.sample import drive_path
from stereodsc.wire import Frame, Role, unpack
from tiny_models import bundle_dir, checkpoint

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_dir(tmp_path_factory, "stereo")


def sample(camera: str, seq: int) -> np.ndarray:
    return read_rgb(kitti_frames(drive_path(), camera)[0][seq])


def test_every_sent_frame_is_decoded_bit_exactly(stereo: Path, tmp_path: Path) -> None:
    frames = 5
    run = run_pipeline(stereo, tmp_path, frames=frames, fps=20.0)
    assert run.host_stats["rejected"] == {} and run.host_stats["dropped"] == {}
    assert run.host_stats["decoded_reference"] == frames
    assert run.host_stats["decoded_with_side_info"] == frames
    assert run.host_stats["sequence_gaps"] == 0
    sent = {(cam, r["seq"]): r["symbols"] for cam, recs in run.edge_frames.items() for r in recs if r["sent"]}
    decoded = {(r["camera"], r["seq"]): r["symbols"] for r in run.host_frames}
    assert len(sent) == 2 * frames
    assert decoded == sent, "the host must decode every sent frame, with the very symbols the camera coded"
    for cam in (0, 1):  # ... and each camera knows it: the host acked every frame
        assert {k: run.edge_stats[cam][k] for k in ("sent", "acked", "lost")} == {"sent": 5, "acked": 5, "lost": 0}
    assert run.host_stats["received"] == 10 and run.host_stats["link"]["acks_dropped"] == 0

    # The decoded pictures equal an offline decode of the same images (same graphs, same tables).
    bundle = load_bundle(stereo)
    decoder = HostDecoder(bundle)
    for seq in range(frames):
        ref_enc, dep_enc = EdgeEncoder(bundle, "intra", 0), EdgeEncoder(bundle, "side_info", 0)
        ref_frame = ref_enc.frame(ref_enc.encode(sample("left", seq)), rig_id=1, camera_id=0, seq=seq, t_capture_ns=0)
        dep_frame = dep_enc.frame(dep_enc.encode(sample("right", seq)), rig_id=1, camera_id=1, seq=seq, t_capture_ns=0)
        ref = decoder.decode(ref_frame).image
        dep = decoder.decode(dep_frame, ref).image
        assert np.array_equal(read_rgb(run.decoded_dir / f"{decoded_name(1, 0, seq)}.png"), ref)
        assert np.array_equal(read_rgb(run.decoded_dir / f"{decoded_name(1, 1, seq)}.png"), dep)


def test_cameras_may_run_different_bundles_the_host_has(
    stereo: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The reference camera codes with one bundle's intra codec, the dependent camera with DSIN's
    side-information bundle (as the shipped "dsin" bundle is used); the host loads both."""
    dsin = tmp_path / "dsin_192x384"
    export_bundle([checkpoint(tmp_path_factory, "dsin")], dsin, sample_images=[], sizes=[(192, 384)], progress=False)
    run = run_pipeline(
        stereo,
        tmp_path,
        frames=3,
        fps=10.0,
        # The two cameras warm up different codecs and may start seconds apart on a loaded machine: the
        # pairs wait for each other (what this test checks is the decoding, not the deadline).
        host_extra={"host": {"extra_bundles": [str(dsin)]}, "pairing": {"deadline_ms": 15000.0}},
        edge_extra={1: {"codec": {"bundle": str(dsin)}}},
    )
    stats = run.host_stats
    assert stats["rejected"] == {} and stats["dropped"] == {} and stats["decode_errors"] == {}
    assert stats["decoded_reference"] == 3 and stats["decoded_with_side_info"] == 3
    sent = {(cam, r["seq"]): r["symbols"] for cam, recs in run.edge_frames.items() for r in recs if r["sent"]}
    assert {(r["camera"], r["seq"]): r["symbols"] for r in run.host_frames} == sent


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_cameras_survive_a_host_restart(stereo: Path, tmp_path: Path) -> None:
    port = free_port()
    first = spawn("host", host_config(tmp_path, port, stereo, idle_exit_s=0.0, tag="host_a"))
    configs = [edge_config(tmp_path, port, stereo, cam, frames=150, fps=10.0, loop=True) for cam in STEREO]
    edges = [spawn("edge", cfg) for cfg in configs]
    try:
        deadline = time.monotonic() + 120
        while _lines(tmp_path / "host_a_frames.jsonl") < 6:
            assert time.monotonic() < deadline, "the first host decoded nothing"
            assert first.poll() is None and all(e.poll() is None for e in edges)
            time.sleep(0.1)
        first.kill()  # the host dies mid-stream, without a goodbye
        first.wait()
        time.sleep(1.0)
        second = spawn("host", host_config(tmp_path, port, stereo, idle_exit_s=3.0, tag="host_b"))
        for proc, cfg in zip(edges, configs, strict=True):
            wait(proc, time.monotonic() + 120, cfg.with_suffix(".log"))  # the cameras never hang
        wait(second, time.monotonic() + 60, tmp_path / "host_b.log")
    finally:
        for proc in [first, *edges]:
            if proc.poll() is None:
                proc.kill()
    run = collect(tmp_path, STEREO, tag="host_b")
    before = {
        (json.loads(line)["camera"], json.loads(line)["seq"])
        for line in (tmp_path / "host_a_frames.jsonl").read_text().splitlines()
    }
    after = {(r["camera"], r["seq"]) for r in run.host_frames}
    assert after, "the cameras did not reconnect to the restarted host"
    for cam in (0, 1):
        # Each camera goes on where it was: nothing the dead host decoded comes again. Per camera: one
        # that started late (a dependent warming up on a loaded machine) may reach only the new host, at seq 1.
        seen, resumed = [s for c, s in before if c == cam], [s for c, s in after if c == cam]
        if seen and resumed:
            assert min(resumed) > max(seen), f"camera {cam} resent frames the first host had decoded"
    sent = {(cam, r["seq"]) for cam, recs in run.edge_frames.items() for r in recs if r["sent"]}
    dropped_at_camera = sum(not r["sent"] for recs in run.edge_frames.values() for r in recs)
    assert dropped_at_camera > 0, "frames captured while no host was up are dropped and counted at the camera"
    lost = sent - before - after
    undecoded_after_reconnect = 0
    for cam in (0, 1):
        # What was lost before the camera reached the new host is what the dead host had accepted (its
        # queue, the socket buffers) and never decoded. After it, every frame the camera sent was
        # decoded or dropped by the pairing policy with a counted reason (e.g. a dependent whose
        # reference went to the dead host, or was dropped at a camera whose window of frames in
        # flight was full on a loaded machine).
        first_after = min(seq for c, seq in after if c == cam)
        undecoded_after_reconnect += sum(1 for c, seq in lost if c == cam and seq >= first_after)
    assert undecoded_after_reconnect <= sum(run.host_stats["dropped"].values())
    # A gap in a camera's sequence numbers at the new host is a frame the camera numbered and dropped
    # (its window of frames in flight full: a loaded machine decodes slower than the cameras capture).
    assert run.host_stats["sequence_gaps"] <= dropped_at_camera
    assert run.host_stats["rejected"] == {}
    for cam in (0, 1):  # nothing silently lost: each frame a camera sent was acked by a host or counted lost
        edge = run.edge_stats[cam]
        assert edge["sent"] == edge["acked"] + edge["lost"]
        assert edge["sent"] == sum(r["sent"] for r in run.edge_frames[cam])


def _frame(bundle_id: bytes, role: Role = Role.REFERENCE, seq: int = 0) -> bytes:
    return Frame(bundle_id, 0, 1, 0, role, seq, 0, 64, 128, (b"\x00" * 8,)).pack()


def test_host_rejects_foreign_and_corrupt_frames_and_counts_them(stereo: Path, tmp_path: Path) -> None:
    cfg = host_config_from_dict({"host": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "bundle": str(stereo)}})
    service = HostService.from_config(cfg)
    try:
        bundle = service.bundle
        enc = EdgeEncoder(bundle, "intra", 0)
        good = enc.frame(enc.encode(sample("left", 0)), rig_id=1, camera_id=0, seq=0, t_capture_ns=1).pack()
        foreign = _frame(b"\x01" * 8)
        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0x10
        for data in (foreign, bytes(flipped), good[:-3], b"garbage", good):
            service.handle(data, time.monotonic())
        assert service.stats.rejected == {
            "BundleMismatchError": 1,
            "CrcMismatchError": 1,
            "TruncatedFrameError": 1,
            "BadMagicError": 1,
        }
        assert service.stats.decoded_reference == 1 and service.stats.received == 5
        assert unpack(good).bundle_id == bundle.id_bytes
    finally:
        service.close()


def test_camera_array_shares_one_reference(stereo: Path, tmp_path: Path) -> None:
    cameras = (*STEREO, CameraSpec(2, "dependent", "right"))
    run = run_pipeline(stereo, tmp_path, frames=3, fps=20.0, cameras=cameras)
    assert run.host_stats["decoded_reference"] == 3
    assert run.host_stats["decoded_with_side_info"] == 6, "both dependent cameras pair with the one reference"
    assert {(r["camera"], r["seq"]) for r in run.host_frames} == {(c, s) for c in (0, 1, 2) for s in range(3)}


def test_decoded_frames_reach_subscribers_and_callbacks(stereo: Path) -> None:
    import zmq

    pub_port = free_port()
    cfg = host_config_from_dict(
        {
            "host": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "bundle": str(stereo)},
            "sinks": {"publish": f"tcp://127.0.0.1:{pub_port}"},
        }
    )
    seen: list[int] = []
    service = HostService.from_config(cfg, callbacks=[lambda out: seen.append(out.frame.seq)])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.connect(f"tcp://127.0.0.1:{pub_port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"rig1.cam0")
        time.sleep(0.3)  # let the subscription reach the publisher
        enc = EdgeEncoder(service.bundle, "intra", 0)
        image = sample("left", 0)
        encoded = enc.encode(image)
        for seq in range(10):
            frame = enc.frame(encoded, rig_id=1, camera_id=0, seq=seq, t_capture_ns=seq)
            service.handle(frame.pack(), time.monotonic())
        assert seen == list(range(10))
        assert sub.poll(5000), "no decoded frame was published"
        topic, header, payload = sub.recv_multipart()
        meta = json.loads(header)
        assert topic == b"rig1.cam0" and meta["role"] == "reference" and meta["side_info"] is False
        decoded = np.frombuffer(payload, np.uint8).reshape(meta["height"], meta["width"], 3)
        assert decoded.shape == image.shape
        assert np.array_equal(decoded, HostDecoder(service.bundle).decode(unpack(frame.pack())).image)
    finally:
        sub.close(0)
        ctx.term()
        service.close()


def test_camera_and_host_modules_never_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "import stereodsc.cli, stereodsc.edge_encoder.daemon, stereodsc.codec.encoder\n"
        "import stereodsc.host_decoder.service, stereodsc.codec.decoder, stereodsc.pipeline\n"
        "import stereodsc.calibration, stereodsc.transport, stereodsc.wire, stereodsc.entropy, stereodsc.bundle\n"
        "import stereodsc.runtime.ort\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("build", "raw", "match"),
    [
        ("edge", {"camera": {"role": "left"}}, r"role = 'left'; choose one of \['reference', 'dependent'\]"),
        ("edge", {"camera": {"fps": "fast"}}, r"\[camera\] fps = 'fast' should be a float"),
        ("edge", {"cam": {}}, r"unknown section\(s\) \['cam'\]"),
        ("host", {"pairing": {"policy": "maybe"}}, r"policy = 'maybe'; choose one of"),
        ("host", {"host": {"endpiont": "tcp://*:1"}}, r"unknown key\(s\) \['endpiont'\] in \[host\]"),
        ("host", {"host": {"extra_bundles": [1]}}, r"extra_bundles must be a list of bundle folders"),
        ("edge", {"link": {"drain_s": -1.0}}, r"\[link\] drain_s and wait_for_host_s are seconds >= 0"),
        (
            "edge",
            {"camera": {"role": "dependent", "source": "device", "path": "0"}},
            r"a dependent camera needs rectified frames.*stereodsc calibrate.*rectified = true",
        ),
    ],
)
def test_bad_service_configs_name_the_key(build: str, raw: dict, match: str) -> None:
    from stereodsc.edge_encoder.daemon import edge_config_from_dict
    from stereodsc.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        (edge_config_from_dict if build == "edge" else host_config_from_dict)(raw, "x.toml")
