"""The camera board's cost: MAC counts of the edge graph (g_a, plus h_a with a hyperprior).

Integer counts from layer shapes only, so nothing here depends on the machine's float arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stereodsc.models import EDGE_PRESETS, PRESETS, build_model, count_macs, edge_macs
from stereodsc.models.layers import GDN

EDGE_BUDGET = 1.5e9  # MAC per 375x1242 frame (issue 13: at least 3x below the 5.3 GMAC of Ballé's encoder)
# Every model a deployable preset builds, on the backbones the native configs use.
EDGE_MODELS = [
    ("balle2017", {}),
    ("balle2018", {}),
    ("ndic", {"backbone": "balle2018"}),
    ("ndic_cam", {"backbone": "balle2018", "patch_mode": "rows"}),
    ("dsin", {"backbone": "balle2018", "search": "band", "max_row_offset": 2}),
]


def test_count_macs_of_known_layers() -> None:
    conv = nn.Conv2d(3, 8, 5, stride=2, padding=2)
    assert count_macs(conv, torch.zeros(1, 3, 16, 32)) == 8 * 16 * 3 * 25 * 8
    depthwise = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8)
    assert count_macs(depthwise, torch.zeros(1, 8, 16, 32)) == 8 * 8 * 16 * 25
    deconv = nn.ConvTranspose2d(4, 6, 5, stride=2, padding=2, output_padding=1)
    assert count_macs(deconv, torch.zeros(1, 4, 8, 8)) == 4 * 64 * 6 * 25
    assert count_macs(GDN(8), torch.zeros(1, 8, 4, 4)) == 8 * 16 * 8
    assert count_macs(nn.Sequential(conv, GDN(8)), torch.zeros(1, 3, 16, 32)) == 8 * 128 * 75 + 8 * 128 * 8


@pytest.mark.parametrize("preset", EDGE_PRESETS)
@pytest.mark.parametrize(("name", "options"), EDGE_MODELS, ids=[m[0] for m in EDGE_MODELS])
def test_every_edge_preset_fits_the_camera_budget(preset: str, name: str, options: dict) -> None:
    macs = edge_macs(build_model(name, preset, **options))
    assert macs["edge_graph"] < EDGE_BUDGET, macs
    if "h_a" in macs:  # the integer scale net also runs on the camera (to pick y's tables)
        assert macs["edge_graph"] + macs["h_s"] < EDGE_BUDGET, macs


def test_the_reference_encoder_is_what_the_issue_measured() -> None:
    """Ballé's full encoder (presets "small" / "paper", the papers' models) costs 5.3 GMAC per frame."""
    assert set(EDGE_PRESETS) < set(PRESETS)
    assert edge_macs(build_model("balle2017", "small"))["g_a"] == pytest.approx(5.34e9, rel=0.01)
    native = edge_macs(build_model("balle2018", "native"))
    assert native["edge_graph"] + native["h_s"] < edge_macs(build_model("balle2017", "small"))["g_a"] / 3


def test_macs_are_counted_at_the_padded_size() -> None:
    model = build_model("balle2018", "native")  # stride 64: 375x1242 is coded as 384x1280
    assert edge_macs(model, (375, 1242)) == edge_macs(model, (384, 1280))
    assert edge_macs(model, (384, 1344))["g_a"] > edge_macs(model, (384, 1280))["g_a"]
