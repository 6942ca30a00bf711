"""Inference sessions of a bundle's graphs, each opened once and reused for every frame."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from stereodsc.bundle import Bundle
from stereodsc.runtime import Session, open_session


class GraphSessions:
    """Sessions keyed by graph file (and, for native TensorRT, whose engines have fixed optimisation
    profiles, by input shapes); the onnxruntime backends take any shape a dynamic graph accepts.

    `cache_dir`: TensorRT engines (None: the machine's cache folder, `runtime.cache_dir`);
    `fallback`: None refuses a GPU backend that cannot run, "cpu" runs on the CPU instead (`fell_back`).
    `max_open`: sessions kept open at once, the least recently used closed beyond it (None: all).
    Each session keeps the memory arena of the largest input it ran (~0.5 GB for a host graph at
    375x1242), so a caller that walks through many qualities once (evaluation) bounds it; a host
    service that warms up every graph it serves keeps them all.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: str = "cpu",
        threads: int = 0,
        cache_dir: Path | None = None,
        fallback: str | None = None,
        max_open: int | None = None,
    ) -> None:
        if max_open is not None and max_open < 1:
            raise ValueError(f"max_open={max_open}: keep at least one session open, or None for all")
        self.bundle = bundle
        self.backend = backend
        self.threads = threads
        self.cache_dir = cache_dir
        self.fallback = fallback
        self.max_open = max_open
        self._sessions: OrderedDict[tuple[Path, tuple[tuple[str, tuple[int, ...]], ...]], Session] = OrderedDict()

    def run(self, path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = tuple(sorted((k, v.shape) for k, v in inputs.items())) if self.backend == "tensorrt" else ()
        key = (path, shapes)
        if key in self._sessions:
            self._sessions.move_to_end(key)
        else:
            while self.max_open is not None and len(self._sessions) >= self.max_open:
                self._sessions.popitem(last=False)[1].close()
            self._sessions[key] = open_session(
                path,
                self.backend,
                cache_dir=self.cache_dir,
                cache_key=f"{self.bundle.id}:{path.relative_to(self.bundle.path).as_posix()}",
                threads=self.threads,
                profiles={k: (s, s, s) for k, s in shapes} or None,
                fallback=self.fallback,
            )
        return self._sessions[key].run(inputs)

    @property
    def fell_back(self) -> bool:
        """Whether a session runs on the CPU because the configured GPU backend could not."""
        return any(s.fell_back for s in self._sessions.values())

    def close(self) -> None:
        """Release every session (GPU memory, streams); the next run opens them again."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
