"""onnxruntime backend: CPU, CUDA or TensorRT execution provider over the same ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.errors import ConfigError

# Nodes a GPU provider cannot take fall back to the next provider in the list.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt-ep": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OrtSession:
    """An onnxruntime InferenceSession with named inputs and outputs."""

    def __init__(self, onnx_path: Path, backend: str = "cpu", cache_dir: Path | None = None, threads: int = 0):
        import onnxruntime as ort

        wanted = PROVIDERS[backend]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise ConfigError(
                f"backend {backend!r} needs onnxruntime's {wanted[0]}, but this onnxruntime offers "
                f"{available}; install onnxruntime-gpu (and TensorRT) or use backend = 'cpu'"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers: list[Any] = list(wanted)
        if backend == "tensorrt-ep" and cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            providers[0] = (
                "TensorrtExecutionProvider",
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": True,
                },
            )
        self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, inputs)
        return dict(zip(self.output_names, outputs, strict=True))
