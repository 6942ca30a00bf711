"""What the host service counts: every received message's outcome by reason, per-stage latency, the
camera table and the link's counters; `HostStats.as_dict` is what ``stats_file`` and the logs show."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stereodsc.host_decoder.admission import CameraState
from stereodsc.host_decoder.metrics import Histogram
from stereodsc.transport import ReceiverStats


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
class HostStats:
    received: int = 0
    bytes_received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by error type
    decoded_reference: int = 0
    decoded_with_side_info: int = 0
    decoded_without_side_info: Counter[str] = field(default_factory=Counter)  # by reason
    decoded_with_last_reference: Counter[str] = field(default_factory=Counter)  # reference loss, by reason
    dropped: Counter[str] = field(default_factory=Counter)  # by pairing reason, rate_limited, too_many_cameras
    decode_errors: Counter[str] = field(default_factory=Counter)
    sequence_gaps: int = 0  # frames a camera numbered but the host never received
    refused_keys: Counter[str] = field(default_factory=Counter)  # CURVE handshakes refused, by camera key
    camera_restarts: Counter[str] = field(default_factory=Counter)  # new sessions, by how they were aligned
    cameras_evicted: int = 0  # stale cameras whose table slot went to a new camera
    pending: int = 0  # frames acked and waiting in the pairing buffer (set when the stats are written)
    previous_run: dict[str, Any] = field(default_factory=dict)  # what a host that died left in stats_file
    link: ReceiverStats | None = None  # the receiver's own counters (acks_dropped, rejected_envelope)
    latency: LatencyStats = field(default_factory=LatencyStats)
    cameras: dict[tuple[int, int], CameraState] = field(default_factory=dict)  # (rig, camera) -> state
    stale_after_s: float = 0.0
    misaligned_cameras: int = 0  # camera sessions whose frames' rows did not match the side image's
    backend_fell_back: bool = False  # a GPU backend could not run and fallback = "cpu" took over

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
            "decoded_with_last_reference": dict(self.decoded_with_last_reference),
            "dropped": dict(self.dropped),
            "decode_errors": dict(self.decode_errors),
            "sequence_gaps": self.sequence_gaps,
            "refused_keys": dict(self.refused_keys),
            "camera_restarts": dict(self.camera_restarts),
            "cameras_evicted": self.cameras_evicted,
            "pending": self.pending,
            "previous_run": self.previous_run,
            "backend_fell_back": self.backend_fell_back,
            "misaligned_cameras": self.misaligned_cameras,
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

    def decoded(self) -> int:
        """Frames decoded, every kind."""
        return (
            self.decoded_reference
            + self.decoded_with_side_info
            + sum(self.decoded_with_last_reference.values())
            + sum(self.decoded_without_side_info.values())
        )

    def line(self) -> str:
        decoded = self.decoded()
        lat = self.latency.percentiles().get("total", {})
        return (
            f"received {self.received}, decoded {decoded} ({self.decoded_with_side_info} with side info), "
            f"rejected {sum(self.rejected.values())}, dropped {sum(self.dropped.values())}, "
            f"gaps {self.sequence_gaps}, refused keys {sum(self.refused_keys.values())}, "
            f"latency p50 {lat.get('p50_ms', 0):.1f} ms"
        )
