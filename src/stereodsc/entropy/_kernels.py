"""numba rANS kernels: 32-bit state in [2**23, 2**31), byte-wise renormalisation (ryg_rans layout).

The kernels never raise: they return a status code and a position, and `rans.py` turns them into
typed exceptions (numba cannot raise rich exceptions from compiled code). All arithmetic is int64 (numba's
type for Python ints) so nothing overflows: the state stays below 2**31 and the reciprocal below 2**32.

Stream layout: the 4-byte final encoder state (little-endian) followed by the renormalisation bytes,
in the order the decoder consumes them. An escaped value follows its ESCAPE symbol as Exp-Golomb
bits through the same stream: a unary length prefix (``nb`` zero bits, then a one bit), then the
``nb`` low bits of ``raw + 1`` in chunks of up to 16 bits, least significant chunk first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numba
import numpy as np
from numba import njit

from stereodsc.errors import ConfigError
from stereodsc.runtime.cache import cache_dir, ensure_writable


def _use_a_writable_numba_cache() -> None:
    """numba caches compiled kernels next to their source (site-packages: read-only for a service
    user) or under the home folder; with neither writable the first encode crashed ("cannot cache
    function: no locator available"). Unless NUMBA_CACHE_DIR chose a folder, use stereodsc's cache
    folder (systemd's CacheDirectory=), or a private temporary one when that is not writable either.
    Runs before the kernels below are decorated: numba picks the folder then."""
    if numba.config.CACHE_DIR:  # type: ignore[attr-defined]
        return
    folder = cache_dir("numba")
    try:
        ensure_writable(folder, "numba cache")
    except ConfigError:
        folder = Path(tempfile.gettempdir()) / f"stereodsc-numba-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
    numba.config.CACHE_DIR = str(folder)  # type: ignore[attr-defined]


_use_a_writable_numba_cache()

RANS_L = 1 << 23  # lower bound of the normalised state interval [RANS_L, RANS_UPPER)
RANS_UPPER = 1 << 31
ESCAPE_MAX_PREFIX = 33  # raw < 2**33 for any int32 value and any int32 row range
ESCAPE_MAX_BYTES = 48  # bound on the bytes one escaped symbol can emit (2 + 34 + 5, rounded up)
BYPASS_CHUNK = 16  # bits per bypass put: keeps x << nbits below 2**31
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

OK = 0
BAD_INDEX = 1
UNDERRUN = 2
BAD_INITIAL_STATE = 3
BAD_FINAL_STATE = 4
TRAILING_BYTES = 5
BAD_ESCAPE = 6


@njit(cache=True)
def _put_bits(x: int, buf: np.ndarray, ptr: int, value: int, nbits: int) -> tuple[int, int]:
    """Push `nbits` uniform bits (frequency 1 of 2**nbits): the bypass code."""
    x_max = 1 << (31 - nbits)
    while x >= x_max:
        ptr -= 1
        buf[ptr] = x & 0xFF
        x >>= 8
    return (x << nbits) | value, ptr


@njit(cache=True)
def _put_escape(x: int, buf: np.ndarray, ptr: int, raw: int) -> tuple[int, int]:
    """Push Exp-Golomb(raw) in the reverse of the order `decode_kernel` pops it."""
    nb = 0
    t = raw + 1
    while t > 1:
        t >>= 1
        nb += 1
    rest = raw + 1 - (1 << nb)
    for c in range((nb + BYPASS_CHUNK - 1) // BYPASS_CHUNK - 1, -1, -1):
        width = min(BYPASS_CHUNK, nb - BYPASS_CHUNK * c)
        chunk = (rest >> (BYPASS_CHUNK * c)) & ((1 << width) - 1)
        x, ptr = _put_bits(x, buf, ptr, chunk, width)
    x, ptr = _put_bits(x, buf, ptr, 1, 1)
    for _ in range(nb):
        x, ptr = _put_bits(x, buf, ptr, 0, 1)
    return x, ptr


@njit(cache=True)
def encode_kernel(
    symbols: np.ndarray,
    indexes: np.ndarray,
    nsym: np.ndarray,
    offset: np.ndarray,
    enc: np.ndarray,
) -> tuple[int, int, np.ndarray, int]:
    """Encode in reverse; return (status, bad position, buffer, start of the stream in the buffer).

    `enc[k, s]` holds ryg_rans' reciprocal encoder entry (x_max, rcp_freq, rcp_shift, bias,
    cmpl_freq) so the hot loop has no division.
    """
    n = symbols.size
    n_rows = nsym.size
    n_escape = 0
    for i in range(n):
        k = indexes[i]
        if k < 0 or k >= n_rows:
            return BAD_INDEX, i, np.empty(0, np.uint8), 0
        s = symbols[i] - offset[k]  # int32 operands promote to int64 in numba
        if s < 0 or s >= nsym[k]:
            n_escape += 1
    cap = 2 * n + ESCAPE_MAX_BYTES * n_escape + 4
    buf = np.empty(cap, np.uint8)
    ptr = cap
    x = RANS_L
    for j in range(n - 1, -1, -1):
        k = indexes[j]
        ns = nsym[k]
        s = symbols[j] - offset[k]
        if s < 0 or s >= ns:
            raw = 2 * (-s - 1) + 1 if s < 0 else 2 * (s - ns)
            x, ptr = _put_escape(x, buf, ptr, raw)
            s = ns
        x_max = enc[k, s, 0]
        while x >= x_max:
            ptr -= 1
            buf[ptr] = x & 0xFF
            x >>= 8
        q = ((x * enc[k, s, 1]) >> 32) >> enc[k, s, 2]
        x = x + enc[k, s, 3] + q * enc[k, s, 4]
    ptr -= 4
    for b in range(4):
        buf[ptr + b] = (x >> (8 * b)) & 0xFF
    return OK, 0, buf, ptr


@njit(cache=True)
def _pop_bits(x: int, data: np.ndarray, pos: int, nbits: int) -> tuple[int, int, int, bool]:
    """Pop `nbits` bypass bits; returns (value, x, pos, ok) with ok False on a stream underrun."""
    value = x & ((1 << nbits) - 1)
    x >>= nbits
    while x < RANS_L:
        if pos >= data.size:
            return value, x, pos, False
        x = (x << 8) | data[pos]
        pos += 1
    return value, x, pos, True


@njit(cache=True)
def decode_kernel(
    data: np.ndarray,
    indexes: np.ndarray,
    out: np.ndarray,
    cdf: np.ndarray,
    nsym: np.ndarray,
    offset: np.ndarray,
    lut: np.ndarray,
    lut_shift: int,
    precision: int,
) -> tuple[int, int]:
    """Decode into `out`; return (status, symbol position or unread byte count). Reads are bounds-checked.

    `lut[k, slot >> lut_shift]` is the symbol at the start of that bucket; a short forward scan
    finds the symbol whose interval holds `slot` (at most `nsym[k]`, so the scan stays in the row).
    """
    n = indexes.size
    n_rows = nsym.size
    size = data.size
    if size < 4:
        return UNDERRUN, 0
    x = 0
    for b in range(4):
        x |= (data[b] & 0xFF) << (8 * b)  # & 0xFF types the byte as int64, not uint64
    if x < RANS_L or x >= RANS_UPPER:
        return BAD_INITIAL_STATE, 0
    pos = 4
    mask = (1 << precision) - 1
    for i in range(n):
        k = indexes[i]
        if k < 0 or k >= n_rows:
            return BAD_INDEX, i
        ns = nsym[k]
        slot = x & mask
        s = lut[k, slot >> lut_shift]
        while s < ns and cdf[k, s + 1] <= slot:
            s += 1
        start = cdf[k, s]
        x = (cdf[k, s + 1] - start) * (x >> precision) + slot - start
        while x < RANS_L:
            if pos >= size:
                return UNDERRUN, i
            x = (x << 8) | data[pos]
            pos += 1
        if s < ns:
            out[i] = offset[k] + s
            continue
        nb = 0
        while True:
            bit, x, pos, ok = _pop_bits(x, data, pos, 1)
            if not ok:
                return UNDERRUN, i
            if bit:
                break
            nb += 1
            if nb > ESCAPE_MAX_PREFIX:
                return BAD_ESCAPE, i
        rest = 0
        done = 0
        while done < nb:
            width = min(BYPASS_CHUNK, nb - done)
            chunk, x, pos, ok = _pop_bits(x, data, pos, width)
            if not ok:
                return UNDERRUN, i
            rest |= chunk << done
            done += width
        raw = (1 << nb) + rest - 1
        value = offset[k] - 1 - (raw >> 1) if raw & 1 else offset[k] + ns + (raw >> 1)
        if value < INT32_MIN or value > INT32_MAX:
            return BAD_ESCAPE, i
        out[i] = value
    if x != RANS_L:
        return BAD_FINAL_STATE, n
    if pos != size:
        return TRAILING_BYTES, size - pos
    return OK, n
