"""The host service's configuration: the TOML sections of ``stereodsc host --config``, checked once
at load so a mistake is a ConfigError naming the key (exit status 2), never a failure mid-run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stereodsc.errors import ConfigError
from stereodsc.host_decoder.metrics import parse_listen
from stereodsc.host_decoder.pairing import PairingPolicy
from stereodsc.tomlio import load_toml, sections


@dataclass
class HostSection:
    endpoint: str = "tcp://*:5555"
    bundle: str = ""  # bundle folder, or a shipped bundle's name (stereodsc models); empty: "default"
    extra_bundles: list[str] = field(default_factory=list)  # more bundles the cameras may use, e.g. ["native"]
    backend: str = "cpu"  # cpu | cuda | tensorrt-ep | tensorrt
    engine_cache: str = ""  # TensorRT engines (empty: $CACHE_DIRECTORY under systemd, else ~/.cache/stereodsc)
    fallback: str = ""  # "cpu": run on the CPU when the GPU backend cannot (logged, in the stats); empty: refuse
    max_frame_bytes: int = 1 << 20
    ack: str = "outcome"  # "outcome": a frame is acked once decoded, dropped or rejected; "receipt": on arrival
    recv_hwm: int = 64
    stats_every_s: float = 10.0
    max_frames: int = 0  # stop after this many received messages (0: never)
    idle_exit_s: float = 0.0  # stop when nothing arrived for this long after the first frame (0: never)
    stats_file: str = ""  # the statistics as JSON: rewritten atomically every stats_file_every_s and at exit
    stats_file_every_s: float = 1.0  # how old stats_file may be after a crash
    max_cameras_per_rig: int = 0  # frames from further camera ids of a rig: dropped "too_many_cameras" (0: no limit)
    max_frames_per_s_per_camera: float = 0.0  # token bucket (1 s burst); beyond: dropped "rate_limited" (0: off)
    stale_after_s: float = 10.0  # silent this long: reported stale, its table slot may go to a new camera (0: never)
    new_cameras_per_s: float = 1.0  # new camera ids one sender (key/connection) may add per s (burst 4x; 0: no limit)
    metrics_listen: str = ""  # "host:port": serve Prometheus metrics at http://host:port/metrics (empty: off)
    warm_sizes: list[str] = field(default_factory=lambda: ["128x256"])  # HxW decoded once at start-up


@dataclass
class PairingSection:
    match_by: str = "seq"  # "seq" (cameras share a trigger) or "time" (capture clocks within tolerance)
    tolerance_ms: float = 20.0
    deadline_ms: float = 1000.0
    max_pending: int = 64
    max_references: int = 8
    policy: str = "latest_reference"  # wait | latest_reference | no_side_info | drop
    last_reference_ms: float = 0.0  # reference loss: decode unpaired dependents with a reference this young (0: off)


@dataclass
class SinkSection:
    png_dir: str = ""  # write every decoded frame as rig<R>_cam<C>_<seq>.png
    publish: str = ""  # bind a ZeroMQ PUB socket here and publish decoded frames
    frame_log: str = ""  # JSON lines, one per decoded frame (symbols sha256, latency): audits and tests


@dataclass
class SecuritySection:
    curve: bool = False  # false: plain TCP, anyone who reaches the port can send frames (logged at start)
    server_secret: str = ""  # the host's keypair (stereodsc keys new host): host.key_secret
    allowed_keys: str = ""  # folder of the public keys (*.key) of the cameras let in; rig<R>_cam<C>.key: bound
    require_bound_keys: bool = False  # true: every key must be named rig<R>_cam<C>.key (no key sends as any camera)


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
    if min(h.max_cameras_per_rig, h.max_frames_per_s_per_camera, h.stale_after_s, h.new_cameras_per_s) < 0:
        raise ConfigError(
            f"{source}: [host] max_cameras_per_rig, max_frames_per_s_per_camera, stale_after_s and "
            "new_cameras_per_s must be >= 0"
        )
    if h.stats_file_every_s <= 0:
        raise ConfigError(f"{source}: [host] stats_file_every_s must be > 0 (seconds between stats_file writes)")
    if cfg.pairing.last_reference_ms < 0:
        raise ConfigError(f"{source}: [pairing] last_reference_ms must be >= 0 (0: off)")
    sec = cfg.security
    if sec.curve and not (sec.server_secret and sec.allowed_keys):
        raise ConfigError(f"{source}: [security] curve = true needs server_secret and allowed_keys")
    if not all(isinstance(b, str) and b for b in cfg.host.extra_bundles):
        raise ConfigError(f"{source}: [host] extra_bundles must be a list of bundle folders or shipped names")
    if h.metrics_listen:
        parse_listen(h.metrics_listen, source)
    if h.fallback not in ("", "cpu"):
        raise ConfigError(f"{source}: [host] fallback = {h.fallback!r}; choose 'cpu' or leave it empty (refuse)")
    if h.ack not in ("outcome", "receipt"):
        raise ConfigError(f"{source}: [host] ack = {h.ack!r}; choose 'outcome' (the default) or 'receipt'")
    return cfg


def load_host_config(path: str | Path) -> HostConfig:
    return host_config_from_dict(load_toml(path), str(path))
