"""Export: checkpoints -> bundle (ONNX graphs + integer tables + manifest), parity, refusals, tampering.

The tiny checkpoints and bundles are built once per session under pytest's base temp folder and
shared with test_codec.py (which imports `checkpoint` and `bundle_dir` from here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stereodsc.bundle import MANIFEST, load_bundle
from stereodsc.errors import BundleError, CheckpointError, ConfigError
from stereodsc.export import DEFAULT_SIZES, ParityError, ParityResult, export_bundle
from stereodsc.export import exporter as exporter_module
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


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny graphs: extra threads only fight the other jobs for 2 cores


def _write_checkpoint(path: Path, name: str, options: dict, lmbda: float, seed: int) -> None:
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
        _write_checkpoint(path, *CHECKPOINTS[name])
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


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_dir(tmp_path_factory, "stereo")


def test_stereo_bundle_manifest_and_parity(stereo: Path) -> None:
    bundle = load_bundle(stereo)
    m = bundle.manifest
    assert set(bundle.codecs) == {"intra", "side_info"}
    assert m["opset"] == 18 and {"torch", "onnx", "onnxruntime", "stereodsc"} <= set(m["producer"])
    for role, model in (("intra", "balle2017"), ("side_info", "ndic")):
        codec = bundle.codec(role)
        raw = m["codecs"][role]
        assert codec.model == model and codec.stride == 16 and codec.latent_channels == 8
        assert [q.lmbda for q in codec.qualities] == [0.002, 0.02]  # sorted: quality 0 = lowest rate
        assert raw["shapes"] == {"edge": "dynamic", "host": "dynamic"}
        assert raw["io"]["edge"]["inputs"] == {"image": {"dtype": "uint8", "shape": [1, "H", "W", 3]}}
        assert raw["io"]["edge"]["outputs"]["y"]["dtype"] == "int32"
        expected_inputs = {"y", "side"} if codec.uses_side_info else {"y"}
        assert set(raw["io"]["host"]["inputs"]) == expected_inputs
        for q in codec.qualities:
            assert q.edge.dynamic and q.host.dynamic and q.edge.path(384, 1248) is not None
            assert q.metrics["psnr"] == 20.0
            assert q.parity is not None
            assert q.parity["symbol_mismatches"] == 0 and q.parity["symbols"] > 0
            assert q.parity["sizes"] == ["384x1248", "64x128"]  # dynamic graphs run at both
            assert q.parity["host_max_abs_diff"] <= 1
            assert q.parity["psnr_delta_db_max"] < 0.01
            assert q.load_tables()["y"].num_rows == 8


def test_ndic_cam_is_dynamic_and_dsin_host_is_per_size(tmp_path_factory: pytest.TempPathFactory) -> None:
    cam = load_bundle(bundle_dir(tmp_path_factory, "cam")).codec("side_info")
    assert cam.model == "ndic_cam" and cam.qualities[0].host.dynamic
    dsin = load_bundle(bundle_dir(tmp_path_factory, "dsin"))
    q = dsin.codec("side_info").quality(0)
    assert q.edge.dynamic and not q.host.dynamic
    assert q.host.path(64, 128) is not None and q.host.path(128, 256) is not None
    assert q.host.path(384, 1248) is None
    assert dsin.manifest["codecs"]["side_info"]["shapes"] == {"edge": "dynamic", "host": "fixed"}
    assert q.parity is not None and q.parity["symbol_mismatches"] == 0


def test_report_summary(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    report = export_bundle(
        [checkpoint(tmp_path_factory, "balle_lo")],
        tmp_path / "b",
        sample_images=[sample_pair(seed=1)],
        sizes=[(64, 128), (96, 160)],
        progress=False,
    )
    assert report.bundle_id == load_bundle(tmp_path / "b").id
    assert len(report.parity) == 2 and all(r.symbol_mismatches == 0 for r in report.parity)
    assert {r.size for r in report.parity} == {(64, 128), (96, 160)}
    text = report.summary()
    assert "intra: balle2017, 1 qualities" in text and "96x160" in text and report.bundle_id[:16] in text


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_load_bundle_refuses_tampering(stereo: Path, tmp_path: Path) -> None:
    onnx = _copy(stereo, tmp_path / "onnx")
    with open(onnx / "intra/q0/host.onnx", "r+b") as f:
        f.seek(-20, 2)
        byte = f.read(1)
        f.seek(-20, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BundleError, match=r"intra/q0/host.onnx does not match its sha256"):
        load_bundle(onnx)

    tables = _copy(stereo, tmp_path / "tables")
    (tables / "side_info/q1/tables.npz").write_bytes((stereo / "side_info/q0/tables.npz").read_bytes())
    with pytest.raises(BundleError, match=r"side_info/q1/tables.npz does not match"):
        load_bundle(tables)

    edited = _copy(stereo, tmp_path / "manifest")
    manifest = json.loads((edited / MANIFEST).read_text())
    manifest["codecs"]["intra"]["qualities"][0]["lmbda"] = 0.5
    (edited / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(BundleError, match="modified after export"):
        load_bundle(edited, verify=False)

    missing = _copy(stereo, tmp_path / "missing")
    (missing / "side_info/q0/edge.onnx").unlink()
    with pytest.raises(BundleError, match=r"edge\.onnx is missing"):
        load_bundle(missing)

    bundle = load_bundle(stereo, expected_id=load_bundle(stereo).id[:16])
    with pytest.raises(BundleError, match="expected 0000"):
        load_bundle(stereo, expected_id="0000")
    assert bundle.id_bytes == bytes.fromhex(bundle.id[:16])


def test_export_refuses_hyperprior(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hyperprior export needs the integer scale path"):
        export_bundle([checkpoint(tmp_path_factory, "balle2018")], tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def test_export_refuses_mixed_or_repeated_checkpoints(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    other = tmp_path / "wide.pt"
    _write_checkpoint(other, "balle2017", {"N": 16}, 0.05, 0)
    lo = checkpoint(tmp_path_factory, "balle_lo")
    with pytest.raises(ConfigError, match=r"share one model config.*\['N'\]"):
        export_bundle([lo, other], tmp_path / "b", sample_images=[], progress=False)
    with pytest.raises(ConfigError, match="repeated lambdas"):
        export_bundle([lo, lo], tmp_path / "b", sample_images=[], progress=False)
    bad = tmp_path / "bad.pt"
    ckpt = torch.load(lo, weights_only=False)
    del ckpt["train_config"]
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="lmbda"):
        export_bundle([bad], tmp_path / "b", sample_images=[], progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_bundle([lo], tmp_path / "b", sample_images=[], progress=False)


def test_grid_ndic_cam_needs_its_training_size(tmp_path: Path) -> None:
    path = tmp_path / "grid.pt"
    _write_checkpoint(path, "ndic_cam", {**CAM_TINY, "patch_mode": "grid"}, 0.01, 0)
    with pytest.raises(ConfigError, match="patch_mode='grid' runs only at"):
        export_bundle([path], tmp_path / "b", sample_images=[], sizes=DEFAULT_SIZES, progress=False)


def test_parity_failure_fails_the_export(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Symbols that differ for another reason than float round-off at k + 0.5 fail the export."""
    flips = 0

    def mismatching(*args: object, **kwargs: object) -> list[ParityResult]:
        return [ParityResult("intra", 0, (64, 128), 0, 256, 3, flips, 1, 0, 20.0, 20.0)]

    monkeypatch.setattr(exporter_module, "check_quality", mismatching)
    lo = checkpoint(tmp_path_factory, "balle_lo")
    kwargs = {"sample_images": [sample_pair()], "sizes": [(64, 128)], "progress": False}
    with pytest.raises(ParityError, match=r"3 of 256 edge symbols differ.*3 are not rounding-boundary flips"):
        export_bundle([lo], tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing left behind

    flips = 3
    with pytest.raises(ParityError, match="all are rounding-boundary flips"):
        exporter_module._check(mismatching(), allow_boundary_flips=False)
    report = export_bundle([lo], tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    assert report.parity[0].boundary_flips == 3 and "3 rounding-boundary flips" in report.summary()
    quality = load_bundle(tmp_path / "b").codec("intra").quality(0)
    assert quality.parity is not None and quality.parity["boundary_flips"] == 3
