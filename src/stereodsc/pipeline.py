"""Run the whole system on one machine: a host service and camera nodes as separate processes,
talking ZeroMQ over loopback TCP. The demo and the end-to-end tests use it; it is also the
reference for wiring a real rig (the same configs, other endpoints).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stereodsc.errors import StereoDSCError
from stereodsc.tomlio import dump_toml


class PipelineError(StereoDSCError):
    """A pipeline process failed or did not finish in time; the message quotes its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class CameraSpec:
    camera_id: int
    role: str  # "reference" | "dependent"
    drive_camera: str  # which camera of the drive it replays: "left" | "right"


STEREO = (CameraSpec(0, "reference", "left"), CameraSpec(1, "dependent", "right"))


@dataclass(frozen=True)
class PipelineRun:
    """Where a run left its results: logs, decoded PNGs and the host's statistics."""

    folder: Path
    host_stats: dict[str, Any]
    host_frames: list[dict[str, Any]]  # one per decoded frame (host frame_log)
    edge_frames: dict[int, list[dict[str, Any]]]  # camera id -> one per captured frame (edge frame_log)

    @property
    def decoded_dir(self) -> Path:
        return self.folder / "decoded"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "stereodsc.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def run_pipeline(
    bundle: Path,
    folder: Path,
    *,
    frames: int = 12,
    fps: float = 10.0,
    quality: int = 0,
    source: str = "sample",
    path: str = "",
    cameras: tuple[CameraSpec, ...] = STEREO,
    policy: str = "latest_reference",
    backend: str = "cpu",
    timeout_s: float = 300.0,
    host_extra: dict[str, dict[str, Any]] | None = None,
) -> PipelineRun:
    """Start a host and one camera node per `cameras` on loopback, stream `frames` frames from each,
    wait for the host to drain, and collect what everybody logged."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_cfg: dict[str, dict[str, Any]] = {
        "host": {
            "endpoint": f"tcp://127.0.0.1:{port}",
            "bundle": str(bundle),
            "backend": backend,
            "idle_exit_s": 3.0,
            "stats_file": str(folder / "host_stats.json"),
            "stats_every_s": 5.0,
        },
        "pairing": {"policy": policy, "deadline_ms": 2000.0},
        "sinks": {"png_dir": str(folder / "decoded"), "frame_log": str(folder / "host_frames.jsonl")},
    }
    for name, table in (host_extra or {}).items():
        host_cfg.setdefault(name, {}).update(table)
    for stale in (
        "host_stats.json",
        "host_frames.jsonl",
        *(f"edge{c.camera_id}_frames.jsonl" for c in cameras),
    ):
        (folder / stale).unlink(missing_ok=True)
    (folder / "host.toml").write_text(dump_toml(host_cfg))
    host = _spawn(["host", "--config", str(folder / "host.toml")], folder / "host.log")
    edges = []
    try:
        for cam in cameras:
            cfg = {
                "camera": {
                    "rig_id": 1,
                    "camera_id": cam.camera_id,
                    "role": cam.role,
                    "source": source,
                    "path": path,
                    "drive_camera": cam.drive_camera,
                    "fps": fps,
                    "max_frames": frames,
                },
                "codec": {"bundle": str(bundle), "quality": quality, "backend": backend},
                "link": {"endpoint": f"tcp://127.0.0.1:{port}", "wait_for_host_s": 60.0},
                "log": {"stats_every_s": 5.0, "frame_log": str(folder / f"edge{cam.camera_id}_frames.jsonl")},
            }
            cfg_path = folder / f"edge{cam.camera_id}.toml"
            cfg_path.write_text(dump_toml(cfg))
            edges.append((cam, _spawn(["edge", "--config", str(cfg_path)], folder / f"edge{cam.camera_id}.log")))
        deadline = time.monotonic() + timeout_s
        for cam, proc in edges:
            _wait(proc, deadline, folder / f"edge{cam.camera_id}.log")
        _wait(host, deadline, folder / "host.log")
    finally:
        for proc in [host, *(p for _, p in edges)]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stats_path = folder / "host_stats.json"
    if not stats_path.exists():
        raise PipelineError(f"the host wrote no statistics; its log ends with:\n{_tail(folder / 'host.log')}")
    return PipelineRun(
        folder,
        json.loads(stats_path.read_text()),
        _read_jsonl(folder / "host_frames.jsonl"),
        {c.camera_id: _read_jsonl(folder / f"edge{c.camera_id}_frames.jsonl") for c in cameras},
    )


def _wait(proc: subprocess.Popen[bytes], deadline: float, log_path: Path) -> None:
    try:
        code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{log_path.stem} did not finish in time; its log ends with:\n{_tail(log_path)}") from None
    if code != 0:
        raise PipelineError(f"{log_path.stem} exited with code {code}; its log ends with:\n{_tail(log_path)}")
