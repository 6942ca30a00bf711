"""Edge encode, host decode and end-to-end pipeline latency/throughput on CPU onnxruntime, and the
pipeline's overhead (framing, transport, pairing, bookkeeping) as a share of model time.

Two sizes: 128x256 (the paper protocol: KITTI centre crop 370x740 resized, `paper_protocol`) and the
full KITTI frame 375x1242 (padded to 384x1248 inside the encoder). For each size:

- edge encode, in process, per reference (intra) and dependent (side_info) codec, with 1 and 2
  onnxruntime threads: edge graph (the encoder's own sessions, timed around their ``run``), rANS
  encode (the encoder's own ``entropy.encode`` calls, timed in place), other (padding, checks,
  table rows), encode total, the wire frame (``frame()`` + ``pack()``) and the camera daemon's
  optional per-frame audit record (symbols sha256 + a JSON line);
- host decode, in process, reference frames (no side information) and dependent frames (the decoded
  reference as side image), 1 and 2 threads: rANS decode, host graph (both timed in place), other
  (side padding, crop, checks), total; plus ``wire.unpack`` (parse + CRC + bounds checks);
- the host service in process (`HostService.handle` on packed frames, pairing by seq, frame log on,
  PNG sink off): its time per pair minus the decoder's time = parse + pairing + bookkeeping;
- ZeroMQ loopback transport (`FrameSender` -> `FrameReceiver`, one frame at a time): send call to
  received bytes;
- `run_pipeline` on loopback: a host and two camera-node processes, fps=0 (as fast as possible),
  PNG sink off. Throughput = (pairs - 1) / (first to last delivered dependent frame), from the
  host's frame log as it grows; receipt-to-delivery latency from the host's log and statistics.

Overhead share (per stereo pair, sums of per-stage medians)::

    overhead = edge wire pack (ref + dep) + edge audit log (ref + dep) + loopback transport (ref + dep)
             + host service time not spent in HostDecoder.decode (ref + dep)
    model    = edge encode (ref + dep: graph + rANS + padding) + host decode (ref + dep: rANS + graph + crop)
    share    = overhead / model            (target: < 5 %; reported per thread count, headline = worst)

`OPENBLAS_NUM_THREADS=1` is set before numpy loads (it is inherited by the pipeline's processes).
The 1-minute load average is recorded at the start, before the pipeline runs and at the end: other
jobs on the machine inflate every number. Writes ``benchmarks/results/pipeline.json`` (``--quick``:
``pipeline_quick.json``) and prints a table.

    python benchmarks/bench_pipeline.py [--bundle PATH] [--quick] [--drive KITTI_DRIVE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: no BLAS thread pool fighting onnxruntime

import argparse
import dataclasses
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

import stereodsc.codec.decoder as decoder_module
import stereodsc.codec.encoder as encoder_module
from machine import cpu_model
from stereodsc import entropy
from stereodsc.bundle import Bundle, load_bundle
from stereodsc.codec.decoder import Decoded, HostDecoder
from stereodsc.codec.encoder import EdgeEncoder, Encoded
from stereodsc.codec.geometry import padded_size
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.errors import StereoDSCError
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.host_decoder.service import HostConfig, HostSection, HostService, SinkSection
from stereodsc.images import read_rgb, write_rgb
from stereodsc.pipeline import free_port, run_pipeline
from stereodsc.sample import drive_path
from stereodsc.transport import FrameReceiver, FrameSender
from stereodsc.wire import Frame, unpack

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DRIVE = Path("/work/shared/data/kitti_raw_2011_09_26_drive_0001")
TARGET_SHARE = 0.05
THREADS = (1, 2)
QUALITY = 0
SEND_GAP_S = 0.002


# ---- helpers -----------------------------------------------------------------------------------


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    import numba
    import onnxruntime
    import zmq

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numba": numba.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "opencv": pkg_version("opencv-python-headless") or pkg_version("opencv-python"),
        "stereodsc": pkg_version("stereodsc"),
    }


def summary(seconds: Iterable[float]) -> dict[str, float]:
    """median / p90 / mean in milliseconds."""
    ms = np.asarray(list(seconds), dtype=float) * 1e3
    return {
        "median_ms": round(float(np.median(ms)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "mean_ms": round(float(ms.mean()), 4),
    }


def med(stats: dict[str, Any], key: str) -> float:
    """Median (ms) of a `summary` entry."""
    return float(stats[key]["median_ms"])


class GraphTimer:
    """Times every graph run of an EdgeEncoder/HostDecoder by wrapping the `GraphSessions` it uses."""

    def __init__(self, codec_object: EdgeEncoder | HostDecoder) -> None:
        sessions = getattr(codec_object, "_sessions", None)
        if sessions is None or not callable(getattr(sessions, "run", None)):
            raise RuntimeError(
                f"{type(codec_object).__name__} no longer keeps its GraphSessions in _sessions: update GraphTimer"
            )
        self._inner: Callable[..., dict[str, np.ndarray]] = sessions.run
        self.elapsed = 0.0  # seconds, all runs so far
        sessions.run = self._run  # instance attribute: only this object's sessions are wrapped

    def _run(self, path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        try:
            return self._inner(path, inputs)
        finally:
            self.elapsed += time.perf_counter() - t0


class EntropyTimer:
    """While active, the encoder and decoder modules see a stand-in for `stereodsc.entropy` whose
    ``encode``/``decode`` are timed: the rANS calls are measured where and as they run."""

    def __init__(self) -> None:
        self.elapsed = 0.0  # seconds, all timed calls so far
        self._saved: list[tuple[Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(entropy, name)
        if name not in ("encode", "decode"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.elapsed += time.perf_counter() - t0

        return timed

    def __enter__(self) -> EntropyTimer:
        for module in (encoder_module, decoder_module):
            if getattr(module, "entropy", None) is not entropy:
                raise RuntimeError(
                    f"{module.__name__} no longer calls stereodsc.entropy by module: update EntropyTimer"
                )
            self._saved.append((module, module.entropy))
            module.entropy = self  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        for module, original in self._saved:
            module.entropy = original
        self._saved.clear()


@dataclass
class Workload:
    """One size's stereo frames: in-process pool and what the pipeline's camera nodes replay."""

    name: str  # "128x256" | "375x1242"
    pairs: list[tuple[np.ndarray, np.ndarray]]  # (left, right) uint8 RGB
    drive: Path  # KITTI-layout drive the pipeline's camera nodes read (image_02 / image_03)
    note: str = ""
    padded: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return self.pairs[0][0].shape[:2]


def make_workloads(drive: Path, n: int, tmp: Path, pipeline_frames: int) -> list[Workload]:
    """The paper-protocol and the full-size workloads from one KITTI(-layout) drive.

    The camera nodes apply no resizing, so the 128x256 frames are written as a KITTI-layout drive
    (both cameras, the original timestamps) that the pipeline's ``kitti`` source replays.
    """
    left_files, _ = kitti_frames(drive, "left")
    right_files, _ = kitti_frames(drive, "right")
    count = min(n, len(left_files), len(right_files))
    full = [(read_rgb(left_files[i]), read_rgb(right_files[i])) for i in range(count)]
    small = [(paper_protocol(a), paper_protocol(b)) for a, b in full]
    small_drive = tmp / "paper_drive"
    m = min(pipeline_frames, count)
    for sub, idx in (("image_02", 0), ("image_03", 1)):
        (small_drive / sub / "data").mkdir(parents=True, exist_ok=True)
        for i in range(m):
            write_rgb(small_drive / sub / "data" / f"{i:010d}.png", small[i][idx])
        lines = (drive / sub / "timestamps.txt").read_text().splitlines()[:m]
        (small_drive / sub / "timestamps.txt").write_text("\n".join(lines) + "\n")
    h, w = full[0][0].shape[:2]
    return [
        Workload("x".join(map(str, small[0][0].shape[:2])), small, small_drive, "paper_protocol (crop 1:2, resize)"),
        Workload(f"{h}x{w}", full, drive, "native frames, padded to a multiple of the stride inside the encoder"),
    ]


# ---- edge --------------------------------------------------------------------------------------
@dataclass
class EdgeResult:
    stats: dict[str, Any]
    frames: list[Frame]  # the timed frames (seq 0..), for the host benchmarks
    packed: list[bytes]


def bench_edge(
    bundle: Bundle, role: str, threads: int, images: list[np.ndarray], frames: int, warmup: int
) -> EdgeResult:
    """Per-stage encode times of one codec; the daemon's frame()+pack() and audit log record too."""
    enc = EdgeEncoder(bundle, role, QUALITY, "cpu", threads=threads)
    graph_timer = GraphTimer(enc)
    graph, rans, total, wire, audit = [], [], [], [], []
    out_frames, out_packed, payload = [], [], []
    log_path = Path(tempfile.gettempdir()) / f"bench_pipeline_edge_{os.getpid()}.jsonl"
    with open(log_path, "w") as log_file, EntropyTimer() as rans_timer:
        for i in range(warmup + frames):
            image = images[i % len(images)]
            g0, r0 = graph_timer.elapsed, rans_timer.elapsed
            t0 = time.perf_counter()
            encoded: Encoded = enc.encode(image)
            t1 = time.perf_counter()
            seq = max(0, i - warmup)
            frame = enc.frame(encoded, rig_id=1, camera_id=0 if role == "intra" else 1, seq=seq, t_capture_ns=i)
            data = frame.pack()
            t2 = time.perf_counter()
            # the camera daemon's optional per-frame audit record (edge frame_log)
            digest = hashlib.sha256(encoded.symbols.tobytes()).hexdigest()
            record = {"seq": seq, "sent": True, "bytes": len(data), "payload_bytes": encoded.payload_bytes}
            log_file.write(json.dumps({**record, "encode_ms": round((t1 - t0) * 1e3, 3), "symbols": digest}) + "\n")
            log_file.flush()
            t3 = time.perf_counter()
            if i < warmup:
                continue
            graph.append(graph_timer.elapsed - g0)
            rans.append(rans_timer.elapsed - r0)
            total.append(t1 - t0)
            wire.append(t2 - t1)
            audit.append(t3 - t2)
            payload.append(encoded.payload_bytes)
            out_frames.append(frame)
            out_packed.append(data)
    log_path.unlink(missing_ok=True)
    other = [t - g - r for t, g, r in zip(total, graph, rans, strict=True)]
    per_frame = [t + w for t, w in zip(total, wire, strict=True)]
    stats = {
        "codec": role,
        "model": enc.codec.model,
        "threads": threads,
        "frames": frames,
        "graph": summary(graph),
        "rans_encode": summary(rans),
        "other": summary(other),
        "encode_total": summary(total),
        "wire_pack": summary(wire),
        "audit_log": summary(audit),
        "total": summary(per_frame),
        "frames_per_s": round(1.0 / float(np.median(per_frame)), 2),
        "payload_bytes_median": int(statistics.median(payload)),
        "wire_bytes_median": int(statistics.median(len(p) for p in out_packed)),
    }
    return EdgeResult(stats, out_frames, out_packed)


# ---- host --------------------------------------------------------------------------------------
def bench_host(
    bundle: Bundle, threads: int, frames: list[Frame], sides: list[np.ndarray] | None, warmup: int
) -> tuple[dict[str, Any], list[Decoded]]:
    """Per-stage decode times of reference frames (`sides` None) or dependent frames (with sides)."""
    dec = HostDecoder(bundle, "cpu", threads=threads)
    graph_timer = GraphTimer(dec)
    codec = dec.codec_for(frames[0])
    graph, rans, total, parse = [], [], [], []
    decoded_out: list[Decoded] = []
    packed = [f.pack() for f in frames]
    with EntropyTimer() as rans_timer:
        for i in range(warmup + len(frames)):
            k = i % len(frames)
            p0 = time.perf_counter()
            frame = unpack(packed[k], expected_bundle=bundle.id_bytes)
            p1 = time.perf_counter()
            side = None if sides is None else sides[k]
            g0, r0 = graph_timer.elapsed, rans_timer.elapsed
            t0 = time.perf_counter()
            decoded = dec.decode(frame, side)
            t1 = time.perf_counter()
            if i < warmup:
                continue
            graph.append(graph_timer.elapsed - g0)
            rans.append(rans_timer.elapsed - r0)
            total.append(t1 - t0)
            parse.append(p1 - p0)
            decoded_out.append(decoded)
    other = [t - g - r for t, g, r in zip(total, graph, rans, strict=True)]
    stats = {
        "frames_of": "reference (intra, no side information)" if sides is None else "dependent (side_info, with side)",
        "model": codec.model,
        "threads": threads,
        "frames": len(frames),
        "unpack_validate": summary(parse),
        "rans_decode": summary(rans),
        "graph": summary(graph),
        "other": summary(other),
        "total": summary(total),
        "frames_per_s": round(1.0 / float(np.median(total)), 2),
        "side_info_used": all(d.side_info_used for d in decoded_out) if sides is not None else False,
    }
    return stats, decoded_out


class DecodeTimer:
    """Stands in for a HostService's decoder: records the time of every decode."""

    def __init__(self, inner: HostDecoder) -> None:
        self.inner = inner
        self.times: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decode(self, frame: Frame, side: np.ndarray | None = None) -> Decoded:
        t0 = time.perf_counter()
        try:
            return self.inner.decode(frame, side)
        finally:
            self.times.append(time.perf_counter() - t0)


def bench_service(bundle: Bundle, refs: list[bytes], deps: list[bytes], warmup: int, tmp: Path) -> dict[str, Any]:
    """HostService.handle on (reference, dependent) pairs in process: its time minus the decoder's."""
    log = tmp / "service_frames.jsonl"
    cfg = HostConfig(
        host=HostSection(endpoint=f"tcp://127.0.0.1:{free_port()}", bundle=str(bundle.path)),
        sinks=SinkSection(frame_log=str(log)),
    )
    service = HostService.from_config(cfg)
    timer = DecodeTimer(service.decoders[bundle.id_bytes])
    service.decoders[bundle.id_bytes] = timer  # type: ignore[assignment]
    n = len(refs)
    overhead, handle = [], []
    try:
        # Seq numbers must increase (pairing, gap and duplicate checks): re-stamp the frames.
        for i in range(warmup + n):
            ref, dep = (unpack(x[i % n]) for x in (refs, deps))
            ref_b = dataclasses.replace(ref, seq=i).pack()
            dep_b = dataclasses.replace(dep, seq=i).pack()
            before = len(timer.times)
            t0 = time.perf_counter()
            service.handle(ref_b, time.monotonic())
            service.handle(dep_b, time.monotonic())
            t1 = time.perf_counter()
            decode_s = sum(timer.times[before:])
            if len(timer.times) - before != 2:
                raise RuntimeError(f"pair {i}: the service decoded {len(timer.times) - before} frames, expected 2")
            if i >= warmup:
                handle.append(t1 - t0)
                overhead.append(t1 - t0 - decode_s)
        stats = service.stats.as_dict()
    finally:
        service.close()
    if stats["decoded_with_side_info"] != warmup + n or stats["decoded_reference"] != warmup + n:
        raise RuntimeError(f"in-process host service did not pair every frame: {stats}")
    return {
        "pairs": n,
        "what": "HostService.handle(reference) + handle(dependent) minus HostDecoder.decode time: unpack + CRC + "
        "bounds checks, gap count, pairing (seq), reference cache, symbols sha256, frame log line, stats",
        "handle_pair": summary(handle),
        "overhead_pair": summary(overhead),
    }


def bench_transport(packed: list[bytes], warmup: int) -> dict[str, Any]:
    """One frame at a time over ZeroMQ loopback TCP: FrameSender.send -> FrameReceiver.recv returns.

    Sends are spaced by `SEND_GAP_S` (outside the timing), as a camera's frames are: libzmq applies
    the receiving side's read acknowledgements to the sender's high-water-mark count lazily (at most
    about once a millisecond), so more than SNDHWM (4) back-to-back sends within ~1 ms are refused even
    though every frame was already received. A refused send is counted and retried.
    """
    receiver = FrameReceiver("tcp://127.0.0.1:*", max_frame_bytes=1 << 24)
    sender = FrameSender(receiver.endpoint)
    refused = 0
    try:
        deadline = time.monotonic() + 10
        while not sender.send(packed[0]):  # IMMEDIATE: sends drop until the connection is up
            if time.monotonic() > deadline:
                raise RuntimeError("loopback ZeroMQ connection did not come up in 10 s")
            time.sleep(0.01)
        receiver.recv(timeout_ms=5000)
        send_call, latency = [], []
        for i in range(warmup + len(packed)):
            data = packed[i % len(packed)]
            time.sleep(SEND_GAP_S)
            t0 = time.perf_counter()
            while not sender.send(data):
                refused += 1
                if refused > 100:
                    raise RuntimeError("loopback transport refuses every send")
                time.sleep(SEND_GAP_S)
                t0 = time.perf_counter()
            t1 = time.perf_counter()
            got = receiver.recv(timeout_ms=5000)
            t2 = time.perf_counter()
            if got is None or len(got) != len(data):
                raise RuntimeError("loopback transport lost a frame")
            if i >= warmup:
                send_call.append(t1 - t0)
                latency.append(t2 - t0)
    finally:
        sender.close()
        receiver.close()
    return {
        "frames": len(packed),
        "bytes_median": int(statistics.median(len(p) for p in packed)),
        "gap_between_sends_ms": SEND_GAP_S * 1e3,
        "refused_sends_retried": refused,
        "send_call": summary(send_call),
        "send_to_recv": summary(latency),
    }


# ---- pipeline ----------------------------------------------------------------------------------
@dataclass
class LogWatcher:
    """Timestamps the lines of JSON-lines logs as they appear (the processes log one line per frame)."""

    paths: list[Path]
    interval_s: float = 0.005
    seen: dict[Path, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.seen = {p: [] for p in self.paths}

    def __enter__(self) -> LogWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll(time.monotonic())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll(time.monotonic())

    def _poll(self, now: float) -> None:
        for path in self.paths:
            try:
                text = path.read_text()
            except OSError:
                continue
            lines = [line for line in text.split("\n")[:-1] if line.strip()]  # complete lines only
            for line in lines[len(self.seen[path]) :]:
                self.seen[path].append((now, json.loads(line)))


def rate(times: list[float]) -> float | None:
    """Items per second between the first and the last item (None with fewer than 2)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / (times[-1] - times[0]), 3)


def pairing_overrides(mode: str, frames: int) -> dict[str, Any]:
    """Host [pairing] settings of the run. "buffered": every reference stays pairable for the whole run.

    With fps=0 the camera that starts first (the nodes load their models one after the other) leads
    the other by several frames for the whole run (PULL fair-queues the two links, the host is the
    bottleneck); with the host's default 8 kept references and 2 s deadline, most dependents then
    arrive after their reference was released and are dropped as "late". "default" keeps
    `run_pipeline`'s settings (to see exactly that); "buffered" measures the decode throughput.
    """
    if mode == "default":
        return {}
    return {"max_references": frames + 8, "max_pending": max(64, frames + 8), "deadline_ms": 600_000.0}


def bench_pipeline(bundle_path: Path, work: Workload, frames: int, tmp: Path, pairing: str) -> dict[str, Any]:
    """run_pipeline on loopback, fps=0, PNG sink off; throughput from the logs as they grow."""
    folder = tmp / f"pipeline_{work.name}_{pairing}"
    folder.mkdir(parents=True)
    logs = [folder / "host_frames.jsonl", folder / "edge0_frames.jsonl", folder / "edge1_frames.jsonl"]
    load_before = load1()
    t0 = time.monotonic()
    with LogWatcher(logs) as watcher:
        run = run_pipeline(
            bundle_path,
            folder,
            frames=frames,
            fps=0.0,
            quality=QUALITY,
            source="kitti",
            path=str(work.drive),
            timeout_s=900.0,
            host_extra={"sinks": {"png_dir": ""}, "pairing": pairing_overrides(pairing, frames)},
        )
    wall = time.monotonic() - t0
    host = watcher.seen[logs[0]]
    all_t = [t for t, _ in host]
    frame_rate = rate(all_t)
    stats = run.host_stats
    lat = stats.get("latency", {})

    def latency(role: str | None, first_seq: int = 0) -> dict[str, float] | None:
        v = [
            r["latency_ms"] / 1e3
            for r in run.host_frames
            if (role is None or r["role"] == role) and r["seq"] >= first_seq
        ]
        return summary(v) if v else None

    edges = {}
    for cam, recs in run.edge_frames.items():
        seen = watcher.seen[folder / f"edge{cam}_frames.jsonl"]
        edges[str(cam)] = {
            "role": "reference" if cam == 0 else "dependent",
            "captured": len(recs),
            "sent": sum(r["sent"] for r in recs),
            "encode": summary(r["encode_ms"] / 1e3 for r in recs),
            "bytes_median": int(statistics.median(r["bytes"] for r in recs)),
            "payload_bytes_median": int(statistics.median(r["payload_bytes"] for r in recs)),
            "frames_per_s": rate([t for t, _ in seen]),
            "first_frame_logged_after_s": round(seen[0][0] - t0, 2) if seen else None,
        }
    sent = sum(e["sent"] for e in edges.values())
    outcomes = (
        stats.get("decoded_reference", 0)
        + stats.get("decoded_with_side_info", 0)
        + sum((stats.get("decoded_without_side_info") or {}).values())
        + sum((stats.get("dropped") or {}).values())
        + sum((stats.get("rejected") or {}).values())
        + sum((stats.get("decode_errors") or {}).values())
    )
    unresolved = stats.get("received", 0) - outcomes  # still waiting in the pairer when the host stopped
    decode_p50 = lat.get("decode", {}).get("p50_ms")
    total_p50 = lat.get("total", {}).get("p50_ms")
    host_overhead = None
    if decode_p50 and total_p50 is not None:
        host_overhead = {
            "total_minus_decode_p50_ms": round(total_p50 - decode_p50, 3),
            "share_of_decode": round((total_p50 - decode_p50) / decode_p50, 4),
            "note": "upper bound: a dependent frame's receipt-to-delivery time also holds any wait for its "
            "reference (and that reference's decode) in the pairer",
        }
    return {
        "frames_per_camera": frames,
        "fps": 0.0,
        "source": f"kitti-layout drive {work.drive}",
        "host_sinks": "frame log only (PNG sink off)",
        "pairing": {
            "mode": pairing,
            "settings": "match_by seq, policy latest_reference, run_pipeline's deadline_ms 2000, default "
            "max_references 8 / max_pending 64, overridden by: " + json.dumps(pairing_overrides(pairing, frames)),
        },
        "load_avg_1min_before": load_before,
        "wall_s": round(wall, 2),
        "first_delivery_after_s": round(all_t[0] - t0, 2) if all_t else None,
        "edge_sent": sent,
        "host_received": stats.get("received"),
        "lost_in_transit": None if stats.get("received") is None else sent - stats["received"],
        "unresolved_at_exit": unresolved,
        "pairs_decoded_with_side_info": stats.get("decoded_with_side_info"),
        "references_decoded": stats.get("decoded_reference"),
        "decoded_without_side_info": stats.get("decoded_without_side_info"),
        "dropped": stats.get("dropped"),
        "rejected": stats.get("rejected"),
        "decode_errors": stats.get("decode_errors"),
        "frames_per_s": frame_rate,
        "pairs_per_s": None if frame_rate is None else round(frame_rate / 2, 3),
        "throughput_definition": "frames_per_s = (delivered frames - 1) / (first to last delivery, both cameras), "
        "timed as the host's frame log grows (process start-up excluded; the host opens each graph's session "
        "on its first frame, inside the span); pairs_per_s = frames_per_s / 2",
        "latency_receipt_to_delivery": {
            "all": latency(None),
            "reference": latency("reference"),
            "dependent": latency("dependent"),
            "after_first_frame": latency(None, 1),
            "note": "a dependent's time includes any wait for its reference; the first frame of each camera "
            "includes opening the host graph's session (after_first_frame leaves seq 0 out)",
        },
        "host_stats_latency": lat,
        "host_overhead_from_stats": host_overhead,
        "edges": edges,
    }


# ---- overhead ----------------------------------------------------------------------------------
def overhead(size: dict[str, Any]) -> dict[str, Any]:
    """Pipeline overhead per pair vs model time per pair, for each thread count (sums of medians)."""
    transport = med(size["transport"]["reference"], "send_to_recv") + med(
        size["transport"]["dependent"], "send_to_recv"
    )
    service = med(size["host_service"], "overhead_pair")
    per_threads = {}
    for t in THREADS:
        er, ed = (size["edge"][f"{c}_t{t}"] for c in ("intra", "side_info"))
        hr, hd = (size["host"][f"{r}_t{t}"] for r in ("reference", "dependent"))
        wire = med(er, "wire_pack") + med(ed, "wire_pack")
        audit = med(er, "audit_log") + med(ed, "audit_log")
        model = med(er, "encode_total") + med(ed, "encode_total") + med(hr, "total") + med(hd, "total")
        over = wire + audit + transport + service
        per_threads[str(t)] = {
            "edge_wire_pack_ms": round(wire, 4),
            "edge_audit_log_ms": round(audit, 4),
            "transport_ms": round(transport, 4),
            "host_service_ms": round(service, 4),
            "overhead_ms": round(over, 4),
            "model_ms": round(model, 4),
            "share": round(over / model, 5),
            "within_target": over / model < TARGET_SHARE,
        }
    worst = max(per_threads.values(), key=lambda v: v["share"])
    return {"per_threads": per_threads, "worst_share": worst["share"], "within_target": worst["within_target"]}


# ---- main --------------------------------------------------------------------------------------
def resolve_bundle(arg: Path | None) -> Path:
    """--bundle, else the shipped bundle; without one, exit with a message that names --bundle."""
    if arg is not None:
        return arg
    try:
        from stereodsc.bundles import default_bundle

        return default_bundle()
    except (ImportError, StereoDSCError):
        shipped = Path(sys.modules["stereodsc"].__file__ or "stereodsc").parent / "bundles" / "default"
        sys.exit(f"no shipped bundle at {shipped}: pass --bundle PATH (a bundle folder made by 'stereodsc export')")


def bundle_info(bundle: Bundle) -> dict[str, Any]:
    return {
        "path": str(bundle.path),
        "id": bundle.id,
        "codecs": {
            role: {
                "model": c.model,
                "model_config": c.model_config,
                "qualities": len(c.qualities),
                "benchmarked_quality": QUALITY,
                "lmbda": c.quality(QUALITY).lmbda,
            }
            for role, c in bundle.codecs.items()
        },
    }


def run_size(
    bundle: Bundle, work: Workload, frames: int, warmup: int, pipeline_frames: int, tmp: Path, pairing: str
) -> dict[str, Any]:
    lefts = [a for a, _ in work.pairs]
    rights = [b for _, b in work.pairs]
    codec = bundle.codec("intra")
    ph, pw = padded_size(work.shape, codec.stride)
    out: dict[str, Any] = {
        "size": work.name,
        "padded": f"{ph}x{pw}",
        "frames": work.note,
        "load_avg_1min_start": load1(),
    }
    edge: dict[str, Any] = {}
    host: dict[str, Any] = {}
    packed: dict[str, list[bytes]] = {}
    for t in THREADS:
        ref = bench_edge(bundle, "intra", t, lefts, frames, warmup)
        dep = bench_edge(bundle, "side_info", t, rights, frames, warmup)
        edge[f"intra_t{t}"], edge[f"side_info_t{t}"] = ref.stats, dep.stats
        href, decoded = bench_host(bundle, t, ref.frames, None, warmup)
        hdep, _ = bench_host(bundle, t, dep.frames, [d.image for d in decoded], warmup)
        host[f"reference_t{t}"], host[f"dependent_t{t}"] = href, hdep
        packed["reference"], packed["dependent"] = ref.packed, dep.packed
        print(f"  {work.name}: {t} thread(s) done (load {load1()})", flush=True)
    out["edge"], out["host"] = edge, host
    out["transport"] = {role: bench_transport(p, warmup) for role, p in packed.items()}
    out["host_service"] = bench_service(bundle, packed["reference"], packed["dependent"], warmup, tmp)
    out["overhead"] = overhead(out)
    print(f"  {work.name}: pipeline run, {pipeline_frames} frames per camera ...", flush=True)
    out["pipeline"] = bench_pipeline(bundle.path, work, pipeline_frames, tmp, pairing)
    return out


def print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"\n{m['cpu_model']}, {m['cores_available']} cores, load {m['load_avg_1min_start']} at start")
    print(
        f"{'size':>9} {'part':<22} {'thr':>3} {'graph':>8} {'rANS':>7} {'wire':>6} {'total':>8} {'p90':>8} {'fps':>7}"
    )
    for s in result["sizes"]:
        for t in THREADS:
            for c, label in (("intra", "edge intra (ref)"), ("side_info", "edge side_info (dep)")):
                e = s["edge"][f"{c}_t{t}"]
                row = (s["size"], label, t, med(e, "graph"), med(e, "rans_encode"), med(e, "wire_pack"))
                print("{:>9} {:<22} {:>3} {:>8.2f} {:>7.3f} {:>6.3f}".format(*row), end="")
                print(f" {med(e, 'total'):>8.2f} {e['total']['p90_ms']:>8.2f} {e['frames_per_s']:>7.1f}")
            for r, label in (("reference", "host ref (no SI)"), ("dependent", "host dep (with SI)")):
                h = s["host"][f"{r}_t{t}"]
                row = (s["size"], label, t, med(h, "graph"), med(h, "rans_decode"), med(h, "unpack_validate"))
                print("{:>9} {:<22} {:>3} {:>8.2f} {:>7.3f} {:>6.3f}".format(*row), end="")
                print(f" {med(h, 'total'):>8.2f} {h['total']['p90_ms']:>8.2f} {h['frames_per_s']:>7.1f}")
    print("  (ms; edge wire = frame()+pack(), host wire = unpack+validate; edge total includes wire)")
    over_head = ("size", "thr", "pack", "log", "xport", "host", "overhead", "model", "share")
    print("\n{:>9} {:>3} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>7}".format(*over_head))
    for s in result["sizes"]:
        for t, o in s["overhead"]["per_threads"].items():
            parts = (o["edge_wire_pack_ms"], o["edge_audit_log_ms"], o["transport_ms"], o["host_service_ms"])
            print("{:>9} {:>3} {:>6.3f} {:>6.3f} {:>6.3f} {:>6.3f}".format(s["size"], t, *parts), end="")
            print(f" {o['overhead_ms']:>9.3f} {o['model_ms']:>8.2f} {100 * o['share']:>6.2f}%")
    print(f"  (ms per stereo pair; target share < {100 * TARGET_SHARE:.0f} %)")
    pipe_head = ("size", "frames", "paired", "lost", "dropped", "pairs/s", "lat p50", "p90", "p99", "wall s", "load")
    print("\n{:>9} {:>6} {:>6} {:>4} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5}".format(*pipe_head))
    for s in result["sizes"]:
        p = s["pipeline"]
        tot = p["host_stats_latency"].get("total", {})
        dropped = sum((p["dropped"] or {}).values())
        counts = (p["frames_per_camera"], p["pairs_decoded_with_side_info"], p["lost_in_transit"], dropped)
        print("{:>9} {:>6} {:>6} {:>4} {:>7}".format(s["size"], *counts), end="")
        print(f" {p['pairs_per_s'] or 0.0:>8.2f} {tot.get('p50_ms', 0):>8.1f} {tot.get('p90_ms', 0):>8.1f}", end="")
        print(f" {tot.get('p99_ms', 0):>8.1f} {p['wall_s']:>7.1f} {p['load_avg_1min_before']:>5.2f}")
    print(
        f"  (pipeline on loopback, fps=0, {result['pipeline_pairing']} pairing; host receipt-to-delivery latency, ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped bundle)")
    parser.add_argument("--quick", action="store_true", help="a couple of frames per measurement: smoke test")
    parser.add_argument("--drive", type=Path, default=None, help=f"KITTI raw drive (default {SHARED_DRIVE})")
    parser.add_argument("--frames", type=int, default=None, help="timed frames per in-process measurement (30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed frames first (3)")
    parser.add_argument("--pipeline-frames", type=int, nargs=2, default=None, metavar=("SMALL", "FULL"))
    parser.add_argument(
        "--pairing",
        choices=("buffered", "default"),
        default="buffered",
        help="host pairing buffers in the pipeline run: every reference kept (buffered) or run_pipeline's",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    frames = args.frames or (2 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    pipe_small, pipe_full = args.pipeline_frames or ((3, 2) if args.quick else (30, 10))
    out = args.out or RESULTS / ("pipeline_quick.json" if args.quick else "pipeline.json")

    started = time.monotonic()
    machine = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1min_start": load1(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    drive = args.drive or SHARED_DRIVE
    data_note = f"KITTI raw drive {drive}"
    if not (drive / "image_02").is_dir():
        if args.drive is not None:
            sys.exit(f"--drive {drive}: not a KITTI raw drive (no image_02/)")
        drive = drive_path()
        data_note = (
            f"{SHARED_DRIVE} is absent: used the bundled sample {drive} (192x384), so the 'full size' "
            "rows are 192x384, not KITTI's 375x1242"
        )
        print(f"note: {data_note}")
    bundle_path = resolve_bundle(args.bundle)
    try:
        bundle = load_bundle(bundle_path)
    except StereoDSCError as e:
        sys.exit(f"--bundle {bundle_path}: {e}")
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmpd:
        tmp = Path(tmpd)
        workloads = make_workloads(drive, max(frames, pipe_small, pipe_full), tmp, pipe_small)
        sizes = []
        for work, pipe_n in zip(workloads, (pipe_small, pipe_full), strict=True):
            print(f"{work.name}: {frames} frames (+{warmup} warm-up) per measurement", flush=True)
            sizes.append(run_size(bundle, work, frames, warmup, min(pipe_n, len(work.pairs)), tmp, args.pairing))
        info = bundle_info(bundle)
    machine["load_avg_1min_end"] = load1()
    result = {
        "benchmark": "stereodsc edge encode / host decode / loopback pipeline on CPU onnxruntime, pipeline overhead",
        "data": data_note,
        "quick": args.quick,
        "pipeline_pairing": args.pairing,
        "frames_per_measurement": frames,
        "warmup_frames": warmup,
        "threads_note": "edge/host rows: EdgeEncoder/HostDecoder(threads=N); the pipeline's processes and the "
        "in-process HostService use onnxruntime's default (threads=0)",
        "overhead_formula": {
            "overhead_per_pair": "edge wire pack (frame()+pack(), ref + dep) + edge audit log record (sha256 of "
            "symbols + JSON line, ref + dep) + loopback ZeroMQ send-to-recv (ref + dep) + host service time per "
            "pair not spent in HostDecoder.decode (unpack/CRC/bounds checks, gap count, pairing, reference cache, "
            "symbols sha256, frame log line, stats)",
            "model_per_pair": "edge encode total (ref + dep: padding + edge graph + rANS) + host decode total "
            "(ref + dep: rANS + host graph + padding/crop)",
            "share": "overhead_per_pair / model_per_pair, sums of per-stage medians, per thread count; the "
            "headline is the worst thread count",
            "target": TARGET_SHARE,
            "excluded": "capture (PNG reading), rectification, the PNG sink, queueing waits (latency, not work)",
        },
        "machine": machine,
        "versions": versions(),
        "bundle": info,
        "sizes": sizes,
        "runtime_s": round(time.monotonic() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nruntime {result['runtime_s']} s, load {machine['load_avg_1min_start']} -> {machine['load_avg_1min_end']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
