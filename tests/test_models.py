"""Models: shapes, gradients, entropy models, registry, NDIC-CAM patch modes, DSIN's SI-Finder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereodsc.errors import ConfigError
from stereodsc.models import (
    MODEL_NAMES,
    PRESETS,
    CompressionModel,
    EntropyBottleneck,
    GaussianConditional,
    build_model,
    default_options,
    si_finder,
)
from stereodsc.models.layers import LowerBound
from stereodsc.models.ndic_cam import pack, unpack

torch.set_num_threads(1)

TINY = {"N": 8, "M": 8}
CAM_TINY = {"heads": 2, "dim": 16, "dim_head": 8, "image_size": [64, 128]}
CASES = [
    ("balle2017", {}),
    ("balle2018", {}),
    ("ndic", {}),
    ("ndic", {"backbone": "balle2018"}),
    ("ndic_cam", CAM_TINY),
    ("ndic_cam", {**CAM_TINY, "num_cams": 1, "alpha": 1.0, "beta": 1.0}),
    ("dsin", {}),
    ("balle2018", {"encoder": "minimal", "edge_channels": [8, 8, 8], "hyper_channels": 8}),
    (
        "ndic_cam",
        {**CAM_TINY, "backbone": "balle2018", "encoder": "minimal", "patch_mode": "rows", "max_disparity": 16},
    ),
    ("dsin", {"backbone": "balle2018", "search": "band", "max_row_offset": 2, "patch": [16, 16], "max_disparity": 16}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in opts.items() if k != 'image_size')}" for name, opts in CASES]


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a, b)


def tiny(name: str, **options: object) -> CompressionModel:
    torch.manual_seed(0)
    return build_model(name, **TINY, **options)


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A structured, non-constant test image in [0, 1]: smoothed noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)


def pair(h: int = 64, w: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    big = smooth_image(h, w + 8)
    return big[..., 8:], big[..., :w]  # y is x shifted right by 8 pixels


# --- every model ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_forward_backward(name: str, options: dict) -> None:
    model = tiny(name, **options)
    x, y = pair()
    out = model(x, y)
    assert out["x_hat"].shape == x.shape
    expected = {"y", "z"} if model.stride == 64 else {"y"}
    assert set(out["likelihoods"]) == expected
    for p in out["likelihoods"].values():
        assert torch.all(p > 0) and torch.all(p <= 1)
    terms = model.loss(out, x, y, 0.01, mse)
    assert {"loss", "bpp", "distortion"} <= set(terms)
    assert all(torch.isfinite(t) for t in terms.values())
    (terms["loss"] + model.aux_loss()).backward()
    grads = [p.grad for p in model.g_a.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads if g is not None)
    assert model.aux_parameters() and all(p.grad is not None for p in model.aux_parameters())
    assert len(model.main_parameters()) + len(model.aux_parameters()) == len(list(model.parameters()))
    if model.uses_side_info:
        with pytest.raises(ValueError, match="side information"):
            model(x)
        with pytest.raises(ValueError, match="side information"):
            model.synthesis(model.analysis(x), None)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_analysis_synthesis_match_forward(name: str, options: dict) -> None:
    model = tiny(name, **options).eval()
    x, y = pair()
    with torch.no_grad():
        latents = model.analysis(x)
        x_hat = model.synthesis(latents, y)
        out = model(x, y)
    assert set(latents) == set(out["likelihoods"]) == set(model.entropy_models())
    for t in latents.values():
        assert torch.equal(t, torch.round(t))
    torch.testing.assert_close(x_hat, out["x_hat"].clamp(0, 1), rtol=0, atol=1e-6)
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    for key, idx in model.indexes(latents).items():
        assert idx.shape == latents[key].shape and idx.min() >= 0 and idx.max() < 64


def test_input_size_must_be_a_multiple_of_the_stride() -> None:
    x = torch.rand(1, 3, 48, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny("balle2017")(x.narrow(2, 0, 40))
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny("balle2018")(x)


# --- entropy models ---------------------------------------------------------------------------


def test_rate_falls_with_lambda() -> None:
    x = smooth_image(32, 32, seed=1)
    rate, dist = {}, {}
    for lmbda in (1e-1, 1e-4):
        model = tiny("balle2017")
        opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
        for _ in range(200):
            terms = model.loss(model(x), x, None, lmbda, mse)
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            terms = model.loss(model(x), x, None, lmbda, mse)
        rate[lmbda], dist[lmbda] = float(terms["bpp"]), float(terms["distortion"])
    assert rate[1e-4] < 0.7 * rate[1e-1] and dist[1e-4] > dist[1e-1]


def test_entropy_bottleneck_symbol_pmfs() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(4)
    scales = torch.tensor([0.5, 1.0, 2.0, 4.0]).view(1, 4, 1, 1)
    opt = torch.optim.Adam([p for n, p in eb.named_parameters() if n != "quantiles"], lr=1e-2)
    aux = torch.optim.Adam([eb.quantiles], lr=1.0)
    for _ in range(300):
        _, likelihood = eb(torch.randn(8, 4, 8, 8) * scales)
        opt.zero_grad()
        (-torch.log2(likelihood).mean()).backward()
        opt.step()
        aux.zero_grad()
        eb.loss().backward()
        aux.step()
    pmf, offset = eb.symbol_pmfs()
    assert pmf.dtype == np.float64 and offset.dtype == np.int32 and pmf.shape[0] == 4
    assert np.all(pmf >= 0) and np.all(pmf.sum(axis=1) <= 1)
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(offset <= np.floor(eb.quantiles[:, 0, 0].detach().numpy()))
    # Eval-mode likelihood of rounded values = the table (floored at 1e-9), per channel.
    eb.eval()
    values = torch.arange(-6.0, 7.0).view(1, 1, -1, 1).repeat(1, 4, 1, 1)
    with torch.no_grad():
        rounded, likelihood = eb(values + 0.3)
    assert torch.equal(rounded, values)
    for c in range(4):
        table = pmf[c, values[0, c, :, 0].long().numpy() - offset[c]]
        np.testing.assert_allclose(likelihood[0, c, :, 0].numpy(), np.maximum(table, 1e-9), rtol=1e-5)


def test_entropy_bottleneck_continuous_mode_keeps_values() -> None:
    eb = EntropyBottleneck(2, quantize=False)
    x = torch.randn(1, 2, 4, 4)
    x_hat, likelihood = eb(x)
    assert torch.equal(x_hat, x) and torch.all((likelihood > 0) & (likelihood <= 1))
    eb.eval()
    assert torch.equal(eb(x)[0], x)


def test_bits_fall_as_input_scale_shrinks() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(1).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        bits = [float(-torch.log2(eb(s * x)[1]).sum()) for s in (8.0, 2.0, 0.5)]
    assert bits[0] > bits[1] > bits[2]


def test_gaussian_conditional_tables_and_indexes() -> None:
    gc = GaussianConditional().eval()
    table = gc.scale_table
    assert len(table) == 64 and math.isclose(table[0], 0.11, rel_tol=1e-5) and math.isclose(table[-1], 256)
    scales = torch.tensor([0.01, 0.11, 0.12, 1.0, 300.0])
    idx = gc.build_indexes(scales)
    assert idx.dtype == torch.int64 and idx[0] == 0 and idx[1] == 0 and idx[-1] == 63
    assert torch.all(table[idx[1:4]] >= scales[1:4]) and torch.all(table[idx[2:4] - 1] < scales[2:4])
    pmf, offset = gc.symbol_pmfs()
    assert pmf.shape[0] == 64 and np.all(offset == offset[0]) and pmf.shape[1] == 1 - 2 * offset[0]
    assert np.all(pmf >= 0) and np.all(pmf.sum(axis=1) <= 1)
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-8)
    # Row i is the eval likelihood at scale table[i].
    values = torch.arange(-5.0, 6.0)
    for i in (0, 20, 63):
        _, likelihood = gc(values, table[i].expand(11))
        expected = np.maximum(pmf[i, values.long().numpy() - offset[i]], 1e-9)
        np.testing.assert_allclose(likelihood.numpy(), expected, rtol=1e-4)


def test_lower_bound_gradient_and_eval() -> None:
    bound = LowerBound(1.0)
    x = torch.tensor([0.0, 2.0], requires_grad=True)
    (bound(x) * torch.tensor([-1.0, 1.0])).sum().backward()  # gradient pushes x[0] up: passes
    assert x.grad is not None and torch.equal(x.grad, torch.tensor([-1.0, 1.0]))
    x.grad = None
    bound(x).sum().backward()  # would push x[0] further down: blocked
    assert x.grad is not None and torch.equal(x.grad, torch.tensor([0.0, 1.0]))
    assert torch.equal(bound.eval()(x.detach()), torch.tensor([1.0, 2.0]))


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_presets_options() -> None:
    assert MODEL_NAMES == ("balle2017", "balle2018", "ndic", "ndic_cam", "dsin")
    assert {"small", "paper"} <= set(PRESETS)
    with pytest.raises(ConfigError, match="balle2017, balle2018, ndic, ndic_cam, dsin"):
        build_model("ndic2")
    with pytest.raises(ConfigError, match="small, paper"):
        build_model("ndic", preset="huge")
    with pytest.raises(ConfigError, match=r"valid options: .*alpha"):
        build_model("ndic", gamma=1.0)
    with pytest.raises(ConfigError, match="balle2017"):
        build_model("ndic", backbone="resnet")
    with pytest.raises(ConfigError, match="grid"):
        build_model("ndic_cam", patch_mode="window")
    for name in MODEL_NAMES:
        options = default_options(name)
        assert options["N"] == 64 and default_options(name, "paper")["N"] == 192
        json.dumps(options)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_config_round_trip(name: str, options: dict) -> None:
    model = tiny(name, **options)
    config = json.loads(json.dumps(model.config))
    rebuilt = build_model(**config)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert rebuilt.state_dict()[key].shape == value.shape


# --- NDIC-CAM ---------------------------------------------------------------------------------


def test_pack_unpack_round_trip() -> None:
    t = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = pack(t, 2, 3)
    assert tokens.shape == (2, 3 * 2 * 2, 6)
    torch.testing.assert_close(tokens[0, 0], t[0, 0, :2, :3].flatten())
    assert torch.equal(unpack(tokens, 3, 4, 6, 2, 3), t)


def test_ndic_cam_grid_mode_refuses_other_resolution() -> None:
    model = tiny("ndic_cam", **CAM_TINY, patch_mode="grid").eval()
    x, y = pair(64, 128)
    with torch.no_grad():
        out = model(x, y)
        latents = model.analysis(x)
    assert out["x_hat"].shape == x.shape
    x2, y2 = pair(64, 96)
    with pytest.raises(ValueError, match=r"patch_mode='fixed'"):
        model(x2, y2)
    with pytest.raises(ValueError, match="64x128"):
        model.synthesis({"y": latents["y"][..., :6]}, y2)


def test_ndic_cam_fixed_mode_runs_at_other_resolutions_with_the_same_weights() -> None:
    fixed = tiny("ndic_cam", **CAM_TINY).eval()
    grid = tiny("ndic_cam", **CAM_TINY, patch_mode="grid").eval()
    grid.load_state_dict(fixed.state_dict())
    with torch.no_grad():
        x, y = pair(64, 128)
        torch.testing.assert_close(fixed(x, y)["x_hat"], grid(x, y)["x_hat"])
        for h, w in ((96, 192), (48, 112)):  # 48x112: CAM feature maps need padding to the patch
            x, y = pair(h, w)
            assert fixed(x, y)["x_hat"].shape == x.shape


# --- DSIN -------------------------------------------------------------------------------------


def test_si_finder_recovers_a_horizontal_shift() -> None:
    shift = 7
    big = torch.rand(1, 3, 40, 96 + shift, generator=torch.Generator().manual_seed(3))
    big = F.avg_pool2d(big, 3, stride=1, padding=1)  # keep texture, drop pixel-level noise
    x, y = big[..., :96], big[..., shift:]  # x[c] == y[c - shift]: content sits 7 px left in y
    for prior in (True, False):
        side_syn = si_finder(x, y, y, patch=(20, 24), gaussian_prior=prior)
        assert side_syn.shape == x.shape
        # Every patch whose match lies fully inside y (columns >= shift) is reproduced exactly.
        torch.testing.assert_close(side_syn[..., 24:], x[..., 24:], rtol=0, atol=0)
    # A band of 0 rows still finds a purely horizontal shift; a vertical one it cannot.
    torch.testing.assert_close(si_finder(x, y, y, max_row_offset=0)[..., 24:], x[..., 24:])
    x_v, y_v = big[:, :, 3:, :96][..., :36, :], big[:, :, :36, :96]
    band = si_finder(x_v, y_v, y_v, patch=(12, 24), max_row_offset=0)
    free = si_finder(x_v, y_v, y_v, patch=(12, 24))
    torch.testing.assert_close(free[..., :24, :], x_v[..., :24, :])
    assert not torch.allclose(band[..., :24, :], x_v[..., :24, :])


def test_si_finder_matches_a_brute_force_search() -> None:
    g = torch.Generator().manual_seed(5)
    x_dec, y_dec, y = (torch.rand(2, 3, 20, 48, generator=g) for _ in range(3))
    ph, pw = 10, 12

    def features(img: torch.Tensor) -> torch.Tensor:  # DSIN's standardisation + colour transform
        mean = torch.tensor([93.7045, 98.2824, 94.8468]).view(1, 3, 1, 1)
        std = torch.tensor([5411.80, 5758.60, 5890.31]).sqrt().view(1, 3, 1, 1)
        r, gr, b = ((255 * img - mean) / std).unbind(1)
        return torch.stack([r + gr, r - gr, 0.5 * (r + b)], 1)

    def unit(v: torch.Tensor) -> torch.Tensor:
        v = v - v.mean(dim=-1, keepdim=True)
        return v / v.norm(dim=-1, keepdim=True)

    windows = F.unfold(features(y_dec), (ph, pw)).transpose(1, 2)  # [B, 11 * 37, 360], 3 x 10 x 12 each
    patches = F.unfold(features(x_dec), (ph, pw), stride=(ph, pw)).transpose(1, 2)  # [B, 8, 360]
    corr = unit(patches) @ unit(windows).transpose(1, 2)  # [B, 8, 407]
    rows, cols = torch.meshgrid(torch.arange(11), torch.arange(37), indexing="ij")
    pr, pc = torch.meshgrid(torch.arange(2) * ph, torch.arange(4) * pw, indexing="ij")
    d2 = (rows.flatten() - pr.reshape(-1, 1)) ** 2 / 10.0**2 + (cols.flatten() - pc.reshape(-1, 1)) ** 2 / 24.0**2
    best = (corr * torch.exp(-4 * math.log(2) * d2)).argmax(-1)  # [B, 8]
    expected = torch.zeros_like(y)
    for bi in range(2):
        for p in range(8):
            r, c = int(best[bi, p]) // 37, int(best[bi, p]) % 37
            tr, tc = (p // 4) * ph, (p % 4) * pw
            expected[bi, :, tr : tr + ph, tc : tc + pw] = y[bi, :, r : r + ph, c : c + pw]
    torch.testing.assert_close(si_finder(x_dec, y_dec, y, patch=(ph, pw)), expected, rtol=0, atol=0)


def test_si_finder_pads_to_the_patch_and_crops_back() -> None:
    x = smooth_image(44, 100)
    side_syn = si_finder(x, x, x)
    assert side_syn.shape == x.shape
    torch.testing.assert_close(side_syn[..., :40, :96], x[..., :40, :96])


def test_dsin_outputs_and_side_path() -> None:
    model = tiny("dsin").eval()
    x, y = pair()
    with torch.no_grad():
        out = model(x, y)
    assert out["x_dec"].shape == out["side_syn"].shape == x.shape
    # side_syn is made only of pixels of the original side image
    assert torch.isin(out["side_syn"].flatten(), y.flatten()).all()


def test_a_loss_term_of_weight_zero_cannot_turn_the_loss_nan() -> None:
    """NDIC-CAM trains with alpha = beta = 0: its untrained y reconstruction may overflow to inf, which
    must not reach the loss (0 * inf is NaN: this stopped a real training run)."""
    model = build_model("ndic_cam", "small", N=8, M=8)
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    out = model(x, y)
    out["side_hat"] = torch.full_like(out["side_hat"], float("inf"))
    terms = model.loss(out, x, y, 0.01, mse)
    assert torch.isfinite(terms["loss"]) and not torch.isfinite(terms["distortion_side"])
