"""The host decoder service: receive -> validate -> pair -> decode -> deliver.

Every received message ends in exactly one outcome, counted by reason: rejected by the parser
(typed `BitstreamError`) or because its ids are not the ones its CURVE key is bound to
(``KeyMismatch``), dropped by the admission limits (``rate_limited``, ``too_many_cameras``,
``new_camera_limited``) or the pairing policy, or decoded (a reference, or a dependent with side
information, with the rig's last reference after a reference loss, or without side information).
CURVE handshakes refused by the camera-key allow-list never become messages; they are counted apart.
Gaps in a camera's sequence numbers (frames lost before they reached the host) are counted too.
Nothing in the loop can crash the service: an unexpected error while handling one frame is logged
with its traceback, counted, and the loop goes on.

Camera restarts: every frame carries its camera's session (`transport.Envelope`); a new session resets
that camera's sequence state and pairing state and maps its numbering onto the rig's
(`sessions.Sessions`), so a reboot costs the frames in flight, not the rest of the run.

Crash-consistent accounting: with ``stats_file`` set, the statistics are rewritten atomically (a
temporary file renamed over it) every ``stats_file_every_s`` and at exit (``"final": true``). The file
is never torn, at most that old after a crash, and holds ``pending`` (frames waiting for their pair:
not acked yet, so their cameras count them lost if the host dies then; a frame is acked once it has an
outcome). A host that starts over a non-final file logs what the dead host
left pending and reports it as ``previous_run``.

    receiver --bytes--> parse + bundle check --Frame--> admission (camera caps, rate) --Arrival-->
        pairer (events) --> decoders (by the frame's bundle id) --DecodedFrame--> sinks (callables)

`HostService` is composed from those parts (tests pass their own); `HostService.from_config` builds
them from a host config.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stereodsc.errors import BitstreamError, ConfigError
from stereodsc.host_decoder.admission import Admission
from stereodsc.host_decoder.config import HostConfig, HostSection, SecuritySection, load_host_config
from stereodsc.host_decoder.metrics import MetricsServer, MetricsSnapshot, SnapshotSource
from stereodsc.host_decoder.pairing import (
    DecodeDependent,
    DecodeReference,
    Dropped,
    Event,
    Pairer,
    PairingPolicy,
    ReleaseReference,
)
from stereodsc.host_decoder.sessions import Sessions
from stereodsc.host_decoder.sinks import DecodedFrame, FrameLogSink, PngSink, PublishSink, Sink
from stereodsc.host_decoder.stats import HostStats
from stereodsc.transport import Envelope, Received, ReceiverStats
from stereodsc.wire import Frame, Role, check_bundle, seq_delta, unpack

if TYPE_CHECKING:
    from stereodsc.codec import HostDecoder

log = logging.getLogger("stereodsc.host")

MAX_ROW_OFFSET_PX = 2.0
"""A rectified pair's matched features lie within a pixel of the same row; beyond this, it is not rectified."""


def _key(arrival: Arrival) -> tuple[int, int, int, int, int]:
    f = arrival.frame
    return f.rig_id, f.camera_id, arrival.session, f.seq, f.t_capture_ns


@dataclass(frozen=True)
class Arrival:
    """A parsed frame with what the host knew when it arrived, carried through the pairer (which sees
    the frame's fields through the properties, its seq in the rig's numbering) to the decode."""

    frame: Frame
    received_at: float  # time.monotonic() at receipt
    wire_bytes: int
    session: int = 0  # the camera's session (0: none announced)
    rig_seq: int | None = None  # the frame's seq in the rig's numbering (`Sessions`); None: its own
    envelope: Envelope | None = None  # what the link knows of it: its ack goes back once it has an outcome

    @property
    def rig_id(self) -> int:
        return self.frame.rig_id

    @property
    def camera_id(self) -> int:
        return self.frame.camera_id

    @property
    def role(self) -> Role:
        return self.frame.role

    @property
    def seq(self) -> int:
        return self.frame.seq if self.rig_seq is None else self.rig_seq

    @property
    def t_capture_ns(self) -> int:
        return self.frame.t_capture_ns


class Receiver(Protocol):
    """What the service reads frames from (`transport.FrameReceiver`, or a test's stand-in). A frame
    that is a `transport.Received` brings its camera's session, key and connection; plain bytes count
    as session 0 from an unknown sender."""

    stats: ReceiverStats
    ack_on_receipt: bool  # False: the service acks each frame with `ack` once it has an outcome

    def recv(self, timeout_ms: int) -> bytes | None: ...

    def refused_keys(self) -> list[str]: ...

    def ack(self, envelope: Envelope) -> None: ...

    def close(self) -> None: ...


class InProcessReceiver:
    """A receiver with nothing to receive, for a service fed in-process (`HostService.handle`): a
    program that gets its frames another way, tests, benchmarks. Binds no socket."""

    def __init__(self) -> None:
        self.stats = ReceiverStats()
        self.ack_on_receipt = False

    def recv(self, timeout_ms: int) -> bytes | None:
        return None

    def refused_keys(self) -> list[str]:
        return []

    def ack(self, envelope: Envelope) -> None:
        """Frames handed in have no link to ack on."""

    def close(self) -> None:
        """Nothing to release."""


class HostService:
    """Receiver, decoders (by bundle id), pairer and sinks, composed; `run()` serves until stopped."""

    def __init__(
        self,
        receiver: Receiver,
        decoders: Mapping[bytes, HostDecoder],
        pairer: Pairer[Arrival],
        sinks: Sequence[Sink] = (),
        *,
        settings: HostSection | None = None,
        security: SecuritySection | None = None,
        identities: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        if not decoders:
            raise ConfigError("the host needs at least one bundle to decode with")
        self.settings = h = settings or HostSection()
        self.receiver = receiver
        # A frame names its bundle: each camera may run another one (e.g. the reference camera the
        # default bundle's intra codec, a dependent camera DSIN's side-information codec).
        self.decoders = dict(decoders)
        self.bundle = next(iter(self.decoders.values())).bundle  # the first (configured) bundle
        self.pairer = pairer
        self.sinks = list(sinks)
        self.security = security or SecuritySection()
        self.identities = dict(identities or {})  # CURVE key (z85) -> the (rig, camera) it may send as
        self._last_seq: dict[tuple[int, int], int] = {}
        self.admission = Admission(
            h.max_cameras_per_rig,
            h.max_frames_per_s_per_camera,
            h.stale_after_s,
            on_evict=self._forget,
            new_cameras_per_s=h.new_cameras_per_s,
        )
        self.sessions = Sessions(pairer.tolerance_ns, max(pairer.deadline_ns, 1_000_000_000))
        self.stats = HostStats(stale_after_s=h.stale_after_s, link=receiver.stats, cameras=self.admission.cameras)
        self.stats.backend_fell_back = any(d.fell_back for d in self.decoders.values())  # known after warm-up
        self._references: dict[tuple[int, int, int, int, int], np.ndarray] = {}
        self._rows_checked: set[tuple[int, int, int]] = set()  # (rig, camera, session): first frame with side
        self._stats_written_at = -float("inf")
        if h.stats_file:
            self.stats.previous_run = _previous_run(Path(h.stats_file))
        self._stop = False
        self._last_error_log: dict[str, float] = {}
        self._lock = threading.RLock()  # held while the loop updates the stats
        # A scrape reads the latest snapshot and never waits on a decode (SnapshotSource).
        self.metrics_source = SnapshotSource(self._lock, lambda: MetricsSnapshot.of(self.stats))
        self.metrics = MetricsServer(h.metrics_listen, self.metrics_source) if h.metrics_listen else None
        if self.metrics is not None:
            log.info("Prometheus metrics at http://%s/metrics", h.metrics_listen)

    @classmethod
    def from_config(
        cls, cfg: HostConfig, callbacks: Sequence[Sink] = (), *, receiver: Receiver | None = None
    ) -> HostService:
        """Build the parts a host config describes: bundles and their decoders (warmed up), the pairer,
        the ZeroMQ receiver (unless one is given) and the sinks, followed by `callbacks`."""
        from stereodsc.bundle import load_bundle
        from stereodsc.bundles import resolve_bundle
        from stereodsc.codec import HostDecoder
        from stereodsc.codec.geometry import parse_size
        from stereodsc.security import load_server_curve
        from stereodsc.transport import DecodedPublisher, FrameReceiver

        h, p, sec, sinks_cfg = cfg.host, cfg.pairing, cfg.security, cfg.sinks
        bundles = [load_bundle(resolve_bundle(b)) for b in [h.bundle, *h.extra_bundles]]
        decoders = {
            b.id_bytes: HostDecoder(
                b, h.backend, engine_cache=Path(h.engine_cache) if h.engine_cache else None, fallback=h.fallback or None
            )
            for b in bundles
        }
        sizes = [parse_size(text, "[host] warm_sizes") for text in h.warm_sizes]
        t0 = time.perf_counter()
        runs = sum(decoder.warm_up(sizes) for decoder in decoders.values())
        log.info("decoders ready: %d graphs warmed up in %.2f s", runs, time.perf_counter() - t0)
        pairer: Pairer[Arrival] = Pairer(
            tolerance_ns=int(p.tolerance_ms * 1e6),
            deadline_ns=int(p.deadline_ms * 1e6),
            max_pending=p.max_pending,
            policy=PairingPolicy(p.policy),
            match_by=p.match_by,  # type: ignore[arg-type]
            max_references=p.max_references,
            last_reference_ns=int(p.last_reference_ms * 1e6),
        )
        curve = load_server_curve(sec.server_secret, sec.allowed_keys, sec.require_bound_keys) if sec.curve else None
        if curve is not None and curve.unbound:
            log.warning(
                "camera keys not bound to a camera id (they may send as any camera): %s in %s; rename each to "
                "rig<R>_cam<C>.key to bind it",
                ", ".join(curve.unbound),
                sec.allowed_keys,
            )
        if receiver is None:
            receiver = FrameReceiver(
                h.endpoint,
                rcvhwm=h.recv_hwm,
                max_frame_bytes=h.max_frame_bytes,
                curve=curve,
                ack_on_receipt=h.ack == "receipt",
            )
        sinks: list[Sink] = []
        if sinks_cfg.png_dir:
            sinks.append(PngSink(sinks_cfg.png_dir))
        if sinks_cfg.publish:
            sinks.append(PublishSink(DecodedPublisher(sinks_cfg.publish)))
        if sinks_cfg.frame_log:
            sinks.append(FrameLogSink(sinks_cfg.frame_log))
        identities = curve.identities if curve is not None else None
        return cls(receiver, decoders, pairer, [*sinks, *callbacks], settings=h, security=sec, identities=identities)

    def metrics_text(self) -> str:
        """The statistics in the Prometheus text format, as a scrape sees them."""
        return self.metrics_source().render()

    def stop(self, *_: object) -> None:
        self._stop = True

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> HostStats:
        h = self.settings
        log.info(
            "host listening on %s, bundles %s, policy %s",
            h.endpoint,
            ", ".join(d.bundle.id[:16] for d in self.decoders.values()),
            self.pairer.policy.value,
        )
        if self.security.curve:
            log.info("CURVE on: cameras are let in by the public keys in %s", self.security.allowed_keys)
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
                self.metrics_source.refresh(now)
                if h.stats_file and now - self._stats_written_at >= h.stats_file_every_s:
                    self.write_stats(final=False)
                if now - last_stats >= h.stats_every_s:
                    log.info("host: %s", self.stats.line())
                    last_stats = now
        finally:
            self.close()
        return self.stats

    def handle(self, data: bytes, received_at: float) -> None:
        """One message from the wire: parse, admit, account for gaps, pair, act on what pairing says."""
        with self._lock:
            self._handle(data, received_at)

    def _handle(self, data: bytes, received_at: float) -> None:
        """Parse and admit one message; a message that ends here (rejected, dropped) is acked here, one
        that goes on is acked when the pairer's event for it has run (`act`)."""
        envelope = data.envelope if isinstance(data, Received) else Envelope(0, None, b"")
        arrival = self._admit(data, envelope, received_at)
        if arrival is None:
            self._ack(envelope)
        else:
            self.act(self.pairer.push(arrival, time.monotonic_ns()))

    def _ack(self, envelope: Envelope | None) -> None:
        """Ack a frame that reached its outcome, unless the receiver acked it on receipt (``[host] ack``)."""
        if envelope is not None and envelope.token and not self.receiver.ack_on_receipt:
            self.receiver.ack(envelope)

    def _admit(self, data: bytes, envelope: Envelope, received_at: float) -> Arrival | None:
        """The message as an `Arrival` for the pairer, or None when it was rejected or dropped (counted)."""
        self.stats.received += 1
        self.stats.bytes_received += len(data)
        try:
            t0 = time.perf_counter()
            frame = unpack(data, max_frame_bytes=self.settings.max_frame_bytes)
            check_bundle(frame, self.decoders)
            self.stats.latency.add("parse", time.perf_counter() - t0)
        except BitstreamError as e:
            self.stats.rejected[type(e).__name__] += 1
            self._log_limited(type(e).__name__, "rejected a frame: %s", e)
            return None
        cam = (frame.rig_id, frame.camera_id)
        bound = self.identities.get(envelope.key) if envelope.key is not None else None
        if bound is not None and bound != cam:
            self.stats.rejected["KeyMismatch"] += 1
            self._log_limited(
                "key-mismatch",
                "rejected a frame as camera %d.%d from the key bound to camera %d.%d (%s)",
                *cam,
                *bound,
                envelope.key,
            )
            return None
        evicted = self.admission.evicted
        limited = self.admission.admit(cam, received_at, envelope.key or envelope.sender)
        self.stats.cameras_evicted += self.admission.evicted - evicted
        if self.admission.evicted != evicted:
            self._log_limited("evicted", "camera table full: a stale camera's slot went to camera %d.%d", *cam)
        if limited:
            self.stats.dropped[limited] += 1
            self._log_limited(
                f"drop-{limited}", "dropped camera %d.%d seq %d: %s", frame.rig_id, frame.camera_id, frame.seq, limited
            )
            return None
        now_ns = time.monotonic_ns()
        previous = self.sessions.session_of(cam)
        placed = self.sessions.place(cam, envelope.session, frame.seq, frame.t_capture_ns, now_ns)
        if placed.restarted:
            self.stats.camera_restarts[placed.aligned_by] += 1
            self._last_seq.pop(cam, None)
            self.pairer.new_session(frame.rig_id, frame.camera_id, frame.role)
            log.info(
                "camera %d.%d restarted (session %08x, was %08x): its seq %d is rig seq %d (aligned by %s)",
                *cam,
                envelope.session,
                previous or 0,
                frame.seq,
                placed.rig_seq,
                placed.aligned_by,
            )
        self._count_gap(frame)
        return Arrival(frame, received_at, len(data), envelope.session, placed.rig_seq, envelope)

    def act(self, events: list[Event[Arrival]]) -> None:
        with self._lock:
            for event in events:
                try:
                    self._act(event)
                except Exception as e:  # a bug must cost one frame, never the service
                    self.stats.decode_errors[type(e).__name__] += 1
                    log.exception("error while handling %s", type(event).__name__)
                finally:
                    if not isinstance(event, ReleaseReference):  # the frame's outcome: decoded or dropped
                        self._ack(event.frame.envelope)
            self.stats.pending = self.pairer.pending

    def _act(self, event: Event[Arrival]) -> None:
        if isinstance(event, DecodeReference):
            image = self._decode(event.frame, None)
            if image is not None:
                self._references[_key(event.frame)] = image
                self.stats.decoded_reference += 1
        elif isinstance(event, DecodeDependent):
            side = self._references.get(_key(event.reference)) if event.reference is not None else None
            image = self._decode(event.frame, side)
            if image is not None and side is not None:
                self._check_rows(event.frame, image, side)
            if image is not None:
                if side is not None and event.last_reference:
                    self.stats.decoded_with_last_reference[event.reason.value] += 1
                elif side is not None:
                    self.stats.decoded_with_side_info += 1
                else:
                    reason = event.reason.value if event.reference is None else "reference_undecodable"
                    self.stats.decoded_without_side_info[reason] += 1
        elif isinstance(event, Dropped):
            self.stats.dropped[event.reason.value] += 1
            f = event.frame.frame
            self._log_limited(
                f"drop-{event.reason.value}",
                "dropped camera %d.%d seq %d: %s",
                f.rig_id,
                f.camera_id,
                f.seq,
                event.reason.value,
            )
        elif isinstance(event, ReleaseReference):
            self._references.pop(_key(event.frame), None)

    def _decode(self, arrival: Arrival, side: np.ndarray | None) -> np.ndarray | None:
        """Decode and deliver one frame; a corrupt payload is counted and yields None."""
        frame = arrival.frame
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
        self.stats.latency.add("decode", sum(decoded.timings.values()))
        for stage, seconds in decoded.timings.items():
            self.stats.latency.add(f"decode_{stage}", seconds)
        latency = time.monotonic() - arrival.received_at
        out = DecodedFrame(
            frame,
            decoded.image,
            side is not None,
            arrival.wire_bytes,
            decoded.symbols,
            latency,
            dict(decoded.timings),
            arrival.session,
        )
        for sink in self.sinks:
            sink(out)
        self.stats.latency.add("total", time.monotonic() - arrival.received_at)
        return decoded.image

    def _check_rows(self, arrival: Arrival, image: np.ndarray, side: np.ndarray) -> None:
        """Once per camera session, whether the dependent frame's rows match its side image's: side
        information is aligned along the rows of a rectified pair, so an unrectified camera decodes
        worse, silently. A median offset over `MAX_ROW_OFFSET_PX` is logged with the fix and counted."""
        from stereodsc.calibration.check import row_offset  # OpenCV's SIFT: only here

        key = (arrival.rig_id, arrival.camera_id, arrival.session)
        if key in self._rows_checked:
            return
        self._rows_checked.add(key)
        offset = row_offset(image, side)
        if offset is not None and offset > MAX_ROW_OFFSET_PX:
            self.stats.misaligned_cameras += 1
            log.warning(
                "camera %d.%d: its rows are %.1f px off the side image's (median of matched features): the pair "
                "is not rectified, so its side information is misaligned; calibrate the rig (stereodsc calibrate) "
                "and set the camera's [camera] rig_file",
                arrival.rig_id,
                arrival.camera_id,
                offset,
            )

    # ---- helpers -------------------------------------------------------------------------------
    def check_liveness(self, now: float) -> None:
        """Log (once per interval) the cameras silent for longer than ``stale_after_s``."""
        stale = self.stats.stale_cameras(now)
        if stale:
            self._log_limited("stale", "stale cameras (silent > %.1f s): %s", self.settings.stale_after_s, stale)

    def check_refused(self) -> None:
        """Count and log (once per interval) the camera keys the CURVE allow-list refused."""
        for key in self.receiver.refused_keys():
            with self._lock:
                self.stats.refused_keys[key] += 1
            self._log_limited("refused-key", "refused camera key %s: not in %s", key, self.security.allowed_keys)

    def _forget(self, cam: tuple[int, int]) -> None:
        self._last_seq.pop(cam, None)

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
        if now - self._last_error_log.get(key, -1e9) >= self.settings.stats_every_s:
            self._last_error_log[key] = now
            log.warning(msg + " (further ones are counted, logged once per interval)", *args)

    def write_stats(self, final: bool) -> None:
        """Replace ``stats_file`` atomically with the statistics now (a crash leaves the previous file)."""
        path = Path(self.settings.stats_file)
        with self._lock:
            body = {**self.stats.as_dict(), "final": final, "written_unix_s": round(time.time(), 3)}
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(body, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._stats_written_at = time.monotonic()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        log.info("host stopped: %s", self.stats.line())
        if self.settings.stats_file:
            self.write_stats(final=True)
        self.receiver.close()
        for decoder in self.decoders.values():
            decoder.close()
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def _previous_run(path: Path) -> dict[str, Any]:
    """What the host that last wrote `path` left undone if it died (its file is not final); {} otherwise."""
    try:
        last = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(last, dict) or last.get("final", True):
        return {}
    previous = {k: last.get(k) for k in ("pending", "received", "written_unix_s")}
    log.warning(
        "the previous host died: its last statistics (%s) had %s frames acked and still pending (never decoded), "
        "and frames it took after that moment are in no count",
        path,
        previous["pending"],
    )
    return previous


def run_host_service(config: str | Path) -> int:
    """Entry point of `stereodsc host`: serve until SIGINT/SIGTERM (or the configured limits)."""
    service = HostService.from_config(load_host_config(config))
    signal.signal(signal.SIGINT, service.stop)
    signal.signal(signal.SIGTERM, service.stop)
    service.run()
    return 0
