"""The deployable bundle: a manifest, ONNX graphs and integer CDF tables, verified by hash.

Layout of a bundle folder (written by ``stereodsc export``, see `stereodsc.export`):

    manifest.json                schema, codecs, qualities, shapes, versions, sha256 of every file
    intra/q0/edge.onnx           uint8 image [1, H, W, 3] -> int32 symbols (analysis, rounding inside)
    intra/q0/host.onnx           int32 symbols -> uint8 image [1, H, W, 3] (no side information)
    intra/q0/tables.npz          integer CDF tables of the transmitted latent y
    intra/q0/tables_z.npz        (scale hyperprior) integer CDF tables of z, one row per channel
    intra/q0/scale_path.npz      (scale hyperprior) the integer h_s that picks y's table rows from z
    side_info/q0/...             the same for the side-information codec; its host graph also takes
                                 the decoded side image "side" (uint8 [1, H, W, 3])
    side_info/q0/refine.onnx     (DSIN) uint8 "x_dec" + "side" -> uint8 image: its host graph then takes
                                 y only and gives x_dec, the decode before the side image refines it
    side_info/q0/host_128x256.onnx   a graph that only runs at one padded size (DSIN's SI-Finder)
    LICENSE.txt                  the licence of the weights (export --licence), if the exporter gave one

H and W are the image size padded to the codec's ``stride``. A graph is either dynamic (one file,
manifest key ``"*"``, any multiple of the stride) or fixed (one file per padded size, key
``"HxW"``). Each quality lists its graphs by part ("edge", "host", and "refine" where the host
side is split) and its tables by latent name;
the codec lists its latents in wire-segment order. A factorized codec sends one latent, "y", coded
with one table row per channel. A scale-hyperprior codec sends "z" first (one row per channel),
then "y", whose manifest entry says ``"conditioned_on": "z"``: the table row of every y element is
``IntegerScaleNet.indexes(z)`` of the quality's ``scale_paths["y"]`` file, an integer network both
ends evaluate on the integer z (the edge on the z it coded, the host on the z it decoded), so no
float ever chooses a CDF (DESIGN decision 2). Its edge graph outputs z and y, its host graph takes
y only (the decoders read y_hat; z only selects y's tables).

The bundle id is the sha256 of manifest.json; since the manifest holds the sha256 of every file,
the id changes whenever any file changes. Every wire frame carries (a prefix of) it, so a host
never decodes a frame with other weights or tables than the camera encoded it with. The manifest
also holds the sha256 of its own canonical content, so a hand-edited manifest is refused too.

This module reads and verifies bundles (no torch: camera boards and hosts load them); what both
ends do with one lives in `stereodsc.codec`, and writing one from checkpoints in `stereodsc.export`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stereodsc.errors import BundleError
from stereodsc.wire import bundle_id_from_sha256

MANIFEST = "manifest.json"
SCHEMA = "stereodsc.bundle/1"
ROLES = ("intra", "side_info")
ANY_SIZE = "*"
GRAPH_PARTS = ("edge", "host", "refine")
SELF_DIGEST = "manifest_sha256"
LICENCE_FILE = "LICENSE.txt"
"""The terms of the bundle's weights (e.g. those of the data they were trained on), hashed like every file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size_key(height: int, width: int) -> str:
    """Manifest key of a fixed-size graph: "HxW" of the padded size."""
    return f"{height}x{width}"


def _content_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its own digest field."""
    body = {k: v for k, v in manifest.items() if k != SELF_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Graph:
    """One ONNX graph of a quality: a dynamic-shape file (key "*") or one file per padded size."""

    files: Mapping[str, Path]

    @property
    def dynamic(self) -> bool:
        return ANY_SIZE in self.files

    def path(self, height: int, width: int) -> Path | None:
        """The file that runs at this padded size, or None when the bundle has none for it."""
        return self.files.get(ANY_SIZE) or self.files.get(size_key(height, width))

    def describe(self) -> str:
        """Which sizes the graph runs at, for error messages."""
        return "any size" if self.dynamic else "only " + ", ".join(sorted(self.files))


@dataclass(frozen=True)
class QualityPoint:
    """One rate point of a codec: its graphs, its tables and what training and export measured."""

    index: int
    graphs: Mapping[str, Graph]  # "edge", "host" (and "refine": see `refine`)
    tables: Mapping[str, Path]  # latent name -> integer CDF tables file
    lmbda: float
    metrics: dict[str, Any]
    parity: dict[str, Any] | None
    scale_paths: Mapping[str, Path] = field(default_factory=dict)  # latent name -> integer scale net file

    @property
    def edge(self) -> Graph:
        return self.graphs["edge"]

    @property
    def host(self) -> Graph:
        return self.graphs["host"]

    @property
    def refine(self) -> Graph | None:
        """The graph that refines the host graph's output with the side image, where the host side is
        split so (DSIN): the host graph then decodes y alone, and a frame without a side image shows that."""
        return self.graphs.get("refine")

    def codes_like(self, other: QualityPoint) -> bool:
        """Whether `other`'s frames are coded exactly as this point's: the same camera graphs, tables
        and scale nets (files a bundle stores once), as for a side-information codec trained on the
        intra codec's frozen encoder."""
        return (self.edge.files, self.tables, self.scale_paths) == (other.edge.files, other.tables, other.scale_paths)


@dataclass(frozen=True)
class Latent:
    """A transmitted latent: one wire segment, ``channels`` x (H / stride) x (W / stride) symbols.

    ``conditioned_on`` None: coded with one table row per channel. Otherwise the name of an earlier
    latent whose symbols select this one's rows through the quality's integer scale net.
    """

    name: str
    channels: int
    stride: int
    conditioned_on: str | None = None


@dataclass(frozen=True)
class Codec:
    """The codec one camera role uses: intra (reference camera) or side_info (dependent cameras)."""

    role: str
    model: str
    model_config: dict[str, Any]
    stride: int  # inputs are padded to a multiple of this
    latent_channels: int
    uses_side_info: bool
    latents: tuple[Latent, ...]  # in wire-segment order
    qualities: tuple[QualityPoint, ...]

    def quality(self, index: int) -> QualityPoint:
        if not 0 <= index < len(self.qualities):
            raise BundleError(
                f"quality {index} is not in the bundle ({self.role} codec has qualities 0..{len(self.qualities) - 1})"
            )
        return self.qualities[index]

    def latent_shapes(self, padded_height: int, padded_width: int) -> dict[str, tuple[int, int, int]]:
        """(C, h, w) of every latent of a padded image, in wire-segment order."""
        return {
            lat.name: (lat.channels, padded_height // lat.stride, padded_width // lat.stride) for lat in self.latents
        }


@dataclass(frozen=True)
class Bundle:
    path: Path
    id: str  # sha256 hex of manifest.json
    manifest: dict[str, Any]
    codecs: dict[str, Codec]

    @property
    def id_bytes(self) -> bytes:
        """The 8-byte id prefix that wire frames carry."""
        return bundle_id_from_sha256(self.id)

    def codec(self, role: str) -> Codec:
        try:
            return self.codecs[role]
        except KeyError:
            raise BundleError(
                f"bundle {self.path} has no {role!r} codec (it has {sorted(self.codecs)}); "
                f"export one with stereodsc export"
            ) from None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> str:
    """Hash every file in `folder`, write manifest.json (with its self-digest), return the bundle id.

    The JSON is canonical (sorted keys, no timestamps), so the same export gives the same id.
    """
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {**manifest, "schema": SCHEMA, "files": {f: sha256_file(folder / f) for f in files}}
    manifest[SELF_DIGEST] = _content_digest(manifest)
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (folder / MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _bundle_file(folder: Path, name: Any, listed: Mapping[str, Any], verify: bool) -> Path:
    """Resolve a file the manifest references; it must be a plain relative path the manifest hashes."""
    if not isinstance(name, str) or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise BundleError(f"{folder / MANIFEST}: file reference {name!r} is not a path inside the bundle")
    if verify and name not in listed:
        raise BundleError(f"{folder / MANIFEST}: {name} is referenced but not hashed; re-export the bundle")
    return folder / name


def _codec(folder: Path, role: str, raw: dict[str, Any], listed: Mapping[str, Any], verify: bool) -> Codec:
    def file(name: Any) -> Path:
        return _bundle_file(folder, name, listed, verify)

    try:
        qualities = tuple(
            QualityPoint(
                i,
                {part: Graph({k: file(v) for k, v in files.items()}) for part, files in q["graphs"].items()},
                {name: file(path) for name, path in q["tables"].items()},
                float(q["lmbda"]),
                dict(q.get("metrics") or {}),
                q.get("parity"),
                {name: file(entry["file"]) for name, entry in (q.get("scale_paths") or {}).items()},
            )
            for i, q in enumerate(raw["qualities"])
        )
        latents = tuple(
            Latent(
                str(x["name"]),
                int(x["channels"]),
                int(x["stride"]),
                None if x.get("conditioned_on") is None else str(x["conditioned_on"]),
            )
            for x in raw["latents"]
        )
        codec = Codec(
            role,
            raw["model"],
            raw["model_config"],
            int(raw["stride"]),
            int(raw["latent_channels"]),
            bool(raw["uses_side_info"]),
            latents,
            qualities,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{folder / MANIFEST}: malformed {role!r} codec entry ({e!r}); re-export the bundle") from e
    conditioned = {lat.name for lat in latents if lat.conditioned_on is not None}
    for q in qualities:
        missing = ({"edge", "host"} - set(q.graphs)) | ({lat.name for lat in latents} - set(q.tables))
        missing |= {f"scale_paths[{name}]" for name in conditioned - set(q.scale_paths)}
        if missing:
            raise BundleError(f"{folder / MANIFEST}: {role} quality {q.index} lacks {sorted(missing)}")
        runs = GRAPH_PARTS if codec.uses_side_info else GRAPH_PARTS[:2]  # only a side image is refined
        if unknown := set(q.graphs) - set(runs):
            raise BundleError(
                f"{folder / MANIFEST}: {role} quality {q.index} has graphs {sorted(unknown)} this stereodsc does "
                f"not run ({role} codecs have {', '.join(runs)}): use the stereodsc release that exported the bundle"
            )
        if set(q.scale_paths) - conditioned:
            raise BundleError(
                f"{folder / MANIFEST}: {role} quality {q.index} has scale paths for "
                f"{sorted(set(q.scale_paths) - conditioned)}, which no latent is conditioned with"
            )
    names = [lat.name for lat in latents]
    if not qualities or codec.stride < 1 or any(lat.stride < 1 or codec.stride % lat.stride for lat in latents):
        raise BundleError(f"{folder / MANIFEST}: {role} codec has no qualities or a bad stride")
    if "y" not in names or len(set(names)) != len(names):
        raise BundleError(f"{folder / MANIFEST}: {role} codec latents {names}: need distinct names, y among them")
    for i, lat in enumerate(latents):
        given = next((g for g in latents[:i] if g.name == lat.conditioned_on), None)
        if lat.conditioned_on is not None and (given is None or given.stride != 4 * lat.stride):
            raise BundleError(
                f"{folder / MANIFEST}: {role} latent {lat.name} is conditioned on {lat.conditioned_on!r}, which "
                "must be an earlier latent of 4x its stride (the integer scale net upsamples by 4)"
            )
    return codec


def load_bundle(folder: str | Path, verify: bool = True, expected_id: str | None = None) -> Bundle:
    """Load a bundle. Always refuses an edited manifest; with `verify` (the default) also any missing,
    modified or corrupted file. `expected_id` (a hex prefix of the bundle id, e.g. pinned in a
    camera's config) refuses any other bundle."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a bundle: no {MANIFEST}; create one with stereodsc export")
    data = path.read_bytes()
    bundle_id = hashlib.sha256(data).hexdigest()
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is damaged, re-export or re-copy it") from e
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: schema {found!r}, this stereodsc reads {SCHEMA!r}")
    if manifest.get(SELF_DIGEST) != _content_digest(manifest):
        raise BundleError(
            f"{path} was modified after export (its content no longer matches its {SELF_DIGEST}); "
            "re-copy the bundle from the export, or re-export it"
        )
    if expected_id is not None and not bundle_id.startswith(expected_id.lower()):
        raise BundleError(
            f"bundle {folder} has id {bundle_id[:16]}..., expected {expected_id[:16]}...: "
            "deploy the bundle the configuration names"
        )
    listed = manifest.get("files", {})
    if verify:
        for name, digest in listed.items():
            file = _bundle_file(folder, name, listed, verify)
            if not file.is_file():
                raise BundleError(f"bundle {folder}: {name} is missing; re-copy the whole bundle folder")
            if sha256_file(file) != digest:
                raise BundleError(
                    f"bundle {folder}: {name} does not match its sha256 in the manifest "
                    f"(modified or corrupted); re-copy the bundle from the export"
                )
    raw_codecs = manifest.get("codecs")
    if not isinstance(raw_codecs, dict) or not raw_codecs or set(raw_codecs) - set(ROLES):
        found = sorted(raw_codecs) if isinstance(raw_codecs, dict) else raw_codecs
        raise BundleError(f"{path}: codec roles {found}; expected some of {list(ROLES)}")
    codecs = {role: _codec(folder, role, raw, listed, verify) for role, raw in raw_codecs.items()}
    return Bundle(folder, bundle_id, manifest, codecs)
