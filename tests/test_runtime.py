"""Inference backends: CPU onnxruntime (the reference, always run) and the GPU paths (run only
where a GPU is present: onnxruntime-gpu's CUDA/TensorRT providers and native TensorRT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stereodsc.bundle import load_bundle
from stereodsc.errors import ConfigError
from stereodsc.runtime import open_session
from tiny_models import bundle_dir


def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _edge_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = load_bundle(bundle_dir(tmp_path_factory, "stereo"))
    path = bundle.codec("intra").quality(0).edge.path(64, 128)
    assert path is not None
    return path


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, 64, 128, 3), dtype=np.uint8)


def test_cpu_session_runs_the_edge_graph(tmp_path_factory: pytest.TempPathFactory) -> None:
    session = open_session(_edge_graph(tmp_path_factory), "cpu", threads=1)
    assert session.input_names == ["image"] and session.output_names == ["y"]
    y = session.run({"image": _image()})["y"]
    assert y.dtype == np.int32 and y.shape[:2] == (1, 8) and y.shape[2:] == (4, 8)


def test_unknown_or_unavailable_backends_name_the_fix(tmp_path_factory: pytest.TempPathFactory) -> None:
    graph = _edge_graph(tmp_path_factory)
    with pytest.raises(ConfigError, match="choose one of"):
        open_session(graph, "gpu")
    if "CUDAExecutionProvider" not in _providers():
        with pytest.raises(ConfigError, match="install onnxruntime-gpu"):
            open_session(graph, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "tensorrt-ep"])
def test_gpu_providers_match_cpu_symbols(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt-ep": "TensorrtExecutionProvider"}[backend]
    if wanted not in _providers():
        pytest.skip(f"{wanted} not available (no GPU or no onnxruntime-gpu here)")
    graph = _edge_graph(tmp_path_factory)
    cpu = open_session(graph, "cpu").run({"image": _image()})["y"]
    gpu = open_session(graph, backend, cache_dir=graph.parent / "trt_cache").run({"image": _image()})["y"]
    assert np.abs(cpu.astype(np.int64) - gpu).max() <= 1  # rounding-boundary flips only


@pytest.mark.gpu
def test_native_tensorrt_matches_cpu(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (no GPU machine)")
    graph = _edge_graph(tmp_path_factory)
    profiles = {"image": ((1, 64, 64, 3), (1, 64, 128, 3), (1, 256, 512, 3))}
    trt = open_session(graph, "tensorrt", cache_dir=tmp_path, cache_key="test", profiles=profiles)
    cpu = open_session(graph, "cpu").run({"image": _image()})["y"]
    assert np.abs(cpu.astype(np.int64) - trt.run({"image": _image()})["y"]).max() <= 1
    assert list(tmp_path.glob("*.plan")), "the engine is cached by bundle key, TensorRT version and GPU"
