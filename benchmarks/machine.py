"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """Platform, CPU, cores, load and the versions of what the timings depend on."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores_available": len(os.sched_getaffinity(0)),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "versions": {
            name: installed(name)
            for name in ("stereodsc", "numpy", "onnxruntime", "numba", "pyzmq", "opencv-python-headless")
        }
        | {"python": platform.python_version()},
    }
