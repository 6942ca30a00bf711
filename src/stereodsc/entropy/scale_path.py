"""Bit-exact scale indexes for the hyperprior: h_s evaluated as an integer network (numpy only).

Why: with a scale hyperprior the camera board (to encode y) and the host (to decode it) both
compute ``h_s(z_hat)`` and map every predicted scale to a row of the Gaussian scale table. A float
difference of one ulp between two backends (torch vs onnxruntime, CPU vs GPU, fp16) moves a scale
that sits near a table boundary into the next row, the two sides pick different CDFs and the rANS
stream desynchronises (DESIGN decision 2; notes/deployment_facts.md §2.2). So the scale branch
runs here, on both sides, with integers only (Ballé, Johnston & Minnen, "Integer networks for data
compression with latent-variable models", ICLR 2019, applied post-training):

* Input: the integer ``z_hat`` (int32 [N, h, w]), which both sides hold bit-identically (it is
  transmitted losslessly). No float ever enters.
* Each layer (deconv 5x5/2, deconv 5x5/2, conv 3x3/1, the shapes of `ScaleHyperprior.h_s`) has
  int16 weights and int64 biases, both quantised once at export with a power-of-two scale per
  output channel (`stereodsc.export.scale_path_export`). The accumulator is int64; the
  transposed convolution is a scatter-add of per-tap products, the convolution the same with
  stride 1.
* Between layers: ReLU, then ``(acc + (2**s >> 1)) >> s`` (round half up; ``s`` per channel,
  applied to non-negative values only so the shift is well defined), then saturation to
  ``[0, 2**31 - 1]``: activations are int32.
* The last layer is not rescaled: its int64 output is compared with integer thresholds
  ``T[c, k] = floor(scale_table[k] * 2**E_c)`` computed at export, so ``index = #{k : acc > T[c, k]}``
  equals `GaussianConditional.build_indexes` applied to the exactly dequantised scale.

Exactness: integer addition is associative, so any summation order gives the same sum as long as
nothing overflows. `IntegerScaleNet` refuses (at construction, so also for a loaded file) any
layer where ``A_in * sum|W[c]| + |b[c]| >= 2**62`` (``A_in`` = 2**31 for int32 z, 2**31 - 1 for a
saturated activation): every partial sum then stays below 2**62 and adding the rounding half
(<= 2**61) stays below 2**63, for every int32 input. The products go through float64 GEMM
(BLAS, ~10x faster than numpy's int64 matmul) with every intermediate an integer below 2**53
(splitting the activations into 16-bit limbs when needed), which is exact too: `_exact_matmul`.
A whole layer (GEMM, tap scatter-add, bias, rounding shift, threshold comparison) stays in
float64 when its input's actual peak bounds every sum below 2**53 (`_fits_float64`): trained nets
on real z always do, which halves the scale path's time on a camera board (no int64 round trips).
A layer that could leave that range runs in int64 instead, with the same result.

What it costs: the integer scale differs from the float one by quantisation error (16-bit
weights per output channel; activations kept with 17-24 fractional bits on a trained model), so
a few scales per 10^4, those next to a table boundary, land in the neighbouring row: 99.985% of
the rows equal the float path's and the rate moves by < 1e-5 on held-out frames of the sample
(small preset; measure with `stereodsc.export.scale_path_export.scale_path_parity`). The integer
path is the model from then on: only it must be identical on both sides, and it is.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from stereodsc.errors import BitstreamError

from .npy import freeze_arrays, parse_npy, write_npz

FORMAT_VERSION = 1
WEIGHT_MAX = (1 << 15) - 1  # int16, symmetric: -32768 is refused so |w| <= WEIGHT_MAX
ACT_MAX = (1 << 31) - 1  # activations saturate to int32
Z_MAX_ABS = 1 << 31  # |int32 z| <= 2**31
ACC_LIMIT = 1 << 62  # |partial sums| < 2**62, so + rounding half (<= 2**61) < 2**63
MAX_SHIFT = 62
MAX_FILE_BYTES = 64 * 1024 * 1024
_LIMB = 16
_FLOAT_EXACT = 1 << 53  # float64 holds every integer of magnitude <= 2**53

# (name, dtype) of every array of the file, in the order of the dataclass fields.
_FIELDS = (
    ("w1", "<i2"),
    ("b1", "<i8"),
    ("shift1", "<i4"),
    ("w2", "<i2"),
    ("b2", "<i8"),
    ("shift2", "<i4"),
    ("w3", "<i2"),
    ("b3", "<i8"),
    ("thresholds", "<i8"),
)


class ScalePathFormatError(BitstreamError):
    """An integer scale network (or its file) is corrupt, tampered with, or could overflow."""


@dataclass(frozen=True, eq=False)
class IntegerScaleNet:
    """Integer h_s + scale-table thresholds: ``indexes(z)`` gives the CDF row of every y element.

    Layouts follow torch: ``w1``/``w2`` are ConvTranspose2d weights [in, out, 5, 5] (stride 2,
    padding 2, output padding 1), ``w3`` is a Conv2d weight [M, N, 3, 3] (padding 1). ``shift1``/
    ``shift2`` are the per-output-channel right shifts after layers 1 and 2; ``thresholds``
    [M, levels - 1] are non-decreasing per channel. Construction validates everything (the
    overflow bound included), so `indexes` can trust the arrays. Compare two nets by `sha256`.
    """

    w1: np.ndarray  # int16 [N, N, 5, 5]
    b1: np.ndarray  # int64 [N]
    shift1: np.ndarray  # int32 [N]
    w2: np.ndarray  # int16 [N, N, 5, 5]
    b2: np.ndarray  # int64 [N]
    shift2: np.ndarray  # int32 [N]
    w3: np.ndarray  # int16 [M, N, 3, 3]
    b3: np.ndarray  # int64 [M]
    thresholds: np.ndarray  # int64 [M, levels - 1]

    def __post_init__(self) -> None:
        _validate(self)
        freeze_arrays(self, _FIELDS)

    @property
    def latent_channels(self) -> int:
        """N: channels of z."""
        return int(self.w1.shape[0])

    @property
    def channels(self) -> int:
        """M: channels of y."""
        return int(self.w3.shape[0])

    @property
    def levels(self) -> int:
        """Rows of the scale table (and of the CDF tables the indexes address)."""
        return int(self.thresholds.shape[1]) + 1

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of a canonical encoding (independent of the file's zip metadata)."""
        h = hashlib.sha256(b"stereodsc.integer_scale_net.v1\0")
        for name, dtype in _FIELDS:
            arr = getattr(self, name)
            h.update(np.array([arr.ndim, *arr.shape], dtype="<i8").tobytes())
            h.update(arr.astype(dtype).tobytes())
        return h.hexdigest()

    @cached_property
    def _layers(self) -> tuple[_Layer, _Layer, _Layer]:
        """Per layer: float64 [taps * out, in], row (tap, o) = W[o, :, tap] (exact: |w| < 2**15),
        with the bounds that decide between the float64 and the int64 path."""
        specs = (
            (self.w1.transpose(2, 3, 1, 0), self.b1, self.shift1, 2, (-2, -1, 0, 1, 2)),
            (self.w2.transpose(2, 3, 1, 0), self.b2, self.shift2, 2, (-2, -1, 0, 1, 2)),
            (self.w3.transpose(2, 3, 0, 1), self.b3, None, 1, (1, 0, -1)),
        )
        out = []
        for taps_out_in, bias, shift, stride, offsets in specs:  # [kh, kw, out, in]
            w = taps_out_in.astype(np.int64)
            matrix = np.ascontiguousarray(taps_out_in.reshape(-1, w.shape[3]), dtype=np.float64)
            matrix.setflags(write=False)
            gemm = _GemmWeight(matrix, int(np.abs(w).reshape(-1, w.shape[3]).sum(axis=1).max()))
            kernel_l1 = int(np.abs(w).sum(axis=(0, 1, 3)).max())  # every tap of one output pixel
            half = 0 if shift is None else int(1 << int(shift.max())) >> 1
            out.append(_Layer(gemm, bias, shift, stride, offsets, kernel_l1, int(np.abs(bias).max()) + half))
        return out[0], out[1], out[2]

    @cached_property
    def _float_thresholds(self) -> np.ndarray:
        """The thresholds as float64, clamped to +-2**53: a float64 accumulator below 2**53 in
        magnitude compares with them exactly as its integer does with the int64 thresholds."""
        return np.clip(self.thresholds, -_FLOAT_EXACT, _FLOAT_EXACT).astype(np.float64)

    def indexes(self, z: np.ndarray) -> np.ndarray:
        """Scale-table row (int32 [M, 4h, 4w]) of every y element, from the integer z [N, h, w].

        Only integers are read, so the edge and the host get the same rows on any CPU.
        """
        z = np.asarray(z)
        if z.dtype.kind not in "iu":
            raise TypeError(f"z must be an integer array (the decoded z symbols), got dtype {z.dtype}")
        if z.ndim != 3 or z.shape[0] != self.latent_channels:
            raise ValueError(f"z must have shape [{self.latent_channels}, h, w], got {z.shape}")
        if z.size and (int(z.min()) < -Z_MAX_ABS or int(z.max()) > Z_MAX_ABS - 1):
            raise ValueError("z holds values outside int32")
        a: np.ndarray = z
        for layer in self._layers:
            peak = max(-int(a.min()), int(a.max())) if a.size else 0  # np.abs wraps int32's -2**31
            a = a.astype(np.float64 if _fits_float64(layer, peak) else np.int64, copy=False)
            a = _layer(a, layer)
        thresholds = self._float_thresholds if a.dtype == np.float64 else self.thresholds
        out = np.empty(a.shape, dtype=np.int32)
        for c in range(self.channels):  # side="left": number of thresholds strictly below acc
            out[c] = np.searchsorted(thresholds[c], a[c], side="left")
        return out

    def to_npz_bytes(self) -> bytes:
        """An ``.npz`` (`numpy.load` reads it) with fixed zip metadata: equal nets give equal bytes."""
        arrays = [("format_version", np.array(FORMAT_VERSION, dtype="<i8"))]
        return write_npz(arrays + [(name, getattr(self, name).astype(dtype)) for name, dtype in _FIELDS])

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> IntegerScaleNet:
        """Parse and validate a net file; raise `ScalePathFormatError` on anything unexpected.

        Headers are checked against the bytes present before anything is allocated, pickles are
        never loaded, and the zip CRC-32 of every member is verified on read.
        """
        if len(data) > MAX_FILE_BYTES:
            raise ScalePathFormatError(f"scale-path file is {len(data)} bytes, over {MAX_FILE_BYTES}")
        expected = {"format_version": "<i8", **dict(_FIELDS)}
        arrays: dict[str, np.ndarray] = {}
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                infos = zf.infolist()
                names = sorted(info.filename for info in infos)
                if names != sorted(f"{key}.npy" for key in expected):
                    raise ScalePathFormatError(
                        f"scale-path file holds {names}, expected {sorted(expected)}: not a stereodsc "
                        "integer scale network"
                    )
                for info in infos:
                    if info.file_size > MAX_FILE_BYTES:
                        raise ScalePathFormatError(f"member {info.filename} declares {info.file_size} bytes")
                    key = info.filename[: -len(".npy")]
                    arrays[key] = parse_npy(zf.read(info), info.filename, np.dtype(expected[key]), ScalePathFormatError)
        except ScalePathFormatError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
            msg = f"scale-path file is corrupt ({e}): re-export or re-download the bundle"
            raise ScalePathFormatError(msg) from e
        version = arrays.pop("format_version")
        if version.shape != () or int(version) != FORMAT_VERSION:
            raise ScalePathFormatError(
                f"scale-path format {version.tolist()}, this stereodsc reads v{FORMAT_VERSION}: "
                "use a stereodsc release that matches the bundle"
            )
        return cls(**arrays)


class _GemmWeight(NamedTuple):
    matrix: np.ndarray  # float64 [P, K] holding int16 values
    row_l1: int  # max_p sum_k |matrix[p, k]|


class _Layer(NamedTuple):
    """One layer of the net: its GEMM weights, bias, rounding shift (None: the last layer) and geometry."""

    gemm: _GemmWeight
    bias: np.ndarray  # int64 [out]
    shift: np.ndarray | None  # int32 [out]: requantise after the layer; None: compare with thresholds
    stride: int
    offsets: tuple[int, ...]
    kernel_l1: int  # max_o sum over every tap and input channel of |W|
    addend: int  # max |bias| + the largest rounding half: what is added on top of the products


def _fits_float64(layer: _Layer, peak: int) -> bool:
    """Whether every sum of the layer stays an integer of magnitude <= 2**53 for inputs with
    max|a| = `peak`: each partial sum of the GEMM, of the tap scatter, + bias, + rounding half is
    bounded by ``peak * kernel_l1 + addend``. Then float64 computes every one of them exactly, in
    any order (Python ints here: no overflow)."""
    return peak * layer.kernel_l1 + layer.addend <= _FLOAT_EXACT


def _exact_matmul(w: _GemmWeight, a: np.ndarray) -> np.ndarray:
    """Exact int64 ``w @ a`` through float64 GEMM (BLAS), for int64 a [K, n] within int32.

    Float64 holds every integer of magnitude <= 2**53, so when every product and partial sum is
    such an integer each operation is exact and the result does not depend on the order, blocking,
    threads or FMA the BLAS uses. Partial sums are bounded by ``row_l1 * max|a|``: when that is
    <= 2**53 one GEMM does it (z, and activations of most nets). Otherwise a = hi * 2**16 + lo with
    lo in [0, 2**16), |hi| <= 2**15: each limb's partial sums are <= row_l1 * 2**16 < 2**53,
    because the overflow bound gives row_l1 <= 2**31 + 1; recombining in int64 is exact too
    (|hi part| * 2**16 <= row_l1 * 2**31 < 2**63).
    """
    peak = int(np.abs(a).max()) if a.size else 0
    if peak * w.row_l1 <= 1 << 53:
        return (w.matrix @ a.astype(np.float64)).astype(np.int64)
    hi, lo = np.divmod(a, 1 << _LIMB)  # floor semantics: defined for negative z, unlike a signed >>
    out = (w.matrix @ lo.astype(np.float64)).astype(np.int64)
    out += (w.matrix @ hi.astype(np.float64)).astype(np.int64) * (1 << _LIMB)
    return out


def _layer(a: np.ndarray, layer: _Layer) -> np.ndarray:
    """One (transposed) convolution as a scatter-add of per-tap products, + bias, then (but for the
    last layer) the requantisation; in the dtype of `a`: int64, or float64 where `_fits_float64`.

    Input pixel (y, x) seen through kernel tap (i, j) lands on output pixel
    ``(stride * y + offsets[i], stride * x + offsets[j])``; pixels outside the output are dropped.
    Transposed conv 5x5/2, padding 2: offset k - 2. Conv 3x3/1, padding 1: offset 1 - k.
    """
    c_in, h, wd = a.shape
    stride, offsets = layer.stride, layer.offsets
    k = len(offsets)
    c_out = layer.bias.shape[0]
    flat = a.reshape(c_in, h * wd)
    products = layer.gemm.matrix @ flat if a.dtype == np.float64 else _exact_matmul(layer.gemm, flat)
    taps = products.reshape(k, k, c_out, h, wd)
    pad = max(abs(o) for o in offsets)
    buf = np.zeros((c_out, stride * h + 2 * pad, stride * wd + 2 * pad), dtype=a.dtype)
    for i, oy in enumerate(offsets):
        rows = slice(pad + oy, pad + oy + stride * h, stride)
        for j, ox in enumerate(offsets):
            buf[:, rows, pad + ox : pad + ox + stride * wd : stride] += taps[i, j]
    acc = buf[:, pad : pad + stride * h, pad : pad + stride * wd] + layer.bias.astype(a.dtype)[:, None, None]
    return acc if layer.shift is None else _requantise(acc, layer.shift)


def _requantise(acc: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """ReLU, then round-half-up right shift per channel, then saturation to int32. In float64 (on
    integers below 2**53) the shift is a floor of an exact division by a power of two."""
    if acc.dtype == np.float64:
        s = shift.astype(np.float64)[:, None, None]
        return np.minimum(np.floor((np.maximum(acc, 0) + np.floor(np.exp2(s - 1))) * np.exp2(-s)), ACT_MAX)
    s64 = shift.astype(np.int64)[:, None, None]
    half = (np.int64(1) << s64) >> 1
    return np.minimum((np.maximum(acc, 0) + half) >> s64, ACT_MAX)


def _validate(net: IntegerScaleNet) -> None:
    """Check dtypes, shapes, ranges, threshold order and the int64 overflow bound of every layer."""

    def fail(msg: str) -> ScalePathFormatError:
        return ScalePathFormatError(f"invalid integer scale network: {msg}; re-export the bundle")

    ndims = {"w1": 4, "w2": 4, "w3": 4, "thresholds": 2}
    for name, dtype in _FIELDS:
        arr = getattr(net, name)
        want = np.dtype(dtype)
        if not isinstance(arr, np.ndarray) or arr.dtype.newbyteorder("<") != want:
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise fail(f"{name} must be a {want.name} array, got {got}")
        if arr.ndim != ndims.get(name, 1):
            raise fail(f"{name} must be {ndims.get(name, 1)}-D, got shape {arr.shape}")
    n, m = net.w1.shape[0], net.w3.shape[0]
    shapes = {
        "w1": (n, n, 5, 5),
        "b1": (n,),
        "shift1": (n,),
        "w2": (n, n, 5, 5),
        "b2": (n,),
        "shift2": (n,),
        "w3": (m, n, 3, 3),
        "b3": (m,),
    }
    for name, shape in shapes.items():
        if getattr(net, name).shape != shape or 0 in shape:
            raise fail(f"{name} has shape {getattr(net, name).shape}, expected {shape} (N={n}, M={m})")
    if net.thresholds.shape[0] != m or net.thresholds.shape[1] < 1:
        raise fail(f"thresholds has shape {net.thresholds.shape}, expected ({m}, levels - 1 >= 1)")
    for name in ("w1", "w2", "w3"):
        if int(np.abs(getattr(net, name).astype(np.int64)).max()) > WEIGHT_MAX:
            raise fail(f"{name} holds -32768; weights must lie in [-{WEIGHT_MAX}, {WEIGHT_MAX}]")
    for name in ("shift1", "shift2"):
        s = getattr(net, name)
        if (s < 0).any() or (s > MAX_SHIFT).any():
            raise fail(f"{name} must lie in [0, {MAX_SHIFT}]")
    if (np.diff(net.thresholds, axis=1) < 0).any():
        raise fail("thresholds must be non-decreasing along each row")
    for name, w, b, a_max in (
        ("layer 1", net.w1.transpose(1, 0, 2, 3), net.b1, Z_MAX_ABS),
        ("layer 2", net.w2.transpose(1, 0, 2, 3), net.b2, ACT_MAX),
        ("layer 3", net.w3, net.b3, ACT_MAX),
    ):
        l1 = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1)  # < 2**16 * 5**2 * 2**15
        for c, (s, bias) in enumerate(zip(l1.tolist(), b.tolist(), strict=True)):
            if a_max * s + abs(bias) >= ACC_LIMIT:  # Python ints: exact
                raise fail(
                    f"{name} channel {c} could overflow int64 (max|input| {a_max} * sum|w| {s} + |bias| "
                    f"{abs(bias)} >= 2**62): export it with fewer weight bits"
                )
