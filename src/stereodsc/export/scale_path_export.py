"""Convert a trained `ScaleHyperprior`'s h_s into the bit-exact `IntegerScaleNet` (post-training).

Runs once, at export, on the torch side; the camera board and the host then only read the
integers (see `stereodsc.entropy.scale_path` for the mechanism and the overflow proof).

Fixed point: a value v of activation layer l is stored as the integer ``round(v * 2**f_l)``
(``f_0 = 0``: z is already an integer). The weights of output channel c of a layer get their own
exponent ``e_c``, the largest that keeps ``|round(w * 2**e_c)| <= 2**(weight_bits - 1) - 1``, so the
accumulator of channel c holds ``v * 2**(f_in + e_c)`` and the bias is quantised to that scale.
The right shift after the layer is ``f_in + e_c - f_out >= 0``. ``f_out`` is as large as int32
activations allow with ``2**headroom_bits`` to spare above the largest activation seen on the
calibration z's (or above a worst-case bound when none are given). The last layer is not
rescaled: the scale-table thresholds are moved to its accumulator's scale instead, exactly
(``floor(t * 2**E)`` of a float32 table value t is exact in float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereodsc.entropy import CdfTables, build_tables, ideal_bits
from stereodsc.entropy.scale_path import ACC_LIMIT, ACT_MAX, Z_MAX_ABS, IntegerScaleNet
from stereodsc.models.priors import ScaleHyperprior

_MAX_EXPORT_SHIFT = 40  # caps e_c of near-zero channels: finer weights than this buy nothing
_MAX_THRESHOLD_EXPONENT = 48  # 256 * 2**48 < 2**62: thresholds stay far inside int64
_MIN_RANGE = 2.0**-16  # a layer whose activations are all ~0 still gets a finite exponent
# (kernel, stride, padding, output_padding, dilation) of `ScaleHyperprior.h_s`'s layers
_DECONV_GEOMETRY = ((5, 5), (2, 2), (2, 2), (1, 1), (1, 1))
_CONV_GEOMETRY = ((3, 3), (1, 1), (1, 1), (0, 0), (1, 1))


@dataclass(frozen=True)
class ScalePathParity:
    """How far the integer scale path is from the float one on some latents (measured, not bounded)."""

    elements: int  # y elements compared
    agreement: float  # fraction of y elements whose table row is the same on both paths
    bits_float: float  # ideal code length of y with the float path's rows (bits)
    bits_integer: float  # the same with the integer path's rows

    @property
    def rate_increase(self) -> float:
        """Relative rate cost of the integer path: bits_integer / bits_float - 1."""
        return self.bits_integer / self.bits_float - 1.0


def _h_s_layers(prior: ScaleHyperprior) -> tuple[nn.ConvTranspose2d, nn.ConvTranspose2d, nn.Conv2d]:
    """The three weighted layers of h_s, after checking it is the architecture the integer net mirrors."""
    layers = list(prior.h_s)
    arch = f"h_s must be deconv-ReLU-deconv-ReLU-conv-ReLU (ScaleHyperprior's), got {prior.h_s}"
    if len(layers) != 6 or not all(isinstance(layers[i], nn.ReLU) for i in (1, 3, 5)):
        raise ValueError(arch)
    d1, d2, c3 = layers[0], layers[2], layers[4]
    if not (isinstance(d1, nn.ConvTranspose2d) and isinstance(d2, nn.ConvTranspose2d)):
        raise ValueError(arch)
    if not isinstance(c3, nn.Conv2d):
        raise ValueError(arch)
    for layer, geometry in ((d1, _DECONV_GEOMETRY), (d2, _DECONV_GEOMETRY), (c3, _CONV_GEOMETRY)):
        got = (layer.kernel_size, layer.stride, layer.padding, layer.output_padding, layer.dilation)
        if got != geometry or layer.groups != 1 or layer.bias is None:
            raise ValueError(
                f"h_s layer {layer} differs from ScaleHyperprior's (5x5/2 deconvs with padding 2 and output "
                "padding 1, then a 3x3/1 conv with padding 1, all with biases)"
            )
    return d1, d2, c3


def _float64(layer: nn.ConvTranspose2d | nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.bias is not None
    return layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu()


def _weight_exponent(w_max: float, weight_bits: int, cap: int) -> int:
    """Largest e <= cap with ``rint(w_max * 2**e) <= 2**(weight_bits - 1) - 1`` (cap when w_max is 0)."""
    limit = (1 << (weight_bits - 1)) - 1
    if w_max == 0.0:
        return cap
    e = min(cap, math.floor(math.log2(limit / w_max)) + 1)
    while np.rint(math.ldexp(w_max, e)) > limit:
        e -= 1
    return e


def _quantise_layer(
    w: torch.Tensor, b: torch.Tensor, f_in: int, a_max: int, weight_bits: int, cap: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(int16 weights, int64 biases, exponents e_c) for a layer whose dim 0 is the output channel.

    A channel whose bound ``a_max * sum|w_q| + |b_q| < 2**62`` fails (huge bias, or a degenerate
    layer) gets a smaller exponent until it holds: the net is then valid for every int32 input.
    """
    w_np, b_np = w.numpy(), b.numpy()
    wq = np.empty(w_np.shape, dtype=np.int16)
    bq = np.empty(b_np.shape, dtype=np.int64)
    exponents = []
    for c in range(w_np.shape[0]):
        e = _weight_exponent(float(np.abs(w_np[c]).max()), weight_bits, cap)
        while True:
            w_c = np.rint(np.ldexp(w_np[c], e))
            b_c = int(np.rint(math.ldexp(float(b_np[c]), f_in + e)))
            if a_max * int(np.abs(w_c).sum()) + abs(b_c) < ACC_LIMIT:
                break
            e -= 1
        wq[c], bq[c] = w_c.astype(np.int16), b_c
        exponents.append(e)
    return wq, bq, exponents


def _activation_ranges(prior: ScaleHyperprior, zs: Sequence[np.ndarray] | None) -> tuple[float, float]:
    """Largest activation after layers 1 and 2: observed on calibration z's, else an L1 bound.

    The bound assumes |z| within the z table's range (the entropy bottleneck's quantiles); z
    outside it, or activations above the observed maximum, saturate: still bit-exact, slightly off.
    """
    d1, d2, _ = _h_s_layers(prior)
    (w1, b1), (w2, b2) = _float64(d1), _float64(d2)
    if zs is None:
        q = prior.entropy_bottleneck.quantiles.detach().double()
        z_bound = max(float(-torch.floor(q[:, 0, 0]).min()), float(torch.ceil(q[:, 0, 2]).max()), 1.0)
        r1 = z_bound * float(w1.abs().sum(dim=(0, 2, 3)).max()) + max(float(b1.max()), 0.0)
        r2 = r1 * float(w2.abs().sum(dim=(0, 2, 3)).max()) + max(float(b2.max()), 0.0)
        return r1, r2
    r1 = r2 = 0.0
    with torch.no_grad():
        for z in zs:
            x = torch.from_numpy(np.asarray(z, dtype=np.float64)).reshape(1, *np.shape(z)[-3:])
            a1 = F.relu(F.conv_transpose2d(x, w1, b1, stride=2, padding=2, output_padding=1))
            a2 = F.relu(F.conv_transpose2d(a1, w2, b2, stride=2, padding=2, output_padding=1))
            r1, r2 = max(r1, float(a1.max())), max(r2, float(a2.max()))
    return r1, r2


def _activation_exponent(value_range: float, headroom_bits: int) -> int:
    """Largest f with ``value_range * 2**(headroom_bits + f) <= 2**31 - 1``."""
    return math.floor(math.log2(ACT_MAX / max(value_range, _MIN_RANGE))) - headroom_bits


def scale_path_from_torch(
    prior: ScaleHyperprior,
    *,
    weight_bits: int = 16,
    calibration_z: Sequence[np.ndarray] | None = None,
    headroom_bits: int = 4,
) -> IntegerScaleNet:
    """Quantise ``prior.h_s`` and its scale table into an `IntegerScaleNet` (no retraining).

    `calibration_z`: integer z's ([N, h, w] or [1, N, h, w]) of typical frames, e.g. the export
    sample's. With them the activation exponents are set from the observed ranges
    (``headroom_bits`` above the maximum), which gave the float path's rows on 99.985% of the
    elements of held-out frames (trained small preset); without them a worst-case bound is used,
    which never saturates for z inside the z table but is coarser (99.92%). Fewer `weight_bits`
    (2..16) only lose agreement: the run time is the same, weights are int16 either way.
    """
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or not 2 <= weight_bits <= 16:
        raise ValueError(f"weight_bits must be an int in [2, 16], got {weight_bits!r}")
    if headroom_bits < 0:
        raise ValueError(f"headroom_bits must be >= 0, got {headroom_bits}")
    d1, d2, c3 = _h_s_layers(prior)
    if not all(bool(torch.isfinite(p).all()) for p in prior.h_s.parameters()):
        raise ValueError("h_s has non-finite weights or biases: export a checkpoint that trained without NaN")
    r1, r2 = _activation_ranges(prior, calibration_z)
    (w1, b1), (w2, b2), (w3, b3) = _float64(d1), _float64(d2), _float64(c3)
    f_target = (_activation_exponent(r1, headroom_bits), _activation_exponent(r2, headroom_bits))

    # Layer 1 (input z, exponent 0) and layer 2; ConvTranspose2d weights are [in, out, kh, kw].
    f_in, a_max, quantised = 0, Z_MAX_ABS, []
    for (w, b), target in zip(((w1, b1), (w2, b2)), f_target, strict=True):
        cap = target - f_in + _MAX_EXPORT_SHIFT
        wq, bq, exps = _quantise_layer(w.transpose(0, 1), b, f_in, a_max, weight_bits, cap)
        f_out = min(target, f_in + min(exps))  # every shift f_in + e_c - f_out must be >= 0
        shift = np.array([f_in + e - f_out for e in exps], dtype=np.int32)
        quantised.append((np.ascontiguousarray(wq.transpose(1, 0, 2, 3)), bq, shift))
        f_in, a_max = f_out, ACT_MAX

    w3q, b3q, exps3 = _quantise_layer(w3, b3, f_in, ACT_MAX, weight_bits, _MAX_THRESHOLD_EXPONENT - f_in)
    table = prior.gaussian_conditional.scale_table.detach().cpu().float().numpy().astype(np.float64)[:-1]
    thresholds = [[math.floor(math.ldexp(float(t), f_in + e)) for t in table] for e in exps3]
    (w1q, b1q, s1), (w2q, b2q, s2) = quantised
    return IntegerScaleNet(w1q, b1q, s1, w2q, b2q, s2, w3q, b3q, np.array(thresholds, dtype=np.int64))


def float_indexes(prior: ScaleHyperprior, z: np.ndarray) -> np.ndarray:
    """The float path the integer net replaces: ``build_indexes(h_s(z))`` in torch fp32, int32 [M, 4h, 4w]."""
    with torch.no_grad():
        zt = torch.from_numpy(np.asarray(z, dtype=np.float32))[None]
        return prior.indexes({"z": zt})["y"][0].numpy().astype(np.int32)


def scale_path_parity(
    prior: ScaleHyperprior,
    net: IntegerScaleNet,
    z: Sequence[np.ndarray],
    y: Sequence[np.ndarray],
    tables: CdfTables | None = None,
) -> ScalePathParity:
    """Compare the integer path with the float one on latent pairs (z [N, h, w], y [M, 4h, 4w] symbols).

    Rate is the exact code length under the coder's integer tables (`tables`, by default built
    from ``prior.gaussian_conditional.symbol_pmfs()``), so it is what the bitstream would cost.
    """
    if len(z) != len(y):
        raise ValueError(f"got {len(z)} z's and {len(y)} y's")
    if tables is None:
        tables = build_tables(*prior.gaussian_conditional.symbol_pmfs())
    same = total = 0
    bits_float = bits_integer = 0.0
    for z_i, y_i in zip(z, y, strict=True):
        idx_float, idx_int = float_indexes(prior, z_i), net.indexes(z_i)
        same += int((idx_float == idx_int).sum())
        total += idx_int.size
        bits_float += ideal_bits(y_i, idx_float, tables)
        bits_integer += ideal_bits(y_i, idx_int, tables)
    return ScalePathParity(total, same / total, bits_float, bits_integer)
