"""Where built engines live, and how they get there safely.

Engines (TensorRT plans, onnxruntime's TensorRT EP caches) are per machine: they never go inside
the bundle (site-packages is read-only for a service user). File names come from caller keys such
as ``"<bundle sha256>:intra/q0/host.onnx"``, so they are made file-name safe here; writes are
atomic, so a crash or a full disk never leaves a truncated plan under the final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from stereodsc.errors import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LONG_HEX = re.compile(r"[0-9a-fA-F]{16,}")
MAX_LABEL = 150  # file names stay far below the usual 255-byte limit, with room for the suffixes


def cache_dir(kind: str = "engines") -> Path:
    """The folder of this machine's `kind` cache ("engines", "numba", ...); created by its writers.

    The root is, first found: ``$STEREODSC_CACHE_DIR`` (this program's explicit override),
    ``$CACHE_DIRECTORY`` (set by systemd's ``CacheDirectory=``; its first entry), then
    ``$XDG_CACHE_HOME/stereodsc``, then ``~/.cache/stereodsc``.
    """
    if root := os.environ.get("STEREODSC_CACHE_DIR"):
        return Path(root).expanduser() / kind
    if systemd := os.environ.get("CACHE_DIRECTORY"):
        return Path(systemd.split(":")[0]) / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "stereodsc" / kind


def safe_label(text: str) -> str:
    """`text` as one file-name component: no path separators, no leading dot, bounded length.

    Long hex runs (bundle and graph digests) are cut to 12 characters: the full key goes into the
    digest that every cache file name also carries, so the readable label may lose detail.
    """
    label = _UNSAFE.sub("_", _LONG_HEX.sub(lambda m: m.group()[:12], text)).strip("._")
    return label[-MAX_LABEL:].lstrip("._") or "graph"


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` and prove this process can write into it, before any long build.

    A real probe file, not ``os.access`` (which root, ACLs and read-only mounts fool).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"the {what} folder {folder} is not writable by this user ({e.strerror or e}): set "
            "[runtime] engine_cache or $STEREODSC_CACHE_DIR to a folder it can write (under systemd: "
            "CacheDirectory=stereodsc in the unit), or pre-build the engines there as this user"
        ) from e


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
