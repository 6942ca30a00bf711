"""Where decoded frames go: each sink is a callable taking a `DecodedFrame` (PNG files, a ZeroMQ PUB
socket, a JSON-lines frame log, or any Python callback a user passes in)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stereodsc.records import FrameRecord, decoded_name, symbols_digest
from stereodsc.wire import Frame

if TYPE_CHECKING:
    from stereodsc.transport import DecodedPublisher


@dataclass(frozen=True)
class DecodedFrame:
    """What a sink receives: the picture and where it came from."""

    frame: Frame
    image: np.ndarray  # uint8 RGB HxWx3
    side_info_used: bool
    wire_bytes: int
    symbols: np.ndarray  # int32: the decoded y symbols
    latency_s: float  # from receipt to delivery
    timings: dict[str, float] = field(default_factory=dict)  # the decoder's seconds per stage
    session: int = 0  # the camera's session (0: none announced)

    @property
    def symbols_sha256(self) -> str:
        """For audits: equal to the camera's frame log entry when the decode was bit-exact."""
        return symbols_digest(self.symbols)

    def record(self) -> FrameRecord:
        return FrameRecord.of(
            self.frame,
            self.symbols,
            self.timings,
            self.wire_bytes,
            side_info=self.side_info_used,
            latency_ms=round(self.latency_s * 1e3, 3),
            session=self.session or None,
        )


Sink = Callable[[DecodedFrame], None]


class PngSink:
    """Every decoded frame as ``<folder>/rig<R>_cam<C>_<seq>.png``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __call__(self, out: DecodedFrame) -> None:
        from stereodsc.images import write_rgb

        f = out.frame
        write_rgb(self.folder / f"{decoded_name(f.rig_id, f.camera_id, f.seq)}.png", out.image)


class PublishSink:
    """Decoded frames on a ZeroMQ PUB socket: topic ``rig<R>.cam<C>``, the frame record as JSON, the pixels."""

    def __init__(self, publisher: DecodedPublisher) -> None:
        self.publisher = publisher

    def __call__(self, out: DecodedFrame) -> None:
        f = out.frame
        header = out.record().to_json().encode()
        self.publisher.publish(f"rig{f.rig_id}.cam{f.camera_id}".encode(), header, out.image.tobytes())

    def close(self) -> None:
        self.publisher.close()


class FrameLogSink:
    """One `FrameRecord` per decoded frame, as JSON lines (audits, tests, the demo's report)."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "a")  # noqa: SIM115 - closed by close()

    def __call__(self, out: DecodedFrame) -> None:
        self._file.write(out.record().to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
