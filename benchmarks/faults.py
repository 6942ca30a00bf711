"""Faults a rig meets in the field, each against real processes on loopback (a host and two camera
daemons streaming the bundled KITTI sample at 128x256, the shipped bundle, ``--fps`` per camera):

- ``baseline``: nothing goes wrong;
- ``host_kill_restart``: the host is SIGKILLed mid-stream and a new one starts on the same port;
- ``camera_kill_restart``: the reference camera, then the dependent camera, is SIGKILLed and restarted;
- ``key_added_late``: CURVE on, the dependent camera's key is not allowed; it is added and the host
  restarted; the camera (still running) must re-handshake by itself;
- ``id_flood``: a raw ZeroMQ sender offers one valid frame under each of 20,000 made-up camera ids
  while a third camera starts: it must not be locked out;
- ``garbage_flood``: a raw sender offers 20,000 messages of random bytes (half of them without the
  ack envelope) while the cameras stream.

For each scenario: per camera and per camera session, frames sent (the camera's frame log), acked and
lost (its final statistics: a SIGKILLed run writes none) and decoded (the host's frame log); the
host's outcomes by reason (every host run, the last persisted statistics of a killed one included);
the peak resident memory of each process (``VmHWM``). Writes ``benchmarks/results/faults.json``.

    python benchmarks/faults.py [--fps 5] [--seconds 8] [--only baseline id_flood] [--out PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy; inherited by the pipeline's processes

import argparse
import json
import random
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from common import machine_info
from soak import peak_kib, small_drive
from stereodsc.bundle import load_bundle
from stereodsc.bundles import default_bundle
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.images import read_rgb
from stereodsc.pipeline import STEREO, CameraSpec, edge_config, free_port, host_config, spawn
from stereodsc.security import new_keypair
from stereodsc.wire import Frame, unpack

RESULTS = Path(__file__).parent / "results"
FLOOD = 20_000


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


class Rig:
    """One scenario's processes, in `folder`: hosts (by tag) and cameras (by id), with their configs."""

    def __init__(self, folder: Path, bundle: Path, drive: Path, fps: float, security: dict[str, Any] | None) -> None:
        self.folder, self.bundle, self.drive, self.fps = folder, bundle, drive, fps
        self.port = free_port()
        self.security = security
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.hosts: list[str] = []
        self.cameras: dict[int, Path] = {}
        self.peak: dict[str, int] = {}  # KiB, by process name (a restarted process: the larger run)
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        """Poll each live process's VmHWM every 0.2 s (the last read before it exits is its peak)."""
        while not self._done.is_set():
            for name, proc in list(self.procs.items()):
                kib = peak_kib(proc.pid) if proc.poll() is None else None
                if kib is not None:
                    self.peak[name] = max(self.peak.get(name, 0), kib)
            self._done.wait(0.2)

    def host(self, tag: str) -> None:
        extra: dict[str, dict[str, Any]] = {
            "sinks": {"png_dir": "", "frame_log": str(self.folder / "host_frames.jsonl")}
        }
        extra["host"] = {"stats_file_every_s": 0.5, "stats_every_s": 5.0}
        if self.security:
            extra["security"] = self.security["host"]
        cfg = host_config(self.folder, self.port, self.bundle, idle_exit_s=0.0, tag=tag, extra=extra)
        self.procs[tag] = spawn("host", cfg)
        self.hosts.append(tag)

    def camera(self, cam: CameraSpec, restart: bool = False) -> None:
        if not restart:
            extra: dict[str, dict[str, Any]] = {"link": {"rehandshake_s": 2.0}}
            if self.security:
                extra["security"] = self.security["cameras"][cam.camera_id]
            self.cameras[cam.camera_id] = edge_config(
                self.folder, self.port, self.bundle, cam, frames=0, fps=self.fps, source="kitti",
                path=str(self.drive), loop=True, extra=extra,
            )  # fmt: skip
        self.procs[f"edge{cam.camera_id}"] = spawn("edge", self.cameras[cam.camera_id])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def decoded(self, camera: int | None = None) -> int:
        """Frames the host decoded, of rig 1 camera `camera` (None: any)."""
        records = _jsonl(self.folder / "host_frames.jsonl")
        return sum(camera is None or (r["rig"], r["camera"]) == (1, camera) for r in records)

    def wait_for(self, condition: Callable[[], bool], seconds: float) -> float | None:
        """Seconds until `condition` held, or None if it did not within `seconds`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if condition():
                return round(time.monotonic() - t0, 2)
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        """SIGTERM the cameras (they drain and write their statistics), then the hosts still running."""
        for name, proc in self.procs.items():
            if name.startswith("edge") and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            if name.startswith("edge"):
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        time.sleep(1.0)  # the host takes the last acked frames
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._done.set()
        self._sampler.join()

    def report(self) -> dict[str, Any]:
        host_frames = _jsonl(self.folder / "host_frames.jsonl")
        decoded = Counter((r["camera"], r.get("session", 0)) for r in host_frames if r["rig"] == 1)
        cameras: dict[str, Any] = {}
        for cam_id in sorted(self.cameras):
            records = _jsonl(self.folder / f"edge{cam_id}_frames.jsonl")
            final = _json(self.folder / f"edge{cam_id}_stats.json")  # the last run's, if it ended cleanly
            sessions = []
            for session in dict.fromkeys(r["session"] for r in records):
                mine = [r for r in records if r["session"] == session]
                row: dict[str, Any] = {
                    "session": f"{session:08x}",
                    "captured": len(mine),
                    "sent": sum(r["sent"] for r in mine),
                    "decoded": decoded[(cam_id, session)],
                }
                if final.get("session") == session:
                    row |= {k: final[k] for k in ("acked", "lost", "dropped", "dropped_by", "rehandshakes")}
                    row["sent_eq_acked_plus_lost"] = final["sent"] == final["acked"] + final["lost"]
                else:
                    row["acked"] = row["lost"] = "killed (no final statistics)"
                sessions.append(row)
            cameras[str(cam_id)] = sessions
        hosts = {}
        for tag in self.hosts:
            s = _json(self.folder / f"{tag}_stats.json")
            decoded_total = s["decoded_reference"] + s["decoded_with_side_info"]
            decoded_total += sum(s["decoded_with_last_reference"].values()) + sum(
                s["decoded_without_side_info"].values()
            )
            outcomes = sum(s["rejected"].values()) + sum(s["dropped"].values()) + sum(s["decode_errors"].values())
            hosts[tag] = {
                "final": s["final"],
                "received": s["received"],
                "decoded_reference": s["decoded_reference"],
                "decoded_with_side_info": s["decoded_with_side_info"],
                "decoded_with_last_reference": s["decoded_with_last_reference"],
                "decoded_without_side_info": s["decoded_without_side_info"],
                "dropped": s["dropped"],
                "rejected": s["rejected"],
                "decode_errors": s["decode_errors"],
                "refused_keys": sum(s["refused_keys"].values()),
                "camera_restarts": s["camera_restarts"],
                "cameras_evicted": s["cameras_evicted"],
                "pending": s["pending"],
                "link": s["link"],
                "previous_run": s["previous_run"],
                "every_message_accounted": s["received"] == decoded_total + outcomes + s["pending"],
            }
        peak = {name: round(kib / 1024, 1) for name, kib in self.peak.items()}
        return {"cameras": cameras, "hosts": hosts, "peak_rss_mib": peak}


def _flood_frames(bundle: Path, drive: Path) -> bytes:
    """One valid reference frame of the bundle (its header's camera id is rewritten per message)."""
    enc = EdgeEncoder(load_bundle(bundle), "intra", 0)
    image = read_rgb(kitti_frames(drive, "left")[0][0])
    return enc.frame(enc.encode(image), rig_id=9, camera_id=0, seq=0, t_capture_ns=0).pack()


def _raw_flood(endpoint: str, messages: Callable[[int], list[bytes]], n: int) -> dict[str, int]:
    """Offer `n` messages from one raw DEALER as fast as it takes them (never blocking, 30 s at most); read
    its acks."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.connect(endpoint)
    sent = acks = 0
    deadline = time.monotonic() + 30
    i = 0
    while i < n and time.monotonic() < deadline:
        try:
            sock.send_multipart(messages(i), zmq.NOBLOCK)
            sent += 1
            i += 1
        except zmq.Again:
            sock.poll(10, zmq.POLLIN)
        while sock.poll(0, zmq.POLLIN):
            sock.recv()
            acks += 1
    end = time.monotonic() + 2
    while time.monotonic() < end:
        if sock.poll(100, zmq.POLLIN):
            sock.recv()
            acks += 1
    sock.close()
    ctx.term()
    return {"offered": n, "sent": sent, "acked": acks}


def scenario(name: str, folder: Path, bundle: Path, drive: Path, fps: float, seconds: float) -> dict[str, Any]:
    security = None
    if name == "key_added_late":
        keys, allowed = folder / "keys", folder / "keys" / "allowed"
        for key in ("host", "rig1_cam0", "rig1_cam1"):
            new_keypair(key, keys)
        allowed.mkdir()
        (allowed / "rig1_cam0.key").write_bytes((keys / "rig1_cam0.key").read_bytes())
        security = {
            "host": {"curve": True, "server_secret": str(keys / "host.key_secret"), "allowed_keys": str(allowed)},
            "cameras": {
                c: {
                    "curve": True,
                    "secret": str(keys / f"rig1_cam{c}.key_secret"),
                    "server_public": str(keys / "host.key"),
                }
                for c in (0, 1)
            },
        }
    rig = Rig(folder, bundle, drive, fps, security)
    events: dict[str, Any] = {}
    started = time.monotonic()
    try:
        rig.host("host")
        for cam in STEREO:
            rig.camera(cam)
        events["first_pair_s"] = rig.wait_for(lambda: rig.decoded(1) > 0 or rig.decoded(0) >= 5, 120)
        if name == "baseline":
            time.sleep(seconds)
        elif name == "host_kill_restart":
            time.sleep(seconds / 2)
            rig.kill("host")
            time.sleep(1.0)
            rig.host("host_b")
            before = rig.decoded()
            events["decoding_again_after_s"] = rig.wait_for(lambda: rig.decoded() > before, 120)
            time.sleep(seconds / 2)
        elif name == "camera_kill_restart":
            for cam in STEREO:
                time.sleep(seconds / 2)
                rig.kill(f"edge{cam.camera_id}")
                before = rig.decoded(1)
                rig.camera(cam, restart=True)

                def pairs_again(before: int = before) -> bool:
                    return rig.decoded(1) > before + 2

                events[f"camera{cam.camera_id}_pairs_again_after_s"] = rig.wait_for(pairs_again, 120)
            time.sleep(seconds / 2)
        elif name == "key_added_late":
            time.sleep(seconds / 2)
            allowed = folder / "keys" / "allowed"
            (allowed / "rig1_cam1.key").write_bytes((folder / "keys" / "rig1_cam1.key").read_bytes())
            rig.kill("host", signal.SIGTERM)
            rig.host("host_b")
            events["refused_camera_decoded_after_s"] = rig.wait_for(lambda: rig.decoded(1) > 0, 120)
            time.sleep(seconds / 2)
        elif name == "id_flood":
            frame = unpack(_flood_frames(bundle, drive))
            endpoint = f"tcp://127.0.0.1:{rig.port}"

            def made_up(i: int) -> list[bytes]:
                f = Frame(frame.bundle_id, 0, 9 + i // 60_000, i % 60_000, frame.role, 0, 0, frame.height,
                          frame.width, frame.segments)  # fmt: skip
                return [struct.pack(">II", 0, i), f.pack()]

            result: dict[str, int] = {}
            flood = threading.Thread(target=lambda: result.update(_raw_flood(endpoint, made_up, FLOOD)))
            flood.start()
            time.sleep(1.0)
            rig.camera(CameraSpec(2, "dependent", "right"))  # a camera the host never saw, during the flood
            events["new_camera_decoded_after_s"] = rig.wait_for(lambda: rig.decoded(2) > 0, 120)
            flood.join()
            events["flood"] = result
            time.sleep(seconds / 2)
        elif name == "garbage_flood":
            rng = random.Random(15)

            def garbage(i: int) -> list[bytes]:
                body = rng.randbytes(rng.randint(1, 2000))
                return [struct.pack(">II", 0, i), body] if i % 2 else [body]

            events["flood"] = _raw_flood(f"tcp://127.0.0.1:{rig.port}", garbage, FLOOD)
            time.sleep(seconds / 2)
        else:
            raise SystemExit(f"unknown scenario {name!r}")
    finally:
        rig.stop()
    return {"scenario": name, "wall_s": round(time.monotonic() - started, 1), "events": events, **rig.report()}


SCENARIOS = ("baseline", "host_kill_restart", "camera_kill_restart", "key_added_late", "id_flood", "garbage_flood")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=5.0, help="each camera's frame rate")
    parser.add_argument("--seconds", type=float, default=8.0, help="streaming time around each fault")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args()
    machine = machine_info()
    runs = []
    with tempfile.TemporaryDirectory(prefix="faults_") as tmp:
        drive = small_drive(Path(tmp) / "drive")
        for name in args.only:
            folder = Path(tmp) / name
            folder.mkdir()
            print(f"--- {name}", flush=True)
            runs.append(scenario(name, folder, default_bundle(), drive, args.fps, args.seconds))
            print(json.dumps(runs[-1]["events"]), json.dumps(runs[-1]["hosts"]), flush=True)
    out = {"machine": machine, "fps": args.fps, "seconds": args.seconds, "bundle": "default (shipped)", "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
