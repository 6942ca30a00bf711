"""rANS encode/decode of int32 symbols over `CdfTables`, with escapes so that any int32 round-trips.

A symbol ``v`` coded with row ``k`` is in range when ``offset[k] <= v < offset[k] + n_k``. Any
other value is coded as row k's ESCAPE symbol followed by ``raw`` as an Exp-Golomb code (2 nb + 1
bits for ``nb = floor(log2(raw + 1))``) through the same stream, where ``raw = 2 (lo - 1 - v) + 1``
below the range and ``raw = 2 (v - hi)`` above it (CompressAI's bypass coding, one bit at a time
for the prefix). Values are never clipped.

The payload is self-delimiting only together with `indexes`: the decoder must be given the same
table rows in the same order as the encoder (the frame header carries the bundle id for that).
"""

from __future__ import annotations

import numpy as np

from stereodsc.errors import BitstreamError

from . import _kernels as K
from .tables import CdfTables


class CorruptPayloadError(BitstreamError):
    """An rANS payload does not decode under the given tables and indexes."""


_STATUS_MESSAGES = {
    K.UNDERRUN: "the stream ran out of bytes at symbol {pos} of {n}",
    K.BAD_INITIAL_STATE: "its initial state is out of range",
    K.BAD_FINAL_STATE: "its final state is not the encoder's initial state",
    K.TRAILING_BYTES: "{pos} bytes were left unread after the last symbol",
    K.BAD_ESCAPE: "the escaped value at symbol {pos} of {n} is not an int32",
}


def _as_int32(values: np.ndarray, name: str) -> np.ndarray:
    """C-contiguous int32 view or copy; refuses values int32 cannot hold rather than wrapping them."""
    arr = np.asarray(values)
    if arr.dtype == np.int32:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < K.INT32_MIN or int(arr.max()) > K.INT32_MAX):
        raise ValueError(f"{name} holds values outside int32; the coder never clips them")
    return arr.astype(np.int32)


def _bad_index(indexes: np.ndarray, pos: int, tables: CdfTables) -> ValueError:
    value = int(indexes.reshape(-1)[pos])
    return ValueError(f"indexes[{pos}] = {value} is not a table row in [0, {tables.num_rows})")


def encode(symbols: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> bytes:
    """Encode `symbols` (any shape) with table row ``indexes`` (same shape) for each; return the payload.

    An empty input gives the 4-byte initial state.
    """
    sym = _as_int32(symbols, "symbols")
    idx = _as_int32(indexes, "indexes")
    if sym.shape != idx.shape:
        raise ValueError(f"symbols {sym.shape} and indexes {idx.shape} must have the same shape")
    status, pos, buf, start = K.encode_kernel(
        sym.reshape(-1), idx.reshape(-1), tables.nsym, tables.offset, tables._encoder_table
    )
    if status != K.OK:
        raise _bad_index(idx, pos, tables)
    return bytes(buf[start:])


def decode(data: bytes | bytearray | memoryview, indexes: np.ndarray, tables: CdfTables) -> np.ndarray:
    """Decode a payload of ``indexes.size`` symbols; returns int32 with the shape of `indexes`.

    Raises `CorruptPayloadError` when the stream underruns, has bytes left over, or does not end in
    the encoder's initial state. rANS cannot catch every corruption: the frame CRC does that.
    """
    idx = _as_int32(indexes, "indexes")
    buf = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(idx.shape, dtype=np.int32)
    status, pos = K.decode_kernel(
        buf,
        idx.reshape(-1),
        out.reshape(-1),
        tables.cdf,
        tables.nsym,
        tables.offset,
        tables._decoder_lut,
        tables._lut_shift,
        tables.precision,
    )
    if status == K.BAD_INDEX:
        raise _bad_index(idx, pos, tables)
    if status != K.OK:
        detail = _STATUS_MESSAGES[status].format(pos=pos, n=idx.size)
        raise CorruptPayloadError(
            f"rANS payload of {buf.size} bytes is corrupt: {detail}. The payload was damaged or cut, or it "
            "was encoded with other tables/indexes (check the frame's bundle id and image shape)"
        )
    return out


def ideal_bits(symbols: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> float:
    """Exact information content in bits of `symbols` under `tables`, escape bits included.

    `encode` output is within a few bytes of ``ideal_bits / 8`` (4 of them the final state).
    """
    sym = _as_int32(symbols, "symbols").reshape(-1).astype(np.int64)
    idx = _as_int32(indexes, "indexes").reshape(-1)
    if sym.shape != idx.shape:
        raise ValueError(f"symbols ({sym.size}) and indexes ({idx.size}) must have the same size")
    bad = np.flatnonzero((idx < 0) | (idx >= tables.num_rows))
    if bad.size:
        raise _bad_index(idx, int(bad[0]), tables)
    s = sym - tables.offset[idx]
    ns = tables.nsym[idx].astype(np.int64)
    escaped = (s < 0) | (s >= ns)
    s = np.where(escaped, ns, s)
    freq = tables.cdf[idx, s + 1].astype(np.int64) - tables.cdf[idx, s]
    bits = float(sym.size * tables.precision - np.log2(freq).sum())
    lo_gap = (tables.offset[idx].astype(np.int64) - 1 - sym)[escaped]
    hi_gap = (sym - tables.offset[idx] - ns)[escaped]
    raw = np.where(lo_gap >= 0, 2 * lo_gap + 1, 2 * hi_gap)
    nb = np.frexp((raw + 1).astype(np.float64))[1].astype(np.int64) - 1
    return bits + float((2 * nb + 1).sum())
