"""Inference sessions for the exported graphs: one small interface, several backends.

CPU onnxruntime is the reference backend (tests run on it). The CUDA and TensorRT execution
providers of onnxruntime and the native TensorRT backend run the same ONNX graphs on a GPU; they
are thin wrappers over the official APIs and are only exercised where a GPU exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from stereodsc.errors import ConfigError

BACKENDS = ("cpu", "cuda", "tensorrt-ep", "tensorrt")


class Session(Protocol):
    """A loaded graph: named numpy inputs in, named numpy outputs out."""

    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def open_session(
    onnx_path: Path,
    backend: str = "cpu",
    cache_dir: Path | None = None,
    cache_key: str = "",
    threads: int = 0,
    profiles: dict[str, tuple[tuple[int, ...], ...]] | None = None,
) -> Session:
    """Open `onnx_path` on `backend`: "cpu", "cuda" or "tensorrt-ep" (onnxruntime execution providers)
    or "tensorrt" (a native engine built from the graph and cached under `cache_dir` by `cache_key`,
    the TensorRT version and the GPU; `profiles` gives min/opt/max shapes of its dynamic inputs)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "tensorrt":
        from .tensorrt import TensorRTSession

        return TensorRTSession(onnx_path, cache_dir or onnx_path.parent / "engines", cache_key, dict(profiles or {}))  # type: ignore[arg-type]
    from .ort import OrtSession

    return OrtSession(onnx_path, backend, cache_dir, threads)
