"""Export parity: the ONNX graphs on onnxruntime (CPU, the reference backend) against the torch model.

Edge: the graph's int32 symbols against ``model.analysis`` symbols. onnxruntime and torch sum
the convolutions in different orders, so a latent within ~1e-5 of a rounding boundary (k + 0.5)
can round the other way: measured 1 of 384,000 symbols for a small-preset balle2017 at 384x1248
(torch 2.500005 -> 3, onnxruntime -> 2). Such a flip changes one symbol by 1 and desynchronises
nothing (the host decodes the symbols the edge coded), so it is counted as a *boundary flip*:
|difference| = 1 where torch's unrounded latent lies within BOUNDARY_EPS of k + 0.5. Any other
difference means the graph computes something else.
Host: the graph's uint8 output against torch's ``synthesis`` output rounded the same way, both fed
the edge graph's symbols; reported as max |difference| in 8-bit levels and PSNR difference.
Scale hyperprior: the edge graph's z is checked like y (z = round(h_a(|g_a(x)|)), boundary flips
judged on torch's unrounded h_a output), and the integer scale net on the edge's z is compared with
the float path it replaces (``build_indexes(h_s(z))`` in torch): the fraction of y elements given
the same table row, and the exact code length of the edge's y under both (`scale_path_parity`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stereodsc.codec.geometry import pad, padded_size
from stereodsc.entropy import CdfTables, IntegerScaleNet
from stereodsc.eval.metrics import psnr
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.export.graphs import SIDE_INPUT, host_input_names, latent_names, to_float, to_uint8
from stereodsc.export.scale_path_export import ScalePathParity, scale_path_parity
from stereodsc.images import read_rgb
from stereodsc.models import CompressionModel
from stereodsc.models.priors import ScaleHyperprior
from stereodsc.runtime import open_session

SamplePair = tuple[np.ndarray, np.ndarray]  # (x, side): uint8 HxWx3, side = the other camera
BOUNDARY_EPS = 1e-3  # latent units; float32 conv round-off is ~1e-5 at these magnitudes


@dataclass(frozen=True)
class LatentParity:
    """The edge graph's symbols of one latent against torch's."""

    name: str
    symbols: int
    mismatches: int
    boundary_flips: int
    max_delta: int


@dataclass(frozen=True)
class ParityResult:
    """One graph pair on one sample image at one padded size (symbol counts over every latent)."""

    role: str
    quality: int
    size: tuple[int, int]  # padded (H, W) the graphs ran at
    sample: int
    symbols: int
    symbol_mismatches: int
    boundary_flips: int  # the mismatches explained by float round-off at k + 0.5 (see module doc)
    max_symbol_delta: int
    host_max_abs_diff: int  # 8-bit levels
    psnr_onnx: float  # dB, against the (padded) sample image
    psnr_torch: float
    latents: tuple[LatentParity, ...] = ()  # per transmitted latent, in segment order
    scale_path: ScalePathParity | None = None  # hyperprior: integer vs float table rows of y

    @property
    def psnr_delta(self) -> float:
        """onnxruntime PSNR minus torch PSNR (dB); 0 when both reconstructions are identical."""
        if math.isinf(self.psnr_onnx) and math.isinf(self.psnr_torch):
            return 0.0
        return self.psnr_onnx - self.psnr_torch


def default_samples() -> list[SamplePair]:
    """Two pairs of the bundled KITTI sample: (right camera = dependent x, left camera = side)."""
    from stereodsc.sample import drive_path

    drive = drive_path()
    frames = sorted((drive / "image_03" / "data").iterdir())
    return [
        (read_rgb(frames[i]), read_rgb(drive / "image_02" / "data" / frames[i].name)) for i in (0, len(frames) // 2)
    ]


def fit(image: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """The sample at image `size` (as is, else paper-protocol crop + resize), padded to `stride`."""
    if image.shape[:2] != tuple(size):
        image = paper_protocol(image, size)
    return pad(image, stride)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image))[None]


def unrounded_latents(model: CompressionModel, x: Tensor) -> dict[str, Tensor]:
    """Every transmitted latent before rounding (``model.analysis`` rounds these)."""
    y = model.g_a(x)
    out = {"y": y}
    if isinstance(model.prior, ScaleHyperprior):
        out["z"] = model.prior.h_a(torch.abs(y))
    return out


def _latent_parity(name: str, edge: np.ndarray, reference: np.ndarray, latent: np.ndarray) -> LatentParity:
    delta = np.abs(edge.astype(np.int64) - reference)
    at_boundary = np.abs(np.abs(latent - np.floor(latent)) - 0.5) <= BOUNDARY_EPS
    return LatentParity(
        name,
        int(edge.size),
        int(np.count_nonzero(delta)),
        int(np.count_nonzero((delta == 1) & at_boundary)),
        int(delta.max(initial=0)),
    )


@torch.no_grad()
def check_quality(
    model: CompressionModel,
    role: str,
    quality: int,
    edge_paths: dict[tuple[int, int], Path],
    host_paths: dict[tuple[int, int], Path],
    refine_paths: dict[tuple[int, int], Path] | None,
    samples: Sequence[SamplePair],
    sizes: Sequence[tuple[int, int]],
    *,
    scale_net: IntegerScaleNet | None = None,
    y_tables: CdfTables | None = None,
) -> list[ParityResult]:
    """Run the graphs and the torch model on every sample at every image size (padded per graph).
    `refine_paths`: a model that `refines_decode` (host graph -> x_dec, refine graph -> x_hat); the
    torch reference is its unsplit synthesis, so the parity includes the rounding of x_dec to 8 bits.

    A scale-hyperprior model needs `scale_net` (the bundle's) and `y_tables` (y's integer tables,
    for the rate of each path).
    """
    hyperprior = model.prior if isinstance(model.prior, ScaleHyperprior) else None
    if hyperprior is not None and (scale_net is None or y_tables is None):
        raise ValueError(f"{model.name} has a scale hyperprior: pass its scale_net and y_tables")
    names = latent_names(model)
    results = []
    for size in sizes:
        padded = padded_size(size, model.stride)
        edge = open_session(edge_paths[padded])
        host = open_session(host_paths[padded])
        refine = None if refine_paths is None else open_session(refine_paths[padded])
        for i, (x_img, side_img) in enumerate(samples):
            x = fit(x_img, size, model.stride)
            outputs = edge.run({"image": x[None]})
            reference = model.analysis(to_float(_tensor(x)))
            unrounded = unrounded_latents(model, to_float(_tensor(x)))  # symbols = round(these)
            latents = tuple(
                _latent_parity(
                    name,
                    outputs[name],
                    reference[name].to(torch.int32).numpy(),
                    unrounded[name].numpy(),
                )
                for name in names
            )
            symbols = outputs["y"]
            scale_path = None
            if hyperprior is not None:
                assert scale_net is not None and y_tables is not None
                scale_path = scale_path_parity(hyperprior, scale_net, [outputs["z"][0]], [symbols[0]], y_tables)
            feed = {"y": symbols}
            side_u8 = fit(side_img, size, model.stride)[None]
            side = to_float(torch.from_numpy(side_u8)) if model.uses_side_info else None
            if model.uses_side_info and refine is None:
                feed[SIDE_INPUT] = side_u8
            assert tuple(feed) == host_input_names(model)
            out_onnx = host.run(feed)["image"]
            if refine is not None:
                out_onnx = refine.run({"x_dec": out_onnx, SIDE_INPUT: side_u8})["image"]
            out_onnx = out_onnx[0]
            y = torch.from_numpy(symbols).to(torch.float32)
            out_torch = to_uint8(model.synthesis({"y": y}, side))[0].numpy()
            results.append(
                ParityResult(
                    role,
                    quality,
                    padded,
                    i,
                    sum(lat.symbols for lat in latents),
                    sum(lat.mismatches for lat in latents),
                    sum(lat.boundary_flips for lat in latents),
                    max(lat.max_delta for lat in latents),
                    int(np.abs(out_onnx.astype(np.int16) - out_torch).max(initial=0)),
                    psnr(x, out_onnx),
                    psnr(x, out_torch),
                    latents,
                    scale_path,
                )
            )
    return results


def combine_scale_path(results: Sequence[ParityResult]) -> ScalePathParity | None:
    """The scale-path comparison over all results (None for factorized models)."""
    parts = [r.scale_path for r in results if r.scale_path is not None]
    if not parts:
        return None
    elements = sum(p.elements for p in parts)
    same = sum(round(p.agreement * p.elements) for p in parts)
    return ScalePathParity(
        elements, same / elements, sum(p.bits_float for p in parts), sum(p.bits_integer for p in parts)
    )


def summarise(results: Sequence[ParityResult]) -> dict[str, object]:
    """The manifest's per-quality parity record (rounded so that re-exports give the same bytes).

    Symbol counts are over every latent; a codec with several latents also gets them per latent
    ("latents"), and a hyperprior the integer-vs-float scale path comparison ("scale_path").
    """
    record: dict[str, object] = {
        "sizes": sorted({f"{r.size[0]}x{r.size[1]}" for r in results}),
        "samples": len({r.sample for r in results}),
        "symbols": sum(r.symbols for r in results),
        "symbol_mismatches": sum(r.symbol_mismatches for r in results),
        "boundary_flips": sum(r.boundary_flips for r in results),
        "host_max_abs_diff": max(r.host_max_abs_diff for r in results),
        "psnr_delta_db_max": round(max(abs(r.psnr_delta) for r in results), 4),
        "psnr_onnx_db_mean": round(float(np.mean([r.psnr_onnx for r in results])), 3),
    }
    names = [lat.name for lat in results[0].latents] if results else []
    if len(names) > 1:
        record["latents"] = {
            name: {
                key: sum(getattr(lat, attr) for r in results for lat in r.latents if lat.name == name)
                for key, attr in (
                    ("symbols", "symbols"),
                    ("symbol_mismatches", "mismatches"),
                    ("boundary_flips", "boundary_flips"),
                )
            }
            for name in names
        }
    scale = combine_scale_path(results)
    if scale is not None:
        record["scale_path"] = {
            "elements": scale.elements,
            "index_agreement": round(scale.agreement, 6),
            "bits_float": round(scale.bits_float, 1),
            "bits_integer": round(scale.bits_integer, 1),
            "rate_increase": float(f"{scale.rate_increase:.3e}"),
        }
    return record
