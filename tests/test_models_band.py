"""Alignment on the epipolar band: DSIN's band SI-Finder and NDIC-CAM's row attention.

Both must find a match along the row within the disparity bound, cost linearly in the image, run
at every size with the same weights, and export to ONNX once for all sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereodsc.errors import ConfigError
from stereodsc.export.graphs import RefineGraph
from stereodsc.models import band_si_finder, build_model
from stereodsc.models.dsin import DSIN, _colour_transform
from stereodsc.models.ndic_cam import BandAttention
from stereodsc.models.refine_net import RefineNet, normalize

torch.set_num_threads(1)

TINY = {"N": 8, "M": 8}
ROWS_CAM = {"heads": 2, "dim": 16, "dim_head": 8, "patch_mode": "rows", "max_disparity": 16, "num_cams": 2}
BAND_DSIN = {"search": "band", "patch": [16, 16], "max_disparity": 16, "max_row_offset": 2, "si_width": 8}


def textured(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smoothed noise in [0, 1]: structured enough that every patch has one clear best match."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, h // 2, w // 2, generator=g)
    return F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)


# --- DSIN: band SI-Finder -------------------------------------------------------------------------


@pytest.mark.parametrize(("shift", "scale"), [(10, 1), (-6, 1), (12, 2)])
def test_band_finder_recovers_a_disparity_in_either_direction(shift: int, scale: int) -> None:
    big = textured(48, 160)
    x = big[..., 24:136]
    side = big[..., 24 + shift : 136 + shift]  # x's content sits `shift` columns away in the side image
    side_syn = band_si_finder(x, side, side, patch=(16, 16), max_disparity=16, max_row_offset=2, match_scale=scale)
    assert side_syn.shape == x.shape
    inner = slice(16, -16)  # patches whose match lies inside the side image
    torch.testing.assert_close(side_syn[..., inner], x[..., inner], rtol=0, atol=0)


def test_band_finder_recovers_a_row_offset_within_the_margin() -> None:
    big = textured(80, 96, seed=1)
    x, side = big[..., 8:72, :], big[..., 6:70, :]  # x's row r is the side image's row r + 2
    side_syn = band_si_finder(x, side, side, patch=(16, 16), max_disparity=4, max_row_offset=2, match_scale=1)
    torch.testing.assert_close(side_syn[..., :48, :], x[..., :48, :], rtol=0, atol=0)


def test_band_finder_matches_a_brute_force_band_search() -> None:
    g = torch.Generator().manual_seed(3)
    x_dec, side_dec, side = (torch.rand(1, 3, 32, 64, generator=g) for _ in range(3))
    ph, pw, rows, cols = 16, 16, 2, 6
    xs = _colour_transform(normalize(x_dec)).double()
    ss = F.pad(_colour_transform(normalize(side_dec)), (cols, cols, rows, rows), mode="replicate").double()
    sp = F.pad(side, (cols, cols, rows, rows), mode="replicate")
    expected = torch.empty_like(side)
    for i in range(2):
        for j in range(4):
            a = xs[0, :, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw].flatten()
            a = (a - a.mean()) / (a - a.mean()).norm()
            best, where = -np.inf, (0, 0)
            for dc in sorted(range(-cols, cols + 1), key=abs):
                for dr in sorted(range(-rows, rows + 1), key=abs):
                    r, c = rows + i * ph + dr, cols + j * pw + dc
                    win = ss[0, :, r : r + ph, c : c + pw].flatten()
                    score = float(a @ win / (win - win.mean()).norm())
                    if score > best:
                        best, where = score, (r, c)
            r, c = where
            expected[..., i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] = sp[..., r : r + ph, c : c + pw]
    got = band_si_finder(x_dec, side_dec, side, patch=(ph, pw), max_disparity=cols, max_row_offset=rows, match_scale=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_band_finder_pads_to_the_patch_and_crops_back() -> None:
    x = textured(40, 100)
    side_syn = band_si_finder(x, x, x, patch=(16, 32), max_disparity=8, max_row_offset=1)
    assert side_syn.shape == x.shape
    torch.testing.assert_close(side_syn[..., :32, :96], x[..., :32, :96], rtol=0, atol=0)


def test_band_dsin_needs_its_band_and_runs_at_any_size() -> None:
    with pytest.raises(ConfigError, match="max_row_offset"):
        build_model("dsin", search="band")
    with pytest.raises(ConfigError, match="match_scale"):
        build_model("dsin", search="band", max_row_offset=2, patch=[15, 16])
    torch.manual_seed(0)
    model = build_model("dsin", **TINY, **BAND_DSIN, reencode_side=False).eval()
    for h, w in ((64, 128), (48, 208)):
        x, side = textured(h, w), textured(h, w, seed=1)
        out = model(x, side)
        assert out["x_hat"].shape == out["side_syn"].shape == x.shape
        assert torch.isin(out["side_syn"].flatten(), side.flatten()).all()


def test_widened_si_net_is_the_same_function_and_the_host_graph_uses_it() -> None:
    """onnxruntime runs a 12-channel conv chain 2x slower than a 16-channel one (layout changes after
    every layer): the host graph carries the SI-Net widened with zero channels, the same function."""
    torch.manual_seed(0)
    net = RefineNet(12, residual=True)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    wide = net.widened(16)
    assert (net.width, wide.width) == (12, 16)
    x, side = textured(32, 64), textured(32, 64, seed=1)
    torch.testing.assert_close(wide(x, side), net(x, side), rtol=0, atol=1e-6)
    model = build_model("dsin", **TINY, **{**BAND_DSIN, "si_width": 12}, reencode_side=False)
    assert RefineGraph(model).model.si_net.width == 16  # the graph that runs the SI-Net
    assert model.si_net.width == 12  # the trained model is left as it is
    assert RefineGraph(build_model("dsin", **TINY, **BAND_DSIN, reencode_side=False)).model.si_net.width == 8


# --- NDIC-CAM: row attention ----------------------------------------------------------------------


def test_residual_si_net_starts_at_the_intra_reconstruction_and_learns_a_correction() -> None:
    """A DSIN warm-started from an intra codec must not start below it: with si_residual its x_hat
    is x_dec (in the image range, as the intra codec shows it) exactly at init, where the reference's
    identity SI-Net halves negative values."""
    torch.manual_seed(0)
    x, side = textured(64, 128), textured(64, 128, seed=1)
    residual = build_model("dsin", **TINY, **BAND_DSIN, reencode_side=False, si_residual=True).eval()
    out = residual(x, side)
    torch.testing.assert_close(out["x_hat"], out["x_dec"].clamp(0, 1), rtol=0, atol=0)
    reference = build_model("dsin", **TINY, **BAND_DSIN, reencode_side=False).eval()
    reference.load_state_dict(residual.state_dict())
    assert not torch.allclose(reference(x, side)["x_hat"], out["x_dec"], atol=1e-3)
    # one step on the SI-Net moves x_hat towards x: the correction is trainable from zero
    optimizer = torch.optim.SGD(residual.si_net.parameters(), lr=1e-3)
    before = F.mse_loss(residual(x, side)["x_hat"], x)
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(residual(x, side)["x_hat"], x).backward()
        optimizer.step()
    assert F.mse_loss(residual(x, side)["x_hat"], x) < before


def test_row_attention_sees_only_its_band() -> None:
    torch.manual_seed(0)
    cam = BandAttention(channels=4, block=4, rows=1, dim=8, heads=2, dim_head=4, dropout=0.0).eval()
    x_feat, side_feat = torch.randn(1, 4, 9, 24), torch.randn(1, 4, 9, 24)
    with torch.no_grad():
        base = cam(x_feat, side_feat)
        # Query (4, 9): block 2 (columns 8..11) sees side columns 4..15, rows 3..5.
        far = side_feat.clone()
        far[..., 7:, :] += 5.0  # rows below the band
        far[..., :3, :] += 5.0  # rows above it
        far[..., 16:] += 5.0  # columns beyond the window
        assert torch.equal(cam(x_feat, far)[..., 4, 9], base[..., 4, 9])
        near = side_feat.clone()
        near[..., 5, 15] += 5.0
        assert not torch.equal(cam(x_feat, near)[..., 4, 9], base[..., 4, 9])
    assert base.shape == (1, 8, 9, 24)


def test_rows_mode_runs_at_every_size_with_the_same_weights() -> None:
    torch.manual_seed(0)
    model = build_model("ndic_cam", **TINY, **ROWS_CAM)
    names = {n for n, _ in model.named_parameters()}
    assert {"cams.0.rel_bias", "cams.1.rel_bias"} <= names
    x, side = textured(64, 128), textured(64, 128, seed=1)
    out = model(x, side)
    loss = model.loss(out, x, side, 0.01, F.mse_loss)["loss"]
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("cams."))
    model.eval()
    for h, w in ((48, 80), (96, 336)):
        assert model(textured(h, w), textured(h, w, seed=1))["x_hat"].shape == (1, 3, h, w)


def test_rows_mode_needs_a_disparity_bound() -> None:
    with pytest.raises(ConfigError, match="max_disparity"):
        build_model("ndic_cam", patch_mode="rows", max_disparity=0)


# --- one ONNX graph for every size ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [("ndic_cam", ROWS_CAM), ("dsin", {**BAND_DSIN, "reencode_side": False})],
    ids=["ndic_cam-rows", "dsin-band"],
)
def test_host_graph_exports_once_for_every_size(name: str, options: dict, tmp_path: Path) -> None:
    """One dynamic graph runs at every size; DSIN's host side is two (host -> x_dec, refine -> x_hat),
    which together compute its synthesis up to the rounding of x_dec to 8 bits between them."""
    import onnxruntime as ort

    from stereodsc.export.graphs import (
        REFINE_INPUTS,
        HostGraph,
        RefineGraph,
        export_graph,
        fixed_size_reason,
        host_input_names,
        refines_decode,
        to_float,
        to_uint8,
    )

    torch.manual_seed(0)
    model = build_model(name, **TINY, **options).eval()
    split = refines_decode(model)
    assert split == (name == "dsin")
    assert fixed_size_reason(model, "host") is None and fixed_size_reason(model, "refine") is None
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(-3, 4, (1, 8, 4, 8))).to(torch.int32)
    side = torch.from_numpy(rng.integers(0, 256, (1, 64, 128, 3), dtype=np.uint8))
    names = host_input_names(model)
    export_graph(HostGraph(model), (y, side)[: len(names)], tmp_path / "host.onnx", names, ("image",), 18, 16)
    host = ort.InferenceSession(str(tmp_path / "host.onnx"), providers=["CPUExecutionProvider"])
    if split:
        assert isinstance(model, DSIN)
        export_graph(
            RefineGraph(model), (side, side.flip(2)), tmp_path / "refine.onnx", REFINE_INPUTS, ("image",), 18, 16
        )
        refine = ort.InferenceSession(str(tmp_path / "refine.onnx"), providers=["CPUExecutionProvider"])
    for h, w in ((64, 128), (48, 208)):
        y = torch.from_numpy(rng.integers(-3, 4, (1, 8, h // 16, w // 16))).to(torch.int32)
        side_img = (255 * textured(h, w, seed=2)).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        feed = {"y": y.numpy(), "side": side_img.numpy()}
        (got,) = host.run(None, {k: feed[k] for k in names})
        if split:
            (got,) = refine.run(None, {"x_dec": got, "side": side_img.numpy()})
        with torch.no_grad():
            want = to_uint8(model.synthesis({"y": y.float()}, to_float(side_img))).numpy()
        assert got.shape == (1, h, w, 3)
        assert np.abs(got.astype(int) - want).max() <= (2 if split else 1)
