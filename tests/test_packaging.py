"""What the package declares: licences, extras per machine, the lock that make and CI install from, and
that a camera board's set resolves to aarch64 wheels without torch (issue 11, items 2, 6 and 9)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stereodsc.tomlio import parse_toml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = parse_toml((ROOT / "pyproject.toml").read_text(), "pyproject.toml")
PROJECT = PYPROJECT["project"]
LOCK = ROOT / "requirements" / "dev.txt"
LICENCE = "Apache-2.0 AND CC-BY-NC-SA-3.0"
NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|timed out|ProxyError|Could not fetch URL"
)


def requirements(extras: tuple[str, ...], env: dict[str, str] | None = None) -> list[Requirement]:
    """The project's dependencies plus those of `extras`, self-references (``stereodsc[x]``) expanded,
    markers evaluated for `env` (default: this interpreter)."""
    out: list[Requirement] = []
    todo, done = list(extras), set()
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for text in PROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "stereodsc":
                todo.extend(req.extras)
            else:
                reqs.append(req)
    for req in reqs:
        if req.marker is None or req.marker.evaluate({**(env or {}), "extra": ""}):
            out.append(req)
    return out


def names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


# ------------------------------------------------------------------------------------------ licences
def test_licence_declares_the_code_and_the_kitti_derived_data() -> None:
    assert PROJECT["license"] == LICENCE
    assert canonicalize_license_expression(PROJECT["license"]) == LICENCE  # a valid SPDX expression
    for pattern in PROJECT["license-files"]:
        assert list(ROOT.glob(pattern)), f"license-files pattern {pattern!r} matches nothing"
    legal = (ROOT / "LICENSES" / "CC-BY-NC-SA-3.0.txt").read_text()
    assert legal.startswith("Creative Commons Attribution-NonCommercial-ShareAlike 3.0 Unported")
    notice = (ROOT / "LICENSES" / "KITTI-DERIVED-NOTICE.txt").read_text()
    assert "Geiger" in notice and "Vision meets Robotics" in notice and "CC BY-NC-SA 3.0" in notice


def test_installed_metadata_declares_both_licences() -> None:
    meta = importlib.metadata.metadata("stereodsc")
    assert meta["License-Expression"] == LICENCE, "stale install? `make test` reinstalls when pyproject.toml changes"
    files = meta.get_all("License-File") or []
    assert "LICENSE" in files and "LICENSES/CC-BY-NC-SA-3.0.txt" in files


# -------------------------------------------------------------------------------------------- extras
def test_edge_leaves_onnxruntime_and_opencv_to_the_platform() -> None:
    """A Jetson installs [edge] beside JetPack's onnxruntime-gpu and system OpenCV; other boards add [cpu]."""
    edge = names(requirements(("edge",)))
    assert not {n for n in edge if n.startswith(("onnxruntime", "opencv", "torch", "nvidia"))}, edge
    assert {"numba", "pyzmq", "numpy"} <= edge
    assert {"onnxruntime", "opencv-python-headless"} <= names(requirements(("edge", "cpu")))
    assert "torch" not in names(requirements(("edge", "cpu"))) | names(requirements(("host", "cpu")))
    assert "prometheus-client" in names(requirements(("host",)))


def test_dev_pulls_every_role_so_make_installs_what_the_tests_need() -> None:
    dev = names(requirements(("dev",)))
    for extra in ("edge", "host", "cpu", "train", "eval"):
        assert names(requirements((extra,))) <= dev, extra
    assert {"pytest", "import-linter", "pip-tools", "tomli-w", "prometheus-client"} <= dev


def test_onnxruntime_floor_matches_the_shipped_graphs() -> None:
    """The shipped graphs are ONNX IR 10 / opset 18: onnxruntime 1.17 refuses them."""
    for extra, reqs in PROJECT["optional-dependencies"].items():
        for text in reqs:
            req = Requirement(text)
            if canonicalize_name(req.name).startswith("onnxruntime"):
                assert not req.specifier.contains("1.17.3", prereleases=True), f"[{extra}] {text}"


# ---------------------------------------------------------------------------------------------- lock
def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in version, f"{LOCK.name}: not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_every_dev_requirement_within_its_range() -> None:
    pins = _lock_pins()
    assert "torch" not in pins  # torch comes from $(TORCH): the CPU build here, the user's choice on a GPU machine
    for req in requirements(("dev",)):
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req} is not in {LOCK.relative_to(ROOT)}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"


def test_make_and_ci_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK\s*\?=\s*requirements/dev\.txt$", makefile, re.M)
    install = makefile.split("$(BIN)/stereodsc:", 1)[1].split("\n\n", 1)[0]
    assert '-r $(LOCK) -e ".[dev]"' in install and "$(TORCH)" in install
    assert re.search(r"^test-latest:", makefile, re.M) and re.search(r"^lock:", makefile, re.M)
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


# ------------------------------------------------------------------------------ aarch64 (Jetson) wheels
@pytest.mark.network
@pytest.mark.slow
# JetPack 6 (Ubuntu 22.04: Python 3.10, glibc 2.35), JetPack 7 (Ubuntu 24.04: Python 3.12, glibc 2.39)
@pytest.mark.parametrize(("python", "glibc"), [("3.10", 35), ("3.12", 39)])
def test_edge_set_resolves_to_aarch64_wheels_without_torch(python: str, glibc: int, tmp_path: Path) -> None:
    """What `pip install 'stereodsc[edge,cpu]'` resolves to on an aarch64 board, wheels only. A dry run: pip
    reads the wheels' metadata (not the wheels), with the tags pip on that board accepts."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "platform_machine": "aarch64",
           "sys_platform": "linux", "platform_system": "Linux", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix"}  # fmt: skip
    reqs = [str(Requirement(f"{r.name}{r.specifier}")) for r in requirements(("edge", "cpu"), env)]
    platforms = ["manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, glibc + 1))]
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--no-input",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--timeout", "20",
           "--retries", "1", "--target", str(tmp_path / "target"), "--report", str(report),
           *(a for p in platforms for a in ("--platform", p)), *reqs]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    )
    if proc.returncode != 0 and NETWORK_ERRORS.search(proc.stderr):
        line = next(line for line in proc.stderr.splitlines() if NETWORK_ERRORS.search(line))
        pytest.skip(f"package registry unreachable: {line.strip()[:300]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {
        canonicalize_name(item["metadata"]["name"]): item["download_info"]["url"].rsplit("/", 1)[-1]
        for item in json.loads(report.read_text())["install"]
    }
    assert {canonicalize_name(r.split(">")[0].split("=")[0].split("<")[0]) for r in reqs} <= set(resolved)
    assert not {n for n in resolved if n.startswith(("torch", "nvidia"))}, resolved
    for name, wheel in resolved.items():
        assert wheel.endswith(".whl") and ("aarch64" in wheel or wheel.endswith("-any.whl")), f"{name}: {wheel}"
        assert "x86_64" not in wheel, f"{name}: {wheel}"
