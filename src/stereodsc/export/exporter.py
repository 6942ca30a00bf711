"""``stereodsc export``: trained checkpoints -> a verified bundle (ONNX graphs + integer CDF tables).

Checkpoints are grouped by role: models without side information form the "intra" codec (the
reference camera's), models with it the "side_info" codec (the dependent cameras'). Within a role
all checkpoints must share one model config; they are ordered by lambda, so quality 0 is the
lowest rate. The bundle is assembled in a temporary folder next to `out` and renamed into place
only after every graph passed the parity check, so a failed export leaves nothing behind.

Scale-hyperprior models (balle2018; ndic / ndic_cam with backbone="balle2018") send two latents,
z then y. Per quality the bundle holds z's tables (the entropy bottleneck's, one row per channel),
y's tables (the Gaussian conditional's, one row per scale level) and ``scale_path.npz``, the
`IntegerScaleNet` quantised from h_s (activation ranges calibrated on the z's of the export's
sample images) that gives every y element its row from the integer z, on the edge and the host
alike. The float h_s is not exported: nothing at run time picks a CDF from floats.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stereodsc import __version__
from stereodsc.bundle import ANY_SIZE, LICENCE_FILE, ROLES, load_bundle, size_key, write_manifest
from stereodsc.codec.geometry import padded_size
from stereodsc.entropy import CdfTables, IntegerScaleNet, build_tables
from stereodsc.errors import CheckpointError, ConfigError, StereoDSCError
from stereodsc.export.graphs import (
    EDGE_INPUTS,
    HOST_OUTPUTS,
    REFINE_INPUTS,
    SIDE_INPUT,
    EdgeGraph,
    HostGraph,
    RefineGraph,
    export_graph,
    fixed_size_reason,
    graph_parts,
    host_input_names,
    latent_names,
    round_weights_to_half,
    store_weights_half,
    to_float,
)
from stereodsc.export.parity import (
    ParityResult,
    SamplePair,
    check_quality,
    combine_scale_path,
    default_samples,
    fit,
    summarise,
)
from stereodsc.export.scale_path_export import scale_path_from_torch
from stereodsc.models import CompressionModel, EntropyBottleneck
from stereodsc.models.dsin import DSIN
from stereodsc.models.entropy_models import GaussianConditional
from stereodsc.models.priors import ScaleHyperprior
from stereodsc.train.checkpoint import model_from_checkpoint

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((128, 256), (375, 1242))
"""Image sizes every bundle is checked at: the paper protocol and KITTI's native frame (padded
to 384x1248 by a stride-16 codec). Fixed-size graphs are exported for exactly these sizes."""
MAX_PSNR_DELTA_DB = 0.1  # a larger host difference means a broken graph, not float round-off
MAX_QUALITIES = 256  # the wire frame's quality field is one byte
SCALE_PATH_WEIGHT_BITS = 16
SCALE_PATH_HEADROOM_BITS = 4
SCALE_PATH_NOTE_RATE = 1e-3  # integer scale path costing more rate than this on the samples: a note
MAX_SCALE_PATH_RATE = 0.02  # ... more than this: the quantised h_s is broken, the export fails
TABLE_FILES = {"y": "tables.npz", "z": "tables_z.npz"}  # per quality
SCALE_PATH_FILE = "scale_path.npz"


class ParityError(StereoDSCError):
    """The exported graphs do not reproduce the torch model on the sample images."""


@dataclass
class ExportReport:
    """What an export produced and how closely the graphs match torch."""

    bundle: Path
    bundle_id: str
    codecs: dict[str, str]  # role -> model name
    qualities: dict[str, int]  # role -> number of qualities
    parity: list[ParityResult]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"bundle {self.bundle} (id {self.bundle_id[:16]}), exported in {self.seconds:.1f} s"]
        lines += [f"  {role}: {model}, {self.qualities[role]} qualities" for role, model in self.codecs.items()]
        for r in self.parity:
            per_latent = ""
            if len(r.latents) > 1:
                per_latent = " [" + ", ".join(f"{lat.name} {lat.mismatches}/{lat.symbols}" for lat in r.latents) + "]"
            lines.append(
                f"  {r.role} q{r.quality} {r.size[0]}x{r.size[1]} sample {r.sample}: symbols "
                f"{r.symbol_mismatches}/{r.symbols} differ{per_latent} ({r.boundary_flips} rounding-boundary "
                f"flips, max |d| {r.max_symbol_delta}); host max |d| "
                f"{r.host_max_abs_diff} levels, PSNR {r.psnr_onnx:.2f} dB "
                f"(onnx - torch {r.psnr_delta:+.4f} dB)"
            )
            if r.scale_path is not None:
                lines.append(
                    f"    integer scale path: {100 * r.scale_path.agreement:.3f}% of {r.scale_path.elements} y rows "
                    f"equal the float h_s's, rate {100 * r.scale_path.rate_increase:+.4f}%"
                )
        if not self.parity:
            lines.append("  parity not checked (no sample images)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class _Point:
    path: Path
    model: CompressionModel
    ckpt: dict[str, Any]
    lmbda: float
    entropy_models: dict[str, EntropyBottleneck | GaussianConditional]  # latent -> model whose pmfs become tables

    @property
    def hyperprior(self) -> ScaleHyperprior | None:
        return self.model.prior if isinstance(self.model.prior, ScaleHyperprior) else None


WEIGHT_TYPES = ("float16", "float32")
"""How graph weights are stored (see `export_bundle`)."""


def _load(path: Path) -> _Point:
    model, ckpt = model_from_checkpoint(path)
    assert isinstance(model, CompressionModel)
    try:
        lmbda = float(ckpt["train_config"]["train"]["lmbda"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: no train_config.train.lmbda ({e!r}); export needs checkpoints written by stereodsc train"
        ) from e
    models = model.entropy_models()
    kinds = {name: type(m).__name__ for name, m in models.items()}
    expected = (
        {"z": "EntropyBottleneck", "y": "GaussianConditional"}
        if isinstance(model.prior, ScaleHyperprior)
        else {"y": "EntropyBottleneck"}
    )
    if set(models) != set(latent_names(model)) or kinds != expected:
        raise ConfigError(
            f"{path}: {model.name} codes its latents with {kinds}; export knows the factorized prior "
            "(y: EntropyBottleneck) and the scale hyperprior (z: EntropyBottleneck, y: GaussianConditional)"
        )
    entropy = {name: m for name, m in models.items() if isinstance(m, EntropyBottleneck | GaussianConditional)}
    return _Point(path, model, ckpt, lmbda, entropy)


def shared_config(model: CompressionModel) -> dict[str, Any]:
    """The model config every quality of its codec shares: all but the host-only and loss-only options."""
    own = model.host_only_options | model.loss_only_options
    return {k: v for k, v in model.config.items() if k not in own}


def host_options(model: CompressionModel) -> dict[str, Any]:
    """The options a quality's host graph was built with, beyond its codec's shared config."""
    return {k: v for k, v in model.config.items() if k in model.host_only_options}


def loss_options(model: CompressionModel) -> dict[str, Any]:
    """How a quality's loss was balanced (DSIN's si_weight): no graph depends on it, so qualities may differ."""
    return {k: v for k, v in model.config.items() if k in model.loss_only_options}


def _group(points: list[_Point]) -> dict[str, list[_Point]]:
    """Role -> its checkpoints ordered by lambda; one model config per role (but host- and loss-only options)."""
    groups: dict[str, list[_Point]] = {}
    for p in points:
        groups.setdefault("side_info" if p.model.uses_side_info else "intra", []).append(p)
    for role, group in groups.items():
        first = shared_config(group[0].model)
        for p in group[1:]:
            config = shared_config(p.model)
            if config != first:
                diff = sorted(k for k in set(config) | set(first) if config.get(k) != first.get(k))
                raise ConfigError(
                    f"{role} checkpoints must share one model config: {p.path} and {group[0].path} differ in "
                    f"{diff}; export them into separate bundles"
                )
        group.sort(key=lambda p: p.lmbda)
        lambdas = [p.lmbda for p in group]
        if len(set(lambdas)) != len(lambdas):
            raise ConfigError(f"{role} checkpoints have repeated lambdas {lambdas}: one checkpoint per rate point")
        if len(group) > MAX_QUALITIES:
            raise ConfigError(f"{role}: {len(group)} checkpoints, a bundle holds at most {MAX_QUALITIES} qualities")
    return {role: groups[role] for role in ROLES if role in groups}


def _padded_sizes(model: CompressionModel, sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    padded: list[tuple[int, int]] = []
    for h, w in sizes:
        if h < 1 or w < 1:
            raise ConfigError(f"export size {h}x{w} must be positive")
        p = padded_size((h, w), model.stride)
        if p not in padded:
            padded.append(p)
    image_size = getattr(model, "image_size", None)
    if fixed_size_reason(model, "edge") and any(p != tuple(image_size or ()) for p in padded):
        raise ConfigError(
            f"{model.name} with patch_mode='grid' runs only at {image_size}: export it with sizes="
            f"[{tuple(image_size or ())}] (CLI: --size), or train/rebuild with patch_mode='fixed'"
        )
    return padded


def _io_spec(model: CompressionModel, latents: list[dict[str, Any]]) -> dict[str, Any]:
    """Names, dtypes and shapes of both graphs' inputs and outputs, for the manifest."""
    image = {"dtype": "uint8", "shape": [1, "H", "W", 3]}
    specs = {
        lat["name"]: {"dtype": "int32", "shape": [1, lat["channels"], f"H/{lat['stride']}", f"W/{lat['stride']}"]}
        for lat in latents
    }
    host_inputs = {name: image if name == SIDE_INPUT else specs[name] for name in host_input_names(model)}
    spec = {
        "edge": {"inputs": {EDGE_INPUTS[0]: image}, "outputs": specs},
        "host": {"inputs": host_inputs, "outputs": {HOST_OUTPUTS[0]: image}},
        "refine": {"inputs": {name: image for name in REFINE_INPUTS}, "outputs": {HOST_OUTPUTS[0]: image}},
    }
    return {part: spec[part] for part in graph_parts(model)}


def _latent_entries(model: CompressionModel, size: tuple[int, int]) -> list[dict[str, Any]]:
    """The manifest's latents (segment order): name, channels, stride; y of a hyperprior is conditioned on z."""
    with torch.no_grad():
        latents = model.analysis(to_float(_example(model, size)[0]))
    entries = []
    for name in latent_names(model):
        t = latents[name]
        entry: dict[str, Any] = {"name": name, "channels": int(t.shape[1]), "stride": size[0] // int(t.shape[2])}
        if name == "y" and isinstance(model.prior, ScaleHyperprior):
            entry["conditioned_on"] = "z"
        entries.append(entry)
    return entries


def _example(model: CompressionModel, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic example image and the y symbols it gives (the export traces at these)."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, *size, 3), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        y = model.analysis(to_float(image))["y"].to(torch.int32)
    return image, y


def _graph(
    model: CompressionModel, part: str, size: tuple[int, int]
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], tuple[str, ...], tuple[str, ...]]:
    """(module, example args, input names, output names) of the edge, host or refine graph."""
    image, y = _example(model, size)
    if part == "edge":
        names = latent_names(model)
        return EdgeGraph(model, names), (image,), EDGE_INPUTS, names
    if part == "refine":
        assert isinstance(model, DSIN)
        return RefineGraph(model), (image, image.flip(2)), REFINE_INPUTS, HOST_OUTPUTS
    names = host_input_names(model)
    return HostGraph(model), (y, image)[: len(names)], names, HOST_OUTPUTS


def _export_graphs(
    model: CompressionModel,
    folder: Path,
    rel: str,
    padded: list[tuple[int, int]],
    opset: int,
    half: bool,
    written: dict[str, str],
) -> dict[str, dict[str, str]]:
    """Write the graphs of one quality (`graph_parts`); return part -> size key -> relative path (a
    graph the bundle already holds byte for byte, e.g. the camera and host graphs of a codec trained on
    the intra codec's frozen encoder and decoder, is kept once)."""
    parts: dict[str, dict[str, str]] = {}
    for part in graph_parts(model):
        dynamic = fixed_size_reason(model, part) is None
        files: dict[str, str] = {}
        for size in padded[:1] if dynamic else padded:
            key = ANY_SIZE if dynamic else size_key(*size)
            name = f"{part}.onnx" if dynamic else f"{part}_{key}.onnx"
            if dynamic:  # torch.export specialises dims of size 1: trace where every latent dim is >= 2
                size = (max(size[0], 2 * model.stride), max(size[1], 2 * model.stride))
            module, args, inputs, outputs = _graph(model, part, size)
            y_stride = size[0] // int(args[0].shape[2]) if part == "host" else None
            stride = model.stride if dynamic else None
            export_graph(module, args, folder / rel / name, inputs, outputs, opset, stride, y_stride)
            if half:
                store_weights_half(folder / rel / name)
            files[key] = _keep_once(folder, f"{rel}/{name}", written)
        parts[part] = files
    return parts


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {
        "stereodsc": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "numpy": np.__version__,
    }


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def export_bundle(
    checkpoints: Sequence[Path],
    out: Path,
    *,
    sample_images: Sequence[SamplePair] | None = None,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    opset: int = 18,
    allow_boundary_flips: bool = True,
    weights: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    licence: Path | None = None,
) -> ExportReport:
    """Export checkpoints into a bundle folder `out` and check every graph against torch.

    `sample_images`: (x, side) uint8 HxWx3 pairs for the parity check (None: two bundled KITTI
    pairs; empty: no check). `sizes`: image sizes (padded to each codec's stride) the parity check
    runs at, so dynamic graphs are verified at all of them, and for which fixed-size graphs are
    exported. Symbols must match torch's; `allow_boundary_flips` accepts (and reports) the ones
    that differ by 1 only because torch's latent sits within 1e-3 of a rounding boundary (float
    summation order, see `stereodsc.export.parity`); False demands identical symbols.
    `weights`: "float16" rounds the convolution kernels to float16 before export and stores them so
    (half the bundle; the graphs still compute in float32, parity is checked against the rounded
    model), "float32" keeps the trained values. `licence`: a text file copied into the bundle as
    LICENSE.txt (hashed like every file): the terms of the weights travel with them.
    Raises ParityError (nothing written) on any other difference or if the host output drifts.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if not checkpoints:
        raise ConfigError("export needs at least one checkpoint")
    if weights not in WEIGHT_TYPES:
        raise ConfigError(f"weights = {weights!r}: choose one of {list(WEIGHT_TYPES)}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose another --out, or overwrite it")
    samples = default_samples() if sample_images is None else list(sample_images)
    groups = _group([_load(Path(p)) for p in checkpoints])
    notes = []
    if samples and len({tuple(s) for s in sizes}) < 2:
        notes.append("dynamic graphs were run at one size only; pass two sizes to verify dynamic shapes")
    out.parent.mkdir(parents=True, exist_ok=True)
    parity: list[ParityResult] = []
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        folder = Path(tmp)
        codecs: dict[str, Any] = {}
        written: dict[str, str] = {}  # sha256 -> the bundle file holding those bytes
        for role, group in groups.items():
            model = group[0].model
            padded = _padded_sizes(model, sizes)
            for part in graph_parts(model):
                reason = fixed_size_reason(model, part)
                if reason:
                    notes.append(f"{role} {part} graphs: fixed sizes {[size_key(*p) for p in padded]} ({reason})")
            qualities = []
            for q, point in enumerate(group):
                t = time.perf_counter()
                rel = f"{role}/q{q}"
                (folder / rel).mkdir(parents=True)
                if weights == "float16":
                    round_weights_to_half(point.model)
                graphs = _export_graphs(point.model, folder, rel, padded, opset, weights == "float16", written)
                tables: dict[str, CdfTables] = {}
                table_files: dict[str, str] = {}
                for name, entropy_model in point.entropy_models.items():
                    tables[name] = _tables(entropy_model)
                    data = tables[name].to_npz_bytes()
                    table_files[name] = _write_once(folder, f"{rel}/{TABLE_FILES[name]}", data, written)
                scale_net, scale_paths = None, {}
                if point.hyperprior is not None:
                    scale_net, scale_paths["y"] = _scale_path(point, samples, sizes, folder, rel, written)
                _say(
                    progress,
                    f"{role} q{q} ({point.model.name}, lambda {point.lmbda:g}): graphs in "
                    f"{time.perf_counter() - t:.1f} s",
                )
                checked = None
                if samples:
                    paths = {
                        part: {p: folder / (files.get(ANY_SIZE) or files[size_key(*p)]) for p in padded}
                        for part, files in graphs.items()
                    }
                    results = check_quality(
                        point.model,
                        role,
                        q,
                        paths["edge"],
                        paths["host"],
                        paths.get("refine"),
                        samples,
                        sizes,
                        scale_net=scale_net,
                        y_tables=tables["y"],
                    )
                    _check(results, allow_boundary_flips)
                    notes += _scale_path_notes(results)
                    parity += results
                    checked = summarise(results)
                    _say(progress, f"  parity: {checked}")
                quality: dict[str, Any] = {
                    "lmbda": point.lmbda,
                    "metrics": point.ckpt.get("metrics", {}).get("val", {}),
                    "checkpoint": {
                        "file": point.path.name,
                        "sha256": hashlib.sha256(point.path.read_bytes()).hexdigest(),
                        "step": int(point.ckpt["step"]),
                    },
                    "graphs": graphs,
                    "tables": {name: table_files[name] for name in latent_names(point.model)},
                    "parity": checked,
                }
                if scale_paths:
                    quality["scale_paths"] = scale_paths
                if options := host_options(point.model):
                    quality["host_options"] = options
                if options := loss_options(point.model):
                    quality["loss_options"] = options
                qualities.append(quality)
            latents = _latent_entries(model, padded[0])
            codecs[role] = {
                "model": model.name,
                "model_config": shared_config(model),
                "uses_side_info": model.uses_side_info,
                "stride": model.stride,
                "latent_channels": next(lat["channels"] for lat in latents if lat["name"] == "y"),
                "latents": latents,
                "io": _io_spec(model, latents),
                "shapes": {
                    part: "dynamic" if fixed_size_reason(model, part) is None else "fixed"
                    for part in graph_parts(model)
                },
                "sizes": [size_key(*p) for p in padded],
                "weights": weights,
                "qualities": qualities,
            }
        if licence is not None:
            shutil.copyfile(licence, folder / LICENCE_FILE)
        manifest = {"codecs": codecs, "opset": opset, "producer": _versions()}
        bundle_id = write_manifest(folder, manifest)
        load_bundle(folder)  # what a camera or host will do first: fail here, not there
        if overwrite and out.exists():
            shutil.rmtree(out)
        elif out.exists():
            out.rmdir()  # empty (checked above)
        folder.rename(out)
        folder.mkdir()  # TemporaryDirectory removes its (now empty) folder on exit
    return ExportReport(
        out,
        bundle_id,
        {role: g[0].model.name for role, g in groups.items()},
        {role: len(g) for role, g in groups.items()},
        parity,
        time.perf_counter() - t0,
        notes,
    )


def _write_once(folder: Path, rel: str, data: bytes, written: dict[str, str]) -> str:
    """Write ``data`` at ``rel`` unless the bundle already holds the same bytes, and return the path
    that holds them: y's Gaussian tables are the same at every quality and in every codec of a
    bundle (0.8 MB each at N = 128), and a codec that shares another's encoder (trained with it
    frozen) shares its camera graph and scale path too, so each is stored once."""
    digest = hashlib.sha256(data).hexdigest()
    if digest not in written:
        (folder / rel).write_bytes(data)
        written[digest] = rel
    return written[digest]


def _keep_once(folder: Path, rel: str, written: dict[str, str]) -> str:
    """`_write_once` for a file already written at ``rel`` (an exported graph): it stays unless the
    bundle holds the same bytes elsewhere, and the path that holds them is returned."""
    path = folder / rel
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest in written:
        path.unlink()
    else:
        written[digest] = rel
    return written[digest]


def _tables(entropy_model: EntropyBottleneck | GaussianConditional) -> CdfTables:
    """Integer CDF tables of one latent: a row per channel (factorized) or per scale level (Gaussian).

    A Gaussian row k codes only ``-c_k..c_k`` with ``c_k = ceil(scale_k * q)``, q the standard
    normal's ``1 - tail_mass / 2`` quantile, the rest escapes (CompressAI's per-row lengths). One
    common range (``symbol_pmfs``'s ±1565) would give every one of its 3131 symbols a frequency of
    at least 1 in 2**16 in every row: ~5% of the mass, +0.07 bit for every y element, which is 300x
    the information of an element at the lowest scale. The file keeps one rectangular array either way.
    """
    pmf, offset = entropy_model.symbol_pmfs()
    if isinstance(entropy_model, EntropyBottleneck):
        return build_tables(pmf, offset)
    table = entropy_model.scale_table.detach().double().cpu()
    q = float(-torch.special.ndtri(torch.tensor(entropy_model.tail_mass / 2, dtype=torch.float64)))
    center = -int(offset[0])
    half = np.array([min(math.ceil(float(s) * q), center) for s in table], dtype=np.int64)
    rows = np.zeros_like(pmf)
    for k, c in enumerate(half.tolist()):
        rows[k, : 2 * c + 1] = pmf[k, center - c : center + c + 1]
    return build_tables(rows, (-half).astype(np.int32), pmf_length=2 * half + 1)


def _scale_path(
    point: _Point,
    samples: Sequence[SamplePair],
    sizes: Sequence[tuple[int, int]],
    folder: Path,
    rel: str,
    written: dict[str, str],
) -> tuple[IntegerScaleNet, dict[str, Any]]:
    """Quantise the hyperprior's h_s into the integer scale net, write it; return it and its manifest entry.

    Its activation ranges are calibrated on the z's torch gives for the export's sample images
    (every sample at every size); without samples a worst-case bound is used instead.
    """
    assert point.hyperprior is not None
    model = point.model
    zs = []
    with torch.no_grad():
        for size in sizes:
            for x_img, _ in samples:
                x = torch.from_numpy(fit(x_img, size, model.stride))[None]
                zs.append(model.analysis(to_float(x))["z"][0].to(torch.int32).numpy())
    net = scale_path_from_torch(
        point.hyperprior,
        weight_bits=SCALE_PATH_WEIGHT_BITS,
        calibration_z=zs or None,
        headroom_bits=SCALE_PATH_HEADROOM_BITS,
    )
    entry = {
        "file": _write_once(folder, f"{rel}/{SCALE_PATH_FILE}", net.to_npz_bytes(), written),
        "conditioned_on": "z",
        "levels": net.levels,
        "weight_bits": SCALE_PATH_WEIGHT_BITS,
        "headroom_bits": SCALE_PATH_HEADROOM_BITS,
        "calibration": {"latents": len(zs), "source": "export sample images" if zs else "worst-case bound"},
    }
    return net, entry


def _scale_path_notes(results: Sequence[ParityResult]) -> list[str]:
    """Refuse a broken integer scale path; note a measurable rate cost."""
    scale = combine_scale_path(results)
    if scale is None:
        return []
    where = f"{results[0].role} q{results[0].quality}"
    if scale.rate_increase > MAX_SCALE_PATH_RATE:
        raise ParityError(
            f"{where}: the integer scale path costs {100 * scale.rate_increase:+.2f}% rate against the float "
            f"h_s on the samples ({100 * scale.agreement:.2f}% of y rows equal): its quantisation is broken "
            "(non-finite or extreme h_s weights?); check the checkpoint"
        )
    if scale.rate_increase > SCALE_PATH_NOTE_RATE:
        return [
            f"{where}: the integer scale path costs {100 * scale.rate_increase:+.3f}% rate on the samples "
            f"({100 * scale.agreement:.3f}% of y rows equal the float h_s's)"
        ]
    return []


def _check(results: Sequence[ParityResult], allow_boundary_flips: bool) -> None:
    """Refuse a quality whose graphs do not reproduce torch; the message says what differs."""
    mismatches = sum(r.symbol_mismatches for r in results)
    flips = sum(r.boundary_flips for r in results)
    if mismatches > (flips if allow_boundary_flips else 0):
        where = ", ".join(
            f"{r.size[0]}x{r.size[1]} sample {r.sample}: {r.symbol_mismatches} ({r.boundary_flips} flips)"
            for r in results
            if r.symbol_mismatches
        )
        total = sum(r.symbols for r in results)
        advice = (
            "all are rounding-boundary flips (float summation order; the edge's symbols are what is "
            "coded, so decoding stays in sync): allow_boundary_flips=True accepts them"
            if mismatches == flips
            else f"{mismatches - flips} are not rounding-boundary flips: the edge graph computes something else"
        )
        raise ParityError(
            f"{results[0].role} q{results[0].quality}: {mismatches} of {total} edge symbols differ between "
            f"onnxruntime and torch ({where}); {advice}"
        )
    drift = max(results, key=lambda r: abs(r.psnr_delta))
    if abs(drift.psnr_delta) > MAX_PSNR_DELTA_DB:
        raise ParityError(
            f"{drift.role} q{drift.quality} {drift.size[0]}x{drift.size[1]}: the host graph's PSNR differs "
            f"from torch by {drift.psnr_delta:+.3f} dB (max |d| {drift.host_max_abs_diff} levels): the "
            "exported graph does not compute what the model does at this size"
        )
