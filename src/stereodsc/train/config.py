"""Training configuration: a TOML file validated at once, so a typo fails before any work starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stereodsc.errors import ConfigError
from stereodsc.tomlio import load_toml, sections

from .datasets import DATASET_KINDS


@dataclass
class ModelSection:
    name: str = "balle2017"
    preset: str = "small"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    kind: str = "sample"
    path: str = ""
    pairing: str = "stereo"  # "stereo", "general" (x_t with side_t±k) or "both"
    max_shift: int = 3
    both_directions: bool = True
    protocol: str = "paper"  # "paper": centre crop + 128x256; "native": full frames (use crop)
    crop: list[int] | None = None  # [height, width] random training crop, same place in x and side
    flip: bool = True
    swap: bool = True
    val_frames: int = 20  # the last frames of a sequence, held out (kitti_raw, folder, sample)
    val_list: str = ""  # kitti_list: the validation split list
    root: str = ""  # kitti_list: folder the list's relative paths start from
    split: str = "train"  # cityscapes split used for training ("val" is used for validation)
    # Side image as the host has it: intra-codec checkpoints (no side information) that decode the
    # reference view; each draw picks one (a mix of qualities). Empty: the original image.
    side_codec: list[str] = field(default_factory=list)


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainSection:
    lmbda: float = 0.01
    distortion: str = "mse"  # "mse" or "ms_ssim"
    steps: int = 1000
    batch_size: int = 1  # the global batch: under torchrun each of N processes takes batch_size / N
    # Samples per forward pass (gradients accumulate over a process's share); 0: the whole share.
    # The quantisation noise is drawn per micro-batch, so runs with the same micro_batch give the same
    # weights on any number of processes (up to float summation order).
    micro_batch: int = 0
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_patience: int = 10  # validations without improvement before the lr drops 10x
    lr_min: float = 1e-7
    # Steps of linear learning-rate ramp (lr/warmup, 2 lr/warmup, ... lr) whenever the optimiser's moments start
    # fresh: a new run, a warm start, a resume from the kept compact checkpoint (a fresh clone). Fresh Adam
    # moments take a full lr-sized step in every weight at once, which knocks a converged model back; 0: none.
    # Measured: intra 0.012 resumed from its kept weights (step 9,000, held-out loss 2.2066), 500 steps at lr 1e-4:
    # 2.2170 without a ramp, 2.2078 with warmup = 500.
    warmup: int = 0
    validate_every: int = 100
    checkpoint_every: int = 100
    max_val_pairs: int = 40
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # torch.compile the training step's forward pass and loss: 1.25-1.4x faster steps on a CPU core (intra 0.52 ->
    # 0.42 s, dsin 1.92 -> 1.36 s at batch 2 of 256x512) after a one-off compile of 2-3 minutes: for long runs.
    # It needs a C++ compiler (CPU) or Triton (GPU): where compiling fails, the run warns and goes on without it.
    compile: bool = False
    # "auto": the first CUDA GPU when torch sees one, else the CPU; "cpu" or "cuda" to insist.
    # Under torchrun each process takes the GPU of its LOCAL_RANK (or the CPU with "cpu").
    device: str = "auto"
    out: str = "runs/run"
    # Warm start / fine-tuning: model weights from this checkpoint (e.g. a higher-rate point), a path or
    # the name of a compact checkpoint in weights/ ("balle2018_native_l0.05"); --init-from overrides it.
    init_from: str = ""
    # Checkpoints loaded after init_from, in order, each overwriting the tensors it shares with the model
    # (--init-from given more than once): a trained SI-Net (init_from, the DSIN weights) on a retrained
    # intra codec's backbone (init_then = [its weights]), where DSIN trains on that codec frozen.
    init_then: list[str] = field(default_factory=list)
    # Compact checkpoint kept in the repository (weights, step, schedule; no optimiser moments), written
    # with every checkpoint: --resume continues from it on a fresh clone where `out` holds nothing yet.
    keep: str = ""
    # Parameters not trained: those whose names start with one of these prefixes. ["g_a.", "prior.", "g_s."]
    # on a side-information codec trains its host-side fusion only (DSIN's SI-Net): the cameras' encoder and
    # the entropy model stay as they are, so camera boards need no update and the rate does not move.
    frozen: list[str] = field(default_factory=list)

    @property
    def latest_path(self) -> Path:
        """The run's full checkpoint of its latest step."""
        return Path(self.out) / "latest.pt"

    @property
    def keep_path(self) -> Path | None:
        """The compact checkpoint kept in the repository, if the config names one."""
        return Path(self.keep) if self.keep else None


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    source: str = ""  # the file this config came from, for messages

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> TrainConfig:
    """Build and validate a config; every error names the key and the fix."""
    schema = {"model": ModelSection, "data": DataSection, "train": TrainSection}
    cfg = TrainConfig(**sections(raw, schema, source), source=source)
    validate(cfg)
    return cfg


def load_config(path: str | Path, init_from: Sequence[str] | None = None) -> TrainConfig:
    """The config in `path`; `init_from` (stereodsc train --init-from, once or more) replaces its
    [train] init_from with the first and init_then with the rest."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; see configs/ for examples")
    raw = load_toml(path)
    if init_from:
        first, *then = init_from
        raw = {**raw, "train": {**raw.get("train", {}), "init_from": first, "init_then": then}}
    return config_from_dict(raw, str(path))


def weights_dirs() -> list[Path]:
    """Where a bare init_from name is looked up: weights/ of the working directory, then of the
    source checkout stereodsc runs from (the committed compact checkpoints)."""
    here, checkout = Path("weights"), Path(__file__).resolve().parents[3] / "weights"
    return [here] if here.resolve() == checkout else [here, checkout]


def _find_weights(name: str) -> Path | None:
    """`<name>.pt` in one of the weights folders, if there is one."""
    for folder in weights_dirs():
        candidate = folder / f"{name.removesuffix('.pt')}.pt"
        if candidate.is_file():
            return candidate
    return None


def _bundle_weights(bundle: str, model: str, lmbda: float, source: str) -> str:
    """The torch weights a shipped bundle's codec was exported from: the codec of ``model``, at the
    quality whose lambda is nearest ``lmbda`` (on a log scale), looked up in weights/ by the
    checkpoint name the manifest records."""
    import math

    from stereodsc.bundle import load_bundle
    from stereodsc.bundles import shipped_bundles

    codecs = load_bundle(shipped_bundles()[bundle], verify=False).manifest["codecs"]
    matching = [c for c in codecs.values() if c["model"] == model]
    if not matching:
        models = sorted({c["model"] for c in codecs.values()})
        raise ConfigError(
            f"{source}: init_from = {bundle!r}: that bundle ships {', '.join(models)}, not {model}; set "
            f"[model] name to one of them or pick another bundle (stereodsc models)"
        )
    quality = min(matching[0]["qualities"], key=lambda q: abs(math.log(q["lmbda"] / lmbda)))
    name = quality["checkpoint"]["file"]
    found = _find_weights(name)
    if found is None:
        raise ConfigError(
            f"{source}: init_from = {bundle!r}: its {model} at lambda {quality['lmbda']:g} was exported from "
            f"{name}, which is not in {' or '.join(str(d) for d in weights_dirs())}; the torch weights of the "
            "shipped models live in the repository's weights/ folder: run from a clone of it"
        )
    return str(found)


def resolve_init_from(value: str, source: str, model: str = "", lmbda: float = 0.0) -> str:
    """init_from as a checkpoint path: an existing file, `weights/<value>.pt`, or the name of a shipped
    bundle (the weights its ``model`` codec nearest ``lmbda`` was exported from)."""
    if Path(value).is_file():
        return value
    from stereodsc.bundles import shipped_bundles

    found = _find_weights(value)
    if found is not None:
        return str(found)
    if value in shipped_bundles() and model:
        return _bundle_weights(value, model, lmbda, source)
    dirs = weights_dirs()
    names = sorted({p.stem for folder in dirs if folder.is_dir() for p in folder.glob("*.pt")})
    known = f"weights/ holds {', '.join(names)}" if names else "no weights/ folder with checkpoints was found"
    raise ConfigError(
        f"{source}: init_from = {value!r} ([train] init_from or --init-from) is neither a checkpoint file, a "
        f"name in weights/ nor a shipped bundle ({', '.join(shipped_bundles())}). {known}; pass a checkpoint "
        "path (runs/<run>/best.pt), one of those names or a bundle name"
    )


def has_checkpoint(t: TrainSection) -> bool:
    """Whether the run has a checkpoint to continue from (its latest step, or its kept weights on a
    fresh clone): init_from only seeds a fresh start, so such a run does not need it to exist (an
    earlier rate point's weights that were never committed, say)."""
    return any(path is not None and path.is_file() for path in (t.latest_path, t.keep_path))


def validate(cfg: TrainConfig) -> None:
    from stereodsc.models import MODEL_NAMES, PRESETS, default_options

    src, m, d, t = cfg.source, cfg.model, cfg.data, cfg.train
    if m.name not in MODEL_NAMES:
        raise ConfigError(f"{src}: [model] name = {m.name!r} is not a model; choose one of {list(MODEL_NAMES)}")
    if m.preset not in PRESETS:
        raise ConfigError(f"{src}: [model] preset = {m.preset!r} is unknown; choose one of {list(PRESETS)}")
    bad = sorted(set(m.options) - set(default_options(m.name)))
    if bad:
        raise ConfigError(
            f"{src}: [model.options] {bad} not accepted by {m.name}; valid: {sorted(default_options(m.name))}"
        )
    if d.kind not in DATASET_KINDS:
        raise ConfigError(f"{src}: [data] kind = {d.kind!r} is unknown; choose one of {list(DATASET_KINDS)}")
    if d.kind != "sample":
        if not d.path:
            raise ConfigError(f"{src}: [data] path is required for kind = {d.kind!r}")
        if not Path(d.path).exists():
            raise ConfigError(
                f"{src}: [data] path = {d.path!r} does not exist; point it at the dataset "
                f"(e.g. a KITTI raw drive folder holding image_02/ and image_03/)"
            )
    for path in d.side_codec:
        if not Path(path).is_file():
            raise ConfigError(
                f"{src}: [data] side_codec {path!r} does not exist; train the intra codec first "
                "(see the Makefile's weights rules) or list existing intra checkpoints"
            )
    if d.side_codec and d.swap:
        raise ConfigError(
            f"{src}: [data] side_codec needs swap = false (a decoded side image cannot become x); "
            "both_directions pairs give both directions"
        )
    if d.kind == "kitti_list" and not d.val_list:
        raise ConfigError(f"{src}: [data] val_list is required for kind = 'kitti_list'")
    if d.pairing not in ("stereo", "general", "both"):
        raise ConfigError(f"{src}: [data] pairing = {d.pairing!r}; choose 'stereo', 'general' or 'both'")
    if d.protocol not in ("paper", "native"):
        raise ConfigError(f"{src}: [data] protocol = {d.protocol!r}; choose 'paper' or 'native'")
    if d.crop is not None and (len(d.crop) != 2 or min(d.crop) <= 0):
        raise ConfigError(f"{src}: [data] crop = {d.crop!r} should be [height, width]")
    if t.distortion not in ("mse", "ms_ssim"):
        raise ConfigError(f"{src}: [train] distortion = {t.distortion!r}; choose 'mse' or 'ms_ssim'")
    if t.device not in DEVICES:
        raise ConfigError(f"{src}: [train] device = {t.device!r}; choose one of {list(DEVICES)}")
    for key in ("steps", "batch_size", "validate_every", "checkpoint_every"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"{src}: [train] {key} must be positive")
    if t.warmup < 0:
        raise ConfigError(f"{src}: [train] warmup = {t.warmup} must be >= 0 (steps of learning-rate ramp; 0: none)")
    if t.micro_batch < 0 or (t.micro_batch and t.batch_size % t.micro_batch):
        raise ConfigError(
            f"{src}: [train] micro_batch = {t.micro_batch} must divide batch_size = {t.batch_size} "
            "(0: one forward pass per process)"
        )
    if t.lmbda <= 0:
        raise ConfigError(f"{src}: [train] lmbda must be positive (larger = higher rate and quality)")
    if not all(isinstance(p, str) and p for p in t.frozen):
        raise ConfigError(f'{src}: [train] frozen = {t.frozen!r} should list parameter-name prefixes, e.g. ["g_a."]')
    if not all(isinstance(p, str) and p for p in t.init_then):
        raise ConfigError(
            f"{src}: [train] init_then = {t.init_then!r} should list checkpoint paths or names in weights/"
        )
    if t.init_then and not t.init_from:
        raise ConfigError(f"{src}: [train] init_then needs an init_from to load first (the model to start from)")
    if t.init_from and not has_checkpoint(t):
        t.init_from = resolve_init_from(t.init_from, src, m.name, t.lmbda)
        t.init_then = [resolve_init_from(p, src, m.name, t.lmbda) for p in t.init_then]
