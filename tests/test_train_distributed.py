"""Data-parallel training under torchrun: two CPU processes (gloo) compute what one does.

The reference is a one-process run on the same machine (so AVX2 / AVX-512 differences cancel), of
the same config: global batch 4 in micro-batches of 1, so both runs put the same samples with the
same quantisation noise through the same kernels, and only the order in which the four gradients
are summed differs ((g0 + g1) + (g2 + g3) across processes, ((g0 + g1) + g2) + g3 in one). That
changes float32 gradients by a few ulp; AMSGrad's steps are invariant to the gradients' scale, so
the weights differ by about lr x 1e-7 per step (7e-9 measured after 3 steps), while one step moves
each weight by about lr = 1e-4. The tolerance, 1e-6, sits between the two: a shard lost or counted
twice changes the steps' direction and fails it (3e-4 measured with the all-reduce left out). A
uniform scale error of the gradients would barely show (1.4e-6 for a factor 1/2): AMSGrad's steps
ignore the gradients' scale, so such an error hardly changes the training either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stereodsc.cli import main
from stereodsc.errors import ConfigError
from stereodsc.train.checkpoint import load_checkpoint
from stereodsc.train.config import config_from_dict
from stereodsc.train.distributed import Distributed
from stereodsc.train.loop import Trainer
from test_train import await_validations, tiny_config, write_toml

TOLERANCE = 1e-6


def raw_config(out: Path, steps: int) -> dict:
    """Tiny NDIC, global batch 4 in micro-batches of 1, one thread per process."""
    return tiny_config(out, "ndic", steps=steps, batch_size=4, micro_batch=1, threads=1)


def torchrun(config: Path, *args: str) -> list[str]:
    """The torchrun command line of a 2-process `stereodsc train`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local port: parallel test runs do not meet
        "--nproc_per_node",
        "2",
        "-m",
        "stereodsc.cli",
        "train",
        "--config",
        str(config),
        "-q",
        *args,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_torchrun(config: Path, *args: str) -> str:
    proc = subprocess.run(torchrun(config, *args), env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_two_processes_train_the_weights_of_one_and_resume(tmp_path: Path) -> None:
    one = write_toml(tmp_path / "one.toml", raw_config(tmp_path / "one", steps=3))
    assert main(["train", "--config", str(one), "-q"]) == 0

    # Two processes: 2 steps, then --resume to the third (rank 0 reads the checkpoint, rank 1 gets it).
    run_torchrun(write_toml(tmp_path / "two.toml", raw_config(tmp_path / "two", steps=2)))
    out = run_torchrun(write_toml(tmp_path / "two.toml", raw_config(tmp_path / "two", steps=3)), "--resume")
    assert out.count("step 3: val loss") == 1, out  # only rank 0 reports

    a, b = load_checkpoint(tmp_path / "one" / "latest.pt"), load_checkpoint(tmp_path / "two" / "latest.pt")
    assert a["step"] == b["step"] == 3
    start = Trainer(config_from_dict(raw_config(tmp_path / "x", 3)), progress=False).model.state_dict()
    moved = max((a["model_state"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 50 * TOLERANCE, "the weights hardly moved: the comparison would prove nothing"
    for k, v in a["model_state"].items():
        diff = (v - b["model_state"][k]).abs().max().item()
        assert diff <= TOLERANCE, f"{k} differs by {diff} between 1 and 2 processes"
    # Rank 0 alone writes: one metrics line per validation, none from rank 1, none repeated by the resume.
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert (tmp_path / "two" / "best.pt").is_file()


def test_sigterm_stops_every_process_after_the_same_step_with_a_checkpoint(tmp_path: Path) -> None:
    raw = raw_config(tmp_path / "run", steps=100000)
    raw["train"]["checkpoint_every"] = 100000  # only the signal can write the checkpoint we look for
    config = write_toml(tmp_path / "cfg.toml", raw)
    proc = subprocess.Popen(torchrun(config), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    await_validations(proc, tmp_path / "run")
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    out = proc.communicate(timeout=60)[0].decode()
    assert out.count("checkpoint saved") == 1, out  # rank 0's
    assert out.count("stereodsc train: interrupted") == 2, out  # both workers stopped, none was killed
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["step"] >= 2


def test_each_process_takes_its_shard_of_the_global_batch(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(tmp_path, batch_size=4))
    whole = Trainer(cfg, progress=False).batch(5)
    shards = [Trainer(cfg, progress=False, dist=Distributed(rank, 2)) for rank in (0, 1)]
    assert [t.shard for t in shards] == [range(0, 2), range(2, 4)]
    for i in (0, 1):
        parts = torch.cat([t.batch(5, t.shard)[i] for t in shards])
        assert torch.equal(parts, whole[i])


def test_a_global_batch_that_does_not_divide_names_the_fix(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(tmp_path, batch_size=3))
    with pytest.raises(ConfigError, match=r"batch_size = 3 is the global batch .* multiple of 2"):
        Trainer(cfg, progress=False, dist=Distributed(0, 2))
    cfg = config_from_dict(tiny_config(tmp_path, batch_size=4, micro_batch=4))
    with pytest.raises(ConfigError, match="micro_batch = 4 must divide each process's share"):
        Trainer(cfg, progress=False, dist=Distributed(1, 2))
    with pytest.raises(ConfigError, match="micro_batch = 3 must divide batch_size = 4"):
        config_from_dict(tiny_config(tmp_path, batch_size=4, micro_batch=3))
