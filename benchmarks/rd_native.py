"""Rate-distortion at native size on the held-out pairs of the native mix's four data sets, with the rig.

For each data set of ``MIX_SOURCES`` under ../shared/data (the KITTI raw drive's last 20 frames,
KITTI odometry seq09/seq10, Middlebury Playroom and Vintage, SID City_Rain_Day_013: the pairs the
native-scale models never trained on) runs ``stereodsc eval --held-out --protocol native --side
decoded`` (the side image is the reference view as the intra codec decoded it, what a host has)
into ``benchmarks/results/rd_native/<source>/``, then writes ``summary.md`` and ``summary.json``:
per data set, over all held-out pairs pooled, and as the mean of the data sets' BD-rates, for each
side-information codec, the issue's targets marked met / not met:

- dependent camera: BD-rate vs the intra codec (same source) <= -25 % in PSNR and in MS-SSIM;
- rig (both cameras): BD-rate vs both-intra <= -12 % and below 0 vs both-HEVC, in both metrics;
- anchors: the best side-information codec below 0 vs HEVC and AVIF in MS-SSIM, and vs JPEG 2000 in
  PSNR and MS-SSIM (its x only, as in the papers).

Skips with a message when ../shared/data is absent.

    python benchmarks/rd_native.py                                     # shipped bundles, all anchors here
    python benchmarks/rd_native.py --model /tmp/bundle_native --model default
    python benchmarks/rd_native.py --max-images 1 --codecs jpeg --out /tmp/rd_native   # smoke run
    python benchmarks/rd_native.py --summary-only                      # re-summarise existing results
    python benchmarks/rd_native.py --reference-above 1 --out benchmarks/results/rd_native_reference_above
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stereodsc.bundle import load_bundle
from stereodsc.bundles import resolve_bundle, shipped_bundles
from stereodsc.errors import StereoDSCError
from stereodsc.eval.rd import Record, bd_rate_table
from stereodsc.eval.run import rig_name, run_eval
from stereodsc.train.datasets import MIX_SOURCES

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "results" / "rd_native"
METRICS = ("psnr", "ms_ssim")
DEPENDENT_TARGET = -25.0  # percent, vs the intra codec, both metrics
RIG_TARGET = -12.0  # percent, vs both-intra, both metrics
TARGETS = {
    "dependent": f"dependent camera: BD-rate vs the intra codec <= {DEPENDENT_TARGET:g} % in PSNR and MS-SSIM",
    "rig": f"rig: BD-rate vs both-intra <= {RIG_TARGET:g} % and < 0 vs both-HEVC, in PSNR and MS-SSIM",
    "anchors": "best side-information codec: BD-rate < 0 vs HEVC and AVIF in MS-SSIM, vs JPEG 2000 in PSNR and MS-SSIM",
}
POOLED, MEAN = "all (pooled)", "mean of data sets"

BD = dict[str, float | None]  # metric -> BD-rate in percent (None: not computable or not run)


def native_models() -> tuple[list[Path], list[str]]:
    """The shipped bundles whose graphs all run at any size, and notes on those left out (DSIN's
    host graph is fixed at 128x256: the native images have several sizes)."""
    models, notes = [], []
    for name, folder in shipped_bundles().items():
        bundle = load_bundle(folder)
        fixed = [
            role
            for role, codec in bundle.codecs.items()
            if not all(g.dynamic for q in codec.qualities for g in q.graphs.values())
        ]
        if fixed:
            notes.append(f"shipped bundle {name!r} left out: its {', '.join(fixed)} graphs run at fixed sizes only")
        else:
            models.append(folder)
    return models, notes


def status(values: Sequence[float | None], ok: Callable[[float], bool]) -> str:
    """'met' when every value is there and passes, 'not met' when one that is there fails, else 'n/a'."""
    if any(v is not None and not ok(v) for v in values):
        return "not met"
    return "met" if all(v is not None for v in values) else "n/a"


def _records(entries: Sequence[Mapping[str, Any]], prefix: str) -> list[Record]:
    """Records from results.json (a lossless PSNR is written null: inf), images prefixed by data set."""
    fields = {f.name for f in dataclasses.fields(Record)}
    out = []
    for e in entries:
        values = {k: e[k] for k in fields}
        values["psnr"] = math.inf if values["psnr"] is None else values["psnr"]
        values["image"] = f"{prefix}/{values['image']}"
        out.append(Record(**values))
    return out


def _bd(records: Sequence[Record], method: str, reference: str) -> BD:
    """BD-rate of ``method`` against ``reference`` on pooled records (None where it cannot be computed)."""
    chosen = [r for r in records if r.method in (method, reference)]
    if not any(r.method == method for r in chosen) or not any(r.method == reference for r in chosen):
        return dict.fromkeys(METRICS)
    return dict(bd_rate_table(chosen, [reference], notes=[])[f"{method} vs {reference}"])


class View:
    """The records one summary row is computed from: one data set's, or every data set's pooled."""

    def __init__(self, docs: Mapping[str, Mapping[str, Any]]) -> None:
        self.x = [r for key, d in docs.items() for r in _records(d["records"], key)]
        self.rig = [r for key, d in docs.items() if "rig" in d for r in _records(d["rig"]["records"], key)]


def method_row(view: View, si: str, intra: str) -> dict[str, Any]:
    """One side-information codec's BD-rates and target marks on one view."""
    rig, both_intra, both_hevc = rig_name(si, intra), rig_name(intra, intra), rig_name("hevc", "hevc")
    row: dict[str, Any] = {
        "intra": intra,
        "dependent_vs_intra": _bd(view.x, si, intra),
        "rig_vs_both_intra": _bd(view.rig, rig, both_intra),
        "rig_vs_both_hevc": _bd(view.rig, rig, both_hevc),
        "vs_hevc": _bd(view.x, si, "hevc"),
        "vs_avif": _bd(view.x, si, "avif"),
        "vs_jpeg2000": _bd(view.x, si, "jpeg2000"),
    }
    return {**row, "targets": marks(row)}


def combine(*parts: str) -> str:
    """Marks of the parts of one target: not met if one is, met if all are, else n/a."""
    if "not met" in parts:
        return "not met"
    return "met" if all(p == "met" for p in parts) else "n/a"


def marks(row: Mapping[str, Any]) -> dict[str, str]:
    """The three targets of one row (see TARGETS)."""
    dep, rig_i, rig_h = row["dependent_vs_intra"], row["rig_vs_both_intra"], row["rig_vs_both_hevc"]
    return {
        "dependent": status([dep[m] for m in METRICS], lambda v: v <= DEPENDENT_TARGET),
        "rig": combine(
            status([rig_i[m] for m in METRICS], lambda v: v <= RIG_TARGET),
            status([rig_h[m] for m in METRICS], lambda v: v < 0),
        ),
        "anchors": status(
            [row["vs_hevc"]["ms_ssim"], row["vs_avif"]["ms_ssim"], *(row["vs_jpeg2000"][m] for m in METRICS)],
            lambda v: v < 0,
        ),
    }


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of the data sets' BD-rates (None if any is missing)."""
    out: dict[str, Any] = {"intra": rows[0]["intra"]}
    for key in ("dependent_vs_intra", "rig_vs_both_intra", "rig_vs_both_hevc", "vs_hevc", "vs_avif", "vs_jpeg2000"):
        out[key] = {}
        for m in METRICS:
            values = [r[key][m] for r in rows]
            out[key][m] = None if any(v is None for v in values) else sum(values) / len(values)
    return {**out, "targets": marks(out)}


def best_side_info(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The side-information codec that meets the anchor target (else the one lowest vs HEVC in MS-SSIM)."""
    if not methods:
        return {"method": None, "anchors": "n/a"}
    meeting = [m for m, row in methods.items() if row["targets"]["anchors"] == "met"]

    def vs_hevc(m: str) -> float:
        value = methods[m]["vs_hevc"]["ms_ssim"]
        return math.inf if value is None else value

    best = meeting[0] if meeting else min(methods, key=vs_hevc)
    return {"method": best, "anchors": methods[best]["targets"]["anchors"]}


def side_info_methods(doc: Mapping[str, Any]) -> dict[str, str]:
    """Side-information method -> the intra codec that coded its reference view (the rig's pairing)."""
    rig = doc.get("rig", {}).get("methods", {})
    return {e["x"]: e["y"] for e in rig.values() if e["kind"] == "side_info"}


def summarize(results: Mapping[str, Path], out: Path, notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """summary.json and summary.md in ``out`` from each data set's results.json."""
    docs = {key: json.loads(path.read_text(encoding="utf-8")) for key, path in results.items()}
    pairing: dict[str, str] = {}
    for doc in docs.values():
        pairing.update(side_info_methods(doc))
    views = {key: View({key: doc}) for key, doc in docs.items()}
    if len(docs) > 1:
        views[POOLED] = View(docs)
    rows: dict[str, dict[str, Any]] = {}
    for name, view in views.items():
        rows[name] = {si: method_row(view, si, intra) for si, intra in pairing.items()}
    if len(docs) > 1:
        rows[MEAN] = {si: mean_row([rows[key][si] for key in docs]) for si in pairing}
    summary = {
        "benchmark": "rd_native",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": TARGETS,
        "notes": list(notes),
        "sources": {
            key: {
                "results": str(results[key]),
                "pairs": doc["meta"]["pairs"],
                "images": doc["meta"]["images"],
                "anchors": [m for m, e in doc["meta"]["methods"].items() if e.get("kind") == "anchor"],
                "anchors_skipped": doc["meta"].get("anchors_skipped", []),
                "models": sorted({e["source"] for e in doc["meta"]["methods"].values() if e.get("kind") == "learned"}),
            }
            for key, doc in docs.items()
        },
        "rows": {
            name: {"methods": methods, "best_side_info": best_side_info(methods)} for name, methods in rows.items()
        },
    }
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path = out / "summary.md"
    md_path.write_text(markdown(summary), encoding="utf-8")
    return json_path, md_path


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f} %"


def markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: the targets, then per side-information codec the rows by data set."""
    sources = summary["sources"]
    first: Mapping[str, Any] = next(iter(sources.values()), {})
    lines = [
        "# Native-scale rate-distortion on the held-out pairs of the native mix",
        "",
        "Native size, `--side decoded` (x decoded with the reference view as the intra codec decoded it), payload "
        "bpp, pchip BD-rate (negative: fewer bits at equal quality; MS-SSIM in dB). Rig: both cameras (x by the "
        "side-information codec + y by the intra codec that decoded its side image; both-intra and both-anchor "
        "code both views alike), bytes of both views over both images' pixels, mean of the views' qualities. "
        f"'{POOLED}': every held-out pair of every data set in one curve; '{MEAN}': the mean of the data sets' "
        "BD-rates.",
        "",
        f"Models: {', '.join(first.get('models', [])) or 'none'}. Anchors: {', '.join(first.get('anchors', []))}"
        + (f" (skipped here: {', '.join(first['anchors_skipped'])})" if first.get("anchors_skipped") else "")
        + ".",
        "",
        "| data set | pairs (x) |",
        "|---|---|",
        *(f"| {key} | {', '.join(s['images'])} |" for key, s in sources.items()),
        "",
        "Targets:",
        "",
        *(f"- {t}" for t in summary["targets"].values()),
        "",
        "n/a: the reference did not run here (an anchor missing from this machine, or --codecs), or the curves "
        "share no quality range (each data set's bd_rate.md notes say which); a target with an n/a part and no "
        "failing part is n/a.",
    ]
    rows: Mapping[str, Any] = summary["rows"]
    first_row: Mapping[str, Any] = next(iter(rows.values()), {})
    for si, entry in first_row.get("methods", {}).items():
        intra = entry["intra"]
        lines += [
            "",
            f"## {si} (dependent camera) with {intra} (reference camera)",
            "",
            "| data set | vs intra PSNR | vs intra MS-SSIM | dependent | rig vs both-intra PSNR | MS-SSIM | "
            "rig vs both-HEVC PSNR | MS-SSIM | rig |",
            "|---|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        for name, row in rows.items():
            r = row["methods"][si]
            dep, ri, rh = r["dependent_vs_intra"], r["rig_vs_both_intra"], r["rig_vs_both_hevc"]
            lines.append(
                f"| {name} | {_pct(dep['psnr'])} | {_pct(dep['ms_ssim'])} | {r['targets']['dependent']} | "
                f"{_pct(ri['psnr'])} | {_pct(ri['ms_ssim'])} | {_pct(rh['psnr'])} | {_pct(rh['ms_ssim'])} | "
                f"{r['targets']['rig']} |"
            )
        lines += [
            "",
            f"{si} (x only) vs the anchors:",
            "",
            "| data set | vs HEVC MS-SSIM | vs AVIF MS-SSIM | vs JPEG 2000 PSNR | vs JPEG 2000 MS-SSIM | anchors |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, row in rows.items():
            r = row["methods"][si]
            lines.append(
                f"| {name} | {_pct(r['vs_hevc']['ms_ssim'])} | {_pct(r['vs_avif']['ms_ssim'])} | "
                f"{_pct(r['vs_jpeg2000']['psnr'])} | {_pct(r['vs_jpeg2000']['ms_ssim'])} | {r['targets']['anchors']} |"
            )
    lines += [
        "",
        "## Best side-information codec vs the anchors",
        "",
        "| data set | codec | anchors target |",
        "|---|---|---|",
        *(f"| {n} | {r['best_side_info']['method']} | {r['best_side_info']['anchors']} |" for n, r in rows.items()),
    ]
    if summary["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in summary["notes"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        help="shipped bundle name, bundle folder or checkpoint; repeatable (default: the shipped bundles that run "
        "at any size)",
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the folder holding the mix's data sets")
    parser.add_argument("--source", action="append", choices=list(MIX_SOURCES), help="default: all four")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N held-out pairs per data set")
    parser.add_argument("--codecs", help="comma-separated anchors; default: all that run here; '' for none")
    parser.add_argument(
        "--reference-above",
        type=int,
        default=0,
        metavar="N",
        help="code the reference camera N intra qualities above the matching one (stereodsc eval --reference-above)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"default {OUT.relative_to(REPO)}")
    parser.add_argument("--summary-only", action="store_true", help="re-summarise the results already in --out")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keys = args.source or list(MIX_SOURCES)
    notes: list[str] = []
    if args.summary_only:
        results = {k: args.out / k / "results.json" for k in keys if (args.out / k / "results.json").is_file()}
        if not results:
            print(f"error: no results.json under {args.out}/<source>/; run without --summary-only", file=sys.stderr)
            return 2
        previous = args.out / "summary.json"
        if previous.is_file():  # the run's notes (bundles left out, data sets skipped)
            notes = json.loads(previous.read_text(encoding="utf-8")).get("notes", [])
    else:
        if not args.data.is_dir():
            print(
                f"skipped: no data at {args.data} (put the native mix's data sets under ../shared/data or pass --data)"
            )
            return 0
        try:
            if args.model:
                models = [resolve_bundle(m) for m in args.model]
            else:
                models, notes = native_models()
        except StereoDSCError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        codecs = None if args.codecs is None else [c.strip() for c in args.codecs.split(",") if c.strip()]
        results = {}
        for key in keys:
            folder = args.data / MIX_SOURCES[key].folder
            if not folder.is_dir():
                notes.append(f"{key} skipped: no {folder}")
                print(f"skipped {key}: no {folder}")
                continue
            results[key] = run_eval(
                models,
                folder,
                protocol="native",
                codecs=codecs,
                out=args.out / key,
                max_images=args.max_images,
                progress=not args.quiet,
                side="decoded",
                held_out=True,
                reference_above=args.reference_above,
            )
        if not results:
            print(f"skipped: none of the data sets is under {args.data}")
            return 0
    json_path, md_path = summarize(results, args.out, notes)
    print(md_path.read_text(encoding="utf-8"))
    print(f"summary: {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
