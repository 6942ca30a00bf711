"""The Prometheus endpoint: off by default, and when on, a scrape reports what the service counted."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stereodsc.edge_encoder.encoder import EdgeEncoder
from stereodsc.errors import ConfigError
from stereodsc.host_decoder.service import HostService, host_config_from_dict
from stereodsc.pipeline import free_port
from tiny_models import bundle_dir, sample_pair

pytestmark = pytest.mark.timeout(120)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_dir(tmp_path_factory, "stereo")


def _service(stereo: Path, metrics_listen: str = "") -> HostService:
    host = {"endpoint": f"tcp://127.0.0.1:{free_port()}", "bundle": str(stereo), "metrics_listen": metrics_listen}
    return HostService(host_config_from_dict({"host": host, "pairing": {"policy": "no_side_info"}}))


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
