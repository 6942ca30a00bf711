"""Admission control, before pairing: how many cameras the host tracks and how fast each may send.

Pure (the clock is passed in), so every limit is tested without sockets: a camera table bounded in
size (a made-up camera id cannot grow memory), a per-rig camera cap, and a token bucket per camera.
A stale camera's slot goes to a new camera (``evicted`` counts them).

No sender can lock the others out by making up ids: each sender (its CURVE key, or its connection on a
plain link) may add at most ``new_cameras_per_s`` cameras per second to the table (a burst of
``4 x new_cameras_per_s``; beyond: dropped "new_camera_limited"), and entries silent for longer than
``stale_after_s`` make room for new ones. A flood of made-up ids from one sender thus takes at most
``4 x new_cameras_per_s x (1 + stale_after_s)`` slots of the ``max_cameras`` at any time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_CAMERAS = 4096
"""Cameras tracked at most (all rigs): frames from further (rig, camera) ids, e.g. a sender making up ids,
are dropped as "too_many_cameras" unless a stale camera's slot is free, so memory stays bounded."""

CameraId = tuple[int, int]  # (rig, camera)
_MAX_SENDERS = 4096  # new-camera buckets kept (least recently used forgotten first)


@dataclass
class CameraState:
    """What the host knows about one camera: when it was last heard and its rate-limit bucket."""

    last_seen: float  # time.monotonic() of its last admitted frame
    tokens: float


class Admission:
    """The camera table and its limits; `admit` returns a drop reason or None."""

    def __init__(
        self,
        max_cameras_per_rig: int = 0,
        max_frames_per_s: float = 0.0,
        stale_after_s: float = 0.0,
        max_cameras: int = MAX_CAMERAS,
        on_evict: Callable[[CameraId], None] | None = None,
        new_cameras_per_s: float = 0.0,
    ) -> None:
        self.max_cameras_per_rig = max_cameras_per_rig
        self.max_frames_per_s = max_frames_per_s
        self.stale_after_s = stale_after_s
        self.max_cameras = max_cameras
        self.on_evict = on_evict  # the service forgets the evicted camera's sequence state
        self.new_cameras_per_s = new_cameras_per_s
        self.cameras: dict[CameraId, CameraState] = {}
        self.evicted = 0
        self._new_camera_buckets: OrderedDict[Hashable, CameraState] = OrderedDict()  # sender -> bucket

    def stale(self, now: float) -> list[CameraId]:
        """Cameras silent for longer than `stale_after_s` (none when it is 0)."""
        if not self.stale_after_s:
            return []
        return [cam for cam, st in self.cameras.items() if now - st.last_seen > self.stale_after_s]

    def admit(self, cam: CameraId, now: float, sender: Hashable = None) -> str | None:
        """Apply the camera caps and the rate limits to one frame of `cam` from `sender`: "too_many_cameras",
        "new_camera_limited", "rate_limited", or None when the frame may go on."""
        state = self.cameras.get(cam)
        if state is None:
            if not self._new_camera_allowed(sender, now):
                return "new_camera_limited"
            if not self._make_room(cam, now):
                return "too_many_cameras"
            state = self.cameras[cam] = CameraState(now, max(1.0, self.max_frames_per_s))
        rate = self.max_frames_per_s
        if rate:
            state.tokens = min(max(1.0, rate), state.tokens + (now - state.last_seen) * rate)
        state.last_seen = now
        if rate:
            if state.tokens < 1.0:
                return "rate_limited"
            state.tokens -= 1.0
        return None

    def _new_camera_allowed(self, sender: Hashable, now: float) -> bool:
        """Take one token of `sender`'s new-camera bucket (always True when the limit is off)."""
        rate = self.new_cameras_per_s
        if not rate:
            return True
        burst = max(1.0, 4 * rate)
        bucket = self._new_camera_buckets.pop(sender, None) or CameraState(now, burst)
        self._new_camera_buckets[sender] = bucket  # most recently used last
        if len(self._new_camera_buckets) > _MAX_SENDERS:
            self._new_camera_buckets.popitem(last=False)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.last_seen) * rate)
        bucket.last_seen = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _make_room(self, cam: CameraId, now: float) -> bool:
        """Whether a new camera fits, evicting a stale one of the full pool if there is one."""
        rig = [k for k in self.cameras if k[0] == cam[0]] if self.max_cameras_per_rig else []
        pool = rig if self.max_cameras_per_rig and len(rig) >= self.max_cameras_per_rig else None
        if pool is None and len(self.cameras) >= self.max_cameras:
            pool = list(self.cameras)
        if pool is None:
            return True
        stale = set(self.stale(now))
        evictable = [k for k in pool if k in stale]
        if not evictable:
            return False
        del self.cameras[evictable[0]]
        self.evicted += 1
        if self.on_evict is not None:
            self.on_evict(evictable[0])
        return True
