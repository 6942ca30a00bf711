"""The host's jitter buffer: pair each dependent frame with its reference frame (the side information).

Pure logic, no sockets and no clock of its own: every call takes ``now_ns`` from the host's monotonic
clock, so the host drives it from its receive loop and tests replay any interleaving exactly.

Contract (what the host service relies on):

- Every pushed frame ends in exactly one *terminal* event: `DecodeReference`, `DecodeDependent` or
  `Dropped`. A reference is decoded as soon as it arrives (it is a picture too) unless it is a
  duplicate. `ReleaseReference` is not terminal: it says no later `DecodeDependent` will name that
  reference, so the host can free its decoded image; the host's cache of decoded references then
  holds exactly the references this pairer still keeps.
- Events come in the order to act on them: a reference's `DecodeReference` precedes every
  `DecodeDependent` that uses it, and its `ReleaseReference` follows them.
- Memory is bounded: at most ``max_pending`` waiting dependents (all rigs together) and
  ``max_references`` kept references per rig; duplicate detection remembers 64 frame keys for each
  of at most 1024 cameras, and idle rigs beyond 1024 are forgotten, least recently heard from first.

Matching, per rig (one reference camera, any number of dependent cameras sharing it):

- ``match_by="seq"``: equal sequence numbers (cameras numbered from a common trigger). The uint32 seq
  wraps, so "older/newer" uses serial-number arithmetic (RFC 1982, `stereodsc.wire.seq_delta`).
- ``match_by="time"``: ``|t_ref - t_dep| <= tolerance_ns`` on the capture clocks (PTP-synced rig);
  the closest reference present wins. A dependent pairs as soon as one qualifies rather than waiting
  for a possibly closer one: set the tolerance below half the frame interval (the intended setting)
  and at most one reference ever qualifies.

A dependent with no partner waits at most ``deadline_ns`` after its arrival; a reference is kept for
pairing for ``deadline_ns`` after its arrival (so a pair meets when their arrivals are at most
``deadline_ns`` apart) or until ``max_references`` newer ones push it out. An unpaired dependent is
resolved by the `PairingPolicy`, with a reason that says what was known at that moment:

- ``late``: its partner could only have been a reference that was already released;
- ``no_reference``: the reference stream has moved past it without a partner (the reference was lost);
- ``stale``: its deadline passed with neither of those known;
- ``buffer_full``: it was the oldest waiting dependent when ``max_pending`` was exceeded.

The first two are inferred from the order of the reference stream, which one camera's ZeroMQ/TCP link
preserves. Policies other than WAIT act on them at once instead of letting the frame wait out its deadline.

Reference loss (``last_reference_ns`` > 0): an unpaired dependent is decoded with the rig's newest
reference if it arrived at most ``last_reference_ns`` ago (`DecodeDependent.last_reference`), before
the policy would drop it or decode it without side information, so a dead reference camera does not
stop its dependents at once. That reference is then kept (its `ReleaseReference` waits) until a newer
one arrives or it is older than ``last_reference_ns``.

A camera that restarts (a new session, `stereodsc.host_decoder.sessions`) is announced with
`Pairer.new_session`: its duplicate window is cleared (a replayed file is new frames, not duplicates)
and, for a reference camera, what the rig inferred from the old reference stream is forgotten.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from stereodsc.errors import ConfigError
from stereodsc.wire import Role, seq_delta

MatchBy = Literal["seq", "time"]

# How many recent (seq, capture time) keys per camera detect duplicates, and how many cameras and
# idle rigs are remembered (least recently heard from forgotten first): bounds memory against a
# sender spraying ids. A forgotten rig only loses what labels a dependent "late" or "no_reference".
_DEDUPE_WINDOW = 64
_MAX_CAMERAS = 1024
_MAX_IDLE_RIGS = 1024


class PairingPolicy(enum.Enum):
    """What to do with a dependent frame that found no reference (see the module docstring)."""

    WAIT = "wait"
    """Wait out the deadline whatever the reference order suggests, then drop. For links that may reorder."""
    LATEST_REFERENCE = "latest_reference"
    """Use the most recent kept reference whose capture time is within tolerance, else drop (seq matching)."""
    NO_SIDE_INFO = "no_side_info"
    """Decode without side information (the host's no-SI model): every frame yields a picture."""
    DROP = "drop"
    """Drop as soon as the frame is known to be unpairable: lowest latency and memory."""


class Reason(str, enum.Enum):
    """Why an event happened; a `DecodeDependent` carries PAIRED or the reason its fallback was used."""

    PAIRED = "paired"
    DUPLICATE = "duplicate"
    LATE = "late"
    NO_REFERENCE = "no_reference"
    STALE = "stale"
    BUFFER_FULL = "buffer_full"


class Pairable(Protocol):
    """The frame fields pairing reads (`stereodsc.wire.Frame` has them)."""

    @property
    def rig_id(self) -> int: ...
    @property
    def camera_id(self) -> int: ...
    @property
    def role(self) -> Role: ...
    @property
    def seq(self) -> int: ...
    @property
    def t_capture_ns(self) -> int: ...


F = TypeVar("F", bound=Pairable)


@dataclass(frozen=True, slots=True)
class DecodeReference(Generic[F]):
    """Decode this reference frame now and keep the picture until its `ReleaseReference`."""

    frame: F


@dataclass(frozen=True, slots=True)
class DecodeDependent(Generic[F]):
    """Decode this dependent frame with `reference` as side information, or with the no-SI model if None."""

    frame: F
    reference: F | None
    reason: Reason
    last_reference: bool = False
    """The reference is the rig's last one, not a partner: supplied by ``last_reference_ns`` (reference loss)."""


@dataclass(frozen=True, slots=True)
class Dropped(Generic[F]):
    """This frame will not be decoded, for `reason`."""

    frame: F
    reason: Reason


@dataclass(frozen=True, slots=True)
class ReleaseReference(Generic[F]):
    """No dependent will be paired with this reference any more: free its decoded picture."""

    frame: F


Event = DecodeReference[F] | DecodeDependent[F] | Dropped[F] | ReleaseReference[F]


@dataclass
class PairingStats:
    """Counters; ``pushed == references + paired + sum(fallback) + sum(dropped) + Pairer.pending``."""

    pushed: int = 0
    references: int = 0
    paired: int = 0
    fallback: Counter[Reason] = field(default_factory=Counter)
    """Unpaired dependents decoded anyway by the policy, by reason."""
    dropped: Counter[Reason] = field(default_factory=Counter)


@dataclass(slots=True, eq=False)  # identity equality: deque.remove must find this very entry
class _Held(Generic[F]):
    frame: F
    arrived_ns: int
    late: bool = False
    """A waiting dependent that was already late on arrival (only WAIT keeps those)."""


@dataclass
class _Rig(Generic[F]):
    refs: deque[_Held[F]] = field(default_factory=deque)
    pending: int = 0
    last_ref: F | None = None
    """The most recently arrived reference: the newest, as one camera's stream arrives in order."""
    last_released: F | None = None
    held: _Held[F] | None = None
    """The newest reference, released from pairing but kept for reference loss (``last_reference_ns``)."""


class _Recent:
    """A camera's last few (seq, capture time) keys; both must repeat for a duplicate, so a restarted
    camera that numbers from 0 again is not mistaken for one."""

    def __init__(self) -> None:
        self.order: deque[tuple[int, int]] = deque()
        self.keys: set[tuple[int, int]] = set()

    def seen(self, key: tuple[int, int]) -> bool:
        if key in self.keys:
            return True
        self.order.append(key)
        self.keys.add(key)
        if len(self.order) > _DEDUPE_WINDOW:
            self.keys.discard(self.order.popleft())
        return False


class Pairer(Generic[F]):
    """Pairs dependent frames with reference frames per rig; see the module docstring for the contract."""

    def __init__(
        self,
        tolerance_ns: int,
        deadline_ns: int,
        max_pending: int,
        policy: PairingPolicy,
        match_by: MatchBy,
        *,
        max_references: int = 8,
        last_reference_ns: int = 0,
    ) -> None:
        if tolerance_ns < 0 or deadline_ns < 0 or last_reference_ns < 0:
            raise ConfigError(
                "tolerance_ns, deadline_ns and last_reference_ns must be >= 0, "
                f"got {tolerance_ns}, {deadline_ns}, {last_reference_ns}"
            )
        if max_pending < 1 or max_references < 1:
            raise ConfigError(f"max_pending and max_references must be >= 1, got {max_pending}, {max_references}")
        if match_by not in ("seq", "time"):
            raise ConfigError(f"match_by must be 'seq' or 'time', got {match_by!r}")
        if not isinstance(policy, PairingPolicy):
            raise ConfigError(f"policy must be a PairingPolicy, got {policy!r}")
        self.tolerance_ns = tolerance_ns
        self.deadline_ns = deadline_ns
        self.max_pending = max_pending
        self.max_references = max_references
        self.last_reference_ns = last_reference_ns
        self.policy = policy
        self.match_by: MatchBy = match_by
        self.stats = PairingStats()
        self._rigs: OrderedDict[int, _Rig[F]] = OrderedDict()  # least recently heard from first
        self._pending: deque[_Held[F]] = deque()  # arrival order == deadline order
        self._seen: OrderedDict[tuple[int, int], _Recent] = OrderedDict()

    @property
    def pending(self) -> int:
        """Dependent frames waiting for their reference."""
        return len(self._pending)

    def next_deadline_ns(self) -> int | None:
        """When `poll` next has something to do (a deadline or a reference release), or None if never."""
        times = [r.refs[0].arrived_ns + self.deadline_ns for r in self._rigs.values() if r.refs]
        times += [r.held.arrived_ns + self.last_reference_ns for r in self._rigs.values() if r.held]
        if self._pending:
            times.append(self._pending[0].arrived_ns + self.deadline_ns)
        return min(times) if times else None

    def new_session(self, rig_id: int, camera_id: int, role: Role) -> None:
        """A camera restarted (numbering anew): forget its recent frame keys and, for the rig's reference
        camera, what the old reference stream said about late and lost references."""
        self._seen.pop((rig_id, camera_id), None)
        rig = self._rigs.get(rig_id)
        if rig is not None and role == Role.REFERENCE:
            rig.last_ref = rig.last_released = None

    def push(self, frame: F, now_ns: int) -> list[Event[F]]:
        """Take one received frame; return what to do, expired deadlines first."""
        events = self.poll(now_ns)
        self.stats.pushed += 1
        if self._duplicate(frame):
            events.append(self._drop(frame, Reason.DUPLICATE))
            return events
        rig = self._rig(frame.rig_id)
        if frame.role == Role.REFERENCE:
            self._add_reference(rig, frame, now_ns, events)
        else:
            self._add_dependent(rig, frame, now_ns, events)
        return events

    def poll(self, now_ns: int) -> list[Event[F]]:
        """Resolve dependents whose deadline passed, then release references kept long enough."""
        events: list[Event[F]] = []
        while self._pending and self._pending[0].arrived_ns + self.deadline_ns <= now_ns:
            held = self._pending.popleft()
            frame = held.frame
            rig = self._rigs[frame.rig_id]
            rig.pending -= 1
            events.append(self._resolve(rig, frame, self._deadline_reason(rig, held), now_ns))
        for rig in self._rigs.values():
            while rig.refs and rig.refs[0].arrived_ns + self.deadline_ns <= now_ns:
                self._release(rig, now_ns, events)
            if rig.held is not None and rig.held.arrived_ns + self.last_reference_ns <= now_ns:
                events.append(ReleaseReference(rig.held.frame))
                rig.held = None
        return events

    def _add_reference(self, rig: _Rig[F], ref: F, now_ns: int, events: list[Event[F]]) -> None:
        self.stats.references += 1
        events.append(DecodeReference(ref))
        rig.refs.append(_Held(ref, now_ns))
        rig.last_ref = ref
        if rig.held is not None:  # a newer reference replaces the one kept for reference loss
            events.append(ReleaseReference(rig.held.frame))
            rig.held = None
        if len(rig.refs) > self.max_references:
            self._release(rig, now_ns, events)
        for held in [h for h in self._pending if h.frame.rig_id == ref.rig_id]:
            dep = held.frame
            if self._matches(ref, dep):
                outcome: Event[F] = self._pair(dep, ref)
            elif self.policy is not PairingPolicy.WAIT and self._passed(rig, dep):
                outcome = self._resolve(rig, dep, Reason.NO_REFERENCE, now_ns)
            else:
                continue
            self._pending.remove(held)
            rig.pending -= 1
            events.append(outcome)

    def _add_dependent(self, rig: _Rig[F], dep: F, now_ns: int, events: list[Event[F]]) -> None:
        ref = self._best_match(rig, dep)
        if ref is not None:
            events.append(self._pair(dep, ref))
            return
        late = self._late(rig, dep)
        if self.policy is not PairingPolicy.WAIT and (late or self._passed(rig, dep)):
            events.append(self._resolve(rig, dep, Reason.LATE if late else Reason.NO_REFERENCE, now_ns))
            return
        self._pending.append(_Held(dep, now_ns, late))
        rig.pending += 1
        if len(self._pending) > self.max_pending:
            oldest = self._pending.popleft().frame
            oldest_rig = self._rigs[oldest.rig_id]
            oldest_rig.pending -= 1
            events.append(self._resolve(oldest_rig, oldest, Reason.BUFFER_FULL, now_ns))

    def _matches(self, ref: F, dep: F) -> bool:
        if self.match_by == "seq":
            return ref.seq == dep.seq
        return abs(ref.t_capture_ns - dep.t_capture_ns) <= self.tolerance_ns

    def _best_match(self, rig: _Rig[F], dep: F) -> F | None:
        candidates = [h.frame for h in rig.refs if self._matches(h.frame, dep)]
        if not candidates:
            return None
        # Closest capture time; the newest on a tie (min keeps the first minimum, so scan newest first).
        return min(reversed(candidates), key=lambda r: abs(r.t_capture_ns - dep.t_capture_ns))

    def _passed(self, rig: _Rig[F], dep: F) -> bool:
        """Whether the newest reference comes after every reference `dep` could pair with."""
        last = rig.last_ref
        if last is None:
            return False
        if self.match_by == "seq":
            return seq_delta(last.seq, dep.seq) > 0
        return last.t_capture_ns > dep.t_capture_ns + self.tolerance_ns

    def _late(self, rig: _Rig[F], dep: F) -> bool:
        """Whether an arriving dependent's partner can only have been among the released references."""
        released = rig.last_released
        if released is None:
            return False
        if self.match_by == "seq":
            return seq_delta(released.seq, dep.seq) >= 0
        return released.t_capture_ns >= dep.t_capture_ns - self.tolerance_ns

    def _deadline_reason(self, rig: _Rig[F], held: _Held[F]) -> Reason:
        if held.late:
            return Reason.LATE
        return Reason.NO_REFERENCE if self._passed(rig, held.frame) else Reason.STALE

    def _pair(self, dep: F, ref: F) -> DecodeDependent[F]:
        self.stats.paired += 1
        return DecodeDependent(dep, ref, Reason.PAIRED)

    def _resolve(self, rig: _Rig[F], dep: F, reason: Reason, now_ns: int) -> Event[F]:
        """Apply the policy to an unpaired dependent (the last reference first, when configured)."""
        if self.policy is PairingPolicy.LATEST_REFERENCE:
            for held in reversed(rig.refs):
                if abs(held.frame.t_capture_ns - dep.t_capture_ns) <= self.tolerance_ns:
                    self.stats.fallback[reason] += 1
                    return DecodeDependent(dep, held.frame, reason)
        newest = rig.refs[-1] if rig.refs else rig.held
        if self.last_reference_ns and newest is not None and now_ns - newest.arrived_ns <= self.last_reference_ns:
            self.stats.fallback[reason] += 1
            return DecodeDependent(dep, newest.frame, reason, last_reference=True)
        if self.policy is PairingPolicy.NO_SIDE_INFO:
            self.stats.fallback[reason] += 1
            return DecodeDependent(dep, None, reason)
        return self._drop(dep, reason)

    def _drop(self, frame: F, reason: Reason) -> Dropped[F]:
        self.stats.dropped[reason] += 1
        return Dropped(frame, reason)

    def _release(self, rig: _Rig[F], now_ns: int, events: list[Event[F]]) -> None:
        """Release the rig's oldest kept reference (the newest one is held instead, for reference loss)."""
        held = rig.refs.popleft()
        rig.last_released = held.frame
        if not rig.refs and self.last_reference_ns and now_ns < held.arrived_ns + self.last_reference_ns:
            rig.held = held
        else:
            events.append(ReleaseReference(held.frame))

    def _rig(self, rig_id: int) -> _Rig[F]:
        rig = self._rigs.get(rig_id)
        if rig is not None:
            self._rigs.move_to_end(rig_id)
            return rig
        rig = self._rigs[rig_id] = _Rig()
        if len(self._rigs) > _MAX_IDLE_RIGS:
            idle = (k for k, r in self._rigs.items() if not r.refs and not r.pending and r.held is None and k != rig_id)
            forget = next(idle, None)
            if forget is not None:
                del self._rigs[forget]
        return rig

    def _duplicate(self, frame: F) -> bool:
        camera = (frame.rig_id, frame.camera_id)
        recent = self._seen.get(camera)
        if recent is None:
            recent = self._seen[camera] = _Recent()
            if len(self._seen) > _MAX_CAMERAS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(camera)
        return recent.seen((frame.seq, frame.t_capture_ns))
