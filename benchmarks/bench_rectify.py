"""Rectification time per frame on the camera node: one ``cv2.remap`` with precomputed maps.

Measures uint8 3-channel frames at 640x480 (the OpenCV chessboard set's size) and 1242x375
(KITTI's rectified size), with OpenCV's default thread count and with one thread (a camera board
may give the encoder the other cores). Writes ``benchmarks/results/rectify.json`` and prints a table.

    python benchmarks/bench_rectify.py [--frames 200] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from common import machine_info
from stereodsc.calibration import Rectifier, StereoRig, rectified_rig

SIZES = [(640, 480), (1242, 375)]
WARMUP = 10


def _rig(size: tuple[int, int]) -> StereoRig:
    """A realistic rig: focal ~ image width, mild barrel distortion, 0.5 deg misalignment."""
    w, h = size
    K = np.array([[0.9 * w, 0.0, w / 2 + 3], [0.0, 0.9 * w, h / 2 - 2], [0.0, 0.0, 1.0]])
    D = np.array([-0.15, 0.08, 0.0005, -0.0003, 0.0])
    R = cv2.Rodrigues(np.deg2rad(np.array([0.3, -0.4, 0.2])))[0]
    return rectified_rig(size, K, D, K, D, R, np.array([-0.12, 0.001, 0.002]))


def bench(size: tuple[int, int], frames: int, threads: int) -> dict[str, float | int | str]:
    cv2.setNumThreads(threads)
    rig = _rig(size)
    t0 = time.perf_counter()
    rect = Rectifier.from_rig(rig, "left")
    init_ms = (time.perf_counter() - t0) * 1e3
    w, h = size
    pool = np.random.default_rng(0).integers(0, 256, (8, h, w, 3), dtype=np.uint8)
    for i in range(WARMUP):
        rect(pool[i % len(pool)])
    times = np.empty(frames)
    for i in range(frames):
        frame = pool[i % len(pool)]
        t0 = time.perf_counter()
        rect(frame)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {
        "size": f"{w}x{h}",
        "threads": cv2.getNumThreads(),
        "frames": frames,
        "median_ms": round(float(np.median(ms)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "maps_init_ms": round(init_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "rectify.json")
    args = parser.parse_args()

    default_threads = cv2.getNumThreads()
    results = [bench(size, args.frames, threads) for size in SIZES for threads in dict.fromkeys([default_threads, 1])]
    cv2.setNumThreads(default_threads)
    machine = machine_info()  # its load average: other users of a shared machine inflate the p90
    report = {
        "benchmark": "stereodsc.calibration.Rectifier: cv2.remap, CV_16SC2 maps, bilinear, uint8 HxWx3",
        "machine": machine,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{machine['cpu_model']}, {machine['cores_available']} cores, OpenCV {cv2.__version__}")
    print(f"{'size':>10} {'threads':>7} {'median ms':>10} {'p90 ms':>8} {'maps init ms':>13}")
    for r in results:
        row = (r["size"], r["threads"], r["median_ms"], r["p90_ms"], r["maps_init_ms"])
        print("{:>10} {:>7} {:>10.3f} {:>8.3f} {:>13.1f}".format(*row))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
