"""Integer CDF tables and the numba rANS coder: exact round trips, sizes, and hostile payloads."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stereodsc.entropy import (
    CdfTables,
    CorruptPayloadError,
    TableFormatError,
    build_tables,
    channel_indexes,
    decode,
    encode,
    ideal_bits,
)
from stereodsc.errors import BitstreamError

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def laplace_tables(channels: int = 16, half: int = 20, precision: int = 16) -> tuple[CdfTables, np.ndarray]:
    """Discretised Laplace of varying scale per channel, truncated to +-half (tails go to escape)."""
    x = np.arange(-half, half + 1)[None, :]
    scales = np.geomspace(0.2, 6.0, channels)[:, None]
    pmf = laplace_cdf(x + 0.5, scales) - laplace_cdf(x - 0.5, scales)
    return build_tables(pmf, np.full(channels, -half), precision), scales[:, 0]


def laplace_cdf(t: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(t < 0, 0.5 * np.exp(np.minimum(t, 0) / b), 1 - 0.5 * np.exp(-np.maximum(t, 0) / b))


def round_trip(symbols: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> bytes:
    data = encode(symbols, indexes, tables)
    out = decode(data, indexes, tables)
    assert out.dtype == np.int32 and out.shape == np.shape(indexes)
    np.testing.assert_array_equal(out, symbols)
    return data


def freqs(tables: CdfTables) -> list[np.ndarray]:
    return [np.diff(tables.cdf[k, : tables.cdf_length[k]]) for k in range(tables.num_rows)]


# --- tables -------------------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_table_frequencies_sum_exactly_and_are_positive(data: st.DataObject) -> None:
    k, width = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 30))
    precision = data.draw(st.integers(6, 16))
    p = np.array(data.draw(st.lists(st.floats(0, 1), min_size=k * width, max_size=k * width))).reshape(k, width)
    p /= max(1.0, float(p.sum(axis=1).max()))  # rows sum to <= 1 (the rest is escape mass)
    tables = build_tables(p, np.arange(k) - 3, precision)
    for row, f in enumerate(freqs(tables)):
        assert f.sum() == 2**precision and (f >= 1).all()
        assert f.size == width + 1  # symbols + escape
        assert (tables.cdf[row, tables.cdf_length[row] :] == 2**precision).all()
    again = build_tables(p, np.arange(k) - 3, precision)
    assert np.array_equal(again.cdf, tables.cdf) and again.sha256 == tables.sha256


def test_quantisation_follows_the_pmf_and_escape_mass() -> None:
    tables = build_tables(np.array([[0.5, 0.25, 0.15]]), np.array([0]), precision=10)
    f = freqs(tables)[0]
    assert f.sum() == 1024 and abs(f[0] - 512) <= 2 and abs(f[1] - 256) <= 2 and abs(f[3] - 102) <= 2
    # A row summing to 1 still gets an escape of frequency 1, and an all-zero row is all escape.
    f1, f0 = freqs(build_tables(np.array([[0.5, 0.5], [0.0, 0.0]]), np.array([0, 0]), precision=8))
    assert f1.tolist() == [128, 127, 1] and f0.tolist() == [1, 1, 254]


def test_pmf_length_gives_rows_of_different_sizes() -> None:
    pmf = np.array([[0.2, 0.6, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    tables = build_tables(pmf, np.array([-1, -2]), pmf_length=np.array([3, 4]))
    assert tables.cdf_length.tolist() == [5, 6] and tables.cdf.shape == (2, 6)
    sym = np.array([-1, 0, 1, 2, -2, -1, 0, 1, 5, -9], dtype=np.int32)
    round_trip(sym, np.array([0] * 4 + [1] * 6, dtype=np.int32), tables)


@pytest.mark.parametrize(
    ("pmf", "offset", "precision", "match"),
    [
        (np.array([[0.5, np.nan]]), np.array([0]), 16, "finite"),
        (np.array([[0.5, -0.1]]), np.array([0]), 16, "finite and >= 0"),
        (np.array([0.5, 0.5]), np.array([0]), 16, r"\[K, L\]"),
        (np.array([[0.5, 0.5]]), np.array([0, 1]), 16, "offset"),
        (np.array([[0.5, 0.5]]), np.array([0.0]), 16, "offset"),
        (np.ones((1, 8)) / 8, np.array([0]), 3, "raise precision"),
        (np.array([[0.5, 0.5]]), np.array([0]), 17, "precision"),
        (np.array([[0.5, 0.5]]), np.array([I32_MAX]), 16, "int32"),
    ],
)
def test_build_tables_rejects_bad_input(pmf: np.ndarray, offset: np.ndarray, precision: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_tables(pmf, offset, precision)


def test_table_serialisation_round_trip_is_deterministic() -> None:
    tables, _ = laplace_tables(channels=4)
    blob = tables.to_npz_bytes()
    back = CdfTables.from_npz_bytes(blob)
    assert back.sha256 == tables.sha256 and back.precision == tables.precision
    assert np.array_equal(back.cdf, tables.cdf) and back.to_npz_bytes() == blob
    with np.load(io.BytesIO(blob)) as npz:  # an ordinary .npz for anyone inspecting a bundle
        assert np.array_equal(npz["cdf"], tables.cdf)
    assert not back.cdf.flags.writeable  # validated arrays cannot be changed behind the coder's back


def rewrite_npz(blob: bytes, **changes: np.ndarray | None) -> bytes:
    with np.load(io.BytesIO(blob)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    out = io.BytesIO()
    np.savez(out, **{k: v for k, v in arrays.items() if v is not None})
    return out.getvalue()


def test_tampered_table_files_are_rejected() -> None:
    tables, _ = laplace_tables(channels=3)
    blob = tables.to_npz_bytes()
    cdf = tables.cdf.copy()
    cdf[1, 3] = cdf[1, 2]  # a symbol of frequency 0
    cases = {
        "zero frequency": rewrite_npz(blob, cdf=cdf),
        "not ending at 2**precision": rewrite_npz(blob, precision=np.array(15, dtype=np.int32)),
        "int64 arrays": rewrite_npz(blob, offset=tables.offset.astype(np.int64)),
        "length beyond the row": rewrite_npz(blob, cdf_length=np.full(3, 99, dtype=np.int32)),
        "unknown version": rewrite_npz(blob, format_version=np.array(2, dtype=np.int32)),
        "missing key": rewrite_npz(blob, offset=None),
        "object array": rewrite_npz(blob, offset=np.array([1, "a", None], dtype=object)),
        "flipped byte": blob[:300] + bytes([blob[300] ^ 1]) + blob[301:],
        "truncated": blob[: len(blob) // 2],
        "not a zip": b"hello",
    }
    for name, bad in cases.items():
        with pytest.raises(TableFormatError):
            CdfTables.from_npz_bytes(bad)
            pytest.fail(name)
    assert issubclass(TableFormatError, BitstreamError)


def test_npy_header_claiming_more_data_than_present_is_rejected_before_allocation() -> None:
    blob = laplace_tables(channels=2)[0].to_npz_bytes()
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge, {"descr": "<i4", "fortran_order": False, "shape": (10**12, 43)})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            dst.writestr(info.filename, huge.getvalue() + bytes(8) if info.filename == "cdf.npy" else raw)
    with pytest.raises(TableFormatError, match="header says shape"):
        CdfTables.from_npz_bytes(out.getvalue())


def test_constructor_validates_arrays() -> None:
    good, _ = laplace_tables(channels=2)
    with pytest.raises(TableFormatError, match="int32"):
        CdfTables(good.cdf.astype(np.int64), good.cdf_length, good.offset, 16)
    with pytest.raises(TableFormatError, match="precision"):
        CdfTables(good.cdf, good.cdf_length, good.offset, 0)
    with pytest.raises(TableFormatError, match="start at 0"):
        CdfTables(good.cdf + 1, good.cdf_length, good.offset, 16)


def test_channel_indexes() -> None:
    idx = channel_indexes((3, 2, 4))
    assert idx.shape == (3, 2, 4) and idx.dtype == np.int32
    assert idx[:, 0, 0].tolist() == [0, 1, 2] and (idx[1] == 1).all()
    assert channel_indexes((0, 5, 5)).size == 0
    with pytest.raises(ValueError):
        channel_indexes((3, -1, 4))


# --- coder --------------------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_round_trip_random_tables(data: st.DataObject) -> None:
    k = data.draw(st.integers(1, 4))
    width = data.draw(st.integers(1, 24))
    precision = data.draw(st.integers(max(1, int(np.ceil(np.log2(width + 1)))), 16))
    pmf = np.array(data.draw(st.lists(st.floats(0, 1), min_size=k * width, max_size=k * width))).reshape(k, width)
    pmf /= max(1.0, float(pmf.sum(axis=1).max()))
    offset = np.array(data.draw(st.lists(st.integers(-1000, 1000), min_size=k, max_size=k)))
    tables = build_tables(pmf, offset, precision)
    n = data.draw(st.integers(0, 300))
    idx = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int32)
    near = st.integers(-1030, 1030)
    value = st.one_of(near, near, near, st.integers(I32_MIN, I32_MAX))
    sym = np.array(data.draw(st.lists(value, min_size=n, max_size=n)), dtype=np.int32)
    payload = round_trip(sym, idx, tables)
    assert len(payload) <= ideal_bits(sym, idx, tables) / 8 + 8


def test_empty_and_single_symbol() -> None:
    tables, _ = laplace_tables(channels=2)
    empty = np.zeros(0, dtype=np.int32)
    assert len(round_trip(empty, empty, tables)) == 4  # just the final state
    for value in (0, 7, -20, 20, 21, -21, I32_MAX, I32_MIN):
        round_trip(np.array([value], dtype=np.int32), np.array([1], dtype=np.int32), tables)


def test_escapes_of_extreme_values_in_both_directions() -> None:
    tables = build_tables(np.array([[0.3, 0.4, 0.3], [1.0, 0.0, 0.0]]), np.array([I32_MAX - 2, I32_MIN]), 16)
    values = [I32_MIN, I32_MIN + 1, -1, 0, 1, 10**9, -(10**9), I32_MAX - 3, I32_MAX - 2, I32_MAX]
    sym = np.array(values * 2, dtype=np.int32)
    idx = np.repeat(np.array([0, 1], dtype=np.int32), len(values))
    payload = round_trip(sym, idx, tables)
    assert len(payload) <= ideal_bits(sym, idx, tables) / 8 + 8
    # Middle-of-range tables too: offsets near 0, values at both int32 extremes.
    mid, _ = laplace_tables(channels=1)
    extremes = np.array([I32_MIN, I32_MAX] * 50, dtype=np.int32)
    round_trip(extremes, np.zeros(100, dtype=np.int32), mid)


def test_rarest_symbol_of_probability_one_in_65536() -> None:
    tables = build_tables(np.array([[1.0 - 2**-16, 0.0]]), np.array([0]), 16)
    f = freqs(tables)[0]
    assert f[1] == 1 and f.sum() == 2**16
    sym = np.tile(np.array([1, 0, 1, 2, 1, -5], dtype=np.int32), 2000)  # freq-1 symbol and escapes
    payload = round_trip(sym, np.zeros(sym.size, dtype=np.int32), tables)
    assert len(payload) <= ideal_bits(sym, np.zeros(sym.size, dtype=np.int32), tables) / 8 + 8


def test_all_mass_on_one_symbol_and_very_long_runs() -> None:
    tables = build_tables(np.array([[0.0, 1.0, 0.0]]), np.array([-1]), 16)
    n = 2_000_000
    run = np.zeros(n, dtype=np.int32)
    idx = np.zeros(n, dtype=np.int32)
    payload = round_trip(run, idx, tables)
    assert len(payload) <= ideal_bits(run, idx, tables) / 8 + 8 < 100
    run[n // 2] = 1  # one improbable symbol in the middle of the run
    round_trip(run, idx, tables)


def test_size_within_a_tenth_of_a_percent_of_ideal() -> None:
    tables, scales = laplace_tables(channels=32, half=30)
    rng = np.random.default_rng(0)
    shape = (32, 32, 64)
    sym = np.round(rng.laplace(0.0, scales[:, None, None], shape)).astype(np.int32)
    idx = channel_indexes(shape)
    payload = round_trip(sym, idx, tables)
    ideal = ideal_bits(sym, idx, tables) / 8
    assert ideal <= len(payload) <= ideal * 1.001 + 8


def test_input_types_and_shapes() -> None:
    tables, _ = laplace_tables(channels=2)
    idx = channel_indexes((2, 3, 4))
    sym = np.arange(24).reshape(2, 3, 4) - 12
    assert decode(encode(sym.astype(np.int64), idx, tables), idx, tables).tolist() == sym.tolist()
    assert encode(sym.astype(np.int16), idx.astype(np.uint8), tables) == encode(sym, idx, tables)
    with pytest.raises(ValueError, match="outside int32"):
        encode(np.array([2**31]), np.array([0]), tables)
    with pytest.raises(TypeError, match="integer"):
        encode(np.array([0.5]), np.array([0]), tables)
    with pytest.raises(ValueError, match="same shape"):
        encode(sym, idx[:1], tables)
    for bad in (2, -1):
        with pytest.raises(ValueError, match="table row"):
            encode(np.zeros(3, np.int32), np.array([0, bad, 0], dtype=np.int32), tables)
        with pytest.raises(ValueError, match="table row"):
            decode(encode(np.zeros(3, np.int32), np.zeros(3, np.int32), tables), np.array([0, bad, 0]), tables)
        with pytest.raises(ValueError, match="table row"):
            ideal_bits(np.zeros(1, np.int32), np.array([bad]), tables)


# --- hostile payloads ---------------------------------------------------------------------------


def decode_or_bitstream_error(data: bytes, idx: np.ndarray, tables: CdfTables) -> None:
    try:
        out = decode(data, idx, tables)
    except BitstreamError:
        return
    assert out.shape == idx.shape


@pytest.fixture(scope="module")
def small_stream() -> tuple[bytes, np.ndarray, CdfTables]:
    tables, scales = laplace_tables(channels=4, half=6)
    rng = np.random.default_rng(1)
    sym = np.round(rng.laplace(0.0, 3 * scales[:, None], (4, 60))).astype(np.int32)  # many escapes
    idx = channel_indexes((4, 1, 60)).reshape(4, 60)
    return round_trip(sym, idx, tables), idx, tables


def test_every_truncation_raises(small_stream: tuple[bytes, np.ndarray, CdfTables]) -> None:
    data, idx, tables = small_stream
    for cut in range(len(data)):
        with pytest.raises(CorruptPayloadError):
            decode(data[:cut], idx, tables)
    with pytest.raises(CorruptPayloadError, match="left unread"):
        decode(data + b"\0", idx, tables)


def test_bit_flips_never_crash(small_stream: tuple[bytes, np.ndarray, CdfTables]) -> None:
    data, idx, tables = small_stream
    detected = 0
    for bit in range(8 * len(data)):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            decode(bytes(bad), idx, tables)
        except CorruptPayloadError:
            detected += 1
    assert detected > 4 * len(data)  # most flips are caught by the final-state and length checks


@FAST
@given(junk=st.binary(max_size=200), n=st.integers(0, 500))
def test_random_bytes_never_crash(junk: bytes, n: int) -> None:
    tables = build_tables(np.array([[0.1] * 5, [0.9, 0.0, 0.0, 0.0, 0.0]]), np.array([-2, -2]), 16)
    decode_or_bitstream_error(junk, np.arange(n, dtype=np.int32) % 2, tables)


def test_escape_flood_cannot_run_away() -> None:
    # An all-zero stream after a valid state decodes escapes whose unary prefixes never end.
    tables = build_tables(np.array([[0.0]]), np.array([0]), 2)  # cdf [0, 1, 4]: slot 3 is the escape
    data = (2**23 + 3).to_bytes(4, "little") + bytes(1000)
    with pytest.raises(CorruptPayloadError):
        decode(data, np.zeros(10_000, dtype=np.int32), tables)


def test_payload_is_only_valid_with_the_same_tables() -> None:
    a, _ = laplace_tables(channels=2, half=5)
    b, _ = laplace_tables(channels=2, half=9)
    sym = np.arange(-4, 5, dtype=np.int32).repeat(20)
    idx = np.zeros(sym.size, dtype=np.int32)
    try:
        out = decode(encode(sym, idx, a), idx, b)
    except CorruptPayloadError:
        return
    assert not np.array_equal(out, sym)


def test_kernels_stay_in_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recompile the kernels with numba's bounds checking: any out-of-range access raises IndexError."""
    from numba import njit

    from stereodsc.entropy import _kernels as K

    for name in ("_put_bits", "_put_escape", "_pop_bits", "encode_kernel", "decode_kernel"):
        monkeypatch.setattr(K, name, njit(boundscheck=True)(getattr(K, name).py_func))
    rng = np.random.default_rng(2)
    worst = build_tables(np.array([[1.0, 0.0]]), np.array([0]), 16)  # freq-1 symbol, freq-1 escape
    cases = [
        (worst, np.array([1, I32_MIN, I32_MAX, -1, 2] * 40, dtype=np.int32)),  # worst-case bytes per symbol
        (laplace_tables(channels=3, half=4)[0], rng.integers(-40, 40, 300).astype(np.int32)),
    ]
    for tables, sym in cases:
        idx = (np.arange(sym.size) % tables.num_rows).astype(np.int32)
        data = encode(sym, idx, tables)
        np.testing.assert_array_equal(decode(data, idx, tables), sym)
        for _ in range(300):
            bad = bytearray(data[: rng.integers(0, len(data) + 1)])
            if bad:
                bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
            decode_or_bitstream_error(bytes(bad) + rng.bytes(int(rng.integers(0, 3))), idx, tables)
        decode_or_bitstream_error(rng.bytes(64), idx, tables)
