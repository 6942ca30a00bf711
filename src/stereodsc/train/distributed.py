"""Data-parallel training under ``torchrun --nproc_per_node N``: gloo on CPU, NCCL on GPUs.

Every process runs the same Trainer on its own shard of each global batch; the gradients are summed
across processes before each optimiser step, so every process applies the same update to the same
weights. Rank 0 alone touches the run's files (checkpoints, metrics.jsonl, the kept copy) and
validates; it sends the resulting state to the others, so the run folder ([train] out) need not be
shared between machines (the data, init_from and side_codec checkpoints must be on each). Outside
torchrun everything here is a no-op and training runs in one process as before. A process trains on
the GPU of its LOCAL_RANK when the machine has GPUs (NCCL), on the CPU otherwise (gloo); a run
started without torchrun stays on the CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from stereodsc.errors import ConfigError

# Rank 0 validates and writes checkpoints while the others wait in a collective: a long validation
# (40 native frames on a slow CPU) must not trip the default timeout (10 min with NCCL).
TIMEOUT = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: its rank among `world` processes and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int, source: str = "<config>") -> range:
        """The global sample indexes of this process's share of a `batch_size` global batch."""
        if batch_size % self.world:
            raise ConfigError(
                f"{source}: [train] batch_size = {batch_size} is the global batch and must divide evenly over "
                f"the {self.world} processes: set it to a multiple of {self.world} or start "
                "torchrun with a --nproc_per_node that divides it"
            )
        per = batch_size // self.world
        return range(self.rank * per, (self.rank + 1) * per)

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` over all processes, in place."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process (tensors travel through torch.save, so they arrive on the CPU)."""
        if self.world == 1:
            return obj
        payload: list[bytes | None] = [None]
        if self.is_main:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            payload = [buffer.getvalue()]
        dist.broadcast_object_list(payload, src=0)
        if self.is_main:
            return obj
        assert payload[0] is not None
        return torch.load(io.BytesIO(payload[0]), map_location="cpu", weights_only=False)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Distributed()


def pick_device(wanted: str = "auto", local_rank: int = 0) -> torch.device:
    """The device a process trains on: [train] device ("auto": the GPU of ``local_rank`` when torch
    sees one, else the CPU)."""
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "[train] device = 'cuda' but torch sees no CUDA GPU (a CPU build of torch, or no driver): "
            "install a CUDA build of torch (README: GPU machines) or set device = 'auto'"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def launch(wanted: str = "auto") -> Iterator[Distributed]:
    """The process group torchrun's environment describes (WORLD_SIZE, RANK, LOCAL_RANK), for the
    duration of a run; a single process when they are absent. Each process trains on
    ``pick_device(wanted, LOCAL_RANK)``: NCCL joins GPU processes, gloo CPU ones."""
    if "WORLD_SIZE" not in os.environ:
        yield Distributed(device=pick_device(wanted))
        return
    try:
        world, rank, local_rank = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except (KeyError, ValueError) as e:
        raise ConfigError(
            f"WORLD_SIZE is set but RANK / LOCAL_RANK are missing or not integers ({e}); start data-parallel "
            "training with torchrun --nproc_per_node N (or unset WORLD_SIZE for one process)"
        ) from None
    device = pick_device(wanted, local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield Distributed(rank, world, local_rank, device)
        # Every rank done before any tears its connections down: a rank whose peer had already left aborted
        # at exit once ("terminate called without an active exception", gloo on CPU).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def leave_worker(code: int) -> NoReturn:
    """End a torchrun worker whose run has finished and whose process group is gone, skipping the
    interpreter's teardown: gloo's C++ threads torn down during finalization aborted one rank at exit
    ("terminate called without an active exception", SIGABRT) after training had finished and rank 0
    had written everything, which torchrun reports as a failed run. Files are closed by then (every
    write uses a with-block); the log and the console are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class StopRequests:
    """SIGINT / SIGTERM noted instead of raised while the block runs.

    One process interrupted inside a collective would leave the others waiting for it; instead each
    process notes the signal, the step's all-reduce tells every process whether any got one, and
    all of them stop after the same step, with rank 0 writing the checkpoint (torchrun sends the
    signal to every worker and waits 30 s before it kills them).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopRequests:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
