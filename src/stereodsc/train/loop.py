"""The training loop: AMSGrad + aux optimiser, reduce-on-plateau, validation, exact resume.

Exact resume: the data of step t are drawn from generators seeded with (seed, t) and the
quantisation noise from ones seeded with (seed, t, micro-batch), and the checkpoint holds the model,
both optimisers and the scheduler, so a run interrupted and resumed produces the same weights as an
uninterrupted one. Under torchrun each process trains on its shard of every global batch
(`distributed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereodsc.errors import CheckpointError, ConfigError, StereoDSCError, TrainingDivergedError
from stereodsc.eval.metrics import ms_ssim_min_side
from stereodsc.models.base import CompressionModel, bits
from stereodsc.models.layers import GDN
from stereodsc.sample import drive_path

from .checkpoint import load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .datasets import (
    Augment,
    ImageCache,
    Pair,
    PairDataset,
    StereoSequence,
    cityscapes_sequence,
    folder_sequence,
    kitti_list_pairs,
    kitti_raw_sequence,
    make_pairs,
    mix_source,
    native_mix_pairs,
)
from .distributed import SINGLE, Distributed, StopRequests
from .losses import distortion_fn, ms_ssim, psnr

log = logging.getLogger(__name__)


def _sequence_pairs(seq: StereoSequence, cfg: TrainConfig) -> tuple[list[Pair], list[Pair]]:
    d = cfg.data
    n = len(seq.left)
    if not 0 < d.val_frames < n:
        raise ConfigError(
            f"{cfg.source}: [data] val_frames = {d.val_frames} must be between 1 and {n - 1} "
            f"(the sequence has {n} frames)"
        )
    train_frames, val_frames = list(range(n - d.val_frames)), list(range(n - d.val_frames, n))
    pairings = ["stereo", "general"] if d.pairing == "both" else [d.pairing]
    train = [p for mode in pairings for p in make_pairs(seq, mode, d.max_shift, d.both_directions, train_frames)]
    val = make_pairs(seq, "stereo", d.max_shift, d.both_directions, val_frames)
    return train, val


def build_pairs(cfg: TrainConfig) -> tuple[list[Pair], list[Pair]]:
    """Training and validation pairs for the configured dataset; validation is held out."""
    d = cfg.data
    if d.kind == "native_mix":
        train, _, val = native_mix_pairs(Path(d.path))
        return train, val
    if d.kind == "kitti_list":
        root = Path(d.root or Path(d.path).parent)
        return kitti_list_pairs(Path(d.path), root), kitti_list_pairs(Path(d.val_list), root)
    if d.kind == "cityscapes":
        root = Path(d.path)
        train = make_pairs(cityscapes_sequence(root, d.split), "stereo", both_directions=False)
        return train, make_pairs(cityscapes_sequence(root, "val"), "stereo", both_directions=False)
    if d.kind == "folder":
        seq = folder_sequence(Path(d.path))
    else:
        seq = kitti_raw_sequence(drive_path() if d.kind == "sample" else Path(d.path))
    return _sequence_pairs(seq, cfg)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images -> float NCHW batch in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad H and W up to a multiple of the model's stride (crop back after decoding)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


@torch.no_grad()
def decode_image(model: CompressionModel, image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> the same image coded and decoded by an intra model (padded, cropped back)."""
    x = to_tensor([image]).to(next(model.parameters()).device)
    h, w = x.shape[-2:]
    x_hat = model(pad_to(x, model.stride))["x_hat"][..., :h, :w]
    return x_hat.clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()


class DecodedSides:
    """Side images as the host has them: the reference view decoded by frozen intra codecs.

    Each draw picks one of the codecs (a mix of qualities when several are given); a frame is
    decoded whole once per codec and kept, and the training crop is then cut from it, as the host
    would cut it from its decoded frame.
    """

    def __init__(self, checkpoints: list[str], cache: ImageCache, device: torch.device | None = None) -> None:
        from .checkpoint import model_from_checkpoint

        self.models: list[CompressionModel] = []
        for path in checkpoints:
            model, _ = model_from_checkpoint(path)
            assert isinstance(model, CompressionModel)
            if model.uses_side_info:
                raise ConfigError(f"side_codec {path} is a side-information model; list intra (no-SI) checkpoints")
            model.requires_grad_(False)
            self.models.append(model.to(device or torch.device("cpu")))
        self.cache = cache
        self._decoded: dict[tuple[int, Path], np.ndarray] = {}

    def __call__(self, path: Path, draw: int) -> np.ndarray:
        key = (draw % len(self.models), path)
        if key not in self._decoded:
            self._decoded[key] = decode_image(self.models[key[0]], self.cache(path))
        return self._decoded[key]


def validation_fingerprint(pairs: list[Pair], side_codecs: list[str]) -> str:
    """Names the validation set (held-out pairs, and the intra codecs that decode their side images),
    so that a best loss measured on another set (an older split, a GPU run's) is not compared."""
    names = ["/".join(p.x.parts[-3:]) + "|" + "/".join(p.side.parts[-3:]) for p in pairs]  # paths below the data root
    text = "\n".join(names + side_codecs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def freeze(model: nn.Module, prefixes: list[str], source: str) -> None:
    """Stop training the parameters whose names start with one of `prefixes` ([train] frozen): they
    take no gradient, so neither optimiser moves them (Adam skips a parameter without one)."""
    if not prefixes:
        return
    names = [name for name, _ in model.named_parameters()]
    parts = sorted({name.split(".")[0] + "." for name in names})
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ConfigError(
                f"{source}: [train] frozen = {prefix!r} names no parameter of this model; its parts are {parts}"
            )
    frozen = [p for name, p in model.named_parameters() if name.startswith(tuple(prefixes))]
    if len(frozen) == len(names):
        raise ConfigError(f"{source}: [train] frozen = {prefixes} leaves nothing to train; its parts are {parts}")
    for p in frozen:
        p.requires_grad_(False)
    log.info(
        "[train] frozen: %d of %d parameters are not trained (%s)",
        sum(p.numel() for p in frozen),
        sum(p.numel() for p in model.parameters()),
        ", ".join(prefixes),
    )


def _grew_channels(old: torch.Size, new: torch.Size) -> bool:
    """A tensor that only gained channels (dims 0-1; kernels and other dims unchanged)."""
    return (
        len(old) == len(new) >= 1 and old[2:] == new[2:] and all(a <= b for a, b in zip(old[:2], new[:2], strict=True))
    )


def _channel_dims(module: nn.Module, param: str) -> tuple[int, int | None] | None:
    """(output-channel dim, input-channel dim or None) of a layer's parameter; None for other kinds."""
    if isinstance(module, nn.ConvTranspose2d):
        return (1, 0) if param == "weight" else (0, None)
    if isinstance(module, nn.Conv2d | nn.Linear):
        return (0, 1) if param == "weight" else (0, None)
    if isinstance(module, GDN):
        return (0, 1) if param == "gamma" else (0, None)
    return None


def _grown(old: torch.Tensor, fresh: torch.Tensor, dims: tuple[int, int | None] | None) -> torch.Tensor:
    """A grown layer's tensor that computes exactly what the old one did and can learn from there:
    the old values in the leading slice, zeros where a new input channel feeds an old output channel,
    and the new model's initial values for the new output channels (their units start as a fresh
    layer's would; zeros on both sides of a new unit would leave it without a gradient). A tensor of
    an unknown kind of layer gets zeros in all its new part."""
    grown = fresh.clone() if dims is not None else torch.zeros_like(fresh)
    grown[tuple(slice(0, n) for n in old.shape)] = old
    if dims is not None and (in_dim := dims[1]) is not None:
        out_dim = dims[0]
        index = [slice(None)] * grown.dim()
        index[out_dim], index[in_dim] = slice(0, old.shape[out_dim]), slice(old.shape[in_dim], None)
        grown[tuple(index)] = 0
    return grown


# Options a warm start from the same model may grow besides its host-only ones: the latent, for the high rates
# where a preset saturates. Every tensor keeps its old values in its leading slice (`_grown`), so the grown model
# starts at the old one's reconstruction; the bitstream changes: a grown model is a new quality. (A config that
# differs in more, e.g. a forgotten preset, is refused: growing the whole encoder is not what it asked for.)
GROWABLE_OPTIONS = frozenset({"M"})

# A validation loss this many times the run's best is logged as a regression (the intra codec's top point
# once lost 1-4 dB per data set between two validations, and its worse weights were shipped).
REGRESSION_WARNING = 1.05

# Non-finite steps in a row after which a run is given up: one bad batch is skipped, a run whose every
# batch overflows has diverged.
MAX_SKIPPED_IN_ROW = 3


def _micro_seed(seed: int, step: int, micro: int) -> int:
    """The torch seed of one micro-batch: its own stream, the same whichever process computes it."""
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1)[0])


def _load_run_checkpoint(path: Path, model_config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of this run: its model must be the one the config builds."""
    ckpt = load_checkpoint(path)
    if ckpt["model_config"] != model_config:
        raise CheckpointError(
            f"{path} holds {ckpt['model_config']}, the config asks for "
            f"{model_config}; use another [train] out / keep or the original config"
        )
    return ckpt


def compact(state: dict[str, Any]) -> dict[str, Any]:
    """What a fresh clone needs to continue a run from a full checkpoint: the state without the
    optimisers' moments (which would triple the size), its float weights in float16 (half again: the
    repository keeps one per rate point), plus the learning rate the schedule had reached."""
    out = {k: v for k, v in state.items() if k not in ("schema", "optimizer", "aux_optimizer")}
    out["model_state"] = {
        k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
        for k, v in state["model_state"].items()
    }
    return {**out, "lr": state["optimizer"]["param_groups"][0]["lr"]}


@dataclass
class Trainer:
    """Owns the model, optimisers and data of one run; `run()` trains to cfg.train.steps.

    `dist`: this process's place in a torchrun job (default: the only process); rank 0 alone
    validates and writes files, every process trains on its shard of each global batch.
    """

    cfg: TrainConfig
    progress: bool = True
    dist: Distributed = SINGLE

    def __post_init__(self) -> None:
        from stereodsc.models import build_model

        t, d = self.cfg.train, self.cfg.data
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.out_dir = Path(t.out)
        self.shard = self.dist.shard(t.batch_size, self.cfg.source)
        self.micro_batch = t.micro_batch or len(self.shard)
        if len(self.shard) % self.micro_batch:
            raise ConfigError(
                f"{self.cfg.source}: [train] micro_batch = {t.micro_batch} must divide each process's share of "
                f"the batch (batch_size {t.batch_size} / {self.dist.world} processes = {len(self.shard)}); "
                "choose a divisor of it (1 always works)"
            )
        self.model = build_model(self.cfg.model.name, self.cfg.model.preset, **self.cfg.model.options)
        self.model.to(self.dist.device)
        if self.dist.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed training crops: let cuDNN pick its fastest kernels
        if d.crop is not None and any(c % self.model.stride for c in d.crop):
            raise ConfigError(
                f"{self.cfg.source}: [data] crop = {d.crop} must be a multiple of "
                f"{self.model.stride} for {self.model.name}"
            )
        freeze(self.model, t.frozen, self.cfg.source)
        self.optimizer = torch.optim.Adam(self.model.main_parameters(), lr=t.lr, amsgrad=True)
        self.aux_optimizer = torch.optim.Adam(self.model.aux_parameters(), lr=t.aux_lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.1, patience=t.lr_patience, min_lr=t.lr_min
        )
        self.distortion = distortion_fn(t.distortion)
        # The eager function stays the reference: validation, and the fallback where compiling fails.
        self._compiled_step: Callable[..., Any] | None = torch.compile(self.forward_and_loss) if t.compile else None
        weights: list[float] | None = None
        if d.kind == "native_mix":
            train_pairs, weights, val_pairs = native_mix_pairs(Path(d.path))
        else:
            train_pairs, val_pairs = build_pairs(self.cfg)
        cache = ImageCache(d.protocol)
        sides = DecodedSides(d.side_codec, cache, self.dist.device) if d.side_codec else None
        crop = (d.crop[0], d.crop[1]) if d.crop else None
        self.train_set = PairDataset(train_pairs, cache, Augment(crop, d.flip, d.swap), weights, sides)
        self.val_set = PairDataset(val_pairs[: t.max_val_pairs], cache, side=sides)
        self.val_fingerprint = validation_fingerprint(self.val_set.pairs, d.side_codec)
        self.step = 0
        self.moments_from = 0  # the step at which the optimiser's moments started (for [train] warmup)
        self.signals: StopRequests | None = None  # in a torchrun job's run(): SIGINT / SIGTERM noted here
        self.cpu_seconds = 0.0
        self.best_val = math.inf
        self.metrics: dict[str, Any] = {}

    # ---- checkpoints -------------------------------------------------------------------------
    @property
    def latest_path(self) -> Path:
        return self.cfg.train.latest_path

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "model_config": self.model.config,
            "train_config": self.cfg.to_dict(),
            "step": self.step,
            "moments_from": self.moments_from,
            "cpu_seconds": self.cpu_seconds,
            "best_val": self.best_val,
            "val_set": self.val_fingerprint,
            "metrics": self.metrics,
            "model_state": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
        }

    @property
    def keep_path(self) -> Path | None:
        """The compact checkpoint kept in the repository ([train] keep), if the config names one."""
        return self.cfg.train.keep_path

    def save(self, path: Path | None = None) -> None:
        """Write `path`, or the run's latest checkpoint and (with [train] keep) its compact copy; in a
        torchrun job rank 0 writes and every process waits until it has."""
        if self.dist.is_main:
            if path is not None:
                save_checkpoint(path, self.state())
            else:
                save_checkpoint(self.latest_path, self.state())
                if self.keep_path is not None:
                    save_checkpoint(self.keep_path, compact(self.state()))
        self.dist.barrier()

    def _load(self, path: Path) -> dict[str, Any]:
        ckpt = _load_run_checkpoint(path, self.model.config)
        self._apply(ckpt)
        return ckpt

    def _apply(self, ckpt: dict[str, Any]) -> None:
        """Take the weights, schedule, RNG state and counters of a checkpoint (not the optimisers)."""
        load_weights(self.model, ckpt["model_state"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        self.step, self.cpu_seconds = ckpt["step"], ckpt["cpu_seconds"]
        # A checkpoint from before [train] warmup existed: its moments are long warm.
        self.moments_from = ckpt.get("moments_from", ckpt["step"] - self.cfg.train.warmup)
        self.metrics = ckpt["metrics"]
        self.best_val = ckpt["best_val"]
        if ckpt.get("val_set") != self.val_fingerprint and math.isfinite(self.best_val):
            log.info(
                "the checkpoint's best validation loss (%.4f) was measured on other held-out pairs or side images; "
                "this run's next validation sets the best anew",
                self.best_val,
            )
            self.best_val = math.inf

    def share_state(self) -> None:
        """Give every process of a torchrun job rank 0's state (fresh, resumed or warm-started):
        only rank 0 reads the run's folder, so it need not be shared between machines."""
        if self.dist.world == 1:
            return
        state = self.dist.broadcast(self.state() if self.dist.is_main else None)
        if not self.dist.is_main:
            self._apply(state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])

    def resume(self) -> bool:
        """Continue from the run's latest checkpoint (exactly), else from its kept compact checkpoint
        (same weights, step and schedule; the optimisers restart their moments at the reached
        learning rate); False when there is neither."""
        if self.latest_path.is_file():
            ckpt = self._load(self.latest_path)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        elif self.keep_path is not None and self.keep_path.is_file():
            ckpt = self._load(self.keep_path)
            for group in self.optimizer.param_groups:
                group["lr"] = ckpt["lr"]
            self.moments_from = self.step
            log.info(
                "resumed from the kept %s at step %d (fresh optimiser moments; [train] warmup = %d steps)",
                self.keep_path,
                self.step,
                self.cfg.train.warmup,
            )
        else:
            return False
        self._lower_lr_to_config()
        return True

    def _lower_lr_to_config(self) -> None:
        """A [train] lr below the resumed run's takes over: what a diverged run is told to do."""
        lr = self.cfg.train.lr
        if lr < self.optimizer.param_groups[0]["lr"]:
            log.info("learning rate lowered from %g to [train] lr = %g", self.optimizer.param_groups[0]["lr"], lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def warm_start(self, path: str, over_earlier: bool = False) -> None:
        """Start from another run's weights, with fresh optimisers (``over_earlier``: loaded over an
        earlier warm start's, [train] init_then, whose other tensors stay).

        The same model (e.g. a higher-rate point) loads whole. A related model loads every tensor
        whose name and shape match (ndic_cam from ndic: all but the cross-attention modules; dsin
        from balle2017: all but the SI-Net), so the new parts train from a converged backbone. A
        tensor of the same name that grew (ndic_cam's decoder layers also take the cross-attention
        output as extra input channels; a wider host decoder, [model.options] N, has more channels)
        gets the old values in its leading slice (`_grown`): the new model starts computing exactly
        what the old one did, and learns from there. The same model with other host-only options, or with
        a GROWABLE_OPTIONS option grown (a larger latent M), loads this way too; the modules host-only
        options reshape start fresh (`fresh_modules`).
        """
        ckpt = load_checkpoint(path)
        if ckpt["model"] == self.model.name:
            theirs, own_config = ckpt["model_config"], self.model.config
            differ = {k for k in theirs.keys() | own_config.keys() if theirs.get(k) != own_config.get(k)}
            differ -= self.model.loss_only_options  # the same graphs, trained to another balance
            if not differ:
                load_weights(self.model, ckpt["model_state"])
                log.info(
                    "warm start from %s: the whole %s model (step %s of its run)", path, ckpt["model"], ckpt["step"]
                )
                return
            if not differ <= self.model.host_only_options | GROWABLE_OPTIONS:
                raise CheckpointError(
                    f"init_from {path} holds {theirs}, the config asks for {own_config}: "
                    "set [model] preset and [model.options] to the checkpoint's to fine-tune it (only "
                    f"{', '.join(sorted(GROWABLE_OPTIONS))} may grow, and options that shape the host alone may change)"
                )
            # Only host-side parts or the latent's size differ: a wider host decoder or a larger latent grows
            # (below); a host-side module whose form changed (DSIN's SI-Net width or residual form) starts fresh,
            # even where a tensor's shape happens to match (a residual SI-Net must start at zero).
            fresh_modules = tuple(self.model.fresh_modules[o] for o in differ if o in self.model.fresh_modules)
            ckpt["model_state"] = {k: v for k, v in ckpt["model_state"].items() if not k.startswith(fresh_modules)}
        own = self.model.state_dict()
        shared: dict[str, torch.Tensor] = {}
        grown: list[str] = []
        misfits: list[str] = []
        for k, v in ckpt["model_state"].items():
            if k not in own:
                continue
            if own[k].shape == v.shape:
                shared[k] = v
            elif _grew_channels(v.shape, own[k].shape):
                module, _, param = k.rpartition(".")
                shared[k] = _grown(v, own[k], _channel_dims(self.model.get_submodule(module), param))
                grown.append(k)
            else:
                misfits.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
        if misfits and ckpt["model"] == self.model.name:
            raise CheckpointError(
                f"init_from {path}: {len(misfits)} tensors would shrink or change form, not grow "
                f"({'; '.join(misfits[:3])}): options may only grow "
                f"({', '.join(sorted(GROWABLE_OPTIONS))}, host-only widths)"
            )
        if not shared:
            raise CheckpointError(
                f"init_from {path} holds a {ckpt['model']} model that shares no weights with {self.model.name}; "
                "warm-start from a run of the same or a related model (ndic for ndic_cam, balle2017 for dsin)"
            )
        self.model.load_state_dict(shared, strict=False)
        rest = sum(v.numel() for k, v in own.items() if k not in shared)
        log.info(
            "warm start from %s (%s): %d of %d tensors loaded (grown: %s), %d parameters %s",
            path,
            ckpt["model"],
            len(shared),
            len(own),
            ", ".join(grown) or "none",
            rest,
            "keep the earlier checkpoint's values" if over_earlier else "start fresh",
        )

    # ---- training ----------------------------------------------------------------------------
    def batch_pairs(self, step: int) -> np.ndarray:
        """Indexes in the training set of step's global batch."""
        return self.train_set.draw(np.random.default_rng([self.cfg.train.seed, step]), self.cfg.train.batch_size)

    def batch(self, step: int, samples: range | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples `samples` (default: all) of step's global batch, on the CPU.

        The pairs are drawn with a generator seeded with (seed, step), each sample's augmentation
        with one seeded with (seed, step, its index): a process builds its shard without drawing
        the others', and the data do not depend on how many processes share the batch.
        """
        t = self.cfg.train
        idx = self.batch_pairs(step)
        picked = range(t.batch_size) if samples is None else samples
        xs, sides = zip(
            *(self.train_set.get(int(idx[i]), np.random.default_rng([t.seed, step, i])) for i in picked), strict=True
        )
        return to_tensor(list(xs)), to_tensor(list(sides))

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step on the global batch.

        This process's shard goes through the model in micro-batches ([train] micro_batch), each
        with the torch RNG (quantisation noise) seeded from (seed, step, micro-batch index) and its
        loss weighted by its share of the global batch, so the gradients summed over micro-batches
        and processes are those of the global batch's mean loss: with the same micro_batch, N
        processes compute what one does, up to the order of float summation. The returned stats
        (and "stop": whether any process was asked to stop) are the global batch's.
        """
        t = self.cfg.train
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        share = self.micro_batch / t.batch_size
        sums = [0.0, 0.0, 0.0]
        for start in range(self.shard.start, self.shard.stop, self.micro_batch):
            x, side = (v.to(self.dist.device) for v in self.batch(step, range(start, start + self.micro_batch)))
            out, terms = self._forward_backward(x, side, _micro_seed(t.seed, step, start // self.micro_batch), share)
            for i, value in enumerate((terms["loss"].item(), terms["bpp"].item(), psnr(out["x_hat"], x))):
                sums[i] += share * value
        stats = [*sums, float(self.signals is not None and self.signals.requested)]
        if self.dist.world > 1:
            stats = self._all_reduce_grads(stats)
        # The total gradient norm (an infinite bound clips nothing; get_total_norm needs torch >= 2.6).
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.main_parameters(), math.inf))
        result = {"loss": stats[0], "bpp": stats[1], "psnr": stats[2], "grad_norm": grad_norm, "stop": stats[3]}
        if not (math.isfinite(stats[0]) and math.isfinite(grad_norm)):
            # One overflowing batch must not spoil the weights: leave them as they are (every process
            # sees the same reduced numbers, so all skip together); `_run` gives up if it repeats.
            return {**result, "aux": math.nan, "skipped": 1.0}
        self._warmed_up_step(step)
        # The aux loss depends on the parameters only, which are the same in every process: so is
        # its gradient, and reducing it would change nothing.
        aux = self.model.aux_loss()
        if aux.requires_grad:  # not when [train] frozen holds the entropy model
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux.backward()
            self.aux_optimizer.step()
        return {**result, "aux": aux.item(), "skipped": 0.0}

    def warmup_factor(self, step: int) -> float:
        """The share of the learning rate step `step` applies: ramps from 1/warmup to 1 over the first
        [train] warmup steps of the optimiser's moments, then 1."""
        warmup = self.cfg.train.warmup
        return min(1.0, (step - self.moments_from + 1) / warmup) if warmup else 1.0

    def _warmed_up_step(self, step: int) -> None:
        """The optimiser's step at the warmed-up learning rate; the schedule's own rate stays as it was."""
        factor = self.warmup_factor(step)
        if factor >= 1.0:
            self.optimizer.step()
            return
        rates = [group["lr"] for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = lr * factor
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = lr

    def forward_and_loss(self, x: torch.Tensor, side: torch.Tensor) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The model's outputs and loss terms on one micro-batch (what [train] compile compiles)."""
        out = self.model(x, side)
        return out, self.model.loss(out, x, side, self.cfg.train.lmbda, self.distortion)

    def _forward_backward(
        self, x: torch.Tensor, side: torch.Tensor, seed: int, share: float
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """One micro-batch's outputs and loss terms, its gradient (weighted by `share`) accumulated;
        compiled where [train] compile asks for it, eager from the first failure to compile on (the
        forward pass or the backward one, which torch compiles at its first call). The torch RNG
        (quantisation noise) is seeded with `seed` before the pass that counts."""

        def one_pass(step: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
            torch.manual_seed(seed)
            out, terms = step(x, side)
            (terms["loss"] * share).backward()
            return out, terms

        if self._compiled_step is not None:
            try:
                return one_pass(self._compiled_step)
            except Exception as exc:  # torch's compile failures (no compiler, unsupported op) share no base class
                log.warning(
                    "[train] compile: torch.compile failed (%s: %s); training goes on without it "
                    "(set compile = false to skip the attempt, or install a C++ compiler: apt install g++)",
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                self._compiled_step = None
        return one_pass(self.forward_and_loss)

    def _all_reduce_grads(self, stats: list[float]) -> list[float]:
        """Sum the main gradients and `stats` over the processes, in one flat all-reduce.

        Done here rather than by DistributedDataParallel: the aux parameters take no gradient from
        the main loss (DDP would need find_unused_parameters), micro-batches would need no_sync(),
        and the model's loss and aux loss are computed outside its forward.
        """
        grads = [p.grad for p in self.model.main_parameters() if p.grad is not None]
        flat = torch.cat(
            [g.flatten() for g in grads] + [torch.tensor(stats, dtype=grads[0].dtype, device=grads[0].device)]
        )
        self.dist.all_reduce_sum(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return [float(v) for v in flat[offset:].tolist()]

    @torch.no_grad()
    def validate_pairs(self) -> list[dict[str, float]]:
        """Per held-out pair: loss, shared rate-distortion loss, estimated bpp (rounded latents), PSNR
        and MS-SSIM; for DSIN also ``psnr_dec``, its backbone's reconstruction before the side image:
        psnr - psnr_dec is what the side information itself adds at the same bits."""
        self.model.eval()
        records = []
        for i in range(len(self.val_set)):
            xi, side_i = self.val_set.get(i)
            x, side = to_tensor([xi]).to(self.dist.device), to_tensor([side_i]).to(self.dist.device)
            h, w = x.shape[-2:]
            xp, side_p = pad_to(x, self.model.stride), pad_to(side, self.model.stride)
            out = self.model(xp, side_p)
            terms = self.model.loss(out, xp, side_p, self.cfg.train.lmbda, self.distortion)
            x_hat = out["x_hat"][..., :h, :w].clamp(0, 1)
            record = {
                "loss": terms["loss"].item(),
                # The objective every model shares (rate of x + its distortion), comparable across models;
                # "loss" also holds model-specific terms (NDIC's side-branch and common-information rates).
                "rd_loss": self.cfg.train.lmbda * 255**2 * terms["distortion"].item() + terms["bpp"].item(),
                "bpp": bits(out["likelihoods"].values()).item() / (h * w),
                "psnr": psnr(x_hat, x),
                "ms_ssim": ms_ssim(x_hat, x).item() if min(h, w) >= ms_ssim_min_side() else math.nan,
            }
            if "x_dec" in out:
                record["psnr_dec"] = psnr(out["x_dec"][..., :h, :w].clamp(0, 1), x)
            records.append(record)
        return records

    def validate(self) -> dict[str, float]:
        """The held-out pairs' mean of every `validate_pairs` metric."""
        return _mean(self.validate_pairs())

    def log(self, record: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until cfg.train.steps (or `stop_after` more steps); checkpoint on the way and on Ctrl-C
        or SIGTERM (in a torchrun job: after the step every process is in, see StopRequests)."""
        with StopRequests() if self.dist.world > 1 else contextlib.nullcontext(None) as self.signals:
            try:
                return self._run(stop_after)
            finally:
                self.signals = None

    def _run(self, stop_after: int | None) -> dict[str, Any]:
        t = self.cfg.train
        end = t.steps if stop_after is None else min(t.steps, self.step + stop_after)
        bar = _progress(self.step, t.steps, enabled=self.progress and self.dist.is_main)
        window: list[dict[str, float]] = []
        skipped_in_row = 0
        try:
            while self.step < end:
                started = time.process_time()
                stats = self.train_step(self.step)
                stop = stats.pop("stop")
                skipped_in_row = skipped_in_row + 1 if stats.pop("skipped") else 0
                if skipped_in_row:
                    self._skipped(stats, skipped_in_row)
                self.cpu_seconds += time.process_time() - started
                self.step += 1
                if not skipped_in_row:
                    window.append(stats)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", bpp=f"{stats['bpp']:.3f}", psnr=f"{stats['psnr']:.2f}")
                if stop:
                    raise KeyboardInterrupt
                if self.step % t.validate_every == 0 or self.step == t.steps:
                    self._validate_and_log(window)
                    window = []
                if self.step % t.checkpoint_every == 0 or self.step == end:
                    self.save()
        except KeyboardInterrupt:
            self.save()
            if self.dist.is_main:
                log.warning("interrupted at step %d; checkpoint saved, continue with --resume", self.step)
            raise
        finally:
            bar.close()
        return self.metrics

    def _skipped(self, stats: dict[str, float], in_row: int) -> None:
        """Log a step whose loss or gradient was not finite (its update was not applied), naming its
        pairs so the batch can be looked at; raise once MAX_SKIPPED_IN_ROW steps in a row were."""
        batch = [self.train_set.pairs[int(i)] for i in self.batch_pairs(self.step)]
        pairs = ", ".join(f"{pair.x} (side {pair.side})" for pair in batch)
        if self.dist.is_main:
            log.warning(
                "step %d skipped: loss %s, gradient norm %s (the weights were left as they were); its pairs: %s",
                self.step + 1,
                stats["loss"],
                stats["grad_norm"],
                pairs,
            )
        if in_row >= MAX_SKIPPED_IN_ROW:
            kept = (
                f"{self.latest_path} holds the last checkpoint"
                if self.latest_path.exists()
                else "no checkpoint of this run was written yet"
            )
            raise TrainingDivergedError(
                f"training diverged: {in_row} steps in a row up to step {self.step + 1} gave a non-finite loss or "
                f"gradient (loss {stats['loss']}); {kept}: lower [train] lr and continue with --resume (or start again)"
            )

    def _validate_and_log(self, window: list[dict[str, float]]) -> None:
        """Rank 0 validates; every process steps its scheduler on the same result, so all keep the
        same learning rate."""
        train = {k: float(np.mean([s[k] for s in window])) for k in window[0]} if window else {}
        found: tuple[dict[str, float], dict[str, dict[str, float]]] | None = None
        if self.dist.is_main:
            records = self.validate_pairs()
            sources = [mix_source(pair.x) for pair in self.val_set.pairs]
            groups = sorted({s for s in sources if s})  # the native mix: each data set's held-out pairs on their own
            by_source = {g: _mean([r for r, s in zip(records, sources, strict=True) if s == g]) for g in groups}
            found = (_mean(records), by_source)
        val, by_source = self.dist.broadcast(found)
        self.scheduler.step(val["loss"])
        lr = self.optimizer.param_groups[0]["lr"]
        self.metrics = {
            "step": self.step,
            "lr": lr,
            "cpu_seconds": round(self.cpu_seconds, 1),
            "train": train,
            "val": val,
        }
        if by_source:
            self.metrics["val_by_source"] = by_source
        if self.dist.is_main:
            self.log(self.metrics)
        if val["loss"] < self.best_val:
            self.best_val = val["loss"]
            self.save(self.out_dir / "best.pt")
        elif val["loss"] > self.best_val * REGRESSION_WARNING and self.dist.is_main:
            log.warning(
                "validation loss %.4f at step %d is %.0f %% above the run's best, %.4f (%s): the weights regressed; "
                "export or fine-tune from best.pt rather than latest.pt or [train] keep (`stereodsc train --config %s "
                "--keep-best` writes it to [train] keep), or copy it over latest.pt and --resume at a lower [train] lr",
                val["loss"],
                self.step,
                100 * (val["loss"] / self.best_val - 1),
                self.best_val,
                self.out_dir / "best.pt",
                self.cfg.source,
            )


def _mean(records: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(start: int, total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _start(trainer: Trainer, resume: bool) -> None:
    """Resume the run, or start it fresh (from [train] init_from when set)."""
    init_from = trainer.cfg.train.init_from
    if resume and trainer.resume():
        if init_from:
            log.info(
                "continuing the run at step %d: init_from %s applies to a fresh start only", trainer.step, init_from
            )
        return
    for existing in (trainer.latest_path, trainer.keep_path):
        if existing is not None and existing.exists():
            raise CheckpointError(
                f"{existing} exists: pass --resume to continue it, or choose another [train] out / keep"
            )
    if resume:
        log.info("no checkpoint in %s yet: starting from step 0", trainer.out_dir)
    if init_from:
        trainer.warm_start(init_from)
        for path in trainer.cfg.train.init_then:
            trainer.warm_start(path, over_earlier=True)


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    dist: Distributed = SINGLE,
) -> Trainer:
    """Train (or continue) the run `cfg` describes and return the trainer; `dist`: this process's
    place in a torchrun job (rank 0 reads the run's files and hands every process its state)."""
    trainer = Trainer(cfg, progress=progress, dist=dist)
    error: StereoDSCError | None = None
    if dist.is_main:
        try:
            _start(trainer, resume)
        except StereoDSCError as e:
            error = e
    error = dist.broadcast(error)  # every process stops with rank 0's error instead of waiting for it
    if error is not None:
        raise error
    trainer.share_state()
    trainer.run(stop_after)
    return trainer


def keep_best(cfg: TrainConfig) -> dict[str, Any]:
    """Write the run's best validated checkpoint ([train] out/best.pt) to [train] keep, compact, and
    return it: the file to commit and export when training went on past its best (a regression, or
    a run stopped between validations); `--resume` on a fresh clone then continues from its step."""
    from stereodsc.models import build_model

    if not cfg.train.keep:
        raise ConfigError(f"{cfg.source}: [train] keep is not set; name the compact checkpoint to write there")
    best_path = Path(cfg.train.out) / "best.pt"
    if not best_path.is_file():
        raise CheckpointError(
            f"{best_path} not found: the run has not validated yet (every [train] validate_every steps); "
            "train on with --resume first"
        )
    model_config = build_model(cfg.model.name, cfg.model.preset, **cfg.model.options).config
    kept = compact(_load_run_checkpoint(best_path, model_config))
    save_checkpoint(Path(cfg.train.keep), kept)
    return kept
