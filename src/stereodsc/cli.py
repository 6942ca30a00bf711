"""`stereodsc <command>`: one entry point for training, calibration and the demo.

Each command imports what it needs when it runs, so `stereodsc --help` is instant and the
camera-side commands never import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from stereodsc import __version__
from stereodsc.errors import StereoDSCError

if TYPE_CHECKING:
    from stereodsc.bundle import Bundle

EPILOG = """\
examples:
  stereodsc demo                                   host + 2 camera nodes on loopback with the bundled sample
  stereodsc demo --native                          the same at the camera's resolution (375x1242)
  stereodsc models                                 the trained bundles that ship: codecs, qualities, measured bpp/PSNR
  stereodsc train --config configs/ndic_kitti.toml train NDIC on a KITTI drive (add --resume to continue)
  stereodsc calibrate --left 'cal/left*.jpg' --right 'cal/right*.jpg' --board 9x6 --square 0.025 -o rig.toml
  stereodsc calibrate --check rig.toml --left L.png --right R.png -o check.png
  stereodsc calibrate --import-kitti calib_cam_to_cam.txt -o rig.toml
  stereodsc keys new rig1_cam1 --dir keys          a CURVE key pair bound to rig 1, camera 1
  stereodsc encode left.png --model default --codec intra -o left.sdf
  stereodsc decode left.sdf -o left_decoded.png    the frame names its bundle: a shipped one is found by id

sizes are written HEIGHTxWIDTH everywhere (e.g. 375x1242); a bundle is a folder or a shipped name
(stereodsc models lists them). Every command has its own --help.
"""


def cmd_train(args: argparse.Namespace) -> int:
    from stereodsc.train.config import load_config
    from stereodsc.train.distributed import launch, leave_worker
    from stereodsc.train.loop import train

    cfg = load_config(args.config, init_from=args.init_from)
    if args.keep_best:
        from stereodsc.train.loop import keep_best

        kept = keep_best(cfg)
        print(
            f"{cfg.train.keep}: the best validated weights of {cfg.train.out}, step {kept['step']} "
            f"(val loss {kept['best_val']:.4f}); commit it, and --resume on a fresh clone continues from there"
        )
        return 0
    # SIGTERM (systemd, a job scheduler, kill) stops like Ctrl-C: a checkpoint first. SIGINT is set
    # explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with launch(cfg.train.device) as dist:  # under torchrun: this process's rank; otherwise the only process
        trainer = train(cfg, resume=args.resume, progress=not args.quiet, dist=dist)
    if dist.is_main:
        val = {"loss": float("nan"), "bpp": float("nan"), "psnr": float("nan"), "ms_ssim": float("nan")}
        val.update(trainer.metrics.get("val", {}))
        print(
            f"step {trainer.step}: val loss {val['loss']:.4f}, bpp {val['bpp']:.4f}, PSNR {val['psnr']:.2f} dB, "
            f"MS-SSIM {val['ms_ssim']:.4f}; checkpoints in {trainer.out_dir}"
        )
    if dist.world > 1:
        leave_worker(0)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from stereodsc import calibration as cal
    from stereodsc.errors import ConfigError

    if args.check:
        if not (args.left and args.right):
            raise ConfigError("--check needs --left IMG and --right IMG (one rectified pair to inspect)")
        out = Path(args.output or "rectification_check.png")
        print(cal.check_rectification(cal.load_rig(args.check), args.left, args.right, out).summary())
        return 0
    if not args.output:
        raise ConfigError("give -o rig.toml: where to write the rig file")
    if args.import_kitti:
        rig = cal.rig_from_kitti(args.import_kitti)
    elif args.import_opencv:
        from stereodsc.codec.geometry import parse_size

        height, width = parse_size(args.size, "--size") if args.size else (0, 0)
        size = (width, height) if args.size else None  # the rig file stores OpenCV's (width, height)
        rig = cal.rig_from_opencv(args.import_opencv, args.extrinsics, image_size=size)
    else:
        if not (args.left and args.right and args.board and args.square):
            raise ConfigError(
                "calibration needs --left GLOB --right GLOB --board COLSxROWS --square SIZE "
                "(or --check / --import-kitti / --import-opencv)"
            )
        report = cal.calibrate_stereo(
            cal.paths_from_glob(args.left),
            cal.paths_from_glob(args.right),
            cal.parse_board(args.board),
            args.square,
            min_views=args.min_views,
            progress=True,
        )
        print(report.summary())
        rig = report.rig
    rig.save_toml(args.output)
    print(f"rig {rig.rig_id} written to {args.output}")
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    from stereodsc.edge_encoder.daemon import run_camera_node

    return run_camera_node(args.config)


def cmd_host(args: argparse.Namespace) -> int:
    from stereodsc.host_decoder.service import run_host_service

    return run_host_service(args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    from stereodsc.demo import run_demo

    return run_demo(out=Path(args.out), frames=args.frames, quality=args.quality, native=args.native)


def cmd_export(args: argparse.Namespace) -> int:
    from stereodsc.codec.geometry import parse_size
    from stereodsc.export import DEFAULT_SIZES, export_bundle

    sizes = [parse_size(s, "--size") for s in args.size] if args.size else list(DEFAULT_SIZES)
    report = export_bundle(
        [Path(c) for c in args.checkpoints],
        Path(args.out),
        sizes=sizes,
        opset=args.opset,
        allow_boundary_flips=not args.strict_symbols,
        weights=args.weights,
        overwrite=args.overwrite,
        progress=not args.quiet,
        licence=Path(args.licence) if args.licence else None,
    )
    print(report.summary())
    return 0


@contextlib.contextmanager
def open_model(name: str, size: tuple[int, int]) -> Iterator[Bundle]:
    """`--model`: a shipped bundle's name, a bundle folder, or a training checkpoint (exported on the
    fly at `size`, which needs torch)."""
    from stereodsc.bundle import load_bundle
    from stereodsc.bundles import resolve_bundle
    from stereodsc.errors import ConfigError

    path = Path(name)
    if not path.is_file():
        yield load_bundle(resolve_bundle(name))
        return
    if importlib.util.find_spec("torch") is None:
        raise ConfigError(
            f"{path} is a training checkpoint: using one needs torch (pip install 'stereodsc[train]'); on a "
            "camera board, export it elsewhere (stereodsc export) and pass the bundle folder or its name"
        )
    from stereodsc.export import open_model as export_on_the_fly

    with export_on_the_fly(path, size) as bundle:
        yield bundle


def cmd_encode(args: argparse.Namespace) -> int:
    from stereodsc.codec.files import encode_file
    from stereodsc.images import read_rgb

    image = Path(args.image)
    with open_model(args.model, read_rgb(image).shape[:2]) as bundle:
        print(encode_file(bundle, args.quality, image, Path(args.output), codec=args.codec))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from stereodsc.bundle import load_bundle
    from stereodsc.bundles import find_shipped
    from stereodsc.codec.files import decode_file, read_frame
    from stereodsc.errors import ConfigError

    frame_path, side, out = Path(args.frame), Path(args.side) if args.side else None, Path(args.output)
    frame = read_frame(frame_path)
    if args.model:
        with open_model(args.model, (frame.height, frame.width)) as bundle:
            print(decode_file(frame_path, frame, bundle, side, out))
        return 0
    found = find_shipped(frame.bundle_id)
    if found is None:
        raise ConfigError(
            f"{frame_path} was encoded with bundle {frame.bundle_id.hex()}..., which does not "
            "ship with this install: pass --model with its bundle folder (or the checkpoint)"
        )
    print(decode_file(frame_path, frame, load_bundle(found), side, out))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stereodsc.bundles import resolve_bundle
    from stereodsc.eval.run import run_eval

    codecs = None if args.codecs is None else [c for c in args.codecs.split(",") if c]
    results = run_eval(
        [resolve_bundle(m) for m in args.model],
        args.pairs,
        protocol=args.protocol,
        codecs=codecs,
        out=args.out,
        visualize=args.visualize,
        max_images=args.max_images,
        progress=not args.quiet,
        frames=args.frames,
        both_directions=args.both_directions,
        side=args.side,
        held_out=args.held_out,
        reference_above=args.reference_above,
    )
    print(f"results: {results}  (BD-rate table: {results.parent / 'bd_rate.md'}; plots: rd_psnr.png, rd_ms_ssim.png)")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from stereodsc.security import new_keypair

    public, secret = new_keypair(args.name, args.dir)
    print(
        f"public key: {public}  (copy it: a camera's goes into the host's [security] allowed_keys folder, the "
        f"host's to every camera as [security] server_public)"
    )
    print(f"secret key: {secret}  (keep it on this machine only: [security] secret / server_secret)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from stereodsc.bundles import describe, folder_bytes, shipped_bundles

    shipped = shipped_bundles()
    if not shipped:
        print("this install ships no bundles; export one with 'stereodsc export'")
        return 1
    for folder in shipped.values():
        print(describe(folder, verify=args.verify))
    total = sum(folder_bytes(f) for f in shipped.values())
    example = next(iter(shipped))
    print(
        f"{len(shipped)} bundles, {total / 1e6:.1f} MB; name one wherever a bundle is taken: "
        f'--model {example} (encode, decode, eval), [codec] bundle = "{example}" (edge), [host] bundle (host), '
        f'stereodsc.encode(image, bundle="{example}")'
    )
    return 0


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a codec. The config names the model, the data and the rate point; "
        "see configs/*.toml.\nCheckpoints and metrics.jsonl go to [train] out.\n\n"
        "  fine-tune a trained model on your rig's recordings (a config whose [data] names them):\n"
        "    stereodsc train --config my_rig.toml --init-from native\n"
        "  (a shipped bundle: the weights of its codec of [model] name nearest [train] lmbda, from weights/)\n"
        "  data-parallel on N processes (gloo on CPUs, NCCL with one GPU per process;\n"
        "  [train] batch_size is the global batch, each process takes batch_size / N):\n"
        "    torchrun --standalone --nproc_per_node N -m stereodsc.cli train --config X.toml",
    )
    t.add_argument("--config", required=True, help="TOML file with [model], [data], [train] sections")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument(
        "--init-from",
        metavar="CKPT",
        action="append",
        help="start from these weights (overrides [train] init_from): a checkpoint file, the name of one in "
        "weights/ (e.g. balle2018_native_l0.05) or a shipped bundle (e.g. native: the weights its codec was "
        "exported from, found in the repository's weights/); ignored when --resume finds a checkpoint of this run. "
        "Given again, each later checkpoint overwrites the tensors it shares with the model ([train] init_then): "
        "--init-from old_dsin.pt --init-from balle2018_native_l0.05 puts a trained SI-Net on a retrained intra codec",
    )
    t.add_argument(
        "--keep-best",
        action="store_true",
        help="write the run's best validated weights ([train] out/best.pt) to [train] keep, compact, and stop: "
        "the file to commit and export when the latest weights are worse than the best",
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser(
        "calibrate",
        help="calibrate a stereo rig from chessboard views, check or import a rig",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Calibrate a stereo rig and write a rig file (TOML) the camera nodes rectify with.\n\n"
        "  from chessboard views:  --left 'cal/left*.jpg' --right 'cal/right*.jpg'\n"
        "                          --board 9x6 --square 0.025 -o rig.toml\n"
        "                          (board = inner corners, columns x rows; square in metres)\n"
        "  check a rig on a pair:  --check rig.toml --left L.png --right R.png -o check.png\n"
        "  import a calibration:   --import-kitti calib_cam_to_cam.txt -o rig.toml\n"
        "                          --import-opencv intrinsics.yml --extrinsics extrinsics.yml --size 640x480",
    )
    c.add_argument("--left", help="glob of left chessboard images (quote it), or one image with --check")
    c.add_argument("--right", help="glob of right chessboard images (quote it), or one image with --check")
    c.add_argument("--board", help="inner corners as COLSxROWS, e.g. 9x6")
    c.add_argument("--square", type=float, help="side of one chessboard square (sets the unit of the baseline)")
    c.add_argument("--min-views", type=int, default=6, help="refuse to calibrate with fewer usable views")
    c.add_argument("--check", metavar="RIG", help="rectify --left/--right with this rig and measure row errors")
    c.add_argument("--import-kitti", metavar="CALIB", help="KITTI calib_cam_to_cam.txt (cameras 02/03)")
    c.add_argument("--import-opencv", metavar="YML", help="OpenCV stereo_calib intrinsics (M1 D1 M2 D2)")
    c.add_argument("--extrinsics", metavar="YML", help="OpenCV stereo_calib extrinsics (R T), with --import-opencv")
    c.add_argument("--size", help="image size HEIGHTxWIDTH for --import-opencv when the file lacks it")
    c.add_argument("-o", "--output", help="rig file to write (or the check image with --check)")
    c.set_defaults(func=cmd_calibrate)

    e = sub.add_parser(
        "edge",
        help="run a camera node: capture, encode, stream to the host",
        description="The camera node daemon. Captures frames (camera, GStreamer pipeline, video, image "
        "folder, KITTI drive or the bundled sample), rectifies them with the rig file, encodes them with "
        "the bundle and streams wire frames to the host over ZeroMQ without ever blocking on it. "
        "See deploy/edge.toml.",
    )
    e.add_argument("--config", required=True, help="TOML with [camera], [codec], [link], [log]")
    e.set_defaults(func=cmd_edge)

    h = sub.add_parser(
        "host",
        help="run the host decoder service",
        description="The host decoder service. Receives wire frames from the camera nodes, validates them, "
        "pairs each dependent frame with its reference frame, decodes both (the dependent with the "
        "reference as side information) and delivers them (PNG files, ZeroMQ PUB). See deploy/host.toml.",
    )
    h.add_argument("--config", required=True, help="TOML with [host], [pairing], [sinks]")
    h.set_defaults(func=cmd_host)

    x = sub.add_parser(
        "export",
        help="split trained checkpoints into edge and host ONNX graphs: a bundle",
        description="Export checkpoints as a deployable bundle: per codec and quality an edge graph (uint8 image "
        "-> int32 symbols), a host graph (symbols [+ side image] -> uint8 image) and integer CDF tables, with "
        "a manifest whose hash is the bundle id every frame carries. Checkpoints without side information "
        "become the reference camera's 'intra' codec, the others the dependent cameras' 'side_info' codec; "
        "qualities are ordered by lambda. Parity of onnxruntime against torch is checked on sample images.",
    )
    x.add_argument("checkpoints", nargs="+", help="checkpoint files (.pt) from stereodsc train")
    x.add_argument("--out", required=True, help="bundle folder to create")
    x.add_argument(
        "--size", action="append", help="image size HEIGHTxWIDTH to verify (repeatable; default 128x256, 375x1242)"
    )
    x.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    x.add_argument(
        "--strict-symbols",
        action="store_true",
        help="fail on any onnxruntime/torch symbol difference, even a rounding-boundary flip",
    )
    x.add_argument(
        "--weights",
        choices=["float16", "float32"],
        default="float16",
        help="storage of the convolution kernels (default float16: half the size, computed in float32; "
        "the graphs are checked against the model with the rounded kernels)",
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    x.add_argument(
        "--licence",
        metavar="FILE",
        help="the weights' licence (e.g. that of the training data), copied into the bundle as LICENSE.txt",
    )
    x.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    x.set_defaults(func=cmd_export)

    en = sub.add_parser(
        "encode",
        help="encode one image into a wire frame file",
        description="Encode IMAGE with a bundle (or a checkpoint, exported on the fly) into one "
        "wire frame, exactly as a camera node sends it.",
    )
    en.add_argument("image", help="PNG/JPEG/... image; its HEIGHTxWIDTH must be one the bundle's graphs run at")
    en.add_argument(
        "--model", default="default", help="shipped bundle name (default: default), bundle folder, or checkpoint"
    )
    en.add_argument("--quality", type=int, default=0, help="quality index (0 = lowest rate; stereodsc models)")
    en.add_argument(
        "--codec",
        choices=("intra", "side_info"),
        help="which codec of a bundle that has both: intra (reference camera) or side_info (dependent camera)",
    )
    en.add_argument("-o", "--output", required=True, help="frame file to write (e.g. frame.sdf)")
    en.set_defaults(func=cmd_encode)

    de = sub.add_parser(
        "decode",
        help="decode a wire frame file into a PNG",
        description="Decode a frame written by 'stereodsc encode' (or captured off the wire). "
        "A frame of a side-information codec needs --side: the other camera's image.",
    )
    de.add_argument("frame", help="frame file written by stereodsc encode")
    de.add_argument(
        "--model",
        help="the bundle (name or folder) or checkpoint it was encoded with; default: the shipped bundle whose "
        "id the frame carries",
    )
    de.add_argument("--side", help="side image (the reference camera's decoded frame), for side_info frames")
    de.add_argument("-o", "--output", required=True, help="image to write: .png (or .ppm, .bmp, .tif: lossless)")
    de.set_defaults(func=cmd_decode)

    ev = sub.add_parser(
        "eval",
        help="rate-distortion evaluation with real bytes against classical codecs",
        description="Encode and decode image pairs with every model (real rANS bytes, the deployed graphs) and "
        "with the classical anchors in the same process; write results.json (per image, method and quality: "
        "bytes, payload/wire/estimated bpp, PSNR, MS-SSIM), a BD-rate table of every method against every "
        "anchor and of each side-information codec against the no-side-information one, and RD plots.",
    )
    ev.add_argument(
        "--model",
        action="append",
        default=[],
        required=True,
        help="shipped bundle name, bundle folder or checkpoint (.pt); repeatable. Checkpoints of one model "
        "config form one curve",
    )
    ev.add_argument(
        "--pairs",
        required=True,
        type=Path,
        help="KITTI raw drive (image_02/image_03) or a folder of <name>_L/<name>_R images; x = right, y = left",
    )
    ev.add_argument(
        "--protocol",
        choices=("paper", "native"),
        default="paper",
        help="paper: crop + resize to 128x256; native: full frame (bpp over original pixels)",
    )
    ev.add_argument(
        "--codecs",
        help="comma-separated anchors (jpeg,jpeg2000,webp,hevc,avif,jpegxl); default: all that run here; '' for none",
    )
    ev.add_argument(
        "--side",
        choices=("original", "decoded"),
        default="original",
        help="side image: the original y (as the papers) or y decoded by the bundle's intra codec; decoded also "
        "prices the rig (both cameras: results.json 'rig', bd_rate.md, rig/ plots)",
    )
    ev.add_argument(
        "--reference-above",
        type=int,
        default=0,
        metavar="N",
        help="with --side decoded: code the reference view N intra qualities above the one trained with the "
        "nearest lambda (a rig may send its reference camera better; the rig figure says whether that pays)",
    )
    ev.add_argument("--frames", help="START:STOP frame range, Python slice rules (-20: = the last 20)")
    ev.add_argument(
        "--held-out",
        action="store_true",
        help="only the pairs the native-scale models never trained on: --pairs must be one of the native mix's "
        "data sets (the drive: its last 20 frames; odometry seq09/seq10; Middlebury Playroom, Vintage; SID "
        "City_Rain_Day_013); replaces --frames (--max-images still applies)",
    )
    ev.add_argument("--max-images", type=int, help="evaluate at most N images")
    ev.add_argument("--both-directions", action="store_true", help="also x = left with y = right")
    ev.add_argument(
        "--visualize",
        action="store_true",
        help="common/private information images (NDIC, NDIC-CAM), DSIN side_syn, correlation-vs-gain plot",
    )
    ev.add_argument("--out", required=True, type=Path, help="output folder")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)

    k = sub.add_parser(
        "keys",
        help="create CURVE key pairs for authenticated, encrypted camera links",
        description="Create a CURVE key pair (NAME.key public, NAME.key_secret private) with ZeroMQ's tools. "
        "The host only accepts cameras whose public key is in its allowed_keys folder; a key named "
        "rig<R>_cam<C> may only send as rig R, camera C (frames under other ids are rejected and counted).",
    )
    k.add_argument("action", choices=("new",), help="new: create a key pair")
    k.add_argument("name", help="file name of the pair: rig<R>_cam<C> for a camera (binds its ids), or 'host'")
    k.add_argument("--dir", default="keys", help="folder to write into (default keys/)")
    k.set_defaults(func=cmd_keys)

    m = sub.add_parser(
        "models",
        help="list the trained bundles that ship with stereodsc",
        description="List the shipped bundles: id, size, codecs, and per quality its lambda and the bpp, PSNR and "
        "MS-SSIM measured on held-out KITTI frames at training (128x256). A config names one by its name.",
    )
    m.add_argument("--verify", action="store_true", help="also check every file against its sha256")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser(
        "demo",
        help="run the demo on the bundled sample",
        description="Start the host service and two camera nodes as processes on loopback, stream the bundled "
        "KITTI sample through them, and report bytes, quality with and without side information, bandwidth "
        "saved and latency. Writes decoded frames, a side-by-side image and demo_report.json.",
    )
    d.add_argument(
        "--out",
        default="runs/demo",
        help="folder for the decoded frames, the side-by-side image and demo_report.json (default runs/demo)",
    )
    d.add_argument(
        "--quality",
        type=int,
        help="quality index for both cameras (default 1, the second-lowest rate; with --native the third-highest)",
    )
    d.add_argument(
        "--native",
        action="store_true",
        help="at the camera's own resolution: the shipped native bundle on a held-out 375x1242 KITTI frame",
    )
    d.add_argument("--frames", type=int, default=12, help="frames per camera (default 12, the whole sample)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):  # the ONNX exporter logs every pass at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
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
