"""The papers' visualisations of what side information does, for ``stereodsc eval --visualize``.

- NDIC / NDIC-CAM common vs private information: the decoder output with the other input blanked.
  Private = x's symbols with a 0.5-grey side image (what x's bits alone give); common = x's latent
  zeroed with the real side image (what the decoder takes from the side image). Both run the bundle's host ONNX
  graph, whose inputs are exactly the symbols and the side image, so bundles and checkpoints work
  alike and what is shown is what is deployed.
- DSIN's synthetic side image side_syn (the SI-Finder's patches of the side image): torch only, so it needs the
  checkpoint.
- Correlation vs gain: per image, how alike x and its side image are (Pearson correlation of the grey images)
  against what the side-information codec gains over the no-side-information codec of the same
  source at the matching quality (PSNR gain and payload saving).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.codec.decoder import NEUTRAL_SIDE
from stereodsc.codec.geometry import crop, pad, padded_size
from stereodsc.codec.sessions import GraphSessions
from stereodsc.errors import DataError
from stereodsc.eval.learned import (
    EvalPair,
    LearnedCoder,
    LearnedMethod,
    intra_partners,
    matching_quality,
    quality_label,
)
from stereodsc.eval.rd import Record
from stereodsc.images import write_rgb

log = logging.getLogger(__name__)

COMMON_INFORMATION_MODELS = ("ndic", "ndic_cam")
"""Models whose decoder splits into x's private latent and the common information w = f(side)."""


def _panel(path: Path, items: Sequence[tuple[str, np.ndarray]]) -> Path:
    """One PNG with the images stacked top to bottom, each under its title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = items[0][1].shape[:2]
    width = 8.0
    fig = Figure(figsize=(width, len(items) * (width * h / w + 0.35)), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, image) in enumerate(items):
        ax = fig.add_subplot(len(items), 1, i + 1)
        ax.imshow(image)
        ax.set_title(title, fontsize="small")
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _host_decode(
    sessions: GraphSessions, host: Path, symbols: np.ndarray, side: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """The host graph on any symbols and side image (both are plain inputs), cropped to ``size``."""
    image = sessions.run(host, {"y": symbols, "side": side})["image"][0]
    return np.ascontiguousarray(crop(image, size))


def information_images(
    method: LearnedMethod, pairs: Sequence[EvalPair], coder: LearnedCoder, out_dir: Path
) -> list[Path]:
    """Full, private and common decodes of every pair at every quality, as PNGs and one panel each."""
    codec = method.codec
    sessions = GraphSessions(method.bundle)
    written = []
    for point in codec.qualities:
        folder = out_dir / method.name / quality_label(point.index)
        for pair in pairs:
            h, w = pair.x.shape[:2]
            host = point.host.path(*padded_size((h, w), codec.stride))
            if host is None:
                raise DataError(f"{method.name}: no host graph for {h}x{w} images; re-export the bundle for this size")
            symbols = coder.encoder(method, point.index).encode(pair.x).symbols[None]
            side = pad(pair.side, codec.stride)[None]
            outputs = {
                "decoded": _host_decode(sessions, host, symbols, side, (h, w)),
                "private": _host_decode(sessions, host, symbols, np.full_like(side, NEUTRAL_SIDE), (h, w)),
                "common": _host_decode(sessions, host, np.zeros_like(symbols), side, (h, w)),
            }
            for kind, image in outputs.items():
                write_rgb(folder / f"{pair.name}_{kind}.png", image)
                written.append(folder / f"{pair.name}_{kind}.png")
            items = [
                (f"x ({pair.name})", pair.x),
                ("side image", pair.side),
                (f"{method.name} {quality_label(point.index)}: x's bits + the side image", outputs["decoded"]),
                ("private information: x's bits, side blanked to 0.5 grey", outputs["private"]),
                ("common information: x's latent zeroed, real side image", outputs["common"]),
            ]
            written.append(_panel(folder / f"{pair.name}_panel.png", items))
    return written


def dsin_images(method: LearnedMethod, pairs: Sequence[EvalPair], out_dir: Path) -> list[Path]:
    """DSIN's x_dec (before SI-Net), side_syn and x_hat from the torch model of each checkpoint."""
    import torch

    from stereodsc.export.graphs import to_float, to_uint8
    from stereodsc.models import CompressionModel
    from stereodsc.train.checkpoint import model_from_checkpoint

    written = []
    for index, checkpoint in enumerate(method.checkpoints):
        model, _ = model_from_checkpoint(checkpoint)
        assert isinstance(model, CompressionModel)
        folder = out_dir / method.name / quality_label(index)
        for pair in pairs:
            h, w = pair.x.shape[:2]
            x, side = (to_float(torch.from_numpy(pad(img, model.stride))[None]) for img in (pair.x, pair.side))
            with torch.no_grad():
                out = model(x, side)
            images = {k: np.ascontiguousarray(crop(to_uint8(out[k])[0].numpy(), (h, w))) for k in ("x_dec", "side_syn")}
            for kind, image in images.items():
                write_rgb(folder / f"{pair.name}_{kind}.png", image)
                written.append(folder / f"{pair.name}_{kind}.png")
            items = [
                (f"x ({pair.name})", pair.x),
                ("side image", pair.side),
                ("x_dec: x decoded from its bits alone (before SI-Net)", images["x_dec"]),
                ("side_syn: SI-Finder's patches of the side image matched to x_dec", images["side_syn"]),
                ("x_hat: SI-Net refinement", np.ascontiguousarray(crop(to_uint8(out["x_hat"])[0].numpy(), (h, w)))),
            ]
            written.append(_panel(folder / f"{pair.name}_panel.png", items))
    return written


def correlation(x: np.ndarray, side: np.ndarray) -> float:
    """Pearson correlation of the grey (channel-mean) images: how alike the two views are."""
    a = np.asarray(x, np.float64).mean(axis=-1).ravel()
    b = np.asarray(side, np.float64).mean(axis=-1).ravel()
    if a.std() == 0.0 or b.std() == 0.0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def correlation_gain(
    methods: Sequence[LearnedMethod], pairs: Sequence[EvalPair], records: Sequence[Record]
) -> list[dict[str, Any]]:
    """Per (side-information method, its intra partner, quality, image): correlation and gains."""
    by_key = {(r.method, r.quality, r.image): r for r in records}
    by_name = {m.name: m for m in methods}
    corr = {pair.name: correlation(pair.x, pair.side) for pair in pairs}
    points = []
    for si_name, intras in intra_partners(methods).items():
        si = by_name[si_name]
        for intra in intras:
            for point in si.codec.qualities:
                q_si = quality_label(point.index)
                q_intra = quality_label(matching_quality(si.codec, intra.codec, point.index))
                for pair in pairs:
                    a, b = by_key[(si.name, q_si, pair.name)], by_key[(intra.name, q_intra, pair.name)]
                    points.append(
                        {
                            "method": si.name,
                            "reference": intra.name,
                            "quality": q_si,
                            "reference_quality": q_intra,
                            "image": pair.name,
                            "correlation": corr[pair.name],
                            "psnr_gain_db": a.psnr - b.psnr,
                            "payload_saving_percent": 100.0 * (1.0 - a.payload_bpp / b.payload_bpp),
                        }
                    )
    return points


def plot_correlation_gain(points: Sequence[dict[str, Any]], path: Path) -> Path:
    """One scatter PNG: correlation across; PSNR gain (left) and payload saving (right) up."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    panels = (("psnr_gain_db", "PSNR gain (dB)"), ("payload_saving_percent", "payload bpp saving (%)"))
    series: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        series.setdefault(f"{p['method']} {p['quality']} vs {p['reference']} {p['reference_quality']}", []).append(p)
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, pts in series.items():
            ax.scatter([p["correlation"] for p in pts], [p[key] for p in pts], s=14, label=name)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("correlation of x and its side image (Pearson, grey)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"side information: {label.split(' (')[0]} per image")
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_visualizations(
    methods: Sequence[LearnedMethod],
    pairs: Sequence[EvalPair],
    records: Sequence[Record],
    coder: LearnedCoder,
    out_dir: Path,
    max_images: int = 4,
) -> dict[str, Any]:
    """Every visualisation that applies, under ``out_dir``; returns what results.json records.

    Image visualisations use the first ``max_images`` pairs; the correlation plot uses them all.
    """
    shown = list(pairs[:max_images])
    files: list[Path] = []
    notes: list[str] = []
    for method in methods:
        model = method.codec.model
        if model in COMMON_INFORMATION_MODELS:
            files += information_images(method, shown, coder, out_dir)
        elif model == "dsin":
            if method.checkpoints:
                files += dsin_images(method, shown, out_dir)
            else:
                notes.append(f"{method.name}: side_syn needs the torch model; pass its checkpoint (.pt) as --model")
    points = correlation_gain(methods, pairs, records)
    plot = None
    if points:
        plot = plot_correlation_gain(points, out_dir / "correlation_gain.png")
        files.append(plot)
    else:
        notes.append("no correlation-vs-gain plot: it needs a side-information codec and an intra codec of one source")
    for note in notes:
        log.warning("visualize: %s", note)
    root = out_dir.parent
    return {
        "files": [p.relative_to(root).as_posix() for p in files],
        "correlation_gain": {"plot": None if plot is None else plot.relative_to(root).as_posix(), "points": points},
        "notes": notes,
    }
