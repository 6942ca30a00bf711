"""TOML reading for every config and rig file (Python 3.10 on JetPack 6 needs the tomli backport)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from stereodsc.errors import ConfigError, StereoDSCError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def parse_toml(text: str, source: str, error: type[StereoDSCError] = ConfigError) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{source} is not valid TOML: {e}") from e


def load_toml(path: str | Path, error: type[StereoDSCError] = ConfigError) -> dict[str, Any]:
    """Read a TOML file; a missing, undecodable or invalid file raises `error` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text: {e}") from e
    return parse_toml(text, str(path), error)
