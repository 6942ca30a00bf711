"""The Prometheus endpoint: off by default, and when on, a scrape reports what the service counted."""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.errors import ConfigError
from stereodsc.host_decoder.config import host_config_from_dict
from stereodsc.host_decoder.metrics import MetricsServer, MetricsSnapshot, SnapshotSource, parse_listen
from stereodsc.host_decoder.service import HostService, InProcessReceiver
from stereodsc.host_decoder.stats import HostStats
from stereodsc.pipeline import free_port
from stereodsc.transport import ReceiverStats
from tiny_models import bundle_dir, sample_pair

pytestmark = pytest.mark.timeout(120)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_dir(tmp_path_factory, "stereo")


def _service(stereo: Path, metrics_listen: str = "") -> HostService:
    host = {"bundle": str(stereo), "metrics_listen": metrics_listen}
    cfg = host_config_from_dict({"host": host, "pairing": {"policy": "no_side_info"}})
    return HostService.from_config(cfg, receiver=InProcessReceiver())


def _scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def _parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample line -> value, keyed by (name, labels); comment lines must be HELP or TYPE."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in ("HELP", "TYPE"), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def _get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_endpoint_reports_counters_and_cumulative_histograms(stereo: Path) -> None:
    service = _service(stereo, f"127.0.0.1:{free_port()}")
    assert service.metrics is not None
    try:
        left, right = sample_pair()
        ref_enc, dep_enc = EdgeEncoder(service.bundle, "intra", 0), EdgeEncoder(service.bundle, "side_info", 0)
        ref, dep = ref_enc.encode(left), dep_enc.encode(right)
        sent = 0
        for seq in range(3):
            for enc, encoded, cam in ((ref_enc, ref, 0), (dep_enc, dep, 1)):
                data = enc.frame(encoded, rig_id=1, camera_id=cam, seq=seq, t_capture_ns=seq).pack()
                service.handle(data, time.monotonic())
                sent += len(data)
        # seq 4 after seq 2 on camera 1: one gap; its reference (seq 4) never comes and seq 5 passes it.
        for enc, encoded, cam, seq in ((dep_enc, dep, 1, 4), (ref_enc, ref, 0, 5)):
            data = enc.frame(encoded, rig_id=1, camera_id=cam, seq=seq, t_capture_ns=seq).pack()
            service.handle(data, time.monotonic())
            sent += len(data)
        service.handle(data, time.monotonic())  # a duplicate
        service.handle(b"garbage", time.monotonic())
        sent += len(data) + len(b"garbage")

        content_type, text = _scrape(service.metrics.port)
        assert content_type.startswith("text/plain; version=0.0.4")
        s = _parse(text)
        assert _get(s, "stereodsc_frames_received_total") == 10
        assert _get(s, "stereodsc_bytes_received_total") == sent
        assert _get(s, "stereodsc_frames_rejected_total", reason="BadMagicError") == 1
        assert _get(s, "stereodsc_frames_decoded_total", kind="reference") == 4
        assert _get(s, "stereodsc_frames_decoded_total", kind="with_side_info") == 3
        assert _get(s, "stereodsc_frames_decoded_total", kind="without_side_info", reason="no_reference") == 1
        assert _get(s, "stereodsc_frames_dropped_total", reason="duplicate") == 1
        assert _get(s, "stereodsc_sequence_gaps_total") == 1 + 2  # camera 1: seq 3; camera 0: seq 3, 4
        assert _get(s, "stereodsc_refused_keys_total") == 0
        for camera in ("0", "1"):
            assert abs(_get(s, "stereodsc_camera_last_seen_seconds", rig="1", camera=camera) - time.time()) < 60
            assert _get(s, "stereodsc_camera_stale", rig="1", camera=camera) == 0
        decoded = 4 + 3 + 1
        for stage, count in (("parse", 9), ("decode", decoded), ("total", decoded)):
            buckets = sorted(
                (float(dict(labels)["le"]), v)
                for (name, labels), v in s.items()
                if name == "stereodsc_latency_seconds_bucket" and ("stage", stage) in labels
            )
            assert buckets[-1][0] == float("inf") and len(buckets) > 5
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{stage} buckets must be cumulative"
            assert buckets[-1][1] == _get(s, "stereodsc_latency_seconds_count", stage=stage) == count
            assert _get(s, "stereodsc_latency_seconds_sum", stage=stage) > 0

        with pytest.raises(urllib.error.HTTPError) as err:
            _scrape(service.metrics.port, "/")
        assert err.value.code == 404
    finally:
        service.close()
    with pytest.raises(urllib.error.URLError):
        _scrape(service.metrics.port)  # close() stopped the server


def test_metrics_are_off_by_default(stereo: Path) -> None:
    service = _service(stereo)
    try:
        assert service.metrics is None
        assert "stereodsc_frames_received_total 0" in service.metrics_text()
    finally:
        service.close()


def test_bad_metrics_listen_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\[host\] metrics_listen = '9108'"):
        host_config_from_dict({"host": {"metrics_listen": "9108"}}, "x.toml")


# ------------------------------------------------------------------ the module alone (prometheus_client)
def _stats() -> HostStats:
    stats = HostStats(link=ReceiverStats(received=7, rejected_envelope=3, acks_dropped=2))
    stats.received, stats.bytes_received = 7, 700
    stats.rejected["BadMagicError"] += 1
    stats.decoded_without_side_info["no_reference"] += 2
    stats.latency.add("parse", 0.003)
    return stats


def test_every_counter_is_exported_link_counters_included() -> None:
    s = _parse(MetricsSnapshot.of(_stats()).render())
    assert _get(s, "stereodsc_frames_received_total") == 7
    assert _get(s, "stereodsc_bytes_received_total") == 700
    assert _get(s, "stereodsc_frames_decoded_total", kind="without_side_info", reason="no_reference") == 2
    assert _get(s, "stereodsc_link_rejected_envelope_total") == 3
    assert _get(s, "stereodsc_link_acks_dropped_total") == 2
    assert _get(s, "stereodsc_link_received_total") == 7
    # every integer counter of ReceiverStats, including ones added later, has its family
    for f in dataclasses.fields(ReceiverStats):
        assert ("stereodsc_link_" + f.name + "_total", frozenset()) in s, f.name
    assert _get(s, "stereodsc_latency_seconds_bucket", stage="parse", le="0.005") == 1
    assert _get(s, "stereodsc_latency_seconds_bucket", stage="parse", le="+Inf") == 1


def test_a_scrape_never_waits_on_the_service_lock() -> None:
    lock = threading.RLock()
    stats = _stats()
    source = SnapshotSource(lock, lambda: MetricsSnapshot.of(stats), max_age_s=0.2)
    server = MetricsServer(f"127.0.0.1:{free_port()}", source)
    held, release = threading.Event(), threading.Event()

    def decode_for_a_while() -> None:  # what the loop does while it decodes a frame
        with lock:
            stats.received += 1  # not yet visible: the scrape serves the copy taken before
            held.set()
            release.wait(10)

    worker = threading.Thread(target=decode_for_a_while)
    try:
        assert _get(_parse(_scrape(server.port)[1]), "stereodsc_frames_received_total") == 7  # idle: fresh
        worker.start()
        held.wait(5)
        t0 = time.monotonic()
        _, text = _scrape(server.port)
        assert time.monotonic() - t0 < 2.0, "the scrape waited for the lock"
        assert _get(_parse(text), "stereodsc_frames_received_total") == 7
        release.set()
        worker.join(5)
        assert _get(_parse(_scrape(server.port)[1]), "stereodsc_frames_received_total") == 8  # free again: fresh
    finally:
        release.set()
        server.close()


def test_the_loop_refreshes_the_snapshot_at_most_every_max_age() -> None:
    taken: list[int] = []
    stats = _stats()

    def take() -> MetricsSnapshot:
        taken.append(1)
        return MetricsSnapshot.of(stats)

    source = SnapshotSource(threading.RLock(), take, max_age_s=60.0)
    assert len(taken) == 1  # one at construction: a scrape always has something to serve
    source.refresh()
    assert len(taken) == 1
    source.refresh(now=time.monotonic() + 61.0)
    assert len(taken) == 2


def _slow_source() -> Callable[[], MetricsSnapshot]:
    snapshot = MetricsSnapshot.of(_stats())

    def slow() -> MetricsSnapshot:
        time.sleep(0.3)  # the client is gone before the answer is written
        return snapshot

    return slow


def test_a_client_that_goes_away_never_prints_a_traceback(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    server = MetricsServer(f"127.0.0.1:{free_port()}", _slow_source())
    try:
        for request in (b"", b"GET /met", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(request)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        time.sleep(1.0)  # the server writes into the reset connections
        _, text = _scrape(server.port)  # and still serves
        assert "stereodsc_frames_received_total 7.0" in text
    finally:
        server.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_metrics_listen_takes_ipv6_and_refuses_a_port_in_use() -> None:
    assert parse_listen("[::1]:9108") == ("::1", 9108)
    server = MetricsServer(f"127.0.0.1:{free_port()}", lambda: MetricsSnapshot.of(_stats()))
    try:
        with pytest.raises(ConfigError, match="cannot listen there"):
            MetricsServer(f"127.0.0.1:{server.port}", lambda: MetricsSnapshot.of(_stats()))
    finally:
        server.close()


def test_the_service_scrape_does_not_wait_on_its_decode_lock(stereo: Path) -> None:
    service = _service(stereo, f"127.0.0.1:{free_port()}")
    try:
        assert isinstance(service.metrics_source, SnapshotSource)
        assert service.metrics is not None
        with service._lock:  # a decode in progress
            t0 = time.monotonic()
            _scrape(service.metrics.port)
            assert time.monotonic() - t0 < 2.0
    finally:
        service.close()


def test_restarts_evictions_reference_loss_and_pending_are_exported() -> None:
    stats = _stats()
    stats.camera_restarts["capture_time"] += 2
    stats.cameras_evicted = 3
    stats.decoded_with_last_reference["stale"] += 4
    stats.rejected["KeyMismatch"] += 5
    stats.dropped["new_camera_limited"] += 6
    stats.pending = 7
    s = _parse(MetricsSnapshot.of(stats).render())
    assert _get(s, "stereodsc_backend_fell_back") == 0
    stats.backend_fell_back = True
    assert _get(_parse(MetricsSnapshot.of(stats).render()), "stereodsc_backend_fell_back") == 1
    assert _get(s, "stereodsc_camera_restarts_total", aligned_by="capture_time") == 2
    assert _get(s, "stereodsc_cameras_evicted_total") == 3
    assert _get(s, "stereodsc_frames_decoded_total", kind="with_last_reference", reason="stale") == 4
    assert _get(s, "stereodsc_frames_rejected_total", reason="KeyMismatch") == 5
    assert _get(s, "stereodsc_frames_dropped_total", reason="new_camera_limited") == 6
    assert _get(s, "stereodsc_frames_pending") == 7
