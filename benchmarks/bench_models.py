"""Latency of every shipped codec: edge encode (camera board) and host decode, per image size.

For each shipped bundle (`stereodsc models`) and codec, at its middle quality: the median time of
`EdgeEncoder.encode` + `frame().pack()` (1 thread, as on a camera board) and of `HostDecoder.decode`
(2 threads), with the decoded reference as the side image, on KITTI frames at 128x256 (paper
protocol) and 375x1242 (native; only where the codec has graphs for it: DSIN's host graph is per
size). Frames: the bundled sample (paper protocol) and, when ../shared is present, the KITTI drive's
native frames. Writes ``benchmarks/results/models_latency.json``; ``bench_codec.py`` measures the
default bundle's stages in more detail, ``bench_pipeline.py`` the whole pipeline.

For the native bundle it also measures, in the same run on the same 375x1242 frames, the ratios a rig
cares about (machines differ up to 4x, ratios much less): per quality, the edge encode (1 thread)
against AVIF's encode (libavif speed 6, 1 thread, 4:4:4) at the AVIF level whose rate is nearest,
and the host decode (2 threads) of a dependent frame against the intra codec's decode of the same
frame ("native_ratios"; issue 13 asks for <= 1/4 and <= 2).

    python benchmarks/bench_models.py [--frames 10] [--ratios-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import machine_info
from stereodsc.bundle import load_bundle
from stereodsc.bundles import shipped_bundles
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.errors import StereoDSCError
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.images import read_rgb
from stereodsc.sample import drive_path

REPO = Path(__file__).resolve().parents[1]
DRIVE = REPO.parent / "shared" / "data" / "kitti_raw_2011_09_26_drive_0001"


def frames(n: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Size label -> (left, right) pairs."""
    sample = drive_path()
    pairs = [
        (paper_protocol(read_rgb(a)), paper_protocol(read_rgb(b)))
        for a, b in zip(kitti_frames(sample, "left")[0][:n], kitti_frames(sample, "right")[0][:n], strict=True)
    ]
    out = {"128x256": pairs}
    if DRIVE.is_dir():
        left, right = kitti_frames(DRIVE, "left")[0][-n:], kitti_frames(DRIVE, "right")[0][-n:]
        out["375x1242"] = [(read_rgb(a), read_rgb(b)) for a, b in zip(left, right, strict=True)]
    return out


def median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def bench(n: int) -> dict[str, Any]:
    shipped = shipped_bundles()
    reference = load_bundle(shipped["default"])
    ref_qualities = len(reference.codec("intra").qualities)
    results: dict[str, Any] = {}
    for size, pairs in frames(n).items():
        for name, folder in shipped.items():
            bundle = load_bundle(folder)
            for role, codec in bundle.codecs.items():
                q = len(codec.qualities) // 2
                side_images: list[np.ndarray | None] = [None] * len(pairs)
                if codec.uses_side_info:  # the reference camera's decoded frames, untimed
                    ref_q = min(q, ref_qualities - 1)
                    ref_encoder, ref_decoder = EdgeEncoder(reference, "intra", ref_q), HostDecoder(reference)
                    side_images = [
                        ref_decoder.decode(
                            ref_encoder.frame(ref_encoder.encode(left), rig_id=1, camera_id=0, seq=0, t_capture_ns=0)
                        ).image
                        for left, _ in pairs
                    ]
                encoder = EdgeEncoder(bundle, role, q, threads=1)
                decoder = HostDecoder(bundle, threads=2)
                enc_t, dec_t, nbytes = [], [], []
                key = f"{name}/{role}/{size}"
                try:
                    for i in [0, *range(len(pairs))]:  # the first run warms up
                        image = pairs[i][1] if codec.uses_side_info else pairs[i][0]
                        t0 = time.perf_counter()
                        frame = encoder.frame(encoder.encode(image), rig_id=1, camera_id=1, seq=i, t_capture_ns=0)
                        data = frame.pack()
                        t1 = time.perf_counter()
                        decoder.decode(frame, side_images[i])
                        t2 = time.perf_counter()
                        enc_t.append(t1 - t0)
                        dec_t.append(t2 - t1)
                        nbytes.append(len(data))
                except StereoDSCError as e:  # e.g. no host graph for this size
                    results[key] = {"model": codec.model, "skipped": str(e)}
                    print(f"{key}: skipped ({e})")
                    continue
                results[key] = {
                    "model": codec.model,
                    "quality": q,
                    "frames": len(pairs),
                    "edge_encode_ms_1_thread": median_ms(enc_t[1:]),
                    "host_decode_ms_2_threads": median_ms(dec_t[1:]),
                    "frame_bytes_median": int(statistics.median(nbytes[1:])),
                }
                print(f"{key:28s} {results[key]}")
    return results


AVIF_LEVELS = (10, 30, 50, 70, 90)  # libavif quality levels timed for the rate-matched comparison


def _avif_encode(image: np.ndarray, level: int) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.avif_encode(image, level=level, pixelformat="yuv444", speed=6, numthreads=1))


def _timed(fn: Any, runs: list[Any]) -> tuple[float, list[Any]]:
    """Median seconds of fn over runs (after one untimed warm-up run), and the results."""
    fn(runs[0])
    times, out = [], []
    for arg in runs:
        t0 = time.perf_counter()
        out.append(fn(arg))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def native_ratios(pairs: list[tuple[np.ndarray, np.ndarray]], bundle_name: str = "native") -> dict[str, Any]:
    """Per quality of ``bundle_name``: edge encode / AVIF encode at the nearest rate (both 1 thread), and
    host decode of the dependent frame / the intra codec's host decode of the same frame (2 threads)."""
    bundle = load_bundle(shipped_bundles()[bundle_name])
    pixels = pairs[0][1].shape[0] * pairs[0][1].shape[1]
    avif = {}
    for level in AVIF_LEVELS:
        seconds, data = _timed(lambda img, level=level: _avif_encode(img, level), [right for _, right in pairs])
        avif[level] = {"encode_ms": 1000 * seconds, "bpp": 8 * statistics.mean(len(d) for d in data) / pixels}
    intra, side = bundle.codec("intra"), bundle.codec("side_info")
    decoder = HostDecoder(bundle, threads=2)
    out: dict[str, Any] = {"avif_speed6_1_thread": avif, "qualities": []}
    for q in range(min(len(intra.qualities), len(side.qualities))):
        ref_enc = EdgeEncoder(bundle, "intra", q, threads=1)
        dep_enc = EdgeEncoder(bundle, "side_info", q, threads=1)

        def frame(encoder: EdgeEncoder, image: np.ndarray) -> Any:
            return encoder.frame(encoder.encode(image), rig_id=1, camera_id=1, seq=0, t_capture_ns=0)

        ref_s, ref_frames = _timed(lambda img, e=ref_enc: frame(e, img), [left for left, _ in pairs])
        dep_s, dep_frames = _timed(lambda img, e=dep_enc: frame(e, img), [right for _, right in pairs])
        sides = [decoder.decode(f).image for f in ref_frames]
        intra_dec_s, _ = _timed(decoder.decode, [frame(ref_enc, right) for _, right in pairs])
        dep_dec_s, _ = _timed(lambda args: decoder.decode(*args), list(zip(dep_frames, sides, strict=True)))
        bpp = 8 * statistics.mean(len(f.pack()) for f in dep_frames) / pixels
        level = min(avif, key=lambda lv: abs(avif[lv]["bpp"] - bpp))
        row = {
            "quality": q,
            "dependent_bpp": round(bpp, 4),
            "edge_encode_ms": {"intra": round(1000 * ref_s, 1), "side_info": round(1000 * dep_s, 1)},
            "avif_level_at_nearest_rate": level,
            "edge_over_avif": round(max(ref_s, dep_s) * 1000 / avif[level]["encode_ms"], 3),
            "host_decode_ms": {"intra": round(1000 * intra_dec_s, 1), "side_info": round(1000 * dep_dec_s, 1)},
            "dependent_over_intra_decode": round(dep_dec_s / intra_dec_s, 2),
            "frames": len(pairs),
        }
        out["qualities"].append(row)
        print(f"native q{q}: {row}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10, help="timed frames per codec and size")
    parser.add_argument("--ratios-only", action="store_true", help="only the native bundle's speed ratios")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "models_latency.json")
    args = parser.parse_args()
    doc: dict[str, Any] = {"machine": machine_info(), "medians_of": args.frames}
    if args.out.is_file() and args.ratios_only:
        doc = {**json.loads(args.out.read_text()), **doc}
    if not args.ratios_only:
        doc["results"] = bench(args.frames)
    native = frames(args.frames).get("375x1242")
    if "native" in shipped_bundles() and native:
        doc["native_ratios"] = native_ratios(native)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
