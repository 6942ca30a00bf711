"""The native-scale training mix of ../shared/data (fixed held-out split) and decoded side images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from stereodsc.errors import ConfigError
from stereodsc.train.checkpoint import model_from_checkpoint
from stereodsc.train.config import config_from_dict
from stereodsc.train.datasets import MIX_SOURCES, native_mix_pairs
from stereodsc.train.loop import Trainer, decode_image, train
from test_train import tiny_config


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not all((SHARED_DATA / s.folder).is_dir() for s in MIX_SOURCES.values()):
        pytest.skip(f"the native mix needs ../shared/data at {SHARED_DATA} (set STEREODSC_SHARED_DATA)")
    return SHARED_DATA


def source_of(path: Path) -> str:
    return next(k for k, s in MIX_SOURCES.items() if s.folder in path.parts)


def test_held_out_pairs_are_never_trained_on(shared_data: Path) -> None:
    train_pairs, weights, val = native_mix_pairs(shared_data)
    trained = {p.x for p in train_pairs} | {p.side for p in train_pairs}
    held = {p.x for p in val} | {p.side for p in val}
    assert not trained & held
    # the written-down split: drive's last 20 frames, odometry 09-10, 2 Middlebury scenes, 1 SID pair
    assert Counter(source_of(p.x) for p in val) == {"kitti_drive": 20, "kitti_odometry": 6, "middlebury": 2, "sid": 1}
    assert {p.x.stem for p in val if source_of(p.x) == "kitti_drive"} == {f"{i:010d}" for i in range(88, 108)}
    assert all(p.x.stem.endswith("_R") or "image_03" in p.x.parts for p in val)  # x = the right camera
    # both directions of every training pair; each source gets its share of the draws
    assert len(train_pairs) == 2 * (88 + 24 + 6 + 2)
    shares = Counter()
    for pair, weight in zip(train_pairs, weights, strict=True):
        shares[source_of(pair.x)] += weight
    assert shares == pytest.approx({k: s.weight for k, s in MIX_SOURCES.items()})


def test_native_crops_come_from_every_source(shared_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "balle2017")
    cfg["data"] = {"kind": "native_mix", "path": str(shared_data), "protocol": "native", "crop": [256, 512]}
    trainer = Trainer(config_from_dict(cfg), progress=False)
    rng = np.random.default_rng(0)
    drawn = Counter(source_of(trainer.train_set.pairs[i].x) for i in trainer.train_set.draw(rng, 400))
    assert set(drawn) == set(MIX_SOURCES) and drawn["kitti_drive"] > drawn["sid"]
    x, side = trainer.batch(0)
    assert x.shape == side.shape == (1, 3, 256, 512)


def test_validation_reports_each_held_out_data_set(shared_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, "balle2017")
    cfg["data"] = {"kind": "native_mix", "path": str(shared_data), "protocol": "native", "crop": [256, 512]}
    cfg["train"]["max_val_pairs"] = 29
    trainer = Trainer(config_from_dict(cfg), progress=False)
    trainer._validate_and_log([])
    by_source = trainer.metrics["val_by_source"]
    assert set(by_source) == set(MIX_SOURCES)
    assert all(0 < m["psnr"] < 60 and m["bpp"] > 0 for m in by_source.values())


def test_side_codec_gives_the_decoded_reference_view(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    intra = train(config_from_dict(tiny_config(tmp_path / "intra", "balle2017", steps=1)), progress=False)
    codec = str(tmp_path / "intra" / "latest.pt")
    cfg = tiny_config(tmp_path / "si", "ndic")
    cfg["data"] = {**cfg["data"], "side_codec": [codec], "swap": False, "flip": False, "crop": None}
    trainer = Trainer(config_from_dict(cfg), progress=False)
    pair = trainer.val_set.pairs[0]
    _, side = trainer.val_set.get(0)
    model, _ = model_from_checkpoint(codec)
    original = trainer.val_set.cache(pair.side)
    assert np.array_equal(side, decode_image(model, original)) and not np.array_equal(side, original)
    assert intra.model.name == "balle2017"
    with pytest.raises(ConfigError, match="swap = false"):
        config_from_dict({**cfg, "data": {**cfg["data"], "swap": True}})
    with pytest.raises(ConfigError, match="train the intra codec first"):
        config_from_dict({**cfg, "data": {**cfg["data"], "side_codec": [str(tmp_path / "none.pt")]}})
