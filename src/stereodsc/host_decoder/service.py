"""The host decoder service: receive -> validate -> pair -> decode -> deliver.

Every received message ends in exactly one outcome, counted by reason: rejected by the parser
(typed `BitstreamError`), dropped by the admission limits (``rate_limited``, ``too_many_cameras``)
or the pairing policy, or decoded (a reference, or a dependent with or without side information).
CURVE handshakes refused by the camera-key allow-list never become messages; they are counted apart.
Gaps in a camera's sequence numbers (frames lost before they reached the host) are counted too.
Nothing in the loop can crash the service: an unexpected error while handling one frame is logged
with its traceback, counted, and the loop goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stereodsc.errors import BitstreamError, ConfigError
from stereodsc.host_decoder.metrics import Histogram, MetricsServer, MetricsSnapshot, parse_listen
from stereodsc.host_decoder.pairing import (
    DecodeDependent,
    DecodeReference,
    Dropped,
    Event,
    Pairer,
    PairingPolicy,
    ReleaseReference,
)
from stereodsc.tomlio import load_toml, sections
from stereodsc.wire import BundleMismatchError, Frame, Role, seq_delta, unpack

if TYPE_CHECKING:
    from stereodsc.transport import ReceiverStats

log = logging.getLogger("stereodsc.host")

MAX_CAMERAS = 4096
"""Cameras tracked at most (all rigs): frames from further (rig, camera) ids, e.g. a sender making up ids,
are dropped as "too_many_cameras" unless a stale camera's slot is free, so memory stays bounded."""


@dataclass
class HostSection:
    endpoint: str = "tcp://*:5555"
    bundle: str = ""  # bundle folder, or a shipped bundle's name (stereodsc models); empty: "default"
    extra_bundles: list[str] = field(default_factory=list)  # more bundles the cameras may use, e.g. ["dsin"]
    backend: str = "cpu"  # cpu | cuda | tensorrt-ep | tensorrt
    max_frame_bytes: int = 1 << 20
    recv_hwm: int = 64
    stats_every_s: float = 10.0
    max_frames: int = 0  # stop after this many received messages (0: never)
    idle_exit_s: float = 0.0  # stop when nothing arrived for this long after the first frame (0: never)
    stats_file: str = ""  # write the final statistics here as JSON
    max_cameras_per_rig: int = 0  # frames from further camera ids of a rig: dropped "too_many_cameras" (0: no limit)
    max_frames_per_s_per_camera: float = 0.0  # token bucket (1 s burst); beyond: dropped "rate_limited" (0: off)
    stale_after_s: float = 0.0  # a camera silent this long is reported stale (log, stats "cameras") (0: off)
    metrics_listen: str = ""  # "host:port": serve Prometheus metrics at http://host:port/metrics (empty: off)


@dataclass
class PairingSection:
    match_by: str = "seq"  # "seq" (cameras share a trigger) or "time" (capture clocks within tolerance)
    tolerance_ms: float = 20.0
    deadline_ms: float = 1000.0
    max_pending: int = 64
    max_references: int = 8
    policy: str = "latest_reference"  # wait | latest_reference | no_side_info | drop


@dataclass
class SinkSection:
    png_dir: str = ""  # write every decoded frame as rig<R>_cam<C>_<seq>.png
    publish: str = ""  # bind a ZeroMQ PUB socket here and publish decoded frames
    frame_log: str = ""  # JSON lines, one per decoded frame (symbols sha256, latency): audits and tests


@dataclass
class SecuritySection:
    curve: bool = False  # false: plain TCP, anyone who reaches the port can send frames (logged at start)
    server_secret: str = ""  # the host's keypair (stereodsc keys new host): host.key_secret
    allowed_keys: str = ""  # folder of the public keys (*.key) of the cameras let in


@dataclass
class HostConfig:
    host: HostSection = field(default_factory=HostSection)
    pairing: PairingSection = field(default_factory=PairingSection)
    sinks: SinkSection = field(default_factory=SinkSection)
    security: SecuritySection = field(default_factory=SecuritySection)


def host_config_from_dict(raw: dict[str, Any], source: str = "<host config>") -> HostConfig:
    schema = {"host": HostSection, "pairing": PairingSection, "sinks": SinkSection, "security": SecuritySection}
    cfg = HostConfig(**sections(raw, schema, source))
    policies = [p.value for p in PairingPolicy]
    if cfg.pairing.policy not in policies:
        raise ConfigError(f"{source}: [pairing] policy = {cfg.pairing.policy!r}; choose one of {policies}")
    h = cfg.host
    if h.max_cameras_per_rig < 0 or h.max_frames_per_s_per_camera < 0 or h.stale_after_s < 0:
        raise ConfigError(
            f"{source}: [host] max_cameras_per_rig, max_frames_per_s_per_camera and stale_after_s must be >= 0"
        )
    sec = cfg.security
    if sec.curve and not (sec.server_secret and sec.allowed_keys):
        raise ConfigError(f"{source}: [security] curve = true needs server_secret and allowed_keys")
    if not all(isinstance(b, str) and b for b in cfg.host.extra_bundles):
        raise ConfigError(f"{source}: [host] extra_bundles must be a list of bundle folders or shipped names")
    if h.metrics_listen:
        parse_listen(h.metrics_listen, source)
    return cfg


def load_host_config(path: str | Path) -> HostConfig:
    return host_config_from_dict(load_toml(path), str(path))


@dataclass(frozen=True)
class DecodedFrame:
    """What a sink receives: the picture and where it came from."""

    frame: Frame
    image: np.ndarray  # uint8 RGB HxWx3
    side_info_used: bool
    wire_bytes: int
    symbols: np.ndarray  # int32: the decoded y symbols
    latency_s: float  # from receipt to delivery

    @property
    def symbols_sha256(self) -> str:
        """For audits: equal to the camera's frame log entry when the decode was bit-exact."""
        return hashlib.sha256(self.symbols.tobytes()).hexdigest()


class LatencyStats:
    """Per-stage latency samples (the most recent 10,000) and their percentiles, and a histogram of all."""

    def __init__(self) -> None:
        self.samples: dict[str, deque[float]] = {}
        self.histograms: dict[str, Histogram] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.samples.setdefault(stage, deque(maxlen=10_000)).append(seconds)
        self.histograms.setdefault(stage, Histogram()).observe(seconds)

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.samples.items():
            arr = np.asarray(values) * 1000
            out[stage] = {f"p{q}_ms": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)}
            out[stage]["count"] = len(arr)
        return out


@dataclass
class CameraState:
    """What the host knows about one camera: when it was last heard and its rate-limit bucket."""

    last_seen: float  # time.monotonic() of its last parsed frame
    tokens: float


@dataclass
class HostStats:
    received: int = 0
    bytes_received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by error type
    decoded_reference: int = 0
    decoded_with_side_info: int = 0
    decoded_without_side_info: Counter[str] = field(default_factory=Counter)  # by reason
    dropped: Counter[str] = field(default_factory=Counter)  # by pairing reason, rate_limited, too_many_cameras
    decode_errors: Counter[str] = field(default_factory=Counter)
    sequence_gaps: int = 0  # frames a camera numbered but the host never received
    refused_keys: Counter[str] = field(default_factory=Counter)  # CURVE handshakes refused, by camera key
    link: ReceiverStats | None = None  # the receiver's own counters (acks_dropped, rejected_envelope)
    latency: LatencyStats = field(default_factory=LatencyStats)
    cameras: dict[tuple[int, int], CameraState] = field(default_factory=dict)  # (rig, camera) -> state
    stale_after_s: float = 0.0

    def stale_cameras(self, now: float) -> list[str]:
        """``"rig.camera"`` of the cameras silent for longer than `stale_after_s` (none when it is 0)."""
        if not self.stale_after_s:
            return []
        return [f"{r}.{c}" for (r, c), st in self.cameras.items() if now - st.last_seen > self.stale_after_s]

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "bytes_received": self.bytes_received,
            "rejected": dict(self.rejected),
            "decoded_reference": self.decoded_reference,
            "decoded_with_side_info": self.decoded_with_side_info,
            "decoded_without_side_info": dict(self.decoded_without_side_info),
            "dropped": dict(self.dropped),
            "decode_errors": dict(self.decode_errors),
            "sequence_gaps": self.sequence_gaps,
            "refused_keys": dict(self.refused_keys),
            "link": {"acks_dropped": self.link.acks_dropped, "rejected_envelope": self.link.rejected_envelope}
            if self.link
            else {},
            "cameras": self._cameras_dict(time.monotonic()),
            "latency": self.latency.percentiles(),
        }

    def _cameras_dict(self, now: float) -> dict[str, dict[str, Any]]:
        stale = set(self.stale_cameras(now))
        return {
            f"{r}.{c}": {"last_seen_s_ago": round(now - st.last_seen, 3), "stale": f"{r}.{c}" in stale}
            for (r, c), st in sorted(self.cameras.items())
        }

    def line(self) -> str:
        decoded = self.decoded_reference + self.decoded_with_side_info + sum(self.decoded_without_side_info.values())
        lat = self.latency.percentiles().get("total", {})
        return (
            f"received {self.received}, decoded {decoded} ({self.decoded_with_side_info} with side info), "
            f"rejected {sum(self.rejected.values())}, dropped {sum(self.dropped.values())}, "
            f"gaps {self.sequence_gaps}, refused keys {sum(self.refused_keys.values())}, "
            f"latency p50 {lat.get('p50_ms', 0):.1f} ms"
        )


def _key(frame: Frame) -> tuple[int, int, int, int]:
    return frame.rig_id, frame.camera_id, frame.seq, frame.t_capture_ns


class HostService:
    """Owns the receiver, the pairer, the decoder and the sinks; `run()` serves until stopped."""

    def __init__(self, cfg: HostConfig, callbacks: list[Callable[[DecodedFrame], None]] | None = None) -> None:
        from stereodsc.bundle import load_bundle
        from stereodsc.bundles import resolve_bundle
        from stereodsc.host_decoder.decoder import HostDecoder
        from stereodsc.security import load_server_curve
        from stereodsc.transport import DecodedPublisher, FrameReceiver

        self.cfg = cfg
        self.bundle = load_bundle(resolve_bundle(cfg.host.bundle))
        bundles = [self.bundle, *(load_bundle(resolve_bundle(b)) for b in cfg.host.extra_bundles)]
        # A frame names its bundle: each camera may run another one (e.g. the reference camera the
        # default bundle's intra codec, a dependent camera DSIN's side-information codec).
        self.decoders = {b.id_bytes: HostDecoder(b, cfg.host.backend) for b in bundles}
        p = cfg.pairing
        self.pairer: Pairer[Frame] = Pairer(
            tolerance_ns=int(p.tolerance_ms * 1e6),
            deadline_ns=int(p.deadline_ms * 1e6),
            max_pending=p.max_pending,
            policy=PairingPolicy(p.policy),
            match_by=p.match_by,  # type: ignore[arg-type]
            max_references=p.max_references,
        )
        sec = cfg.security
        curve = load_server_curve(sec.server_secret, sec.allowed_keys) if sec.curve else None
        self.receiver = FrameReceiver(
            cfg.host.endpoint, rcvhwm=cfg.host.recv_hwm, max_frame_bytes=cfg.host.max_frame_bytes, curve=curve
        )
        self.publisher = DecodedPublisher(cfg.sinks.publish) if cfg.sinks.publish else None
        self.callbacks = list(callbacks or [])
        self.stats = HostStats(stale_after_s=cfg.host.stale_after_s, link=self.receiver.stats)
        self._references: dict[tuple[int, int, int, int], np.ndarray] = {}
        self._arrivals: dict[int, tuple[float, int]] = {}  # id(frame) -> (receipt time, wire bytes)
        self._last_seq: dict[tuple[int, int], int] = {}
        self._frame_log = open(cfg.sinks.frame_log, "a") if cfg.sinks.frame_log else None  # noqa: SIM115
        self._stop = False
        self._last_error_log: dict[str, float] = {}
        self._lock = threading.RLock()  # held while the loop updates the stats; a scrape copies them under it
        self.metrics = MetricsServer(cfg.host.metrics_listen, self.metrics_text) if cfg.host.metrics_listen else None
        if self.metrics is not None:
            log.info("Prometheus metrics at http://%s/metrics", cfg.host.metrics_listen)

    def metrics_text(self) -> str:
        """The statistics in the Prometheus text format, from a copy taken between two frames."""
        with self._lock:
            snapshot = MetricsSnapshot.of(self.stats)
        return snapshot.render()

    def stop(self, *_: object) -> None:
        self._stop = True

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> HostStats:
        h = self.cfg.host
        log.info(
            "host listening on %s, bundles %s, policy %s",
            h.endpoint,
            ", ".join(d.bundle.id[:16] for d in self.decoders.values()),
            self.cfg.pairing.policy,
        )
        sec = self.cfg.security
        if sec.curve:
            log.info("CURVE on: cameras are let in by the public keys in %s", sec.allowed_keys)
        else:
            log.warning("CURVE off ([security] curve = false): frames are unencrypted and any sender is accepted")
        last_stats = last_rx = time.monotonic()
        try:
            while not self._stop:
                self.check_refused()
                data = self.receiver.recv(timeout_ms=50)
                now = time.monotonic()
                if data is not None:
                    last_rx = now
                    self.handle(data, now)
                else:
                    self.act(self.pairer.poll(time.monotonic_ns()))
                if h.max_frames and self.stats.received >= h.max_frames and not self.pairer.pending:
                    break
                if h.idle_exit_s and self.stats.received and now - last_rx > h.idle_exit_s:
                    break
                self.check_liveness(now)
                if now - last_stats >= h.stats_every_s:
                    log.info("host: %s", self.stats.line())
                    last_stats = now
        finally:
            self.close()
        return self.stats

    def handle(self, data: bytes, received_at: float) -> None:
        """One message from the wire: parse, account for gaps, pair, act on what pairing says."""
        with self._lock:
            self._handle(data, received_at)

    def _handle(self, data: bytes, received_at: float) -> None:
        self.stats.received += 1
        self.stats.bytes_received += len(data)
        try:
            t0 = time.perf_counter()
            frame = unpack(data, max_frame_bytes=self.cfg.host.max_frame_bytes)
            if frame.bundle_id not in self.decoders:
                raise BundleMismatchError(
                    f"frame encoded with bundle {frame.bundle_id.hex()}..., this host decodes "
                    f"{', '.join(k.hex() for k in self.decoders)}: deploy the camera's bundle on the host "
                    "([host] bundle or extra_bundles)"
                )
            self.stats.latency.add("parse", time.perf_counter() - t0)
        except BitstreamError as e:
            self.stats.rejected[type(e).__name__] += 1
            self._log_limited(type(e).__name__, "rejected a frame: %s", e)
            return
        limited = self._admit(frame, received_at)
        if limited:
            self.stats.dropped[limited] += 1
            self._log_limited(
                f"drop-{limited}", "dropped camera %d.%d seq %d: %s", frame.rig_id, frame.camera_id, frame.seq, limited
            )
            return
        self._count_gap(frame)
        self._arrivals[id(frame)] = (received_at, len(data))
        self.act(self.pairer.push(frame, time.monotonic_ns()))

    def act(self, events: list[Event[Frame]]) -> None:
        with self._lock:
            for event in events:
                try:
                    self._act(event)
                except Exception as e:  # a bug must cost one frame, never the service
                    self.stats.decode_errors[type(e).__name__] += 1
                    log.exception("error while handling %s", type(event).__name__)
                finally:
                    if not isinstance(event, ReleaseReference):
                        self._arrivals.pop(id(event.frame), None)

    def _act(self, event: Event[Frame]) -> None:
        if isinstance(event, DecodeReference):
            image = self._decode(event.frame, None)
            if image is not None:
                self._references[_key(event.frame)] = image
                self.stats.decoded_reference += 1
        elif isinstance(event, DecodeDependent):
            side = self._references.get(_key(event.reference)) if event.reference is not None else None
            if self._decode(event.frame, side) is not None:
                if side is not None:
                    self.stats.decoded_with_side_info += 1
                else:
                    reason = event.reason.value if event.reference is None else "reference_undecodable"
                    self.stats.decoded_without_side_info[reason] += 1
        elif isinstance(event, Dropped):
            self.stats.dropped[event.reason.value] += 1
            self._log_limited(
                f"drop-{event.reason.value}",
                "dropped camera %d.%d seq %d: %s",
                event.frame.rig_id,
                event.frame.camera_id,
                event.frame.seq,
                event.reason.value,
            )
        elif isinstance(event, ReleaseReference):
            self._references.pop(_key(event.frame), None)

    def _decode(self, frame: Frame, side: np.ndarray | None) -> np.ndarray | None:
        """Decode and deliver one frame; a corrupt payload is counted and yields None."""
        t0 = time.perf_counter()
        try:
            decoded = self.decoders[frame.bundle_id].decode(frame, side)
        except BitstreamError as e:
            self.stats.decode_errors[type(e).__name__] += 1
            self._log_limited(
                type(e).__name__,
                "cannot decode camera %d.%d seq %d: %s",
                frame.rig_id,
                frame.camera_id,
                frame.seq,
                e,
            )
            return None
        t1 = time.perf_counter()
        self.stats.latency.add("decode", t1 - t0)
        received_at, wire_bytes = self._arrivals.get(id(frame), (time.monotonic(), 0))
        latency = time.monotonic() - received_at
        out = DecodedFrame(frame, decoded.image, side is not None, wire_bytes, decoded.symbols, latency)
        self.deliver(out)
        self.stats.latency.add("total", time.monotonic() - received_at)
        return decoded.image

    # ---- sinks ---------------------------------------------------------------------------------
    def deliver(self, out: DecodedFrame) -> None:
        f, sinks = out.frame, self.cfg.sinks
        name = f"rig{f.rig_id}_cam{f.camera_id}_{f.seq:010d}"
        if sinks.png_dir:
            from stereodsc.images import write_rgb

            write_rgb(Path(sinks.png_dir) / f"{name}.png", out.image)
        if self.publisher is not None or self._frame_log is not None:
            header = {
                "rig": f.rig_id,
                "camera": f.camera_id,
                "role": Role(f.role).name.lower(),
                "seq": f.seq,
                "t_capture_ns": f.t_capture_ns,
                "height": int(out.image.shape[0]),
                "width": int(out.image.shape[1]),
                "side_info": out.side_info_used,
                "bytes": out.wire_bytes,
                "latency_ms": round(out.latency_s * 1e3, 3),
            }
            if self.publisher is not None:
                topic = f"rig{f.rig_id}.cam{f.camera_id}".encode()
                self.publisher.publish(topic, json.dumps(header).encode(), out.image.tobytes())
            if self._frame_log is not None:
                self._frame_log.write(json.dumps(header | {"symbols": out.symbols_sha256}) + "\n")
                self._frame_log.flush()
        for callback in self.callbacks:
            callback(out)

    # ---- helpers -------------------------------------------------------------------------------
    def _admit(self, frame: Frame, now: float) -> str | None:
        """Apply ``max_cameras_per_rig`` (and `MAX_CAMERAS` in all) and the per-camera rate limit;
        the drop reason, or None. A stale camera's slot goes to a new camera."""
        h, cameras = self.cfg.host, self.stats.cameras
        cam = (frame.rig_id, frame.camera_id)
        state = cameras.get(cam)
        if state is None:
            rig = [k for k in cameras if k[0] == frame.rig_id] if h.max_cameras_per_rig else []
            pool = rig if h.max_cameras_per_rig and len(rig) >= h.max_cameras_per_rig else None
            if pool is None and len(cameras) >= MAX_CAMERAS:
                pool = list(cameras)
            if pool is not None:
                stale = set(self.stats.stale_cameras(now))
                evictable = [k for k in pool if f"{k[0]}.{k[1]}" in stale]
                if not evictable:
                    return "too_many_cameras"
                del cameras[evictable[0]]
                self._last_seq.pop(evictable[0], None)
            state = cameras[cam] = CameraState(now, max(1.0, h.max_frames_per_s_per_camera))
        rate = h.max_frames_per_s_per_camera
        if rate:
            state.tokens = min(max(1.0, rate), state.tokens + (now - state.last_seen) * rate)
        state.last_seen = now
        if rate:
            if state.tokens < 1.0:
                return "rate_limited"
            state.tokens -= 1.0
        return None

    def check_liveness(self, now: float) -> None:
        """Log (once per interval) the cameras silent for longer than ``stale_after_s``."""
        stale = self.stats.stale_cameras(now)
        if stale:
            self._log_limited("stale", "stale cameras (silent > %.1f s): %s", self.cfg.host.stale_after_s, stale)

    def check_refused(self) -> None:
        """Count and log (once per interval) the camera keys the CURVE allow-list refused."""
        for key in self.receiver.refused_keys():
            with self._lock:
                self.stats.refused_keys[key] += 1
            self._log_limited("refused-key", "refused camera key %s: not in %s", key, self.cfg.security.allowed_keys)

    def _count_gap(self, frame: Frame) -> None:
        cam = (frame.rig_id, frame.camera_id)
        last = self._last_seq.get(cam)
        if last is not None:
            delta = seq_delta(frame.seq, last)
            if 1 < delta < 1 << 16:
                self.stats.sequence_gaps += delta - 1
        if last is None or seq_delta(frame.seq, last) > 0:
            self._last_seq[cam] = frame.seq

    def _log_limited(self, key: str, msg: str, *args: object) -> None:
        """Log at most once per stats interval per kind of problem: no floods from a broken sender."""
        now = time.monotonic()
        if now - self._last_error_log.get(key, -1e9) >= self.cfg.host.stats_every_s:
            self._last_error_log[key] = now
            log.warning(msg + " (further ones are counted, logged once per interval)", *args)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        log.info("host stopped: %s", self.stats.line())
        if self.cfg.host.stats_file:
            Path(self.cfg.host.stats_file).write_text(json.dumps(self.stats.as_dict(), indent=2))
        self.receiver.close()
        if self.publisher is not None:
            self.publisher.close()
        if self._frame_log is not None:
            self._frame_log.close()


def run_host_service(config: str | Path) -> int:
    """Entry point of `stereodsc host`: serve until SIGINT/SIGTERM (or the configured limits)."""
    service = HostService(load_host_config(config))
    signal.signal(signal.SIGINT, service.stop)
    signal.signal(signal.SIGTERM, service.stop)
    service.run()
    return 0
