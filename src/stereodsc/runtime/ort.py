"""onnxruntime backend: CPU, CUDA or TensorRT execution provider over the same ONNX graph.

onnxruntime-gpu lists its GPU providers even when their libraries (CUDA, cuDNN, TensorRT) cannot
load, and then quietly builds the session on the CPU. So the providers a session really got
(`get_providers()`) are checked at start-up: a GPU backend that ended on the CPU is refused, or,
only with ``fallback="cpu"``, logged as an error and reported through ``fell_back``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.errors import ConfigError

from .cache import cache_dir as default_cache_dir
from .cache import ensure_writable

log = logging.getLogger(__name__)

# Nodes a GPU provider cannot take fall back to the next provider in the list.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt-ep": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# The shipped graphs are ONNX IR 10 / opset 18; onnxruntime 1.17 fails on them with
# "Unsupported model IR version: 10".
MIN_ONNXRUNTIME = (1, 18)
_ORT_DTYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
GPU_INSTALL_HINT = (
    "install onnxruntime-gpu, TensorRT and cuda-python built for the driver's CUDA major (nvidia-smi): "
    "pip install 'stereodsc[gpu-cu12]' or 'stereodsc[gpu-cu13]', in an environment without the CPU "
    "'onnxruntime' package"
)


class BackendUnavailableError(ConfigError):
    """The backend cannot run on this machine as installed (no GPU, missing or mismatched libraries)."""


def check_onnxruntime_version(version: str) -> None:
    """Refuse an onnxruntime too old for the bundle's graphs, naming the upgrade."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match and (int(match[1]), int(match[2])) < MIN_ONNXRUNTIME:
        need = ".".join(map(str, MIN_ONNXRUNTIME))
        raise ConfigError(
            f"onnxruntime {version} cannot load this bundle's graphs (ONNX IR 10, opset 18 need onnxruntime "
            f">= {need}): pip install 'onnxruntime>={need}' (or 'onnxruntime-gpu>={need}' for a GPU backend)"
        )


class OrtSession:
    """An onnxruntime InferenceSession with named numpy inputs and outputs.

    `providers` are those the session really runs on; `fell_back` is True when a GPU backend was
    asked for and the session runs on the CPU instead (only with ``fallback="cpu"``).
    """

    def __init__(
        self,
        onnx_path: Path,
        backend: str = "cpu",
        cache_dir: Path | None = None,
        threads: int = 0,
        *,
        fallback: str | None = None,
    ) -> None:
        import onnxruntime as ort

        check_onnxruntime_version(ort.__version__)
        self.backend = backend
        self.fell_back = False
        wanted = PROVIDERS[backend]
        if backend != "cpu":
            _load_gpu_libraries(ort, backend)
            available = ort.get_available_providers()
            if wanted[0] not in available:
                self._fall_back_or_raise(
                    fallback,
                    f"backend {backend!r} needs onnxruntime's {wanted[0]}, but this onnxruntime "
                    f"({ort.__version__}) offers {available}: {GPU_INSTALL_HINT}; or use backend = 'cpu'",
                )
                wanted = PROVIDERS["cpu"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = _provider_list(wanted, cache_dir)
        self._session: Any = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.providers: list[str] = list(self._session.get_providers())
        if wanted[0] not in self.providers:
            self._fall_back_or_raise(
                fallback,
                f"backend {backend!r} asked onnxruntime for {wanted[0]}, but the session runs on "
                f"{self.providers}: the provider's libraries did not load (onnxruntime's log above names "
                f"the missing one: CUDA, cuDNN or TensorRT of the wrong major version); {GPU_INSTALL_HINT}",
            )
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._input_dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in self._session.get_inputs()}

    def _fall_back_or_raise(self, fallback: str | None, problem: str) -> None:
        if fallback != "cpu":
            raise BackendUnavailableError(f"{problem}; or set fallback = 'cpu' to run on the CPU instead")
        log.error("%s. Running on the CPU, as fallback = 'cpu' asks: expect much slower decoding", problem)
        self.fell_back = True

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise ConfigError("this onnxruntime session is closed; open a new one")
        outputs = self._session.run(self.output_names, inputs)
        return dict(zip(self.output_names, outputs, strict=True))

    def warm_up(self, input_shapes: Iterable[Mapping[str, tuple[int, ...]]]) -> None:
        """Run zeros of each shape set once: the TensorRT EP builds (or loads) its engines and the
        CUDA EP picks its kernels here, at start-up, not on the first frame."""
        for shapes in input_shapes:
            self.run({n: np.zeros(s, self._input_dtypes[n]) for n, s in shapes.items()})

    def close(self) -> None:
        """Release the session (its device memory and, for the TensorRT EP, its engines)."""
        self._session = None

    def __enter__(self) -> OrtSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_gpu_libraries(ort: Any, backend: str) -> None:
    """Make pip-installed CUDA/cuDNN/TensorRT libraries visible to the GPU providers, and turn TF32 off.

    ``preload_dlls`` (onnxruntime >= 1.21) loads CUDA and cuDNN from the nvidia-* wheels; importing
    the ``tensorrt`` wheel loads its libnvinfer, which the TensorRT EP then finds already loaded.
    TF32 rounds float32 convolution inputs to 10-bit mantissas and can move a value across a
    rounding boundary of the graphs' integer outputs; the TensorRT EP has no option for it, only
    NVIDIA's process-wide ``NVIDIA_TF32_OVERRIDE`` (read when the CUDA libraries start; an explicit
    setting in the environment wins).
    """
    if backend == "tensorrt-ep":
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
        with contextlib.suppress(ImportError):
            import tensorrt  # noqa: F401
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def _provider_list(wanted: list[str], cache_dir: Path | None) -> list[Any]:
    """Provider names with their options: TF32 off for the CUDA EP; for the TensorRT EP, its engine
    and timing caches side by side in the engine cache folder (never the working directory)."""
    providers: list[Any] = []
    for name in wanted:
        if name == "CUDAExecutionProvider":
            providers.append((name, {"use_tf32": 0}))
        elif name == "TensorrtExecutionProvider":
            folder = cache_dir or default_cache_dir("engines")
            ensure_writable(folder, "TensorRT engine cache")
            providers.append(
                (
                    name,
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(folder),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(folder),
                    },
                )
            )
        else:
            providers.append(name)
    return providers
