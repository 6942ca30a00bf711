"""Training data, configuration, checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stereodsc.errors import CheckpointError, ConfigError, DataError
from stereodsc.train.checkpoint import load_checkpoint, save_checkpoint
from stereodsc.train.config import config_from_dict, load_config
from stereodsc.train.datasets import (
    Augment,
    cityscapes_sequence,
    folder_sequence,
    kitti_list_pairs,
    kitti_raw_sequence,
    make_pairs,
)
from stereodsc.train.loop import Trainer, build_pairs, train

TINY = {"N": 8, "M": 8}


def tiny_config(out: Path, name: str = "balle2017", steps: int = 2, **train: object) -> dict:
    return {
        "model": {"name": name, "preset": "small", "options": TINY},
        "data": {"kind": "sample", "val_frames": 2, "crop": [64, 64]},
        "train": {
            "steps": steps,
            "validate_every": 1,
            "checkpoint_every": 1,
            "out": str(out),
            "max_val_pairs": 1,
            "lmbda": 0.01,
            **train,
        },
    }


def write_toml(path: Path, raw: dict) -> Path:
    """`raw` (a tiny_config) as the TOML file `stereodsc train --config` reads."""
    from stereodsc.tomlio import dump_toml

    model = raw["model"]
    sections = {k: v for k, v in raw.items() if k != "model"}
    path.write_text(
        dump_toml(
            sections | {"model": {"name": model["name"], "preset": model["preset"]}, "model.options": model["options"]}
        )
    )
    return path


# ---- pairing ---------------------------------------------------------------------------------


def test_stereo_pairs_are_simultaneous_left_right(sample_drive: Path) -> None:
    seq = kitti_raw_sequence(sample_drive)
    assert len(seq.left) == 12
    pairs = make_pairs(seq, "stereo", both_directions=False)
    assert {(p.x.parts[-3], p.side.parts[-3]) for p in pairs} == {("image_02", "image_03")}
    assert all(p.x.name == p.side.name for p in pairs)
    assert len(pairs) == 12


def test_general_pairs_shift_time_by_one_to_three(sample_drive: Path) -> None:
    seq = kitti_raw_sequence(sample_drive)
    pairs = make_pairs(seq, "general", max_shift=3, both_directions=True)
    shifts = {int(p.side.stem) - int(p.x.stem) for p in pairs}
    assert shifts == {-3, -2, -1, 1, 2, 3}
    # both directions: for each (left t, right t+k) there is (right t, left t+k)
    dirs = {(p.x.parts[-3], p.side.parts[-3]) for p in pairs}
    assert dirs == {("image_02", "image_03"), ("image_03", "image_02")}
    # frame 0 has partners at +1..+3 only: 3 shifts x 2 directions
    assert sum(p.frame == 0 for p in pairs) == 6


def test_validation_frames_are_held_out(sample_drive: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(tmp_path) | {"data": {"kind": "sample", "val_frames": 3, "pairing": "both"}})
    train_pairs, val_pairs = build_pairs(cfg)
    train_files = {p.x.name for p in train_pairs} | {p.side.name for p in train_pairs}
    val_files = {p.x.name for p in val_pairs}
    assert not train_files & val_files, "a validation frame leaked into training (also through general pairs)"
    assert len(val_pairs) == 6


def test_augment_swaps_flips_and_crops_jointly() -> None:
    x = (np.arange(8 * 16 * 3) % 200).astype(np.uint8).reshape(8, 16, 3)
    y = x + 1
    seen_swap = seen_flip = False
    for seed in range(20):
        ax, ay = Augment(crop=(4, 8), flip=True, swap=True)(x, y, np.random.default_rng(seed))
        assert ax.shape == (4, 8, 3)
        diff = ay.astype(int) - ax.astype(int)
        assert np.all(diff == diff.flat[0]) and abs(diff.flat[0]) == 1, "x and y must be cropped at the same place"
        seen_swap |= diff.flat[0] == -1
        seen_flip |= bool(ax[0, 0, 0] > ax[0, 1, 0])
    assert seen_swap and seen_flip


def test_folder_and_list_and_cityscapes_layouts(tmp_path: Path, sample_drive: Path) -> None:
    src = sorted((sample_drive / "image_02" / "data").iterdir())[:2]
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i, p in enumerate(src):
        shutil.copy(p, folder / f"f{i}_L.png")
        shutil.copy(p, folder / f"f{i}_R.png")
    seq = folder_sequence(folder)
    assert [p.name for p in seq.left] == ["f0_L.png", "f1_L.png"]
    (folder / "orphan_L.png").write_bytes(src[0].read_bytes())
    with pytest.raises(DataError, match="orphan"):
        folder_sequence(folder)

    lst = tmp_path / "KITTI_stereo_train.txt"
    lst.write_text("a/image_2/000000_10.png\na/image_3/000000_10.png\n")
    pairs = kitti_list_pairs(lst, tmp_path)
    assert pairs[0].x == tmp_path / "a/image_2/000000_10.png" and pairs[0].side.name == "000000_10.png"
    lst.write_text("only_one_line.png\n")
    with pytest.raises(DataError, match="pairs"):
        kitti_list_pairs(lst, tmp_path)

    city = tmp_path / "cityscapes"
    (city / "leftImg8bit/train/aachen").mkdir(parents=True)
    (city / "rightImg8bit/train/aachen").mkdir(parents=True)
    shutil.copy(src[0], city / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    with pytest.raises(DataError, match="rightImg8bit"):
        cityscapes_sequence(city, "train")
    shutil.copy(src[0], city / "rightImg8bit/train/aachen/aachen_000000_000019_rightImg8bit.png")
    assert len(cityscapes_sequence(city, "train").right) == 1


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"model": {"name": "ndicc"}}, r"name = 'ndicc' is not a model; choose one of"),
        ({"model": {"name": "ndic", "options": {"alhpa": 1}}}, r"\['alhpa'\] not accepted by ndic"),
        (
            {"data": {"kind": "kitti_raw", "path": "/nonexistent/drive"}},
            r"path = '/nonexistent/drive' does not exist",
        ),
        ({"data": {"kind": "kitti_raw"}}, r"\[data\] path is required"),
        ({"train": {"lmbda": "high"}}, r"lmbda = 'high' should be a float"),
        ({"train": {"stepz": 3}}, r"unknown key\(s\) \['stepz'\] in \[train\]"),
        ({"trian": {}}, r"unknown section"),
        ({"train": {"device": "gpu"}}, r"device = 'gpu'; choose one of \['auto', 'cpu', 'cuda'\]"),
        ({"train": {"warmup": -5}}, r"warmup = -5 must be >= 0"),
    ],
)
def test_bad_config_fails_at_once_naming_the_key(patch: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(patch, "bad.toml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_asking_for_a_gpu_without_one_names_the_fix() -> None:
    from stereodsc.train.distributed import launch, pick_device

    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA build of torch"), launch("cuda"):
        pass


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "ndic"\n[model.options]\nalpha = 0.5\n[train]\nlmbda = 1\n')
    cfg = load_config(path)
    assert cfg.model.options == {"alpha": 0.5} and cfg.train.lmbda == 1.0
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


# ---- training and checkpoints -----------------------------------------------------------------


def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    straight = train(config_from_dict(tiny_config(tmp_path / "a", "ndic")), progress=False)
    first = train(config_from_dict(tiny_config(tmp_path / "b", "ndic")), progress=False, stop_after=1)
    assert first.step == 1
    resumed = train(config_from_dict(tiny_config(tmp_path / "b", "ndic")), resume=True, progress=False)
    assert resumed.step == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    log_lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(log_lines) == 2  # one validation per step, none repeated or lost


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on a CPU needs a C++ compiler (apt install g++); the fallback test covers its absence",
)
def test_a_compiled_training_step_computes_what_the_eager_one_does(tmp_path: Path) -> None:
    import torch._inductor.config as inductor_config

    torch.set_num_threads(1)
    eager = train(config_from_dict(tiny_config(tmp_path / "eager")), progress=False)
    # The eager RNG, for the same quantisation noise. Not monkeypatch: its undo deletes the setting,
    # which torch's config module takes as "hide it", and torch.export (ONNX export) then fails.
    with inductor_config.patch(fallback_random=True):
        compiled = train(config_from_dict(tiny_config(tmp_path / "compiled", compile=True)), progress=False)
    assert compiled._compiled_step is not None  # it really ran compiled, not the fallback

    def train_losses(run: str) -> list[float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train"]["loss"] for line in lines]

    assert train_losses("compiled") == pytest.approx(train_losses("eager"), rel=1e-3)
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert a.keys() == b.keys()  # checkpoints of a compiled run load anywhere
    assert max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()) < 1e-2


class _BackwardFails(torch.autograd.Function):
    """Identity whose backward raises, as a backward pass that torch cannot compile does."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("InductorError: CppCompileError: C++ compile error (backward)")


def _no_compiler(fn: Callable[..., Any]) -> Callable[..., Any]:
    def fails(*args: object) -> object:
        raise RuntimeError("InductorError: CppCompileError: C++ compile error")

    return fails


def _backward_does_not_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    def forward_only(*args: Any) -> Any:
        out, terms = fn(*args)
        return out, {**terms, "loss": _BackwardFails.apply(terms["loss"])}

    return forward_only


@pytest.mark.parametrize("failing", [_no_compiler, _backward_does_not_compile])
def test_where_compiling_fails_training_goes_on_eagerly(
    failing: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The run logs once and trains on eagerly, with the same noise and weights as an eager run."""
    torch.set_num_threads(1)
    eager = train(config_from_dict(tiny_config(tmp_path / "eager")), progress=False)
    monkeypatch.setattr(torch, "compile", failing)
    with caplog.at_level(logging.WARNING, logger="stereodsc.train.loop"):
        trainer = train(config_from_dict(tiny_config(tmp_path / "run", compile=True)), progress=False)
    assert trainer.step == 2 and trainer._compiled_step is None
    assert caplog.text.count("torch.compile failed") == 1 and "compile = false" in caplog.text
    for k, v in eager.model.state_dict().items():
        assert torch.equal(v, trainer.model.state_dict()[k]), f"{k} differs from the eager run's"


def test_existing_run_requires_resume(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(tmp_path, steps=1))
    train(cfg, progress=False)
    with pytest.raises(CheckpointError, match="--resume"):
        train(cfg, progress=False)


def test_warm_start_loads_weights_also_under_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`make weights` always passes --resume: a first run must still start from init_from (and say so)."""
    torch.set_num_threads(1)
    base = train(config_from_dict(tiny_config(tmp_path / "base", "ndic", steps=1)), progress=False)
    cfg = config_from_dict(tiny_config(tmp_path / "low", "ndic", init_from=str(tmp_path / "base/latest.pt")))
    with caplog.at_level("INFO", logger="stereodsc.train.loop"):
        low = train(cfg, resume=True, progress=False, stop_after=0)
    for k, v in base.model.state_dict().items():
        assert torch.equal(v, low.model.state_dict()[k]), f"{k} was not warm-started"
    assert "warm start from" in caplog.text and "the whole ndic model" in caplog.text


def test_a_kept_run_continues_without_the_weights_it_was_started_from(tmp_path: Path) -> None:
    """On a fresh clone a lower rate point continues from its kept weights even when the higher one it
    was warm-started from was never committed; a fresh start still needs them, and is told so."""
    torch.set_num_threads(1)
    missing = str(tmp_path / "higher_rate.pt")
    raw = tiny_config(tmp_path / "run", steps=1, keep=str(tmp_path / "kept.pt"), init_from=missing)
    with pytest.raises(ConfigError, match=r"higher_rate\.pt.*is neither a checkpoint file"):
        config_from_dict(raw)
    first = train(config_from_dict({**raw, "train": {**raw["train"], "init_from": ""}}), progress=False)
    shutil.rmtree(tmp_path / "run")  # a fresh clone: only the kept weights
    later = train(config_from_dict({**raw, "train": {**raw["train"], "steps": 2}}), resume=True, progress=False)
    assert first.step == 1 and later.step == 2


def test_fresh_optimiser_moments_ramp_the_learning_rate_up(tmp_path: Path) -> None:
    """[train] warmup: a new run, and a run continued from its kept compact checkpoint (a fresh clone,
    fresh Adam moments), take their first steps at a fraction of the learning rate; a run continued
    from its full checkpoint goes on with the ramp where it was; the schedule's own rate is untouched."""
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path / "run", steps=2, keep=str(tmp_path / "kept.pt"), warmup=4)
    first = train(config_from_dict(raw), progress=False)
    assert [first.warmup_factor(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert first.optimizer.param_groups[0]["lr"] == first.cfg.train.lr
    resumed = train(config_from_dict({**raw, "train": {**raw["train"], "steps": 3}}), resume=True, progress=False)
    assert resumed.moments_from == 0 and resumed.warmup_factor(2) == 0.75
    shutil.rmtree(tmp_path / "run")  # a fresh clone: only the kept weights, no optimiser moments
    later = train(config_from_dict({**raw, "train": {**raw["train"], "steps": 4}}), resume=True, progress=False)
    assert later.moments_from == 3 and later.warmup_factor(3) == 0.25
    # Adam's first step moves each weight by lr * g / |g|: at a quarter of the rate, by a quarter as much.
    moved = {}
    for warmup in (0, 4):
        trainer = Trainer(
            config_from_dict(tiny_config(tmp_path / f"w{warmup}", steps=1, warmup=warmup)), progress=False
        )
        before = trainer.model.g_s.state_dict()["0.0.weight"].clone()
        trainer.run()
        moved[warmup] = trainer.model.g_s.state_dict()["0.0.weight"] - before
    assert torch.allclose(moved[4], moved[0] / 4, rtol=1e-3, atol=1e-9) and moved[0].abs().max() > 0


def test_frozen_parts_keep_their_weights_and_the_rest_trains(tmp_path: Path) -> None:
    """[train] frozen: a host-side fine-tune leaves the camera's encoder and the entropy model (the
    bitstream) exactly as they were, quantiles included, and trains the decoder."""
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path / "run", steps=2, frozen=["g_a.", "prior."])
    trainer = Trainer(config_from_dict(raw), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    frozen = [k for k in before if k.startswith(("g_a.", "prior."))]
    assert any(k.endswith("quantiles") for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), f"{k} moved although frozen"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("g_s."))
    with pytest.raises(ConfigError, match=r"frozen = 'si_net\.' names no parameter of this model; its parts are"):
        Trainer(config_from_dict(tiny_config(tmp_path / "x", frozen=["si_net."])), progress=False)
    with pytest.raises(ConfigError, match="leaves nothing to train"):
        Trainer(config_from_dict(tiny_config(tmp_path / "y", frozen=["g_a.", "g_s.", "prior."])), progress=False)


def test_related_model_warm_starts_its_shared_weights(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    base = train(config_from_dict(tiny_config(tmp_path / "ndic", "ndic", steps=1)), progress=False)
    init = str(tmp_path / "ndic/latest.pt")
    cam = train(
        config_from_dict(tiny_config(tmp_path / "cam", "ndic_cam", init_from=init)), progress=False, stop_after=0
    )
    theirs, ours = base.model.state_dict(), cam.model.state_dict()
    shared = [k for k in ours if k in theirs and theirs[k].shape == ours[k].shape]
    assert any(k.startswith("cams.") for k in ours) and not any(k.startswith("cams.") for k in shared)
    assert len(shared) > len(ours) // 2
    for k in shared:
        assert torch.equal(theirs[k], ours[k]), f"{k} was not warm-started"
    # The decoder layers that grew inputs for the attention output start as ndic's, zero-padded, so
    # the warm-started ndic_cam decodes exactly what ndic decodes.
    x, y = cam.batch(0)
    base.model.eval(), cam.model.eval()
    with torch.no_grad():
        assert torch.allclose(cam.model(x, y)["x_hat"], base.model(x, y)["x_hat"], atol=1e-5)
    with pytest.raises(CheckpointError, match="shares no weights"):
        trainer = Trainer(config_from_dict(tiny_config(tmp_path / "x")), progress=False)
        save_checkpoint(tmp_path / "foreign.pt", {"model": "other", "model_config": {}, "model_state": {}, "step": 0})
        trainer.warm_start(str(tmp_path / "foreign.pt"))


def test_init_from_twice_puts_a_trained_si_net_on_a_retrained_intra_codec(tmp_path: Path) -> None:
    """DSIN trains on an intra codec's frozen backbone; once that codec is retrained, its SI-Net carries
    over: --init-from the DSIN weights, then --init-from the new intra weights, which win where they share."""
    from stereodsc.cli import main

    torch.set_num_threads(1)
    dsin = train(config_from_dict(tiny_config(tmp_path / "dsin", "dsin", steps=1)), progress=False)
    intra = train(config_from_dict(tiny_config(tmp_path / "intra", "balle2017", steps=1, seed=7)), progress=False)
    # lr 0: the run keeps the weights it starts from; another seed: a fresh SI-Net would differ from DSIN's
    config = write_toml(
        tmp_path / "tuned.toml", tiny_config(tmp_path / "tuned", "dsin", steps=1, lr=0.0, aux_lr=0.0, seed=3)
    )
    inits = ["--init-from", str(tmp_path / "dsin/latest.pt"), "--init-from", str(tmp_path / "intra/latest.pt")]
    assert main(["train", "--config", str(config), *inits, "-q"]) == 0
    tuned = load_checkpoint(tmp_path / "tuned/latest.pt")["model_state"]
    backbone, si_net = intra.model.state_dict(), dsin.model.state_dict()
    assert any(not torch.equal(v, si_net[k]) for k, v in backbone.items()), "the two runs should differ"
    for k, v in tuned.items():
        source = backbone if k in backbone else si_net
        assert torch.equal(v, source[k]), f"{k} is not the {'intra' if k in backbone else 'DSIN'} run's"
    assert any(k.startswith("si_net.") for k in tuned)
    with pytest.raises(ConfigError, match="init_then needs an init_from"):
        config_from_dict(tiny_config(tmp_path / "x", "dsin", init_then=[str(tmp_path / "intra/latest.pt")]))


@pytest.mark.parametrize(
    ("model", "lmbda", "expected"),
    [("dsin", 0.01, "dsin_native_l0.012.pt"), ("balle2018", 0.1, "balle2018_native_l0.05.pt")],
)
def test_init_from_a_shipped_bundle_starts_from_the_weights_it_was_exported_from(
    model: str, lmbda: float, expected: str
) -> None:
    """A rig's fine-tune names the bundle it runs: the codec of its [model] at the nearest rate."""
    cfg = config_from_dict(
        {"model": {"name": model, "preset": "native"}, "train": {"lmbda": lmbda, "init_from": "native"}}
    )
    assert Path(cfg.train.init_from).name == expected and Path(cfg.train.init_from).is_file()
    with pytest.raises(ConfigError, match="that bundle ships balle2018, dsin, not ndic"):
        config_from_dict({"model": {"name": "ndic"}, "train": {"init_from": "native"}})


def test_init_from_on_the_command_line_fine_tunes_a_kept_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user fine-tunes a trained model on their own rig: a config naming their data, and
    --init-from naming a compact checkpoint in weights/ (it overrides the config's init_from)."""
    from stereodsc.cli import main

    torch.set_num_threads(1)
    base = train(config_from_dict(tiny_config(tmp_path / "base", "ndic", steps=1)), progress=False)
    (tmp_path / "weights").mkdir()
    shutil.copy(tmp_path / "base" / "latest.pt", tmp_path / "weights" / "trained.pt")
    monkeypatch.chdir(tmp_path)
    # lr 0: the run keeps the weights it starts from, which shows where they came from.
    raw = tiny_config(tmp_path / "rig", "ndic", steps=1, lr=0.0, aux_lr=0.0, init_from="weights/other.pt")
    config = write_toml(tmp_path / "my_rig.toml", raw)
    assert main(["train", "--config", str(config), "--init-from", "trained", "-q"]) == 0
    tuned = load_checkpoint(tmp_path / "rig" / "latest.pt")
    assert tuned["train_config"]["train"]["init_from"] == str(Path("weights") / "trained.pt")
    for k, v in base.model.state_dict().items():
        assert torch.equal(v, tuned["model_state"][k]), f"{k} was not loaded"

    # the default bundle's ndic was exported from runs/ checkpoints that the repository does not keep
    config = write_toml(tmp_path / "new_rig.toml", {**raw, "train": {**raw["train"], "out": str(tmp_path / "new")}})
    assert main(["train", "--config", str(config), "--init-from", "default", "-q"]) == 2
    err = capsys.readouterr().err
    assert "its ndic at lambda 0.0025 was exported from latest.pt, which is not in weights" in err
    assert main(["train", "--config", str(config), "--init-from", "runs/nosuch.pt", "-q"]) == 2
    err = capsys.readouterr().err
    assert "neither a checkpoint file, a name in weights/ nor a shipped bundle" in err
    assert re.search(r"weights/ holds .*trained", err)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--init-from" in capsys.readouterr().out

    other = Trainer(config_from_dict(tiny_config(tmp_path / "wide", "ndic") | {"model": {"name": "ndic"}}))
    with pytest.raises(CheckpointError, match=r"set \[model\] preset and \[model.options\]"):
        other.warm_start("weights/trained.pt")


def test_a_checkpoint_written_before_an_option_existed_resumes_and_warm_starts(tmp_path: Path) -> None:
    """Options added later (DSIN's si_residual) take their default, what the old model computed:
    the shipped weights and runs in progress must not stop resuming when a model gains an option."""
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path / "old", "dsin", steps=1)
    raw["model"]["options"] = {**TINY, "si_width": 8, "patch": [16, 16]}
    trainer = train(config_from_dict(raw), progress=False)
    ckpt = torch.load(trainer.latest_path, weights_only=False)
    del ckpt["model_config"]["si_residual"]  # as written before the option existed
    torch.save(ckpt, trainer.latest_path)
    again = Trainer(config_from_dict(raw), progress=False)
    assert again.resume() and again.step == 1
    fresh = Trainer(config_from_dict(tiny_config(tmp_path / "new", "dsin") | {"model": raw["model"]}), progress=False)
    fresh.warm_start(str(trainer.latest_path))
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k])


def test_a_new_si_net_warm_starts_from_the_same_codec_with_another(tmp_path: Path) -> None:
    """DSIN retrained with a residual SI-Net keeps its trained backbone and SI-Finder; the new SI-Net
    starts fresh (its zero last layer: exactly the backbone's decode, in the image range) even where
    shapes match."""
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path / "plain", "dsin", steps=1)
    raw["model"]["options"] = {**TINY, "si_width": 8, "patch": [16, 16]}
    plain = train(config_from_dict(raw), progress=False)
    residual = {**raw["model"], "options": {**raw["model"]["options"], "si_residual": True}}
    fresh = Trainer(config_from_dict(tiny_config(tmp_path / "residual", "dsin") | {"model": residual}), progress=False)
    fresh.warm_start(str(plain.latest_path))
    theirs, ours = plain.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith("si_net."))
    x, y = fresh.batch(0)
    fresh.model.eval()
    with torch.no_grad():
        out = fresh.model(x, y)
    assert torch.equal(out["x_hat"], out["x_dec"].clamp(0, 1))
    other = {**raw["model"], "options": {**raw["model"]["options"], "max_disparity": 32}}
    with pytest.raises(CheckpointError, match=r"set \[model\] preset"):  # the edge or the finder differ
        Trainer(config_from_dict(tiny_config(tmp_path / "o", "dsin") | {"model": other})).warm_start(
            str(plain.latest_path)
        )


MINIMAL = {"N": 8, "M": 8, "encoder": "minimal", "edge_channels": [8, 8, 8], "hyper_channels": 8}


def minimal_trainer(folder: Path, **options: Any) -> Trainer:
    """A trainer of a tiny balle2018 with the camera's minimal encoder, MINIMAL's options changed by `options`."""
    model = {"name": "balle2018", "options": {**MINIMAL, **options}}
    return Trainer(config_from_dict(tiny_config(folder, "balle2018", steps=1) | {"model": model}), progress=False)


def test_a_wider_host_decoder_starts_as_the_narrow_one_and_learns(tmp_path: Path) -> None:
    """With the camera's minimal encoder, N is the host decoder's width alone: a quality may grow it.
    Warm-started from the narrow model, the wide one decodes what it did, and its new channels learn
    (zeros on both sides of a new unit would give them no gradient)."""
    torch.set_num_threads(1)
    narrow = minimal_trainer(tmp_path / "narrow")
    narrow.run()
    wide = minimal_trainer(tmp_path / "wide", N=16)
    assert wide.model.host_only_options == {"N", "post_width"}
    wide.warm_start(str(narrow.latest_path))
    theirs = narrow.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in wide.model.state_dict().items() if not k.startswith("g_s."))
    x, _ = wide.batch(0)
    narrow.model.eval(), wide.model.eval()
    with torch.no_grad():
        assert torch.allclose(wide.model(x)["x_hat"], narrow.model(x)["x_hat"], atol=1e-5)
    wide.forward_and_loss(x, x)[1]["loss"].backward()
    second = wide.model.g_s[1][0].weight  # ConvTranspose2d: (in, out, k, k); rows 8: are the new inputs
    assert torch.equal(second.detach()[8:, :8], torch.zeros_like(second[8:, :8]))
    assert second.grad is not None and second.grad[8:, :8].abs().sum() > 0


def test_a_larger_latent_grows_from_a_trained_model_and_a_smaller_one_is_refused(tmp_path: Path) -> None:
    """The high rates need more latent channels than a preset has: a model with a larger M warm-starts from
    the trained one and decodes what it did (the new channels feed the decoder through zeros), while its
    decoder learns to use them. A smaller M cannot start from it: a clear error, not a half-loaded model."""
    torch.set_num_threads(1)
    small = minimal_trainer(tmp_path / "m8")
    small.run()
    large = minimal_trainer(tmp_path / "m12", M=12)
    large.warm_start(str(small.latest_path))
    x, _ = large.batch(0)
    small.model.eval(), large.model.eval()
    with torch.no_grad():
        assert torch.allclose(large.model(x)["x_hat"], small.model(x)["x_hat"], atol=1e-5)
    large.model.train()  # training's noise stands in for rounding: small new latents carry signal
    large.forward_and_loss(x, x)[1]["loss"].backward()
    first = large.model.g_s[0][0].weight  # ConvTranspose2d: (in, out, k, k); rows 8: are the new latent channels
    assert torch.equal(first.detach()[8:], torch.zeros_like(first[8:]))
    assert first.grad is not None and first.grad[8:].abs().sum() > 0
    with pytest.raises(CheckpointError, match="only grow"):
        minimal_trainer(tmp_path / "m6", M=6).warm_start(str(small.latest_path))


def test_a_post_filter_starts_as_the_plain_decode_and_learns(tmp_path: Path) -> None:
    """An intra codec given a host post-filter (post_width) keeps every trained tensor and decodes
    exactly what it did (the filter's last layer starts at zero), while the filter learns; the camera's
    graph does not change, so it is a host-only option."""
    torch.set_num_threads(1)
    plain = minimal_trainer(tmp_path / "plain")
    plain.run()
    filtered = minimal_trainer(tmp_path / "filtered", post_width=8)
    filtered.warm_start(str(plain.latest_path))
    theirs = plain.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in filtered.model.state_dict().items() if k in theirs)
    assert any(k.startswith("post_net.") for k in filtered.model.state_dict())
    x, _ = filtered.batch(0)
    plain.model.eval(), filtered.model.eval()
    with torch.no_grad():
        assert torch.equal(filtered.model(x)["x_hat"], plain.model(x)["x_hat"])
    filtered.model.train()
    filtered.forward_and_loss(x, x)[1]["loss"].backward()
    last = filtered.model.post_net.net[-1].weight
    assert last.grad is not None and last.grad.abs().sum() > 0


def test_dsin_warm_starts_whole_under_another_loss_balance(tmp_path: Path) -> None:
    """si_weight only weighs the loss (x_dec against x_hat): a DSIN trained at 0.7 fine-tunes at 1.0
    with every tensor, while an option that shapes a graph still has to match."""
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path / "balanced", "dsin", steps=1)
    balanced = Trainer(config_from_dict(raw), progress=False)
    balanced.run()
    raw["model"]["options"] = {**raw["model"].get("options", {}), "si_weight": 1.0}
    raw["train"]["out"] = str(tmp_path / "side_only")
    side_only = Trainer(config_from_dict(raw), progress=False)
    side_only.warm_start(str(balanced.latest_path))
    assert side_only.model.si_weight == 1.0 and balanced.model.si_weight == 0.7
    theirs = balanced.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in side_only.model.state_dict().items())
    raw["model"]["options"]["M"] = 4
    with pytest.raises(CheckpointError):
        Trainer(config_from_dict(raw), progress=False).warm_start(str(balanced.latest_path))


def test_validation_reports_bpp_psnr_msssim(tmp_path: Path) -> None:
    trainer = Trainer(config_from_dict(tiny_config(tmp_path)), progress=False)
    val = trainer.validate()
    assert val["bpp"] > 0 and 0 < val["psnr"] < 60 and 0 <= val["ms_ssim"] <= 1
    assert "psnr_dec" not in val


def test_dsin_validation_separates_what_the_side_image_adds(tmp_path: Path) -> None:
    """psnr_dec is DSIN's backbone alone: with a residual SI-Net at its zero start the side image
    adds nothing yet, so it equals psnr; the reference's identity start changes x_hat already."""
    raw = tiny_config(tmp_path / "res", "dsin")
    raw["model"]["options"] = {**TINY, "si_width": 8, "si_residual": True, "patch": [16, 16]}
    val = Trainer(config_from_dict(raw), progress=False).validate()
    assert val["psnr_dec"] == pytest.approx(val["psnr"], abs=1e-9)
    raw["model"]["options"]["si_residual"] = False
    raw["train"]["out"] = str(tmp_path / "identity")
    val = Trainer(config_from_dict(raw), progress=False).validate()
    assert 0 < val["psnr"] != pytest.approx(val["psnr_dec"], abs=0.01)


def test_a_validation_well_above_the_best_is_logged_as_a_regression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from stereodsc.train.loop import REGRESSION_WARNING

    trainer = Trainer(config_from_dict(tiny_config(tmp_path)), progress=False)
    real = trainer.validate_pairs
    scale = iter([1.0, 1.0, REGRESSION_WARNING * 1.01])  # the best, as good again, then worse

    def validate_pairs() -> list[dict[str, float]]:
        factor = next(scale)
        return [{**r, "loss": 0.5 * factor} for r in real()]

    monkeypatch.setattr(trainer, "validate_pairs", validate_pairs)
    with caplog.at_level(logging.WARNING, logger="stereodsc.train.loop"):
        trainer._validate_and_log([])
        trainer._validate_and_log([])
        assert "regressed" not in caplog.text
        trainer._validate_and_log([])
    assert "above the run's best, 0.5000" in caplog.text and "best.pt" in caplog.text
    assert trainer.best_val == 0.5


def test_a_best_loss_from_other_held_out_pairs_is_not_compared(tmp_path: Path) -> None:
    trainer = Trainer(config_from_dict(tiny_config(tmp_path)), progress=False)
    trainer.best_val = 0.5
    state = trainer.state()
    fresh = Trainer(config_from_dict(tiny_config(tmp_path)), progress=False)
    fresh._apply(state)
    assert fresh.best_val == 0.5  # the same validation set: the best carries over
    fresh._apply({**state, "val_set": "another split"})
    assert fresh.best_val == math.inf  # a GPU run's or an older split's best would warn of regressions that are not
    fresh._apply({k: v for k, v in state.items() if k != "val_set"})
    assert fresh.best_val == math.inf  # checkpoints from before the fingerprint: unknown set


def test_checkpoint_schema_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"schema": "other/9"}, path)
    with pytest.raises(CheckpointError, match="schema"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
    save_checkpoint(path, {"model": "m", "model_config": {}, "model_state": {}, "step": 3})
    assert load_checkpoint(path)["step"] == 3


def test_training_ms_ssim_matches_the_evaluation_metric(sample_drive: Path) -> None:
    from stereodsc.eval.metrics import ms_ssim as ms_ssim_np
    from stereodsc.train.datasets import read_rgb
    from stereodsc.train.loop import to_tensor
    from stereodsc.train.losses import ms_ssim

    a = read_rgb(sample_drive / "image_02" / "data" / "0000000000.png")[:128, :256]
    b = read_rgb(sample_drive / "image_03" / "data" / "0000000000.png")[:128, :256]
    ref = ms_ssim_np(a, b, win_size=7)
    got = ms_ssim(to_tensor([a]).double(), to_tensor([b]).double()).item()
    assert 0.2 < ref < 0.99
    assert got == pytest.approx(ref, abs=1e-5)


def await_validations(proc: subprocess.Popen[bytes], run: Path, count: int = 2) -> None:
    """Wait until the training process `proc` has written `count` validations to ``run/metrics.jsonl``."""
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.2)


def test_sigterm_saves_a_checkpoint(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path / "run", steps=100000)
    raw["train"]["checkpoint_every"] = 100000  # only the signal can write the checkpoint we look for
    cfg_path = write_toml(tmp_path / "cfg.toml", raw)
    cmd = [sys.executable, "-m", "stereodsc.cli", "train", "--config", str(cfg_path), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    await_validations(proc, tmp_path / "run")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130 and "checkpoint saved" in out
    step = load_checkpoint(tmp_path / "run" / "latest.pt")["step"]
    assert step >= 2


def _overflow_at(trainer: Trainer, monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """Make the model's loss non-finite at the 0-based `steps`, as an overflowing batch does."""
    real_loss = trainer.model.loss

    def loss(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        terms = real_loss(*args, **kwargs)
        return {**terms, "loss": terms["loss"] * math.inf} if trainer.step in steps else terms

    monkeypatch.setattr(trainer.model, "loss", loss)


def test_a_step_with_a_non_finite_loss_is_skipped_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    torch.set_num_threads(1)
    trainer = Trainer(config_from_dict(tiny_config(tmp_path, steps=3)), progress=False)
    _overflow_at(trainer, monkeypatch, {1})
    before: dict[str, torch.Tensor] = {}
    real_step = trainer.train_step

    def step(i: int) -> dict[str, float]:
        if i == 1:
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        stats = real_step(i)
        if i == 1:
            after = trainer.model.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), "the bad step changed the weights"
        return stats

    monkeypatch.setattr(trainer, "train_step", step)
    with caplog.at_level(logging.WARNING, logger="stereodsc.train.loop"):
        trainer.run()
    assert trainer.step == 3 and load_checkpoint(trainer.latest_path)["step"] == 3
    assert "step 2 skipped: loss inf" in caplog.text and "its pairs:" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stereodsc.errors import TrainingDivergedError
    from stereodsc.train.loop import MAX_SKIPPED_IN_ROW

    torch.set_num_threads(1)
    cfg = config_from_dict(tiny_config(tmp_path, steps=2 + MAX_SKIPPED_IN_ROW))
    trainer = Trainer(cfg, progress=False)
    _overflow_at(trainer, monkeypatch, set(range(1, 1 + MAX_SKIPPED_IN_ROW)))
    in_row = f"{MAX_SKIPPED_IN_ROW} steps in a row up to step {1 + MAX_SKIPPED_IN_ROW}"
    with pytest.raises(TrainingDivergedError, match=in_row):
        trainer.run()
    # a skipped step leaves the weights as they were: the checkpoints written after the first two are good
    assert load_checkpoint(trainer.latest_path)["step"] == MAX_SKIPPED_IN_ROW
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # what the error says to do: lower [train] lr and --resume; the lower rate takes over
    lower = Trainer(config_from_dict(tiny_config(tmp_path, steps=3, lr=cfg.train.lr / 4)), progress=False)
    assert lower.resume() and lower.step == MAX_SKIPPED_IN_ROW
    assert all(g["lr"] == cfg.train.lr / 4 for g in lower.optimizer.param_groups)
    same = Trainer(config_from_dict(tiny_config(tmp_path, steps=3)), progress=False)
    assert same.resume() and same.optimizer.param_groups[0]["lr"] == cfg.train.lr
