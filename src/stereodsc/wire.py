"""The versioned wire frame: one compact header + the entropy-coded payload segments + a CRC32.

Layout of format v1 (little-endian; "varint" = unsigned LEB128, canonical, at most 5 bytes)::

    offset size  field
    0      2     magic b"SD"
    2      1     format version (1)
    3      1     role: 0 reference, 1 dependent
    4      8     bundle id: the first 8 bytes of the bundle's SHA-256
    12     1     quality index (uint8)
    13     4     sequence number (uint32; wraps to 0 after 2**32 - 1, compare with `seq_delta`)
    17     8     capture time: int64 nanoseconds since the Unix epoch (>= 0; `time.time_ns()`)
    25     ...   varints: rig id, camera id (each <= 65535), height, width (each 1..16384,
                 the ORIGINAL image size before padding), segment count (1..4), each segment's length
    ...          the segments' bytes, concatenated (factorized prior: [y]; hyperprior: [z, y])
    end-4  4     CRC32 (zlib) of everything before it

A typical frame (rig 0, camera 1, 128x256, one 80-byte segment) has 37 bytes of header + CRC.
Parsing checks, in order: size limit, magic, version, structure (every declared length against the
bytes present and `max_frame_bytes`, before anything is sliced), trailing bytes, CRC, then field
ranges, then the bundle id. Every failure is a `FrameError` (a `BitstreamError`) that says what to do.
Magic and version stay at offsets 0-2 in every future version, so an old host can still say which
side to upgrade. A format change must bump `FORMAT_VERSION`; the golden frames under
``tests/golden`` enforce it.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from stereodsc.errors import BitstreamError

MAGIC = b"SD"
FORMAT_VERSION = 1
BUNDLE_ID_BYTES = 8
MAX_DIM = 16384
MAX_SEGMENTS = 4
MAX_ID = 0xFFFF
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
_FIXED = struct.Struct("<2sBB8sBIq")
_CRC = struct.Struct("<I")
_VARINT_MAX_BYTES = 5
_VARINT_MAX = (1 << 32) - 1


class FrameError(BitstreamError):
    """Base of every wire-frame error: the host counts and drops the frame, it never crashes."""


class TruncatedFrameError(FrameError):
    """The frame ends before its declared contents do."""


class BadMagicError(FrameError):
    """The bytes are not a stereodsc frame at all."""


class UnsupportedVersionError(FrameError):
    """The frame uses a format version this stereodsc cannot read."""


class CrcMismatchError(FrameError):
    """The frame was corrupted after it was written."""


class FrameTooLargeError(FrameError):
    """The frame, or a length it declares, exceeds the receiver's size limit."""


class BundleMismatchError(FrameError):
    """The frame was encoded with another model bundle than the one this host decodes with."""


class MalformedFrameError(FrameError):
    """Invalid structure or field value: non-canonical varint, out-of-range field, trailing bytes."""


class Role(enum.IntEnum):
    """Reference frames are side information; dependent frames are decoded with them."""

    REFERENCE = 0
    DEPENDENT = 1


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class Frame:
    """One camera's encoded image and everything the host needs to route, pair and decode it."""

    bundle_id: bytes
    quality: int
    rig_id: int
    camera_id: int
    role: Role
    seq: int
    t_capture_ns: int
    height: int
    width: int
    segments: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.bundle_id, bytes) or len(self.bundle_id) != BUNDLE_ID_BYTES:
            raise ValueError(
                f"bundle_id must be {BUNDLE_ID_BYTES} bytes (bundle_id_from_sha256), got {self.bundle_id!r}"
            )
        _check_int("quality", self.quality, 0, 0xFF)
        _check_int("rig_id", self.rig_id, 0, MAX_ID)
        _check_int("camera_id", self.camera_id, 0, MAX_ID)
        if isinstance(self.role, bool) or self.role not in tuple(Role):
            raise ValueError(f"role must be one of {[r.name for r in Role]}, got {self.role!r}")
        object.__setattr__(self, "role", Role(self.role))
        _check_int("seq", self.seq, 0, (1 << 32) - 1)
        _check_int("t_capture_ns", self.t_capture_ns, 0, (1 << 63) - 1)
        _check_int("height", self.height, 1, MAX_DIM)
        _check_int("width", self.width, 1, MAX_DIM)
        segments = tuple(self.segments)
        if not 1 <= len(segments) <= MAX_SEGMENTS:
            raise ValueError(f"a frame has 1 to {MAX_SEGMENTS} payload segments, got {len(segments)}")
        if not all(isinstance(s, bytes) and len(s) <= _VARINT_MAX for s in segments):
            raise ValueError("segments must be bytes objects shorter than 4 GiB")
        object.__setattr__(self, "segments", segments)

    @property
    def payload_size(self) -> int:
        """Bytes of entropy-coded payload (for payload bpp; ``len(pack())`` gives wire bpp)."""
        return sum(len(s) for s in self.segments)

    def pack(self) -> bytes:
        """Serialise to the v1 wire format (deterministic: equal frames give equal bytes)."""
        fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, self.role, self.bundle_id, self.quality, self.seq, self.t_capture_ns)
        fields = (self.rig_id, self.camera_id, self.height, self.width, len(self.segments))
        varints = b"".join(_varint(v) for v in (*fields, *(len(s) for s in self.segments)))
        body = b"".join((fixed, varints, *self.segments))
        return body + _CRC.pack(zlib.crc32(body))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, field: str) -> tuple[int, int]:
    """Read a canonical varint below 2**32 at `pos`; return (value, next position)."""
    value = 0
    for i in range(_VARINT_MAX_BYTES):
        if pos + i >= len(data):
            raise TruncatedFrameError(
                f"frame truncated in its {field} field ({len(data)} bytes): the sender or transport cut it"
            )
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if i > 0 and byte == 0:
                raise MalformedFrameError(f"non-canonical varint in the {field} field: not a v1 writer")
            if value > _VARINT_MAX:
                raise MalformedFrameError(f"{field} = {value} does not fit 32 bits")
            return value, pos + i + 1
    raise MalformedFrameError(f"varint of the {field} field is longer than {_VARINT_MAX_BYTES} bytes")


def bundle_id_from_sha256(hexdigest: str) -> bytes:
    """The frame's bundle id (first 8 bytes) of a bundle's 64-hex SHA-256."""
    if not isinstance(hexdigest, str) or len(hexdigest) != 64:
        raise ValueError(f"expected a 64-character hex SHA-256, got {hexdigest!r}")
    return bytes.fromhex(hexdigest)[:BUNDLE_ID_BYTES]


def seq_delta(a: int, b: int) -> int:
    """How far sequence number `a` is ahead of `b` across the uint32 wrap, in [-2**31, 2**31) (RFC 1982)."""
    return (a - b + (1 << 31)) % (1 << 32) - (1 << 31)


def unpack(
    data: bytes | bytearray | memoryview,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    expected_bundle: bytes | None = None,
) -> Frame:
    """Parse and validate one frame; raise a `FrameError` subclass for anything but a valid frame.

    `expected_bundle` (8-byte bundle id) rejects frames from cameras running another bundle.
    """
    if expected_bundle is not None and (
        not isinstance(expected_bundle, bytes) or len(expected_bundle) != BUNDLE_ID_BYTES
    ):
        raise ValueError(f"expected_bundle must be {BUNDLE_ID_BYTES} bytes (use bundle_id_from_sha256)")
    n = memoryview(data).nbytes
    if n > max_frame_bytes:
        raise FrameTooLargeError(
            f"frame of {n} bytes exceeds max_frame_bytes={max_frame_bytes}: raise the limit if such frames are expected"
        )
    data = bytes(data)
    head = data[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise BadMagicError(
            f"not a stereodsc frame: starts with {head!r}, not {MAGIC!r}; check what sends to this socket"
        )
    if n <= len(MAGIC):
        raise TruncatedFrameError(f"frame truncated to {n} bytes: the sender or transport cut it")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        fix = "upgrade the host" if version > FORMAT_VERSION else "upgrade the camera's stereodsc"
        raise UnsupportedVersionError(f"frame format v{version}, this stereodsc reads v{FORMAT_VERSION}: {fix}")
    if n < _FIXED.size:
        raise TruncatedFrameError(
            f"frame truncated to {n} bytes, its fixed header alone is {_FIXED.size}: the sender or transport cut it"
        )
    _, _, role, bundle, quality, seq, t_capture = _FIXED.unpack_from(data)
    pos = _FIXED.size
    fields = []
    for name in ("rig id", "camera id", "height", "width", "segment count"):
        value, pos = _read_varint(data, pos, name)
        fields.append(value)
    rig_id, camera_id, height, width, n_segments = fields
    if not 1 <= n_segments <= MAX_SEGMENTS:
        raise MalformedFrameError(f"frame declares {n_segments} segments, v1 allows 1 to {MAX_SEGMENTS}")
    lengths = []
    for i in range(n_segments):
        length, pos = _read_varint(data, pos, f"segment {i} length")
        lengths.append(length)
    end = pos + sum(lengths)
    if end + _CRC.size > max_frame_bytes:
        raise FrameTooLargeError(
            f"frame declares {end + _CRC.size} bytes, over max_frame_bytes={max_frame_bytes}: "
            "raise the limit if such frames are expected"
        )
    if end + _CRC.size > n:
        raise TruncatedFrameError(
            f"frame declares {end + _CRC.size} bytes but {n} arrived: the sender or transport cut it"
        )
    if end + _CRC.size < n:
        raise MalformedFrameError(f"{n - end - _CRC.size} trailing bytes after the frame's CRC: drop the frame")
    (stored,) = _CRC.unpack_from(data, end)
    computed = zlib.crc32(memoryview(data)[:end])
    if stored != computed:
        raise CrcMismatchError(
            f"CRC32 mismatch (stored {stored:#010x}, computed {computed:#010x}): "
            "the frame was corrupted in transit; drop it"
        )
    segments = []
    for length in lengths:
        segments.append(data[pos : pos + length])
        pos += length
    try:
        frame = Frame(bundle, quality, rig_id, camera_id, role, seq, t_capture, height, width, tuple(segments))
    except ValueError as e:
        raise MalformedFrameError(f"invalid frame field: {e}") from None
    if expected_bundle is not None:
        check_bundle(frame, (expected_bundle,))
    return frame


def check_bundle(frame: Frame, accepted: Collection[bytes]) -> None:
    """Raise BundleMismatchError unless `frame` was encoded with one of the `accepted` bundle ids: a
    frame is never decoded with other weights or tables than the camera encoded it with."""
    if frame.bundle_id not in accepted:
        raise BundleMismatchError(
            f"frame encoded with bundle {frame.bundle_id.hex()}..., this host decodes "
            f"{', '.join(b.hex() + '...' for b in accepted)}: deploy the camera's bundle on the host "
            "([host] bundle or extra_bundles), or the host's on the camera"
        )
