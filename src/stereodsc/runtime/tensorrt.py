"""Native TensorRT backend, written once for TensorRT 10 and 11.

Engines are built strongly typed from the ONNX graph (precision lives in the graph: TensorRT 11
removed the FP16/INT8 builder flags), with TF32 off when the graph's outputs are integers (they are
rounded: TF32's 10-bit mantissas can flip a rounding decision). A plan only runs with the TensorRT
version and GPU model it was built for, so the cache file name carries the caller's key, the
graph's digest, the input shapes, the TensorRT version, the GPU and its compute capability.

One session holds one engine per input shape (or per optimisation profile), each with an execution
context and device buffers allocated once per shape and reused for every frame, all on one CUDA
stream. Inference uses the named-tensor API (`set_input_shape`, `set_tensor_address`,
`execute_async_v3`) with cuda-python's runtime bindings. `close()` releases all of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.errors import ConfigError, DataError, StereoDSCError

from .cache import atomic_write, ensure_writable, safe_label
from .ort import GPU_INSTALL_HINT, BackendUnavailableError

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
# Per input name: (min, opt, max) shapes of the optimisation profile of one engine.
Profiles = dict[str, tuple[Shape, Shape, Shape]]
# Changes to how engines are built invalidate every cached plan: this goes into each plan's digest.
BUILD_RECIPE = "strongly-typed; tf32 off for integer outputs; 1 profile; v2"


class CudaError(StereoDSCError, RuntimeError):
    """A CUDA or TensorRT call failed at run time (out of device memory, a lost device, ...)."""


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailableError(f"backend 'tensorrt' needs TensorRT's Python package: {GPU_INSTALL_HINT}") from e
    return tensorrt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (the only name in 13.x)
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python 12.x
        except ImportError as e:
            raise BackendUnavailableError(f"backend 'tensorrt' needs cuda-python: {GPU_INSTALL_HINT}") from e
    return cudart


def _check(cudart: Any, result: tuple[Any, ...], what: str) -> Any:
    """The value(s) of a cuda-python call, which returns (error, *values); a CudaError otherwise."""
    err, *rest = result
    if int(err) != 0:
        _, name = cudart.cudaGetErrorName(err)
        raise CudaError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name} ({int(err)})")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


@dataclass(frozen=True)
class GpuInfo:
    """The GPU sessions run on, as the engine cache key and the smoke report need it."""

    name: str
    compute_capability: str  # "9.0"
    driver: str  # the highest CUDA version the driver supports, "13.0"
    runtime: str  # the CUDA runtime cuda-python was built for

    @property
    def tag(self) -> str:
        return f"{safe_label(self.name)}-sm{self.compute_capability.replace('.', '')}"


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def gpu_info(cudart: Any = None) -> GpuInfo:
    """The current CUDA device, or BackendUnavailableError when none is usable (no GPU, old driver)."""
    cudart = cudart or _cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        _, name = cudart.cudaGetErrorName(err)
        raise BackendUnavailableError(
            f"no usable CUDA GPU here ({name.decode() if isinstance(name, bytes) else name}): check nvidia-smi; "
            "the CUDA major of cuda-python and TensorRT must not exceed the driver's (nvidia-smi's 'CUDA Version')"
        )
    device = _check(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = _check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    raw = props.name
    name = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).split("\x00")[0].strip()
    return GpuInfo(
        name,
        f"{props.major}.{props.minor}",
        _cuda_version(_check(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")),
        _cuda_version(_check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
    )


@functools.cache
def _trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process (TensorRT warns when builders and runtimes get different ones)."""
    return trt.Logger(trt.Logger.WARNING)


def fixed_profile(shapes: Mapping[str, Iterable[int]]) -> Profiles:
    """The profile of an engine that runs exactly these input shapes (min = opt = max)."""
    profile: Profiles = {}
    for name, dims in shapes.items():
        shape = tuple(int(d) for d in dims)
        profile[name] = (shape, shape, shape)
    return profile


def plan_name(cache_key: str, graph_digest: str, profile: Profiles, trt_version: str, gpu: GpuInfo) -> str:
    """The cache file name of one engine: readable, file-name safe, unique per everything a plan
    depends on (the full key goes into the digest; the readable part may be shortened)."""

    def dims(shape: Shape) -> str:
        return "x".join(str(d) for d in shape)

    shapes = "_".join(
        f"{name}{dims(lo)}" + ("" if lo == hi else f"-{dims(hi)}") for name, (lo, _, hi) in sorted(profile.items())
    )
    ranges = sorted((name, [list(s) for s in shapes_]) for name, shapes_ in profile.items())
    key = json.dumps([cache_key, graph_digest, ranges, trt_version, gpu.name, gpu.compute_capability, BUILD_RECIPE])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    label = safe_label(f"{cache_key or graph_digest}.{shapes}.trt{trt_version}.{gpu.tag}")
    return f"{label}.{digest}.plan"


def _covers(profile: Profiles, shapes: Mapping[str, Shape]) -> bool:
    if not profile:  # a graph with static shapes: its engine decides (set_input_shape)
        return True
    if set(profile) != set(shapes):
        return False
    for name, (lo, _, hi) in profile.items():
        shape = shapes[name]
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
    return True


def build_engine(onnx_path: Path, profile: Profiles, workspace_bytes: int = 1 << 30) -> bytes:
    """Parse the ONNX graph and build a strongly typed serialised engine; `profile` gives the
    min/opt/max shapes of every input with a dynamic dimension."""
    trt = _tensorrt()
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:  # strongly typed is the only mode from 11 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    integer = (trt.DataType.INT32, trt.DataType.UINT8, trt.DataType.INT8, trt.DataType.INT64, trt.DataType.BOOL)
    if any(network.get_output(i).dtype in integer for i in range(network.num_outputs)):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; the outputs are rounded
    optimisation = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in profile:
            optimisation.set_shape(tensor.name, *profile[tensor.name])
        elif any(d < 0 for d in tensor.shape):
            raise ConfigError(
                f"{onnx_path}: input {tensor.name} has dynamic shape {tuple(tensor.shape)}: give its shapes "
                "(input_shapes: the camera sizes, or profiles) so an engine can be built for them"
            )
    config.add_optimization_profile(optimisation)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ConfigError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    return bytes(plan)


@dataclass
class _Buffers:
    """Device memory of one input shape set, allocated once and reused for every frame."""

    inputs: dict[str, int]
    outputs: dict[str, tuple[int, Shape, Any]]  # name -> (device pointer, shape, numpy dtype)


@dataclass
class _Engine:
    profile: Profiles
    plan_path: Path
    engine: Any
    context: Any
    buffers: dict[tuple[tuple[str, Shape], ...], _Buffers] = field(default_factory=dict)
    active: tuple[tuple[str, Shape], ...] | None = None  # the shape set the context is bound to


class TensorRTSession:
    """Cached TensorRT engines of one ONNX graph with numpy in/out.

    Engines are built (or loaded from `cache_dir`) at construction for `profiles` and for each shape
    set in `input_shapes`; a frame of any other shape builds its engine on first use, with a warning
    (that blocks decoding for tens of seconds: list the camera sizes at start-up instead).
    """

    backend = "tensorrt"
    fell_back = False

    def __init__(
        self,
        onnx_path: Path,
        cache_dir: Path,
        cache_key: str = "",
        profiles: Profiles | None = None,
        input_shapes: Iterable[Mapping[str, Shape]] = (),
    ) -> None:
        self._trt = trt = _tensorrt()
        self._cudart = cudart = _cudart()
        self.gpu = gpu_info(cudart)
        self.providers = [f"TensorRT {trt.__version__} on {self.gpu.name}"]
        self.onnx_path = onnx_path
        self.cache_dir = cache_dir
        self.cache_key = cache_key
        self._digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        self._runtime = trt.Runtime(_trt_logger(trt))
        self._engines: list[_Engine] = []
        self._stream: Any = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        wanted = ([profiles] if profiles else []) + [fixed_profile(s) for s in input_shapes]
        try:
            for profile in wanted or [{}]:  # no shapes: a graph with static shapes
                self._engine_for(profile)
        except BaseException:
            self.close()
            raise
        first = self._engines[0].engine
        names = [first.get_tensor_name(i) for i in range(first.num_io_tensors)]
        self.input_names = [n for n in names if first.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self._input_dtypes = {n: np.dtype(trt.nptype(first.get_tensor_dtype(n))) for n in self.input_names}

    @property
    def plan_paths(self) -> list[Path]:
        """The cached plan of each engine this session holds."""
        return [e.plan_path for e in self._engines]

    def _engine_for(self, profile: Profiles) -> _Engine:
        """The engine of `profile`: already held, loaded from the cache, or built (then cached)."""
        for held in self._engines:
            if held.profile == profile:
                return held
        trt = self._trt
        path = self.cache_dir / plan_name(self.cache_key, self._digest, profile, trt.__version__, self.gpu)
        engine = self._load(path)
        if engine is None:
            ensure_writable(self.cache_dir, "TensorRT engine cache")  # before minutes of build, not after
            log.info(
                "building the TensorRT engine of %s for %s (one-off, cached as %s)",
                self.onnx_path.name,
                _describe(profile),
                path.name,
            )
            start = time.perf_counter()
            plan = build_engine(self.onnx_path, profile)
            atomic_write(path, plan)
            log.info("built %s in %.1f s", path.name, time.perf_counter() - start)
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise CudaError(f"TensorRT cannot load the engine it has just built ({path}); see its log above")
        held = _Engine(profile, path, engine, engine.create_execution_context())
        self._engines.append(held)
        return held

    def _load(self, path: Path) -> Any:
        """The engine cached at `path`, or None when there is none or it does not load (corrupt,
        truncated, or from another TensorRT build): then it is rebuilt, and the event logged."""
        if not path.is_file():
            return None
        try:
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        except (OSError, RuntimeError) as e:
            log.warning("cached TensorRT engine %s is unreadable (%s); rebuilding it", path, e)
            return None
        if engine is None:
            log.warning(
                "cached TensorRT engine %s does not load (corrupt, truncated, or written by another "
                "TensorRT build); rebuilding it",
                path,
            )
        else:
            log.info("loaded the cached TensorRT engine %s", path.name)
        return engine

    def _engine_covering(self, shapes: Mapping[str, Shape]) -> _Engine:
        fixed = fixed_profile(shapes)
        for held in self._engines:
            if held.profile == fixed:
                return held
        for held in self._engines:
            if _covers(held.profile, shapes):
                return held
        log.warning(
            "no TensorRT engine of %s for %s yet: building one now, inside the decode loop; build it at "
            "start-up instead (runtime.prepare / warm_up with the camera sizes)",
            self.onnx_path.name,
            _describe(fixed),
        )
        return self._engine_for(fixed)

    def _bind(self, held: _Engine, shapes: Mapping[str, Shape]) -> _Buffers:
        """Bind the context to `shapes` and return their device buffers (allocated on first use)."""
        key = tuple(sorted(shapes.items()))
        buffers = held.buffers.get(key)
        if held.active == key and buffers is not None:
            return buffers
        ctx, cudart = held.context, self._cudart
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise DataError(
                    f"TensorRT engine {held.plan_path.name} refuses {name} of shape {shape} (its profile: "
                    f"{_describe(held.profile)}): give this size in input_shapes at start-up"
                )
        if buffers is None:
            inputs = {}
            for name, shape in shapes.items():
                nbytes = int(np.prod(shape)) * self._input_dtypes[name].itemsize
                inputs[name] = int(_check(cudart, cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            outputs = {}
            for name in self.output_names:
                shape = tuple(ctx.get_tensor_shape(name))
                dtype = np.dtype(self._trt.nptype(held.engine.get_tensor_dtype(name)))
                nbytes = int(np.prod(shape)) * dtype.itemsize
                outputs[name] = (int(_check(cudart, cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")), shape, dtype)
            buffers = held.buffers[key] = _Buffers(inputs, outputs)
        for name, ptr in buffers.inputs.items():
            ctx.set_tensor_address(name, ptr)
        for name, (ptr, _, _) in buffers.outputs.items():
            ctx.set_tensor_address(name, ptr)
        held.active = key
        return buffers

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._engines:
            raise ConfigError(f"the TensorRT session of {self.onnx_path.name} is closed; open a new one")
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise DataError(f"{self.onnx_path.name} needs inputs {sorted(missing)}")
        arrays = {}
        for name in self.input_names:
            array = np.ascontiguousarray(inputs[name])
            expected = self._input_dtypes[name]
            if array.dtype != expected:
                raise DataError(f"{self.onnx_path.name}: input {name} must be {expected}, got {array.dtype}")
            arrays[name] = array
        shapes = {n: tuple(a.shape) for n, a in arrays.items()}
        held = self._engine_covering(shapes)
        buffers = self._bind(held, shapes)
        cudart, stream = self._cudart, self._stream
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in arrays.items():
            _check(
                cudart,
                cudart.cudaMemcpyAsync(buffers.inputs[name], array.ctypes.data, array.nbytes, to_device, stream),
                "cudaMemcpyAsync",
            )
        if not held.context.execute_async_v3(int(stream)):
            raise CudaError(f"TensorRT could not run {held.plan_path.name}; see the TensorRT log above")
        outputs = {}
        for name, (ptr, shape, dtype) in buffers.outputs.items():
            out = outputs[name] = np.empty(shape, dtype)
            _check(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, to_host, stream), "cudaMemcpyAsync")
        _check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return outputs

    def warm_up(self, input_shapes: Iterable[Mapping[str, Shape]]) -> None:
        """Build or load the engine of each shape set and allocate its buffers, with one run of zeros."""
        for shapes in input_shapes:
            self.run({n: np.zeros(s, self._input_dtypes[n]) for n, s in shapes.items()})

    def close(self) -> None:
        """Free every device buffer, execution context, engine and the stream; idempotent."""
        cudart = self._cudart
        for held in self._engines:
            for buffers in held.buffers.values():
                for ptr in [*buffers.inputs.values(), *(p for p, _, _ in buffers.outputs.values())]:
                    _check(cudart, cudart.cudaFree(ptr), "cudaFree")
            held.buffers.clear()
            held.context = held.engine = None
        self._engines.clear()
        if self._stream is not None:
            _check(cudart, cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None

    def __enter__(self) -> TensorRTSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(profile: Profiles) -> str:
    if not profile:
        return "its static shapes"
    return ", ".join(f"{n} {lo}" if lo == hi else f"{n} {lo}..{hi}" for n, (lo, _, hi) in sorted(profile.items()))
