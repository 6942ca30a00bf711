"""Soak: the whole pipeline (a host and two camera processes on loopback, the shipped bundle) streaming
the bundled KITTI sample resized to 128x256 (paper protocol) in a loop for a fixed number of frames per
camera, once per ``--fps`` (default: 0 = as fast as the cameras can encode, an overload; and 15, sustainable).

Reports throughput (decoded dependent frames per second, from the host's frame log as it grows), every
drop by reason, rejected frames, sequence gaps, the host's latency percentiles, and the peak resident
memory of each process (``VmHWM`` from /proc/<pid>/status, polled every 0.2 s; the last read before
the process exits is its peak). Writes ``benchmarks/results/soak.json`` with the machine and versions.

    python benchmarks/soak.py [--frames 300] [--fps 0 15] [--policy latest_reference] [--out PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy; inherited by the pipeline's processes

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import load1, load_pairs, machine_info, write_drive
from stereodsc.bundles import default_bundle
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.pipeline import STEREO, collect, edge_config, free_port, host_config, spawn, wait
from stereodsc.sample import drive_path

RESULTS = Path(__file__).parent / "results"


def small_drive(folder: Path) -> Path:
    """The bundled sample as a 128x256 KITTI-layout drive (both cameras, original timestamps)."""
    src = drive_path()
    return write_drive([(paper_protocol(a), paper_protocol(b)) for a, b in load_pairs(src)], folder, src)


def peak_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process in KiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """Polls the processes' peak memory and the host's decoded-frame count until stopped."""

    def __init__(self, procs: dict[str, subprocess.Popen[bytes]], host_frames: Path) -> None:
        super().__init__(daemon=True)
        self.procs, self.host_frames = procs, host_frames
        self.peak: dict[str, int] = {}
        self.progress: list[tuple[float, int]] = []  # (monotonic time, decoded frames) at each change
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for name, proc in self.procs.items():
                kib = peak_kib(proc.pid) if proc.poll() is None else None
                if kib is not None:
                    self.peak[name] = max(self.peak.get(name, 0), kib)
            n = self._lines()
            if not self.progress or n != self.progress[-1][1]:
                self.progress.append((time.monotonic(), n))
            self.done.wait(0.2)

    def _lines(self) -> int:
        try:
            with open(self.host_frames, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0


def soak(frames: int, fps: float, policy: str, folder: Path) -> dict[str, Any]:
    """Run the pipeline once and return the report."""
    drive = small_drive(folder / "drive")
    bundle = default_bundle()
    port = free_port()
    host_cfg = host_config(folder, port, bundle, policy=policy, extra={"sinks": {"png_dir": ""}})
    procs = {"host": spawn("host", host_cfg)}
    configs = {}
    for cam in STEREO:
        cfg = edge_config(folder, port, bundle, cam, frames=frames, fps=fps, source="kitti", path=str(drive), loop=True)
        configs[f"edge{cam.camera_id}_{cam.role}"] = cfg
        procs[f"edge{cam.camera_id}_{cam.role}"] = spawn("edge", cfg)
    sampler = Sampler(procs, folder / "host_frames.jsonl")
    sampler.start()
    started = time.monotonic()
    try:
        deadline = started + 600
        for name, cfg in configs.items():
            wait(procs[name], deadline, cfg.with_suffix(".log"))
        wait(procs["host"], deadline, folder / "host.log")
    finally:
        sampler.done.set()
        sampler.join()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    run = collect(folder, STEREO)
    stats = run.host_stats
    dependents = stats["decoded_with_side_info"] + sum(stats["decoded_without_side_info"].values())
    decoded = len(run.host_frames)
    (t0, n0), (t1, n1) = next(p for p in sampler.progress if p[1] > 0), sampler.progress[-1]
    rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
    sent = {cam: sum(r["sent"] for r in recs) for cam, recs in run.edge_frames.items()}
    return {
        "frames_per_camera": frames,
        "fps": fps,
        "policy": policy,
        "image": "128x256 (bundled KITTI sample, paper_protocol), looped",
        "bundle": str(bundle),
        "wall_s": round(time.monotonic() - started, 1),
        "throughput": {
            "frames_per_s": round(rate, 2),
            "pairs_per_s": round(rate * dependents / max(decoded, 1), 2),  # dependent frames decoded per second
            "note": "decoded frames per second between the first and last growth of the host's frame log",
        },
        "sent": sent,
        "captured_not_sent": {cam: sum(not r["sent"] for r in recs) for cam, recs in run.edge_frames.items()},
        "decoded_reference": stats["decoded_reference"],
        "decoded_with_side_info": stats["decoded_with_side_info"],
        "decoded_without_side_info": stats["decoded_without_side_info"],
        "dropped": stats["dropped"],
        "rejected": stats["rejected"],
        "decode_errors": stats["decode_errors"],
        "sequence_gaps": stats["sequence_gaps"],
        "host_received": stats["received"],
        # Every frame a camera sent is acked by the host or counted lost by the camera (see transport);
        # the host received at least every acked frame and at most those plus the ones counted lost.
        "camera_link": {
            cam: {k: s.get(k) for k in ("sent", "acked", "lost", "dropped")} for cam, s in run.edge_stats.items()
        },
        "accounted": sum(s.get("acked", 0) for s in run.edge_stats.values())
        <= stats["received"]
        <= sum(s.get("acked", 0) + s.get("lost", 0) for s in run.edge_stats.values()),
        "host_link": stats["link"],
        "received_unaccounted": stats["received"]
        - decoded
        - sum(stats["dropped"].values())
        - sum(stats["rejected"].values())
        - sum(stats["decode_errors"].values()),
        "latency_ms": stats["latency"],
        "peak_rss_mib": {name: round(kib / 1024, 1) for name, kib in sampler.peak.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per camera")
    parser.add_argument(
        "--fps",
        type=float,
        nargs="+",
        default=[0.0, 15.0],
        help="camera frame rates, one run each (0: as fast as possible)",
    )
    parser.add_argument("--policy", default="latest_reference")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    machine = machine_info()
    runs = []
    for fps in args.fps:
        with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
            runs.append(soak(args.frames, fps, args.policy, Path(tmp)))
    result = {"machine": machine, "runs": runs, "load_avg_1min_end": load1()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
