"""The camera node daemon: capture -> rectify -> encode -> send, one frame at a time.

The capture loop never waits for the host: a frame that cannot be queued is dropped and counted
(`transport.FrameSender`), the link reconnects by itself when the host restarts, and SIGINT or
SIGTERM stop the loop cleanly after the current frame. A stats line is logged periodically.
Each start draws a new session id (`transport.new_session_id`), sent with every frame, so the host
knows that a restarted camera numbers from 0 again. A link that stays down (host unreachable, key
refused) re-handshakes with back-off, and the log says why frames are dropped whenever that changes.
Before the first frame is sent the encoder is warmed up at the camera's frame size (graph session
opened, entropy coder compiled, the size checked against the bundle's graphs), so no frame waits
for it. The exit status says whether the camera delivered anything (`run_camera_node`).
No torch: a camera board installs `stereodsc[edge]` only.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from stereodsc.codec.roles import CodecRole
from stereodsc.errors import ConfigError
from stereodsc.records import FrameRecord
from stereodsc.tomlio import load_toml, sections

log = logging.getLogger("stereodsc.edge")

CAMERA_ROLES = tuple(role.camera for role in CodecRole)
RECTIFIED_SOURCES = ("sample", "kitti")
"""Sources whose frames are rectified already (KITTI's synced+rectified drives and the bundled sample)."""
EXIT_DELIVERED, EXIT_NOTHING_DELIVERED = 0, 1
"""`stereodsc edge` exit statuses (2: a configuration error, as every command): 1 tells a supervisor
that the camera ran but the host confirmed none of its frames (unreachable, refused key, wrong bundle)."""


@dataclass
class CameraSection:
    rig_id: int = 1
    camera_id: int = 0
    role: str = "reference"  # "reference" (sends the side information) or "dependent"
    source: str = "sample"  # sample | kitti | folder | video | device | gstreamer
    path: str = ""  # kitti drive / folder / video file / device index / GStreamer pipeline
    drive_camera: str = "left"  # sample and kitti sources: which camera of the drive ("left"/"right")
    fps: float = 0.0  # pace recorded sources (0: as fast as the encoder goes); live sources pace themselves
    loop: bool = False
    max_frames: int = 0  # stop after this many captured frames (0: never)
    rig_file: str = ""  # rectify with this rig (stereodsc calibrate)
    rectified: bool = False  # without a rig file: the frames come rectified (a stereo camera that rectifies itself)
    min_depth_m: float = 0.0  # nearest object expected (rig-file units), checked against the model (0: unknown)


@dataclass
class CodecSection:
    bundle: str = ""  # bundle folder (stereodsc export) or a shipped bundle's name (stereodsc models); empty: "default"
    quality: int = 0
    backend: str = "cpu"  # cpu | cuda | tensorrt-ep | tensorrt
    engine_cache: str = ""  # TensorRT engines (empty: $CACHE_DIRECTORY under systemd, else ~/.cache/stereodsc)
    fallback: str = ""  # "cpu": run on the CPU when the GPU backend cannot (logged); empty: refuse to start


@dataclass
class LinkSection:
    endpoint: str = "tcp://127.0.0.1:5555"
    send_hwm: int = 4
    wait_for_host_s: float = 0.0  # at start, hold the first frame until the host is connected (0: don't)
    drain_s: float = 5.0  # at the end, wait this long for the host to ack the frames still in flight
    max_in_flight: int = 8  # frames sent and not yet acked; beyond that new frames are dropped (bounds latency)
    ack_timeout_s: float = 10.0  # a frame not acked by then counts lost (a late ack moves it back)
    rehandshake_s: float = 5.0  # no connection for this long: a new socket and handshake (doubling up to 60 s)
    max_frame_bytes: int = 1048576  # the host's [host] max_frame_bytes: a link reset with a larger frame is counted


@dataclass
class LogSection:
    stats_every_s: float = 10.0
    frame_log: str = ""  # JSON lines, one per frame (seq, bytes, symbols sha256): for audits and tests
    stats_file: str = ""  # write the final statistics (captured, sent, acked, lost, ...) here as JSON


@dataclass
class SecuritySection:
    curve: bool = False  # false: plain TCP (logged at start); true: encrypted, the host checks this camera's key
    secret: str = ""  # this camera's keypair (stereodsc keys new cam1): cam1.key_secret
    server_public: str = ""  # the host's public key: host.key


@dataclass
class EdgeConfig:
    camera: CameraSection = field(default_factory=CameraSection)
    codec: CodecSection = field(default_factory=CodecSection)
    link: LinkSection = field(default_factory=LinkSection)
    log: LogSection = field(default_factory=LogSection)
    security: SecuritySection = field(default_factory=SecuritySection)


def edge_config_from_dict(raw: dict[str, Any], source: str = "<edge config>") -> EdgeConfig:
    schema = {
        "camera": CameraSection,
        "codec": CodecSection,
        "link": LinkSection,
        "log": LogSection,
        "security": SecuritySection,
    }
    cfg = EdgeConfig(**sections(raw, schema, source))
    if cfg.camera.role not in CAMERA_ROLES:
        raise ConfigError(f"{source}: [camera] role = {cfg.camera.role!r}; choose one of {list(CAMERA_ROLES)}")
    cam = cfg.camera
    rectified = cam.rig_file or cam.rectified or cam.source in RECTIFIED_SOURCES
    if cam.role == CodecRole.SIDE_INFO.camera and not rectified:
        raise ConfigError(
            f"{source}: a dependent camera needs rectified frames (side information is matched along the rows "
            "of the rectified pair): calibrate the rig (stereodsc calibrate ... -o rig.toml) and set [camera] "
            "rig_file, or set [camera] rectified = true if the frames come rectified already"
        )
    if cfg.codec.fallback not in ("", "cpu"):
        raise ConfigError(f"{source}: [codec] fallback = {cfg.codec.fallback!r}; choose 'cpu' or leave it empty")
    if cfg.link.drain_s < 0 or cfg.link.wait_for_host_s < 0:
        raise ConfigError(f"{source}: [link] drain_s and wait_for_host_s are seconds >= 0")
    if not 0 < cfg.link.rehandshake_s <= 60:
        raise ConfigError(f"{source}: [link] rehandshake_s must be in (0, 60] seconds")
    sec = cfg.security
    if sec.curve and not (sec.secret and sec.server_public):
        raise ConfigError(f"{source}: [security] curve = true needs secret and server_public")
    return cfg


def disparity_report(focal_px: float, baseline: float, max_disparity: int, min_depth: float) -> tuple[int, str]:
    """(log level, message) on whether the side-information model's search covers this rig: it finds an
    object's match in the reference view within `max_disparity` columns, i.e. down to the depth
    focal x baseline / max_disparity; a nearer object is matched wrongly and its side information lost."""
    nearest = focal_px * baseline / max_disparity
    covered = f"the model matches disparities up to {max_disparity} px: objects from {nearest:.2f} (rig units) away"
    if not min_depth:
        return logging.INFO, f"{covered}; set [camera] min_depth_m to have the rig checked against it"
    needed = focal_px * baseline / min_depth
    if needed <= max_disparity:
        return logging.INFO, f"{covered}; the nearest expected object ({min_depth} away) is at {needed:.0f} px"
    return logging.WARNING, (
        f"this rig's disparity reaches {needed:.0f} px at the nearest expected object ({min_depth} away), beyond "
        f"what the model was trained to match ({covered}): nearer objects lose their side information. Use a "
        "model trained for a larger max_disparity, a smaller baseline, or a smaller image"
    )


def load_edge_config(path: str | Path) -> EdgeConfig:
    return edge_config_from_dict(load_toml(path), str(path))


@dataclass
class NodeStats:
    captured: int = 0
    sent: int = 0
    dropped: int = 0  # the send queue was full or the host is not connected
    acked: int = 0  # sent and confirmed taken by the host
    lost: int = 0  # sent and never confirmed (link reset, host gone): see transport
    bytes_sent: int = 0
    encode_s: float = 0.0
    session: int = 0  # this start's session id
    dropped_by: dict[str, int] = field(default_factory=dict)  # `dropped` by why (transport.DROP_REASONS)
    rehandshakes: int = 0  # new sockets after the link stayed down
    link_resets: int = 0  # connections closed with frames in flight
    oversize_resets: int = 0  # ... with a frame over [link] max_frame_bytes in flight

    def line(self, elapsed_s: float) -> str:
        fps = self.captured / elapsed_s if elapsed_s > 0 else 0.0
        per_frame = self.bytes_sent / self.sent if self.sent else 0.0
        enc_ms = 1000 * self.encode_s / self.captured if self.captured else 0.0
        return (
            f"captured {self.captured} ({fps:.1f} fps), sent {self.sent} (acked {self.acked}, lost {self.lost}), "
            f"dropped {self.dropped}, "
            f"{per_frame:.0f} B/frame, encode {enc_ms:.1f} ms/frame"
        )


class CameraNode:
    """One camera: its source, rectifier, encoder and link; `run()` streams until stopped."""

    def __init__(self, cfg: EdgeConfig) -> None:
        from stereodsc.bundle import load_bundle
        from stereodsc.bundles import resolve_bundle
        from stereodsc.codec.encoder import EdgeEncoder
        from stereodsc.edge_encoder.sources import open_source
        from stereodsc.security import load_client_curve
        from stereodsc.transport import FrameSender

        self.cfg = cfg
        cam = cfg.camera
        self.role = CodecRole.of(cam.role)
        bundle = load_bundle(resolve_bundle(cfg.codec.bundle))
        codec = cfg.codec
        self.encoder = EdgeEncoder(
            bundle,
            self.role,
            codec.quality,
            codec.backend,
            engine_cache=Path(codec.engine_cache) if codec.engine_cache else None,
            fallback=codec.fallback or None,
        )
        self.rectify = None
        if cam.rig_file:
            from stereodsc.calibration import Rectifier, load_rig

            which: Literal["left", "right"] = "left" if self.role is CodecRole.INTRA else "right"
            rig = load_rig(cam.rig_file)
            self.rectify = Rectifier.from_rig(rig, which)
            max_disparity = self.encoder.codec.model_config.get("max_disparity")
            if self.role is CodecRole.SIDE_INFO and max_disparity:
                level, message = disparity_report(rig.rectified_focal, rig.baseline, max_disparity, cam.min_depth_m)
                log.log(level, "%s", message)
        self.frames = open_source(cam.source, cam.path, cam.drive_camera, cam.loop)
        sec = cfg.security
        curve = load_client_curve(sec.secret, sec.server_public) if sec.curve else None
        link = cfg.link
        self.sender = FrameSender(
            link.endpoint,
            sndhwm=link.send_hwm,
            max_in_flight=link.max_in_flight,
            ack_timeout_ms=round(link.ack_timeout_s * 1000),
            rehandshake_ms=round(link.rehandshake_s * 1000),
            max_frame_bytes=link.max_frame_bytes,
            curve=curve,
        )
        self.stats = NodeStats(session=self.sender.session)
        self._drop_reason: str | None = None
        self.seq = 0
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def _take_link_stats(self) -> None:
        """Copy the link's delivery counts into the node's statistics (for the log line and the end)."""
        link = self.sender.stats
        self.stats.acked, self.stats.lost = link.acked, link.lost
        self.stats.rehandshakes, self.stats.link_resets = link.rehandshakes, link.link_resets
        self.stats.oversize_resets = link.oversize_resets

    def _log_drop(self, ok: bool) -> None:
        """Log why frames are dropped, once each time the reason changes (and when delivery resumes)."""
        from stereodsc.transport import DROP_REASONS

        reason = None if ok else self.sender.last_drop
        if reason == self._drop_reason:
            return
        cam = self.cfg.camera
        if reason is None:
            log.info("camera %d.%d: frames go through again", cam.rig_id, cam.camera_id)
        else:
            log.warning(
                "camera %d.%d: dropping frames: %s", cam.rig_id, cam.camera_id, DROP_REASONS.get(reason, reason)
            )
        self._drop_reason = reason

    def _warmed_up(self) -> Iterator[Any]:
        """The source's frames, the encoder warmed up at the first one's (rectified) size before it is
        passed on: a size the bundle cannot code stops the camera here, with the sizes it can."""
        frames = iter(self.frames)
        first = next(frames, None)
        if first is None:
            return iter(())
        image = self.rectify(first.image) if self.rectify else first.image
        t0 = time.perf_counter()
        self.encoder.warm_up(image.shape[:2])
        log.info("encoder ready for %dx%d frames (warm-up %.2f s)", *image.shape[:2], time.perf_counter() - t0)
        return itertools.chain([first], frames)

    def _paced(self) -> Iterator[Any]:
        period = 1.0 / self.cfg.camera.fps if self.cfg.camera.fps > 0 else 0.0
        frames = self._warmed_up()
        next_t = time.monotonic()
        for captured in frames:
            if period:
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_t = max(next_t + period, time.monotonic() - period)
            yield captured

    def _wait_for_host(self, data: bytes) -> bool:
        """Retry the first frame until the host is connected (or the wait runs out)."""
        deadline = time.monotonic() + self.cfg.link.wait_for_host_s
        while not self._stop and time.monotonic() < deadline:
            if self.sender.send(data):
                return True
            time.sleep(0.02)
        return False

    def run(self) -> NodeStats:
        cam, frame_log = self.cfg.camera, self.cfg.log.frame_log
        log_file = open(frame_log, "a") if frame_log else None  # noqa: SIM115 - closed in finally
        started = last_stats = time.monotonic()
        log.info(
            "camera %d.%d (%s) -> %s, bundle quality %d, session %08x",
            cam.rig_id,
            cam.camera_id,
            cam.role,
            self.cfg.link.endpoint,
            self.cfg.codec.quality,
            self.sender.session,
        )
        if not self.cfg.security.curve:
            log.warning("CURVE off ([security] curve = false): frames leave unencrypted and unauthenticated")
        try:
            for captured in self._paced():
                if self._stop:
                    break
                image = self.rectify(captured.image) if self.rectify else captured.image
                encoded = self.encoder.encode(image)
                self.stats.encode_s += sum(encoded.timings.values())
                frame = self.encoder.frame(
                    encoded,
                    rig_id=cam.rig_id,
                    camera_id=cam.camera_id,
                    seq=self.seq,
                    t_capture_ns=captured.t_capture_ns,
                )
                data = frame.pack()
                first = self.stats.captured == 0 and self.cfg.link.wait_for_host_s > 0
                ok = self._wait_for_host(data) if first else self.sender.send(data)
                self.stats.captured += 1
                self._log_drop(ok)
                if ok:
                    self.stats.sent += 1
                    self.stats.bytes_sent += len(data)
                else:
                    self.stats.dropped += 1
                    reason = self.sender.last_drop or "no_host"
                    self.stats.dropped_by[reason] = self.stats.dropped_by.get(reason, 0) + 1
                if log_file:
                    record = FrameRecord.of(
                        frame,
                        encoded.symbols,
                        encoded.timings,
                        len(data),
                        sent=ok,
                        session=self.sender.session,
                    )
                    log_file.write(record.to_json() + "\n")
                    log_file.flush()
                self.seq = (self.seq + 1) & 0xFFFFFFFF
                now = time.monotonic()
                if now - last_stats >= self.cfg.log.stats_every_s:
                    self._take_link_stats()
                    log.info("camera %d.%d: %s", cam.rig_id, cam.camera_id, self.stats.line(now - started))
                    last_stats = now
                if cam.max_frames and self.stats.captured >= cam.max_frames:
                    break
        finally:
            if log_file:
                log_file.close()
            # The source ended or a stop was asked: wait (bounded) until the host has the last frames.
            unconfirmed = self.sender.drain(round(self.cfg.link.drain_s * 1000))
            self.sender.close()
            self.encoder.close()
            self._take_link_stats()
            if unconfirmed or self.stats.lost:
                log.warning(
                    "camera %d.%d: %d sent frames were never confirmed by the host (%d still in flight at the end)",
                    cam.rig_id,
                    cam.camera_id,
                    self.stats.lost,
                    unconfirmed,
                )
        log.info("camera %d.%d stopped: %s", cam.rig_id, cam.camera_id, self.stats.line(time.monotonic() - started))
        if self.cfg.log.stats_file:
            Path(self.cfg.log.stats_file).write_text(json.dumps(asdict(self.stats), indent=2))
        return self.stats


def run_camera_node(config: str | Path) -> int:
    """Entry point of `stereodsc edge`: run until the source ends or a signal arrives. Exit status 0
    when the host confirmed at least one frame, 1 when it confirmed none (`EXIT_NOTHING_DELIVERED`)."""
    node = CameraNode(load_edge_config(config))
    signal.signal(signal.SIGINT, node.stop)
    signal.signal(signal.SIGTERM, node.stop)
    stats = node.run()
    if stats.acked:
        return EXIT_DELIVERED
    log.error(
        "camera delivered nothing: %d captured, %d sent, none confirmed by the host; check [link] endpoint, "
        "the host's bundles and (with CURVE) that this camera's key is in the host's allowed_keys",
        stats.captured,
        stats.sent,
    )
    return EXIT_NOTHING_DELIVERED
