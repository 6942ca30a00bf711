"""Real ZeroMQ sockets over tcp://127.0.0.1: delivery, never-blocking drops, host restarts, size limits.

Every wait is bounded (a deadline loop or a recv timeout) and every test has a pytest-timeout.
Assertions are on counts and behaviour, never on wall-clock durations.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import zmq

from stereodsc.errors import ConfigError
from stereodsc.transport import DecodedPublisher, FrameReceiver, FrameSender, TransportError

pytestmark = pytest.mark.timeout(30)

PROBE = b"probe"
DEADLINE_S = 10.0


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def receiver() -> Iterator[FrameReceiver]:
    with FrameReceiver("tcp://127.0.0.1:*") as r:
        yield r


def connect(sender: FrameSender, receiver: FrameReceiver) -> None:
    """Send probes until one arrives: with IMMEDIATE, frames are dropped until the link is up."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        sender.send(PROBE)
        if receiver.recv(timeout_ms=20) == PROBE:
            return
    pytest.fail("sender never connected to the receiver")


def connect_idle(sender: FrameSender, receiver: FrameReceiver) -> None:
    """Connect, then read the probes still on their way and take their acks: nothing in flight after."""
    connect(sender, receiver)
    while receiver.recv(timeout_ms=200) is not None:
        pass
    assert sender.drain(timeout_ms=2000) == 0


def send_all(sender: FrameSender, frames: list[bytes], receiver: FrameReceiver) -> list[bytes]:
    """Send every frame, retrying those the HWM refused, while reading what arrives (non-probes).

    The reading matters: a host that stops reading for longer than the heartbeat timeout stops
    answering heartbeats, and the camera resets the link (dropping what was queued on it).
    """
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    for frame in frames:
        while not sender.send(frame):
            assert time.monotonic() < deadline, "sender kept refusing frames"
            data = receiver.recv(timeout_ms=1)
            if data is not None and data != PROBE:
                got.append(data)
    return got


def recv_n(receiver: FrameReceiver, n: int, got: list[bytes] | None = None) -> list[bytes]:
    """Read until `got` holds n non-probe messages (probes still in flight from `connect` are skipped)."""
    got = [] if got is None else got
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < n and time.monotonic() < deadline:
        data = receiver.recv(timeout_ms=100)
        if data is not None and data != PROBE:
            got.append(data)
    return got


def test_frames_arrive_intact_and_in_order(receiver: FrameReceiver) -> None:
    frames = [bytes([i % 256]) * (1 + 997 * i % 50_000) + i.to_bytes(4, "little") for i in range(200)]
    with FrameSender(receiver.endpoint) as sender:
        connect(sender, receiver)
        assert recv_n(receiver, len(frames), send_all(sender, frames, receiver)) == frames
        assert receiver.recv(timeout_ms=50) is None


def test_many_cameras_share_one_endpoint(receiver: FrameReceiver) -> None:
    with FrameSender(receiver.endpoint) as a, FrameSender(receiver.endpoint) as b:
        connect(a, receiver)
        connect(b, receiver)
        got: list[bytes] = []
        for i in range(50):
            got += send_all(a, [b"a%d" % i], receiver)
            got += send_all(b, [b"b%d" % i], receiver)
        got = recv_n(receiver, 100, got)
    assert [g for g in got if g.startswith(b"a")] == [b"a%d" % i for i in range(50)]
    assert [g for g in got if g.startswith(b"b")] == [b"b%d" % i for i in range(50)]


def test_sender_without_host_drops_and_counts_then_finds_a_late_host() -> None:
    endpoint = free_endpoint()
    with FrameSender(endpoint) as sender:
        results = [sender.send(b"frame %d" % i) for i in range(1000)]
        assert not any(results)
        assert (sender.stats.sent, sender.stats.dropped_full) == (0, 1000)
        with FrameReceiver(endpoint) as receiver:  # the host starts after the camera
            connect(sender, receiver)
            assert recv_n(receiver, 1, send_all(sender, [b"hello"], receiver)) == [b"hello"]


def test_full_queue_drops_newest_and_delivers_what_was_accepted() -> None:
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=2) as receiver, FrameSender(receiver.endpoint) as sender:
        connect(sender, receiver)
        sent0, dropped0 = sender.stats.sent, sender.stats.dropped_full
        # The host does not read: sndhwm + rcvhwm + the kernel's TCP buffers fill, then sends fail fast.
        accepted = [i for i in range(1000) if sender.send(i.to_bytes(4, "little") + bytes(65_536))]
        assert sender.stats.sent - sent0 == len(accepted)
        assert sender.stats.dropped_full - dropped0 == 1000 - len(accepted) > 0
        got = recv_n(receiver, len(accepted))
        assert [int.from_bytes(g[:4], "little") for g in got] == accepted
        assert receiver.recv(timeout_ms=50) is None


def test_host_restart_on_the_same_port_is_survived() -> None:
    first = FrameReceiver("tcp://127.0.0.1:*")
    endpoint = first.endpoint
    with FrameSender(endpoint) as sender:
        connect(sender, first)
        first.close()  # the host goes away while the camera keeps sending
        down_until = time.monotonic() + 0.3
        i = 0
        while time.monotonic() < down_until:
            sender.send(b"during %d" % i)
            i += 1
            time.sleep(0.005)
        dropped_while_down = sender.stats.dropped_full
        assert dropped_while_down > 0
        with FrameReceiver(endpoint) as second:  # restarted host, same port
            got = None
            deadline = time.monotonic() + DEADLINE_S
            while got is None and time.monotonic() < deadline:
                sender.send(b"after restart")
                got = second.recv(timeout_ms=20)
            assert got == b"after restart"


def test_stalled_host_is_reset_by_heartbeats_and_flow_resumes() -> None:
    ivl, hb_timeout = 100, 300
    receiver = FrameReceiver("tcp://127.0.0.1:*", rcvhwm=1, heartbeat_ivl_ms=ivl, heartbeat_timeout_ms=hb_timeout)
    sender = FrameSender(receiver.endpoint, heartbeat_ivl_ms=ivl, heartbeat_timeout_ms=hb_timeout, ack_timeout_ms=1000)
    with receiver, sender:
        connect(sender, receiver)
        stalled_until = time.monotonic() + 1.5  # the host reads nothing for 5 heartbeat timeouts
        while time.monotonic() < stalled_until:
            sender.send(bytes(65_536))
            time.sleep(0.002)
        accepted = sender.stats.sent - 1  # minus the probe
        assert sender.stats.dropped_full > 0
        delivered = 0
        got = None
        deadline = time.monotonic() + DEADLINE_S
        while got != b"fresh" and time.monotonic() < deadline:
            sender.send(b"fresh")
            got = receiver.recv(timeout_ms=5)
            delivered += got is not None and len(got) == 65_536
        assert got == b"fresh"
        assert delivered < accepted  # the reset link took its queued frames with it
        assert sender.drain(timeout_ms=3000) == 0
        # ... and the camera counted each of them lost: every frame it sent is either acked or lost.
        # A frame the host read from the reset connection could not be acked: it counts on both sides.
        assert sender.stats.acked == receiver.stats.received - receiver.stats.acks_dropped
        assert sender.stats.lost == sender.stats.sent - sender.stats.acked > 0


def test_oversized_message_is_not_delivered_and_the_link_recovers() -> None:
    with (
        FrameReceiver("tcp://127.0.0.1:*", max_frame_bytes=1000) as receiver,
        FrameSender(receiver.endpoint, max_frame_bytes=1000) as sender,
    ):
        connect(sender, receiver)
        assert sender.send(b"x" * 1001)
        got = None
        deadline = time.monotonic() + DEADLINE_S
        while got is None and time.monotonic() < deadline:  # libzmq reset the link; it reconnects
            sender.send(b"small")
            got = receiver.recv(timeout_ms=20)
            got = None if got == PROBE else got
        assert got == b"small"
        while (data := receiver.recv(timeout_ms=100)) is not None:
            assert len(data) <= 1000
        assert receiver.stats.rejected_envelope == 0
        # the host cannot report it; the camera counts the reset and blames the oversize frame in flight
        sender.poll_acks()
        assert sender.stats.link_resets >= 1 and sender.stats.oversize_resets == 1


def test_message_without_the_token_envelope_is_rejected_and_counted(receiver: FrameReceiver) -> None:
    ctx = zmq.Context()
    try:
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(receiver.endpoint)
        raw.send(b"a frame without a token")
        raw.send_multipart([b"short", b"payload"])
        raw.send_multipart([b"12345678", b"single"])
        assert receiver.recv(timeout_ms=5000) == b"single"
        assert receiver.stats.rejected_envelope == 2
        assert receiver.stats.received == 1
        assert raw.poll(5000) and raw.recv() == b"12345678", "the frame taken is acked with its token"
        raw.close()
    finally:
        ctx.term()


def test_every_frame_taken_is_acked_and_drain_waits_for_the_acks(receiver: FrameReceiver) -> None:
    with FrameSender(receiver.endpoint) as sender:
        connect(sender, receiver)
        frames = [bytes([i]) * 100 for i in range(20)]
        got = recv_n(receiver, len(frames), send_all(sender, frames, receiver))
        assert got == frames
        assert sender.drain(timeout_ms=5000) == 0
        assert (sender.stats.acked, sender.stats.lost, sender.in_flight) == (sender.stats.sent, 0, 0)


def test_frames_the_host_never_takes_are_counted_lost_not_dropped_silently() -> None:
    with FrameReceiver("tcp://127.0.0.1:*") as receiver, FrameSender(receiver.endpoint) as sender:
        connect_idle(sender, receiver)
        acked_before = sender.stats.acked
        for i in range(3):
            assert sender.send(bytes([i]))
        assert sender.drain(timeout_ms=300) == 3, "the host does not read, so no ack comes"
        sender.close()
        assert sender.stats.lost == 3 and sender.stats.acked == acked_before
        assert sender.stats.sent == sender.stats.acked + sender.stats.lost


def test_frames_in_flight_are_capped_so_a_slow_host_builds_no_backlog() -> None:
    with FrameReceiver("tcp://127.0.0.1:*") as receiver, FrameSender(receiver.endpoint, max_in_flight=3) as sender:
        connect_idle(sender, receiver)
        dropped = sender.stats.dropped_full
        accepted = [sender.send(bytes([i])) for i in range(20)]
        assert accepted == [True] * 3 + [False] * 17 and sender.stats.dropped_full - dropped == 17
        assert [receiver.recv(timeout_ms=2000) for _ in range(3)] == [bytes([i]) for i in range(3)]
        assert sender.drain(timeout_ms=2000) == 0 and sender.send(b"next"), "acks free the window again"


def test_ack_timeout_counts_frames_lost_and_a_late_ack_moves_them_back() -> None:
    with (
        FrameReceiver("tcp://127.0.0.1:*") as receiver,
        FrameSender(receiver.endpoint, heartbeat_ivl_ms=100, heartbeat_timeout_ms=200, ack_timeout_ms=400) as sender,
    ):
        connect_idle(sender, receiver)
        acked = sender.stats.acked
        assert all(sender.send(bytes([i])) for i in range(2))
        time.sleep(0.6)  # the host holds them past the ack timeout
        sender.poll_acks()
        assert (sender.stats.lost, sender.in_flight) == (2, 0)
        assert [receiver.recv(timeout_ms=2000) for _ in range(2)] == [b"\x00", b"\x01"]
        deadline = time.monotonic() + DEADLINE_S
        while sender.stats.acked < acked + 2 and time.monotonic() < deadline:
            sender.poll_acks()
            time.sleep(0.01)
        assert (sender.stats.acked - acked, sender.stats.lost) == (2, 0)


def test_ack_timeout_counts_frames_lost_with_a_host_that_died() -> None:
    receiver = FrameReceiver("tcp://127.0.0.1:*")
    with FrameSender(receiver.endpoint, heartbeat_ivl_ms=100, heartbeat_timeout_ms=200, ack_timeout_ms=400) as sender:
        connect(sender, receiver)
        assert all(sender.send(b"x") for _ in range(3))  # queued at the host, never read
        receiver.close()  # the host dies with them
        time.sleep(0.6)
        sender.poll_acks()
        assert sender.stats.lost >= 3 and sender.in_flight == 0
        assert sender.stats.sent == sender.stats.acked + sender.stats.lost


def test_recv_times_out_with_none(receiver: FrameReceiver) -> None:
    assert receiver.recv(timeout_ms=0) is None
    assert receiver.recv(timeout_ms=20) is None
    with pytest.raises(ValueError):
        receiver.recv(timeout_ms=-1)


def test_decoded_publisher_sends_three_parts_to_subscribers() -> None:
    with DecodedPublisher("tcp://127.0.0.1:*") as pub:
        ctx = zmq.Context()
        try:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"rig0/")
            sub.connect(pub.endpoint)
            payload = bytearray(b"pixels")
            got = None
            deadline = time.monotonic() + DEADLINE_S
            while got is None and time.monotonic() < deadline:  # PUB/SUB: the subscription takes a moment
                pub.publish(b"rig1/cam0", b"{}", b"other rig")
                pub.publish(b"rig0/cam1", b'{"seq": 7}', payload)
                if sub.poll(20):
                    got = sub.recv_multipart()
            payload[:] = b"reused"  # the publisher copied it
            assert got == [b"rig0/cam1", b'{"seq": 7}', b"pixels"]
            assert pub.stats.published >= 2
            sub.close()
        finally:
            ctx.term()


def test_configuration_and_lifecycle_errors(receiver: FrameReceiver) -> None:
    with pytest.raises(ConfigError):
        FrameSender("tcp://127.0.0.1:1", sndhwm=0)
    with pytest.raises(ConfigError):
        FrameSender("tcp://127.0.0.1:1", heartbeat_ivl_ms=3000, heartbeat_timeout_ms=1000)
    with pytest.raises(ConfigError):
        FrameReceiver("tcp://127.0.0.1:*", max_frame_bytes=0)
    with pytest.raises(TransportError, match="another host"):
        FrameReceiver(receiver.endpoint)
    with pytest.raises(TransportError):
        FrameSender("not-an-endpoint")
    with pytest.raises(TransportError):  # libzmq refuses the option: nothing is left open
        FrameSender(receiver.endpoint, heartbeat_timeout_ms=10**8, ack_timeout_ms=10**8 + 1)
    sender = FrameSender(receiver.endpoint)
    sender.close()
    sender.close()
    with pytest.raises(TransportError, match="after close"):
        sender.send(b"x")


def test_a_shared_context_is_left_to_its_owner() -> None:
    ctx = zmq.Context()
    with (
        FrameReceiver("tcp://127.0.0.1:*", context=ctx) as receiver,
        FrameSender(receiver.endpoint, context=ctx) as sender,
    ):
        connect(sender, receiver)
    assert not ctx.closed
    ctx.term()  # returns at once: both sockets were closed


def test_a_host_restart_counts_what_was_in_flight_lost_and_frees_the_window() -> None:
    first = FrameReceiver("tcp://127.0.0.1:*")
    endpoint = first.endpoint
    with FrameSender(endpoint, max_in_flight=2, ack_timeout_ms=60_000) as sender:
        connect_idle(sender, first)
        assert sender.send(b"a") and sender.send(b"b") and not sender.send(b"c")  # window full, host not reading
        first.close()  # the host dies with them; the ack timeout (60 s) is not what frees the window
        with FrameReceiver(endpoint) as second:
            deadline = time.monotonic() + DEADLINE_S
            got = None
            while got != b"after restart" and time.monotonic() < deadline:
                sender.send(b"after restart")
                got = second.recv(timeout_ms=20)
            assert got == b"after restart"
        assert sender.stats.lost == 2


def test_each_frame_carries_its_camera_session(receiver: FrameReceiver) -> None:
    """The session id rides in the ack token: the host learns a camera restarted from its first frame."""
    with FrameSender(receiver.endpoint, session=0xCAFE) as a, FrameSender(receiver.endpoint) as b:
        connect(a, receiver)
        got = recv_n(receiver, 1, send_all(a, [b"from a"], receiver))
        assert got == [b"from a"] and got[0].envelope.session == 0xCAFE and got[0].envelope.key is None  # type: ignore[attr-defined]
        connect(b, receiver)
        (frame,) = recv_n(receiver, 1, send_all(b, [b"from b"], receiver))
        assert frame.envelope.session == b.session != 0  # type: ignore[attr-defined]
        assert a.drain(2000) == 0 and a.stats.acked == a.stats.sent
    with pytest.raises(ConfigError, match="32-bit"):
        FrameSender(receiver.endpoint, session=1 << 32)
