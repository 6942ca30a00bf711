"""Checkpoints with a versioned schema, written atomically so a kill never leaves a broken file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stereodsc.errors import CheckpointError

SCHEMA = "stereodsc.checkpoint/1"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (plus the schema tag) to `path` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"schema": SCHEMA, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint; refuse files of another schema with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}; the file is damaged or not a checkpoint") from e
    if not isinstance(ckpt, dict) or ckpt.get("schema") != SCHEMA:
        found = ckpt.get("schema") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: schema {found!r}, expected {SCHEMA!r}; it was not written by this stereodsc")
    for key in ("model", "model_config", "model_state", "step"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: missing {key!r}; the checkpoint is incomplete")
    ckpt["model_config"] = complete_config(ckpt["model_config"])
    return ckpt


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved model config as the model records it today: options added since the checkpoint was
    written (e.g. DSIN's si_residual) at their defaults, which is what that model computed, so a
    resume, a warm start or an export of an older checkpoint compares equal to the same config."""
    from stereodsc.models import MODEL_NAMES, build_model

    if config.get("name") not in MODEL_NAMES:  # not a model this stereodsc builds: the caller's checks name it
        return config
    return dict(build_model(**config).config)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's model_state into `model`, leaving the model's constants (its buffers: bounds,
    scale tables, which checkpoints no longer hold) as its code defines them. Checkpoints written
    before they became constants hold them too, in float16 in compact ones, where the likelihood
    floor 1e-9 is 0 and the GDN pedestal 2**-36 is 0: those values are ignored."""
    constants = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k not in constants})


def model_from_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint holds, in eval mode."""
    from stereodsc.models import build_model

    ckpt = load_checkpoint(path)
    model = build_model(**ckpt["model_config"])
    load_weights(model, ckpt["model_state"])
    model.eval()
    return model, ckpt
