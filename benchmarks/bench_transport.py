"""The camera-to-host link over loopback TCP: `FrameSender` -> `FrameReceiver` (ZeroMQ DEALER/ROUTER
with an ack per frame), for the frame sizes the shipped codecs produce.

Frames: the first stereo pair of each workload (128x256 paper protocol, native 375x1242) encoded by
every codec of every shipped bundle (and ``--bundle``) at its lowest and highest quality, packed as
the cameras send them (a codec whose graphs do not run at a size is left out, with the reason).
Frames of equal size within 10 % are measured once. For each frame:

- latency, one frame at a time (``--frames`` of them, 2 ms apart, outside the timing): the send call,
  send call to the bytes returned by ``FrameReceiver.recv`` (which acks), and send call to the ack
  seen by the sender (``FrameSender.drain``): the round trip a camera waits for before it counts the
  frame delivered;
- throughput, as fast as the link goes: the receiver reads in its own thread, the sender sends
  back to back; a send refused because ``max_in_flight`` (8) frames await their acks waits up to
  1 ms for acks (``drain``) and is retried (the refusals are counted). Frames/s and MB/s from the
  first send to the last frame received, ``--burst`` frames.

Writes ``benchmarks/results/transport.json``.

    python benchmarks/bench_transport.py [--frames 200] [--burst 2000] [--bundle PATH] [--drive KITTI_DRIVE]
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import common
from stereodsc.bundle import load_bundle
from stereodsc.bundles import shipped_bundles
from stereodsc.codec import EdgeEncoder
from stereodsc.errors import StereoDSCError
from stereodsc.pipeline import free_port
from stereodsc.transport import FrameReceiver, FrameSender

SEND_GAP_S = 0.002
MAX_FRAME_BYTES = 1 << 24


def shipped_frames(extra: Path | None, works: list[common.Workload]) -> tuple[list[dict[str, Any]], list[str]]:
    """One packed frame per (bundle, codec, lowest/highest quality, size); and what could not be encoded."""
    folders = [*shipped_bundles().values(), *([extra] if extra else [])]
    frames, skipped = [], []
    for folder in folders:
        bundle, name = load_bundle(folder), folder.name
        for role, codec in bundle.codecs.items():
            for quality in sorted({0, len(codec.qualities) - 1}):
                enc = EdgeEncoder(bundle, role, quality)
                for work in works:
                    label = f"{name}/{role}/q{quality}/{work.name}"
                    try:
                        enc.check_size(work.size)  # the host must be able to decode it too
                        encoded = enc.encode(work.pairs[0][0 if role == "intra" else 1])
                    except StereoDSCError as e:
                        skipped.append(f"{label}: {e}")
                        continue
                    data = enc.frame(encoded, rig_id=1, camera_id=0, seq=0, t_capture_ns=0).pack()
                    frames.append({"frame": label, "model": codec.model, "bytes": len(data), "data": data})
                enc.close()
    return frames, skipped


def distinct(frames: list[dict[str, Any]], tolerance: float = 0.1) -> list[dict[str, Any]]:
    """The frames, smallest first, leaving out any within `tolerance` of the size of one kept."""
    kept: list[dict[str, Any]] = []
    for f in sorted(frames, key=lambda f: f["bytes"]):
        if kept and f["bytes"] <= kept[-1]["bytes"] * (1 + tolerance):
            kept[-1]["same_size_as"].append(f["frame"])
            continue
        kept.append({**f, "same_size_as": []})
    return kept


def connect(sender: FrameSender, receiver: FrameReceiver, data: bytes) -> None:
    """Send until the connection is up (IMMEDIATE: sends are refused before) and take that frame."""
    deadline = time.monotonic() + 10
    while not sender.send(data):
        if time.monotonic() > deadline:
            raise RuntimeError("the loopback connection did not come up in 10 s")
        time.sleep(0.01)
    if receiver.recv(timeout_ms=5000) is None or sender.drain(5000):
        raise RuntimeError("the loopback link lost the first frame")


def latency(data: bytes, frames: int, warmup: int) -> dict[str, Any]:
    """One frame at a time: send call, send -> received, send -> ack at the sender."""
    receiver = FrameReceiver("tcp://127.0.0.1:*", max_frame_bytes=MAX_FRAME_BYTES)
    sender = FrameSender(receiver.endpoint)
    send_call, received, acked = [], [], []
    refused = 0
    try:
        connect(sender, receiver, data)
        for i in range(warmup + frames):
            time.sleep(SEND_GAP_S)
            t0 = time.perf_counter()
            while not sender.send(data):
                refused += 1
                if refused > 100:
                    raise RuntimeError("the loopback link refuses every send")
                time.sleep(SEND_GAP_S)
                t0 = time.perf_counter()
            t1 = time.perf_counter()
            got = receiver.recv(timeout_ms=5000)
            t2 = time.perf_counter()
            if got is None or len(got) != len(data) or sender.drain(5000):
                raise RuntimeError("the loopback link lost a frame")
            t3 = time.perf_counter()
            if i >= warmup:
                send_call.append(t1 - t0)
                received.append(t2 - t0)
                acked.append(t3 - t0)
    finally:
        sender.close()
        receiver.close()
    return {
        "send_call": common.summary(send_call),
        "send_to_recv": common.summary(received),
        "send_to_ack": common.summary(acked),
        "refused_sends_retried": refused,
    }


def throughput(data: bytes, burst: int) -> dict[str, Any]:
    """`burst` frames back to back; the receiver reads in its own thread (each socket stays in one thread)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    bound, first_rx, acked = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, Any] = {"frames": 0, "last": 0.0}

    def receive() -> None:
        receiver = FrameReceiver(endpoint, max_frame_bytes=MAX_FRAME_BYTES)
        bound.set()
        try:
            while got["frames"] < burst + 1:  # +1: the frame that opened the connection
                if receiver.recv(timeout_ms=5000) is None:
                    break
                got["frames"] += 1
                got["last"] = time.perf_counter()
                first_rx.set()
            acked.wait(15)  # LINGER=0: closing at once would discard the last acks still queued
        finally:
            receiver.close()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    bound.wait(10)
    sender = FrameSender(endpoint)
    refused = 0
    try:
        deadline = time.monotonic() + 10
        while not sender.send(data):  # the connection comes up
            if time.monotonic() > deadline:
                raise RuntimeError("the loopback connection did not come up in 10 s")
            time.sleep(0.01)
        first_rx.wait(10)
        sender.drain(5000)
        t0 = time.perf_counter()
        for _ in range(burst):
            while not sender.send(data):
                refused += 1
                sender.drain(1)  # waits up to 1 ms for the acks of what is in flight
        unconfirmed = sender.drain(10_000)
        t_ack = time.perf_counter()
        stats = sender.stats
    finally:
        acked.set()
        sender.close()
        thread.join(10)
    span = got["last"] - t0
    received = got["frames"] - 1
    return {
        "frames": burst,
        "received": received,
        "unconfirmed_at_end": unconfirmed,
        "refused_window_full": refused,
        "lost": stats.lost,
        "frames_per_s": round(received / span, 1) if span > 0 else None,
        "MB_per_s": round(received * len(data) / span / 1e6, 2) if span > 0 else None,
        "last_ack_after_s": round(t_ack - t0, 4),
    }


def main() -> None:
    parser = common.parser(__doc__, frames=200, warmup=5)
    parser.add_argument("--burst", type=int, default=2000, help="frames per throughput run (2000)")
    args = parser.parse_args()
    result = common.Result(
        "transport", "FrameSender -> FrameReceiver over loopback TCP: latency, ack, throughput", args.out
    )
    works, data = common.workloads(1, args.drive)
    frames, skipped = shipped_frames(args.bundle, works)
    rows = []
    for f in distinct(frames):
        print(f"{f['frame']}: {f['bytes']} bytes", flush=True)
        row = {k: v for k, v in f.items() if k != "data"}
        row["latency"] = latency(f["data"], args.frames, args.warmup)
        row["throughput"] = throughput(f["data"], args.burst)
        rows.append(row)
    print(f"\n{'frame':<36} {'bytes':>7} {'send':>7} {'recv':>7} {'ack':>7} {'ack p99':>8} {'frames/s':>9} {'MB/s':>7}")
    for r in rows:
        lat, thr = r["latency"], r["throughput"]
        cells = (r["frame"], r["bytes"], *(common.med(lat[k]) for k in ("send_call", "send_to_recv", "send_to_ack")))
        print("{:<36} {:>7} {:>7.3f} {:>7.3f} {:>7.3f}".format(*cells), end="")
        print(f" {lat['send_to_ack']['p99_ms']:>8.3f} {thr['frames_per_s'] or 0:>9.0f} {thr['MB_per_s'] or 0:>7.1f}")
    print("  (ms, medians; one frame at a time 2 ms apart; frames/s and MB/s back to back, window of 8 unacked)")
    result.write(
        {
            "data": data,
            "frames": "the first pair of each workload, encoded by every shipped codec at its lowest and highest "
            "quality; frames within 10 % of a measured size are listed under same_size_as",
            "skipped": skipped,
            "link": "FrameSender / FrameReceiver defaults (SNDHWM 4, max_in_flight 8, RCVHWM 64), loopback TCP",
            "latency_frames": args.frames,
            "warmup_frames": args.warmup,
            "gap_between_sends_ms": SEND_GAP_S * 1e3,
            "rows": rows,
        }
    )


if __name__ == "__main__":
    main()
