"""Camera sessions: a rebooted camera numbers its frames from 0 again; the host maps them onto the rig.

Pure (the clock is passed in), like `pairing`. Each camera start draws a random 32-bit session id that
rides on every message (`stereodsc.transport`). `Sessions.place` turns a frame's own sequence number into
the rig's numbering, the one the pairer matches on (``match_by = "seq"``):

- A capture-time match comes first: when one of the two newest frames of another camera of the rig
  was captured within ``tolerance_ns`` of the camera's first frame, the camera takes that frame's
  number (cameras with synchronised clocks: exact). Only the newest frames count: a frame that
  arrived long ago cannot have been captured with one arriving now, and replayed files repeat their
  timestamps (matching an older loop would put the camera behind the rig for good).
- Otherwise the first session the host sees of a camera keeps the camera's own numbering: cameras
  started together from a common trigger number alike (as before sessions), and after a host restart
  every camera goes on with the numbers it had.
- Otherwise a camera that comes back with a new session (a reboot, a restarted daemon or replayed
  file) is re-based onto the newest frame another camera of the rig sent within ``window_ns``
  (arrival order: pairs frames captured about one frame interval apart), else it goes on from its own
  last number. So pairing resumes with the restarted camera's first frame; the frames lost are those
  in flight when it died.
- Session 0 ("none announced", a sender from before sessions) is never re-based.
- A few earlier sessions keep their mapping: frames of a dead connection still queued at the host are
  placed where they belong instead of being taken for a new session.

Memory is bounded: at most ``max_cameras`` cameras (least recently heard from forgotten first) and, per
rig, the last `_HISTORY` frames of at most ``max_rigs`` rigs.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from stereodsc.wire import seq_delta

CameraId = tuple[int, int]  # (rig, camera)
U32 = 1 << 32
_HISTORY = 64  # recent frames per rig that a new session can be aligned with
_RETIRED_KEPT = 4  # earlier sessions per camera whose mapping is kept


@dataclass(frozen=True)
class Placed:
    """Where a frame goes in its rig's numbering, and whether it opened a new session of its camera."""

    rig_seq: int
    restarted: bool
    """The camera came back with a new session: the host resets its sequence and pairing state."""
    aligned_by: str = ""
    """For a restart: "capture_time", "arrival" or "own" (how the new numbering was chosen)."""


@dataclass
class _Camera:
    session: int
    offset: int  # rig seq = (own seq + offset) mod 2**32
    last_rig_seq: int
    retired: OrderedDict[int, int] = field(default_factory=OrderedDict)  # earlier session -> its offset


@dataclass(frozen=True, slots=True)
class _Seen:
    arrived_ns: int
    camera: int
    rig_seq: int
    t_capture_ns: int


class Sessions:
    """Per camera: its session and the offset from its numbering to the rig's; see the module docstring."""

    def __init__(self, tolerance_ns: int, window_ns: int, max_cameras: int = 4096, max_rigs: int = 1024) -> None:
        self.tolerance_ns = tolerance_ns
        self.window_ns = window_ns
        self.max_cameras = max_cameras
        self.max_rigs = max_rigs
        self.restarts = 0
        self._cameras: OrderedDict[CameraId, _Camera] = OrderedDict()
        self._history: OrderedDict[int, deque[_Seen]] = OrderedDict()

    def session_of(self, cam: CameraId) -> int | None:
        """The camera's current session, or None for a camera not (or no longer) known."""
        state = self._cameras.get(cam)
        return None if state is None else state.session

    def place(self, cam: CameraId, session: int, seq: int, t_capture_ns: int, now_ns: int) -> Placed:
        """Map one admitted frame of `cam` onto its rig's numbering (and remember it for other cameras)."""
        state = self._cameras.get(cam)
        restarted, aligned_by = False, ""
        if state is None:
            matched = self._by_capture_time(cam, seq, t_capture_ns, now_ns) if session else None
            offset = 0 if matched is None else matched
            aligned_by = "" if matched is None else "capture_time"
            state = self._cameras[cam] = _Camera(session, offset, (seq + offset) % U32)
            if len(self._cameras) > self.max_cameras:
                self._cameras.popitem(last=False)
        else:
            self._cameras.move_to_end(cam)
            if session == state.session or session == 0:
                offset = state.offset if session else 0
            elif session in state.retired:
                offset = state.retired[session]  # a frame of an earlier connection, still queued at the host
            else:
                offset, aligned_by = self._align(cam, seq, t_capture_ns, now_ns, state)
                state.retired[state.session] = state.offset
                if len(state.retired) > _RETIRED_KEPT:
                    state.retired.popitem(last=False)
                state.session, state.offset = session, offset
                restarted = True
                self.restarts += 1
        rig_seq = (seq + offset) % U32
        if (session == state.session and seq_delta(rig_seq, state.last_rig_seq) > 0) or restarted:
            state.last_rig_seq = rig_seq
        self._remember(cam, rig_seq, t_capture_ns, now_ns)
        return Placed(rig_seq, restarted, aligned_by)

    def _recent(self, cam: CameraId, now_ns: int) -> list[_Seen]:
        """The frames of the rig's other cameras that arrived within ``window_ns``, oldest first."""
        return [
            s for s in self._history.get(cam[0], ()) if s.camera != cam[1] and now_ns - s.arrived_ns <= self.window_ns
        ]

    def _by_capture_time(self, cam: CameraId, seq: int, t_capture_ns: int, now_ns: int) -> int | None:
        """The offset onto the closest in capture time of each other camera's two newest frames, if within
        tolerance; None otherwise."""
        newest: dict[int, list[_Seen]] = {}
        for s in reversed(self._recent(cam, now_ns)):
            if len(newest.setdefault(s.camera, [])) < 2:
                newest[s.camera].append(s)
        close = [s for two in newest.values() for s in two if abs(s.t_capture_ns - t_capture_ns) <= self.tolerance_ns]
        if not close:
            return None
        best = min(close, key=lambda s: abs(s.t_capture_ns - t_capture_ns))
        return (best.rig_seq - seq) % U32

    def _align(self, cam: CameraId, seq: int, t_capture_ns: int, now_ns: int, state: _Camera) -> tuple[int, str]:
        """The offset of a new session: by capture time, else by arrival, else after its own last number."""
        matched = self._by_capture_time(cam, seq, t_capture_ns, now_ns)
        if matched is not None:
            return matched, "capture_time"
        recent = self._recent(cam, now_ns)
        if recent:
            return (recent[-1].rig_seq - seq) % U32, "arrival"
        return (state.last_rig_seq + 1 - seq) % U32, "own"

    def _remember(self, cam: CameraId, rig_seq: int, t_capture_ns: int, now_ns: int) -> None:
        history = self._history.get(cam[0])
        if history is None:
            history = self._history[cam[0]] = deque(maxlen=_HISTORY)
            if len(self._history) > self.max_rigs:
                self._history.popitem(last=False)
        else:
            self._history.move_to_end(cam[0])
        history.append(_Seen(now_ns, cam[1], rig_seq, t_capture_ns))
