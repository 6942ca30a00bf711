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
    side_info/q0/host_128x256.onnx   a graph that only runs at one padded size (DSIN's SI-Finder)

H and W are the image size padded to the codec's ``stride``. A graph is either dynamic (one file,
manifest key ``"*"``, any multiple of the stride) or fixed (one file per padded size, key
``"HxW"``). Each quality lists its graphs by part ("edge", "host") and its tables by latent name;
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

Besides the layout this module holds what the edge encoder and the host decoder share to use a
bundle identically: padding rule, latent shapes, table loading, graph sessions, image checks.
No torch here: camera boards and hosts load bundles.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from stereodsc.errors import BundleError, DataError
from stereodsc.wire import Role

if TYPE_CHECKING:
    from stereodsc.entropy import CdfTables, IntegerScaleNet
    from stereodsc.runtime import Session

MANIFEST = "manifest.json"
SCHEMA = "stereodsc.bundle/1"
ROLES = ("intra", "side_info")
ANY_SIZE = "*"
SELF_DIGEST = "manifest_sha256"
FRAME_ROLES = {"intra": Role.REFERENCE, "side_info": Role.DEPENDENT}
"""Codec role -> the wire role its frames carry (the host picks the codec back from it)."""
MAX_PIXELS = 4096 * 4096
"""Largest image (pixels, after padding) the codecs accept: 16.8 MP; bounds encoder/decoder memory."""


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
    graphs: Mapping[str, Graph]  # "edge", "host"
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

    def load_tables(self) -> dict[str, CdfTables]:
        """Parse and validate the CDF tables of every latent (the one place both ends read them)."""
        from stereodsc.entropy import CdfTables

        return {name: CdfTables.from_npz_bytes(path.read_bytes()) for name, path in self.tables.items()}

    def load_scale_paths(self) -> dict[str, IntegerScaleNet]:
        """Parse and validate the integer scale nets (hyperprior codecs; empty for factorized ones)."""
        from stereodsc.entropy import IntegerScaleNet

        return {name: IntegerScaleNet.from_npz_bytes(path.read_bytes()) for name, path in self.scale_paths.items()}


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
class Coding:
    """The integers one quality is entropy-coded with, identical on both ends: a CDF table set per
    latent and an integer scale net per conditioned latent, checked against each other at load."""

    latents: tuple[Latent, ...]  # in wire-segment order
    tables: Mapping[str, CdfTables]
    scale_nets: Mapping[str, IntegerScaleNet]

    def rows(self, latent: Latent, shape: tuple[int, int, int], coded: Mapping[str, np.ndarray]) -> np.ndarray:
        """Table row of every symbol of `latent` ([C, h, w] `shape`), given the latents coded before it.

        `coded` maps earlier latents to their int32 symbols [C, h, w]: on the edge those it encoded,
        on the host those it decoded, which are the same integers, hence the same rows.
        """
        if latent.conditioned_on is None:
            return latent_indexes(shape)
        rows = self.scale_nets[latent.name].indexes(coded[latent.conditioned_on])
        if rows.shape != shape:
            raise BundleError(
                f"the scale net of {latent.name} gave rows {rows.shape} for {latent.conditioned_on} "
                f"{coded[latent.conditioned_on].shape}, expected {shape}: the bundle is inconsistent; re-export it"
            )
        return rows


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

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the graphs see: the image padded (bottom/right) to a multiple of ``stride``."""
        return -(-height // self.stride) * self.stride, -(-width // self.stride) * self.stride

    def latent_shapes(self, padded_height: int, padded_width: int) -> dict[str, tuple[int, int, int]]:
        """(C, h, w) of every latent of a padded image, in wire-segment order."""
        return {
            lat.name: (lat.channels, padded_height // lat.stride, padded_width // lat.stride) for lat in self.latents
        }

    def load_coding(self, point: QualityPoint) -> Coding:
        """Load one quality's tables and scale nets and check they fit this codec's latents.

        Raises BundleError for a bundle whose files do not fit its manifest (and the table / scale
        net format errors, BitstreamErrors, for damaged files).
        """
        tables = point.load_tables()
        nets = point.load_scale_paths()
        by_name = {lat.name: lat for lat in self.latents}

        def bad(msg: str) -> BundleError:
            return BundleError(f"{self.role} quality {point.index}: {msg}; the bundle is inconsistent, re-export it")

        for lat in self.latents:
            rows = tables[lat.name].num_rows
            if lat.conditioned_on is None:
                if rows != lat.channels:
                    raise bad(f"{lat.name} has {lat.channels} channels but its tables have {rows} rows")
                continue
            net, given = nets[lat.name], by_name[lat.conditioned_on]
            if (net.latent_channels, net.channels) != (given.channels, lat.channels):
                raise bad(
                    f"the scale net maps {net.latent_channels} -> {net.channels} channels, the latents are "
                    f"{given.name} ({given.channels}) -> {lat.name} ({lat.channels})"
                )
            if net.levels != rows:
                raise bad(f"the scale net picks among {net.levels} rows, {lat.name}'s tables have {rows}")
        return Coding(self.latents, tables, nets)


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


@contextlib.contextmanager
def open_model(path: str | Path, size: tuple[int, int]) -> Iterator[Bundle]:
    """A bundle folder, or a training checkpoint exported on the fly to a temporary bundle.

    `size` is the (unpadded) image size to code; fixed-size graphs are exported for it. The
    on-the-fly export skips the parity check and is deterministic, so the same checkpoint and size
    give the same bundle id where a frame is encoded and where it is decoded (same torch / onnx
    versions): the convenience path for trying a checkpoint; deploy an exported bundle otherwise.
    """
    path = Path(path)
    if path.is_dir():
        yield load_bundle(path)
        return
    if not path.is_file():
        raise BundleError(f"{path}: neither a bundle folder nor a checkpoint file")
    from stereodsc.export import export_bundle  # torch: only for a checkpoint argument

    with tempfile.TemporaryDirectory(prefix="stereodsc-bundle-") as tmp:
        report = export_bundle([path], Path(tmp) / "bundle", sample_images=[], sizes=[size], progress=False)
        yield load_bundle(report.bundle)


def check_rgb(image: Any, what: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return `image` as a C-contiguous uint8 HxWx3 array, or raise DataError naming the fix."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"{what} must be a numpy array (uint8 HxWx3 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"{what} must be an HxWx3 RGB image, got shape {image.shape}; convert grey or RGBA frames to RGB"
        )
    if image.dtype != np.uint8:
        raise DataError(
            f"{what} must be uint8 (0..255), got {image.dtype}; scale and convert it "
            "(e.g. np.clip(x * 255, 0, 255).round().astype(np.uint8))"
        )
    h, w = image.shape[:2]
    if h < 1 or w < 1 or h * w > max_pixels:
        raise DataError(
            f"{what} is {h}x{w}, outside 1..{max_pixels} pixels; downscale or crop it (or raise max_pixels)"
        )
    return np.ascontiguousarray(image)


@functools.lru_cache(maxsize=16)
def latent_indexes(shape: tuple[int, int, int]) -> np.ndarray:
    """Table row of every symbol of a factorized latent (one row per channel), shared read-only.

    A hyperprior's y takes its rows from the integer scale net instead (`Coding.rows`).
    """
    from stereodsc.entropy import channel_indexes

    indexes = channel_indexes(shape)
    indexes.setflags(write=False)
    return indexes


class GraphSessions:
    """Inference sessions of a bundle's graphs, each opened once and reused for every frame.

    For native TensorRT (engines have fixed optimisation profiles) a session is kept per input
    shape; the onnxruntime backends take any shape a dynamic graph accepts.
    """

    def __init__(self, bundle: Bundle, backend: str = "cpu", threads: int = 0, cache_dir: Path | None = None) -> None:
        self.bundle = bundle
        self.backend = backend
        self.threads = threads
        self.cache_dir = cache_dir  # TensorRT engine cache (default: next to the graphs)
        self._sessions: dict[tuple[Path, tuple[tuple[str, tuple[int, ...]], ...]], Session] = {}

    def run(self, path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from stereodsc.runtime import open_session

        shapes = tuple(sorted((k, v.shape) for k, v in inputs.items())) if self.backend == "tensorrt" else ()
        key = (path, shapes)
        if key not in self._sessions:
            self._sessions[key] = open_session(
                path,
                self.backend,
                cache_dir=self.cache_dir,
                cache_key=f"{self.bundle.id}:{path.relative_to(self.bundle.path).as_posix()}",
                threads=self.threads,
                profiles={k: (s, s, s) for k, s in shapes} or None,
            )
        return self._sessions[key].run(inputs)
