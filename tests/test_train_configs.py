"""The native-scale configs: every one builds, fits the camera budget, and continues on a fresh clone."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stereodsc.models import build_model, edge_macs
from stereodsc.tomlio import load_toml
from stereodsc.train.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
NATIVE = sorted((REPO / "configs").glob("*_native_*.toml"))
EXPERIMENTS = sorted((REPO / "configs" / "experiments").glob("*.toml"))  # runs outside `make native-weights`


def test_there_are_six_to_eight_rate_points_per_native_codec() -> None:
    for model in ("balle2018", "dsin", "ndic"):
        lambdas = [load_toml(p)["train"]["lmbda"] for p in NATIVE if p.name.startswith(f"{model}_native_")]
        assert 6 <= len(lambdas) <= 8 and min(lambdas) <= 1e-4 and max(lambdas) >= 0.05, model


@pytest.mark.parametrize("path", NATIVE + EXPERIMENTS, ids=[p.stem for p in NATIVE + EXPERIMENTS])
def test_native_config_is_valid_and_resumable_from_the_repository(path: Path, tmp_path: Path) -> None:
    raw = load_toml(path)
    keeps = {load_toml(p)["train"]["keep"] for p in NATIVE}
    t, d = raw["train"], raw["data"]
    assert t["keep"] == f"weights/{path.stem}.pt" and t["out"] == f"runs/{path.stem}"
    # what a run starts from or decodes its side images with is another run's committed checkpoint
    assert t.get("init_from", t["keep"]) in keeps and set(d.get("side_codec", [])) <= keeps
    assert all(s.startswith("weights/balle2018_native_") for s in d.get("side_codec", []))
    patched = copy.deepcopy(raw)  # the data and the other runs' checkpoints need not exist here
    patched["data"]["path"] = str(tmp_path)
    patched["data"].pop("side_codec", None)
    patched["train"].pop("init_from", None)
    cfg = config_from_dict(patched, str(path))
    model = build_model(cfg.model.name, cfg.model.preset, **cfg.model.options)
    assert edge_macs(model)["edge_graph"] < 1.5e9
    assert all(c % model.stride == 0 for c in cfg.data.crop or [])


# DSIN at each native quality shares its backbone with the intra codec of its lambda (it starts from it, and
# scripts/intra_from_dsin.py makes the intra codec its trained backbone)
DSIN = [p for p in NATIVE if load_toml(p)["model"]["name"] == "dsin"]


@pytest.mark.parametrize("path", DSIN, ids=[p.stem for p in DSIN])
def test_dsin_builds_its_backbone_as_the_intra_codec_it_shares_it_with(path: Path) -> None:
    """A post-filter or decoder width set on one side only would make DSIN's camera or host graph
    differ from the intra codec's: the bundle would ship two graphs, and the weights would not load."""
    raw = load_toml(path)
    intra = load_toml(REPO / raw["train"]["init_from"].replace("weights/", "configs/").replace(".pt", ".toml"))
    assert intra["model"]["name"] == "balle2018" and intra["train"]["lmbda"] == raw["train"]["lmbda"]
    ours = build_model(raw["model"]["name"], raw["model"]["preset"], **raw["model"].get("options", {}))
    theirs = build_model(intra["model"]["name"], intra["model"]["preset"], **intra["model"].get("options", {}))
    shared = (ours.config.keys() & theirs.config.keys()) - {"name"}
    assert {k: ours.config[k] for k in shared} == {k: theirs.config[k] for k in shared}
    assert set(theirs.state_dict()) < set(ours.state_dict())


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_native_weights_makes_each_shipped_intra_codec_from_dsin_after_its_run() -> None:
    """On a fresh clone `make native-weights` continues DSIN and then writes the intra weights from its
    backbone: an intra run trained on alone would part the two and the bundle would ship two camera graphs."""
    plan = subprocess.run(
        ["make", "-n", "-B", "native-weights"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    manifest = json.loads((REPO / "src/stereodsc/bundles/native/manifest.json").read_text())
    shipped = [q["lmbda"] for q in manifest["codecs"]["side_info"]["qualities"]]
    assert shipped
    for lmbda in shipped:
        point = f"{lmbda:g}"
        dsin = plan.index(next(c for c in plan if f"train --config configs/dsin_native_l{point}.toml" in c))
        intra = plan.index(next(c for c in plan if c.endswith(f"scripts/intra_from_dsin.py {point}")))
        alone = [c for c in plan if f"--config configs/balle2018_native_l{point}.toml" in c]
        assert dsin < intra, point
        # trained alone only to start DSIN on a clone without its weights
        assert all(c.startswith(f"test -f weights/dsin_native_l{point}.pt || ") for c in alone), point
