"""``stereodsc eval``: learned codecs and classical anchors on the same stereo pairs, in one process.

Writes into ``out``: ``results.json`` (``rd.write_results``: records per image, method and
quality; curves; the BD-rate table; meta), ``bd_rate.md`` (the table for humans), the RD plots,
and with ``visualize`` the papers' visualisations under ``visualize/``.

Pairs: x is the dependent camera's frame (KITTI: the right camera, image_03; a pair folder:
``<name>_R``), y the reference camera's (left) as side information; ``both_directions`` adds
the mirrored pairs. BD-rate: every method against every anchor, and every side-information codec
against the no-side-information codecs of its source (the headline: what side information buys).
``held_out`` keeps only the native mix's held-out pairs of one of its data sets.

With ``side="decoded"`` results.json also prices the rig (``rig``: both cameras): x by the
side-information codec plus y by the intra codec that decoded its side image, against both views by
the intra codec and both views by each anchor; bd_rate.md gets a rig section and ``rig/`` its plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stereodsc.errors import ConfigError, DataError
from stereodsc.eval import rd
from stereodsc.eval.anchors import ANCHOR_NAMES, Anchor, available_anchors
from stereodsc.eval.learned import (
    SIDE_MODES,
    EvalPair,
    LearnedCoder,
    LearnedMethod,
    LearnedRun,
    code_learned,
    intra_partners,
    open_methods,
    quality_label,
)
from stereodsc.eval.metrics import bpp, ms_ssim_min_side
from stereodsc.eval.plots import plot_rd_curves
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.eval.rd import Record

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
    held_out: bool = False,
) -> list[EvalPair]:
    """The evaluated pairs of a KITTI raw drive or a ``<name>_L`` / ``<name>_R`` folder, preprocessed.

    ``frames`` selects by time index, then ``max_images`` keeps the first evaluated images
    (with ``both_directions`` a frame gives two: x = right, then x = left). ``held_out`` keeps only
    the pairs the native-mix models never trained on (``train.datasets.held_out_names``: the
    ``MIX_SOURCES`` split); it replaces ``frames`` (given both: ConfigError), ``max_images`` still
    applies after it.
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
    if held_out and frames:
        raise ConfigError(
            f"--held-out with --frames {frames!r}: --held-out selects the split's pairs itself; drop --frames "
            "(and use --max-images to evaluate fewer)"
        )
    seq = kitti_raw_sequence(pairs) if (pairs / "image_02").is_dir() else folder_sequence(pairs)
    names = [left.stem.removesuffix("_L") for left in seq.left]
    selected: Sequence[int] = parse_frames(frames, len(seq.left)) if frames else range(len(seq.left))
    if held_out:
        selected = held_out_indices(pairs, names)
    jobs = []
    for t in selected:
        name = names[t]
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


def held_out_indices(pairs: Path, names: Sequence[str]) -> list[int]:
    """Indices (in ``names``, the folder's pairs) of the native mix's held-out split of ``pairs``.

    Raises ConfigError when ``pairs`` is not one of the mix's data sets (the split is defined for
    them only) and DataError when a held-out pair is missing from the folder.
    """
    from stereodsc.train.datasets import MIX_SOURCES, held_out_names

    held = held_out_names(pairs)
    if held is None:
        folders = ", ".join(s.folder for s in MIX_SOURCES.values())
        raise ConfigError(
            f"--held-out: {pairs} is not a data set of the native mix, so it has no held-out split; give one of "
            f"the folders {folders} (under ../shared/data), or drop --held-out"
        )
    missing = held - set(names)
    if missing:
        raise DataError(
            f"--held-out: {pairs} lacks the held-out pair(s) {sorted(missing)}: the split needs the full data set "
            "(re-copy it from ../shared/data)"
        )
    return [t for t, name in enumerate(names) if name in held]


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


RIG_DEFINITION = (
    "The rig = both cameras of a pair. A side-information method's rig codes x with it and the reference view y "
    "with the intra codec whose decoding of y was x's side image (side_decoded_with); both-intra (intra+intra) "
    "codes both views with the intra codec at one quality index; both-<anchor> (hevc+hevc, ...) codes both "
    "views with the anchor at one quality. Rate: both views' bytes over both images' pixels; quality: the mean "
    "of the two views' PSNR (and MS-SSIM) per pair, then the mean over pairs."
)
RIG_SIDE_ORIGINAL = (
    "Not computed with --side original: the side-information codecs then decode x with the ORIGINAL y, which "
    "costs nothing only in the papers' setting (y is given for free); a rig must code and send y as well, and "
    "its host only has y decoded. Run with --side decoded for the rig figure."
)


def rig_name(x_method: str, y_method: str) -> str:
    """The rig curve that codes x with ``x_method`` and y with ``y_method`` ("ndic+balle2017", "hevc+hevc")."""
    return f"{x_method}+{y_method}"


RIG_KINDS = ("side_info", "intra", "anchor")


@dataclass(frozen=True)
class RigSpec:
    """One rig curve: x coded by ``x_method``, y by ``y_method``; per point (x quality, y quality).

    ``kind`` is one of ``RIG_KINDS``. A rig point is labelled with x's quality (a side-information
    point's y is at the intra quality that decoded its side image).
    """

    kind: str
    x_method: str
    y_method: str
    qualities: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return rig_name(self.x_method, self.y_method)


def rig_specs(run: LearnedRun, methods: Sequence[LearnedMethod], anchors: Sequence[Anchor]) -> list[RigSpec]:
    """The rig curves of a ``side="decoded"`` run: each side-information method with the intra codec that
    decoded its y, each such intra codec on both views (same quality), each anchor on both views."""
    specs = [
        RigSpec("side_info", si, next(iter(qs.values()))[0], tuple((q, ref_q) for q, (_, ref_q) in qs.items()))
        for si, qs in run.side_of.items()
    ]
    by_name = {m.name: m for m in methods}
    for ref in sorted({spec.y_method for spec in specs}):
        labels = [quality_label(q.index) for q in by_name[ref].codec.qualities]
        specs.append(RigSpec("intra", ref, ref, tuple((q, q) for q in labels)))
    specs += [RigSpec("anchor", a.name, a.name, tuple((str(q), str(q)) for q in a.qualities)) for a in anchors]
    return specs


def rig_record(name: str, quality: str, x: Record, y: Record, height: int, width: int) -> Record:
    """One pair coded by both cameras: both views' bytes over both images' pixels (each ``height`` x
    ``width``), the mean of the two views' PSNR and MS-SSIM (and of their estimated bpp)."""
    estimated = None
    if x.estimated_bpp is not None and y.estimated_bpp is not None:
        estimated = (x.estimated_bpp + y.estimated_bpp) / 2
    payload, wire = x.payload_bytes + y.payload_bytes, x.wire_bytes + y.wire_bytes
    return Record(
        method=name,
        quality=quality,
        image=x.image,
        payload_bytes=payload,
        wire_bytes=wire,
        payload_bpp=bpp(payload, 2 * height, width),
        wire_bpp=bpp(wire, 2 * height, width),
        estimated_bpp=estimated,
        psnr=(x.psnr + y.psnr) / 2,
        ms_ssim=(x.ms_ssim + y.ms_ssim) / 2,
    )


def rig_records(
    specs: Sequence[RigSpec],
    x_records: Sequence[Record],
    y_records: Sequence[Record],
    sizes: Mapping[str, tuple[int, int]],
) -> list[Record]:
    """One rig record per (spec, point, pair): x's record with y's (``sizes``: pair name -> (H, W))."""
    xs = {(r.method, r.quality, r.image): r for r in x_records}
    ys = {(r.method, r.quality, r.image): r for r in y_records}
    out = []
    for spec in specs:
        for x_q, y_q in spec.qualities:
            for image, (h, w) in sizes.items():
                x, y = xs.get((spec.x_method, x_q, image)), ys.get((spec.y_method, y_q, image))
                if x is None or y is None:
                    view = "x" if x is None else "y"
                    raise DataError(
                        f"rig {spec.name} {x_q}, pair {image}: no record of {view} "
                        f"({spec.x_method if x is None else spec.y_method} {x_q if x is None else y_q}); "
                        "the evaluation coded fewer points than the rig needs (a bug: report it)"
                    )
                out.append(rig_record(spec.name, x_q, x, y, h, w))
    return out


def rig_bd_table(
    specs: Sequence[RigSpec], records: Sequence[Record], notes: list[str]
) -> dict[str, dict[str, float | None]]:
    """Every learned rig (side information and both-intra) vs every both-anchor rig, and every
    side-information rig vs every both-intra rig."""
    anchor_rigs = [s.name for s in specs if s.kind == "anchor"]
    intra_rigs = [s.name for s in specs if s.kind == "intra"]
    si_rigs = {s.name for s in specs if s.kind == "side_info"}
    table: dict[str, dict[str, float | None]] = {}
    if anchor_rigs:
        vs_anchors = rd.bd_rate_table(records, anchor_rigs, notes=notes)
        table.update({k: v for k, v in vs_anchors.items() if k.split(" vs ", 1)[0] not in anchor_rigs})
    if intra_rigs:
        learned = [r for r in records if r.method not in anchor_rigs]
        vs_intra = rd.bd_rate_table(learned, intra_rigs, notes=notes)
        table.update({k: v for k, v in vs_intra.items() if k.split(" vs ", 1)[0] in si_rigs})
    return table


def rig_headline(specs: Sequence[RigSpec]) -> list[str]:
    """Each side-information rig vs both-intra (its own intra codec) and vs both-HEVC when HEVC ran."""
    names = {s.name for s in specs}
    keys = []
    for spec in (s for s in specs if s.kind == "side_info"):
        keys.append(f"{spec.name} vs {rig_name(spec.y_method, spec.y_method)}")
        if rig_name("hevc", "hevc") in names:
            keys.append(f"{spec.name} vs {rig_name('hevc', 'hevc')}")
    return keys


def rig_section(
    specs: Sequence[RigSpec], records: Sequence[Record], y_records: Sequence[Record], notes: list[str]
) -> dict[str, Any]:
    """results.json's ``rig``: definition, curves, BD-rates, the rig records and the reference view's records."""
    return {
        "definition": RIG_DEFINITION,
        "methods": {
            s.name: {
                "kind": s.kind,
                "x": s.x_method,
                "y": s.y_method,
                "qualities": {xq: {"x": xq, "y": yq} for xq, yq in s.qualities},
            }
            for s in specs
        },
        "headline": rig_headline(specs),
        "bd_rate": rig_bd_table(specs, records, notes),
        "curves": rd.curves_json(records),
        "records": [dataclasses.asdict(r) for r in records],
        "reference_view_records": [dataclasses.asdict(r) for r in y_records],
    }


def headline_keys(methods: Sequence[LearnedMethod]) -> list[str]:
    """BD-rate keys of each side-information codec against the no-SI codec of its own source."""
    return [f"{si} vs {intra.name}" for si, intras in intra_partners(methods).items() for intra in intras]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def _bd_rows(table: Mapping[str, Mapping[str, float | None]], headline: set[str]) -> list[str]:
    """Markdown rows of a BD-rate table, the headline keys first and in bold."""
    lines = ["| method | reference | BD-rate PSNR | BD-rate MS-SSIM (dB) |", "|---|---|---:|---:|"]
    for key, entry in sorted(table.items(), key=lambda kv: (kv[0] not in headline, kv[0])):
        method, reference = key.split(" vs ", 1)
        cells = [method, reference, _percent(entry.get("psnr")), _percent(entry.get("ms_ssim"))]
        if key in headline:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _curve_rows(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Markdown rows of averaged curves (results.json's ``curves`` form)."""
    lines = [
        "| method | quality | payload bpp | wire bpp | estimated bpp | PSNR (dB) | MS-SSIM |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, points in curves.items():
        for p in points:
            est = "" if p["estimated_bpp"] is None else f"{p['estimated_bpp']:.4f}"
            psnr = "inf" if p["psnr"] is None else f"{p['psnr']:.2f}"
            lines.append(
                f"| {method} | {p['quality']} | {p['payload_bpp']:.4f} | {p['wire_bpp']:.4f} | {est} | "
                f"{psnr} | {p['ms_ssim']:.4f} |"
            )
    return lines


def _rig_markdown(doc: Mapping[str, Any]) -> list[str]:
    """bd_rate.md's rig section: the rig BD-rates and curves, or why there are none."""
    lines = ["", "## Rig: both cameras", ""]
    rig = doc.get("rig")
    if rig is None:
        reason = RIG_SIDE_ORIGINAL if doc["meta"].get("side") == "original" else "No side-information codec ran."
        return [*lines, reason]
    lines += [
        rig["definition"] + " Headline rows (each side-information rig vs both-intra and vs both-HEVC) in bold.",
        "",
        *_bd_rows(rig["bd_rate"], set(rig["headline"])),
        "",
        "### Rig curves (means over pairs; bpp over both views' pixels)",
        "",
        *_curve_rows(rig["curves"]),
    ]
    return lines


def write_bd_markdown(results: Path) -> Path:
    """``bd_rate.md`` next to ``results.json``: the BD-rate table and the averaged curves."""
    doc = json.loads(Path(results).read_text(encoding="utf-8"))
    meta = doc["meta"]
    headline = set(meta.get("headline", []))
    lines = [
        f"# BD-rate: {meta.get('pairs')} ({meta.get('protocol')} protocol, {meta.get('n_images')} images"
        + (", the native mix's held-out pairs)" if meta.get("held_out") else ")"),
        "",
        f"Bjøntegaard delta rate ({meta.get('bd_method')}), rate = {meta.get('rate')} bpp; negative = fewer bits "
        "than the reference at equal quality. MS-SSIM in dB, -10 log10(1 - MS-SSIM). "
        f"Side information: {meta.get('side')} y. Headline rows (side information vs no side information, "
        "same source) in bold.",
        "",
        *_bd_rows(doc["bd_rate"], headline),
        "",
        "## Curves (means over images)",
        "",
        *_curve_rows(doc["curves"]),
    ]
    if any(m.get("uses_side_info") for m in meta.get("methods", {}).values()):
        lines += _rig_markdown(doc)
    if meta.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in meta["notes"])]
    path = Path(results).with_name("bd_rate.md")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_plots(
    curves: Mapping[str, Sequence[rd.CurvePoint]], learned: Sequence[str], anchors: Sequence[str], out: Path, title: str
) -> None:
    """RD plots into ``out``: zoomed to ``PLOT_ZOOM`` x the learned codecs' highest bpp when anchors ran
    (their sweeps reach several bpp), the whole range under ``out/full_range``."""
    learned_bpp = [p.payload_bpp for m in learned for p in curves.get(m, [])]
    if learned_bpp and anchors:
        zoom = PLOT_ZOOM * max(learned_bpp)
        plot_rd_curves(curves, out, anchors, title=title, max_bpp=math.ceil(zoom * 20) / 20)
        plot_rd_curves(curves, out / "full_range", anchors, title=title)
    else:
        plot_rd_curves(curves, out, anchors, title=title)


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
    held_out: bool = False,
    reference_above: int = 0,
) -> Path:
    """Evaluate ``models`` (bundles or checkpoints) and the anchors ``codecs`` (None: all that run
    here) on ``pairs``; write results, tables and plots into ``out``; return the results.json path.

    ``held_out``: only the pairs of the native mix's held-out split (``load_pairs``). With
    ``side="decoded"`` results.json gets a ``rig`` section (both cameras: ``rig_section``) and
    ``out/rig/`` its RD plots; the anchors then also code the reference views. ``reference_above``: see
    ``code_learned``.
    Options are checked before any coding starts, so a typo fails in a second, not after the anchors.
    """
    if side not in SIDE_MODES:
        raise ConfigError(f"--side {side!r}: use 'original' (the papers' protocol) or 'decoded' (deployment)")
    anchors = available_anchors(codecs)
    requested = list(ANCHOR_NAMES) if codecs is None else list(codecs)
    skipped = [n for n in requested if n not in {a.name for a in anchors}]
    eval_pairs = load_pairs(pairs, protocol, frames, max_images, both_directions, held_out)
    win = ms_ssim_window(eval_pairs) if protocol == "native" else 7
    notes = [f"anchor {n} skipped: its codec does not run here (see the log)" for n in skipped]
    out = Path(out)
    with contextlib.ExitStack() as stack:
        methods = open_methods(models, sorted({p.x.shape[:2] for p in eval_pairs}), stack)
        if not methods and not anchors:
            raise ConfigError("nothing to evaluate: give --model and/or --codecs")
        coder = LearnedCoder()
        learned = code_learned(methods, eval_pairs, coder, side, win, progress, reference_above)
        records = learned.records + rd.run_anchors([(p.name, p.x) for p in eval_pairs], anchors, progress, win)
        anchor_names = [a.name for a in anchors]
        table = build_bd_table(records, anchor_names, methods, notes)
        sections: dict[str, Any] = {}
        rig: list[Record] = []
        if learned.side_of:  # side="decoded": what the reference camera's bytes cost the rig
            specs = rig_specs(learned, methods, anchors)
            y_records = learned.side_records + rd.run_anchors(
                [(p.name, p.side) for p in eval_pairs], anchors, progress, win
            )
            sizes = {p.name: (p.x.shape[0], p.x.shape[1]) for p in eval_pairs}
            rig = rig_records(specs, records, y_records, sizes)
            sections["rig"] = rig_section(specs, rig, y_records, notes)
        meta: dict[str, Any] = {
            "pairs": str(pairs),
            "protocol": protocol,
            "frames": frames,
            "held_out": held_out,
            "both_directions": both_directions,
            "n_images": len(eval_pairs),
            "images": [p.name for p in eval_pairs],
            "image_size": list(eval_pairs[0].x.shape[:2]) if len({p.x.shape for p in eval_pairs}) == 1 else None,
            "side": side,
            "side_note": "original: x decoded with the original y (the papers' protocol); decoded: with y coded by "
            "the intra codec of the same source at the nearest lambda (deployment)",
            "side_decoded_with": learned.side_used(),
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
    path = rd.write_results(out, records, table, meta, sections)
    title = f"{Path(pairs).name}, {protocol} protocol, {len(eval_pairs)} images"
    write_plots(rd.aggregate(records), [m.name for m in methods], anchor_names, out, title)
    if rig:
        rig_anchors = [rig_name(a, a) for a in anchor_names]
        rig_learned = [n for n, e in sections["rig"]["methods"].items() if e["kind"] != "anchor"]
        write_plots(rd.aggregate(rig), rig_learned, rig_anchors, out / "rig", f"{title}: rig (both cameras)")
    write_bd_markdown(path)
    log.info("results in %s", path)
    return path
