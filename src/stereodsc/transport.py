"""ZeroMQ links between camera boards and the host that never block a camera and survive restarts.

Camera -> host is **DEALER (camera connects) -> ROUTER (host binds)**, and every frame is acknowledged:

- The host binds one endpoint; any number of cameras connect to it and ROUTER fair-queues between them.
- The connecting side reconnects by itself (``RECONNECT_IVL`` backing off to ``RECONNECT_IVL_MAX``),
  so a restarted host is found again without restarting a camera; the host may also start last.
- Every send is ``NOBLOCK``: when the frame cannot be queued the camera drops it, counts it and goes on
  with the next frame (a stale frame is worth less than the next one).
- Delivery is confirmed, so no frame is lost silently. A camera sends ``[token, frame]``, token = 8
  bytes: its session id (4 bytes, see below) and its send counter (4 bytes); the host's
  `FrameReceiver.recv` answers ``[token]`` on the same connection (ROUTER's return path) the moment it
  takes the frame: from then on the host's own counters account for it (decoded, or dropped for a named
  reason). The camera keeps the tokens in flight and counts each frame ``acked``, or ``lost`` when no
  ack comes within ``ack_timeout_ms`` (a connection reset drops what was queued on it) or by the end of
  `FrameSender.drain` at shutdown; ``sent = acked + lost + in flight`` at every moment (an ack that
  comes after the timeout moves its frame back to acked). Acks never block the host: one that cannot be
  queued is dropped and counted (``acks_dropped``); then, as when a connection reset takes acks with it,
  the camera reports a frame lost that the host has: an over-count, never an under-count. REQ/REP is
  out: it blocks the sender and hangs when the host restarts (imagezmq #1, #18, #35, #49).

The camera's session id rides in the token, on every message: a random 32-bit number the camera draws
once per start (``session=``; 0 means "none announced", what a sender from before sessions sends). The
host reads it with each frame (`Received.envelope`) and so learns at the first frame after a reboot that
the camera's sequence numbers started again, without a hello message that could be lost or overtaken,
and without a new wire version: the frame bytes stay wire v1, and a host that knows no sessions echoes
the 8 bytes as before.

A camera whose link stays down re-handshakes: libzmq reconnects by itself after a lost connection, but
never after a refused CURVE handshake (a key added to the allow-list later would never be tried). So
when no connection has come up for ``rehandshake_ms`` while the camera was sending, `FrameSender`
closes its socket and opens a new one (doubling the wait up to ``rehandshake_max_ms``, back to the
start once the link is up). Every dropped frame is counted by why (``stats.dropped_by``: ``no_host``,
``refused_key``, ``handshake_failed``, ``window_full``, ``queue_full``), from the socket's monitor events.

Options and why:

- ``IMMEDIATE=1``: frames are only queued towards a host whose connection is complete. While the host
  is down or not yet reachable every `FrameSender.send` is dropped and counted at once, instead of
  up to ``SNDHWM`` frames piling up in the pipe and arriving seconds late after the reconnect.
- At most ``max_in_flight`` (8) frames sent and not yet acked: past that, `FrameSender.send` refuses
  the frame (counted as ``dropped_full``), so a slow host never builds a backlog and latency stays
  bounded. (``SNDHWM`` alone does not bound it: the kernel's TCP buffers hold more, and the acks
  keep the link's heartbeats alive however long the backlog.) ``SNDHWM`` small (4) as well.
- The host's ROUTER socket sends no ZMTP heartbeats of its own (``heartbeat_ivl_ms=0``): with its own
  heartbeat timer libzmq 4.3.5 aborted the host process (``Assertion failed: !_io_error``,
  stream_engine_base.cpp:310) when cameras overloaded it (benchmarks/soak.py at fps 0: 2 of 2 runs
  before, 0 of 3 after). The cameras' heartbeats and TCP keepalive still detect dead links.
- ZMTP heartbeats (``HEARTBEAT_IVL``/``_TIMEOUT``/``_TTL``) and TCP keepalive: a half-open connection
  (host power loss, pulled cable: no FIN or RST ever arrives) is detected within the heartbeat timeout
  and reconnected, on both sides. A host that stops reading altogether (its ``RCVHWM`` queue full)
  stops reading the socket too, so it misses heartbeats: after the timeout the camera resets the
  link, dropping what was queued on it, and reconnects; a host that reads slowly is not affected.
  ``CONNECT_TIMEOUT`` (= heartbeat timeout) keeps a connect to a
  silent, unplugged host from waiting out the OS's two-minute SYN retries before the next attempt.
- ``LINGER=0``: closing never waits for unsent frames; a camera that ends calls `FrameSender.drain`
  first, which waits (bounded) for the acks of what is still in flight.
- Host side, ``MAXMSGSIZE``: libzmq refuses a larger message as it reads the length, before allocating
  it, and resets that sender's connection (which reconnects by itself). libzmq does not report this,
  so it is not in the receiver's stats; the camera counts the reset (``stats.link_resets``, and
  ``stats.oversize_resets`` when a frame over its own ``max_frame_bytes`` was in flight) and its ack
  timeout counts the frame lost. Messages that are not ``[token, frame]`` are read, counted and discarded.

Decoded frames leave the host on a PUB socket (`DecodedPublisher`): PUB never blocks and drops
messages for a subscriber whose queue is full, which is what a live viewer wants.

Nothing here pickles: the wire format is `stereodsc.wire`. Sockets are not thread-safe: use each
object from one thread.

CURVE (``curve=`` on `FrameSender` / `FrameReceiver`, keys from `stereodsc.security`): the link is
encrypted and the host lets in only cameras whose public key is in its allow-list. The check is ZAP,
answered by a `zmq.auth.thread.ThreadAuthenticator` on the receiver's context (one per context:
give each CURVE receiver its own). A refused camera's key is recorded by the authenticator and read
with `FrameReceiver.refused_keys`; the camera's frames never reach the application. Each received frame
carries the key ZAP authenticated for its connection (``User-Id``, in `Received.envelope`), so the host
can check that a camera sends under its own ids. A camera that
speaks plain or holds the wrong host key fails the handshake before ZAP and is not reported.
"""

from __future__ import annotations

import logging
import secrets
import struct
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import zmq
import zmq.utils.monitor
from zmq.auth.thread import ThreadAuthenticator

from stereodsc.errors import ConfigError, StereoDSCError
from stereodsc.security import ClientCurve, ServerCurve

_TCP_KEEPALIVE_IDLE_S = 10
_TCP_KEEPALIVE_INTVL_S = 2
_TCP_KEEPALIVE_CNT = 3


log = logging.getLogger("stereodsc.transport")

_L = TypeVar("_L", bound="_Link")
_TOKEN = struct.Struct(">II")  # (camera session id, send counter), echoed back as the ack
_OVERDUE_KEPT = 1024  # tokens counted lost whose late ack would still be credited
_MAX_REFUSALS_KEPT = 1024  # refused keys waiting for `FrameReceiver.refused_keys`; older ones are dropped


class TransportError(StereoDSCError):
    """A socket could not be bound or connected, or was used after `close`."""


@dataclass
class SenderStats:
    sent: int = 0
    dropped_full: int = 0
    """Frames not queued: no connected host (see ``IMMEDIATE``) or its queue at the high-water mark."""
    acked: int = 0
    """Sent frames the host confirmed it took."""
    lost: int = 0
    """Sent frames never confirmed: no ack within ``ack_timeout_ms``, or still in flight at close."""
    dropped_by: Counter[str] = field(default_factory=Counter)
    """``dropped_full`` by why: no_host, refused_key, handshake_failed, window_full, queue_full."""
    rehandshakes: int = 0
    """Sockets replaced because no connection came up for the back-off time (e.g. a refused key)."""
    link_resets: int = 0
    """Connections that closed with frames in flight (host died or restarted, heartbeat timeout, oversize)."""
    oversize_resets: int = 0
    """Of those, the ones with a frame over ``max_frame_bytes`` in flight: the host's limit reset the link."""


@dataclass(frozen=True)
class Envelope:
    """What the link knows of a received frame beyond its bytes."""

    session: int
    """The camera's session id (drawn at each camera start); 0: the sender announces none."""
    key: str | None
    """The camera's CURVE public key (z85), as ZAP authenticated its connection; None on a plain link."""
    sender: bytes
    """The connection it came on (ROUTER routing id): one per camera link, new after each reconnect."""
    token: bytes = b""
    """The frame's ack token: `FrameReceiver.ack` sends it back (empty: nothing to ack)."""


class Received(bytes):
    """A frame's bytes as `FrameReceiver.recv` returns them (usable wherever bytes are), with its `envelope`."""

    envelope: Envelope

    @classmethod
    def of(cls, data: bytes, envelope: Envelope) -> Received:
        out = cls(data)
        out.envelope = envelope
        return out


@dataclass
class ReceiverStats:
    received: int = 0
    rejected_envelope: int = 0
    """Messages that were not ``[token, frame]`` (not from a `FrameSender`): discarded."""
    acks_dropped: int = 0
    """Acks that could not be queued back to their camera (it then counts that frame lost)."""
    refused_auth: int = 0
    """CURVE handshakes the ZAP allow-list refused (counted as `FrameReceiver.refused_keys` reads them)."""


class _AllowList:
    """ZAP credentials provider: lets in the listed camera keys and records the others."""

    def __init__(self, allowed: frozenset[bytes]) -> None:
        self.allowed = allowed
        self.refused: deque[bytes] = deque(maxlen=_MAX_REFUSALS_KEPT)  # appended by the ZAP thread

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        self.refused.append(key)
        return False


@dataclass
class PublisherStats:
    published: int = 0
    """Handed to libzmq; PUB silently drops them for any subscriber whose queue is full."""


class _Link:
    """One socket with the options every link shares, its context, and close/with support."""

    def __init__(
        self,
        socket_type: int,
        endpoint: str,
        *,
        bind: bool,
        options: dict[int, int],
        linger_ms: int,
        heartbeat_ivl_ms: int,
        heartbeat_timeout_ms: int,
        context: zmq.Context[zmq.Socket[bytes]] | None,
        curve: ServerCurve | ClientCurve | None = None,
    ) -> None:
        if linger_ms < 0:
            raise ConfigError(f"linger_ms must be >= 0 (never wait forever on close), got {linger_ms}")
        if heartbeat_ivl_ms < 0 or (heartbeat_ivl_ms and heartbeat_timeout_ms <= heartbeat_ivl_ms):
            raise ConfigError(
                "heartbeats need 0 < heartbeat_ivl_ms < heartbeat_timeout_ms (or heartbeat_ivl_ms = 0: none), "
                f"got {heartbeat_ivl_ms} and {heartbeat_timeout_ms}"
            )
        heartbeats: dict[int, int] = (
            {
                zmq.HEARTBEAT_IVL: heartbeat_ivl_ms,
                zmq.HEARTBEAT_TIMEOUT: heartbeat_timeout_ms,
                zmq.HEARTBEAT_TTL: heartbeat_timeout_ms,
            }
            if heartbeat_ivl_ms
            else {}
        )
        options = {
            zmq.LINGER: linger_ms,
            **heartbeats,
            zmq.TCP_KEEPALIVE: 1,
            zmq.TCP_KEEPALIVE_IDLE: _TCP_KEEPALIVE_IDLE_S,
            zmq.TCP_KEEPALIVE_INTVL: _TCP_KEEPALIVE_INTVL_S,
            zmq.TCP_KEEPALIVE_CNT: _TCP_KEEPALIVE_CNT,
            **options,
        }
        self._owns_context = context is None
        self._context = zmq.Context() if context is None else context
        self._authenticator: ThreadAuthenticator | None = None
        self._allow_list: _AllowList | None = None
        self._closed = False
        self._socket_type, self._target, self._bind, self._options, self._curve = (
            socket_type,
            endpoint,
            bind,
            options,
            curve,
        )
        if isinstance(curve, ServerCurve):
            self._allow_list = _AllowList(curve.allowed)
            self._authenticator = ThreadAuthenticator(self._context)
            self._authenticator.start()  # before bind: a camera must never meet a socket without ZAP
            self._authenticator.configure_curve_callback(domain="*", credentials_provider=self._allow_list)
        self._socket = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        """A new socket with the link's keys and options, bound or connected (a camera's re-handshake
        calls it again)."""
        sock = self._context.socket(self._socket_type)
        curve = self._curve
        try:
            if isinstance(curve, ServerCurve):
                sock.curve_secretkey = curve.secret
                sock.curve_publickey = curve.public
                sock.curve_server = True
            elif isinstance(curve, ClientCurve):
                sock.curve_secretkey = curve.secret
                sock.curve_publickey = curve.public
                sock.curve_serverkey = curve.server_public
            for option, value in self._options.items():
                sock.setsockopt(option, value)
            if self._bind:
                sock.bind(self._target)
            else:
                sock.connect(self._target)
        except zmq.ZMQError as e:
            self._socket = sock
            self.close()
            verb = "bind" if self._bind else "connect"
            hint = ": is another host running on it?" if e.errno == zmq.EADDRINUSE else ""
            raise TransportError(f"cannot {verb} {self._target!r}: {e}{hint}") from e
        return sock

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The underlying socket, e.g. to register with a `zmq.Poller` (do not change its options)."""
        return self._socket

    @property
    def endpoint(self) -> str:
        """The endpoint last bound or connected, with the actual port after binding ``tcp://host:*``."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _check_open(self) -> None:
        if self._socket.closed:
            raise TransportError(f"{type(self).__name__} used after close()")

    def close(self) -> None:
        """Close (unsent messages are discarded after ``linger_ms``); safe to call twice."""
        if not self._closed:
            self._closed = True
            self._socket.close()
            if self._authenticator is not None:
                self._authenticator.stop()
            if self._owns_context:
                self._context.term()

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# The link's state, from the socket's monitor events, and why a frame that cannot be queued is dropped then.
_EVENTS = (
    zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_DOWN_REASON: dict[int, str] = {
    zmq.EVENT_CONNECT_RETRIED: "no_host",
    zmq.EVENT_DISCONNECTED: "no_host",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused_key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
}
DROP_REASONS = {
    "no_host": "no connection to the host (down, unreachable, or [link] endpoint wrong)",
    "refused_key": "the host refused this camera's CURVE key (not in its allowed_keys)",
    "handshake_failed": "the handshake failed (wrong [security] server_public, or CURVE on one side only)",
    "window_full": "max_in_flight frames still wait for their acks (the host is slower than the camera)",
    "queue_full": "the send queue is at its high-water mark (the link is slower than the camera)",
}
"""Why `FrameSender` drops frames (`SenderStats.dropped_by`), in words for the camera's log."""


def new_session_id() -> int:
    """A camera's session id: random, 32 bits, never 0 (0 means "no session announced")."""
    return secrets.randbits(32) or 1


class FrameSender(_Link):
    """The camera's end: connects a DEALER socket to the host; `send` never blocks, every frame is acked."""

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = 4,
        linger_ms: int = 0,
        heartbeat_ivl_ms: int = 1000,
        heartbeat_timeout_ms: int = 3000,
        reconnect_ivl_ms: int = 100,
        reconnect_ivl_max_ms: int = 2000,
        ack_timeout_ms: int = 10_000,
        max_in_flight: int = 8,
        rehandshake_ms: int = 5000,
        rehandshake_max_ms: int = 60_000,
        max_frame_bytes: int = 1 << 20,
        session: int | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: ClientCurve | None = None,
    ) -> None:
        if sndhwm < 1 or max_in_flight < 1:
            raise ConfigError(
                f"sndhwm and max_in_flight must be >= 1 (bounded queues), got {sndhwm} and {max_in_flight}"
            )
        if not 0 < reconnect_ivl_ms <= reconnect_ivl_max_ms:
            raise ConfigError(
                "reconnects need 0 < reconnect_ivl_ms <= reconnect_ivl_max_ms, "
                f"got {reconnect_ivl_ms} and {reconnect_ivl_max_ms}"
            )
        if ack_timeout_ms <= heartbeat_timeout_ms:
            raise ConfigError(
                f"ack_timeout_ms ({ack_timeout_ms}) must exceed heartbeat_timeout_ms ({heartbeat_timeout_ms}): "
                "a link the heartbeats still keep would otherwise have its frames counted lost"
            )
        if not 0 < rehandshake_ms <= rehandshake_max_ms:
            raise ConfigError(
                "re-handshakes need 0 < rehandshake_ms <= rehandshake_max_ms (seconds without a connection "
                f"before a new socket), got {rehandshake_ms} and {rehandshake_max_ms}"
            )
        if session is not None and not 0 <= session < 1 << 32:
            raise ConfigError(f"session must be a 32-bit number, got {session}")
        self.stats = SenderStats()
        self.session = new_session_id() if session is None else session
        self.ack_timeout_s = ack_timeout_ms / 1000
        self.max_in_flight = max_in_flight
        self.max_frame_bytes = max_frame_bytes
        self._rehandshake_s, self._rehandshake_max_s = rehandshake_ms / 1000, rehandshake_max_ms / 1000
        self._backoff_s = self._rehandshake_s
        self._next_token = 0
        self._in_flight: OrderedDict[bytes, float] = OrderedDict()  # token -> monotonic send time, oldest first
        self._oversize: set[bytes] = set()  # tokens in flight of frames over max_frame_bytes
        self._overdue: OrderedDict[bytes, None] = OrderedDict()  # tokens counted lost; a late ack moves them back
        self._monitor: zmq.Socket[bytes] | None = None  # link events: connected, refused, closed
        self.down_reason: str | None = "no_host"  # None while a connection is up; else why not
        self.last_drop: str | None = None  # why the last frame not queued was dropped (see DROP_REASONS)
        self._changed_at = time.monotonic()  # when the link last came up, or this socket was opened
        super().__init__(
            zmq.DEALER,
            endpoint,
            bind=False,
            options={
                zmq.SNDHWM: sndhwm,
                zmq.IMMEDIATE: 1,
                zmq.RECONNECT_IVL: reconnect_ivl_ms,
                zmq.RECONNECT_IVL_MAX: reconnect_ivl_max_ms,
                zmq.CONNECT_TIMEOUT: heartbeat_timeout_ms,
            },
            linger_ms=linger_ms,
            heartbeat_ivl_ms=heartbeat_ivl_ms,
            heartbeat_timeout_ms=heartbeat_timeout_ms,
            context=context,
            curve=curve,
        )
        self._monitor = self._socket.get_monitor_socket(_EVENTS)

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet acked nor counted lost."""
        return len(self._in_flight)

    def send(self, data: bytes) -> bool:
        """Queue one packed frame; False (and counted in ``stats.dropped_full``, by why in
        ``stats.dropped_by``) if it could not be: no host connected (or it refused this camera), its queue
        full, or ``max_in_flight`` frames still waiting for their acks."""
        self._check_open()
        self.poll_acks()
        if len(self._in_flight) >= self.max_in_flight:
            return self._drop("window_full")
        token = _TOKEN.pack(self.session, self._next_token)
        try:
            self._socket.send_multipart([token, data], zmq.NOBLOCK)
        except zmq.Again:
            self._drop(self.down_reason or "queue_full")
            self._rehandshake_if_silent()
            return False
        self._next_token = (self._next_token + 1) & 0xFFFFFFFF
        self._in_flight[token] = time.monotonic()
        if len(data) > self.max_frame_bytes:
            self._oversize.add(token)
        self.stats.sent += 1
        return True

    def _drop(self, reason: str) -> bool:
        self.last_drop = reason
        self.stats.dropped_full += 1
        self.stats.dropped_by[reason] += 1
        return False

    def poll_acks(self) -> None:
        """Take the acks that arrived (never waits) and count frames whose ack is overdue as lost."""
        self._check_open()
        while True:
            try:
                token = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if self._in_flight.pop(token, None) is not None:
                self.stats.acked += 1
                self._oversize.discard(token)
            elif self._overdue.pop(token, 0) is None:  # counted lost, yet the host did take it
                self.stats.lost -= 1
                self.stats.acked += 1
        if self._link_dropped() and self._in_flight:  # the connection went with everything in flight on it
            self.stats.link_resets += 1
            self.stats.oversize_resets += bool(self._oversize)
            self._count_lost(len(self._in_flight))
        overdue = time.monotonic() - self.ack_timeout_s
        n = 0
        for sent_at in self._in_flight.values():
            if sent_at >= overdue:
                break
            n += 1
        self._count_lost(n)

    def _count_lost(self, n: int) -> None:
        """Count the `n` oldest frames in flight lost (remembering them, should their ack come late)."""
        for _ in range(n):
            token, _ = self._in_flight.popitem(last=False)
            self._oversize.discard(token)
            self.stats.lost += 1
            self._overdue[token] = None
            if len(self._overdue) > _OVERDUE_KEPT:
                self._overdue.popitem(last=False)

    def _link_dropped(self) -> bool:
        """Follow the link's state from the monitor; whether the connection to the host closed since the
        last call (host died or restarted, heartbeat timeout): libzmq then discards what was queued on
        it, and no ack can come back."""
        dropped = False
        while self._monitor is not None and self._monitor.poll(0):
            event = zmq.utils.monitor.recv_monitor_message(self._monitor)["event"]
            dropped |= event == zmq.EVENT_DISCONNECTED
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.down_reason is not None:
                    self._changed_at = time.monotonic()
                self.down_reason = None
                self._backoff_s = self._rehandshake_s
            elif event in _DOWN_REASON:
                if self.down_reason is None:
                    self._changed_at = time.monotonic()
                reason = _DOWN_REASON[event]  # a refusal's disconnect and retries are still the refusal
                if reason != "no_host" or self.down_reason in (None, "no_host"):
                    self.down_reason = reason
        return dropped

    def _rehandshake_if_silent(self) -> None:
        """Open a new socket when no connection came up for the back-off time while the camera was
        sending: libzmq never retries a refused handshake (a key allowed later would never be tried)."""
        now = time.monotonic()
        if self.down_reason is None or now - self._changed_at < self._backoff_s:
            return
        log.warning(
            "no connection to %s for %.1f s (%s): opening a new socket (next try in %.1f s)",
            self._target,
            now - self._changed_at,
            DROP_REASONS.get(self.down_reason, self.down_reason),
            min(2 * self._backoff_s, self._rehandshake_max_s),
        )
        self._close_socket()
        self._socket = self._open()
        self._monitor = self._socket.get_monitor_socket(_EVENTS)
        self.stats.rehandshakes += 1
        self._changed_at = now
        self._backoff_s = min(2 * self._backoff_s, self._rehandshake_max_s)

    def drain(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` for the acks of every frame in flight; returns how many are still
        unconfirmed (a source that ended wants its last frames delivered, or counted)."""
        deadline = time.monotonic() + timeout_ms / 1000
        self.poll_acks()
        while self._in_flight and (remaining := deadline - time.monotonic()) > 0:
            self._socket.poll(max(1, round(remaining * 1000)), zmq.POLLIN)
            self.poll_acks()
        return len(self._in_flight)

    def _close_socket(self) -> None:
        """Close the socket and its monitor; frames still unconfirmed count as lost."""
        if self._monitor is not None:
            self.poll_acks()
            self.stats.lost += len(self._in_flight)
            self._in_flight.clear()
            self._oversize.clear()
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._socket.close()

    def close(self) -> None:
        """Close; frames still unconfirmed count as lost (call `drain` first to wait for them)."""
        if not self._socket.closed:
            self._close_socket()
        super().close()


class FrameReceiver(_Link):
    """The host's end: binds a ROUTER socket that every camera connects to (with `curve`: only allowed ones).

    `ack_on_receipt` acks each frame as it is taken; without it the owner acks each frame with `ack`
    once it reached an outcome (the host service: decoded, dropped or rejected), so a frame a camera
    counts acked is never one that a crashed host still held."""

    def __init__(
        self,
        endpoint: str,
        *,
        rcvhwm: int = 64,
        max_frame_bytes: int = 1 << 20,
        linger_ms: int = 0,
        heartbeat_ivl_ms: int = 0,
        heartbeat_timeout_ms: int = 3000,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: ServerCurve | None = None,
        ack_on_receipt: bool = True,
    ) -> None:
        self.ack_on_receipt = ack_on_receipt
        if rcvhwm < 1:
            raise ConfigError(f"rcvhwm must be >= 1 (0 would mean an unbounded queue), got {rcvhwm}")
        if max_frame_bytes < 1:
            raise ConfigError(f"max_frame_bytes must be >= 1, got {max_frame_bytes}")
        self.stats = ReceiverStats()
        super().__init__(
            zmq.ROUTER,
            endpoint,
            bind=True,
            options={zmq.RCVHWM: rcvhwm, zmq.MAXMSGSIZE: max_frame_bytes, zmq.ROUTER_MANDATORY: 1},  # unsent acks raise
            linger_ms=linger_ms,
            heartbeat_ivl_ms=heartbeat_ivl_ms,
            heartbeat_timeout_ms=heartbeat_timeout_ms,
            context=context,
            curve=curve,
        )

    def refused_keys(self) -> list[str]:
        """The z85 public keys ZAP refused since the last call, one per refused handshake (plain: [])."""
        if self._allow_list is None:
            return []
        refused = self._allow_list.refused
        keys = [refused.popleft().decode() for _ in range(len(refused))]
        self.stats.refused_auth += len(keys)
        return keys

    def ack(self, envelope: Envelope) -> None:
        """Send a frame's ack to its camera (never blocks; an ack that cannot be queued is counted in
        ``acks_dropped``, and the camera then counts that frame lost: an over-count, never an under-count)."""
        if not envelope.token:
            return
        try:
            self._socket.send_multipart([envelope.sender, envelope.token], zmq.NOBLOCK)
        except zmq.ZMQError:  # the camera's return queue is full or it just went away
            self.stats.acks_dropped += 1

    def recv(self, timeout_ms: int) -> Received | None:
        """The next frame with its `Envelope` (acked to its camera if `ack_on_receipt`), or None if none
        came within `timeout_ms` (0: don't wait).

        Messages that are not ``[token, frame]`` are discarded and counted; the wait goes on until the timeout.
        """
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms must be >= 0 (the host loop must wake up), got {timeout_ms}")
        self._check_open()
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:  # ROUTER prepends the camera's routing id; frames (not bytes) carry the connection's metadata
                parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                remaining_ms = max(0, round((deadline - time.monotonic()) * 1000))
                if remaining_ms == 0 or not self._socket.poll(remaining_ms, zmq.POLLIN):
                    return None
                continue
            if len(parts) != 3 or len(parts[1]) != _TOKEN.size:
                self.stats.rejected_envelope += 1
                continue
            peer, token, data = parts[0].bytes, parts[1].bytes, parts[2]
            if self.ack_on_receipt:
                self.ack(Envelope(0, None, peer, token))
            self.stats.received += 1
            try:
                user_id = data.get("User-Id") if self._allow_list is not None else None
                key = user_id if isinstance(user_id, str) else None
            except zmq.ZMQError:
                key = None
            return Received.of(data.bytes, Envelope(_TOKEN.unpack(token)[0], key, peer, token))


class DecodedPublisher(_Link):
    """The host's sink for decoded frames: binds a PUB socket; `publish` never blocks."""

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = 2,
        linger_ms: int = 0,
        heartbeat_ivl_ms: int = 1000,
        heartbeat_timeout_ms: int = 3000,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if sndhwm < 1:
            raise ConfigError(f"sndhwm must be >= 1 (0 would mean an unbounded queue), got {sndhwm}")
        self.stats = PublisherStats()
        super().__init__(
            zmq.PUB,
            endpoint,
            bind=True,
            options={zmq.SNDHWM: sndhwm},
            linger_ms=linger_ms,
            heartbeat_ivl_ms=heartbeat_ivl_ms,
            heartbeat_timeout_ms=heartbeat_timeout_ms,
            context=context,
        )

    def publish(self, topic: bytes, header: bytes, payload: bytes | bytearray | memoryview) -> None:
        """Send ``[topic, header, payload]``; subscribers filter on the topic prefix.

        The payload is copied, so the caller may reuse its buffer (e.g. a decoder's output array) at once.
        """
        self._check_open()
        self._socket.send_multipart([topic, header, payload], zmq.NOBLOCK)
        self.stats.published += 1
