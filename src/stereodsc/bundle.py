"""The deployable bundle: a manifest, ONNX graphs and integer CDF tables, verified by hash.

Layout of a bundle folder:

    manifest.json          schema, codecs, qualities, shapes, versions, sha256 of every file
    intra/q0/edge.onnx     uint8 image -> int32 symbols (analysis transform, rounding inside)
    intra/q0/host.onnx     int32 symbols -> uint8 image (no side information)
    intra/q0/tables.npz    integer CDF tables of the transmitted latent
    side_info/q0/...       the same for the side-information codec; its host graph also takes
                           the decoded side image

The bundle id is the sha256 of manifest.json; since the manifest holds the sha256 of every file,
the id changes whenever any file changes. Every wire frame carries (a prefix of) it, so a host
never decodes a frame with other weights or tables than the camera encoded it with.
No torch here: camera boards and hosts load bundles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stereodsc.errors import BundleError

MANIFEST = "manifest.json"
SCHEMA = "stereodsc.bundle/1"
ROLES = ("intra", "side_info")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class QualityPoint:
    """One rate point of a codec: its graphs, its tables and what training measured."""

    index: int
    edge: Path
    host: Path
    tables: Path
    lmbda: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class Codec:
    """The codec one camera role uses: intra (reference camera) or side_info (dependent cameras)."""

    role: str
    model: str
    model_config: dict[str, Any]
    stride: int
    latent_channels: int
    uses_side_info: bool
    qualities: tuple[QualityPoint, ...]

    def quality(self, index: int) -> QualityPoint:
        if not 0 <= index < len(self.qualities):
            raise BundleError(
                f"quality {index} is not in the bundle ({self.role} codec has qualities "
                f"0..{len(self.qualities) - 1})"
            )
        return self.qualities[index]


@dataclass(frozen=True)
class Bundle:
    path: Path
    id: str  # sha256 hex of manifest.json
    manifest: dict[str, Any]
    codecs: dict[str, Codec]

    @property
    def id_bytes(self) -> bytes:
        """The 8-byte id prefix that wire frames carry."""
        return bytes.fromhex(self.id[:16])

    def codec(self, role: str) -> Codec:
        try:
            return self.codecs[role]
        except KeyError:
            raise BundleError(
                f"bundle {self.path} has no {role!r} codec (it has {sorted(self.codecs)}); "
                f"export one with stereodsc export"
            ) from None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> str:
    """Hash every file the manifest lists, write manifest.json, return the bundle id."""
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    manifest = {**manifest, "schema": SCHEMA, "files": {f: sha256_file(folder / f) for f in files}}
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (folder / MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _codec(folder: Path, role: str, raw: dict[str, Any]) -> Codec:
    try:
        qualities = tuple(
            QualityPoint(
                i,
                folder / q["edge"],
                folder / q["host"],
                folder / q["tables"],
                float(q["lmbda"]),
                dict(q.get("metrics", {})),
            )
            for i, q in enumerate(raw["qualities"])
        )
        return Codec(
            role,
            raw["model"],
            raw["model_config"],
            int(raw["stride"]),
            int(raw["latent_channels"]),
            bool(raw["uses_side_info"]),
            qualities,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(
            f"{folder / MANIFEST}: malformed {role!r} codec entry ({e!r}); re-export the bundle"
        ) from e


def load_bundle(folder: str | Path, verify: bool = True) -> Bundle:
    """Load a bundle; with `verify`, refuse it if any file is missing, extra-modified or tampered with."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a bundle: no {MANIFEST}; create one with stereodsc export")
    data = path.read_bytes()
    try:
        manifest = json.loads(data)
    except json.JSONDecodeError as e:
        raise BundleError(
            f"{path} is not valid JSON ({e}); the bundle is damaged, re-export or re-copy it"
        ) from e
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"{path}: schema {manifest.get('schema')!r}, this stereodsc reads {SCHEMA!r}")
    if verify:
        for name, digest in manifest.get("files", {}).items():
            file = folder / name
            if not file.is_file():
                raise BundleError(f"bundle {folder}: {name} is missing; re-copy the whole bundle folder")
            if sha256_file(file) != digest:
                raise BundleError(
                    f"bundle {folder}: {name} does not match its sha256 in the manifest "
                    f"(modified or corrupted); re-copy the bundle from the export"
                )
    codecs = {role: _codec(folder, role, raw) for role, raw in manifest.get("codecs", {}).items()}
    unknown = sorted(set(codecs) - set(ROLES))
    if unknown or not codecs:
        raise BundleError(f"{path}: codec roles {sorted(codecs)}; expected some of {list(ROLES)}")
    return Bundle(folder, hashlib.sha256(data).hexdigest(), manifest, codecs)
