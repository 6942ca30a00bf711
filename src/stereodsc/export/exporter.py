"""``stereodsc export``: trained checkpoints -> a verified bundle (ONNX graphs + integer CDF tables).

Checkpoints are grouped by role: models without side information form the "intra" codec (the
reference camera's), models with it the "side_info" codec (the dependent cameras'). Within a role
all checkpoints must share one model config; they are ordered by lambda, so quality 0 is the
lowest rate. The bundle is assembled in a temporary folder next to `out` and renamed into place
only after every graph passed the parity check, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
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
from stereodsc.bundle import ANY_SIZE, ROLES, load_bundle, size_key, write_manifest
from stereodsc.entropy import build_tables
from stereodsc.errors import CheckpointError, ConfigError, StereoDSCError
from stereodsc.export.graphs import (
    EDGE_INPUTS,
    HOST_OUTPUTS,
    SIDE_INPUT,
    EdgeGraph,
    HostGraph,
    export_graph,
    fixed_size_reason,
    host_input_names,
    padded_size,
    to_float,
)
from stereodsc.export.parity import ParityResult, SamplePair, check_quality, default_samples, summarise
from stereodsc.models import CompressionModel, EntropyBottleneck
from stereodsc.train.checkpoint import model_from_checkpoint

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((128, 256), (375, 1242))
"""Image sizes every bundle is checked at: the paper protocol and KITTI's native frame (padded
to 384x1248 by a stride-16 codec). Fixed-size graphs are exported for exactly these sizes."""
LATENTS = ("y",)  # transmitted latents of the factorized models, in wire-segment order
MAX_PSNR_DELTA_DB = 0.1  # a larger host difference means a broken graph, not float round-off
MAX_QUALITIES = 256  # the wire frame's quality field is one byte


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
            lines.append(
                f"  {r.role} q{r.quality} {r.size[0]}x{r.size[1]} sample {r.sample}: symbols "
                f"{r.symbol_mismatches}/{r.symbols} differ ({r.boundary_flips} rounding-boundary flips, "
                f"max |d| {r.max_symbol_delta}); host max |d| "
                f"{r.host_max_abs_diff} levels, PSNR {r.psnr_onnx:.2f} dB "
                f"(onnx - torch {r.psnr_delta:+.4f} dB)"
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
    bottleneck: EntropyBottleneck  # y's factorized entropy model: its pmfs become the tables


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
    if set(models) != set(LATENTS) or not all(isinstance(m, EntropyBottleneck) for m in models.values()):
        raise ConfigError(
            f"{path}: {model.name} codes {sorted(models)} with a scale hyperprior; hyperprior export needs "
            "the integer scale path (not implemented yet): use a factorized model "
            "(balle2017, ndic/ndic_cam with backbone='balle2017', dsin)"
        )
    bottleneck = models["y"]
    assert isinstance(bottleneck, EntropyBottleneck)
    return _Point(path, model, ckpt, lmbda, bottleneck)


def _group(points: list[_Point]) -> dict[str, list[_Point]]:
    """Role -> its checkpoints ordered by lambda; one model config per role."""
    groups: dict[str, list[_Point]] = {}
    for p in points:
        groups.setdefault("side_info" if p.model.uses_side_info else "intra", []).append(p)
    for role, group in groups.items():
        first = group[0]
        for p in group[1:]:
            if p.model.config != first.model.config:
                diff = sorted(
                    k
                    for k in set(p.model.config) | set(first.model.config)
                    if p.model.config.get(k) != first.model.config.get(k)
                )
                raise ConfigError(
                    f"{role} checkpoints must share one model config: {p.path} and {first.path} differ in "
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


def _io_spec(model: CompressionModel, channels: int, s: int) -> dict[str, Any]:
    """Names, dtypes and shapes of both graphs' inputs and outputs (latent stride `s`), for the manifest."""
    image = {"dtype": "uint8", "shape": [1, "H", "W", 3]}
    latent = {"dtype": "int32", "shape": [1, channels, f"H/{s}", f"W/{s}"]}
    host_inputs = {name: image if name == SIDE_INPUT else latent for name in host_input_names(model)}
    return {
        "edge": {"inputs": {EDGE_INPUTS[0]: image}, "outputs": {name: latent for name in LATENTS}},
        "host": {"inputs": host_inputs, "outputs": {HOST_OUTPUTS[0]: image}},
    }


def _example(model: CompressionModel, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic example image and the symbols it gives (the export traces at these)."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, *size, 3), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        y = model.analysis(to_float(image))["y"].to(torch.int32)
    return image, y


def _graph(
    model: CompressionModel, part: str, size: tuple[int, int]
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], tuple[str, ...], tuple[str, ...]]:
    """(module, example args, input names, output names) of the edge or host graph."""
    image, y = _example(model, size)
    if part == "edge":
        return EdgeGraph(model, LATENTS), (image,), EDGE_INPUTS, LATENTS
    names = host_input_names(model)
    return HostGraph(model), (y, image)[: len(names)], names, HOST_OUTPUTS


def _export_graphs(
    model: CompressionModel, folder: Path, rel: str, padded: list[tuple[int, int]], opset: int
) -> dict[str, dict[str, str]]:
    """Write edge and host graphs of one quality; return part -> size key -> relative path."""
    parts: dict[str, dict[str, str]] = {}
    for part in ("edge", "host"):
        dynamic = fixed_size_reason(model, part) is None
        files: dict[str, str] = {}
        for size in padded[:1] if dynamic else padded:
            key = ANY_SIZE if dynamic else size_key(*size)
            name = f"{part}.onnx" if dynamic else f"{part}_{key}.onnx"
            module, args, inputs, outputs = _graph(model, part, size)
            export_graph(module, args, folder / rel / name, inputs, outputs, opset, model.stride if dynamic else None)
            files[key] = f"{rel}/{name}"
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
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Export checkpoints into a bundle folder `out` and check every graph against torch.

    `sample_images`: (x, side) uint8 HxWx3 pairs for the parity check (None: two bundled KITTI
    pairs; empty: no check). `sizes`: image sizes (padded to each codec's stride) the parity check
    runs at, so dynamic graphs are verified at all of them, and for which fixed-size graphs are
    exported. Symbols must match torch's; `allow_boundary_flips` accepts (and reports) the ones
    that differ by 1 only because torch's latent sits within 1e-3 of a rounding boundary (float
    summation order, see `stereodsc.export.parity`); False demands identical symbols.
    Raises ParityError (nothing written) on any other difference or if the host output drifts.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if not checkpoints:
        raise ConfigError("export needs at least one checkpoint")
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
        for role, group in groups.items():
            model = group[0].model
            padded = _padded_sizes(model, sizes)
            for part in ("edge", "host"):
                reason = fixed_size_reason(model, part)
                if reason:
                    notes.append(f"{role} {part} graphs: fixed sizes {[size_key(*p) for p in padded]} ({reason})")
            qualities = []
            for q, point in enumerate(group):
                t = time.perf_counter()
                rel = f"{role}/q{q}"
                (folder / rel).mkdir(parents=True)
                graphs = _export_graphs(point.model, folder, rel, padded, opset)
                pmf, offset = point.bottleneck.symbol_pmfs()
                (folder / rel / "tables.npz").write_bytes(build_tables(pmf, offset).to_npz_bytes())
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
                    results = check_quality(point.model, role, q, paths["edge"], paths["host"], samples, sizes)
                    _check(results, allow_boundary_flips)
                    parity += results
                    checked = summarise(results)
                    _say(progress, f"  parity: {checked}")
                qualities.append(
                    {
                        "lmbda": point.lmbda,
                        "metrics": point.ckpt.get("metrics", {}).get("val", {}),
                        "checkpoint": {
                            "file": point.path.name,
                            "sha256": hashlib.sha256(point.path.read_bytes()).hexdigest(),
                            "step": int(point.ckpt["step"]),
                        },
                        "graphs": graphs,
                        "tables": {"y": f"{rel}/tables.npz"},
                        "parity": checked,
                    }
                )
            _, y = _example(model, padded[0])
            channels, y_stride = int(y.shape[1]), padded[0][0] // int(y.shape[2])
            codecs[role] = {
                "model": model.name,
                "model_config": model.config,
                "uses_side_info": model.uses_side_info,
                "stride": model.stride,
                "latent_channels": channels,
                "latents": [{"name": "y", "channels": channels, "stride": y_stride}],
                "io": _io_spec(model, channels, y_stride),
                "shapes": {
                    part: "dynamic" if fixed_size_reason(model, part) is None else "fixed" for part in ("edge", "host")
                },
                "sizes": [size_key(*p) for p in padded],
                "qualities": qualities,
            }
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
