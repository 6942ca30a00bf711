"""Bit-exact scale indexes (integer h_s): determinism across backends, agreement with the float path,
no int64 overflow at the extremes, and the file format.

Models are tiny (N=16, M=24, z 4x6) so the module runs in seconds on 2 shared cores. A random-init
h_s puts every scale at the table's lower bound, which would make the float/integer comparison
trivially equal, so its last conv is rescaled to spread the scales over the table as a trained
model's are (rows 0..35 here, 0..43 for the small preset after 3000 steps on the sample).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import zipfile
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from stereodsc.entropy import (
    CdfTables,
    CorruptPayloadError,
    IntegerScaleNet,
    build_tables,
    channel_indexes,
    decode,
    encode,
)
from stereodsc.entropy.scale_path import (
    ACC_LIMIT,
    ACT_MAX,
    WEIGHT_MAX,
    Z_MAX_ABS,
    ScalePathFormatError,
    _exact_matmul,
    _fits_float64,
    _GemmWeight,
)
from stereodsc.export.scale_path_export import float_indexes, scale_path_from_torch, scale_path_parity
from stereodsc.models.priors import ScaleHyperprior

torch.set_num_threads(1)  # tiny convolutions: extra threads only spin against the other jobs' cores
N, M, H, W = 16, 24, 4, 6


def laplace_z(rng: np.random.Generator, n: int = N, h: int = H, w: int = W) -> np.ndarray:
    return np.rint(rng.laplace(0.0, 2.0, (n, h, w))).astype(np.int32)


def conv_params(layer: torch.nn.Module) -> tuple[torch.nn.Conv2d, torch.Tensor, torch.Tensor]:
    """(conv, weight, bias) of a Conv2d, typed."""
    assert isinstance(layer, torch.nn.Conv2d) and layer.bias is not None
    return layer, layer.weight, layer.bias


def spread_scales(prior: ScaleHyperprior, zs: list[np.ndarray]) -> None:
    """Affinely rescale h_s's last conv so its outputs ~ N(1, 1.5): scales across the table."""
    _, weight, bias = conv_params(prior.h_s[4])
    with torch.no_grad():
        pre = torch.cat([prior.h_s[:5](torch.from_numpy(z).float()[None]) for z in zs])
        mean, std = float(pre.mean()), float(pre.std())
        weight.mul_(1.5 / std)
        bias.copy_((bias - mean) * 1.5 / std + 1.0)


def sample_y(prior: ScaleHyperprior, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """y symbols drawn from the model's own Gaussian given z (what a trained g_a would produce)."""
    with torch.no_grad():
        scales = prior.h_s(torch.from_numpy(z).float()[None])[0].clamp(min=0.11).numpy()
    return np.rint(rng.normal(0.0, 1.0, scales.shape) * scales).astype(np.int32)


@pytest.fixture(scope="module")
def latents() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration z's, evaluation z's): disjoint samples."""
    rng = np.random.default_rng(7)
    zs = [laplace_z(rng) for _ in range(40)]
    return zs[:20], zs[20:]


@pytest.fixture(scope="module")
def prior(latents: tuple[list[np.ndarray], list[np.ndarray]]) -> ScaleHyperprior:
    torch.manual_seed(0)
    p = ScaleHyperprior(N, M).eval()
    spread_scales(p, latents[0])
    return p


@pytest.fixture(scope="module")
def net(prior: ScaleHyperprior, latents: tuple[list[np.ndarray], list[np.ndarray]]) -> IntegerScaleNet:
    return scale_path_from_torch(prior, calibration_z=latents[0])


@pytest.fixture(scope="module")
def y_tables(prior: ScaleHyperprior) -> CdfTables:
    return build_tables(*prior.gaussian_conditional.symbol_pmfs())


# --- the integer path itself ----------------------------------------------------------------------


def test_indexes_shape_range_and_input_checks(net: IntegerScaleNet) -> None:
    z = laplace_z(np.random.default_rng(1), h=2, w=3)
    idx = net.indexes(z)
    assert idx.dtype == np.int32 and idx.shape == (M, 8, 12)
    assert idx.min() >= 0 and idx.max() < net.levels == 64
    np.testing.assert_array_equal(net.indexes(z.astype(np.int16)), idx)  # any integer dtype
    with pytest.raises(TypeError, match="integer"):
        net.indexes(z.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        net.indexes(z[:-1])
    with pytest.raises(ValueError, match="int32"):
        net.indexes(z.astype(np.int64) + Z_MAX_ABS)


def torch_integer_indexes(net: IntegerScaleNet, z: np.ndarray) -> np.ndarray:
    """The same integer network with torch's own (de)convolutions in float64, which are exact while
    every partial sum is an integer below 2**53 (checked per layer)."""
    f = torch.nn.functional
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731

    def check_exact(a: torch.Tensor, w: np.ndarray, b: np.ndarray, out_axis: int) -> None:
        l1 = np.abs(w.astype(np.int64)).sum(axis=tuple(i for i in range(4) if i != out_axis))
        assert float(a.abs().max()) * float(l1.max()) + float(np.abs(b).max()) < 2**53

    def requantise(acc: torch.Tensor, shift: np.ndarray) -> torch.Tensor:
        a = acc.round().long().clamp(min=0)
        s = torch.from_numpy(shift.astype(np.int64))[:, None, None]
        return ((a + ((1 << s) >> 1)) >> s).clamp(max=ACT_MAX).double()

    a = t(z)[None]
    check_exact(a, net.w1, net.b1, 1)
    a = requantise(f.conv_transpose2d(a, t(net.w1), t(net.b1), 2, 2, 1)[0], net.shift1)[None]
    check_exact(a, net.w2, net.b2, 1)
    a = requantise(f.conv_transpose2d(a, t(net.w2), t(net.b2), 2, 2, 1)[0], net.shift2)[None]
    check_exact(a, net.w3, net.b3, 0)
    acc = f.conv2d(a, t(net.w3), t(net.b3), 1, 1)[0].round().long().numpy()
    return (acc[..., None] > net.thresholds[:, None, None, :]).sum(axis=-1).astype(np.int32)


def test_integer_path_follows_torch_conv_geometry(net: IntegerScaleNet) -> None:
    """Guards the scatter-add (de)convolutions against torch's definition (padding, output padding)."""
    z = laplace_z(np.random.default_rng(2), h=3, w=5)
    np.testing.assert_array_equal(net.indexes(z), torch_integer_indexes(net, z))


# --- determinism across backends, and why the float path cannot give it ---------------------------


def onnx_h_a(prior: ScaleHyperprior) -> bytes:
    """h_a(|y|) as an ONNX graph built node by node (independent of torch's exporter)."""
    inits, nodes, x = [], [helper.make_node("Abs", ["y"], ["a0"])], "a0"
    for i, layer in enumerate(prior.h_a[j] for j in (0, 2, 4)):
        conv, weight, bias = conv_params(layer)
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.kernel_size[0] // 2  # as layers.conv
        inits += [
            numpy_helper.from_array(weight.detach().numpy(), f"w{i}"),
            numpy_helper.from_array(bias.detach().numpy(), f"b{i}"),
        ]
        out = "z" if i == 2 else f"c{i}"
        inputs = [x, f"w{i}", f"b{i}"]
        node = helper.make_node("Conv", inputs, [out], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        nodes.append(node)
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "h_a",
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, M, None, None])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, N, None, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_edge_on_torch_and_host_on_onnxruntime_decode_bit_exactly(
    prior: ScaleHyperprior, net: IntegerScaleNet, y_tables: CdfTables
) -> None:
    """Edge: torch computes z and y, codes z (factorized) and y with integer-path rows. Host: decodes
    z from the stream; an onnxruntime h_a gives the same integer z; the integer rows decode y exactly."""
    rng = np.random.default_rng(3)
    y_latent = torch.from_numpy(rng.laplace(0.0, 3.0, (1, M, 4 * H, 4 * W)).astype(np.float32))
    z_tables = build_tables(*prior.entropy_bottleneck.symbol_pmfs())
    with torch.no_grad():
        z_edge = torch.round(prior.h_a(torch.abs(y_latent)))[0].numpy().astype(np.int32)
    y_sym = torch.round(y_latent)[0].numpy().astype(np.int32)
    z_payload = encode(z_edge, channel_indexes(z_edge.shape), z_tables)
    y_payload = encode(y_sym, net.indexes(z_edge), y_tables)

    session = ort.InferenceSession(onnx_h_a(prior), providers=["CPUExecutionProvider"])
    z_float_ort = session.run(None, {"y": y_latent.numpy()})[0][0]
    with torch.no_grad():
        z_float_torch = prior.h_a(torch.abs(y_latent))[0].numpy()
    z_ort = np.rint(z_float_ort).astype(np.int32)
    z_ulp = np.rint(np.nextafter(z_float_torch, np.inf)).astype(np.int32)  # 1-ulp-off backend
    z_host = decode(z_payload, channel_indexes(z_edge.shape), z_tables)
    for z in (z_ort, z_ulp, z_host):
        np.testing.assert_array_equal(z, z_edge)
        np.testing.assert_array_equal(decode(y_payload, net.indexes(z), y_tables), y_sym)


def boundary_biases(
    prior: ScaleHyperprior, z: np.ndarray, c: int, pos: tuple[int, int]
) -> tuple[np.float32, np.float32]:
    """Two float32 biases of h_s's last conv, 1 ulp apart, whose float indexes at y[c, pos] differ.

    The scale is moved onto its row's upper table value t_k (index k), then walked ulp by ulp
    (the output is monotone in the bias) until the next ulp crosses t_k.
    """
    idx = float_indexes(prior, z)[(c, *pos)]
    with torch.no_grad():
        scale = float(prior.h_s(torch.from_numpy(z).float()[None])[(0, c, *pos)])
    t_k = float(prior.gaussian_conditional.scale_table[idx])
    edited = copy.deepcopy(prior)
    _, _, bias = conv_params(edited.h_s[4])

    def index_with(b: np.float32) -> int:
        with torch.no_grad():
            bias[c] = torch.tensor(b)
        return int(float_indexes(edited, z)[(c, *pos)])

    b = np.float32(float(bias[c].detach()) + t_k - scale)
    for _ in range(1000):
        if index_with(b) > idx:
            b = np.nextafter(b, np.float32(-np.inf))
            continue
        b_up = np.nextafter(b, np.float32(np.inf))
        if index_with(b_up) > idx:
            return b, b_up
        b = b_up
    raise AssertionError("no boundary found")


def with_bias(prior: ScaleHyperprior, c: int, b: np.float32) -> ScaleHyperprior:
    out = copy.deepcopy(prior)
    with torch.no_grad():
        conv_params(out.h_s[4])[2][c] = torch.tensor(b)
    return out


def test_one_ulp_in_h_s_breaks_the_float_path_not_the_integer_path(
    prior: ScaleHyperprior,
    latents: tuple[list[np.ndarray], list[np.ndarray]],
    y_tables: CdfTables,
    record_property: Callable[[str, object], None],
) -> None:
    """Edge and host float h_s that differ by one ulp of one bias (what two backends do) pick a
    different CDF for a scale on a table boundary, and that one row desynchronises rANS. The integer
    net is one shipped file that reads integer z only, so both sides decode."""
    zs = latents[1]
    perturbed = copy.deepcopy(prior)
    with torch.no_grad():
        for p in perturbed.h_s.parameters():
            p.copy_(torch.from_numpy(np.nextafter(p.numpy(), np.float32(np.inf))))
    flips = sum(int((float_indexes(prior, z) != float_indexes(perturbed, z)).sum()) for z in zs)
    record_property("float_path_flips_all_weights_plus_1ulp", flips)  # often 0: boundaries are rare

    z = zs[0]
    with torch.no_grad():  # the largest scale: surely not cut by the last ReLU
        scales = prior.h_s(torch.from_numpy(z).float()[None])[0].numpy()
    c, y0, x0 = (int(i) for i in np.unravel_index(int(scales.argmax()), scales.shape))
    pos = (y0, x0)
    b_edge, b_host = boundary_biases(prior, z, c, pos)
    assert np.nextafter(b_edge, np.float32(np.inf)) == b_host
    edge, host = with_bias(prior, c, b_edge), with_bias(prior, c, b_host)
    idx_edge, idx_host = float_indexes(edge, z), float_indexes(host, z)
    assert int((idx_edge != idx_host).sum()) >= 1
    y = sample_y(prior, z, np.random.default_rng(4))
    payload = encode(y, idx_edge, y_tables)
    try:
        desynced = not np.array_equal(decode(payload, idx_host, y_tables), y)
    except CorruptPayloadError:
        desynced = True
    assert desynced

    shipped = scale_path_from_torch(edge, calibration_z=latents[0])
    on_host = IntegerScaleNet.from_npz_bytes(shipped.to_npz_bytes())
    payload = encode(y, shipped.indexes(z), y_tables)
    np.testing.assert_array_equal(decode(payload, on_host.indexes(z), y_tables), y)


# --- cost: agreement with the float path, and rate ------------------------------------------------


def test_integer_path_agrees_with_float_path_at_negligible_rate_cost(
    prior: ScaleHyperprior,
    net: IntegerScaleNet,
    latents: tuple[list[np.ndarray], list[np.ndarray]],
    y_tables: CdfTables,
) -> None:
    """Measured here: 99.982% equal rows (calibrated; 99.976% with the worst-case bound), rate
    -3e-6. A flip moves one element to the neighbouring row, 13% off in scale: ~0.02 bit expected
    (the Gaussians' KL), so even 1e-3 flips at ~1.9 bits per element move the rate by ~1e-5; 1e-4
    leaves room for tail samples. The small preset trained 3000 steps on the sample measured 99.985%
    and -7e-7 on held-out frames. 6-bit weights fall to ~84%, so the knob is seen to matter."""
    zs = latents[1]
    rng = np.random.default_rng(5)
    ys = [sample_y(prior, z, rng) for z in zs]
    for candidate in (net, scale_path_from_torch(prior)):  # calibrated, and worst-case bound
        parity = scale_path_parity(prior, candidate, zs, ys, y_tables)
        assert parity.elements == len(zs) * M * 4 * H * 4 * W
        assert parity.agreement >= 0.999, parity
        assert abs(parity.rate_increase) < 1e-4, parity
    coarse = scale_path_parity(prior, scale_path_from_torch(prior, weight_bits=6), zs, ys, y_tables)
    assert coarse.agreement < parity.agreement  # the knob does what it says


# --- no overflow: extremes against an arbitrary-precision reference -------------------------------


def reference_scales(net: IntegerScaleNet, z: np.ndarray) -> list:
    """The integer network up to its last accumulator, from its definition, in Python ints
    (arbitrary precision: no overflow, no wrap-around)."""

    def layer(a: list, w: list, b: list, stride: int, pad: int, transposed: bool) -> list:
        c_in, h, wd = len(a), len(a[0]), len(a[0][0])
        k = len(w[0][0])
        c_out = len(b)
        oh, ow = h * stride, wd * stride
        out = [[[b[o]] * ow for _ in range(oh)] for o in range(c_out)]
        for o in range(c_out):
            for i in range(c_in):
                for kh in range(k):
                    for kw in range(k):
                        wt = w[i][o][kh][kw] if transposed else w[o][i][kh][kw]
                        for y in range(h):
                            for x in range(wd):
                                if transposed:  # input (y, x) feeds output (2y - pad + kh, 2x - pad + kw)
                                    oy, ox = stride * y - pad + kh, stride * x - pad + kw
                                else:  # output (oy, ox) reads input (oy - pad + kh, ox - pad + kw)
                                    oy, ox = y + pad - kh, x + pad - kw
                                if 0 <= oy < oh and 0 <= ox < ow:
                                    out[o][oy][ox] += wt * a[i][y][x]
        return out

    def requantise(acc: list, shift: list) -> list:
        return [
            [[min((max(v, 0) + (1 << s) // 2) >> s, ACT_MAX) for v in row] for row in ch]
            for ch, s in zip(acc, shift, strict=True)
        ]

    a = requantise(layer(z.tolist(), net.w1.tolist(), net.b1.tolist(), 2, 2, True), net.shift1.tolist())
    a = requantise(layer(a, net.w2.tolist(), net.b2.tolist(), 2, 2, True), net.shift2.tolist())
    return layer(a, net.w3.tolist(), net.b3.tolist(), 1, 1, False)


def reference_indexes(net: IntegerScaleNet, z: np.ndarray) -> np.ndarray:
    thresholds = net.thresholds.tolist()
    return np.array(
        [
            [[sum(v > t for t in thresholds[c]) for v in row] for row in ch]
            for c, ch in enumerate(reference_scales(net, z))
        ],
        dtype=np.int32,
    )


def assert_matches_reference(net: IntegerScaleNet, z: np.ndarray) -> None:
    """Compare with the reference twice: with the net's thresholds, and with thresholds placed on the
    reference's own last accumulators, where one unit of difference anywhere upstream (a rounding, a
    saturation, a wrap-around) or ``>`` vs ``>=`` changes an index."""
    np.testing.assert_array_equal(net.indexes(z), reference_indexes(net, z))
    scales = reference_scales(net, z)
    on_values = []
    for ch in scales:
        values = sorted({v for row in ch for v in row})
        on_values.append([values[min(i * len(values) // 63, len(values) - 1)] for i in range(63)])
    sharp = dataclasses.replace(net, thresholds=np.array(on_values, dtype=np.int64))
    np.testing.assert_array_equal(sharp.indexes(z), reference_indexes(sharp, z))


@pytest.fixture(scope="module")
def tiny_prior() -> ScaleHyperprior:
    torch.manual_seed(1)
    p = ScaleHyperprior(4, 6).eval()
    spread_scales(p, [laplace_z(np.random.default_rng(i), n=4, h=2, w=3) for i in range(4)])
    return p


def worst_case_zs(net: IntegerScaleNet, z_table_max: int) -> list[np.ndarray]:
    """Every element at the largest magnitude (int32's, and the z table's), with the signs of
    layer 1's weights (drives channel 0 to its extreme), their opposite, all +, all -."""
    shape = (net.latent_channels, 2, 3)
    signs = np.sign(net.w1[:, 0, 2, 2]).astype(np.int64)[:, None, None] * np.ones(shape, dtype=np.int64)
    signs[signs == 0] = 1
    out = []
    for magnitude in (Z_MAX_ABS - 1, z_table_max):
        for s in (signs, -signs, np.ones(shape, np.int64), -np.ones(shape, np.int64)):
            out.append((s * magnitude).astype(np.int32))
    out.append(np.full(shape, -Z_MAX_ABS, dtype=np.int32))
    return out


def test_exported_net_at_worst_case_z_matches_python_int_reference(tiny_prior: ScaleHyperprior) -> None:
    net = scale_path_from_torch(tiny_prior)
    q = tiny_prior.entropy_bottleneck.quantiles.detach()
    z_table_max = int(max(-torch.floor(q[:, 0, 0]).min(), torch.ceil(q[:, 0, 2]).max()))
    z_small = laplace_z(np.random.default_rng(6), n=4, h=2, w=3)
    np.testing.assert_array_equal(reference_indexes(net, z_small), torch_integer_indexes(net, z_small))
    for z in [z_small, *worst_case_zs(net, z_table_max)]:
        assert_matches_reference(net, z)


def limit_net(bias_sign: int, rng: np.random.Generator, over: int = 0) -> IntegerScaleNet:
    """Weights at +-32767 and every bias at the largest magnitude the overflow check accepts (+over)."""
    n, m = 4, 6

    def limit_bias(w: np.ndarray, a_max: int) -> np.ndarray:
        l1 = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1).tolist()
        return np.array([bias_sign * (ACC_LIMIT - 1 - a_max * s + over) for s in l1], dtype=np.int64)

    w1 = (rng.choice([-1, 1], (n, n, 5, 5)) * WEIGHT_MAX).astype(np.int16)
    w2 = (rng.choice([-1, 1], (n, n, 5, 5)) * WEIGHT_MAX).astype(np.int16)
    w3 = (rng.choice([-1, 1], (m, n, 3, 3)) * WEIGHT_MAX).astype(np.int16)
    shifts = [np.array([0, 1, 31, 62], dtype=np.int32), np.array([62, 30, 1, 0], dtype=np.int32)]
    thresholds = np.sort(rng.integers(-(2**62), 2**62, (m, 63), dtype=np.int64), axis=1)
    return IntegerScaleNet(
        w1,
        limit_bias(w1.transpose(1, 0, 2, 3), Z_MAX_ABS),
        shifts[0],
        w2,
        limit_bias(w2.transpose(1, 0, 2, 3), ACT_MAX),
        shifts[1],
        w3,
        limit_bias(w3, ACT_MAX),
        thresholds,
    )


@pytest.mark.parametrize("bias_sign", [1, -1])
def test_accumulators_at_the_validated_limit_match_python_int_reference(bias_sign: int) -> None:
    """Accumulators reach ~2**62 (+ a rounding half of 2**61): int64 must still be exact."""
    rng = np.random.default_rng(8 + bias_sign)
    net = limit_net(bias_sign, rng)
    for z in worst_case_zs(net, 20):
        assert_matches_reference(net, z)
    with pytest.raises(ScalePathFormatError, match="overflow"):
        limit_net(bias_sign, np.random.default_rng(8 + bias_sign), over=1)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 300), extreme=st.booleans())
def test_exact_matmul_is_exact_in_both_branches(seed: int, k: int, extreme: bool) -> None:
    """One float64 GEMM while row_l1 * max|a| <= 2**53, 16-bit limbs beyond: both equal int64 matmul.

    The extreme case drives sums to ~k * 2**46 (> 2**53 from k = 129 on)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-WEIGHT_MAX, WEIGHT_MAX + 1, (7, k)).astype(np.int64)
    a = rng.integers(-Z_MAX_ABS, Z_MAX_ABS, (k, 5), dtype=np.int64)
    if extreme:
        w = np.where(w >= 0, WEIGHT_MAX, -WEIGHT_MAX)
        a[:, 0] = np.where(w[0] > 0, ACT_MAX, -ACT_MAX)
        a[:, 1] = -Z_MAX_ABS
    gemm = _GemmWeight(w.astype(np.float64), int(np.abs(w).sum(axis=1).max()))
    np.testing.assert_array_equal(_exact_matmul(gemm, a), w @ a)
    small = a % 1024
    np.testing.assert_array_equal(_exact_matmul(gemm, small), w @ small)


def test_exact_matmul_needs_its_limbs() -> None:
    """Guards the branch condition: this sum is odd and > 2**53, so no float64 holds it, whatever
    order a BLAS sums in; the limbs get it exactly."""
    w = np.full((1, 301), WEIGHT_MAX, dtype=np.int64)
    a = np.full((301, 1), ACT_MAX, dtype=np.int64)
    assert (w.astype(np.float64) @ a.astype(np.float64)).astype(np.int64)[0, 0] != (w @ a)[0, 0]
    gemm = _GemmWeight(w.astype(np.float64), int(w.sum()))
    assert _exact_matmul(gemm, a)[0, 0] == (w @ a)[0, 0] == 301 * WEIGHT_MAX * ACT_MAX


@pytest.mark.parametrize("over", [0, 1])
def test_float64_path_is_exact_up_to_its_bound_and_steps_aside_beyond(over: int) -> None:
    """The last layer's interior sums are 2**53 + over exactly: float64 holds 2**53 (over=0, the
    float path) but not 2**53 + 1 (over=1: the int64 path must take it), and a threshold at 2**53
    tells the two apart. Layers 1-2 saturate, so layer 3 sees ACT_MAX everywhere."""
    rng = np.random.default_rng(11)
    n, m = 4, 6
    w3 = np.full((m, n, 3, 3), WEIGHT_MAX, dtype=np.int16)  # every tap adds: the sum reaches the bound
    l1 = 9 * n * WEIGHT_MAX
    top = 1 << 53
    near_top = np.tile(np.array([top - 1, top, top + 1]), (m, 1))
    thresholds = np.sort(np.concatenate([rng.integers(0, top, (m, 60)), near_top], axis=1), axis=1)
    saturate = np.full(n, 1 << 55, dtype=np.int64), np.zeros(n, dtype=np.int32)
    net = IntegerScaleNet(
        rng.integers(-300, 301, (n, n, 5, 5)).astype(np.int16),
        *saturate,
        rng.integers(-300, 301, (n, n, 5, 5)).astype(np.int16),
        *saturate,
        w3,
        np.full(m, top - ACT_MAX * l1 + over, dtype=np.int64),
        thresholds.astype(np.int64),
    )
    assert _fits_float64(net._layers[2], ACT_MAX) is (over == 0)
    z = rng.integers(-20, 21, (n, 2, 3)).astype(np.int32)
    assert_matches_reference(net, z)
    assert (net.indexes(z)[:, 1:-1, 1:-1] == 61 + over).all()  # interior: 2**53 + over vs the thresholds


# --- export options ------------------------------------------------------------------------------


def test_export_rejects_bad_options_and_foreign_architectures(prior: ScaleHyperprior) -> None:
    for bits in (1, 17, True):
        with pytest.raises(ValueError, match="weight_bits"):
            scale_path_from_torch(prior, weight_bits=bits)
    other = copy.deepcopy(prior)
    other.h_s[4] = torch.nn.Conv2d(N, M, 5, padding=2)
    with pytest.raises(ValueError, match="3x3"):
        scale_path_from_torch(other)
    broken = with_bias(prior, 0, np.float32(np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        scale_path_from_torch(broken)


# --- file format ---------------------------------------------------------------------------------


def test_npz_round_trip_is_canonical(net: IntegerScaleNet) -> None:
    data = net.to_npz_bytes()
    back = IntegerScaleNet.from_npz_bytes(data)
    assert back.sha256 == net.sha256 and back.to_npz_bytes() == data
    z = laplace_z(np.random.default_rng(9))
    np.testing.assert_array_equal(back.indexes(z), net.indexes(z))
    arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))  # a plain .npz
    assert arrays["w1"].dtype == np.int16 and arrays["thresholds"].dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        net.w1[0, 0, 0, 0] = 1


def rewrite(data: bytes, change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> bytes:
    """Re-save a net file with `change` applied to its arrays (other zip metadata, pickles allowed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, arr in change(dict(np.load(io.BytesIO(data), allow_pickle=False))).items():
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=True)
    return out.getvalue()


def first_to(a: np.ndarray, value: int) -> np.ndarray:
    out = a.copy()
    out.flat[0] = value
    return out


TAMPERINGS: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "wrong dtype": lambda a: {**a, "w1": a["w1"].astype(np.int32)},
    "wrong shape": lambda a: {**a, "w3": a["w3"][:, :, :2]},
    "bias overflow": lambda a: {**a, "b2": first_to(a["b2"], 1 << 62)},
    "weight -32768": lambda a: {**a, "w2": first_to(a["w2"], -32768)},
    "negative shift": lambda a: {**a, "shift1": first_to(a["shift1"], -1)},
    "shift over 62": lambda a: {**a, "shift2": first_to(a["shift2"], 63)},
    "unsorted thresholds": lambda a: {**a, "thresholds": a["thresholds"][:, ::-1].copy()},
    "threshold rows": lambda a: {**a, "thresholds": a["thresholds"][:-1]},
    "future version": lambda a: {**a, "format_version": a["format_version"] + 1},
    "missing member": lambda a: {k: v for k, v in a.items() if k != "b3"},
    "extra member": lambda a: {**a, "extra": np.zeros(1)},
    "object array": lambda a: {**a, "b1": a["b1"].astype(object)},
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampered_files_are_rejected(net: IntegerScaleNet, name: str) -> None:
    with pytest.raises(ScalePathFormatError):
        IntegerScaleNet.from_npz_bytes(rewrite(net.to_npz_bytes(), TAMPERINGS[name]))


def test_corrupt_bytes_are_rejected_and_changes_change_the_hash(net: IntegerScaleNet) -> None:
    data = net.to_npz_bytes()
    member = data.index(b"w2.npy")
    flipped = bytearray(data)
    flipped[member + 400] ^= 0x01  # inside w2's data: the zip CRC-32 no longer matches
    for bad in (bytes(flipped), data[: len(data) // 2], b"", b"PK\x03\x04" + b"\0" * 100):
        with pytest.raises(ScalePathFormatError):
            IntegerScaleNet.from_npz_bytes(bad)
    tweaked = IntegerScaleNet.from_npz_bytes(rewrite(data, lambda a: {**a, "w3": a["w3"] // 2}))
    assert tweaked.sha256 != net.sha256
