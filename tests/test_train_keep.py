"""Runs that span machines: the compact checkpoint kept in the repository resumes a fresh clone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stereodsc.errors import CheckpointError
from stereodsc.train.checkpoint import load_checkpoint, model_from_checkpoint
from stereodsc.train.config import config_from_dict
from stereodsc.train.loop import train
from test_train import tiny_config


def test_a_fresh_clone_resumes_from_the_kept_checkpoint(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    keep = tmp_path / "weights" / "run.pt"
    cfg = config_from_dict(tiny_config(tmp_path / "runs" / "run", "ndic", steps=3, keep=str(keep), lr=3e-4))
    first = train(cfg, progress=False, stop_after=2)
    kept = load_checkpoint(keep)
    assert kept["step"] == 2 and "optimizer" not in kept and kept["lr"] == pytest.approx(3e-4)
    model, _ = model_from_checkpoint(keep)  # a valid checkpoint for export, eval and init_from
    for k, v in first.model.state_dict().items():  # the weights, rounded to float16 (half the bytes)
        assert kept["model_state"][k].dtype == (torch.float16 if v.is_floating_point() else v.dtype)
        assert torch.equal(v.half().float() if v.is_floating_point() else v, model.state_dict()[k])

    shutil.rmtree(tmp_path / "runs")  # the next session: a fresh clone has only the committed file
    with pytest.raises(CheckpointError, match="--resume"):
        train(cfg, progress=False)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.step == 3 and load_checkpoint(keep)["step"] == 3
    assert (tmp_path / "runs" / "run" / "latest.pt").is_file()
