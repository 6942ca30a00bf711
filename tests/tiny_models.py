"""Tiny trained-looking checkpoints and bundles shared by the export, codec and pipeline tests.

They are built once per session under pytest's base temp folder (`checkpoint`, `bundle_dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stereodsc.bundle import MANIFEST
from stereodsc.export import export_bundle
from stereodsc.models import CompressionModel, build_model
from stereodsc.models.priors import ScaleHyperprior
from stereodsc.train.checkpoint import rng_state, save_checkpoint

TINY = {"N": 8, "M": 8}
CAM_TINY = {"heads": 2, "dim": 16, "dim_head": 8, "image_size": [64, 128]}
# name -> (model, options, lambda, seed)
CHECKPOINTS: dict[str, tuple[str, dict[str, Any], float, int]] = {
    "balle_lo": ("balle2017", {}, 0.002, 0),
    "balle_hi": ("balle2017", {}, 0.02, 1),
    "ndic_lo": ("ndic", {}, 0.002, 2),
    "ndic_hi": ("ndic", {}, 0.02, 3),
    "cam": ("ndic_cam", CAM_TINY, 0.01, 4),
    "dsin": ("dsin", {"max_row_offset": 8}, 0.01, 5),
    "balle2018": ("balle2018", {"encoder": "minimal", "edge_channels": [8, 8, 8]}, 0.01, 6),  # the camera encoder
    "ndic_hyper": ("ndic", {"backbone": "balle2018"}, 0.01, 7),
}
SMALL_SIZES = ((64, 128), (128, 256))
FLIP_FRACTION = 1e-3
"""The parity contract between float backends (torch, onnxruntime, TensorRT; AVX2 or AVX-512): a
symbol may differ by 1 where its latent lies within float round-off of k + 0.5, in at most one symbol
of 1000 (one flip is always allowed). What must be exact is the integer path: a frame's bytes decode
to the same symbols on every machine (the golden frames of test_golden.py pin it)."""
# name -> (checkpoints, sizes): balle2017 + ndic also run at KITTI's native size (dynamic shapes).
BUNDLES = {
    "stereo": (("balle_hi", "ndic_lo", "balle_lo", "ndic_hi"), ((64, 128), (375, 1242))),
    "cam": (("cam",), SMALL_SIZES),
    "dsin": (("dsin",), SMALL_SIZES),
    "hyper": (("balle2018", "ndic_hyper"), SMALL_SIZES),  # scale hyperprior: intra + side_info
}


def write_checkpoint(path: Path, name: str, options: dict[str, Any], lmbda: float, seed: int) -> None:
    """A tiny model in the trainer's checkpoint schema (Trainer.state()).

    An untrained g_a gives all-zero symbols, so its last layer is scaled up to make the symbols
    span a range (escapes included); a few hundred aux steps fit the quantiles to the density.
    A scale hyperprior's z and its h_s's scales are spread too (`spread_hyperprior`).
    """
    torch.manual_seed(seed)
    model = build_model(name, **{**TINY, **options})
    last = list(model.g_a.children())[-1]
    assert isinstance(last, torch.nn.Conv2d)
    with torch.no_grad():
        last.weight.mul_(40.0)
    if isinstance(model.prior, ScaleHyperprior):
        spread_hyperprior(model)
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


def spread_hyperprior(model: CompressionModel) -> None:
    """Rescale h_a's and h_s's last convs so that, on sample images, z spreads over a few integers
    (std ~3) and h_s's outputs ~ N(2, 3).

    A random-init h_a gives z = 0 almost everywhere and a random-init h_s puts every scale at the
    table's lower bound (row 0 everywhere): the integer-vs-float comparison would be trivially
    equal. This spreads the scales over the table's lower half, as a trained model's are.
    """
    prior = model.prior
    assert isinstance(prior, ScaleHyperprior)
    h_a_last, h_s_last = prior.h_a[-1], prior.h_s[4]
    assert isinstance(h_a_last, torch.nn.Conv2d) and h_a_last.bias is not None
    assert isinstance(h_s_last, torch.nn.Conv2d) and h_s_last.bias is not None
    with torch.no_grad():
        images = [sample_pair(128, 256, seed)[i] for seed in range(2) for i in range(2)]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        y = model.g_a(x)
        z = prior.h_a(torch.abs(y))
        h_a_last.weight.mul_(3.0 / float(z.std()))
        h_a_last.bias.mul_(3.0 / float(z.std()))
        pre = prior.h_s[:5](torch.round(prior.h_a(torch.abs(y))))
        mean, std = float(pre.mean()), float(pre.std())
        h_s_last.weight.mul_(3.0 / std)
        h_s_last.bias.copy_((h_s_last.bias - mean) * 3.0 / std + 2.0)


def checkpoint(factory: pytest.TempPathFactory, name: str) -> Path:
    """The session's tiny checkpoint `name` (see CHECKPOINTS), written on first use."""
    path = factory.getbasetemp() / "checkpoints" / f"{name}.pt"
    if not path.is_file():
        write_checkpoint(path, *CHECKPOINTS[name])
    return path


def flip_budget(symbols: int) -> int:
    """How many rounding-boundary flips the parity contract allows among `symbols` symbols."""
    return max(1, int(FLIP_FRACTION * symbols))


def assert_symbols_agree(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    """Symbols of two float backends: equal up to the contract's rounding-boundary flips."""
    assert a.shape == b.shape, what
    delta = np.abs(a.astype(np.int64) - b.astype(np.int64))
    assert delta.max(initial=0) <= 1, f"{what}: symbols differ by {delta.max()}, not a rounding flip"
    assert np.count_nonzero(delta) <= flip_budget(a.size), f"{what}: {np.count_nonzero(delta)} of {a.size} differ"


def assert_parity_contract(parity: dict[str, Any] | None) -> None:
    """A manifest parity record keeps the contract: every mismatch is a boundary flip, within budget."""
    assert parity is not None and parity["symbols"] > 0
    assert parity["symbol_mismatches"] == parity["boundary_flips"] <= flip_budget(parity["symbols"]), parity


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
