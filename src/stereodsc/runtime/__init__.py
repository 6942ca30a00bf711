"""Inference sessions for the exported graphs: one small interface, several backends.

CPU onnxruntime is the reference backend (tests run on it). The CUDA and TensorRT execution
providers of onnxruntime and the native TensorRT backend run the same ONNX graphs on a GPU. A GPU
backend that cannot run as asked refuses at start-up with a `ConfigError` naming the fix, or, only
with ``fallback="cpu"``, runs on the CPU, logs an error and says so (``session.fell_back``).

Start-up: ``prepare(graph, backend, input_shapes=[...])`` opens a session and builds (or loads from
the engine cache) what every camera size needs, so no engine is built inside the decode loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from stereodsc.errors import ConfigError

from .cache import cache_dir
from .cache import cache_dir as _default_cache_dir
from .ort import BackendUnavailableError

__all__ = ["BACKENDS", "FALLBACKS", "BackendUnavailableError", "Session", "cache_dir", "open_session", "prepare"]

log = logging.getLogger(__name__)

BACKENDS = ("cpu", "cuda", "tensorrt-ep", "tensorrt")
FALLBACKS = (None, "cpu")
Shape = tuple[int, ...]


class Session(Protocol):
    """A loaded graph: named numpy inputs in, named numpy outputs out.

    `providers` says what really runs it; `fell_back` is True when a GPU backend was asked for and
    the CPU runs it instead (only with ``fallback="cpu"``): report it in the metrics.
    """

    input_names: list[str]
    output_names: list[str]
    backend: str
    providers: list[str]
    fell_back: bool

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def warm_up(self, input_shapes: Iterable[Mapping[str, Shape]]) -> None: ...

    def close(self) -> None: ...


def open_session(
    onnx_path: Path,
    backend: str = "cpu",
    cache_dir: Path | None = None,
    cache_key: str = "",
    threads: int = 0,
    profiles: dict[str, tuple[Shape, Shape, Shape]] | None = None,
    *,
    input_shapes: Iterable[Mapping[str, Shape]] = (),
    fallback: str | None = None,
) -> Session:
    """Open `onnx_path` on `backend`: "cpu", "cuda" or "tensorrt-ep" (onnxruntime execution providers)
    or "tensorrt" (native engines, one per shape set in `input_shapes` and one for `profiles`' min/opt/max
    shapes, built once and cached).

    `cache_dir` holds the engines of "tensorrt" and "tensorrt-ep" (default: ``cache_dir("engines")``,
    never the bundle); `cache_key` names them (any text, e.g. "<bundle id>:intra/q0/host.onnx": it is
    made file-name safe here). ``fallback="cpu"`` runs on the CPU when the GPU backend cannot.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if fallback not in FALLBACKS:
        raise ConfigError(f"unknown fallback {fallback!r}; choose 'cpu' or leave it unset (refuse to start)")
    from .ort import OrtSession

    if backend != "tensorrt":
        return OrtSession(onnx_path, backend, cache_dir, threads, fallback=fallback)
    from .tensorrt import TensorRTSession

    try:
        return TensorRTSession(onnx_path, cache_dir or _default_cache_dir("engines"), cache_key, profiles, input_shapes)
    except BackendUnavailableError as e:
        if fallback != "cpu":
            raise BackendUnavailableError(f"{e}; or set fallback = 'cpu' to run on the CPU instead") from e
        log.error("%s. Running on the CPU, as fallback = 'cpu' asks: expect much slower decoding", e)
        session = OrtSession(onnx_path, "cpu", None, threads)
        session.backend, session.fell_back = "tensorrt", True
        return session


def prepare(
    onnx_path: Path,
    backend: str,
    input_shapes: Iterable[Mapping[str, Shape]],
    *,
    cache_dir: Path | None = None,
    cache_key: str = "",
    threads: int = 0,
    fallback: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Session:
    """Open a session and make it ready for every shape set in `input_shapes` (the camera sizes, as
    the graph sees them: {"image": (1, H, W, 3)}, {"y": ..., "side": ...} for a host graph, {"x_dec": ...,
    "side": ...} for a refine graph): native TensorRT builds or loads one engine per shape set, the
    TensorRT EP builds its engines, the CUDA EP picks its kernels, device buffers are allocated. Call it
    at start-up and keep the session."""
    shapes = [dict(s) for s in input_shapes]
    if progress:
        progress(f"preparing {onnx_path.name} on {backend} for {len(shapes)} input size(s)")
    session = open_session(onnx_path, backend, cache_dir, cache_key, threads, input_shapes=shapes, fallback=fallback)
    session.warm_up(shapes)
    if progress:
        note = " (fell back to the CPU)" if session.fell_back else ""
        progress(f"{onnx_path.name} ready on {', '.join(session.providers)}{note}")
    return session
