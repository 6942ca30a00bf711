"""The GPU host path, driven through the real session code.

Without a GPU (here, CI) the `tensorrt`, cudart and onnxruntime-gpu modules are the stand-ins of
`gpu_standin.py`; on a machine with an NVIDIA GPU, TensorRT and cuda-python, the tests marked
``gpu`` run the same checks against the real modules (``pytest -m gpu tests/test_runtime_gpu.py``).
Tests that simulate a broken install (a provider that did not load, no GPU, no TensorRT) always use
the stand-ins: they check our logic, which a healthy GPU machine cannot exercise.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as real_ort
import pytest
import tomllib
from packaging.requirements import Requirement

from gpu_standin import CountingCudart, StandinCudart, StandinOrt, StandinTensorRT
from stereodsc.bundles import shipped_bundles
from stereodsc.errors import ConfigError, DataError
from stereodsc.runtime import BackendUnavailableError, cache_dir, open_session, prepare
from stereodsc.runtime.cache import atomic_write, safe_label
from stereodsc.runtime.ort import check_onnxruntime_version
from stereodsc.runtime.tensorrt import GpuInfo, TensorRTSession, plan_name

ROOT = Path(__file__).resolve().parents[1]
EDGE = shipped_bundles()["default"] / "intra" / "q0" / "edge.onnx"
SMALL, WIDE = (1, 64, 128, 3), (1, 64, 192, 3)
KEY = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08:intra/q0/edge.onnx"


def _image(shape: tuple[int, ...] = SMALL, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _cpu(image: np.ndarray) -> np.ndarray:
    session = real_ort.InferenceSession(str(EDGE), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"image": image})[0]


def _close_to_cpu(y: np.ndarray, image: np.ndarray) -> None:
    """Equal to the CPU symbols, up to rounding-boundary flips of one on a real GPU."""
    assert y.dtype == np.int32
    assert np.abs(_cpu(image).astype(np.int64) - y).max() <= 1


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes into the user's real cache."""
    monkeypatch.setenv("STEREODSC_CACHE_DIR", str(tmp_path / "cache"))


@dataclass
class Gpu:
    cudart: CountingCudart
    trt: Any
    standin: bool


def _install_standins(monkeypatch: pytest.MonkeyPatch, cudart: StandinCudart, version: str = "10.16.1.11") -> Gpu:
    counting = CountingCudart(cudart)
    trt = StandinTensorRT(cudart, version)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = counting  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    for name, module in (
        ("tensorrt", trt),
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", counting),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return Gpu(counting, trt, standin=True)


@pytest.fixture(params=["standin", pytest.param("real", marks=pytest.mark.gpu)])
def gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Gpu:
    """TensorRT + cudart: the stand-ins, or (param "real") the installed modules on a GPU machine."""
    if request.param == "standin":
        return _install_standins(monkeypatch, StandinCudart())
    trt = pytest.importorskip("tensorrt", reason="no TensorRT here (GPU machines only)")
    bindings = pytest.importorskip("cuda.bindings", reason="no cuda-python >= 12.6 here (GPU machines only)")
    from cuda.bindings import runtime as real

    from stereodsc.runtime.tensorrt import gpu_info

    try:
        gpu_info(real)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    counting = CountingCudart(real)
    monkeypatch.setattr(bindings, "runtime", counting)
    return Gpu(counting, trt, standin=False)


def _builds(caplog: pytest.LogCaptureFixture) -> int:
    return sum("building the TensorRT engine" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------- cache folder


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("STEREODSC_CACHE_DIR", "CACHE_DIRECTORY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "stereodsc" / "engines"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("numba") == tmp_path / "xdg" / "stereodsc" / "numba"
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path / 'systemd'}:{tmp_path / 'other'}")
    assert cache_dir() == tmp_path / "systemd" / "engines"
    monkeypatch.setenv("STEREODSC_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit" / "engines"


def test_labels_and_plan_names_are_file_name_safe() -> None:
    assert "/" not in safe_label(KEY) and ":" not in safe_label(KEY)
    assert safe_label(KEY) == "9f86d081884c_intra_q0_edge.onnx"
    assert safe_label("../../etc/passwd") == "etc_passwd"
    gpu = GpuInfo("NVIDIA H200 / SXM", "9.0", "13.0", "12.9")
    profile = {"image": (SMALL, SMALL, SMALL)}
    name = plan_name(KEY, "ab" * 32, profile, "10.16.1.11", gpu)
    assert "/" not in name and ":" not in name and len(name) < 255 and name.endswith(".plan")
    assert "1x64x128x3" in name and "trt10.16.1.11" in name and "sm90" in name and "H200" in name
    # Everything a plan depends on changes the name: key, graph, shape, TensorRT, GPU model, compute capability.
    others = [
        plan_name(KEY.replace("intra", "side_info"), "ab" * 32, profile, "10.16.1.11", gpu),
        plan_name(KEY, "cd" * 32, profile, "10.16.1.11", gpu),
        plan_name(KEY, "ab" * 32, {"image": (WIDE, WIDE, WIDE)}, "10.16.1.11", gpu),
        plan_name(KEY, "ab" * 32, profile, "11.4.0.106", gpu),
        plan_name(KEY, "ab" * 32, profile, "10.16.1.11", GpuInfo("NVIDIA L4", "8.9", "13.0", "12.9")),
        plan_name(KEY, "ab" * 32, profile, "10.16.1.11", GpuInfo("NVIDIA H200 / SXM", "9.1", "13.0", "12.9")),
    ]
    assert len({name, *others}) == 7


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.plan"
    atomic_write(target, b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new and longer")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.plan"]


# ------------------------------------------------------------------------------- native TensorRT


def test_graph_sessions_key_writes_one_flat_plan(gpu: Gpu, tmp_path: Path) -> None:
    """Bug 1: a cache key with '/' wrote into sub-folders that did not exist."""
    profiles = {"image": (SMALL, SMALL, SMALL)}
    session = open_session(EDGE, "tensorrt", cache_dir=None, cache_key=KEY, threads=0, profiles=profiles)
    try:
        assert session.input_names == ["image"] and session.output_names == ["y"]
        _close_to_cpu(session.run({"image": _image()})["y"], _image())
    finally:
        session.close()
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert [p.parent for p in files] == [tmp_path / "cache" / "engines"] and files[0].suffix == ".plan"


def test_one_engine_per_shape_and_buffers_reused(gpu: Gpu, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bug 2: a second image size must not run on the first size's engine."""
    caplog.set_level(logging.INFO, "stereodsc.runtime")
    with TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}, {"image": WIDE}]) as session:
        assert _builds(caplog) == 2 and len(set(session.plan_paths)) == 2
        assert "1x64x128x3" in session.plan_paths[0].name and "1x64x192x3" in session.plan_paths[1].name
        for _ in range(3):
            for shape in (SMALL, WIDE, SMALL):
                image = _image(shape, seed=len(shape) + shape[2])
                _close_to_cpu(session.run({"image": image})["y"], image)
        assert gpu.cudart.calls["cudaMalloc"] == 4  # image + y, per shape, once
        assert _builds(caplog) == 2
    if gpu.standin:
        assert [b["profile"]["image"] for b in gpu.trt.builds] == [[list(s)] * 3 for s in (SMALL, WIDE)]
        assert not any(b["tf32"] for b in gpu.trt.builds)  # integer outputs: TF32 cleared


def test_new_size_builds_its_own_engine_with_a_warning(
    gpu: Gpu, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "stereodsc.runtime")
    with TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]) as session:
        image = _image(WIDE)
        _close_to_cpu(session.run({"image": image})["y"], image)
        assert _builds(caplog) == 2 and len(session.plan_paths) == 2
        assert any("inside the decode loop" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_cached_plan_is_reused_after_a_restart(gpu: Gpu, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "stereodsc.runtime")
    first = TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}])
    plan = first.plan_paths[0]
    built = plan.stat().st_mtime_ns
    first.close()
    with TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]) as second:  # a new process's view
        assert second.plan_paths == [plan]
        _close_to_cpu(second.run({"image": _image()})["y"], _image())
    assert _builds(caplog) == 1 and plan.stat().st_mtime_ns == built
    assert any("loaded the cached TensorRT engine" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_plan_is_rebuilt_and_logged(
    gpu: Gpu, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    with TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]) as session:
        plan = session.plan_paths[0]
    good = plan.read_bytes()
    plan.write_bytes({"truncated": good[: len(good) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    caplog.set_level(logging.INFO, "stereodsc.runtime")
    with TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]) as session:
        _close_to_cpu(session.run({"image": _image()})["y"], _image())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "rebuilding" in r.getMessage()]
    assert len(warnings) == 1 and str(plan) in warnings[0].getMessage()
    assert _builds(caplog) == 1 and plan.stat().st_size > len(good) // 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [plan.name]  # no temporary file left behind


def test_unwritable_cache_refuses_before_building(gpu: Gpu, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Decision: a build into a folder this user cannot write is refused before it starts (minutes
    saved), with the fix; an engine already cached there loads without any write."""
    caplog.set_level(logging.INFO, "stereodsc.runtime")
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"not writable.*STEREODSC_CACHE_DIR.*CacheDirectory"):
        TensorRTSession(EDGE, blocker / "engines", KEY, input_shapes=[{"image": SMALL}])
    assert _builds(caplog) == 0 and gpu.cudart.live_streams == 0
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ConfigError, match="not writable"):
            TensorRTSession(EDGE, locked, KEY, input_shapes=[{"image": SMALL}])


def test_cached_plan_loads_from_a_read_only_cache(gpu: Gpu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]).close()

    def no_write(*args: Any) -> None:
        raise AssertionError("a cached engine must load without writing")

    monkeypatch.setattr("stereodsc.runtime.tensorrt.atomic_write", no_write)
    monkeypatch.setattr("stereodsc.runtime.tensorrt.ensure_writable", no_write)
    with TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]) as session:
        _close_to_cpu(session.run({"image": _image()})["y"], _image())


def test_refused_input_shape_is_a_clear_error(gpu: Gpu, tmp_path: Path) -> None:
    class Refusing:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def set_input_shape(self, name: str, shape: Any) -> bool:
            return False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    with TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]) as session:
        held = session._engines[0]
        held.context = Refusing(held.context)
        with pytest.raises(DataError, match=r"refuses image of shape \(1, 64, 128, 3\).*input_shapes"):
            session.run({"image": _image()})
        with pytest.raises(DataError, match="must be uint8"):
            session.run({"image": _image().astype(np.float32)})


def test_close_releases_buffers_and_stream(gpu: Gpu, tmp_path: Path) -> None:
    session = TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}, {"image": WIDE}])
    session.warm_up([{"image": SMALL}, {"image": WIDE}])
    assert gpu.cudart.live_allocations == 4 and gpu.cudart.live_streams == 1
    session.close()
    session.close()  # idempotent
    assert gpu.cudart.live_allocations == 0 and gpu.cudart.live_streams == 0
    with pytest.raises(ConfigError, match="closed"):
        session.run({"image": _image()})


def test_prepare_builds_every_camera_size_at_start_up(gpu: Gpu, tmp_path: Path) -> None:
    lines: list[str] = []
    sizes = [{"image": SMALL}, {"image": WIDE}]
    session = prepare(EDGE, "tensorrt", sizes, cache_dir=tmp_path, cache_key=KEY, progress=lines.append)
    try:
        assert len(list(tmp_path.glob("*.plan"))) == 2 and gpu.cudart.calls["cudaMalloc"] == 4
        assert lines[0].startswith("preparing edge.onnx on tensorrt for 2") and "ready on TensorRT" in lines[-1]
        session.run({"image": _image(WIDE)})
        assert gpu.cudart.calls["cudaMalloc"] == 4  # nothing new inside the loop
    finally:
        session.close()


def test_tensorrt_11_plans_are_kept_apart_from_10(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "stereodsc.runtime")
    cudart = StandinCudart()
    _install_standins(monkeypatch, cudart, "10.16.1.11")
    TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]).close()
    gpu = _install_standins(monkeypatch, cudart, "11.4.0.106")  # TensorRT upgraded: a new plan
    TensorRTSession(EDGE, tmp_path, KEY, input_shapes=[{"image": SMALL}]).close()
    assert _builds(caplog) == 2 and len(list(tmp_path.glob("*.plan"))) == 2
    assert gpu.trt.builds and not gpu.trt.builds[0]["tf32"]


@pytest.mark.parametrize("missing", ["tensorrt", "cuda-python", "gpu"])
def test_native_backend_that_cannot_run_refuses_or_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    _install_standins(monkeypatch, StandinCudart(devices=0 if missing == "gpu" else 1))
    if missing == "tensorrt":
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    if missing == "cuda-python":
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
            monkeypatch.setitem(sys.modules, name, None)
    fix = {"tensorrt": "gpu-cu12", "cuda-python": "gpu-cu12", "gpu": "nvidia-smi"}[missing]
    with pytest.raises(BackendUnavailableError, match=fix) as refused:
        open_session(EDGE, "tensorrt", input_shapes=[{"image": SMALL}])
    assert "fallback = 'cpu'" in str(refused.value)
    session = open_session(EDGE, "tensorrt", input_shapes=[{"image": SMALL}], fallback="cpu")
    assert session.fell_back and session.backend == "tensorrt" and session.providers == ["CPUExecutionProvider"]
    assert np.array_equal(session.run({"image": _image()})["y"], _cpu(_image()))
    assert any(r.levelno == logging.ERROR and "fallback = 'cpu'" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------- onnxruntime providers

WANTED = {"cuda": "CUDAExecutionProvider", "tensorrt-ep": "TensorrtExecutionProvider"}
GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _standin_ort(
    monkeypatch: pytest.MonkeyPatch,
    version: str = "1.26.0",
    available: list[str] | None = None,
    runs_on: list[str] | None = None,
) -> StandinOrt:
    ort = StandinOrt(version, GPU_PROVIDERS if available is None else available, runs_on)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # the TensorRT EP's library preload finds none
    return ort


@pytest.mark.parametrize("backend", ["cuda", "tensorrt-ep"])
def test_silent_cpu_fallback_is_refused(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """Bug 3: onnxruntime-gpu lists the GPU providers, then builds the session on the CPU."""
    _standin_ort(monkeypatch, runs_on=["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match=r"runs on \['CPUExecutionProvider'\].*gpu-cu1[23].*fallback"):
        open_session(EDGE, backend)


@pytest.mark.parametrize("backend", ["cuda", "tensorrt-ep"])
def test_fallback_cpu_is_loud_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    _standin_ort(monkeypatch, runs_on=["CPUExecutionProvider"])
    session = open_session(EDGE, backend, fallback="cpu")
    assert session.fell_back and session.providers == ["CPUExecutionProvider"] and session.backend == backend
    assert np.array_equal(session.run({"image": _image()})["y"], _cpu(_image()))
    assert any(r.levelno == logging.ERROR and WANTED[backend] in r.getMessage() for r in caplog.records)


def test_cpu_only_onnxruntime_refuses_or_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    ort = _standin_ort(monkeypatch, available=["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match=r"needs onnxruntime's CUDAExecutionProvider.*without the CPU"):
        open_session(EDGE, "cuda")
    session = open_session(EDGE, "cuda", fallback="cpu")
    assert session.fell_back and ort.sessions[-1]["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="unknown fallback"):
        open_session(EDGE, "cuda", fallback="gpu")


def test_gpu_provider_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """TF32 off, the TensorRT EP's engine and timing caches in the engine cache folder (from the
    config, or the default cache folder; never the working directory)."""
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    ort = _standin_ort(monkeypatch)
    session = open_session(EDGE, "tensorrt-ep", cache_dir=tmp_path / "configured")
    assert not session.fell_back and session.providers[0] == "TensorrtExecutionProvider"
    trt_options = dict(ort.sessions[-1]["providers"][0][1])
    assert trt_options["trt_engine_cache_path"] == trt_options["trt_timing_cache_path"] == str(tmp_path / "configured")
    assert trt_options["trt_engine_cache_enable"] and trt_options["trt_timing_cache_enable"]
    assert ort.sessions[-1]["providers"][1] == ("CUDAExecutionProvider", {"use_tf32": 0})
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0" and ort.preloads == 1
    open_session(EDGE, "tensorrt-ep")
    assert ort.sessions[-1]["providers"][0][1]["trt_engine_cache_path"] == str(tmp_path / "cache" / "engines")
    open_session(EDGE, "cuda")
    assert ort.sessions[-1]["providers"] == [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]


def test_old_onnxruntime_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for ok in ("1.18.0", "1.26.0", "1.31.1", "2.0.0", "1.32.0.dev20261101"):
        check_onnxruntime_version(ok)
    for old in ("1.17.3", "1.9.0", "0.5"):
        with pytest.raises(ConfigError, match=r"IR 10.*pip install 'onnxruntime>=1.18'"):
            check_onnxruntime_version(old)
    _standin_ort(monkeypatch, version="1.17.3")
    with pytest.raises(ConfigError, match=r"onnxruntime 1\.17\.3 cannot load"):
        open_session(EDGE, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "tensorrt-ep"])
def test_real_gpu_providers_run_on_the_gpu(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine: the provider really runs the session, the symbols match the CPU's, and the
    TensorRT EP's caches land in the cache folder, not the working directory."""
    if WANTED[backend] not in real_ort.get_available_providers():
        pytest.skip(f"{WANTED[backend]} not available (no GPU or no onnxruntime-gpu here)")
    monkeypatch.chdir(tmp_path)
    sizes = [{"image": SMALL}, {"image": WIDE}]
    session = prepare(EDGE, backend, sizes, cache_dir=tmp_path / "engines")
    assert session.providers[0] == WANTED[backend] and not session.fell_back
    for shape in (SMALL, WIDE):
        image = _image(shape)
        _close_to_cpu(session.run({"image": image})["y"], image)
    session.close()
    assert [p.name for p in tmp_path.iterdir()] == ["engines"]
    if backend == "tensorrt-ep":
        assert any(tmp_path.joinpath("engines").iterdir())


# ------------------------------------------------------------------------------------ the extras


def _extra(name: str) -> dict[str, Requirement]:
    """The requirements of one extra, self-references (``stereodsc[host]``) expanded, by name."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    found: dict[str, Requirement] = {}
    todo = [name]
    while todo:
        for text in extras[todo.pop()]:
            req = Requirement(text)
            if req.name == "stereodsc":
                todo.extend(req.extras)
            else:
                found[req.name] = req
    return found


@pytest.mark.parametrize(
    ("extra", "major", "right", "wrong"), [("gpu-cu12", 12, "1.26.0", "1.27.0"), ("gpu-cu13", 13, "1.27.0", "1.26.0")]
)
def test_gpu_extras_pair_one_cuda_major_and_no_cpu_onnxruntime(extra: str, major: int, right: str, wrong: str) -> None:
    """Bug 4: the CPU onnxruntime would replace onnxruntime-gpu's files; CUDA majors must match, and
    TensorRT stays on 10.x, the version onnxruntime-gpu's TensorRT EP links."""
    reqs = _extra(extra)
    assert "onnxruntime" not in reqs and {"numba", "opencv-python-headless"} <= set(reqs)
    ort = reqs["onnxruntime-gpu"]
    assert ort.specifier.contains(right) and not ort.specifier.contains(wrong)  # PyPI: CUDA 13 from 1.27 on
    assert ort.extras == {"cuda", "cudnn"}  # the CUDA and cuDNN libraries as wheels
    cuda = reqs["cuda-python"].specifier
    assert cuda.contains(f"{major}.9.0") and not cuda.contains(f"{25 - major}.9.0")  # 12 <-> 13
    trt = reqs[f"tensorrt-cu{major}"].specifier
    assert trt.contains("10.16.1.11") and not trt.contains("11.4.0.106")
