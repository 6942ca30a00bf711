"""The host's jitter buffer: deterministic (the clock is passed in), no sockets."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stereodsc.errors import ConfigError
from stereodsc.host_decoder import (
    DecodeDependent,
    DecodeReference,
    Dropped,
    Event,
    Pairer,
    PairingPolicy,
    Reason,
    ReleaseReference,
)
from stereodsc.wire import Frame, Role

pytestmark = pytest.mark.timeout(60)

MS = 1_000_000
FRAME_NS = 33 * MS
T0 = 1_700_000_000 * 10**9
DEADLINE = 100 * MS
U32 = 1 << 32


def frame(seq: int, cam: int = 0, *, rig: int = 0, t: int | None = None) -> Frame:
    """Camera 0 is the rig's reference; capture time follows the seq unless given."""
    return Frame(
        bundle_id=bytes(8),
        quality=0,
        rig_id=rig,
        camera_id=cam,
        role=Role.REFERENCE if cam == 0 else Role.DEPENDENT,
        seq=seq % U32,
        t_capture_ns=T0 + seq * FRAME_NS if t is None else t,
        height=1,
        width=1,
        segments=(b"x",),
    )


def pairer(policy: PairingPolicy = PairingPolicy.DROP, match_by: Any = "seq", **kw: Any) -> Pairer[Frame]:
    args: dict[str, Any] = {"tolerance_ns": 5 * MS, "deadline_ns": DEADLINE, "max_pending": 16} | kw
    return Pairer(policy=policy, match_by=match_by, **args)


def paired(dep: Frame, ref: Frame) -> DecodeDependent[Frame]:
    return DecodeDependent(dep, ref, Reason.PAIRED)


@pytest.mark.parametrize("match_by", ["seq", "time"])
def test_in_order_pairs(match_by: str) -> None:
    p = pairer(match_by=match_by, deadline_ns=10**9)
    for i in range(5):
        ref, dep = frame(i, 0), frame(i, 1)
        assert p.push(ref, i * FRAME_NS) == [DecodeReference(ref)]
        assert p.push(dep, i * FRAME_NS + MS) == [paired(dep, ref)]
    assert p.stats.paired == 5 and p.stats.references == 5 and p.pending == 0


@pytest.mark.parametrize("match_by", ["seq", "time"])
def test_dependent_before_its_reference_pairs_when_it_arrives(match_by: str) -> None:
    p = pairer(match_by=match_by)
    dep, ref = frame(7, 1), frame(7, 0)
    assert p.push(dep, 0) == []
    assert p.pending == 1
    assert p.push(ref, DEADLINE - 1) == [DecodeReference(ref), paired(dep, ref)]
    assert p.pending == 0


def test_duplicates_are_dropped_and_counted() -> None:
    p = pairer()
    ref, dep = frame(1, 0), frame(1, 1)
    assert p.push(dep, 0) == []
    assert p.push(frame(1, 1), 1) == [Dropped(dep, Reason.DUPLICATE)]  # while pending
    p.push(ref, 2)
    assert p.push(frame(1, 0), 3) == [Dropped(ref, Reason.DUPLICATE)]
    assert p.push(frame(1, 1), 4) == [Dropped(dep, Reason.DUPLICATE)]  # after pairing
    assert p.stats.dropped == Counter({Reason.DUPLICATE: 3})
    # A restarted camera numbering from 1 again is not a duplicate: its capture time differs.
    assert p.push(frame(1, 0, t=T0 + 10**9), 5)[0] == DecodeReference(frame(1, 0, t=T0 + 10**9))


OUTCOME_NO_REF = {
    PairingPolicy.DROP: "dropped",
    PairingPolicy.WAIT: "dropped",
    PairingPolicy.NO_SIDE_INFO: "no_si",
    PairingPolicy.LATEST_REFERENCE: "latest",
}


def expected(policy: PairingPolicy, dep: Frame, reason: Reason, latest: Frame | None) -> Event[Frame]:
    if policy is PairingPolicy.NO_SIDE_INFO:
        return DecodeDependent(dep, None, reason)
    if policy is PairingPolicy.LATEST_REFERENCE and latest is not None:
        return DecodeDependent(dep, latest, reason)
    return Dropped(dep, reason)


@pytest.mark.parametrize("policy", list(PairingPolicy))
def test_missing_partner_is_resolved_at_the_deadline_by_policy(policy: PairingPolicy) -> None:
    p = pairer(policy)
    # Seq 10's reference never comes; seq 9's reference was captured 2 ms before the dependent.
    ref9 = frame(9, 0, t=T0)
    dep = frame(10, 1, t=T0 + 2 * MS)
    assert p.push(dep, 0) == []
    p.push(ref9, 10)  # the reference stream has not passed seq 10: keep waiting
    assert p.poll(DEADLINE - 1) == []
    assert p.poll(DEADLINE) == [expected(policy, dep, Reason.STALE, latest=ref9)]
    assert p.poll(10 + DEADLINE) == [ReleaseReference(ref9)]


@pytest.mark.parametrize("policy", list(PairingPolicy))
def test_lost_reference_is_known_when_the_reference_stream_passes(policy: PairingPolicy) -> None:
    p = pairer(policy, tolerance_ns=40 * MS)
    dep2 = frame(2, 1)
    assert p.push(dep2, 0) == []
    ref3 = frame(3, 0)  # seq 2's reference was lost at the camera
    events = p.push(ref3, 1)
    assert events[0] == DecodeReference(ref3)
    # A dependent arriving after the stream passed it is resolved on arrival too (ref3 is 66 ms away).
    dep1 = frame(1, 1)
    events += p.push(dep1, 2)
    if policy is PairingPolicy.WAIT:  # waits out its deadline all the same
        assert events[1:] == [] and p.pending == 2
        drops = [Dropped(dep2, Reason.NO_REFERENCE), Dropped(dep1, Reason.NO_REFERENCE)]
        assert p.poll(DEADLINE + 2) == [*drops, ReleaseReference(ref3)]
    else:  # ref3 is 33 ms from dep2, within the 40 ms tolerance
        assert events[1:] == [
            expected(policy, dep2, Reason.NO_REFERENCE, latest=ref3),
            expected(policy, dep1, Reason.NO_REFERENCE, latest=None),
        ]


@pytest.mark.parametrize("policy", list(PairingPolicy))
def test_dependent_arriving_after_its_reference_was_released_is_late(policy: PairingPolicy) -> None:
    p = pairer(policy)
    ref = frame(4, 0)
    p.push(ref, 0)
    assert p.poll(DEADLINE) == [ReleaseReference(ref)]
    dep = frame(4, 1)
    events = p.push(dep, DEADLINE + 1)
    if policy is PairingPolicy.WAIT:
        assert events == []
        events = p.poll(2 * DEADLINE + 1)
    assert events == [expected(policy, dep, Reason.LATE, latest=None)]
    assert p.stats.dropped[Reason.LATE] + p.stats.fallback[Reason.LATE] == 1


def test_latest_reference_must_be_within_tolerance() -> None:
    p = pairer(PairingPolicy.LATEST_REFERENCE, tolerance_ns=5 * MS)
    ref = frame(3, 0)
    dep = frame(4, 1)  # 33 ms after ref: over tolerance
    p.push(ref, 0)
    p.push(dep, 1)
    assert p.poll(1 + DEADLINE) == [Dropped(dep, Reason.STALE), ReleaseReference(ref)]


def test_sequence_numbers_wrap() -> None:
    seqs = [U32 - 2, U32 - 1, 0, 1, 2]
    p = pairer(PairingPolicy.DROP)
    now = 0
    for n, s in enumerate(seqs):
        ref, dep = frame(s, 0, t=T0 + n * FRAME_NS), frame(s, 1, t=T0 + n * FRAME_NS)
        first, second = (dep, ref) if n % 2 else (ref, dep)  # alternate arrival order
        p.push(first, now)
        assert p.push(second, now + 1)[-1] == paired(dep, ref)
        now += FRAME_NS
    assert p.stats.paired == len(seqs) and sum(p.stats.dropped.values()) == 0
    # Across the wrap, seq 1 comes after 2**32 - 1: that dependent's reference is known to be lost.
    p2 = pairer(PairingPolicy.DROP)
    p2.push(frame(1, 0), 0)
    dep = frame(U32 - 1, 1, t=T0)
    assert p2.push(dep, 1) == [Dropped(dep, Reason.NO_REFERENCE)]


def test_time_matching_with_jitter_within_and_over_tolerance() -> None:
    p = pairer(match_by="time", tolerance_ns=5 * MS)
    ref = frame(0, 0, t=T0)
    p.push(ref, 0)
    within = frame(0, 1, t=T0 + 5 * MS)
    assert p.push(within, 1) == [paired(within, ref)]
    before = frame(0, 2, t=T0 - 6 * MS)  # the reference stream is already past it
    assert p.push(before, 2) == [Dropped(before, Reason.NO_REFERENCE)]
    after = frame(0, 3, t=T0 + 6 * MS)  # a later reference could still come
    assert p.push(after, 3) == []
    assert p.poll(3 + DEADLINE) == [Dropped(after, Reason.STALE), ReleaseReference(ref)]


def test_time_matching_picks_the_closest_reference() -> None:
    p = pairer(match_by="time", tolerance_ns=20 * MS)
    a, b = frame(0, 0, t=T0), frame(1, 0, t=T0 + 30 * MS)
    p.push(a, 0)
    p.push(b, 1)
    dep = frame(5, 1, t=T0 + 18 * MS)
    assert p.push(dep, 2) == [paired(dep, b)]


def test_two_dependent_cameras_share_one_reference() -> None:
    p = pairer()
    ref, left, right = frame(3, 0), frame(3, 1), frame(3, 2)
    assert p.push(left, 0) == []
    assert p.push(ref, 1) == [DecodeReference(ref), paired(left, ref)]
    assert p.push(right, 2) == [paired(right, ref)]


def test_rigs_are_independent() -> None:
    p = pairer()
    dep = frame(3, 1, rig=1)
    p.push(dep, 0)
    p.push(frame(3, 0, rig=0), 1)
    assert p.pending == 1
    ref = frame(3, 0, rig=1)
    assert p.push(ref, 2) == [DecodeReference(ref), paired(dep, ref)]


@pytest.mark.parametrize("policy", list(PairingPolicy))
def test_buffer_full_resolves_the_oldest_waiting_dependent(policy: PairingPolicy) -> None:
    p = pairer(policy, max_pending=2)
    deps = [frame(i, 1) for i in range(3)]
    assert p.push(deps[0], 0) == []
    assert p.push(deps[1], 1) == []
    assert p.push(deps[2], 2) == [expected(policy, deps[0], Reason.BUFFER_FULL, latest=None)]
    assert p.pending == 2


def test_references_are_bounded_and_released_in_order() -> None:
    p = pairer(max_references=2)
    refs = [frame(i, 0) for i in range(3)]
    p.push(refs[0], 0)
    p.push(refs[1], 10)
    assert p.next_deadline_ns() == DEADLINE
    assert p.push(refs[2], 20) == [DecodeReference(refs[2]), ReleaseReference(refs[0])]
    assert p.next_deadline_ns() == 10 + DEADLINE
    assert p.poll(20 + DEADLINE) == [ReleaseReference(refs[1]), ReleaseReference(refs[2])]
    assert p.next_deadline_ns() is None
    dep = frame(0, 1)  # its reference was pushed out by newer ones
    assert p.push(dep, 21 + DEADLINE) == [Dropped(dep, Reason.LATE)]


def test_memory_stays_bounded_when_ids_are_sprayed() -> None:
    p = pairer(deadline_ns=0)  # every reference is released by the next call
    for i in range(3000):
        p.push(frame(0, 0, rig=i), i)
    p.poll(3000)
    assert len(p._rigs) <= 1025 and len(p._seen) <= 1024  # internal state, looked at on purpose
    assert p.stats.references == 3000


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        pairer(max_pending=0)
    with pytest.raises(ConfigError):
        pairer(deadline_ns=-1)
    with pytest.raises(ConfigError):
        pairer(match_by="index")


# --- properties ---------------------------------------------------------------------------------

TERMINAL = (DecodeReference, DecodeDependent, Dropped)


class Ledger:
    """Checks every event stream against the contract, frame by frame (by identity)."""

    def __init__(self, p: Pairer[Frame]) -> None:
        self.p = p
        self.pushed: list[Frame] = []
        self.terminal: dict[int, Event[Frame]] = {}
        self.live_refs: set[int] = set()
        self.released: set[int] = set()

    def push(self, f: Frame, now: int) -> None:
        self.pushed.append(f)
        self.check(self.p.push(f, now))

    def poll(self, now: int) -> None:
        self.check(self.p.poll(now))

    def check(self, events: list[Event[Frame]]) -> None:
        p = self.p
        for e in events:
            key = id(e.frame)
            if isinstance(e, ReleaseReference):
                assert key in self.live_refs and key not in self.released
                self.live_refs.discard(key)
                self.released.add(key)
                continue
            assert key not in self.terminal, f"second terminal event for {e.frame}"
            self.terminal[key] = e
            if e.frame.role == Role.REFERENCE:
                assert isinstance(e, DecodeReference) or e == Dropped(e.frame, Reason.DUPLICATE)
            if isinstance(e, DecodeReference):
                self.live_refs.add(key)
            elif isinstance(e, DecodeDependent):
                ref = e.reference
                if ref is not None:
                    assert id(ref) in self.live_refs and ref.rig_id == e.frame.rig_id
                if e.reason is Reason.PAIRED:
                    assert ref is not None
                    if p.match_by == "seq":
                        assert ref.seq == e.frame.seq
                    else:
                        assert abs(ref.t_capture_ns - e.frame.t_capture_ns) <= p.tolerance_ns
                elif p.policy is PairingPolicy.LATEST_REFERENCE:
                    assert ref is not None
                    assert abs(ref.t_capture_ns - e.frame.t_capture_ns) <= p.tolerance_ns
                else:
                    assert p.policy is PairingPolicy.NO_SIDE_INFO and ref is None
            elif p.policy is PairingPolicy.NO_SIDE_INFO:
                assert e.reason is Reason.DUPLICATE
        s = p.stats
        assert s.pushed == len(self.pushed)
        accounted = s.references + s.paired + sum(s.fallback.values()) + sum(s.dropped.values())
        assert accounted + p.pending == s.pushed == len(self.terminal) + p.pending
        assert p.pending <= p.max_pending

    def finish(self, now: int) -> None:
        self.poll(now + self.p.deadline_ns)
        assert self.p.pending == 0 and self.p.next_deadline_ns() is None
        assert {id(f) for f in self.pushed} == set(self.terminal)
        assert self.live_refs == set()


push_op = st.tuples(
    st.just("push"),
    st.integers(0, 1),  # rig
    st.integers(0, 2),  # camera (0 = reference)
    st.integers(0, 7),  # seq offset
    st.sampled_from([0, 0, 0, 2 * MS, -3 * MS, 9 * MS]),  # capture jitter (0s make duplicates likely)
    st.integers(0, 40 * MS),  # time since the previous operation
)
poll_op = st.tuples(st.just("poll"), st.just(0), st.just(0), st.just(0), st.just(0), st.integers(0, 150 * MS))


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.one_of(push_op, poll_op), max_size=60),
    policy=st.sampled_from(list(PairingPolicy)),
    match_by=st.sampled_from(["seq", "time"]),
    base=st.sampled_from([0, U32 - 4]),
    tolerance=st.integers(0, 20 * MS),
    deadline=st.integers(0, 120 * MS),
    max_pending=st.integers(1, 4),
    max_references=st.integers(1, 3),
)
def test_every_frame_ends_in_exactly_one_event(
    ops: list[tuple[str, int, int, int, int, int]],
    policy: PairingPolicy,
    match_by: str,
    base: int,
    tolerance: int,
    deadline: int,
    max_pending: int,
    max_references: int,
) -> None:
    p = pairer(
        policy,
        match_by,
        tolerance_ns=tolerance,
        deadline_ns=deadline,
        max_pending=max_pending,
        max_references=max_references,
    )
    ledger = Ledger(p)
    now = 0
    for op, rig, cam, offset, jitter, dt in ops:
        now += dt
        if op == "poll":
            ledger.poll(now)
        else:
            ledger.push(frame(base + offset, cam, rig=rig, t=T0 + offset * FRAME_NS + jitter), now)
    ledger.finish(now)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    match_by=st.sampled_from(["seq", "time"]),
    policy=st.sampled_from(list(PairingPolicy)),
    base=st.sampled_from([0, U32 - 5]),
    lag=st.lists(st.integers(-30, 30), min_size=3, max_size=3),
    noise=st.lists(st.integers(0, 9), min_size=36, max_size=36),
    jitter=st.lists(st.integers(-2 * MS, 2 * MS), min_size=36, max_size=36),
)
def test_complete_in_order_streams_always_pair(
    n: int,
    match_by: str,
    policy: PairingPolicy,
    base: int,
    lag: list[int],
    noise: list[int],
    jitter: list[int],
) -> None:
    """No loss, each camera in order, cameras interleaved arbitrarily within a few frames: all pair."""
    p = pairer(policy, match_by, tolerance_ns=5 * MS, deadline_ns=10**9, max_pending=64, max_references=8)
    arrivals = sorted(
        (i * 10 + lag[cam] + noise[cam * 12 + i], cam, i) for cam in range(3) for i in range(n)
    )  # 10 time units a frame; cameras up to 7 frames apart (< max_references); order kept per camera
    ledger = Ledger(p)
    for at, cam, i in arrivals:
        ledger.push(frame(base + i, cam, t=T0 + i * FRAME_NS + jitter[cam * 12 + i]), (at + 100) * MS)
    ledger.finish((arrivals[-1][0] + 100) * MS)
    assert p.stats.paired == 2 * n
    assert p.stats.references == n
