"""GPU smoke test of the host path: the shipped default bundle on every GPU backend, against the CPU.

Run by ``benchmarks/gpu_smoke.sh`` (at most 5 minutes on a GPU machine, after only
``pip install '.[gpu-cu12]'`` or ``'.[gpu-cu13]'``). Steps, each recorded as it ends (a run cut
short still leaves what it measured):

1. the machine: GPU, driver, CUDA, and the versions of onnxruntime, TensorRT and cuda-python;
2. at 128x256 (the paper protocol) and 375x1242 (a full KITTI frame), frames of the bundled KITTI
   sample are encoded and decoded on the CPU (the reference: symbols, images, latency);
3. for each of ``tensorrt``, ``cuda`` and ``tensorrt-ep``: the camera's edge graph on the GPU against
   the CPU symbols (how many differ: rounding-boundary flips), the host decode of the CPU frames
   against the CPU images, the first frame's time (engine builds included) and the decode latency
   per frame (median) of reference and dependent frames;
4. a second start (a new process, the same engine cache): the engines load instead of being built.

Writes ``benchmarks/results/gpu_smoke.json``. A backend that cannot run records its error (the
runtime refuses to run a GPU backend on the CPU) and the others go on.

    python benchmarks/gpu_smoke.py [--frames N] [--budget SECONDS] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu_smoke.json"
BACKENDS = ("tensorrt", "cuda", "tensorrt-ep")
SIZES = ((128, 256), (375, 1242))
QUALITY = 0
T0 = time.monotonic()


class BuildCounter(logging.Handler):
    """Counts the runtime's engine builds and cached-engine loads (its log lines say which)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.built = self.loaded = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.built += "building the TensorRT engine" in message
        self.loaded += "loaded the cached TensorRT engine" in message


def installed(*names: str) -> dict[str, str | None]:
    def one(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: one(name) for name in names}


def machine() -> dict[str, Any]:
    """GPU, driver and library versions: what every number below depends on."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        info["nvidia_smi"] = smi.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"unavailable: {e}"
    info["packages"] = installed(
        "stereodsc",
        "numpy",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "tensorrt-cu12",
        "tensorrt-cu13",
        "tensorrt-cu12-libs",
        "tensorrt-cu13-libs",
        "cuda-python",
        "cuda-bindings",
        "numba",
    )
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError as e:
        info["onnxruntime_providers"] = f"unavailable: {e}"
    try:
        from stereodsc.runtime.tensorrt import gpu_info

        device = gpu_info()
        info["cuda_device"] = vars(device) | {"tag": device.tag}
    except Exception as e:  # the report says why; the backends below then fail with the fix
        info["cuda_device"] = f"unavailable: {e}"
    return info


def frames(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A left/right pair of the bundled KITTI sample at `size` (full frame or the paper protocol)."""
    from stereodsc.eval.preprocess import paper_protocol
    from stereodsc.images import read_rgb
    from stereodsc.sample import drive_path

    left, right = (read_rgb(drive_path() / cam / "data" / "0000000000.png") for cam in ("image_02", "image_03"))
    if left.shape[:2] == size:
        return left, right
    return paper_protocol(left, size), paper_protocol(right, size)


def median_ms(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


class Smoke:
    def __init__(self, out: Path, n: int, budget: float) -> None:
        from stereodsc.bundle import load_bundle
        from stereodsc.bundles import shipped_bundles
        from stereodsc.codec import EdgeEncoder, HostDecoder

        self.out, self.n, self.budget = out, n, budget
        self.bundle = load_bundle(shipped_bundles()["default"])
        self.encoder_cls, self.decoder_cls = EdgeEncoder, HostDecoder
        self.report: dict[str, Any] = {"bundle": self.bundle.id, "quality": QUALITY, "frames_timed": n}
        self.cpu: dict[tuple[int, int], dict[str, Any]] = {}

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - T0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.report, indent=2) + "\n")

    def left(self) -> float:
        return self.budget - (time.monotonic() - T0)

    def reference(self, size: tuple[int, int]) -> dict[str, Any]:
        """CPU encode and decode of one pair: the symbols and images every GPU backend must match."""
        left, right = frames(size)
        ref_enc = self.encoder_cls(self.bundle, "intra", QUALITY, "cpu")
        dep_enc = self.encoder_cls(self.bundle, "side_info", QUALITY, "cpu")
        ref, dep = ref_enc.encode(left), dep_enc.encode(right)
        ref_frame = ref_enc.frame(ref, rig_id=0, camera_id=0, seq=0, t_capture_ns=0)
        dep_frame = dep_enc.frame(dep, rig_id=0, camera_id=1, seq=0, t_capture_ns=0)
        decoder = self.decoder_cls(self.bundle, "cpu")
        ref_image = decoder.decode(ref_frame).image
        dep_image = decoder.decode(dep_frame, ref_image).image
        n = max(1, self.n // 4)  # the CPU is only the yardstick
        return {
            "images": (left, right),
            "symbols": (ref.symbols, dep.symbols),
            "frames": (ref_frame, dep_frame),
            "decoded": (ref_image, dep_image),
            "report": {
                "payload_bytes": [ref.payload_bytes, dep.payload_bytes],
                "decode_ms_reference": median_ms(lambda: decoder.decode(ref_frame), n),
                "decode_ms_dependent": median_ms(lambda: decoder.decode(dep_frame, ref_image), n),
            },
        }

    def backend(self, backend: str, size: tuple[int, int]) -> dict[str, Any]:
        cpu = self.cpu[size]
        result: dict[str, Any] = {}
        for i, (role, image) in enumerate(zip(("intra", "side_info"), cpu["images"], strict=True)):
            encoded = self.encoder_cls(self.bundle, role, QUALITY, backend).encode(image)
            diff = np.abs(encoded.symbols.astype(np.int64) - cpu["symbols"][i])
            result[f"edge_{role}"] = {
                "symbols_differing": int((diff > 0).sum()),
                "symbols": int(diff.size),
                "max_abs_diff": int(diff.max()),
            }
        ref_frame, dep_frame = cpu["frames"]
        ref_cpu, dep_cpu = cpu["decoded"]
        start = time.perf_counter()
        decoder = self.decoder_cls(self.bundle, backend)
        ref_image = decoder.decode(ref_frame).image
        result["first_reference_frame_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        dep_image = decoder.decode(dep_frame, ref_cpu).image
        result["first_dependent_frame_s"] = round(time.perf_counter() - start, 2)
        for name, got, want in (("reference", ref_image, ref_cpu), ("dependent", dep_image, dep_cpu)):
            result[f"host_{name}_vs_cpu"] = {
                "max_abs_diff": int(np.abs(got.astype(int) - want).max()),
                "psnr_db": psnr(got, want),
            }
        result["decode_ms_reference"] = median_ms(lambda: decoder.decode(ref_frame), self.n)
        result["decode_ms_dependent"] = median_ms(lambda: decoder.decode(dep_frame, ref_cpu), self.n)
        return result

    def second_start(self, backend: str) -> dict[str, Any]:
        """A new process with the same engine cache: what a service restart costs."""
        out = self.out.with_name(f".gpu_smoke_second_{backend}.json")
        cmd = [sys.executable, __file__, "--second-start", backend, "--out", str(out), "--frames", "1"]
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, self.left()))
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-5:]}
        result: dict[str, Any] = json.loads(out.read_text())
        out.unlink()
        return result | {"process_s": round(time.monotonic() - start, 2)}

    def run(self) -> None:
        self.report["machine"] = machine()
        self.save()
        for size in SIZES:
            cpu = self.cpu[size] = self.reference(size)
            self.report.setdefault("cpu", {})[f"{size[0]}x{size[1]}"] = cpu["report"]
            self.save()
        plans = self.report.setdefault("backends", {})
        for backend in BACKENDS:
            for size in SIZES:
                key = f"{size[0]}x{size[1]}"
                if self.left() < 20:
                    plans.setdefault(backend, {})[key] = {"skipped": "time budget"}
                    continue
                print(f"[{time.monotonic() - T0:5.0f} s] {backend} at {key}", file=sys.stderr, flush=True)
                try:
                    plans.setdefault(backend, {})[key] = self.backend(backend, size)
                except Exception as e:  # recorded with its fix; the other backends go on
                    plans.setdefault(backend, {})[key] = {"error": f"{type(e).__name__}: {e}"}
                self.save()
            ran = all("error" not in r and "skipped" not in r for r in plans[backend].values())
            if backend != "cuda" and ran and self.left() > 20:
                print(f"[{time.monotonic() - T0:5.0f} s] {backend}: second start", file=sys.stderr, flush=True)
                plans[backend]["second_start"] = self.second_start(backend)
                self.save()


def second_start(backend: str, out: Path) -> None:
    """Open the host decoder on `backend` and decode one frame of each size, as a restarted service does."""
    counter = BuildCounter()
    logging.getLogger("stereodsc.runtime").addHandler(counter)
    from stereodsc.runtime import cache_dir

    folder = cache_dir("engines")
    before = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    smoke = Smoke(out, 1, 1e9)
    result: dict[str, Any] = {}
    for size in SIZES:
        ref_frame, _ = smoke.reference(size)["frames"]
        start = time.perf_counter()
        smoke.decoder_cls(smoke.bundle, backend).decode(ref_frame)
        result[f"first_reference_frame_s_{size[0]}x{size[1]}"] = round(time.perf_counter() - start, 2)
    after = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    result |= {
        "engines_built": counter.built,
        "engines_loaded": counter.loaded,
        "new_cache_files": sorted(set(after) - set(before)),
    }
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20, help="frames per latency median")
    parser.add_argument("--budget", type=float, default=270, help="seconds; later steps are skipped past it")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--second-start", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.second_start:
        second_start(args.second_start, args.out)
        return
    smoke = Smoke(args.out, args.frames, args.budget)
    smoke.report["engine_cache"] = os.environ.get("STEREODSC_CACHE_DIR")
    smoke.run()
    print(json.dumps(smoke.report["backends"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
