"""Rate-distortion of the shipped models on the held-out KITTI frames, against every anchor.

Held out: the last 20 frames of the KITTI raw drive at ../shared/data (training never sees them).
x = right camera, y = left camera (the original y, the papers' protocol; ``--side decoded`` for the
deployed one). Runs the paper protocol (128x256) and the native frame, each into
``benchmarks/results/rd_kitti_<protocol>/``: results.json, bd_rate.md, RD plots. Skips with a
message when the drive is absent.

    python benchmarks/rd_kitti.py                                   # the shipped bundle, all anchors
    python benchmarks/rd_kitti.py --model /tmp/lead/bundle_current --max-images 2 --codecs jpeg   # smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stereodsc.eval.anchors import ANCHOR_NAMES
from stereodsc.eval.run import PROTOCOLS, run_eval

REPO = Path(__file__).resolve().parents[1]
DRIVE = REPO.parent / "shared" / "data" / "kitti_raw_2011_09_26_drive_0001"
DEFAULT_MODEL = REPO / "src" / "stereodsc" / "bundles" / "default"
HELD_OUT = "-20:"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=Path, help=f"bundle or checkpoint (default {DEFAULT_MODEL})")
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
    models = args.model or [DEFAULT_MODEL]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
