"""Stand-ins for `tensorrt`, cuda-python's runtime (`cuda.bindings.runtime`) and onnxruntime-gpu.

The GPU backends cannot run on a machine without an NVIDIA GPU; like a fake clock, these modules
let the REAL session code run here: the same calls, in the same order, with the same return
conventions as the official APIs (TensorRT 10/11 named-tensor API, cuda-python's ``(error, value)``
tuples). "Device memory" is host memory at real addresses, so copies are real `memmove`s, and the
stand-in engine computes the graph with CPU onnxruntime: outputs can be compared with the CPU
backend's. Misuse the real APIs would punish (a freed pointer, an unset tensor address, a shape
outside the engine's profile, a non-integer stream handle) fails here too.

`CountingCudart` wraps either the stand-in or the real cudart, so the same tests count
allocations and streams on a GPU machine.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import hashlib
import json
import struct
import types
from collections import Counter
from typing import Any

import numpy as np
import onnxruntime as _real_ort  # captured before any test swaps `onnxruntime` in sys.modules

# ----------------------------------------------------------------------------------------- cudart


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStream_t:
    """An opaque handle: `int()` gives the address TensorRT wants, like cuda-python's."""

    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


OK = cudaError_t.cudaSuccess


class StandinCudart:
    """`cuda.bindings.runtime` on host memory: every call returns ``(cudaError_t, *values)``."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, devices: int = 1, name: bytes = b"NVIDIA Stand-in H200", cc: tuple[int, int] = (9, 0)) -> None:
        self.devices, self.name, self.cc = devices, name, cc
        self.memory: dict[int, Any] = {}  # live allocations: address -> ctypes buffer
        self.streams: set[int] = set()
        self._next_stream = 0x1000

    def cudaGetErrorName(self, err: int) -> tuple[cudaError_t, bytes]:
        return OK, cudaError_t(int(err)).name.encode()

    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int]:
        return (OK, self.devices) if self.devices else (cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDevice(self) -> tuple[cudaError_t, int]:
        return OK, 0

    def cudaGetDeviceProperties(self, device: int) -> tuple[cudaError_t, Any]:
        return OK, types.SimpleNamespace(name=self.name, major=self.cc[0], minor=self.cc[1])

    def cudaDriverGetVersion(self) -> tuple[cudaError_t, int]:
        return OK, 13000

    def cudaRuntimeGetVersion(self) -> tuple[cudaError_t, int]:
        return OK, 12090

    def cudaStreamCreate(self) -> tuple[cudaError_t, cudaStream_t]:
        self._next_stream += 16
        self.streams.add(self._next_stream)
        return OK, cudaStream_t(self._next_stream)

    def cudaStreamDestroy(self, stream: cudaStream_t) -> tuple[cudaError_t]:
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.streams.remove(int(stream))
        return (OK,)

    def cudaStreamSynchronize(self, stream: cudaStream_t) -> tuple[cudaError_t]:
        return (OK,) if int(stream) in self.streams else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaMalloc(self, size: int) -> tuple[cudaError_t, int]:
        buffer = ctypes.create_string_buffer(size)
        self.memory[ctypes.addressof(buffer)] = buffer
        return OK, ctypes.addressof(buffer)

    def cudaFree(self, ptr: int) -> tuple[cudaError_t]:
        return (OK,) if self.memory.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidDevicePointer,)

    def device_span(self, ptr: int, nbytes: int) -> bool:
        """True when [ptr, ptr + nbytes) lies inside one live allocation."""
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in self.memory.items())

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: cudaStream_t) -> tuple:
        device = dst if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if not self.device_span(int(device), count):
            return (cudaError_t.cudaErrorInvalidDevicePointer,)
        ctypes.memmove(int(dst), int(src), count)
        return (OK,)


class CountingCudart:
    """Counts allocations, frees and streams of any cudart (the stand-in or the real one)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("cudaMalloc", "cudaFree", "cudaStreamCreate", "cudaStreamDestroy"):

            def counted(*args: Any) -> Any:
                result = attr(*args)
                if int(result[0]) == 0:
                    self.calls[name] += 1
                return result

            return counted
        return attr

    @property
    def live_allocations(self) -> int:
        return self.calls["cudaMalloc"] - self.calls["cudaFree"]

    @property
    def live_streams(self) -> int:
        return self.calls["cudaStreamCreate"] - self.calls["cudaStreamDestroy"]


# --------------------------------------------------------------------------------------- tensorrt


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}
_FROM_ORT = {
    "tensor(float)": DataType.FLOAT,
    "tensor(float16)": DataType.HALF,
    "tensor(int8)": DataType.INT8,
    "tensor(int32)": DataType.INT32,
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
    "tensor(int64)": DataType.INT64,
}
_MAGIC = b"STANDIN-PLAN\x00"


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.IntEnum):  # the members TensorRT 10 and 11 share (FP16/INT8 are gone in 11)
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity


def _ort_session(onnx: bytes) -> Any:
    return _real_ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.onnx = b""
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]


def _dims(shape: list[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]

    def parse(self, model: bytes) -> bool:
        try:
            session = _ort_session(model)
        except Exception as e:  # onnxruntime's own parse error stands for TensorRT's parser's
            self.errors.append(str(e))
            return False
        self.network.onnx = bytes(model)
        self.network.inputs = [_Tensor(i.name, _dims(i.shape), _FROM_ORT[i.type]) for i in session.get_inputs()]
        self.network.outputs = [_Tensor(o.name, _dims(o.shape), _FROM_ORT[o.type]) for o in session.get_outputs()]
        return True


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _Config:
    def __init__(self) -> None:
        self.flags = {BuilderFlag.TF32}  # TensorRT's default
        self.profiles: list[_Profile] = []
        self.pools: dict[MemoryPoolType, int] = {}

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _Builder:
    def __init__(self, module: StandinTensorRT, logger: Logger) -> None:
        self.module = module

    def create_network(self, flags: int = 0) -> _Network:
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        profile = config.profiles[0].shapes if config.profiles else {}
        for tensor in network.inputs:
            if any(d < 0 for d in tensor.shape) and tensor.name not in profile:
                return None  # TensorRT: "dynamic input without a profile" -> build fails
        header = {
            "version": self.module.__version__,
            "tf32": BuilderFlag.TF32 in config.flags,
            "profile": {n: [list(s) for s in shapes] for n, shapes in profile.items()},
            "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
            "outputs": [[t.name, int(t.dtype)] for t in network.outputs],
        }
        self.module.builds.append(header)
        payload = json.dumps(header).encode() + b"\n" + network.onnx
        return _MAGIC + struct.pack("<Q", len(payload)) + hashlib.sha256(payload).digest()[:8] + payload


class _Runtime:
    def __init__(self, module: StandinTensorRT, logger: Logger) -> None:
        self.module = module

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
        """None for anything but a whole plan of this TensorRT version, as TensorRT does."""
        head = len(_MAGIC) + 16
        if len(plan) < head or not plan.startswith(_MAGIC):
            return None
        (length,) = struct.unpack("<Q", plan[len(_MAGIC) : len(_MAGIC) + 8])
        payload = plan[head:]
        if len(payload) != length or hashlib.sha256(payload).digest()[:8] != plan[len(_MAGIC) + 8 : head]:
            return None
        header_bytes, onnx = payload.split(b"\n", 1)
        header = json.loads(header_bytes)
        if header["version"] != self.module.__version__:
            return None
        return _Engine(header, onnx, self.module.cudart)


class _Engine:
    def __init__(self, header: dict[str, Any], onnx: bytes, cudart: StandinCudart) -> None:
        self.header = header
        self.session = _ort_session(onnx)
        self.cudart = cudart
        self.inputs = {name: (tuple(shape), DataType(dt)) for name, shape, dt in header["inputs"]}
        self.outputs = {name: DataType(dt) for name, dt in header["outputs"]}
        self.profile = {n: tuple(tuple(s) for s in shapes) for n, shapes in header["profile"].items()}

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i: int) -> str:
        return [*self.inputs, *self.outputs][i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.inputs[name][1] if name in self.inputs else self.outputs[name]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        if name not in self.engine.inputs:
            return False
        static, _ = self.engine.inputs[name]
        if name in self.engine.profile:
            lo, _, hi = self.engine.profile[name]
            fits = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
        else:
            fits = shape == static
        if fits:
            self.shapes[name] = shape
        return fits

    def _outputs(self) -> dict[str, tuple[int, ...]]:
        key = tuple(sorted(self.shapes.items()))
        if key not in self._output_shapes:
            zeros = {n: np.zeros(s, _NP[self.engine.inputs[n][1]]) for n, s in self.shapes.items()}
            outs = self.engine.session.run(list(self.engine.outputs), zeros)
            self._output_shapes[key] = {n: o.shape for n, o in zip(self.engine.outputs, outs, strict=True)}
        return self._output_shapes[key]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name] if name in self.engine.inputs else self._outputs()[name]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addresses[name]

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(): incompatible function arguments: stream_handle must be an int")
        cudart = self.engine.cudart
        if stream_handle not in cudart.streams or set(self.shapes) != set(self.engine.inputs):
            return False
        feeds = {}
        for name, shape in self.shapes.items():
            dtype = np.dtype(_NP[self.engine.inputs[name][1]])
            nbytes = int(np.prod(shape)) * dtype.itemsize
            ptr = self.addresses.get(name)
            if ptr is None or not cudart.device_span(ptr, nbytes):
                return False
            feeds[name] = np.frombuffer(ctypes.string_at(ptr, nbytes), dtype).reshape(shape)
        outs = self.engine.session.run(list(self.engine.outputs), feeds)
        for name, out in zip(self.engine.outputs, outs, strict=True):
            out = np.ascontiguousarray(out)
            ptr = self.addresses.get(name)
            if ptr is None or not cudart.device_span(ptr, out.nbytes):
                return False
            ctypes.memmove(ptr, out.ctypes.data, out.nbytes)
        return True


class StandinTensorRT(types.ModuleType):
    """The `tensorrt` module: the names the runtime uses, in their TensorRT 10/11 shapes."""

    DataType = DataType
    TensorIOMode = TensorIOMode
    BuilderFlag = BuilderFlag
    MemoryPoolType = MemoryPoolType
    NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    Logger = Logger
    OnnxParser = OnnxParser

    def __init__(self, cudart: StandinCudart, version: str = "10.16.1.11") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.cudart = cudart
        self.builds: list[dict[str, Any]] = []  # the header of every plan built: flags, shapes
        self.Builder = functools.partial(_Builder, self)
        self.Runtime = functools.partial(_Runtime, self)

    @staticmethod
    def nptype(dtype: DataType) -> type:
        return _NP[DataType(dtype)]


# ------------------------------------------------------------------------------------ onnxruntime


class StandinOrt(types.ModuleType):
    """onnxruntime-gpu as a host sees it: the GPU providers listed, the session on `runs_on`.

    Sessions compute with the real CPU onnxruntime; `runs_on` is what `get_providers()` reports,
    e.g. only ["CPUExecutionProvider"] for an install whose CUDA libraries did not load.
    """

    SessionOptions = _real_ort.SessionOptions

    def __init__(self, version: str, available: list[str], runs_on: list[str] | None) -> None:
        super().__init__("onnxruntime")
        self.__version__ = version
        self.available = available
        self.runs_on = runs_on  # None: the providers the session was asked for
        self.sessions: list[dict[str, Any]] = []  # the providers (with options) each session was given
        self.preloads = 0

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def preload_dlls(self) -> None:
        self.preloads += 1

    def InferenceSession(self, path: str, options: Any = None, providers: list[Any] | None = None) -> Any:
        asked = [p if isinstance(p, str) else p[0] for p in providers or []]
        self.sessions.append({"path": path, "providers": providers})
        real = _real_ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        runs_on = list(self.runs_on if self.runs_on is not None else asked)
        return types.SimpleNamespace(
            get_providers=lambda: runs_on,
            get_inputs=real.get_inputs,
            get_outputs=real.get_outputs,
            run=real.run,
        )
