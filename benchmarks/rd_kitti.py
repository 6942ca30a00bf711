"""Rate-distortion of the shipped models on the held-out KITTI frames, against every anchor.

Held out: the last 20 frames of the KITTI raw drive at ../shared/data (training never sees them).
x = right camera, y = left camera (the original y, the papers' protocol; ``--side decoded`` for the
deployed one). Runs the paper protocol (128x256) and the native frame, each into
``benchmarks/results/rd_kitti_<protocol>/``: results.json, bd_rate.md, RD plots, and
vs_hevc_range.md: BD-PSNR and BD-MS-SSIM against HEVC intra within 0.02-0.2 bpp (issue 6's target
range). Skips with a message when the drive is absent.

    python benchmarks/rd_kitti.py                                   # the shipped bundles, all anchors
    python benchmarks/rd_kitti.py --model src/stereodsc/bundles/default --model runs/ndic_cam_kitti*/latest.pt
    python benchmarks/rd_kitti.py --model /tmp/lead/bundle_current --max-images 2 --codecs jpeg   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from stereodsc.bundles import shipped_bundles
from stereodsc.eval.anchors import ANCHOR_NAMES
from stereodsc.eval.bdrate import BDRateError, bd_quality
from stereodsc.eval.run import PROTOCOLS, run_eval

REPO = Path(__file__).resolve().parents[1]
DRIVE = REPO.parent / "shared" / "data" / "kitti_raw_2011_09_26_drive_0001"
HELD_OUT = "-20:"
TARGET_RANGE = (0.02, 0.2)  # bpp


def vs_hevc_in_range(results: Path, rate_range: tuple[float, float] = TARGET_RANGE) -> Path:
    """vs_hevc_range.md beside results.json: each learned method's mean quality gain over HEVC intra at
    equal payload rate, within `rate_range` (where both curves reach), in PSNR dB and MS-SSIM dB."""
    doc = json.loads(results.read_text(encoding="utf-8"))
    curves, methods = doc["curves"], doc["meta"]["methods"]
    lines = [
        f"# Learned codecs vs HEVC intra 4:4:4 within {rate_range[0]}-{rate_range[1]} bpp (payload)",
        "",
        "Mean quality difference at equal rate (BD-PSNR, BD-MS-SSIM in dB), pchip over log rate, within the "
        "range and where both curves have points; positive: the learned codec is better.",
        "",
        "| method | rates compared (bpp) | BD-PSNR (dB) | BD-MS-SSIM (dB) |",
        "|---|---|---:|---:|",
    ]
    hevc = curves.get("hevc")
    for name, info in methods.items():
        if info.get("kind") == "anchor" or name not in curves or hevc is None:
            continue
        a = curves[name]
        rates = [[p["payload_bpp"] for p in c] for c in (a, hevc)]
        lo = max(rate_range[0], *(min(r) for r in rates))
        hi = min(rate_range[1], *(max(r) for r in rates))
        cells = []
        for key in ("psnr", "ms_ssim_db"):
            try:
                value = bd_quality(
                    [p["payload_bpp"] for p in a],
                    [p[key] for p in a],
                    [p["payload_bpp"] for p in hevc],
                    [p[key] for p in hevc],
                    rate_range=rate_range,
                )
                cells.append(f"{value:+.2f}")
            except BDRateError as e:
                cells.append(f"n/a ({e})")
        compared = f"{lo:.3f}-{hi:.3f}" if lo < hi else "none"
        lines.append(f"| {name} | {compared} | {cells[0]} | {cells[1]} |")
    out = results.with_name("vs_hevc_range.md")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", action="append", type=Path, help="bundle or checkpoint (default: the shipped bundles)"
    )
    parser.add_argument("--drive", type=Path, default=DRIVE, help="KITTI raw drive folder")
    parser.add_argument("--frames", default=HELD_OUT, help="START:STOP frames (default -20:, the held-out ones)")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N selected images (smoke runs)")
    parser.add_argument("--protocol", choices=PROTOCOLS, action="append", help="default: both")
    parser.add_argument("--codecs", default=",".join(ANCHOR_NAMES), help="comma-separated anchors (default all)")
    parser.add_argument("--side", choices=("original", "decoded"), default="original")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.drive.is_dir():
        print(f"skipped: no KITTI drive at {args.drive} (put it under ../shared/data or pass --drive)")
        return 0
    models = args.model or list(shipped_bundles().values())
    missing = [m for m in models if not m.exists()]
    if missing:
        print(f"error: model(s) not found: {', '.join(map(str, missing))}; pass --model BUNDLE", file=sys.stderr)
        return 2
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    for protocol in args.protocol or PROTOCOLS:
        results = run_eval(
            models,
            args.drive,
            protocol=protocol,
            codecs=codecs,
            out=args.out / f"rd_kitti_{protocol}",
            max_images=args.max_images,
            frames=args.frames,
            side=args.side,
        )
        print(results.with_name("bd_rate.md").read_text(encoding="utf-8"))
        print(vs_hevc_in_range(results).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
