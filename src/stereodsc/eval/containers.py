"""Lean payload sizes of classical image files: what each codec's bitstream costs without its container.

At 128x256 a HEIF/AVIF container (ftyp, meta, iloc, iprp, ...) costs 300-600 bytes, more than a
learned codec's whole frame, so the anchors are charged for their coded bitstream only (the way a
lean format such as BPG stores it) and the container total is reported beside it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from stereodsc.errors import BitstreamError

# ISO-BMFF boxes that hold other boxes, with the bytes of FullBox version/flags before the children.
_CONTAINER_BOXES = {"meta": 4, "iprp": 0, "ipco": 0, "dinf": 0, "moov": 0, "trak": 0, "mdia": 0, "minf": 0}


@dataclass(frozen=True)
class Box:
    """One ISO-BMFF box: ``data[offset : offset + size]`` is the whole box, its body starts at ``body``."""

    type: str
    offset: int
    size: int
    body: int
    children: tuple[Box, ...] = ()

    @property
    def body_size(self) -> int:
        return self.offset + self.size - self.body


def parse_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """Parse the boxes in ``data[start:end]``, descending into the containers HEIF/AVIF use."""
    end = len(data) if end is None else end
    boxes = []
    pos = start
    while pos < end:
        if end - pos < 8:
            raise BitstreamError(f"truncated ISO-BMFF box header at byte {pos} ({end - pos} bytes left)")
        size, raw_type = struct.unpack_from(">I4s", data, pos)
        box_type = raw_type.decode("latin-1")
        header = 8
        if size == 1:
            if end - pos < 16:
                raise BitstreamError(f"truncated 64-bit size of box {box_type!r} at byte {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise BitstreamError(f"box {box_type!r} at byte {pos} claims {size} bytes but only {end - pos} remain")
        body = pos + header
        children: tuple[Box, ...] = ()
        if box_type in _CONTAINER_BOXES:
            first_child = body + _CONTAINER_BOXES[box_type]
            children = tuple(parse_boxes(data, first_child, pos + size))
        boxes.append(Box(box_type, pos, size, body, children))
        pos += size
    return boxes


def iter_boxes(boxes: list[Box] | tuple[Box, ...]) -> Iterator[Box]:
    """All boxes, depth first."""
    for box in boxes:
        yield box
        yield from iter_boxes(box.children)


def _only_box(boxes: list[Box], box_type: str) -> Box:
    found = [b for b in iter_boxes(boxes) if b.type == box_type]
    if len(found) != 1:
        raise BitstreamError(f"expected exactly one {box_type!r} box in the file, found {len(found)}")
    return found[0]


def _mdat_bytes(boxes: list[Box]) -> int:
    mdats = [b for b in boxes if b.type == "mdat"]
    if not mdats:
        raise BitstreamError("no 'mdat' box: the file carries no coded data")
    return sum(b.body_size for b in mdats)


def hevc_payload_bytes(heif: bytes) -> int:
    """Bytes of a length-prefixed HEVC stream holding the HEIF image: parameter sets + coded slices.

    The VPS/SPS/PPS come from the ``hvcC`` box (each counted with the NAL length field the
    ``mdat`` uses), the slices are the ``mdat`` contents. This is what BPG stores, minus its
    few-byte header; the ~20-byte hvcC record header and all other boxes are container.
    """
    boxes = parse_boxes(heif)
    hvcc = _only_box(boxes, "hvcC")
    pos, end = hvcc.body, hvcc.offset + hvcc.size
    if hvcc.body_size < 23:
        raise BitstreamError(f"'hvcC' box too short ({hvcc.body_size} bytes)")
    length_size = (heif[pos + 21] & 0x3) + 1
    num_arrays = heif[pos + 22]
    pos += 23
    nal_bytes = 0
    for _ in range(num_arrays):
        if pos + 3 > end:
            raise BitstreamError("truncated NAL array in 'hvcC'")
        (num_nalus,) = struct.unpack_from(">H", heif, pos + 1)
        pos += 3
        for _ in range(num_nalus):
            if pos + 2 > end:
                raise BitstreamError("truncated NAL unit length in 'hvcC'")
            (nal_len,) = struct.unpack_from(">H", heif, pos)
            pos += 2 + nal_len
            if pos > end:
                raise BitstreamError("NAL unit overruns the 'hvcC' box")
            nal_bytes += length_size + nal_len
    return nal_bytes + _mdat_bytes(boxes)


def _leb128(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= end:
            break
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise BitstreamError(f"bad leb128 OBU size at byte {pos}")


def _has_sequence_header(data: bytes, start: int, end: int) -> bool:
    """Whether the AV1 OBUs in ``data[start:end]`` include a sequence header (OBU type 1)."""
    pos = start
    while pos < end:
        header = data[pos]
        obu_type = (header >> 3) & 0xF
        pos += 2 if header & 0x4 else 1
        if not header & 0x2:  # no size field: the OBU runs to the end
            return obu_type == 1
        size, pos = _leb128(data, pos, end)
        if obu_type == 1:
            return True
        pos += size
    return False


def av1_payload_bytes(avif: bytes) -> int:
    """Bytes of the AV1 OBUs of an AVIF image: the ``mdat`` contents.

    AVIF requires the item data to carry its own sequence header, so the ``av1C`` copy is
    container; should an encoder leave it out of ``mdat``, the ``av1C`` config OBUs are counted.
    """
    boxes = parse_boxes(avif)
    payload = _mdat_bytes(boxes)
    mdats = [b for b in boxes if b.type == "mdat"]
    if not any(_has_sequence_header(avif, b.body, b.offset + b.size) for b in mdats):
        av1c = _only_box(boxes, "av1C")
        payload += max(av1c.body_size - 4, 0)
    return payload


def webp_payload_bytes(webp: bytes) -> int:
    """Size of the VP8 (lossy) or VP8L (lossless) chunk data of a WebP file, without RIFF headers."""
    if len(webp) < 12 or webp[:4] != b"RIFF" or webp[8:12] != b"WEBP":
        raise BitstreamError("not a RIFF/WEBP file")
    pos = 12
    while pos + 8 <= len(webp):
        fourcc = webp[pos : pos + 4]
        (size,) = struct.unpack_from("<I", webp, pos + 4)
        if fourcc in (b"VP8 ", b"VP8L"):
            if pos + 8 + size > len(webp):
                raise BitstreamError(f"WebP {fourcc!r} chunk overruns the file")
            return int(size)
        pos += 8 + size + (size & 1)
    raise BitstreamError("WebP file has no VP8/VP8L chunk")


def strip_jpeg_metadata(jpeg: bytes) -> bytes:
    """The JPEG without APPn (JFIF, EXIF, ...) and COM segments, which decoding does not need."""
    if jpeg[:2] != b"\xff\xd8":
        raise BitstreamError("not a JPEG file (no SOI marker)")
    out = bytearray(jpeg[:2])
    pos = 2
    while pos + 4 <= len(jpeg):
        if jpeg[pos] != 0xFF:
            raise BitstreamError(f"expected a JPEG marker at byte {pos}")
        marker = jpeg[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += jpeg[pos:]
            return bytes(out)
        (length,) = struct.unpack_from(">H", jpeg, pos + 2)
        segment_end = pos + 2 + length
        if segment_end > len(jpeg):
            raise BitstreamError(f"JPEG segment 0xFF{marker:02X} overruns the file")
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            out += jpeg[pos:segment_end]
        pos = segment_end
    raise BitstreamError("JPEG file has no start-of-scan marker")
