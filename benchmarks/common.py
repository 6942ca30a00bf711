"""What the benchmarks share: the machine they ran on, summaries of timings, the stereo workloads
(the 128x256 paper protocol and the native 375x1242 frame), the bundle under test, and writing a
result file into ``benchmarks/results/``.

Every result file has the same frame::

    {"benchmark": what it measures, "machine": machine_info() (with "versions"),
     ...the script's own keys (timings as summary(): median / p90 / p99 / mean ms)...,
     "runtime_s": ..., the machine's 1-minute load at the end}

The timing scripts set ``OPENBLAS_NUM_THREADS=1`` before numpy loads (no BLAS thread pool fighting
onnxruntime's; the pipeline's processes inherit it); `machine_info` records the value.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.bundle import Bundle, load_bundle
from stereodsc.bundles import default_bundle
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.errors import StereoDSCError
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.images import read_rgb, write_rgb
from stereodsc.sample import drive_path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DRIVE = Path("/work/shared/data/kitti_raw_2011_09_26_drive_0001")  # KITTI raw, 375x1242
QUALITY = 0  # the quality the latency benchmarks code at (the pipeline's default)

Pair = tuple[np.ndarray, np.ndarray]  # (left = reference camera, right = dependent camera), uint8 RGB


# ---- the machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load1() -> float:
    """The 1-minute load average: other jobs on a shared machine inflate every timing."""
    return round(os.getloadavg()[0], 2)


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """The versions of what the timings depend on (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("stereodsc", "numpy", "onnxruntime", "numba", "pyzmq"):
        out[name] = _installed(name)
    out["opencv"] = _installed("opencv-python-headless") or _installed("opencv-python")
    try:
        import zmq

        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        out["libzmq"] = None
    return out


def machine_info() -> dict[str, Any]:
    """Platform, CPU, cores, load now, BLAS threads and the library versions."""
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1min": load1(),
        "load_avg_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "versions": versions(),
    }


# ---- timings -------------------------------------------------------------------------------------
def summary(seconds: Iterable[float]) -> dict[str, float]:
    """Median / p90 / p99 / mean in milliseconds, and the sample count."""
    ms = np.asarray(list(seconds), dtype=float) * 1e3
    if ms.size == 0:
        return {"n": 0}
    return {
        "median_ms": round(float(np.median(ms)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "n": int(ms.size),
    }


def med(entry: dict[str, Any]) -> float:
    """The median (ms) of a `summary`."""
    return float(entry["median_ms"])


def per_second(seconds_per_item: float) -> float:
    return round(1.0 / seconds_per_item, 2) if seconds_per_item > 0 else float("inf")


# ---- workloads -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """One size's stereo pairs, and the KITTI(-layout) drive they came from."""

    name: str  # "128x256" | "375x1242"
    pairs: list[Pair]
    note: str
    source: Path  # the drive the frames came from (its timestamps go with them)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.pairs[0][0].shape[:2]
        return h, w


def load_pairs(drive: Path, n: int | None = None) -> list[Pair]:
    """The first `n` (all: None) stereo pairs of a KITTI raw drive (image_02 left, image_03 right)."""
    left, _ = kitti_frames(drive, "left")
    right, _ = kitti_frames(drive, "right")
    count = min(len(left), len(right)) if n is None else min(n, len(left), len(right))
    return [(read_rgb(left[i]), read_rgb(right[i])) for i in range(count)]


def workloads(n: int, drive: Path | None = None) -> tuple[list[Workload], str]:
    """The paper-protocol (128x256) and native workloads from the first `n` pairs of `drive`
    (default: the shared KITTI drive, else the bundled 192x384 sample), and a note on the data."""
    chosen = drive or SHARED_DRIVE
    note = f"KITTI raw drive {chosen}"
    if not (chosen / "image_02").is_dir():
        if drive is not None:
            sys.exit(f"--drive {drive}: not a KITTI raw drive (no image_02/)")
        chosen = drive_path()
        note = f"{SHARED_DRIVE} is absent: the bundled sample {chosen}, so the native rows are 192x384, not 375x1242"
        print(f"note: {note}")
    native = load_pairs(chosen, n)
    small = [(paper_protocol(a), paper_protocol(b)) for a, b in native]
    h, w = native[0][0].shape[:2]
    return [
        Workload("x".join(map(str, small[0][0].shape[:2])), small, "paper_protocol (centre crop 1:2, resize)", chosen),
        Workload(f"{h}x{w}", native, "native frames, padded to the codec's stride inside the encoder", chosen),
    ], note


def write_drive(pairs: list[Pair], folder: Path, timestamps_of: Path) -> Path:
    """`pairs` as a KITTI-layout drive in `folder` (PNGs, the first len(pairs) timestamps of the
    drive `timestamps_of`), for camera nodes to replay: their ``kitti`` source does not resize."""
    for sub, side in (("image_02", 0), ("image_03", 1)):
        (folder / sub / "data").mkdir(parents=True, exist_ok=True)
        for i, pair in enumerate(pairs):
            write_rgb(folder / sub / "data" / f"{i:010d}.png", pair[side])
        stamps = (timestamps_of / sub / "timestamps.txt").read_text().splitlines()[: len(pairs)]
        (folder / sub / "timestamps.txt").write_text("\n".join(stamps) + "\n")
    return folder


# ---- the bundle ----------------------------------------------------------------------------------
def open_bundle(path: Path | None) -> Bundle:
    """--bundle, else the shipped default bundle; exit with a message naming --bundle otherwise."""
    try:
        folder = path or default_bundle()
        return load_bundle(folder)
    except StereoDSCError as e:
        name = path or "(the shipped default)"
        sys.exit(f"--bundle {name}: {e}; pass --bundle PATH (a folder made by 'stereodsc export')")


def bundle_info(bundle: Bundle, quality: int = QUALITY) -> dict[str, Any]:
    return {
        "path": str(bundle.path),
        "id": bundle.id,
        "quality": quality,
        "codecs": {
            role: {"model": c.model, "model_config": c.model_config, "lmbda": c.quality(quality).lmbda}
            for role, c in bundle.codecs.items()
        },
    }


# ---- command line and results --------------------------------------------------------------------
def parser(doc: str | None, frames: int, warmup: int = 1) -> argparse.ArgumentParser:
    """The options every latency script takes: --bundle, --drive, --frames, --warmup, --out."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped bundle)")
    p.add_argument("--drive", type=Path, default=None, help=f"KITTI raw drive (default {SHARED_DRIVE})")
    p.add_argument("--frames", type=int, default=frames, help=f"timed frames per measurement ({frames})")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed frames first ({warmup})")
    p.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/<name>.json)")
    return p


class Result:
    """A result file: `machine_info` at the start, the load and the runtime at the end."""

    def __init__(self, name: str, benchmark: str, out: Path | None = None) -> None:
        self.path = out or RESULTS / f"{name}.json"
        self.started = time.monotonic()
        self.doc: dict[str, Any] = {"benchmark": benchmark, "machine": machine_info()}

    def write(self, body: dict[str, Any]) -> Path:
        self.doc.update(body)
        self.doc["runtime_s"] = round(time.monotonic() - self.started, 1)
        self.doc["load_avg_1min_end"] = load1()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=2) + "\n")
        m = self.doc["machine"]
        print(f"\n{m['cpu_model']}, {m['cores_available']} cores, load {m['load_avg_1min']} -> {load1()}", end="")
        print(f", {self.doc['runtime_s']} s; wrote {self.path}")
        return self.path


def run_sizes(
    name: str,
    benchmark: str,
    doc: str | None,
    measure: Callable[[Bundle, Workload, int, int], dict[str, Any]],
    table: Callable[[list[dict[str, Any]]], None],
    notes: dict[str, str],
) -> None:
    """The main of an in-process latency script: parse the common options, `measure` (bundle, workload,
    frames, warm-up frames) each size, print the `table`, write results/<name>.json with the `notes`."""
    args = parser(doc, frames=30).parse_args()
    result = Result(name, benchmark, args.out)
    bundle = open_bundle(args.bundle)
    works, data = workloads(args.frames, args.drive)
    sizes = []
    for work in works:
        print(f"{work.name}: {args.frames} frames (+{args.warmup} warm-up) per measurement", flush=True)
        sizes.append(measure(bundle, work, args.frames, args.warmup))
    table(sizes)
    result.write(
        {
            "data": data,
            "bundle": bundle_info(bundle),
            "frames_per_measurement": args.frames,
            "warmup_frames": args.warmup,
            **notes,
            "sizes": sizes,
        }
    )


def read_result(name: str) -> dict[str, Any] | None:
    """A result file another script wrote (None if it has not run)."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
