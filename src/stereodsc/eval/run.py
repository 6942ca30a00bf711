"""``stereodsc eval``: learned codecs and classical anchors on the same stereo pairs, in one process.

Writes into ``out``: ``results.json`` (``rd.write_results``: records per image, method and
quality; curves; the BD-rate table; meta), ``bd_rate.md`` (the table for humans), the RD plots,
and with ``visualize`` the papers' visualisations under ``visualize/``.

Pairs: x is the dependent camera's frame (KITTI: the right camera, image_03; a pair folder:
``<name>_R``), y the reference camera's (left) as side information; ``both_directions`` adds
the mirrored pairs. BD-rate: every method against every anchor, and every side-information codec
against the no-side-information codecs of its source (the headline: what side information buys).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stereodsc.errors import ConfigError, DataError
from stereodsc.eval import rd
from stereodsc.eval.anchors import ANCHOR_NAMES, available_anchors
from stereodsc.eval.learned import (
    SIDE_MODES,
    EvalPair,
    LearnedCoder,
    LearnedMethod,
    code_learned,
    intra_partners,
    open_methods,
)
from stereodsc.eval.metrics import ms_ssim_min_side
from stereodsc.eval.plots import plot_rd_curves
from stereodsc.eval.preprocess import paper_protocol

log = logging.getLogger(__name__)

PROTOCOLS = ("paper", "native")
VISUALIZE_IMAGES = 4
"""Images per method and quality that get the (large) visualisation PNGs."""
PLOT_ZOOM = 2.0
"""The main RD plots show up to this many times the learned codecs' highest payload bpp."""


def parse_frames(spec: str, count: int) -> range:
    """Frame indices of a ``START:STOP`` spec (Python slice rules: ``-20:`` = the last 20)."""
    try:
        parts = [int(p) if p.strip() else None for p in spec.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] is not None:
        parts = [parts[0], parts[0] + 1 if parts[0] != -1 else None]
    if len(parts) != 2:
        raise ConfigError(f"--frames {spec!r}: write START:STOP (Python slice rules, e.g. -20: for the last 20)")
    selected = range(count)[slice(*parts)]
    if not selected:
        raise ConfigError(f"--frames {spec!r} selects none of the {count} frames")
    return selected


def load_pairs(
    pairs: Path,
    protocol: str = "paper",
    frames: str | None = None,
    max_images: int | None = None,
    both_directions: bool = False,
) -> list[EvalPair]:
    """The evaluated pairs of a KITTI raw drive or a ``<name>_L`` / ``<name>_R`` folder, preprocessed.

    ``frames`` selects by time index, then ``max_images`` keeps the first evaluated images
    (with ``both_directions`` a frame gives two: x = right, then x = left).
    """
    from stereodsc.images import read_rgb
    from stereodsc.train.datasets import folder_sequence, kitti_raw_sequence

    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r}: use 'paper' (crop + resize to 128x256) or 'native' (full frame)")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"--max-images {max_images}: give at least 1 (or leave it out for all)")
    pairs = Path(pairs)
    if not pairs.is_dir():
        raise DataError(
            f"--pairs {pairs} does not exist: give a KITTI raw drive folder (with image_02/ and image_03/) "
            "or a folder of <name>_L.png / <name>_R.png pairs"
        )
    seq = kitti_raw_sequence(pairs) if (pairs / "image_02").is_dir() else folder_sequence(pairs)
    selected = parse_frames(frames, len(seq.left)) if frames else range(len(seq.left))
    jobs = []
    for t in selected:
        name = seq.left[t].stem.removesuffix("_L")
        jobs.append((f"{name}_R", seq.right[t], seq.left[t]))
        if both_directions:
            jobs.append((f"{name}_L", seq.left[t], seq.right[t]))
    out = []
    for name, x_path, side_path in jobs[:max_images]:
        x, side = read_rgb(x_path), read_rgb(side_path)
        if protocol == "paper":
            x, side = paper_protocol(x), paper_protocol(side)
        if x.shape != side.shape:
            raise DataError(
                f"{x_path} is {x.shape[0]}x{x.shape[1]} but its side image {side_path} is "
                f"{side.shape[0]}x{side.shape[1]} (HxW): a pair must be two rectified views of one size "
                "(or use --protocol paper)"
            )
        out.append(EvalPair(name, x, side))
    return out


def ms_ssim_window(pairs: Sequence[EvalPair]) -> int:
    """11 (the standard window) when every image allows it, else 7 (NDIC's at 128x256)."""
    smallest = min(min(p.x.shape[:2]) for p in pairs)
    return 11 if smallest >= ms_ssim_min_side(11) else 7


def build_bd_table(
    records: Sequence[rd.Record], anchors: Sequence[str], methods: Sequence[LearnedMethod], notes: list[str]
) -> dict[str, dict[str, float | None]]:
    """Every method vs every anchor, and every learned codec vs the learned no-SI codecs."""
    table = rd.bd_rate_table(records, anchors, notes=notes)
    intra = [m.name for m in methods if not m.uses_side_info]
    learned = {m.name for m in methods}
    table.update(rd.bd_rate_table([r for r in records if r.method in learned], intra, notes=notes))
    return table


def headline_keys(methods: Sequence[LearnedMethod]) -> list[str]:
    """BD-rate keys of each side-information codec against the no-SI codec of its own source."""
    return [f"{si} vs {intra.name}" for si, intras in intra_partners(methods).items() for intra in intras]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def write_bd_markdown(results: Path) -> Path:
    """``bd_rate.md`` next to ``results.json``: the BD-rate table and the averaged curves."""
    doc = json.loads(Path(results).read_text(encoding="utf-8"))
    meta = doc["meta"]
    headline = set(meta.get("headline", []))
    lines = [
        f"# BD-rate: {meta.get('pairs')} ({meta.get('protocol')} protocol, {meta.get('n_images')} images)",
        "",
        f"Bjøntegaard delta rate ({meta.get('bd_method')}), rate = {meta.get('rate')} bpp; negative = fewer bits "
        "than the reference at equal quality. MS-SSIM in dB, -10 log10(1 - MS-SSIM). "
        f"Side information: {meta.get('side')} y. Headline rows (side information vs no side information, "
        "same source) in bold.",
        "",
        "| method | reference | BD-rate PSNR | BD-rate MS-SSIM (dB) |",
        "|---|---|---:|---:|",
    ]
    rows = sorted(doc["bd_rate"].items(), key=lambda kv: (kv[0] not in headline, kv[0]))
    for key, entry in rows:
        method, reference = key.split(" vs ", 1)
        cells = [method, reference, _percent(entry.get("psnr")), _percent(entry.get("ms_ssim"))]
        if key in headline:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Curves (means over images)",
        "",
        "| method | quality | payload bpp | wire bpp | estimated bpp | PSNR (dB) | MS-SSIM |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, points in doc["curves"].items():
        for p in points:
            est = "" if p["estimated_bpp"] is None else f"{p['estimated_bpp']:.4f}"
            psnr = "inf" if p["psnr"] is None else f"{p['psnr']:.2f}"
            lines.append(
                f"| {method} | {p['quality']} | {p['payload_bpp']:.4f} | {p['wire_bpp']:.4f} | {est} | "
                f"{psnr} | {p['ms_ssim']:.4f} |"
            )
    if meta.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in meta["notes"])]
    path = Path(results).with_name("bd_rate.md")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_eval(
    models: list[Path],
    pairs: Path,
    *,
    protocol: str = "paper",
    codecs: list[str] | None = None,
    out: Path,
    visualize: bool = False,
    max_images: int | None = None,
    progress: bool = True,
    frames: str | None = None,
    both_directions: bool = False,
    side: str = "original",
) -> Path:
    """Evaluate ``models`` (bundles or checkpoints) and the anchors ``codecs`` (None: all that run
    here) on ``pairs``; write results, tables and plots into ``out``; return the results.json path.

    Options are checked before any coding starts, so a typo fails in a second, not after the anchors.
    """
    if side not in SIDE_MODES:
        raise ConfigError(f"--side {side!r}: use 'original' (the papers' protocol) or 'decoded' (deployment)")
    anchors = available_anchors(codecs)
    requested = list(ANCHOR_NAMES) if codecs is None else list(codecs)
    skipped = [n for n in requested if n not in {a.name for a in anchors}]
    eval_pairs = load_pairs(pairs, protocol, frames, max_images, both_directions)
    win = ms_ssim_window(eval_pairs) if protocol == "native" else 7
    notes = [f"anchor {n} skipped: its codec does not run here (see the log)" for n in skipped]
    out = Path(out)
    with contextlib.ExitStack() as stack:
        methods = open_methods(models, sorted({p.x.shape[:2] for p in eval_pairs}), stack)
        if not methods and not anchors:
            raise ConfigError("nothing to evaluate: give --model and/or --codecs")
        coder = LearnedCoder()
        records, side_used = code_learned(methods, eval_pairs, coder, side, win, progress)
        records += rd.run_anchors([(p.name, p.x) for p in eval_pairs], anchors, progress, win)
        anchor_names = [a.name for a in anchors]
        table = build_bd_table(records, anchor_names, methods, notes)
        meta: dict[str, Any] = {
            "pairs": str(pairs),
            "protocol": protocol,
            "frames": frames,
            "both_directions": both_directions,
            "n_images": len(eval_pairs),
            "images": [p.name for p in eval_pairs],
            "image_size": list(eval_pairs[0].x.shape[:2]) if len({p.x.shape for p in eval_pairs}) == 1 else None,
            "side": side,
            "side_note": "original: x decoded with the original y (the papers' protocol); decoded: with y coded by "
            "the intra codec of the same source at the nearest lambda (deployment)",
            "side_decoded_with": side_used,
            "rate": "payload",
            "bd_method": "pchip",
            "ms_ssim_win": win,
            "bpp_pixels": "original (unpadded) pixels",
            "headline": headline_keys(methods),
            "methods": {
                **{m.name: m.describe() for m in methods},
                **{
                    a.name: {"kind": "anchor", "description": a.description, "qualities": list(a.qualities)}
                    for a in anchors
                },
            },
            "anchors_skipped": skipped,
            "notes": notes,
        }
        if visualize:
            from stereodsc.eval.visualize import write_visualizations

            meta["visualize"] = write_visualizations(
                methods, eval_pairs, records, coder, out / "visualize", VISUALIZE_IMAGES
            )
    path = rd.write_results(out, records, table, meta)
    curves = rd.aggregate(records)
    learned_bpp = [p.payload_bpp for m in methods for p in curves[m.name]]
    title = f"{Path(pairs).name}, {protocol} protocol, {len(eval_pairs)} images"
    if learned_bpp and anchors:
        zoom = PLOT_ZOOM * max(learned_bpp)
        plot_rd_curves(curves, out, anchor_names, title=title, max_bpp=math.ceil(zoom * 20) / 20)
        plot_rd_curves(curves, out / "full_range", anchor_names, title=title)
    else:
        plot_rd_curves(curves, out, anchor_names, title=title)
    write_bd_markdown(path)
    log.info("results in %s", path)
    return path
