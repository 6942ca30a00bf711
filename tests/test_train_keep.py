"""Runs that span machines: the compact checkpoint kept in the repository resumes a fresh clone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stereodsc.cli import main
from stereodsc.errors import CheckpointError
from stereodsc.train.checkpoint import load_checkpoint, model_from_checkpoint
from stereodsc.train.config import config_from_dict
from stereodsc.train.loop import train
from test_train import tiny_config, write_toml


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


def _constants(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def test_a_compact_checkpoint_keeps_the_models_constants_exact(tmp_path: Path) -> None:
    """float16 turns the likelihood floor 1e-9 and the GDN pedestal 2**-36 into 0, which gave training
    infinite rates and NaN gradients: constants are not saved, a loaded model keeps the code's values."""
    torch.set_num_threads(1)
    keep = tmp_path / "weights" / "run.pt"
    cfg = config_from_dict(tiny_config(tmp_path / "run", "balle2018", steps=1, keep=str(keep)))
    trained = train(cfg, progress=False)
    expected = _constants(trained.model)
    assert any(b.item() == pytest.approx(1e-9) for b in expected.values() if b.numel() == 1)
    assert any(0 < b.item() < 1e-10 for b in expected.values() if b.numel() == 1)  # the pedestal
    kept = load_checkpoint(keep)
    assert not set(expected) & set(kept["model_state"]), "constants were saved"
    loaded, _ = model_from_checkpoint(keep)
    assert all(torch.equal(b, expected[name]) for name, b in _constants(loaded).items())


def test_constants_saved_by_older_checkpoints_are_ignored(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = config_from_dict(tiny_config(tmp_path / "run", "balle2018", steps=1))
    trained = train(cfg, progress=False)
    expected = _constants(trained.model)
    ckpt = load_checkpoint(trained.latest_path)
    # what a compact checkpoint of an earlier version held: every buffer, in float16 (1e-9 -> 0)
    ckpt["model_state"].update({name: b.half() for name, b in expected.items()})
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    loaded, _ = model_from_checkpoint(old)
    assert all(torch.equal(b, expected[name]) for name, b in _constants(loaded).items())
    ckpt["model_state"]["g_a.not_a_layer.weight"] = torch.zeros(1)
    torch.save(ckpt, old)
    with pytest.raises(RuntimeError, match="not_a_layer"):  # a key the model does not have still fails
        model_from_checkpoint(old)


def test_keep_best_commits_the_best_validated_weights_not_the_latest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that trained on past its best validation (a regression, or a stop between validations)
    puts its best weights in the committed file with one command; a fresh clone resumes from them."""
    torch.set_num_threads(1)
    keep, out = tmp_path / "weights" / "run.pt", tmp_path / "runs" / "run"
    raw = tiny_config(out, "balle2018", steps=1, keep=str(keep))
    train(config_from_dict(raw), progress=False)  # validates at step 1: best.pt
    raw["train"] |= {"steps": 10, "validate_every": 100}
    train(config_from_dict(raw), resume=True, progress=False, stop_after=2)  # steps 2-3, stopped unvalidated
    assert load_checkpoint(keep)["step"] == 3
    config = write_toml(tmp_path / "run.toml", raw)

    assert main(["train", "--config", str(config), "--keep-best"]) == 0
    assert "step 1" in capsys.readouterr().out
    best, kept = load_checkpoint(out / "best.pt"), load_checkpoint(keep)
    assert kept["step"] == 1 and "optimizer" not in kept and kept["best_val"] == best["best_val"]
    for k, v in best["model_state"].items():
        assert torch.equal(kept["model_state"][k], v.half() if v.is_floating_point() else v)

    shutil.rmtree(out)  # a fresh clone: only the committed file
    resumed = train(config_from_dict(raw), resume=True, progress=False, stop_after=1)
    assert resumed.step == 2  # from the best step, 1
    shutil.rmtree(out)  # a run that never validated has nothing to keep
    assert main(["train", "--config", str(config), "--keep-best"]) != 0
    assert "has not validated yet" in capsys.readouterr().err
