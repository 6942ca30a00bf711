"""TOML for every config and rig file: reading with tomllib (the tomli backport on Python 3.10, JetPack 6),
writing with tomli_w."""

from __future__ import annotations

import sys
from dataclasses import fields
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


def section(cls: type, raw: dict[str, Any], name: str, source: str) -> Any:
    """Build dataclass `cls` from one TOML table: unknown keys and wrong types raise ConfigError
    naming the key, the section and the file."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{name}] should be a table of keys, got {raw!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in [{name}]; valid keys: {sorted(known)}")
    obj = cls(**raw)
    for f in fields(cls):
        default = getattr(cls(), f.name)
        value = getattr(obj, f.name)
        if default is not None and value is not None and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int):
                setattr(obj, f.name, float(value))
                continue
            raise ConfigError(f"{source}: [{name}] {f.name} = {value!r} should be a {type(default).__name__}")
    return obj


def _plain(value: Any, key: str) -> Any:
    """`value` as the types TOML writers take: numpy scalars and arrays become Python numbers and lists,
    tuples lists; anything TOML cannot hold (None, objects) is a TypeError naming the key."""
    if isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy scalar or array, without importing numpy
        return _plain(value.tolist(), key)
    if isinstance(value, list | tuple):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"cannot write {key} = {value!r} to TOML ({type(value).__name__})")


def dump_toml(tables: dict[str, dict[str, Any]]) -> str:
    """Tables of scalars, lists and sub-tables (what our configs hold) as TOML text, written by `tomli_w`:
    strings are escaped (a newline too), numpy numbers become plain ones; `parse_toml` reads it back.
    A dotted table name is a path, as in a TOML header: ``{"model": {...}, "model.options": {...}}``
    writes ``[model]`` and ``[model.options]``."""
    import tomli_w

    doc: dict[str, Any] = {}
    for name, table in tables.items():
        node = doc
        for part in str(name).split("."):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TypeError(f"table [{name}]: {part} is already a value, not a table")
        node.update(_plain(table, str(name)))
    return tomli_w.dumps(doc)


def sections(raw: dict[str, Any], schema: dict[str, type], source: str) -> dict[str, Any]:
    """Build every table of a config file with `section`; an unknown table is a ConfigError."""
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        valid = ", ".join(f"[{name}]" for name in schema)
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections: {valid}")
    return {name: section(cls, raw.get(name, {}), name, source) for name, cls in schema.items()}
