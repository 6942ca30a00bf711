"""Hostile input to the host service, in-process: `HostService.handle` with the real parser, pairer
and decoder (tiny bundle) fed mutated and random frames.

For every input: no exception escapes; it is decoded or ends in exactly one counted reason; a
decode error is always a typed `BitstreamError` (never the catch-all path); the stats add up; and a
valid, unmutated stereo pair is decoded to exactly what an offline decode gives.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.errors import BitstreamError
from stereodsc.host_decoder.config import host_config_from_dict
from stereodsc.host_decoder.service import HostService, InProcessReceiver
from stereodsc.host_decoder.sinks import DecodedFrame
from stereodsc.host_decoder.stats import HostStats
from stereodsc.wire import MAX_DIM, MAX_ID, Frame, Role
from tiny_models import bundle_dir, sample_pair

pytestmark = pytest.mark.timeout(600)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_FAR_FUTURE_NS = 10**18
_SEQS = itertools.count(1)  # every repacked frame gets a fresh seq: nothing is a duplicate by accident


def _bitstream_errors() -> set[str]:
    found, todo = set(), [BitstreamError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


class Harness:
    """One host service (fed in-process: no socket) and the valid frames mutations start from."""

    def __init__(self, bundle: Path) -> None:
        cfg = host_config_from_dict({"host": {"bundle": str(bundle)}})
        self.decoded: list[DecodedFrame] = []
        self.service = HostService.from_config(cfg, callbacks=[self.decoded.append], receiver=InProcessReceiver())
        bundle_obj = self.service.bundle
        left, right = sample_pair()
        ref_enc, dep_enc = EdgeEncoder(bundle_obj, "intra", 0), EdgeEncoder(bundle_obj, "side_info", 0)
        self.ref = ref_enc.frame(ref_enc.encode(left), rig_id=1, camera_id=0, seq=0, t_capture_ns=0)
        self.dep = dep_enc.frame(dep_enc.encode(right), rig_id=1, camera_id=1, seq=0, t_capture_ns=0)
        offline = HostDecoder(bundle_obj)
        self.ref_image = offline.decode(self.ref).image
        self.dep_image = offline.decode(self.dep, self.ref_image).image
        self.bitstream_errors = _bitstream_errors()

    def fresh(self, frame: Frame, **changes: object) -> Frame:
        return dataclasses.replace(frame, seq=next(_SEQS), **changes)  # type: ignore[arg-type]

    def feed(self, *inputs: bytes) -> list[DecodedFrame]:
        """Handle each input, flush the pairer, check the books; return what was decoded."""
        start = len(self.decoded)
        for data in inputs:
            self.service.handle(data, time.monotonic())
        self.service.act(self.service.pairer.poll(_FAR_FUTURE_NS))
        check_books(self.service.stats, self.service.pairer.pending, self.bitstream_errors)
        return self.decoded[start:]


def check_books(stats: HostStats, pending: int, typed: set[str]) -> None:
    """Every received message is in exactly one outcome, and decode errors are typed."""
    outcomes = (
        sum(stats.rejected.values())
        + stats.decoded_reference
        + stats.decoded_with_side_info
        + sum(stats.decoded_without_side_info.values())
        + sum(stats.dropped.values())
        + sum(stats.decode_errors.values())
        + pending
    )
    assert stats.received == outcomes, stats.as_dict()
    assert set(stats.decode_errors) <= typed, f"an untyped error took the catch-all path: {stats.decode_errors}"
    assert set(stats.rejected) <= typed


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(bundle_dir(tmp_path_factory, "stereo"))
    yield h
    h.service.close()


def _valid(h: Harness, which: int) -> bytes:
    return h.fresh(h.ref if which == 0 else h.dep).pack()


def test_valid_pair_decodes_like_offline(harness: Harness) -> None:
    seq = next(_SEQS)
    ref, dep = (dataclasses.replace(f, seq=seq) for f in (harness.ref, harness.dep))
    out = harness.feed(ref.pack(), dep.pack())
    assert [(d.frame.camera_id, d.side_info_used) for d in out] == [(0, False), (1, True)]
    assert np.array_equal(out[0].image, harness.ref_image) and np.array_equal(out[1].image, harness.dep_image)


@FUZZ
@given(which=st.integers(0, 1), bits=st.lists(st.integers(0, 1 << 30), min_size=1, max_size=8))
def test_bit_flips(harness: Harness, which: int, bits: list[int]) -> None:
    data = bytearray(_valid(harness, which))
    for bit in bits:
        data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
    harness.feed(bytes(data))


@FUZZ
@given(which=st.integers(0, 1), keep=st.integers(0, 1 << 20))
def test_truncations(harness: Harness, which: int, keep: int) -> None:
    data = _valid(harness, which)
    assert not harness.feed(data[: keep % len(data)])


@FUZZ
@given(a=st.integers(0, 1), b=st.integers(0, 1), i=st.integers(0, 1 << 20), j=st.integers(0, 1 << 20))
def test_splices_of_two_valid_frames(harness: Harness, a: int, b: int, i: int, j: int) -> None:
    first, second = _valid(harness, a), _valid(harness, b)
    harness.feed(first[: i % len(first)] + second[j % len(second) :])


@FUZZ
@given(data=st.binary(max_size=4096), magic=st.booleans())
def test_random_bytes(harness: Harness, data: bytes, magic: bool) -> None:
    assert not harness.feed((b"SD\x01" if magic else b"") + data)


def _mutate(payload: bytes, kind: int, pos: int, blob: bytes) -> bytes:
    at = pos % max(1, len(payload))
    if kind == 0:  # bit flip
        return payload[:at] + bytes([payload[at] ^ (1 << (pos % 8))]) + payload[at + 1 :] if payload else blob
    if kind == 1:  # truncate
        return payload[:at]
    if kind == 2:  # overwrite a stretch
        return payload[:at] + blob + payload[at + len(blob) :]
    return payload + blob  # extend


@FUZZ
@given(
    which=st.integers(0, 1),
    segment=st.integers(0, 3),
    kind=st.integers(0, 3),
    pos=st.integers(0, 1 << 20),
    blob=st.binary(min_size=1, max_size=64),
)
def test_valid_header_mutated_payload(
    harness: Harness, which: int, segment: int, kind: int, pos: int, blob: bytes
) -> None:
    """The CRC is recomputed, so the corrupt payload reaches the entropy decoder and the model
    (a mutated dependent comes with its valid reference, so it is decoded with side information)."""
    frame = harness.ref if which == 0 else harness.dep
    segs = list(frame.segments)
    index = segment % len(segs)
    segs[index] = _mutate(segs[index], kind, pos, blob)
    mutated = harness.fresh(frame, rig_id=2, segments=tuple(segs))
    inputs = [mutated.pack()]
    if which == 1:
        inputs.insert(0, dataclasses.replace(harness.ref, rig_id=2, seq=mutated.seq).pack())
    out = harness.feed(*inputs)
    assert all(d.image.shape == (frame.height, frame.width, 3) for d in out)


@FUZZ
@given(
    which=st.integers(0, 1),
    role=st.sampled_from(list(Role)),
    height=st.one_of(st.integers(1, 256), st.integers(1, MAX_DIM)),
    width=st.one_of(st.integers(1, 256), st.integers(1, MAX_DIM)),
    rig=st.integers(2, MAX_ID),
    camera=st.integers(0, MAX_ID),
    quality=st.integers(0, 255),
)
def test_valid_payload_mutated_header(
    harness: Harness, which: int, role: Role, height: int, width: int, rig: int, camera: int, quality: int
) -> None:
    """Well-formed frames that lie about their size, role, quality or origin."""
    frame = harness.ref if which == 0 else harness.dep
    changed = harness.fresh(frame, role=role, height=height, width=width, rig_id=rig, camera_id=camera)
    changed = dataclasses.replace(changed, quality=quality)
    harness.feed(changed.pack())


def test_the_books_balance_after_the_fuzzing(harness: Harness) -> None:
    stats = harness.service.stats
    assert stats.received > 500 and stats.rejected and stats.decode_errors, stats.as_dict()
    test_valid_pair_decodes_like_offline(harness)  # the service still works after all of it
