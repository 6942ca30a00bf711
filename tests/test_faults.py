"""Faults on a running rig: a silent reference camera, a camera killed mid-stream, frames past the deadline.

Real processes on loopback where the fault is a process's (a) and (b); the host in-process where the
fault is timing (c). Every frame must end decoded or counted under a reason, and the host must keep serving.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.host_decoder.config import host_config_from_dict, load_host_config
from stereodsc.host_decoder.service import HostService, InProcessReceiver
from stereodsc.host_decoder.sinks import DecodedFrame
from stereodsc.pipeline import STEREO, collect, edge_config, free_port, host_config, run_pipeline, spawn, wait
from tiny_models import bundle_dir, sample_pair

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_dir(tmp_path_factory, "stereo")


@pytest.mark.parametrize("policy", ["no_side_info", "drop"])
def test_silent_reference_camera(stereo: Path, tmp_path: Path, policy: str) -> None:
    """The reference camera sends 3 frames, the dependent 8: the dependent stream goes on per policy."""
    run = run_pipeline(
        stereo,
        tmp_path,
        frames=8,
        fps=10.0,
        policy=policy,
        timeout_s=180,
        host_extra={"host": {"stale_after_s": 1.0}},
        edge_extra={0: {"camera": {"max_frames": 3}}},
    )
    stats = run.host_stats
    sent = {cam: {r["seq"] for r in recs if r["sent"]} for cam, recs in run.edge_frames.items()}
    assert sent == {0: set(range(3)), 1: set(range(8))}
    assert stats["rejected"] == {} and stats["decode_errors"] == {} and stats["sequence_gaps"] == 0
    assert stats["decoded_reference"] == 3 and stats["decoded_with_side_info"] == 3
    without, dropped = sum(stats["decoded_without_side_info"].values()), sum(stats["dropped"].values())
    if policy == "no_side_info":
        assert without == 5 and dropped == 0
        assert {(r["camera"], r["seq"]) for r in run.host_frames} == {(c, s) for c in sent for s in sent[c]}
    else:
        assert dropped == 5 and without == 0
        assert {(r["camera"], r["seq"]) for r in run.host_frames} == {(0, s) for s in range(3)} | {
            (1, s) for s in range(3)
        }
    reasons = set(stats["decoded_without_side_info"]) | set(stats["dropped"])
    assert reasons <= {"stale", "late", "no_reference"}, reasons
    assert stats["cameras"]["1.0"]["stale"] is True, "the silent reference camera is reported stale"


def test_camera_killed_mid_stream(stereo: Path, tmp_path: Path) -> None:
    """SIGKILL the dependent camera after a few frames: the host keeps decoding the reference camera,
    exits cleanly when idle, and each frame the dead camera logged as sent is decoded or counted."""
    port = free_port()
    host = spawn(
        "host",
        host_config(tmp_path, port, stereo, policy="no_side_info", extra={"host": {"stale_after_s": 1.0}}),
    )
    # A wide window of frames in flight: on a loaded machine the host may fall behind 10 fps, and this
    # test is about the dead camera, not about the drops that bound latency then.
    wide = {"link": {"max_in_flight": 64}}
    ref_cfg, dep_cfg = (
        edge_config(tmp_path, port, stereo, cam, frames=30, fps=10.0, loop=True, extra=wide) for cam in STEREO
    )
    ref, dep = spawn("edge", ref_cfg), spawn("edge", dep_cfg)
    try:
        deadline = time.monotonic() + 120
        dep_log = tmp_path / "edge1_frames.jsonl"
        while len(dep_log.read_text().splitlines() if dep_log.exists() else []) < 5:
            assert time.monotonic() < deadline, "the dependent camera sent nothing"
            assert dep.poll() is None and host.poll() is None
            time.sleep(0.05)
        dep.send_signal(signal.SIGKILL)
        assert dep.wait(timeout=10) == -signal.SIGKILL
        wait(ref, time.monotonic() + 120, ref_cfg.with_suffix(".log"))
        wait(host, time.monotonic() + 60, tmp_path / "host.log")  # exit code 0 on idle
    finally:
        for proc in (host, ref, dep):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    run = collect(tmp_path, STEREO)
    stats = run.host_stats
    decoded = {cam: {r["seq"] for r in run.host_frames if r["camera"] == cam} for cam in (0, 1)}
    sent = {cam: {r["seq"] for r in recs if r["sent"]} for cam, recs in run.edge_frames.items()}
    assert decoded[0] == sent[0] == set(range(30)), "the host kept serving the reference camera"
    assert stats["rejected"] == {} and stats["decode_errors"] == {} and stats["sequence_gaps"] == 0
    assert stats["decoded_reference"] == 30
    # A frame the dead camera had queued but not yet written to its socket dies with it; the host never
    # learns of it (no later frame reveals a gap). That can only be the last frame it logged.
    last = max(decoded[1])
    assert len(sent[1]) >= 5 and all(s > last for s in sent[1] - decoded[1]) and len(sent[1] - decoded[1]) <= 1
    assert len(decoded[1]) == stats["decoded_with_side_info"] + sum(stats["decoded_without_side_info"].values())
    assert stats["cameras"]["1.1"]["stale"] is True, "the dead camera is reported stale"


@pytest.mark.parametrize("policy", ["no_side_info", "drop"])
def test_frames_past_the_deadline(stereo: Path, policy: str) -> None:
    """Dependents whose reference is gone (late), never came (stale) or was overtaken (no_reference)."""
    cfg = host_config_from_dict(
        {
            "host": {"bundle": str(stereo)},
            "pairing": {"policy": policy, "deadline_ms": 100.0},
        }
    )
    service = HostService.from_config(cfg, receiver=InProcessReceiver())
    try:
        left, right = sample_pair()
        ref_enc, dep_enc = EdgeEncoder(service.bundle, "intra", 0), EdgeEncoder(service.bundle, "side_info", 0)
        ref, dep = ref_enc.encode(left), dep_enc.encode(right)

        def send(camera: int, seq: int) -> None:
            enc, encoded = (ref_enc, ref) if camera == 0 else (dep_enc, dep)
            data = enc.frame(encoded, rig_id=1, camera_id=camera, seq=seq, t_capture_ns=seq * 100_000_000).pack()
            service.handle(data, time.monotonic())

        send(0, 0)
        time.sleep(0.25)
        send(1, 0)  # its reference was released at the deadline: late
        send(1, 1)  # no reference 1 ever comes: waits out the deadline, stale
        time.sleep(0.25)
        service.act(service.pairer.poll(time.monotonic_ns()))
        send(1, 2)  # waits ...
        send(0, 3)  # ... until the reference stream passes it: no_reference
        assert service.pairer.pending == 0
        expected = {"late": 1, "stale": 1, "no_reference": 1}
        pairer = service.pairer.stats
        reported = pairer.fallback if policy == "no_side_info" else pairer.dropped
        assert {reason.value: n for reason, n in reported.items()} == expected
        s = service.stats
        counted = s.decoded_without_side_info if policy == "no_side_info" else s.dropped
        assert dict(counted) == expected
        assert s.decoded_reference == 2 and s.decoded_with_side_info == 0 and s.received == 5
        assert sum(s.decoded_without_side_info.values()) + sum(s.dropped.values()) == 3
    finally:
        service.close()


RESUME_WITHIN = 3
"""Pairing resumes within this many frames of a restarted camera's new session."""


def _host_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _await(condition: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        assert all(p.poll() is None for p in procs), f"a process died while waiting: {what}"
        time.sleep(0.1)


def test_each_camera_restart_costs_only_the_frames_in_flight(stereo: Path, tmp_path: Path) -> None:
    """SIGKILL and restart each camera in turn against a running host: the restarted camera announces a new
    session, the host re-bases it onto the rig, and pairing resumes within RESUME_WITHIN frames. The
    restarted `sample` source replays its first frames: new frames of a new session, not duplicates."""
    port = free_port()
    host_log = tmp_path / "host_frames.jsonl"
    host = spawn("host", host_config(tmp_path, port, stereo, policy="drop", idle_exit_s=0.0))
    wide = {"link": {"max_in_flight": 64}}
    configs = [edge_config(tmp_path, port, stereo, cam, frames=0, fps=8.0, loop=True, extra=wide) for cam in STEREO]
    cams = [spawn("edge", cfg) for cfg in configs]
    try:
        _await(lambda: sum(r["camera"] == 1 for r in _host_records(host_log)) >= 3, "no pair decoded", [host, *cams])
        for cam in (0, 1):
            cams[cam].send_signal(signal.SIGKILL)
            cams[cam].wait(timeout=10)
            old = {r["session"] for r in _host_records(host_log) if r["camera"] == cam}
            cams[cam] = spawn("edge", configs[cam])  # same config: a new session, its seq from 0 again

            def new_session(cam: int = cam, old: set[int] = old) -> list[dict[str, Any]]:
                """The host's records from the restarted camera's first decoded frame on."""
                records = _host_records(host_log)
                first = next((i for i, r in enumerate(records) if r["camera"] == cam and r["session"] not in old), None)
                return [] if first is None else records[first:]

            _await(lambda: sum(r["camera"] == 1 for r in new_session()) >= 5, f"no pairs after camera {cam} restarted",
                   [host, *cams])  # fmt: skip
            after = new_session()
            if cam == 0:  # the restarted reference: a dependent pairs within its first few frames
                first_pair = next(i for i, r in enumerate(after) if r["camera"] == 1)
                assert after[first_pair - 1]["seq"] < RESUME_WITHIN, after[: first_pair + 1]
            else:  # the restarted dependent: one of its first frames is paired (decoded: policy drop)
                assert after[0]["seq"] < RESUME_WITHIN, after[:5]
        for proc in cams:
            proc.send_signal(signal.SIGTERM)
        for proc, cfg in zip(cams, configs, strict=True):
            wait(proc, time.monotonic() + 60, cfg.with_suffix(".log"))
        host.send_signal(signal.SIGTERM)
        wait(host, time.monotonic() + 60, tmp_path / "host.log")
    finally:
        for proc in (host, *cams):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    run = collect(tmp_path, STEREO)
    stats = run.host_stats
    assert stats["final"] and stats["rejected"] == {} and stats["decode_errors"] == {}
    assert "duplicate" not in stats["dropped"], "a replayed source after a restart is a new session"
    assert sum(stats["camera_restarts"].values()) == 2
    assert all(r["side_info"] for r in run.host_frames if r["camera"] == 1)
    for cam in (0, 1):  # the second run of each camera ended cleanly: everything it sent is accounted for
        edge = run.edge_stats[cam]
        assert edge["sent"] == edge["acked"] + edge["lost"] and edge["acked"] > 0


def _accounted(stats: dict[str, Any]) -> int:
    """Every outcome a received message can have, and the frames still waiting for their pair."""
    decoded = stats["decoded_reference"] + stats["decoded_with_side_info"]
    decoded += sum(stats["decoded_with_last_reference"].values()) + sum(stats["decoded_without_side_info"].values())
    outcomes = sum(stats["rejected"].values()) + sum(stats["dropped"].values()) + sum(stats["decode_errors"].values())
    return int(decoded + outcomes + stats["pending"])


def test_a_killed_host_leaves_consistent_counts(stereo: Path, tmp_path: Path) -> None:
    """SIGKILL the host mid-stream: its stats_file is a complete snapshot (atomic rewrites), at most
    stats_file_every_s old, whose counts add up (pending included); the next host reports what it left."""
    port = free_port()
    extra: dict[str, dict[str, Any]] = {"host": {"stats_file_every_s": 0.2}, "pairing": {"policy": "wait"}}
    host_cfg = host_config(tmp_path, port, stereo, idle_exit_s=0.0, extra=extra)
    host = spawn("host", host_cfg)
    cams = [spawn("edge", edge_config(tmp_path, port, stereo, cam, frames=0, fps=8.0, loop=True)) for cam in STEREO]
    stats_file = tmp_path / "host_stats.json"
    try:
        _await(lambda: stats_file.exists() and json.loads(stats_file.read_text())["received"] >= 12,
               "the host wrote no running statistics", [host, *cams])  # fmt: skip
        host.send_signal(signal.SIGKILL)
        assert host.wait(timeout=10) == -signal.SIGKILL
    finally:
        for proc in (host, *cams):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stats = json.loads(stats_file.read_text())
    assert stats["final"] is False and stats["received"] >= 12
    assert stats["received"] == _accounted(stats), stats
    cfg = load_host_config(host_cfg)
    cfg.host.endpoint = f"tcp://127.0.0.1:{free_port()}"
    service = HostService.from_config(cfg, receiver=InProcessReceiver())
    try:
        assert service.stats.previous_run == {
            "pending": stats["pending"],
            "received": stats["received"],
            "written_unix_s": stats["written_unix_s"],
        }
    finally:
        service.close()
    assert json.loads(stats_file.read_text())["final"] is True


def test_reference_loss_decodes_dependents_with_the_last_reference(stereo: Path) -> None:
    """The reference camera dies after frame 0: with last_reference_ms its dependents are decoded with that
    reference (counted apart, by reason) instead of dropped, until it is older than last_reference_ms."""
    cfg = host_config_from_dict(
        {
            "host": {"bundle": str(stereo)},
            "pairing": {"policy": "drop", "deadline_ms": 100.0, "last_reference_ms": 60_000.0},
        }
    )
    decoded: list[DecodedFrame] = []
    service = HostService.from_config(cfg, callbacks=[decoded.append], receiver=InProcessReceiver())
    try:
        left, right = sample_pair()
        ref_enc, dep_enc = EdgeEncoder(service.bundle, "intra", 0), EdgeEncoder(service.bundle, "side_info", 0)
        ref, dep = ref_enc.encode(left), dep_enc.encode(right)
        service.handle(ref_enc.frame(ref, rig_id=1, camera_id=0, seq=0, t_capture_ns=0).pack(), time.monotonic())
        for seq in range(3):
            data = dep_enc.frame(dep, rig_id=1, camera_id=1, seq=seq, t_capture_ns=seq * 100_000_000).pack()
            service.handle(data, time.monotonic())
        time.sleep(0.25)
        service.act(service.pairer.poll(time.monotonic_ns()))
        s = service.stats
        assert s.decoded_with_side_info == 1 and dict(s.decoded_with_last_reference) == {"stale": 2}
        assert not s.dropped and s.pending == 0 and s.decoded() == 4
        assert [d.side_info_used for d in decoded] == [False, True, True, True]
    finally:
        service.close()


def test_a_frame_a_camera_counts_acked_has_an_outcome_even_after_a_host_crash(stereo: Path, tmp_path: Path) -> None:
    """The host acks a frame once it has an outcome (here: decoded), not on receipt. Dependent frames
    waiting for their references when the host is SIGKILLed were never acked: their camera counts them
    lost. So every frame a camera counts acked is in the dead host's frame log, and sent = acked + lost
    (with acks on receipt the pending frames would count acked, more than the log holds: this fails)."""
    port = free_port()
    # The dependent camera runs ahead of the reference camera: its frames wait for their pairs.
    extra: dict[str, dict[str, Any]] = {"pairing": {"policy": "wait", "deadline_ms": 60_000.0, "max_pending": 256}}
    host = spawn("host", host_config(tmp_path, port, stereo, idle_exit_s=0.0, extra=extra))
    link = {"link": {"drain_s": 0.5, "max_in_flight": 64}}
    cams = [
        spawn("edge", edge_config(tmp_path, port, stereo, cam, frames=0, fps=fps, loop=True, extra=link))
        for cam, fps in zip(STEREO, (2.0, 10.0), strict=True)
    ]
    frames_log = tmp_path / "host_frames.jsonl"
    try:
        _await(lambda: frames_log.exists() and len(frames_log.read_text().splitlines()) >= 6,
               "the host decoded nothing", [host, *cams])  # fmt: skip
        host.send_signal(signal.SIGKILL)
        assert host.wait(timeout=10) == -signal.SIGKILL
        time.sleep(1.0)  # the cameras see the connection close: what was in flight counts lost at once
        for proc in cams:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) in (0, 1)
    finally:
        for proc in (host, *cams):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    decoded = [json.loads(line) for line in frames_log.read_text().splitlines()]
    for cam in STEREO:
        edge = json.loads((tmp_path / f"edge{cam.camera_id}_stats.json").read_text())
        logged = sum(r["camera"] == cam.camera_id for r in decoded)
        assert edge["sent"] == edge["acked"] + edge["lost"], edge
        # Never more acked than decoded; fewer is the safe over-count of lost: a frame decoded just before
        # the kill whose ack never left the dead host (a loaded host decodes late) counts lost at its camera.
        assert edge["acked"] <= logged, (cam, edge, logged)
    dependent = json.loads((tmp_path / "edge1_stats.json").read_text())
    assert dependent["lost"] >= 1, "the dependent frames waiting for their pairs were counted lost"


def test_an_unrectified_camera_is_reported_once_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    """The shipped default bundle at its highest quality on the sample pair: a rectified rig passes the
    host's row check; a dependent camera whose frames sit 8 rows off its reference's is logged (with
    how to calibrate) and counted once per camera session, and still decoded."""
    import logging

    import numpy as np

    from stereodsc.bundle import load_bundle
    from stereodsc.bundles import shipped_bundles
    from stereodsc.edge_encoder.sources import kitti_frames
    from stereodsc.eval.preprocess import paper_protocol
    from stereodsc.images import read_rgb
    from stereodsc.sample import drive_path

    left, right = (paper_protocol(read_rgb(kitti_frames(drive_path(), c)[0][0])) for c in ("left", "right"))
    bundle = load_bundle(shipped_bundles()["default"])
    ref, dep = EdgeEncoder(bundle, "intra", 3), EdgeEncoder(bundle, "side_info", 3)
    cfg = host_config_from_dict({"host": {"bundle": "default"}})
    service = HostService.from_config(cfg, receiver=InProcessReceiver())
    try:
        with caplog.at_level(logging.WARNING, logger="stereodsc.host"):
            shifted = np.roll(right, 8, axis=0)
            for seq, (rig, view) in enumerate(((1, right), (2, shifted), (2, shifted))):
                for enc, image, cam in ((ref, left, 0), (dep, view, 1)):
                    frame = enc.frame(enc.encode(image), rig_id=rig, camera_id=cam, seq=seq, t_capture_ns=seq)
                    service.handle(frame.pack(), time.monotonic())
        assert service.stats.decoded_with_side_info == 3
        assert service.stats.misaligned_cameras == 1  # rig 2's camera, once for its session
        warnings = [r.getMessage() for r in caplog.records if "not rectified" in r.getMessage()]
        assert len(warnings) == 1 and "camera 2.1" in warnings[0] and "stereodsc calibrate" in warnings[0]
    finally:
        service.close()
