"""Camera restarts, reference loss and the camera table, as pure state machines (the clock is passed in)."""

from __future__ import annotations

from typing import Any

import pytest

from stereodsc.host_decoder import DecodeDependent, DecodeReference, Dropped, Pairer, PairingPolicy, Reason
from stereodsc.host_decoder.admission import Admission
from stereodsc.host_decoder.pairing import ReleaseReference
from stereodsc.host_decoder.sessions import Sessions
from stereodsc.wire import Frame, Role

pytestmark = pytest.mark.timeout(60)

MS = 1_000_000
FRAME_NS = 100 * MS
T0 = 1_700_000_000 * 10**9
REF, DEP = (1, 0), (1, 1)


def sessions() -> Sessions:
    return Sessions(tolerance_ns=20 * MS, window_ns=1000 * MS)


def test_first_sessions_keep_their_own_numbering() -> None:
    """Cameras started together (or found again by a restarted host) number alike: nothing is re-based."""
    s = sessions()
    assert s.place(REF, 0xA, 5, T0, 0).rig_seq == 5
    placed = s.place(DEP, 0xB, 3, T0 + 7 * FRAME_NS, 1)
    assert (placed.rig_seq, placed.restarted) == (3, False)
    assert s.place(REF, 0xA, 6, T0 + FRAME_NS, 2).rig_seq == 6


def test_a_restart_is_aligned_by_capture_time_when_the_clocks_agree() -> None:
    s = sessions()
    for i in range(10):
        s.place(REF, 0xA, 100 + i, T0 + i * FRAME_NS, i * FRAME_NS)
        s.place(DEP, 0xB, 100 + i, T0 + i * FRAME_NS + 2 * MS, i * FRAME_NS + MS)
    # the dependent camera reboots: its frame 0 was captured with the reference's newest frame, 109
    placed = s.place(DEP, 0xC, 0, T0 + 9 * FRAME_NS + 3 * MS, 10 * FRAME_NS)
    assert (placed.rig_seq, placed.restarted, placed.aligned_by) == (109, True, "capture_time")
    assert s.place(DEP, 0xC, 1, T0 + 10 * FRAME_NS, 10 * FRAME_NS + MS).rig_seq == 110
    assert s.restarts == 1 and s.session_of(DEP) == 0xC


def test_only_the_newest_frames_count_for_a_capture_time_match() -> None:
    """A replayed file repeats its timestamps: matching an old frame would put the camera behind for good."""
    s = sessions()
    for i in range(10):
        s.place(REF, 0xA, 100 + i, T0 + (i % 4) * FRAME_NS, i * FRAME_NS)  # a 4-frame loop
        s.place(DEP, 0xB, 100 + i, T0 + (i % 4) * FRAME_NS, i * FRAME_NS + MS)
    placed = s.place(DEP, 0xC, 0, T0 + 3 * FRAME_NS, 10 * FRAME_NS)  # seen at 103 and 107, not in 108, 109
    assert (placed.rig_seq, placed.aligned_by) == (109, "arrival")


def test_a_camera_first_seen_late_is_aligned_by_capture_time() -> None:
    """A camera that starts (or gets through) after the rig: onto the frame captured with its first."""
    s = sessions()
    for i in range(5):
        s.place(REF, 0xA, 40 + i, T0 + i * FRAME_NS, i * FRAME_NS)
    placed = s.place(DEP, 0xB, 0, T0 + 4 * FRAME_NS + MS, 5 * FRAME_NS)
    assert (placed.rig_seq, placed.restarted, placed.aligned_by) == (44, False, "capture_time")
    assert s.place(DEP, 0xB, 1, T0 + 5 * FRAME_NS, 6 * FRAME_NS).rig_seq == 45


def test_a_restart_without_matching_clocks_is_aligned_by_arrival() -> None:
    """A replayed file starts at its first timestamp again: the newest frame of the rig's other camera wins."""
    s = sessions()
    for i in range(10):
        s.place(REF, 0xA, i, T0 + i * FRAME_NS, i * FRAME_NS)
        s.place(DEP, 0xB, i, T0 + i * FRAME_NS, i * FRAME_NS + MS)
    placed = s.place(REF, 0xD, 0, T0, 11 * FRAME_NS)
    assert (placed.rig_seq, placed.aligned_by) == (9, "arrival")
    # nothing recent from another camera: it goes on after its own last number
    alone = s.place(REF, 0xE, 0, T0, 100 * FRAME_NS)
    assert (alone.rig_seq, alone.aligned_by) == (10, "own")


def test_frames_of_an_earlier_session_keep_their_place() -> None:
    """Frames of a dead connection still queued at the host are not taken for yet another restart."""
    s = sessions()
    s.place(DEP, 0xB, 40, T0, 0)
    s.place(REF, 0xA, 50, T0 + 5 * FRAME_NS, 1)
    assert s.place(DEP, 0xC, 0, T0 + 5 * FRAME_NS, 2).rig_seq == 50
    late = s.place(DEP, 0xB, 41, T0 + FRAME_NS, 3)
    assert (late.rig_seq, late.restarted) == (41, False)
    assert s.session_of(DEP) == 0xC and s.restarts == 1


def test_session_zero_is_never_rebased() -> None:
    s = sessions()
    s.place(REF, 0xA, 50, T0, 0)
    assert s.place(DEP, 0, 0, T0, 1).rig_seq == 0
    assert s.place(DEP, 0, 1, T0 + FRAME_NS, 2).rig_seq == 1


def test_session_memory_is_bounded() -> None:
    s = Sessions(tolerance_ns=0, window_ns=0, max_cameras=8, max_rigs=4)
    for rig in range(100):
        s.place((rig, 0), rig + 1, 0, T0, rig)
    assert len(s._cameras) == 8 and len(s._history) == 4


# ---------------------------------------------------------------------------------------- the pairer
def frame(seq: int, cam: int = 0, *, t: int | None = None) -> Frame:
    return Frame(
        bundle_id=bytes(8),
        quality=0,
        rig_id=1,
        camera_id=cam,
        role=Role.REFERENCE if cam == 0 else Role.DEPENDENT,
        seq=seq,
        t_capture_ns=T0 + seq * FRAME_NS if t is None else t,
        height=1,
        width=1,
        segments=(b"x",),
    )


def pairer(policy: PairingPolicy = PairingPolicy.DROP, **kw: Any) -> Pairer[Frame]:
    args: dict[str, Any] = {"tolerance_ns": 5 * MS, "deadline_ns": 200 * MS, "max_pending": 16} | kw
    return Pairer(policy=policy, match_by="seq", **args)


def test_a_replayed_camera_is_new_frames_after_new_session() -> None:
    p = pairer()
    assert p.push(frame(0), 0) == [DecodeReference(frame(0))]
    assert p.push(frame(0), 1) == [Dropped(frame(0), Reason.DUPLICATE)]
    p.new_session(1, 0, Role.REFERENCE)
    assert p.push(frame(0), 2) == [DecodeReference(frame(0))]


def test_a_restarted_reference_camera_forgets_what_the_old_stream_implied() -> None:
    """After the old reference stream reached seq 50, a dependent 10 would be "late"; a restarted
    reference camera (re-based to 10 by `Sessions`) pairs it."""
    p = pairer(deadline_ns=10 * MS, max_references=1)
    p.push(frame(49), 0)
    p.push(frame(50), 1)  # 49 released: last_released = 49
    p.new_session(1, 0, Role.REFERENCE)
    dep = frame(10, 1)
    assert p.push(dep, 2) == [], "waits for its reference instead of being late"
    ref = frame(10)
    events = p.push(ref, 3)
    assert DecodeDependent(dep, ref, Reason.PAIRED) in events


@pytest.mark.parametrize("policy", [PairingPolicy.DROP, PairingPolicy.NO_SIDE_INFO, PairingPolicy.LATEST_REFERENCE])
def test_reference_loss_decodes_dependents_with_the_last_reference_within_its_age(policy: PairingPolicy) -> None:
    p = pairer(policy, last_reference_ns=500 * MS)
    ref = frame(0)
    assert p.push(ref, 0) == [DecodeReference(ref)]
    assert p.push(frame(0, 1), 1)[0].reason is Reason.PAIRED  # type: ignore[union-attr]
    # the reference camera dies: its last frame is released from pairing at the deadline, but kept
    assert p.poll(200 * MS) == []
    events = p.push(frame(3, 1), 250 * MS)  # no partner ever comes: stale at its deadline ...
    assert events == []
    events = p.poll(450 * MS)
    assert events == [DecodeDependent(frame(3, 1), ref, Reason.STALE, last_reference=True)]
    assert p.stats.fallback == {Reason.STALE: 1}
    # ... until the kept reference is older than last_reference_ns: released, and the policy applies
    assert p.poll(501 * MS) == [ReleaseReference(ref)]
    p.push(frame(9, 1), 600 * MS)
    (late,) = p.poll(800 * MS)
    if policy is PairingPolicy.NO_SIDE_INFO:
        assert late == DecodeDependent(frame(9, 1), None, Reason.STALE)
    else:
        assert late == Dropped(frame(9, 1), Reason.STALE)
    assert p.pending == 0 and p.next_deadline_ns() is None


def test_a_new_reference_releases_the_one_kept_for_reference_loss() -> None:
    p = pairer(last_reference_ns=10_000 * MS)
    p.push(frame(0), 0)
    assert p.poll(300 * MS) == []  # kept past the deadline
    assert p.next_deadline_ns() == 10_000 * MS
    assert p.push(frame(5), 400 * MS) == [DecodeReference(frame(5)), ReleaseReference(frame(0))]


def test_reference_loss_is_off_by_default() -> None:
    p = pairer()
    p.push(frame(0), 0)
    assert p.poll(200 * MS) == [ReleaseReference(frame(0))]
    assert p.push(frame(0, 1), 201 * MS) == [Dropped(frame(0, 1), Reason.LATE)]


# ---------------------------------------------------------------------------------------- the camera table
def test_one_sender_cannot_lock_new_cameras_out() -> None:
    """A sender making up ids gets its burst of new cameras, then is limited; another sender's new camera
    still gets in, and the flood's entries go stale and make room."""
    a = Admission(stale_after_s=10.0, max_cameras=64, new_cameras_per_s=2.0)
    outcomes = [a.admit((9, cam), 0.0, sender="flooder") for cam in range(1000)]
    assert outcomes.count(None) == 8 and outcomes.count("new_camera_limited") == 992
    assert a.admit((1, 0), 0.0, sender="camera") is None
    assert a.admit((9, 5000), 1.0, sender="flooder") is None  # two new per second
    assert a.admit((9, 5000), 1.0, sender="flooder") is None, "a known camera is never limited"
    assert a.admit((9, 5001), 1.0, sender="flooder") is None
    assert a.admit((9, 5002), 1.0, sender="flooder") == "new_camera_limited"


def test_stale_entries_make_room_and_are_counted() -> None:
    a = Admission(stale_after_s=10.0, max_cameras=4, new_cameras_per_s=100.0)
    for cam in range(4):
        assert a.admit((1, cam), 0.0) is None
    assert a.admit((2, 0), 5.0) == "too_many_cameras"
    assert a.admit((2, 0), 11.0) is None and a.evicted == 1 and len(a.cameras) == 4
