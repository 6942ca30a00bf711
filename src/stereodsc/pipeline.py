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
    edge_stats: dict[int, dict[str, Any]]  # camera id -> its final statistics (sent, acked, lost, ...)

    @property
    def decoded_dir(self) -> Path:
        return self.folder / "decoded"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _read_json(path: Path) -> dict[str, Any]:
    """A camera's final statistics, or {} for a camera killed before it could write them."""
    return json.loads(path.read_text()) if path.exists() else {}


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def host_config(
    folder: Path,
    port: int,
    bundle: Path,
    *,
    policy: str = "latest_reference",
    backend: str = "cpu",
    idle_exit_s: float = 3.0,
    tag: str = "host",
    extra: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write a host config that logs into `folder` (files named after `tag`) and return its path."""
    cfg: dict[str, dict[str, Any]] = {
        "host": {
            "endpoint": f"tcp://127.0.0.1:{port}",
            "bundle": str(bundle),
            "backend": backend,
            "idle_exit_s": idle_exit_s,
            "stats_file": str(folder / f"{tag}_stats.json"),
            "stats_every_s": 5.0,
        },
        # A camera that starts a second late is ~10 frames behind at 10 fps: keep that many references.
        "pairing": {"policy": policy, "deadline_ms": 2000.0, "max_references": 32},
        "sinks": {"png_dir": str(folder / "decoded"), "frame_log": str(folder / f"{tag}_frames.jsonl")},
    }
    for name, table in (extra or {}).items():
        cfg.setdefault(name, {}).update(table)
    for stale in (f"{tag}_stats.json", f"{tag}_frames.jsonl"):
        (folder / stale).unlink(missing_ok=True)
    path = folder / f"{tag}.toml"
    path.write_text(dump_toml(cfg))
    return path


def edge_config(
    folder: Path,
    port: int,
    bundle: Path,
    cam: CameraSpec,
    *,
    frames: int,
    fps: float,
    quality: int = 0,
    source: str = "sample",
    path: str = "",
    loop: bool = False,
    backend: str = "cpu",
    extra: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write one camera node's config (frame log edge<id>_frames.jsonl in `folder`) and return its path."""
    cfg: dict[str, dict[str, Any]] = {
        "camera": {
            "rig_id": 1,
            "camera_id": cam.camera_id,
            "role": cam.role,
            "source": source,
            "path": path,
            "drive_camera": cam.drive_camera,
            "fps": fps,
            "max_frames": frames,
            "loop": loop,
        },
        "codec": {"bundle": str(bundle), "quality": quality, "backend": backend},
        "link": {"endpoint": f"tcp://127.0.0.1:{port}", "wait_for_host_s": 60.0},
        "log": {
            "stats_every_s": 5.0,
            "frame_log": str(folder / f"edge{cam.camera_id}_frames.jsonl"),
            "stats_file": str(folder / f"edge{cam.camera_id}_stats.json"),
        },
    }
    for name, table in (extra or {}).items():
        cfg.setdefault(name, {}).update(table)
    (folder / f"edge{cam.camera_id}_frames.jsonl").unlink(missing_ok=True)
    (folder / f"edge{cam.camera_id}_stats.json").unlink(missing_ok=True)
    cfg_path = folder / f"edge{cam.camera_id}.toml"
    cfg_path.write_text(dump_toml(cfg))
    return cfg_path


def spawn(command: str, config: Path) -> subprocess.Popen[bytes]:
    """`stereodsc <command> --config <config>` as a child process logging to <config>.log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(config.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "stereodsc.cli", command, "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def collect(folder: Path, cameras: tuple[CameraSpec, ...], tag: str = "host") -> PipelineRun:
    stats_path = folder / f"{tag}_stats.json"
    if not stats_path.exists():
        raise PipelineError(f"the host wrote no statistics; its log ends with:\n{_tail(folder / f'{tag}.log')}")
    return PipelineRun(
        folder,
        json.loads(stats_path.read_text()),
        _read_jsonl(folder / f"{tag}_frames.jsonl"),
        {c.camera_id: _read_jsonl(folder / f"edge{c.camera_id}_frames.jsonl") for c in cameras},
        {c.camera_id: _read_json(folder / f"edge{c.camera_id}_stats.json") for c in cameras},
    )


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
    edge_extra: dict[int, dict[str, dict[str, Any]]] | None = None,
) -> PipelineRun:
    """Start a host and one camera node per `cameras` on loopback, stream `frames` frames from each,
    wait for the host to drain, and collect what everybody logged. `host_extra` and `edge_extra`
    (camera id -> tables) add or override config keys, e.g. ``[security]``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host = spawn("host", host_config(folder, port, bundle, policy=policy, backend=backend, extra=host_extra))
    edges = []
    try:
        for cam in cameras:
            cfg = edge_config(
                folder,
                port,
                bundle,
                cam,
                frames=frames,
                fps=fps,
                quality=quality,
                source=source,
                path=path,
                backend=backend,
                extra=(edge_extra or {}).get(cam.camera_id),
            )
            edges.append((spawn("edge", cfg), cfg.with_suffix(".log")))
        deadline = time.monotonic() + timeout_s
        for proc, log in edges:  # a camera that delivered nothing exits 1: the collected stats tell
            wait(proc, deadline, log, ok=(0, 1))
        wait(host, deadline, folder / "host.log")
    finally:
        for proc in [host, *(p for p, _ in edges)]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return collect(folder, cameras)


def wait(proc: subprocess.Popen[bytes], deadline: float, log_path: Path, ok: tuple[int, ...] = (0,)) -> None:
    """Wait for a spawned command; a PipelineError with its log's tail if it hangs or exits with a status
    not in `ok` (a camera that delivered nothing exits 1: pass ``ok=(0, 1)`` where that is expected)."""
    try:
        code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{log_path.stem} did not finish in time; its log ends with:\n{_tail(log_path)}") from None
    if code not in ok:
        raise PipelineError(f"{log_path.stem} exited with code {code}; its log ends with:\n{_tail(log_path)}")
