"""The host service in process: what `HostService` costs around the decoder.

`HostService.from_config` builds the service (the bundle's decoders, warmed up at the workload's size;
pairing by seq; the frame-log sink on, the PNG sink off) with a receiver that never receives: this
script feeds packed frames to ``service.handle`` itself, a reference and then its dependent (seq
numbers rising, as from a rig), and a callback sink collects every `DecodedFrame` with the decoder's
own stage timings. Per pair:

    handle   = wall time of handle(reference) + handle(dependent)
    decode   = the decoder's stages of both frames (DecodedFrame.timings: entropy + graph)
    overhead = handle - decode: unpack + CRC + bounds and bundle checks, admission, gap count, pairing,
               the reference cache, the symbols' sha256 and the frame-log line, the statistics, and
               the decoder's own checks outside its timed stages
    share    = overhead / decode

and the service's own per-stage latency statistics (`HostService.stats`: parse, decode, decode_entropy,
decode_graph, total = receipt to delivery), as its stats file and metrics report them. The frames are
encoded once, untimed, with the bundle's quality-0 codecs. Writes ``benchmarks/results/service.json``.

    python benchmarks/bench_service.py [--frames 30] [--warmup 1] [--bundle PATH] [--drive KITTI_DRIVE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: no BLAS thread pool fighting onnxruntime

import tempfile
import time
from typing import Any

import numpy as np

import common
from stereodsc.bundle import Bundle
from stereodsc.codec import EdgeEncoder
from stereodsc.host_decoder.config import HostConfig, HostSection, SinkSection
from stereodsc.host_decoder.service import HostService, InProcessReceiver
from stereodsc.host_decoder.sinks import DecodedFrame


def packed_pairs(bundle: Bundle, pairs: list[common.Pair], count: int) -> list[tuple[bytes, bytes]]:
    """`count` packed (reference, dependent) frames with seq 0.., cycling through `pairs` (encoded once)."""
    encoders = [EdgeEncoder(bundle, role, common.QUALITY) for role in ("intra", "side_info")]
    encoded = [[enc.encode(pair[camera]) for pair in pairs] for camera, enc in enumerate(encoders)]
    out = []
    for seq in range(count):
        ref, dep = (
            enc.frame(encoded[camera][seq % len(pairs)], rig_id=1, camera_id=camera, seq=seq, t_capture_ns=seq)
            for camera, enc in enumerate(encoders)
        )
        out.append((ref.pack(), dep.pack()))
    for enc in encoders:
        enc.close()
    return out


def bench_size(bundle: Bundle, work: common.Workload, frames: int, warmup: int) -> dict[str, Any]:
    pairs = packed_pairs(bundle, work.pairs, warmup + frames)
    delivered: list[DecodedFrame] = []
    frame_log = tempfile.NamedTemporaryFile(prefix="bench_service_", suffix=".jsonl")  # noqa: SIM115
    cfg = HostConfig(
        host=HostSection(bundle=str(bundle.path), warm_sizes=[work.name]),
        sinks=SinkSection(frame_log=frame_log.name),
    )
    load_before = common.load1()
    service = HostService.from_config(cfg, [delivered.append], receiver=InProcessReceiver())
    handle, decode, overhead = [], [], []
    try:
        for i, (ref, dep) in enumerate(pairs):
            before = len(delivered)
            t0 = time.perf_counter()
            service.handle(ref, time.monotonic())
            service.handle(dep, time.monotonic())
            t1 = time.perf_counter()
            out = delivered[before:]
            if len(out) != 2 or not out[1].side_info_used:
                raise RuntimeError(f"pair {i}: the service delivered {len(out)} frames, expected 2 paired")
            if i < warmup:
                continue
            decode_s = sum(sum(d.timings.values()) for d in out)
            handle.append(t1 - t0)
            decode.append(decode_s)
            overhead.append(t1 - t0 - decode_s)
        stats = service.stats.as_dict()
    finally:
        service.close()
        frame_log.close()
    share = [o / d for o, d in zip(overhead, decode, strict=True)]
    return {
        "size": work.name,
        "frames": work.note,
        "pairs": frames,
        "load_avg_1min_before": load_before,
        "handle_pair": common.summary(handle),
        "decode_pair": common.summary(decode),
        "overhead_pair": common.summary(overhead),
        "overhead_share_of_decode_median": round(float(np.median(share)), 5),
        "service_latency": stats["latency"],
        "service_latency_note": "HostService.stats percentiles (warm-up pairs included): parse = unpack + "
        "checks, decode = the decoder's stages, total = receipt to delivery (sinks included)",
        "decoded_reference": stats["decoded_reference"],
        "decoded_with_side_info": stats["decoded_with_side_info"],
    }


def print_table(sizes: list[dict[str, Any]]) -> None:
    print(f"\n{'size':>9} {'handle':>8} {'decode':>8} {'overhead':>9} {'share':>7} {'parse':>7} {'total p50':>9}")
    for s in sizes:
        lat = s["service_latency"]
        cells = (s["size"], *(common.med(s[k]) for k in ("handle_pair", "decode_pair", "overhead_pair")))
        print("{:>9} {:>8.2f} {:>8.2f} {:>9.3f}".format(*cells), end="")
        share = 100 * s["overhead_share_of_decode_median"]
        print(f" {share:>6.2f}% {lat['parse']['p50_ms']:>7.3f} {lat['total']['p50_ms']:>9.2f}")
    print("  (ms per stereo pair, medians; parse and total: the service's own p50 per frame)")


def main() -> None:
    common.run_sizes(
        "service",
        "HostService.handle in process: overhead around HostDecoder.decode",
        __doc__,
        bench_size,
        print_table,
        {
            "service": "HostService.from_config: default [pairing] (seq, latest_reference), frame-log sink on, "
            "PNG sink off, decoders at onnxruntime's default thread count; frames handed to handle()",
            "overhead_definition": "overhead_pair = handle(ref) + handle(dep) wall time minus both frames' "
            "DecodedFrame.timings (entropy + graph); share = overhead / decode, per pair",
        },
    )


if __name__ == "__main__":
    main()
