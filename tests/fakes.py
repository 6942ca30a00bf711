"""Stand-ins for the I/O edges of the services, for tests that drive them in-process."""

from __future__ import annotations

from stereodsc.transport import ReceiverStats


class IdleReceiver:
    """A receiver with nothing to receive: tests that call `HostService.handle` bind no socket."""

    def __init__(self) -> None:
        self.stats = ReceiverStats()
        self.closed = False

    def recv(self, timeout_ms: int) -> bytes | None:
        return None

    def refused_keys(self) -> list[str]:
        return []

    def ack(self, envelope: object) -> None:
        pass

    def close(self) -> None:
        self.closed = True
