"""Native TensorRT backend, written once for TensorRT 10 and 11.

Engines are built strongly typed from the ONNX graph (precision lives in the graph: TensorRT 11
removed the FP16/INT8 builder flags), serialised, and cached by the caller's key (the bundle id),
the TensorRT version and the GPU, since a plan only runs where it was built. Inference uses the
named-tensor API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`) with device memory
from cuda-python. Only exercised on machines with an NVIDIA GPU.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.errors import ConfigError

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
# Per input name: (min, opt, max) shapes of the optimisation profile, for inputs with dynamic dims.
Profiles = dict[str, tuple[Shape, Shape, Shape]]


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise ConfigError("backend 'tensorrt' needs cuda-python: pip install cuda-python") from e
    return cudart


def _check(result: tuple[Any, ...]) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def _gpu_name(cudart: Any) -> str:
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip()}-sm{props.major}{props.minor}"


def build_engine(onnx_path: Path, profiles: Profiles, workspace_bytes: int = 1 << 30) -> bytes:
    """Parse the ONNX graph and build a strongly typed serialised engine; `profiles` gives the
    min/opt/max shapes of every input with a dynamic dimension."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
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
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in profiles:
            profile.set_shape(tensor.name, *profiles[tensor.name])
        elif any(d < 0 for d in tensor.shape):
            raise ConfigError(
                f"{onnx_path}: input {tensor.name} has dynamic shape {tuple(tensor.shape)} "
                f"but no profile was given for it"
            )
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ConfigError(f"TensorRT failed to build an engine from {onnx_path}; see the log above")
    return bytes(plan)


class TensorRTSession:
    """A cached TensorRT engine with numpy in/out (host<->device copies on one CUDA stream)."""

    def __init__(self, onnx_path: Path, cache_dir: Path, cache_key: str, profiles: Profiles) -> None:
        import tensorrt as trt

        self._cudart = cudart = _cudart()
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
        tag = f"{cache_key or digest}-{onnx_path.stem}-trt{trt.__version__}-{_gpu_name(cudart)}"
        plan_path = cache_dir / f"{tag.replace(' ', '_')}.plan"
        if plan_path.is_file():
            plan = plan_path.read_bytes()
        else:
            log.info("building TensorRT engine for %s (cached as %s)", onnx_path.name, plan_path.name)
            plan = build_engine(onnx_path, profiles)
            cache_dir.mkdir(parents=True, exist_ok=True)
            plan_path.write_bytes(plan)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self._trt = trt

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx, trt = self._cudart, self._context, self._trt
        buffers: list[Any] = []
        try:
            for name in self.input_names:
                host = np.ascontiguousarray(inputs[name])
                ctx.set_input_shape(name, host.shape)
                dev = _check(cudart.cudaMalloc(host.nbytes))
                buffers.append(dev)
                _check(
                    cudart.cudaMemcpyAsync(
                        dev,
                        host.ctypes.data,
                        host.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                        self._stream,
                    )
                )
                ctx.set_tensor_address(name, int(dev))
            outputs: dict[str, np.ndarray] = {}
            for name in self.output_names:
                dtype = trt.nptype(self._engine.get_tensor_dtype(name))
                out = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype)
                dev = _check(cudart.cudaMalloc(max(out.nbytes, 1)))
                buffers.append(dev)
                ctx.set_tensor_address(name, int(dev))
                outputs[name] = out
            if not ctx.execute_async_v3(self._stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            for name, out in outputs.items():
                _check(
                    cudart.cudaMemcpyAsync(
                        out.ctypes.data,
                        int(ctx.get_tensor_address(name)),
                        out.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                        self._stream,
                    )
                )
            _check(cudart.cudaStreamSynchronize(self._stream))
            return outputs
        finally:
            for dev in buffers:
                cudart.cudaFree(dev)
