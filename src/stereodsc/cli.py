"""`stereodsc <command>`: one entry point for training, calibration and the demo.

Each command imports what it needs when it runs, so `stereodsc --help` is instant and the
camera-side commands never import torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from stereodsc import __version__
from stereodsc.errors import StereoDSCError

EPILOG = """\
examples:
  stereodsc demo                                   train two tiny codecs on the bundled sample, compare
  stereodsc train --config configs/ndic_kitti.toml train NDIC on a KITTI drive (add --resume to continue)
  stereodsc calibrate --left 'cal/left*.jpg' --right 'cal/right*.jpg' --board 9x6 --square 0.025 -o rig.toml
  stereodsc calibrate --check rig.toml --left L.png --right R.png -o check.png
  stereodsc calibrate --import-kitti calib_cam_to_cam.txt -o rig.toml

every command has its own --help.
"""


def cmd_train(args: argparse.Namespace) -> int:
    from stereodsc.train.config import load_config
    from stereodsc.train.loop import train

    cfg = load_config(args.config)
    trainer = train(cfg, resume=args.resume, progress=not args.quiet)
    val = {"loss": float("nan"), "bpp": float("nan"), "psnr": float("nan"), "ms_ssim": float("nan")}
    val.update(trainer.metrics.get("val", {}))
    print(
        f"step {trainer.step}: val loss {val['loss']:.4f}, bpp {val['bpp']:.4f}, PSNR {val['psnr']:.2f} dB, "
        f"MS-SSIM {val['ms_ssim']:.4f}; checkpoints in {trainer.out_dir}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stereodsc.demo import run_demo

    return run_demo(out=Path(args.out), steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stereodsc",
        description="Compress each camera's frame on its own board; decode it on the host with another "
        "camera's frame as side information (DSIN, NDIC, NDIC-CAM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"stereodsc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a codec from a TOML config",
        description="Train a codec. The config names the model, the data and the rate point; "
        "see configs/*.toml. Checkpoints and metrics.jsonl go to [train] out.",
    )
    t.add_argument("--config", required=True, help="TOML file with [model], [data], [train] sections")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser(
        "demo",
        help="run the demo on the bundled sample",
        description="Train a no-side-information codec and a side-information codec (NDIC) "
        "briefly on the bundled KITTI sample and compare them on held-out frames.",
    )
    d.add_argument(
        "--out", default="runs/demo", help="folder for checkpoints and metrics (default runs/demo)"
    )
    d.add_argument("--steps", type=int, default=300, help="training steps per model (default 300)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except StereoDSCError as e:
        print(f"stereodsc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stereodsc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
