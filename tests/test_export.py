"""Export: checkpoints -> bundle (ONNX graphs + integer tables + manifest), parity, refusals, tampering.

Scale-hyperprior bundles (z, y tables and the integer scale net) are checked in test_hyperprior.py.

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

from stereodsc.bundle import MANIFEST, load_bundle, write_manifest
from stereodsc.codec.coding import load_coding
from stereodsc.errors import BundleError, CheckpointError, ConfigError
from stereodsc.export import DEFAULT_SIZES, ParityError, ParityResult, export_bundle
from stereodsc.export import exporter as exporter_module
from tiny_models import (
    CAM_TINY,
    SMALL_SIZES,
    assert_parity_contract,
    bundle_dir,
    checkpoint,
    flip_budget,
    sample_pair,
    write_checkpoint,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny graphs: extra threads only fight the other jobs for 2 cores


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
            assert_parity_contract(q.parity)
            assert q.parity is not None and q.parity["sizes"] == ["384x1248", "64x128"]  # dynamic graphs run at both
            assert q.parity["host_max_abs_diff"] <= 1
            assert q.parity["psnr_delta_db_max"] < 0.01
            assert load_coding(codec, q).tables["y"].num_rows == 8


def test_float16_weights_halve_the_bundle_and_keep_parity(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    import onnx

    checkpoints = [checkpoint(tmp_path_factory, n) for n in ("balle_hi", "ndic_hi")]
    full = export_bundle(
        checkpoints, tmp_path / "f32", sample_images=[sample_pair()], weights="float32", progress=False
    )
    half = export_bundle(checkpoints, tmp_path / "f16", sample_images=[sample_pair()], progress=False)
    graphs = {p.relative_to(tmp_path / "f16") for p in (tmp_path / "f16").rglob("*.onnx")}
    size = {k: sum((tmp_path / k / g).stat().st_size for g in graphs) for k in ("f16", "f32")}
    assert size["f16"] < 0.7 * size["f32"]  # tiny models: many tensors stay float32; shipped ones: ~0.5
    model = onnx.load(str(tmp_path / "f16/side_info/q0/host.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert load_bundle(tmp_path / "f16").manifest["codecs"]["intra"]["weights"] == "float16"
    for result in half.parity:  # onnxruntime on the stored float16 kernels == torch on the rounded ones
        assert result.symbol_mismatches == result.boundary_flips <= flip_budget(result.symbols)
        assert result.host_max_abs_diff <= 1
    assert len(full.parity) == len(half.parity)
    with pytest.raises(ConfigError, match="weights"):
        export_bundle(checkpoints, tmp_path / "bad", weights="int4", progress=False)


def test_ndic_cam_is_dynamic_and_dsin_host_is_per_size(tmp_path_factory: pytest.TempPathFactory) -> None:
    cam = load_bundle(bundle_dir(tmp_path_factory, "cam")).codec("side_info")
    assert cam.model == "ndic_cam" and cam.qualities[0].host.dynamic
    dsin = load_bundle(bundle_dir(tmp_path_factory, "dsin"))
    q = dsin.codec("side_info").quality(0)
    assert q.edge.dynamic and not q.host.dynamic
    assert q.host.path(64, 128) is not None and q.host.path(128, 256) is not None
    assert q.host.path(384, 1248) is None
    assert dsin.manifest["codecs"]["side_info"]["shapes"] == {"edge": "dynamic", "host": "fixed"}
    assert_parity_contract(q.parity)


def test_report_summary(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    report = export_bundle(
        [checkpoint(tmp_path_factory, "balle_lo")],
        tmp_path / "b",
        sample_images=[sample_pair(seed=1)],
        sizes=[(64, 128), (96, 160)],
        progress=False,
    )
    assert report.bundle_id == load_bundle(tmp_path / "b").id
    assert len(report.parity) == 2
    assert all(r.symbol_mismatches == r.boundary_flips <= flip_budget(r.symbols) for r in report.parity)
    assert {r.size for r in report.parity} == {(64, 128), (96, 160)}
    text = report.summary()
    assert "intra: balle2017, 1 qualities" in text and "96x160" in text and report.bundle_id[:16] in text


def test_graphs_carry_no_machine_specific_metadata(stereo: Path) -> None:
    """The exporter's debug metadata (stack traces with absolute paths, a range-constraint dict in
    per-process hash order) is dropped: the same checkpoint gives the same bundle id anywhere."""
    import onnx

    for path in sorted(stereo.rglob("*.onnx")):
        model = onnx.load(path)
        assert not model.metadata_props and not model.graph.metadata_props
        assert not any(node.metadata_props for node in model.graph.node), path
        assert str(Path(__file__).parents[1]).encode() not in path.read_bytes()


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

    refined = _copy(stereo, tmp_path / "refined")  # a graph part the intra codec has no use for, re-hashed
    manifest = json.loads((refined / MANIFEST).read_text())
    graphs = manifest["codecs"]["intra"]["qualities"][0]["graphs"]
    graphs["refine"] = graphs["host"]
    write_manifest(refined, {k: v for k, v in manifest.items() if k not in ("files", "schema", "manifest_sha256")})
    with pytest.raises(
        BundleError, match=r"graphs \['refine'\] this stereodsc does not run \(intra codecs have edge, host\)"
    ):
        load_bundle(refined)

    bundle = load_bundle(stereo, expected_id=load_bundle(stereo).id[:16])
    with pytest.raises(BundleError, match="expected 0000"):
        load_bundle(stereo, expected_id="0000")
    assert bundle.id_bytes == bytes.fromhex(bundle.id[:16])


def test_export_refuses_mixed_or_repeated_checkpoints(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    other = tmp_path / "wide.pt"
    write_checkpoint(other, "balle2017", {"N": 16}, 0.05, 0)
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
    write_checkpoint(path, "ndic_cam", {**CAM_TINY, "patch_mode": "grid"}, 0.01, 0)
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


def test_a_kernel_beyond_float16_stays_float32(tmp_path: Path) -> None:
    """float16 tops out at 65504: a larger weight would become inf, so its tensor stays float32, in the
    model the parity check uses and in the stored graph, with no overflow warning on the way."""
    import warnings

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from stereodsc.export.graphs import round_weights_to_half, store_weights_half
    from stereodsc.models import build_model

    model = build_model("balle2017", N=8, M=8)
    big, small = [m for m in model.g_a if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 1024][:2]
    with torch.no_grad():
        big.weight[0, 0, 0, 0] = 1e6
        small.weight[0, 0, 0, 0] = 0.1
    values = np.arange(2048, dtype=np.float32) / 1024  # float16 holds these exactly
    wide = values.copy()
    wide[0] = 1e6
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "g",
        [],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2048])],
        [numpy_helper.from_array(values, "a"), numpy_helper.from_array(wide, "b")],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflowing cast warns: it must not happen
        round_weights_to_half(model)
        converted = store_weights_half(path)
    assert float(big.weight.detach()[0, 0, 0, 0]) == 1e6
    assert float(small.weight.detach()[0, 0, 0, 0]) == float(np.float16(0.1))
    assert converted == 1
    stored = {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert stored == {"a__f16": onnx.TensorProto.FLOAT16, "b": onnx.TensorProto.FLOAT}


def test_qualities_of_one_codec_may_differ_in_host_only_and_loss_only_options(tmp_path: Path) -> None:
    """DSIN's SI-Net width and residual form, and a host post-filter, shape only the host graph: one
    codec may ship a residual width-8 SI-Net at one quality and a width-12 one at another (the native
    bundle does), or a wider decoder with a post-filter at one quality only. How the loss weighed
    x_dec against x_hat (si_weight: 1.0 for a Wyner-Ziv camera encoder) shapes no graph at all."""
    wide, residual = tmp_path / "wide.pt", tmp_path / "residual.pt"
    write_checkpoint(wide, "dsin", {"max_row_offset": 8, "si_width": 12}, 0.002, 5)
    residual_options = {"max_row_offset": 8, "si_width": 8, "si_residual": True, "si_weight": 1.0}
    write_checkpoint(residual, "dsin", residual_options, 0.01, 6)
    out = tmp_path / "b"
    export_bundle([residual, wide], out, sample_images=[sample_pair()], sizes=SMALL_SIZES, progress=False)
    codec = json.loads((out / MANIFEST).read_text())["codecs"]["side_info"]
    assert "si_width" not in codec["model_config"] and codec["model_config"]["max_row_offset"] == 8
    assert "si_weight" not in codec["model_config"]
    assert [q["host_options"] for q in codec["qualities"]] == [  # ordered by lambda; every graph parity-checked
        {"post_width": 0, "si_residual": False, "si_width": 12},
        {"post_width": 0, "si_residual": True, "si_width": 8},
    ]
    assert [q["loss_options"] for q in codec["qualities"]] == [{"si_weight": 0.7}, {"si_weight": 1.0}]
    assert all(q["parity"] for q in codec["qualities"])
    narrow, wide_decoder = tmp_path / "narrow.pt", tmp_path / "wide_decoder.pt"
    minimal = {"encoder": "minimal", "edge_channels": [8, 8, 8], "hyper_channels": 8}
    write_checkpoint(narrow, "balle2018", minimal, 0.002, 8)
    write_checkpoint(wide_decoder, "balle2018", {**minimal, "N": 16, "post_width": 8}, 0.01, 9)  # more host on top
    export_bundle(
        [narrow, wide_decoder], tmp_path / "d", sample_images=[sample_pair()], sizes=SMALL_SIZES, progress=False
    )
    codec = json.loads((tmp_path / "d" / MANIFEST).read_text())["codecs"]["intra"]
    assert "N" not in codec["model_config"]
    assert [q["host_options"] for q in codec["qualities"]] == [{"N": 8, "post_width": 0}, {"N": 16, "post_width": 8}]
    assert all(q["parity"] for q in codec["qualities"])
    other = tmp_path / "other.pt"
    write_checkpoint(other, "dsin", {"max_row_offset": 4}, 0.05, 7)  # the band the edge frames rely on
    with pytest.raises(ConfigError, match=r"share one model config.*\['max_row_offset'\]"):
        export_bundle([wide, other], tmp_path / "c", sample_images=[], progress=False)


def test_a_codec_trained_on_a_frozen_codec_shares_its_files(tmp_path: Path) -> None:
    """DSIN fine-tuned with [train] frozen on the intra codec's encoder, entropy model and decoder
    exports the same camera graph, scale path and host graph (its host side is split: host graph ->
    x_dec, refine graph -> x_hat): the bundle stores them once and the quality adds only its refine
    graph; both codecs still run (the export parity-checks every quality through the manifest's paths),
    and a dependent frame whose side image never came decodes exactly as the intra frame it is."""
    from stereodsc.bundles import describe
    from stereodsc.codec.decoder import HostDecoder
    from stereodsc.codec.encoder import EdgeEncoder
    from stereodsc.train.checkpoint import load_checkpoint, save_checkpoint

    minimal = {"encoder": "minimal", "edge_channels": [8, 8, 8], "hyper_channels": 8}
    intra, dsin = tmp_path / "intra.pt", tmp_path / "dsin.pt"
    write_checkpoint(intra, "balle2018", minimal, 0.01, 10)
    options = {**minimal, "backbone": "balle2018", "search": "band", "max_row_offset": 2, "reencode_side": False}
    write_checkpoint(dsin, "dsin", options, 0.01, 11)
    shared = load_checkpoint(intra)["model_state"]
    ckpt = load_checkpoint(dsin)
    ckpt["model_state"] = {k: shared.get(k, v) for k, v in ckpt["model_state"].items()}
    save_checkpoint(dsin, ckpt)
    out = tmp_path / "b"
    export_bundle([intra, dsin], out, sample_images=[sample_pair()], sizes=SMALL_SIZES, progress=False)
    codecs = json.loads((out / MANIFEST).read_text())["codecs"]
    ours, theirs = codecs["side_info"]["qualities"][0], codecs["intra"]["qualities"][0]
    assert ours["graphs"]["edge"] == theirs["graphs"]["edge"]
    assert ours["scale_paths"]["y"]["file"] == theirs["scale_paths"]["y"]["file"]
    assert ours["graphs"]["host"] == theirs["graphs"]["host"] and ours["parity"] and theirs["parity"]
    assert set(ours["graphs"]) == {"edge", "host", "refine"} and set(theirs["graphs"]) == {"edge", "host"}
    assert set(codecs["side_info"]["io"]["host"]["inputs"]) == {"y"}
    assert set(codecs["side_info"]["io"]["refine"]["inputs"]) == {"x_dec", "side"}
    assert sorted(p.name for p in (out / "side_info" / "q0").iterdir()) == ["refine.onnx"]
    bundle = load_bundle(out)  # every file the manifest names is there, hashes verified
    assert "camera graph shared with intra q0 (its host graph too)" in describe(out)  # stereodsc models says so
    image, side = sample_pair()
    host = HostDecoder(bundle)
    frames = {}
    for role in ("intra", "side_info"):
        encoder = EdgeEncoder(bundle, role, 0)
        frames[role] = encoder.frame(encoder.encode(image), rig_id=1, camera_id=1, seq=0, t_capture_ns=0)
    assert frames["intra"].segments == frames["side_info"].segments
    alone = host.decode(frames["side_info"])
    assert np.array_equal(alone.image, host.decode(frames["intra"]).image) and not alone.side_info_used
    with_side = host.decode(frames["side_info"], side)
    assert with_side.side_info_used and not np.array_equal(with_side.image, alone.image)
