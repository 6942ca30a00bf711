"""Edge encode and host decode per stage, in process, on CPU onnxruntime: what the codec itself costs.

For each size (128x256 paper protocol; the native 375x1242 frame, padded inside the codec) and each
thread setting (1, and onnxruntime's default), with the bundle's quality-0 codecs:

- edge, per codec (reference camera: intra; dependent camera: side_info): the stages the encoder
  reports in ``Encoded.timings`` (graph = padding + edge graph; entropy = rANS of every latent),
  other = ``encode`` minus those (checks, table rows), then the wire frame (``frame()`` + ``pack()``)
  and the camera's optional per-frame audit record (a `FrameRecord` with the symbols' sha256, one
  JSON line written and flushed);
- host, reference frames (no side information) and dependent frames (the decoded reference as the
  side image): ``wire.unpack`` (parse, CRC, bounds checks, bundle check), then the stages the decoder
  reports in ``Decoded.timings`` (entropy = rANS; graph = side padding + host graph + crop) and other
  = ``decode`` minus those.

Encoder and decoder are warmed up through their ``warm_up`` (sessions opened, coder compiled) and
``--warmup`` untimed frames. Writes ``benchmarks/results/codec.json``.

    python benchmarks/bench_codec.py [--frames 30] [--warmup 1] [--bundle PATH] [--drive KITTI_DRIVE]
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
from stereodsc.codec import EdgeEncoder, HostDecoder
from stereodsc.records import FrameRecord
from stereodsc.wire import Frame, unpack

THREADS = {"1": 1, "default": 0}  # label -> EdgeEncoder/HostDecoder(threads=...): 0 is onnxruntime's default


def timed(stages: list[dict[str, float]]) -> dict[str, Any]:
    """Per-stage summaries of a list of {stage: seconds}."""
    return {stage: common.summary(s[stage] for s in stages) for stage in stages[0]}


def bench_edge(
    bundle: Bundle, role: str, threads: int, images: list[np.ndarray], frames: int, warmup: int
) -> tuple[dict[str, Any], list[Frame]]:
    """Per-stage encode times of one codec, and its timed frames (seq 0..) for the host rows."""
    enc = EdgeEncoder(bundle, role, common.QUALITY, threads=threads)
    enc.warm_up(images[0].shape[:2])
    camera = 0 if role == "intra" else 1
    stages, out, payload, wire_bytes = [], [], [], []
    with tempfile.TemporaryFile("w") as audit_log:
        for i in range(warmup + frames):
            seq = max(0, i - warmup)
            t0 = time.perf_counter()
            encoded = enc.encode(images[i % len(images)])
            t1 = time.perf_counter()
            frame = enc.frame(encoded, rig_id=1, camera_id=camera, seq=seq, t_capture_ns=i)
            data = frame.pack()
            t2 = time.perf_counter()
            record = FrameRecord.of(frame, encoded.symbols, encoded.timings, len(data), sent=True)
            audit_log.write(record.to_json() + "\n")
            audit_log.flush()
            t3 = time.perf_counter()
            if i < warmup:
                continue
            graph, entropy = encoded.timings["graph"], encoded.timings["entropy"]
            stages.append(
                {
                    "graph": graph,
                    "entropy": entropy,
                    "other": t1 - t0 - graph - entropy,
                    "encode": t1 - t0,
                    "wire_pack": t2 - t1,
                    "audit_record": t3 - t2,
                    "total": t2 - t0,
                }
            )
            out.append(frame)
            payload.append(encoded.payload_bytes)
            wire_bytes.append(len(data))
    enc.close()
    stats = {
        "codec": role,
        "model": enc.codec.model,
        "stages": timed(stages),
        "frames_per_s": common.per_second(float(np.median([s["total"] for s in stages]))),
        "payload_bytes_median": int(np.median(payload)),
        "wire_bytes_median": int(np.median(wire_bytes)),
        "total": "encode + wire_pack (the audit record is optional, counted apart)",
    }
    return stats, out


def bench_host(
    bundle: Bundle, threads: int, frames: list[Frame], sides: list[np.ndarray] | None, warmup: int
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Per-stage decode times of reference frames (`sides` None) or dependent frames, and the images."""
    dec = HostDecoder(bundle, threads=threads)
    dec.warm_up([(frames[0].height, frames[0].width)])
    packed = [f.pack() for f in frames]
    stages, images, side_used = [], [], []
    for i in range(warmup + len(frames)):
        k = i % len(frames)
        t0 = time.perf_counter()
        frame = unpack(packed[k], expected_bundle=bundle.id_bytes)
        t1 = time.perf_counter()
        decoded = dec.decode(frame, None if sides is None else sides[k])
        t2 = time.perf_counter()
        if i < warmup:
            continue
        entropy, graph = decoded.timings["entropy"], decoded.timings["graph"]
        stages.append(
            {
                "unpack": t1 - t0,
                "entropy": entropy,
                "graph": graph,
                "other": t2 - t1 - entropy - graph,
                "decode": t2 - t1,
                "total": t2 - t0,
            }
        )
        images.append(decoded.image)
        side_used.append(decoded.side_info_used)
    codec = dec.codec_for(frames[0])
    dec.close()
    stats = {
        "frames_of": "reference (no side information)" if sides is None else "dependent (decoded reference as side)",
        "model": codec.model,
        "stages": timed(stages),
        "frames_per_s": common.per_second(float(np.median([s["total"] for s in stages]))),
        "side_info_used": all(side_used),
        "total": "unpack + decode",
    }
    return stats, images


def run_size(bundle: Bundle, work: common.Workload, frames: int, warmup: int) -> dict[str, Any]:
    lefts, rights = [a for a, _ in work.pairs], [b for _, b in work.pairs]
    out: dict[str, Any] = {"size": work.name, "frames": work.note, "load_avg_1min_start": common.load1()}
    for label, threads in THREADS.items():
        ref, ref_frames = bench_edge(bundle, "intra", threads, lefts, frames, warmup)
        dep, dep_frames = bench_edge(bundle, "side_info", threads, rights, frames, warmup)
        host_ref, sides = bench_host(bundle, threads, ref_frames, None, warmup)
        host_dep, _ = bench_host(bundle, threads, dep_frames, sides, warmup)
        out[f"threads_{label}"] = {
            "threads": threads,
            "edge": {"intra": ref, "side_info": dep},
            "host": {"reference": host_ref, "dependent": host_dep},
        }
        print(f"  {work.name}: threads {label} done (load {common.load1()})", flush=True)
    return out


def print_table(sizes: list[dict[str, Any]]) -> None:
    head = ("size", "part", "thr", "graph", "entropy", "other", "wire", "total", "p90", "fps")
    print("\n{:>9} {:<21} {:>7} {:>8} {:>8} {:>6} {:>6} {:>8} {:>8} {:>7}".format(*head))
    for s in sizes:
        for label in THREADS:
            t = s[f"threads_{label}"]
            rows = [("edge " + c, e, "wire_pack") for c, e in t["edge"].items()]
            rows += [("host " + r, h, "unpack") for r, h in t["host"].items()]
            for part, r, wire in rows:
                st = r["stages"]
                cells = (s["size"], part, label, *(common.med(st[k]) for k in ("graph", "entropy", "other", wire)))
                print("{:>9} {:<21} {:>7} {:>8.2f} {:>8.3f} {:>6.3f} {:>6.3f}".format(*cells), end="")
                print(f" {common.med(st['total']):>8.2f} {st['total']['p90_ms']:>8.2f} {r['frames_per_s']:>7.1f}")
    print("  (ms, medians; edge wire = frame()+pack(), host wire = unpack + checks; total includes wire)")


def main() -> None:
    common.run_sizes(
        "codec",
        "edge encode / host decode per stage, in process, CPU onnxruntime",
        __doc__,
        run_size,
        print_table,
        {
            "threads": "threads_1: EdgeEncoder/HostDecoder(threads=1); threads_default: threads=0 (onnxruntime's "
            "default, one per physical core)",
            "stages": "from Encoded.timings / Decoded.timings (the codec's own clocks); other = the call's "
            "wall time minus them",
        },
    )


if __name__ == "__main__":
    main()
