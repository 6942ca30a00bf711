"""Integer CDF tables: quantised once from float PMFs at export, shipped in the bundle as integers.

Row k codes the integers ``offset[k] + i`` for ``i`` in ``[0, n_k)``, ``n_k = cdf_length[k] - 2``,
plus an ESCAPE symbol at index ``n_k`` for any other int32 value (the value itself then follows as a
bypass code, see `stereodsc.entropy.rans`). ``cdf[k, :cdf_length[k]]`` rises strictly from 0 to
``2**precision`` (every symbol, escape included, has frequency >= 1); entries past
``cdf_length[k]`` repeat ``2**precision``. This is CompressAI's table layout, so its vocabulary
(`_quantized_cdf`, `_cdf_length`, `_offset`) maps one to one.

Encoder and decoder only ever read these integers: nothing is recomputed from floats at run time,
which is what keeps a camera board and a host bit-exact (DESIGN decisions 1 and 2).
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from stereodsc.errors import BitstreamError

from ._kernels import INT32_MAX, INT32_MIN, RANS_L
from .npy import freeze_arrays, parse_npy, write_npz

MAX_PRECISION = 16  # ryg_rans' byte-wise coder needs scale_bits <= 16 with L = 2**23
TABLES_FORMAT_VERSION = 1
MAX_TABLE_FILE_BYTES = 256 * 1024 * 1024
_LUT_BITS = 12  # decoder buckets per row: 16 KiB a row (only the current channel's is hot), ~1 scan step
_NPZ_KEYS = ("format_version", "precision", "cdf", "cdf_length", "offset")


class TableFormatError(BitstreamError):
    """A CDF table file or array set is corrupt, tampered with, or of an unknown format."""


@dataclass(frozen=True, eq=False)
class CdfTables:
    """Validated, read-only integer CDF tables (see the module docstring for the layout).

    Construction validates everything, so the coder kernels can trust the arrays. Compare two
    table sets by `sha256`.
    """

    cdf: np.ndarray  # int32 [K, Lmax + 2]
    cdf_length: np.ndarray  # int32 [K]: valid entries of each cdf row (symbols + escape + 1)
    offset: np.ndarray  # int32 [K]: value of symbol 0 of each row
    precision: int  # frequencies sum to 2**precision

    def __post_init__(self) -> None:
        _validate(self.cdf, self.cdf_length, self.offset, self.precision)
        freeze_arrays(self, ((name, np.int32) for name in ("cdf", "cdf_length", "offset")))

    @property
    def num_rows(self) -> int:
        """Number of distributions K (one per channel for a factorized prior)."""
        return int(self.cdf.shape[0])

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of a canonical encoding (independent of the file's zip metadata)."""
        h = hashlib.sha256(b"stereodsc.cdf_tables.v1\0")
        h.update(np.array([self.precision, *self.cdf.shape], dtype="<i8").tobytes())
        for arr in (self.cdf, self.cdf_length, self.offset):
            h.update(arr.astype("<i4").tobytes())
        return h.hexdigest()

    @cached_property
    def nsym(self) -> np.ndarray:
        """In-range symbols per row (the ESCAPE symbol's index)."""
        return (self.cdf_length - 2).astype(np.int32)

    @cached_property
    def _encoder_table(self) -> np.ndarray:
        """int64 [K, Lmax + 1, 5]: ryg_rans reciprocal entries (x_max, rcp, rcp_shift, bias, cmpl)."""
        m = 1 << self.precision
        start = self.cdf[:, :-1].astype(np.int64)
        freq = np.diff(self.cdf.astype(np.int64), axis=1)
        valid = np.arange(freq.shape[1])[None, :] <= self.nsym[:, None]
        freq = np.where(valid, freq, 1)
        shift = np.zeros_like(freq)
        for b in range(MAX_PRECISION + 1):  # shift = ceil(log2(freq)), in integers
            shift += freq > (1 << b)
        one = freq == 1
        table = np.empty((*freq.shape, 5), dtype=np.int64)
        table[..., 0] = ((RANS_L >> self.precision) << 8) * freq
        table[..., 1] = np.where(one, (1 << 32) - 1, (np.left_shift(np.int64(1), shift + 31) + freq - 1) // freq)
        table[..., 2] = np.where(one, 0, shift - 1)
        table[..., 3] = np.where(one, start + m - 1, start)
        table[..., 4] = m - freq
        table[~valid] = 0
        table.setflags(write=False)
        return table

    @cached_property
    def _decoder_lut(self) -> np.ndarray:
        """int32 [K, 2**min(precision, 12)]: the symbol whose interval holds each bucket's first slot."""
        bits = min(self.precision, _LUT_BITS)
        starts = np.arange(1 << bits, dtype=np.int64) << (self.precision - bits)
        lut = np.empty((self.num_rows, 1 << bits), dtype=np.int32)
        for k in range(self.num_rows):
            row = self.cdf[k, : self.cdf_length[k]]
            lut[k] = np.minimum(np.searchsorted(row, starts, side="right") - 1, self.nsym[k])
        lut.setflags(write=False)
        return lut

    @property
    def _lut_shift(self) -> int:
        """Right shift from a slot to its `_decoder_lut` bucket."""
        return self.precision - min(self.precision, _LUT_BITS)

    def to_npz_bytes(self) -> bytes:
        """An ``.npz`` (`numpy.load` reads it) with fixed zip metadata: equal tables give equal bytes."""
        arrays = {
            "format_version": np.array(TABLES_FORMAT_VERSION),
            "precision": np.array(self.precision),
            "cdf": self.cdf,
            "cdf_length": self.cdf_length,
            "offset": self.offset,
        }
        return write_npz((name, np.asarray(arr, dtype="<i4")) for name, arr in arrays.items())

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> CdfTables:
        """Parse and validate a table file; raise `TableFormatError` on anything unexpected.

        Array headers are checked against the bytes actually present before anything is allocated,
        and pickles are never loaded.
        """
        if len(data) > MAX_TABLE_FILE_BYTES:
            raise TableFormatError(f"CDF table file is {len(data)} bytes, over {MAX_TABLE_FILE_BYTES}")
        arrays: dict[str, np.ndarray] = {}
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                infos = zf.infolist()
                names = sorted(info.filename for info in infos)
                if names != sorted(f"{key}.npy" for key in _NPZ_KEYS):
                    raise TableFormatError(
                        f"CDF table file holds {names}, expected {sorted(_NPZ_KEYS)}: not a stereodsc table"
                    )
                for info in infos:
                    if info.file_size > MAX_TABLE_FILE_BYTES:
                        raise TableFormatError(f"CDF table member {info.filename} declares {info.file_size} bytes")
                    arrays[info.filename[: -len(".npy")]] = parse_npy(
                        zf.read(info), info.filename, np.dtype("<i4"), TableFormatError
                    )
        except TableFormatError:
            raise
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            OSError,
            EOFError,
            ValueError,
            NotImplementedError,
        ) as e:
            raise TableFormatError(f"CDF table file is corrupt ({e}): re-export or re-download the bundle") from e
        for key in ("format_version", "precision"):
            if arrays[key].shape != ():
                raise TableFormatError(f"CDF table field {key} must be a scalar, got shape {arrays[key].shape}")
        version = int(arrays["format_version"])
        if version != TABLES_FORMAT_VERSION:
            raise TableFormatError(
                f"CDF table format v{version}, this stereodsc reads v{TABLES_FORMAT_VERSION}: "
                "use a stereodsc release that matches the bundle"
            )
        return cls(arrays["cdf"], arrays["cdf_length"], arrays["offset"], int(arrays["precision"]))


def _validate(cdf: np.ndarray, cdf_length: np.ndarray, offset: np.ndarray, precision: int) -> None:
    """Check dtypes, shapes and the CDF invariants; the kernels rely on every one of them."""

    def fail(msg: str) -> TableFormatError:
        return TableFormatError(f"invalid CDF tables: {msg}; re-export the bundle")

    for name, arr, ndim in (("cdf", cdf, 2), ("cdf_length", cdf_length, 1), ("offset", offset, 1)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.ndim != ndim:
            got = f"{arr.dtype} {arr.ndim}-D" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise fail(f"{name} must be a {ndim}-D int32 array, got {got}")
    if isinstance(precision, bool) or not isinstance(precision, int) or not 1 <= precision <= MAX_PRECISION:
        raise fail(f"precision must be an int in [1, {MAX_PRECISION}], got {precision!r}")
    k, width = cdf.shape
    if k < 1 or width < 3:
        raise fail(f"cdf has shape {cdf.shape}: need at least one row of one symbol + escape")
    if cdf_length.shape != (k,) or offset.shape != (k,):
        raise fail(f"cdf_length {cdf_length.shape} and offset {offset.shape} must both be ({k},)")
    bad = np.flatnonzero((cdf_length < 3) | (cdf_length > width))
    if bad.size:
        raise fail(f"cdf_length[{bad[0]}] = {cdf_length[bad[0]]} outside [3, {width}]")
    m = 1 << precision
    col = np.arange(width)[None, :]
    inside = col < cdf_length[:, None]
    if (cdf[:, 0] != 0).any():
        raise fail(f"row {np.flatnonzero(cdf[:, 0] != 0)[0]} does not start at 0")
    if (cdf[~inside] != m).any() or (cdf[np.arange(k), cdf_length - 1] != m).any():
        raise fail(f"a row does not end at 2**precision = {m} or its padding differs from it")
    rising = np.diff(cdf.astype(np.int64), axis=1) > 0
    bad_rows = np.flatnonzero((~rising & inside[:, 1:]).any(axis=1))
    if bad_rows.size:
        raise fail(f"row {bad_rows[0]} is not strictly increasing (a symbol with frequency 0)")
    top = offset.astype(np.int64) + cdf_length - 3
    bad = np.flatnonzero(top > INT32_MAX)
    if bad.size:
        raise fail(f"row {bad[0]}: offset + symbols overflow int32")


def build_tables(
    pmf: np.ndarray,
    offset: np.ndarray,
    precision: int = MAX_PRECISION,
    *,
    pmf_length: np.ndarray | None = None,
) -> CdfTables:
    """Quantise float PMFs [K, L] of the integers ``offset[k] + i`` into integer CDF tables.

    A row may sum to less than 1: the remainder is the ESCAPE symbol's mass. Each symbol gets
    ``1 + floor(p * (2**precision - n_symbols))`` plus one unit for the largest fractional parts
    (ties to the lower index), so frequencies sum to exactly ``2**precision`` and none is 0. Pure
    float64 + integer numpy with `math.fsum` row sums: the same inputs give the same tables.
    `pmf_length` (optional, [K]) uses only the first ``pmf_length[k]`` entries of row k.
    """
    p = np.asarray(pmf, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"pmf must be a non-empty [K, L] array, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("pmf must be finite and >= 0")
    k_rows, width = p.shape
    off = np.asarray(offset)
    if off.shape != (k_rows,) or off.dtype.kind not in "iu":
        raise ValueError(f"offset must be an integer array of shape ({k_rows},), got {off.dtype} {off.shape}")
    if pmf_length is None:
        lengths = np.full(k_rows, width, dtype=np.int64)
    else:
        lengths = np.asarray(pmf_length)
        if lengths.shape != (k_rows,) or lengths.dtype.kind not in "iu":
            raise ValueError(f"pmf_length must be an integer array of shape ({k_rows},)")
        lengths = lengths.astype(np.int64)
        if (lengths < 1).any() or (lengths > width).any():
            raise ValueError(f"pmf_length must lie in [1, {width}]")
    if isinstance(precision, bool) or not isinstance(precision, int) or not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be an int in [1, {MAX_PRECISION}], got {precision!r}")
    m = 1 << precision
    if (lengths + 1 > m).any():
        raise ValueError(f"{int(lengths.max())} symbols + escape do not fit 2**{precision}: raise precision")
    off64 = off.astype(np.int64)
    if (off64 < INT32_MIN).any() or (off64 + lengths - 1 > INT32_MAX).any():
        raise ValueError("offset + pmf length must stay within int32")
    cdf = np.full((k_rows, int(lengths.max()) + 2), m, dtype=np.int32)
    for k in range(k_rows):
        n = int(lengths[k])
        row = p[k, :n]
        mass = math.fsum(row.tolist())
        probs = np.append(row, max(0.0, 1.0 - mass))
        freq = _quantise(probs, mass + probs[-1], m)
        cdf[k, 0] = 0
        cdf[k, 1 : n + 2] = np.cumsum(freq)
    return CdfTables(cdf, (lengths + 2).astype(np.int32), off64.astype(np.int32), precision)


def _quantise(probs: np.ndarray, total: float, m: int) -> np.ndarray:
    """Largest-remainder split of ``m`` into ``len(probs)`` integer frequencies, each >= 1."""
    n = probs.size
    scaled = probs / total * (m - n)
    base = np.floor(scaled)
    freq = 1 + base.astype(np.int64)
    remainder = m - int(freq.sum())
    if remainder >= 0:
        freq += remainder // n
        order = np.argsort(-(scaled - base), kind="stable")
        freq[order[: remainder % n]] += 1
    while remainder < 0:  # float rounding overshoot of a unit or two: take from the largest
        freq[int(np.argmax(freq))] -= 1
        remainder += 1
    return freq


def channel_indexes(shape: tuple[int, int, int]) -> np.ndarray:
    """Table row of every symbol of a [C, H, W] latent with one table per channel (factorized prior)."""
    if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0 for d in shape):
        raise ValueError(f"shape must be three non-negative ints (C, H, W), got {shape!r}")
    c, h, w = (int(d) for d in shape)
    return np.repeat(np.arange(c, dtype=np.int32), h * w).reshape(c, h, w)
