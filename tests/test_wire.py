"""Wire frames: exact round trips, golden bytes, and a typed error for every kind of bad input."""

from __future__ import annotations

import contextlib
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stereodsc import wire
from stereodsc.entropy import CdfTables, build_tables, decode, encode
from stereodsc.errors import BitstreamError
from stereodsc.wire import (
    BadMagicError,
    BundleMismatchError,
    CrcMismatchError,
    Frame,
    FrameError,
    FrameTooLargeError,
    MalformedFrameError,
    Role,
    TruncatedFrameError,
    UnsupportedVersionError,
    bundle_id_from_sha256,
    seq_delta,
    unpack,
)

GOLDEN = Path(__file__).parent / "golden"
BUNDLE = bundle_id_from_sha256("5d41402abc4b2a765d41402abc4b2a765d41402abc4b2a765d41402abc4b2a76")


def typical(**changes: object) -> Frame:
    """A dependent camera's 128x256 frame at ~0.02 bpp: one 80-byte segment."""
    fields: dict[str, object] = dict(
        bundle_id=BUNDLE,
        quality=2,
        rig_id=0,
        camera_id=1,
        role=Role.DEPENDENT,
        seq=123_456,
        t_capture_ns=1_700_000_000_000_000_000,
        height=128,
        width=256,
        segments=(bytes(range(80)),),
    )
    fields.update(changes)
    return Frame(**fields)  # type: ignore[arg-type]


def recrc(body: bytes) -> bytes:
    """Re-seal a hand-edited frame body so that only the intended defect remains."""
    return body + struct.pack("<I", zlib.crc32(body))


def test_round_trip_and_header_size() -> None:
    frame = typical()
    data = frame.pack()
    assert unpack(data) == frame
    assert len(data) - frame.payload_size == 37  # header + CRC of the typical frame, as documented
    two = typical(segments=(b"z" * 20, b"y" * 300), role=Role.REFERENCE)
    assert unpack(two.pack()) == two and len(two.pack()) - two.payload_size == 39


@settings(max_examples=60, deadline=None)
@given(
    quality=st.integers(0, 255),
    rig_id=st.integers(0, 0xFFFF),
    camera_id=st.integers(0, 0xFFFF),
    role=st.sampled_from(Role),
    seq=st.integers(0, 2**32 - 1),
    t=st.integers(0, 2**63 - 1),
    height=st.integers(1, wire.MAX_DIM),
    width=st.integers(1, wire.MAX_DIM),
    segments=st.lists(st.binary(max_size=300), min_size=1, max_size=wire.MAX_SEGMENTS),
    bundle=st.binary(min_size=8, max_size=8),
)
def test_round_trip_any_fields(
    quality: int,
    rig_id: int,
    camera_id: int,
    role: Role,
    seq: int,
    t: int,
    height: int,
    width: int,
    segments: list[bytes],
    bundle: bytes,
) -> None:
    frame = Frame(bundle, quality, rig_id, camera_id, role, seq, t, height, width, tuple(segments))
    data = frame.pack()
    back = unpack(data, expected_bundle=bundle)
    assert back == frame and back.pack() == data and isinstance(back.role, Role)


def test_golden_frames_decode_and_re_encode_byte_identically() -> None:
    doc = json.loads((GOLDEN / "golden.json").read_text())
    spec = doc["tables"]
    tables = build_tables(np.array(spec["pmf"]), np.array(spec["offset"]), spec["precision"])
    golden_tables = (GOLDEN / spec["file"]).read_bytes()
    assert tables.sha256 == spec["sha256"] and tables.to_npz_bytes() == golden_tables
    assert CdfTables.from_npz_bytes(golden_tables).sha256 == spec["sha256"]
    for entry in doc["frames"]:
        data = (GOLDEN / entry["file"]).read_bytes()
        fields = dict(entry["fields"])
        expected_bundle = bytes.fromhex(fields.pop("bundle_id"))
        frame = unpack(data, expected_bundle=expected_bundle)
        assert frame.role is Role[fields.pop("role")]
        assert {name: getattr(frame, name) for name in fields} == fields
        assert len(data) == entry["size"] and frame.pack() == data
        assert len(frame.segments) == len(entry["segments"])
        for segment, seg in zip(frame.segments, entry["segments"], strict=True):
            idx = np.array(seg["indexes"], dtype=np.int32)
            assert segment.hex() == seg["hex"]
            assert decode(segment, idx, tables).tolist() == seg["symbols"]
            assert encode(np.array(seg["symbols"]), idx, tables) == segment


def test_every_truncation_is_a_truncated_frame() -> None:
    data = typical(segments=(b"z" * 5, b"y" * 30)).pack()
    for cut in range(len(data)):
        with pytest.raises(TruncatedFrameError):
            unpack(data[:cut])


def test_every_bit_flip_is_caught() -> None:
    data = typical().pack()
    for bit in range(8 * len(data)):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            unpack(bytes(bad))
    flipped_payload = bytearray(data)
    flipped_payload[-10] ^= 0x20
    with pytest.raises(CrcMismatchError, match="corrupted in transit"):
        unpack(bytes(flipped_payload))


def test_each_defect_raises_its_typed_error() -> None:
    data = typical().pack()
    body = data[:-4]
    with pytest.raises(BadMagicError, match="not a stereodsc frame"):
        unpack(b"GIF89a" + data[6:])
    with pytest.raises(UnsupportedVersionError, match="frame format v3, this stereodsc reads v1: upgrade the host"):
        unpack(recrc(body[:2] + b"\x03" + body[3:]))
    with pytest.raises(UnsupportedVersionError, match="upgrade the camera"):
        unpack(recrc(body[:2] + b"\x00" + body[3:]))
    with pytest.raises(MalformedFrameError, match="trailing"):
        unpack(data + b"\0")
    with pytest.raises(BundleMismatchError, match=r"deploy the camera.s bundle on the host"):
        unpack(data, expected_bundle=b"\1" * 8)
    with pytest.raises(FrameTooLargeError, match="max_frame_bytes=100"):
        unpack(data, max_frame_bytes=100)
    with pytest.raises(MalformedFrameError, match="role"):
        unpack(recrc(body[:3] + b"\x07" + body[4:]))
    with pytest.raises(ValueError, match="8 bytes"):
        unpack(data, expected_bundle=b"short")


def header(*varints: bytes, t_capture: int = 0) -> bytes:
    fixed = struct.pack("<2sBB8sBIq", b"SD", 1, 0, BUNDLE, 0, 0, t_capture)
    return fixed + b"".join(varints)


def test_declared_lengths_are_bounded_before_anything_is_sliced() -> None:
    v = wire._varint
    dims = (v(0), v(1), v(128), v(256))
    huge = header(*dims, v(1), v(2**32 - 1))  # a 4 GiB segment declared in a 35-byte message
    with pytest.raises(FrameTooLargeError, match="declares"):
        unpack(recrc(huge))
    with pytest.raises(TruncatedFrameError, match="declares"):
        unpack(recrc(header(*dims, v(1), v(1000)) + b"x" * 10))
    with pytest.raises(MalformedFrameError, match="segments"):
        unpack(recrc(header(*dims, v(200)) + v(1) * 200))
    with pytest.raises(MalformedFrameError, match="segments"):
        unpack(recrc(header(*dims, v(0))))
    with pytest.raises(MalformedFrameError, match="longer than 5 bytes"):
        unpack(recrc(header(b"\x80" * 6 + b"\x01")))
    with pytest.raises(MalformedFrameError, match="32 bits"):
        unpack(recrc(header(b"\xff\xff\xff\xff\x7f")))
    with pytest.raises(MalformedFrameError, match="non-canonical"):
        unpack(recrc(header(b"\x80\x00", *dims[1:], v(1), v(1)) + b"x"))


@pytest.mark.parametrize(
    ("varints", "t_capture", "match"),
    [
        ((0, 1, 0, 256), 0, "height"),
        ((0, 1, 128, wire.MAX_DIM + 1), 0, "width"),
        ((70_000, 1, 128, 256), 0, "rig_id"),
        ((0, 1, 128, 256), -1, "t_capture_ns"),
    ],
)
def test_out_of_range_fields_with_a_valid_crc_are_malformed(
    varints: tuple[int, ...], t_capture: int, match: str
) -> None:
    v = wire._varint
    body = header(*(v(x) for x in varints), v(1), v(1), t_capture=t_capture) + b"x"
    with pytest.raises(MalformedFrameError, match=match):
        unpack(recrc(body))


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=120))
def test_random_bytes_raise_only_bitstream_errors(junk: bytes) -> None:
    for data in (junk, b"SD\x01" + junk):
        with pytest.raises(BitstreamError):
            unpack(data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_frames_raise_only_bitstream_errors(data: st.DataObject) -> None:
    frame = bytearray(typical(segments=(b"z" * 3, b"y" * 20)).pack())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    with contextlib.suppress(BitstreamError):
        unpack(bytes(frame[:cut]))


def test_frame_constructor_validates_fields() -> None:
    with pytest.raises(ValueError, match="bundle_id"):
        typical(bundle_id=b"abc")
    with pytest.raises(ValueError, match="role"):
        typical(role=2)
    with pytest.raises(ValueError, match="quality"):
        typical(quality=True)
    with pytest.raises(ValueError, match="seq"):
        typical(seq=2**32)
    with pytest.raises(ValueError, match="segments"):
        typical(segments=())
    with pytest.raises(ValueError, match="segments"):
        typical(segments=("text",))
    assert typical(role=1).role is Role.DEPENDENT
    assert typical(segments=[b"a", b"b"]).segments == (b"a", b"b")  # any sequence is stored as a tuple
    frame = typical()
    assert replace(frame, seq=0).seq == 0 and frame.payload_size == 80


def test_seq_delta_and_bundle_ids() -> None:
    assert seq_delta(5, 3) == 2 and seq_delta(3, 5) == -2
    assert seq_delta(0, 2**32 - 1) == 1 and seq_delta(2**32 - 1, 0) == -1  # across the wrap
    assert seq_delta(2**31, 0) == -(2**31)
    assert bundle_id_from_sha256("ab" * 32) == b"\xab" * 8
    with pytest.raises(ValueError):
        bundle_id_from_sha256("ab" * 8)


def test_wire_and_entropy_import_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, stereodsc.wire, stereodsc.entropy; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
