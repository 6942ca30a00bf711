"""Prometheus metrics for the host service, served with `prometheus_client`: ``GET /metrics`` on a daemon
thread, off unless ``[host] metrics_listen = "127.0.0.1:9108"`` is set.

The receive loop owns the statistics. A scrape never touches them and never waits on the service's
lock: it reads a `MetricsSnapshot` (an immutable copy) from a `SnapshotSource`, which takes a fresh
copy when the lock is free at that instant and otherwise returns the last copy; the loop refreshes
that copy between frames (`SnapshotSource.refresh`), so a busy service serves counts at most
``max_age_s`` old. A `StatsCollector` turns the snapshot into metric families on each scrape.
"""

from __future__ import annotations

import bisect
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from stereodsc.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from stereodsc.host_decoder.stats import HostStats

log = logging.getLogger("stereodsc.host.metrics")

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREFIX = "stereodsc_"
# The receiver's own counters (`transport.ReceiverStats`), exported as stereodsc_link_<name>_total; a counter
# added there is exported too (with a generic help text until it gets one here).
LINK_HELP = {
    "received": "Messages taken off the frame socket (envelopes included).",
    "rejected_envelope": "Messages that were not a [token, frame] envelope of a camera: discarded.",
    "acks_dropped": "Acks that could not be queued back to their camera (it counts that frame lost).",
    "refused_auth": "CURVE handshakes the allow-list refused, as the receiver counted them.",
}


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
    """A consistent copy of `HostStats`: take it with `of` while the stats cannot change (under the
    service's lock, or from the loop's own thread); reading it afterwards needs no lock."""

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
    link: dict[str, int]  # the receiver's counters: rejected_envelope, acks_dropped, ...
    decoded_with_last_reference: dict[str, int] = field(default_factory=dict)  # reference loss, by reason
    camera_restarts: dict[str, int] = field(default_factory=dict)  # new sessions, by how they were aligned
    cameras_evicted: int = 0
    pending: int = 0
    backend_fell_back: bool = False  # a GPU backend could not run and fallback = "cpu" took over
    misaligned_cameras: int = 0

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
            link=_counters(stats.link),
            decoded_with_last_reference=dict(stats.decoded_with_last_reference),
            camera_restarts=dict(stats.camera_restarts),
            cameras_evicted=stats.cameras_evicted,
            pending=stats.pending,
            backend_fell_back=stats.backend_fell_back,
            misaligned_cameras=stats.misaligned_cameras,
        )

    def families(self) -> list[Metric]:
        """The snapshot as Prometheus metric families (what a scrape serves)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def counter(name: str, doc: str, value: float | None = None, **by: Mapping[str, int]) -> Metric:
            """One family: a single value, or one sample per key of the one labelled mapping in `by`."""
            labels = list(by)
            family = CounterMetricFamily(PREFIX + name, doc, value=value, labels=labels if labels else None)
            for counts in by.values():
                for key, n in sorted(counts.items()):
                    family.add_metric([key], n)
            return family

        name = PREFIX + "frames_decoded"
        decoded = CounterMetricFamily(name, "Frames decoded, by kind (and reason without side info).")
        decoded.add_sample(name + "_total", {"kind": "reference"}, self.decoded_reference)
        decoded.add_sample(name + "_total", {"kind": "with_side_info"}, self.decoded_with_side_info)
        for reason, n in sorted(self.decoded_without_side_info.items()):
            decoded.add_sample(name + "_total", {"kind": "without_side_info", "reason": reason}, n)
        for reason, n in sorted(self.decoded_with_last_reference.items()):
            decoded.add_sample(name + "_total", {"kind": "with_last_reference", "reason": reason}, n)
        out: list[Metric] = [
            counter("frames_received", "Messages received on the frame socket.", self.received),
            counter("bytes_received", "Bytes of the received messages.", self.bytes_received),
            counter("frames_rejected", "Messages rejected by the parser.", reason=self.rejected),
            decoded,
            counter("frames_dropped", "Frames dropped, by reason.", reason=self.dropped),
            counter("decode_errors", "Frames not decodable, by error.", error=self.decode_errors),
            counter("sequence_gaps", "Frames numbered but never received.", self.sequence_gaps),
            counter("refused_keys", "CURVE handshakes refused (allow-list).", self.refused_keys),
            counter(
                "camera_restarts",
                "Cameras back with a new session, by how they were aligned.",
                aligned_by=self.camera_restarts,
            ),
            counter("cameras_evicted", "Stale cameras whose table slot went to a new camera.", self.cameras_evicted),
            counter(
                "cameras_misaligned",
                "Camera sessions whose rows did not match the side image's (an unrectified pair).",
                self.misaligned_cameras,
            ),
            GaugeMetricFamily(
                PREFIX + "frames_pending", "Frames waiting for their pair (not acked yet).", value=self.pending
            ),
            GaugeMetricFamily(
                PREFIX + "backend_fell_back",
                "1 when the configured GPU backend could not run and the CPU decodes instead (fallback = 'cpu').",
                value=int(self.backend_fell_back),
            ),
        ]
        for name, n in sorted(self.link.items()):
            out.append(counter(f"link_{name}", LINK_HELP.get(name, f"Receiver counter {name}."), n))
        cam = ["rig", "camera"]
        seen = GaugeMetricFamily(PREFIX + "camera_last_seen_seconds", "Unix time of its last parsed frame.", labels=cam)
        stale = GaugeMetricFamily(PREFIX + "camera_stale", "1 when silent for longer than stale_after_s.", labels=cam)
        for c in self.cameras:
            seen.add_metric([str(c.rig), str(c.camera)], round(c.last_seen_unix_s, 3))
            stale.add_metric([str(c.rig), str(c.camera)], int(c.stale))
        latency = HistogramMetricFamily(
            PREFIX + "latency_seconds",
            "Host latency per stage (parse, decode, total: receipt to delivery).",
            labels=["stage"],
        )
        for stage, h in sorted(self.latency.items()):
            bounds = [*(repr(float(b)) for b in h.bounds), "+Inf"]
            latency.add_metric([stage], list(zip(bounds, h.cumulative, strict=True)), h.sum)
        return [*out, seen, stale, latency]

    def render(self) -> str:
        """The Prometheus text exposition format 0.0.4 (what `metrics_text` and a plain scrape return)."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(lambda: self))
        return generate_latest(registry).decode()


def _counters(obj: object) -> dict[str, int]:
    """The integer fields of a stats dataclass (the receiver's), by name; none for None."""
    if obj is None or not is_dataclass(obj):
        return {}
    return {f.name: int(getattr(obj, f.name)) for f in fields(obj) if isinstance(getattr(obj, f.name), int)}


class StatsCollector:
    """A `prometheus_client` custom collector: each scrape calls `snapshot()` and serves what it returns.
    `snapshot` must not block (hand it a `SnapshotSource`, never a function that takes the service's lock)."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self.snapshot().families()


class _Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...
    def release(self) -> None: ...


class SnapshotSource:
    """What a scrape reads (``source()`` -> `MetricsSnapshot`); it never waits on the service's lock.

    ``source()`` takes a fresh snapshot when `lock` is free at that instant (an idle service: exact
    counts), and otherwise returns the last one. The service calls `refresh()` once per loop turn: it
    re-takes the snapshot when the last one is older than `max_age_s` (a busy service: counts at most
    that old, for the cost of one copy per `max_age_s`). `take` copies the stats; it is called with
    `lock` held."""

    def __init__(self, lock: _Lock, take: Callable[[], MetricsSnapshot], max_age_s: float = 0.5) -> None:
        self._lock, self._take, self.max_age_s = lock, take, max_age_s
        self._latest: MetricsSnapshot | None = None
        self._taken_at = -float("inf")
        self.refresh(force=True)

    def __call__(self) -> MetricsSnapshot:
        if self._lock.acquire(blocking=False):
            try:
                self._store(self._take())
            finally:
                self._lock.release()
        assert self._latest is not None
        return self._latest

    def refresh(self, now: float | None = None, force: bool = False) -> None:
        """From the service's loop (it may hold the lock: it must be re-entrant then, as an RLock is)."""
        now = time.monotonic() if now is None else now
        if force or now - self._taken_at >= self.max_age_s:
            self._lock.acquire()
            try:
                self._store(self._take())
            finally:
                self._lock.release()

    def _store(self, snapshot: MetricsSnapshot) -> None:
        self._latest, self._taken_at = snapshot, time.monotonic()  # one reference swap: readers see old or new


def parse_listen(listen: str, source: str = "<host config>") -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:9108"`` for IPv6) -> (host, port); a ConfigError naming the key otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f'{source}: [host] metrics_listen = {listen!r}; expected "host:port", e.g. "127.0.0.1:9108"')
    return host.removeprefix("[").removesuffix("]"), int(port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class _Server(ThreadingMixIn, WSGIServer):
    """One daemon thread per request; a client that resets or times out mid-request costs one debug
    line, never a traceback (socketserver's default `handle_error` prints one to stderr)."""

    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            log.debug("metrics client %s went away: %s", client_address, err)
        else:
            log.warning("metrics request from %s failed: %r", client_address, err)


class MetricsServer:
    """``GET /metrics`` (any other path: 404) on a daemon thread, from `snapshot` via a `StatsCollector`;
    `close()` stops it. `snapshot` must not block: hand it a `SnapshotSource`."""

    def __init__(self, listen: str, snapshot: Callable[[], MetricsSnapshot]) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(snapshot))
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"only /metrics is served\n"]
            try:
                return metrics_app(environ, start_response)
            except Exception as e:  # a bug in a collector: one logged line and a 500, the service goes on
                log.error("metrics: cannot collect: %r", e)
                start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"cannot collect the metrics: see the host log\n"]

        host, port = parse_listen(listen)
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
        try:
            self.httpd: WSGIServer = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"[host] metrics_listen = {listen!r}: cannot listen there: {e}") from e
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="stereodsc-metrics", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5.0)
