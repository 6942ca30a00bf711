"""One schema for the per-frame logs of the camera and the host (JSON lines), so an audit joins them
by (rig, camera, seq) and compares the digests of the symbols each end coded and decoded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stereodsc.codec.roles import CodecRole
from stereodsc.wire import Frame


def symbols_digest(symbols: np.ndarray) -> str:
    """sha256 of the y symbols: equal on both ends exactly when the decode was bit-exact."""
    return hashlib.sha256(np.ascontiguousarray(symbols).tobytes()).hexdigest()


def decoded_name(rig: int, camera: int, seq: int) -> str:
    """File stem of a decoded frame (the host's PNG sink writes ``<stem>.png``)."""
    return f"rig{rig}_cam{camera}_{seq:010d}"


@dataclass(frozen=True)
class FrameRecord:
    """A frame as one end saw it. Edge records carry ``sent``; host records ``side_info`` and
    ``latency_ms`` (receipt to delivery). ``stages_ms`` holds the codec's own stage timings."""

    rig: int
    camera: int
    role: str  # "reference" or "dependent" (the camera config's words)
    seq: int
    t_capture_ns: int
    height: int
    width: int
    bytes: int  # the wire frame, header included
    payload_bytes: int  # the entropy-coded segments only
    symbols: str  # `symbols_digest` of y
    stages_ms: Mapping[str, float] = field(default_factory=dict)
    sent: bool | None = None
    side_info: bool | None = None
    latency_ms: float | None = None
    session: int | None = None  # the camera's session (one per camera start): which run of it the frame is from

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def of(
        cls, frame: Frame, symbols: np.ndarray, timings: Mapping[str, float], wire_bytes: int, **end: Any
    ) -> FrameRecord:
        """The record of `frame` with its y `symbols` and the codec's stage `timings` (seconds); `end`
        holds the fields of the end that writes it (``sent``; ``side_info``, ``latency_ms``; ``session``)."""
        return cls(
            frame.rig_id,
            frame.camera_id,
            CodecRole.from_wire(frame.role).camera,
            frame.seq,
            frame.t_capture_ns,
            frame.height,
            frame.width,
            wire_bytes,
            frame.payload_size,
            symbols_digest(symbols),
            stages_ms(timings),
            **end,
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FrameRecord:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def stages_ms(timings: Mapping[str, float]) -> dict[str, float]:
    """Seconds per stage -> milliseconds rounded to the microsecond, for the logs."""
    return {stage: round(seconds * 1e3, 3) for stage, seconds in timings.items()}
