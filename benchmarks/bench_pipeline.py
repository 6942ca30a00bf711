"""End to end: `stereodsc.pipeline.run_pipeline` on loopback, a host and two camera-node processes, and
the pipeline's overhead (framing, audit record, transport, host bookkeeping) as a share of model time.

For each size (128x256 paper protocol; the native 375x1242 frame) the camera nodes replay the first
frames of the drive (written as a KITTI-layout drive: the nodes do not resize) as fast as they can
encode (fps 0); the host, its decoders warmed up at the workload's size, decodes with its PNG sink
off. Everything below comes from what the processes log, one `FrameRecord` per frame (edge: sent,
stages_ms = the encoder's graph/entropy; host: side_info, latency_ms = receipt to delivery,
stages_ms = the decoder's entropy/graph), their final statistics, and the time each host log line
appears:

- throughput = (delivered frames - 1) / (first to last delivery, both cameras): process start-up is
  left out; pairs/s is half of it;
- latency, receipt to delivery, per role (a dependent's includes any wait for its reference);
  ``after_first_frame`` leaves out seq 0 (the first frame of a camera);
- the codec stages as the processes measured them, per camera (edge) and role (host);
- link accounting: each camera's sent = acked + lost, the host's received and outcomes.

By default (``--pairing buffered``) the host keeps every reference pairable for the whole run: with
fps 0 the camera that starts first stays ahead, and with ``run_pipeline``'s settings (2 s deadline,
32 kept references) dependents can arrive after their reference was released; ``--pairing default``
keeps those settings. The cameras wait up to 60 s (``[link] drain_s``, default 5) for the acks of
their last frames, so that a host backlog at the end is not counted as frames lost.

Overhead share per stereo pair, composed from the component benchmarks' last results (their files,
machine load and time are recorded; run them first)::

    overhead = edge frame()+pack() (ref + dep)              bench_codec.py    codec.json
             + edge audit record (FrameRecord line, ref + dep)
             + loopback send -> received (ref + dep)       bench_transport.py transport.json
             + host service time per pair not in decode     bench_service.py  service.json
    model    = edge encode (ref + dep) + host decode (ref + dep)    codec.json
    share    = overhead / model, per thread setting; headline = the worst   (target < 5 %)

with a cross-check from this run's host statistics: (total p50 - decode p50) / decode p50, an upper
bound (a dependent's total includes its wait for the reference). Writes
``benchmarks/results/pipeline.json``.

    python benchmarks/bench_pipeline.py [--frames 30 10] [--pairing buffered|default] [--bundle PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy; inherited by the pipeline's processes

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from stereodsc.bundle import Bundle
from stereodsc.pipeline import run_pipeline
from stereodsc.records import FrameRecord

TARGET_SHARE = 0.05
# A camera that has sent its last frame waits this long for the host's acks before it counts the rest
# lost (default [link] drain_s = 5 s). At fps 0 the host's backlog at 375x1242 on a loaded machine takes
# longer than 5 s: frames the host did take would be counted lost by the camera.
DRAIN_S = 60.0


# ---- the run -------------------------------------------------------------------------------------
@dataclass
class LogWatcher:
    """Timestamps the lines of JSON-lines logs as they appear (the processes log one line per frame)."""

    paths: list[Path]
    interval_s: float = 0.005
    seen: dict[Path, list[float]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.seen = {p: [] for p in self.paths}

    def __enter__(self) -> LogWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.poll(time.monotonic())

    def loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.poll(time.monotonic())

    def poll(self, now: float) -> None:
        for path in self.paths:
            try:
                lines = path.read_text().count("\n")  # complete lines only
            except OSError:
                continue
            self.seen[path].extend([now] * (lines - len(self.seen[path])))


def rate(times: list[float]) -> float | None:
    """Items per second between the first and the last item (None with fewer than 2)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / (times[-1] - times[0]), 3)


def pairing_overrides(mode: str, frames: int) -> dict[str, Any]:
    """Host [pairing] settings: "buffered" keeps every reference pairable for the whole run."""
    if mode == "default":
        return {}
    return {"max_references": frames + 8, "max_pending": max(64, frames + 8), "deadline_ms": 600_000.0}


def stages(records: Iterable[FrameRecord]) -> dict[str, Any]:
    """Summaries of the records' stages_ms, per stage, and of their sum."""
    recs = [r for r in records if r.stages_ms]
    if not recs:
        return {}
    out = {s: common.summary(r.stages_ms[s] / 1e3 for r in recs) for s in recs[0].stages_ms}
    out["sum"] = common.summary(sum(r.stages_ms.values()) / 1e3 for r in recs)
    return out


def run_size(bundle: Bundle, work: common.Workload, frames: int, tmp: Path, pairing: str) -> dict[str, Any]:
    """run_pipeline on loopback, fps 0, PNG sink off; throughput from the host log as it grows."""
    folder = tmp / f"pipeline_{work.name}"
    drive = common.write_drive(work.pairs[:frames], tmp / f"drive_{work.name}", work.source)
    logs = [folder / "host_frames.jsonl", folder / "edge0_frames.jsonl", folder / "edge1_frames.jsonl"]
    load_before = common.load1()
    t0 = time.monotonic()
    with LogWatcher(logs) as watcher:
        run = run_pipeline(
            bundle.path,
            folder,
            frames=frames,
            fps=0.0,
            quality=common.QUALITY,
            source="kitti",
            path=str(drive),
            timeout_s=900.0,
            host_extra={
                "host": {"warm_sizes": [work.name]},
                "sinks": {"png_dir": ""},
                "pairing": pairing_overrides(pairing, frames),
            },
            edge_extra={cam: {"link": {"drain_s": DRAIN_S}} for cam in (0, 1)},
        )
    wall = time.monotonic() - t0
    host = [FrameRecord.from_dict(r) for r in run.host_frames]
    delivered = watcher.seen[logs[0]]
    frame_rate = rate(delivered)
    stats = run.host_stats
    lat = stats.get("latency", {})

    def latency(role: str | None, first_seq: int = 0) -> dict[str, float]:
        ms = [r.latency_ms or 0.0 for r in host if role in (None, r.role) and r.seq >= first_seq]
        return common.summary(x / 1e3 for x in ms)

    edges = {}
    for cam, raw in run.edge_frames.items():
        recs = [FrameRecord.from_dict(r) for r in raw]
        link = run.edge_stats.get(cam, {})
        edges[str(cam)] = {
            "role": recs[0].role if recs else None,
            "captured": len(recs),
            "sent": sum(bool(r.sent) for r in recs),
            "link": {k: link.get(k) for k in ("sent", "acked", "lost", "dropped")},
            "encode_stages": stages(recs),
            "wire_bytes_median": int(statistics.median(r.bytes for r in recs)) if recs else None,
            "payload_bytes_median": int(statistics.median(r.payload_bytes for r in recs)) if recs else None,
            "frames_per_s": rate(watcher.seen[folder / f"edge{cam}_frames.jsonl"]),
        }
    decode_p50, total_p50 = lat.get("decode", {}).get("p50_ms"), lat.get("total", {}).get("p50_ms")
    return {
        "size": work.name,
        "frames": work.note,
        "frames_per_camera": frames,
        "pairing": {"mode": pairing, "overrides": pairing_overrides(pairing, frames)},
        "load_avg_1min_before": load_before,
        "wall_s": round(wall, 2),
        "first_delivery_after_s": round(delivered[0] - t0, 2) if delivered else None,
        "host_received": stats.get("received"),
        "decoded_reference": stats.get("decoded_reference"),
        "decoded_with_side_info": stats.get("decoded_with_side_info"),
        "decoded_without_side_info": stats.get("decoded_without_side_info"),
        "dropped": stats.get("dropped"),
        "rejected": stats.get("rejected"),
        "decode_errors": stats.get("decode_errors"),
        "frames_per_s": frame_rate,
        "pairs_per_s": None if frame_rate is None else round(frame_rate / 2, 3),
        "latency_receipt_to_delivery": {
            "all": latency(None),
            "reference": latency("reference"),
            "dependent": latency("dependent"),
            "after_first_frame": latency(None, 1),
        },
        "host_decode_stages": {role: stages(r for r in host if r.role == role) for role in ("reference", "dependent")},
        "host_stats_latency": lat,
        "host_overhead_from_stats": None
        if not decode_p50 or total_p50 is None
        else {
            "total_minus_decode_p50_ms": round(total_p50 - decode_p50, 3),
            "share_of_decode": round((total_p50 - decode_p50) / decode_p50, 4),
        },
        "edges": edges,
    }


# ---- the overhead share --------------------------------------------------------------------------
def provenance(doc: dict[str, Any], name: str) -> dict[str, Any]:
    m = doc["machine"]
    return {"file": f"results/{name}.json", "load_avg_1min": m["load_avg_1min"], "runtime_s": doc.get("runtime_s")}


def overhead_share(bundle: Bundle) -> dict[str, Any]:
    """The overhead share per size and thread setting, from codec.json, service.json and transport.json."""
    docs = {name: common.read_result(name) for name in ("codec", "service", "transport")}
    missing = [f"benchmarks/bench_{name}.py" for name, doc in docs.items() if doc is None]
    if missing:
        return {"missing": f"run {', '.join(missing)} first"}
    codec, service, transport = docs["codec"], docs["service"], docs["transport"]
    assert codec is not None and service is not None and transport is not None
    if codec["bundle"]["id"] != bundle.id or service["bundle"]["id"] != bundle.id:
        return {"missing": "codec.json / service.json measured another bundle: rerun them with this --bundle"}
    sends = {}  # frame label (and the labels of equal-size frames) -> send-to-received median
    for row in transport["rows"]:
        for label in [row["frame"], *row["same_size_as"]]:
            sends[label] = common.med(row["latency"]["send_to_recv"])
    name, quality = Path(codec["bundle"]["path"]).name, codec["bundle"]["quality"]
    service_by_size = {s["size"]: common.med(s["overhead_pair"]) for s in service["sizes"]}
    sizes = {}
    for size in codec["sizes"]:
        labels = [f"{name}/{role}/q{quality}/{size['size']}" for role in ("intra", "side_info")]
        if not all(label in sends for label in labels) or size["size"] not in service_by_size:
            sizes[size["size"]] = {"missing": f"transport.json has no {labels} or service.json no {size['size']}"}
            continue
        per_threads = {}
        for key, t in ((k, v) for k, v in size.items() if k.startswith("threads_")):
            edge = [t["edge"][c]["stages"] for c in ("intra", "side_info")]
            host = [t["host"][r]["stages"] for r in ("reference", "dependent")]
            parts = {
                "edge_wire_pack_ms": sum(common.med(e["wire_pack"]) for e in edge),
                "edge_audit_record_ms": sum(common.med(e["audit_record"]) for e in edge),
                "transport_ms": sum(sends[label] for label in labels),
                "host_service_ms": service_by_size[size["size"]],
            }
            over = sum(parts.values())
            model = sum(common.med(e["encode"]) for e in edge) + sum(common.med(h["decode"]) for h in host)
            per_threads[key] = {k: round(v, 4) for k, v in parts.items()} | {
                "overhead_ms": round(over, 4),
                "model_ms": round(model, 4),
                "share": round(over / model, 5),
                "within_target": over / model < TARGET_SHARE,
            }
        worst = max(per_threads.values(), key=lambda v: v["share"])
        sizes[size["size"]] = {"per_threads": per_threads, "worst_share": worst["share"]}
    return {
        "from": {name: provenance(doc, name) for name, doc in docs.items() if doc is not None},
        "target": TARGET_SHARE,
        "sizes": sizes,
        "note": "transport and service are measured at one setting (the service's decoders at onnxruntime's "
        "default threads); capture, rectification, the PNG sink and queueing waits are excluded",
    }


def print_table(sizes: list[dict[str, Any]], share: dict[str, Any]) -> None:
    head = ("size", "frames", "paired", "cam drop", "lost", "host drop", "pairs/s", "lat p50", "p90", "p99", "wall s")
    print("\n{:>9} {:>6} {:>6} {:>8} {:>4} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}".format(*head))
    for s in sizes:
        tot = s["host_stats_latency"].get("total", {})
        links = [e["link"] for e in s["edges"].values()]
        cam_drop, lost = (sum(link.get(k) or 0 for link in links) for k in ("dropped", "lost"))
        counts = (s["frames_per_camera"], s["decoded_with_side_info"], cam_drop, lost, sum(s["dropped"].values()))
        print("{:>9} {:>6} {:>6} {:>8} {:>4} {:>9}".format(s["size"], *counts), end="")
        print(f" {s['pairs_per_s'] or 0.0:>8.2f}", end="")
        print(f" {tot.get('p50_ms', 0):>8.1f} {tot.get('p90_ms', 0):>8.1f} {tot.get('p99_ms', 0):>8.1f}", end="")
        print(f" {s['wall_s']:>7.1f}")
    print("  (loopback, fps 0; cam drop: refused by a camera's window of unacked frames; host latency, ms)")
    if "missing" in share:
        print(f"\noverhead share: {share['missing']}")
        return
    print(f"\n{'size':>9} {'threads':>15} {'pack':>6} {'audit':>6} {'xport':>6} {'host':>6} {'overhead':>9}", end="")
    print(f" {'model':>8} {'share':>7}")
    for size, s in share["sizes"].items():
        for key, o in s.get("per_threads", {}).items():
            parts = (o["edge_wire_pack_ms"], o["edge_audit_record_ms"], o["transport_ms"], o["host_service_ms"])
            print("{:>9} {:>15} {:>6.3f} {:>6.3f} {:>6.3f} {:>6.3f}".format(size, key, *parts), end="")
            print(f" {o['overhead_ms']:>9.3f} {o['model_ms']:>8.2f} {100 * o['share']:>6.2f}%")
    print(f"  (ms per stereo pair, medians from {', '.join(share['from'])}; target < {100 * TARGET_SHARE:.0f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped bundle)")
    parser.add_argument("--drive", type=Path, default=None, help=f"KITTI raw drive (default {common.SHARED_DRIVE})")
    parser.add_argument("--frames", type=int, nargs=2, default=(30, 10), metavar=("SMALL", "NATIVE"))
    parser.add_argument("--pairing", choices=("buffered", "default"), default="buffered")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = common.Result("pipeline", "run_pipeline on loopback: throughput, latency, overhead share", args.out)
    bundle = common.open_bundle(args.bundle)
    works, data = common.workloads(max(args.frames), args.drive)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        sizes = []
        for work, frames in zip(works, args.frames, strict=True):
            print(f"{work.name}: pipeline, {frames} frames per camera ...", flush=True)
            sizes.append(run_size(bundle, work, min(frames, len(work.pairs)), Path(tmp), args.pairing))
    share = overhead_share(bundle)
    print_table(sizes, share)
    result.write(
        {
            "data": data,
            "bundle": common.bundle_info(bundle),
            "processes": "stereodsc host + 2 stereodsc edge (run_pipeline), onnxruntime's default threads, fps 0, "
            f"PNG sink off, host warm_sizes = the workload's size, cameras' [link] drain_s = {DRAIN_S}",
            "throughput_definition": "frames_per_s = (delivered frames - 1) / (first to last delivery, both "
            "cameras), timed as the host's frame log grows; pairs_per_s = frames_per_s / 2",
            "sizes": sizes,
            "overhead": share,
        }
    )
    print(json.dumps({s: v.get("worst_share") for s, v in share.get("sizes", {}).items()}))


if __name__ == "__main__":
    main()
