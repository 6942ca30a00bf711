"""Tiny trained-looking checkpoints and bundles shared by the export, codec and pipeline tests.

They are built once per session under pytest's base temp folder (`checkpoint`, `bundle_dir`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stereodsc.bundle import MANIFEST
from stereodsc.export import export_bundle
from stereodsc.models import build_model
from stereodsc.train.checkpoint import rng_state, save_checkpoint

TINY = {"N": 8, "M": 8}
CAM_TINY = {"heads": 2, "dim": 16, "dim_head": 8, "image_size": [64, 128]}
# name -> (model, options, lambda, seed)
CHECKPOINTS = {
    "balle_lo": ("balle2017", {}, 0.002, 0),
    "balle_hi": ("balle2017", {}, 0.02, 1),
    "ndic_lo": ("ndic", {}, 0.002, 2),
    "ndic_hi": ("ndic", {}, 0.02, 3),
    "cam": ("ndic_cam", CAM_TINY, 0.01, 4),
    "dsin": ("dsin", {"max_row_offset": 8}, 0.01, 5),
    "balle2018": ("balle2018", {}, 0.01, 6),
}
SMALL_SIZES = ((64, 128), (128, 256))
# name -> (checkpoints, sizes): balle2017 + ndic also run at KITTI's native size (dynamic shapes).
BUNDLES = {
    "stereo": (("balle_hi", "ndic_lo", "balle_lo", "ndic_hi"), ((64, 128), (375, 1242))),
    "cam": (("cam",), SMALL_SIZES),
    "dsin": (("dsin",), SMALL_SIZES),
}


def write_checkpoint(path: Path, name: str, options: dict, lmbda: float, seed: int) -> None:
    """A tiny model in the trainer's checkpoint schema (Trainer.state()).

    An untrained g_a gives all-zero symbols, so its last layer is scaled up to make the symbols
    span a range (escapes included); a few hundred aux steps fit the quantiles to the density.
    """
    torch.manual_seed(seed)
    model = build_model(name, **{**TINY, **options})
    with torch.no_grad():
        model.g_a[-1].weight.mul_(40.0)
    aux = torch.optim.Adam(model.aux_parameters(), lr=0.05)
    for _ in range(300):
        aux.zero_grad()
        model.aux_loss().backward()
        aux.step()
    main = torch.optim.Adam(model.main_parameters(), lr=1e-4, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(main)
    val = {"loss": 1.0, "bpp": 0.5, "psnr": 20.0, "ms_ssim": 0.8}
    save_checkpoint(
        path,
        {
            "model": model.name,
            "model_config": model.config,
            "train_config": {"model": {"name": name}, "train": {"lmbda": lmbda}},
            "step": 300,
            "cpu_seconds": 1.0,
            "best_val": 1.0,
            "metrics": {"step": 300, "lr": 1e-4, "cpu_seconds": 1.0, "train": val, "val": val},
            "model_state": model.state_dict(),
            "optimizer": main.state_dict(),
            "aux_optimizer": aux.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        },
    )


def checkpoint(factory: pytest.TempPathFactory, name: str) -> Path:
    """The session's tiny checkpoint `name` (see CHECKPOINTS), written on first use."""
    path = factory.getbasetemp() / "checkpoints" / f"{name}.pt"
    if not path.is_file():
        write_checkpoint(path, *CHECKPOINTS[name])
    return path


def sample_pair(h: int = 64, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A structured stereo-like pair: smooth noise, the side view shifted by a few pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (h // 8 + 1, w // 8 + 2, 3))
    big = np.kron(coarse, np.ones((8, 8, 1)))[:h, : w + 8]
    return big[:, 8:].astype(np.uint8), big[:, :w].astype(np.uint8)


def bundle_dir(factory: pytest.TempPathFactory, name: str) -> Path:
    """The session's bundle `name` (see BUNDLES), exported on first use."""
    out = factory.getbasetemp() / "bundles" / name
    if not (out / MANIFEST).is_file():
        names, sizes = BUNDLES[name]
        export_bundle(
            [checkpoint(factory, n) for n in names],
            out,
            sample_images=[sample_pair()],
            sizes=sizes,
            progress=False,
        )
    return out
