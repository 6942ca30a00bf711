"""The systemd units in deploy/: they run as a service should (issue 11, item 5)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = ("stereodsc-edge.service", "stereodsc-host.service")
PROBLEM = re.compile(r"unknown|failed to parse|invalid|ignoring|not valid|missing", re.IGNORECASE)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value given (systemd allows repeated keys;
    comments and blank lines skipped, backslash continuations joined)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any [section]"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"missing {key}="
    return service[key][-1]  # the last assignment wins


@pytest.mark.parametrize("unit", UNITS)
def test_unit_restarts_on_failure_but_not_on_a_config_error(unit: str) -> None:
    service = parse_unit(DEPLOY / unit)["Service"]
    assert _one(service, "Restart") == "on-failure"
    assert "2" in _one(service, "RestartPreventExitStatus").split()  # the CLI's exit status for a config error


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_hardened_and_has_its_state_and_cache_folders(unit: str) -> None:
    u = parse_unit(DEPLOY / unit)
    service = u["Service"]
    assert _one(service, "User") == "stereodsc"  # a dedicated user, never root
    assert _one(service, "NoNewPrivileges") == "yes"
    assert _one(service, "ProtectSystem") == "strict"
    assert _one(service, "PrivateTmp") == "yes"
    assert "video" in _one(service, "SupplementaryGroups").split()
    assert _one(service, "StateDirectory") == "stereodsc"
    assert _one(service, "CacheDirectory") == "stereodsc"
    # numba's cache in the cache folder (%C = /var/cache): a service user has no writable home
    env = dict(item.split("=", 1) for value in service.get("Environment", []) for item in shlex.split(value))
    assert env.get("NUMBA_CACHE_DIR", "").startswith("%C/stereodsc")
    # settings that would break the service: JIT compilers need W+X memory, cameras and GPUs are devices
    for key in ("MemoryDenyWriteExecute", "PrivateDevices", "ProtectClock", "DevicePolicy", "DynamicUser"):
        assert key not in service, f"{key}= breaks numba, TensorRT, the camera or the keys' ownership"
    assert _one(u["Install"], "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("unit", UNITS)
def test_unit_runs_the_venv_command_on_a_config_that_ships_in_deploy(unit: str) -> None:
    service = parse_unit(DEPLOY / unit)["Service"]
    argv = shlex.split(_one(service, "ExecStart"))
    role = unit.removeprefix("stereodsc-").removesuffix(".service")
    assert argv[0] == "/opt/stereodsc/.venv/bin/stereodsc" and argv[1] == role
    config = Path(argv[argv.index("--config") + 1])
    assert config.parent == Path("/etc/stereodsc")
    assert (DEPLOY / config.name).is_file(), f"{unit} names {config}, but deploy/{config.name} does not exist"
    assert f"deploy/{config.name}" in (DEPLOY / "README.md").read_text()  # and the set-up says where it goes


def test_readme_documents_the_user_and_the_jetson_install() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "useradd --system" in text and "stereodsc" in text
    assert "--system-site-packages" in text and "stereodsc[edge]" in text and "stereodsc[edge,cpu]" in text
    for unit in UNITS:
        assert unit in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_every_setting(tmp_path: Path) -> None:
    """`systemd-analyze verify` names unknown or malformed settings (a typo is silently ignored by systemd)."""
    for unit in UNITS:
        shutil.copy(DEPLOY / unit, tmp_path / unit)
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # ("is not executable": /opt/stereodsc/.venv is not on this machine; other environment noise is not ours)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if PROBLEM.search(line)]
    assert not problems, "\n".join(problems)
