"""Prometheus metrics for the host service: a standard-library HTTP endpoint serving ``GET /metrics``
in the text exposition format 0.0.4, off unless ``[host] metrics_listen = "127.0.0.1:9108"`` is set.

The receive loop owns the statistics; a scrape takes a `MetricsSnapshot` (a copy, under the service's
lock, so it sees the counters between two frames) and renders it outside the lock.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from stereodsc.errors import ConfigError

if TYPE_CHECKING:
    from stereodsc.host_decoder.service import HostStats

log = logging.getLogger("stereodsc.host.metrics")

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative bucket counts (Prometheus ``le`` semantics, +Inf last), their sum and count.
    Not locked itself: the service updates and copies it under its own lock."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.cumulative = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i in range(bisect.bisect_left(self.bounds, value), len(self.cumulative)):
            self.cumulative[i] += 1
        self.sum += value
        self.count += 1


@dataclass(frozen=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float
    count: int


@dataclass(frozen=True)
class CameraSnapshot:
    rig: int
    camera: int
    last_seen_unix_s: float
    stale: bool


@dataclass(frozen=True)
class MetricsSnapshot:
    """A consistent copy of `HostStats` (take it under the service's lock)."""

    received: int
    bytes_received: int
    rejected: dict[str, int]
    decoded_reference: int
    decoded_with_side_info: int
    decoded_without_side_info: dict[str, int]
    dropped: dict[str, int]
    decode_errors: dict[str, int]
    sequence_gaps: int
    refused_keys: int
    cameras: tuple[CameraSnapshot, ...]
    latency: dict[str, HistogramSnapshot]

    @classmethod
    def of(cls, stats: HostStats) -> MetricsSnapshot:
        mono, wall = time.monotonic(), time.time()
        stale = set(stats.stale_cameras(mono))
        cameras = tuple(
            CameraSnapshot(r, c, wall - (mono - st.last_seen), f"{r}.{c}" in stale)
            for (r, c), st in sorted(stats.cameras.items())
        )
        return cls(
            received=stats.received,
            bytes_received=stats.bytes_received,
            rejected=dict(stats.rejected),
            decoded_reference=stats.decoded_reference,
            decoded_with_side_info=stats.decoded_with_side_info,
            decoded_without_side_info=dict(stats.decoded_without_side_info),
            dropped=dict(stats.dropped),
            decode_errors=dict(stats.decode_errors),
            sequence_gaps=stats.sequence_gaps,
            refused_keys=sum(stats.refused_keys.values()),
            cameras=cameras,
            latency={
                stage: HistogramSnapshot(h.bounds, tuple(h.cumulative), h.sum, h.count)
                for stage, h in stats.latency.histograms.items()
            },
        )

    def render(self) -> str:
        """The Prometheus text exposition format 0.0.4."""
        decoded: list[tuple[dict[str, str], float]] = [
            ({"kind": "reference"}, self.decoded_reference),
            ({"kind": "with_side_info"}, self.decoded_with_side_info),
        ]
        decoded += [
            ({"kind": "without_side_info", "reason": r}, n) for r, n in sorted(self.decoded_without_side_info.items())
        ]
        cams = [({"rig": str(c.rig), "camera": str(c.camera)}, c) for c in self.cameras]
        families: list[tuple[str, str, str, list[tuple[dict[str, str], float]]]] = [
            ("frames_received_total", "counter", "Messages received on the frame socket.", [({}, self.received)]),
            ("bytes_received_total", "counter", "Bytes of the received messages.", [({}, self.bytes_received)]),
            ("frames_rejected_total", "counter", "Messages rejected by the parser.", _by("reason", self.rejected)),
            ("frames_decoded_total", "counter", "Frames decoded, by kind (and reason without side info).", decoded),
            ("frames_dropped_total", "counter", "Frames dropped, by reason.", _by("reason", self.dropped)),
            ("decode_errors_total", "counter", "Frames not decodable, by error.", _by("error", self.decode_errors)),
            ("sequence_gaps_total", "counter", "Frames numbered but never received.", [({}, self.sequence_gaps)]),
            ("refused_keys_total", "counter", "CURVE handshakes refused (allow-list).", [({}, self.refused_keys)]),
            ("camera_last_seen_seconds", "gauge", "Unix time of the camera's last parsed frame.",
             [(labels, round(c.last_seen_unix_s, 3)) for labels, c in cams]),
            ("camera_stale", "gauge", "1 when the camera is silent for longer than stale_after_s.",
             [(labels, int(c.stale)) for labels, c in cams]),
        ]  # fmt: skip
        out: list[str] = []
        for family, kind, help_text, samples in families:
            out += [f"# HELP stereodsc_{family} {help_text}", f"# TYPE stereodsc_{family} {kind}"]
            out += [f"stereodsc_{family}{_labels(labels)} {_num(value)}" for labels, value in samples]
        name = "stereodsc_latency_seconds"
        out += [
            f"# HELP {name} Host latency per stage (parse, decode, total: receipt to delivery).",
            f"# TYPE {name} histogram",
        ]
        for stage, h in sorted(self.latency.items()):
            for bound, n in zip((*(_num(b) for b in h.bounds), "+Inf"), h.cumulative, strict=True):
                out.append(f"{name}_bucket{_labels({'stage': stage, 'le': bound})} {n}")
            out.append(f"{name}_sum{_labels({'stage': stage})} {_num(h.sum)}")
            out.append(f"{name}_count{_labels({'stage': stage})} {h.count}")
        return "\n".join(out) + "\n"


def _by(label: str, counts: Mapping[str, int]) -> list[tuple[dict[str, str], float]]:
    return [({label: key}, n) for key, n in sorted(counts.items())]


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    esc = {k: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc.items()) + "}"


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def parse_listen(listen: str, source: str = "<host config>") -> tuple[str, int]:
    """``"host:port"`` -> (host, port); a ConfigError naming the key otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f'{source}: [host] metrics_listen = {listen!r}; expected "host:port", e.g. "127.0.0.1:9108"')
    return host, int(port)


class MetricsServer:
    """``GET /metrics`` on a daemon thread; any other path is a 404. `close()` stops it."""

    def __init__(self, listen: str, render: Callable[[], str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        try:
            self.httpd = ThreadingHTTPServer(parse_listen(listen), Handler)
        except OSError as e:
            raise ConfigError(f"[host] metrics_listen = {listen!r}: cannot listen there: {e}") from e
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="stereodsc-metrics", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5.0)
