"""Latency of every shipped codec: edge encode (camera board) and host decode, per image size.

For each shipped bundle (`stereodsc models`) and codec, at its middle quality: the median time of
`EdgeEncoder.encode` + `frame().pack()` (1 thread, as on a camera board) and of `HostDecoder.decode`
(2 threads), with the decoded reference as the side image, on KITTI frames at 128x256 (paper
protocol) and 375x1242 (native; only where the codec has graphs for it: DSIN's host graph is per
size). Frames: the bundled sample (paper protocol) and, when ../shared is present, the KITTI drive's
native frames. Writes ``benchmarks/results/models_latency.json``; ``bench_pipeline.py`` measures the
default bundle's stages and the whole pipeline in more detail.

    python benchmarks/bench_models.py [--frames 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from machine import machine_info
from stereodsc.bundle import load_bundle
from stereodsc.bundles import shipped_bundles
from stereodsc.edge_encoder.encoder import EdgeEncoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.errors import StereoDSCError
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.host_decoder.decoder import HostDecoder
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
    results: dict[str, Any] = {}
    for size, pairs in frames(n).items():
        for name, folder in shipped.items():
            bundle = load_bundle(folder)
            for role, codec in bundle.codecs.items():
                q = len(codec.qualities) // 2
                ref_encoder = EdgeEncoder(reference, "intra", q, threads=1)
                ref_decoder = HostDecoder(reference, threads=2)
                encoder = EdgeEncoder(bundle, role, q, threads=1)
                decoder = HostDecoder(bundle, threads=2)
                enc_t, dec_t, nbytes = [], [], []
                try:
                    for i, (left, right) in enumerate([pairs[0], *pairs]):  # the first run warms up
                        ref_frame = ref_encoder.frame(
                            ref_encoder.encode(left), rig_id=1, camera_id=0, seq=i, t_capture_ns=0
                        )
                        side = ref_decoder.decode(ref_frame).image if codec.uses_side_info else None
                        image = right if codec.uses_side_info else left
                        t0 = time.perf_counter()
                        frame = encoder.frame(encoder.encode(image), rig_id=1, camera_id=1, seq=i, t_capture_ns=0)
                        data = frame.pack()
                        t1 = time.perf_counter()
                        decoder.decode(frame, side)
                        t2 = time.perf_counter()
                        if i:
                            enc_t.append(t1 - t0)
                            dec_t.append(t2 - t1)
                            nbytes.append(len(data))
                except StereoDSCError as e:  # e.g. no host graph for this size
                    results[f"{name}/{role}/{size}"] = {"skipped": str(e)}
                    continue
                results[f"{name}/{role}/{size}"] = {
                    "model": codec.model,
                    "quality": q,
                    "frames": len(enc_t),
                    "edge_encode_ms_1_thread": median_ms(enc_t),
                    "host_decode_ms_2_threads": median_ms(dec_t),
                    "frame_bytes_median": int(statistics.median(nbytes)),
                }
                print(f"{name:8s} {role:9s} {codec.model:10s} {size:9s} {results[f'{name}/{role}/{size}']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10, help="timed frames per codec and size")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "models_latency.json")
    args = parser.parse_args()
    doc = {"machine": machine_info(), "medians_of": args.frames, "results": bench(args.frames)}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
