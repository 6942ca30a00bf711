"""Scale-hyperprior bundles: z and y tables + the integer scale net, and cross-backend determinism.

The bundle ("hyper" in tiny_models.py: balle2018 intra + ndic(backbone="balle2018") side_info,
N = M = 8) is exported once per session. The codec sends z (one table row per channel), then y,
whose rows the bundle's `IntegerScaleNet` computes from the integer z on both ends; the float h_s
never chooses a CDF at run time (DESIGN decision 2). The round trip of both models against their
torch symbols is in test_codec.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from stereodsc import entropy
from stereodsc.bundle import MANIFEST, SCHEMA, SELF_DIGEST, Bundle, load_bundle, write_manifest
from stereodsc.codec.coding import load_coding
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.entropy import IntegerScaleNet
from stereodsc.errors import BitstreamError, BundleError
from stereodsc.export import open_model
from stereodsc.export.graphs import round_weights_to_half, to_float
from stereodsc.export.parity import fit
from stereodsc.export.scale_path_export import float_indexes, scale_path_from_torch
from stereodsc.models import CompressionModel
from stereodsc.models.priors import ScaleHyperprior
from stereodsc.train.checkpoint import model_from_checkpoint
from stereodsc.wire import Frame, unpack
from tiny_models import (
    BUNDLES,
    assert_parity_contract,
    assert_symbols_agree,
    bundle_dir,
    checkpoint,
    sample_pair,
)

ROLES = {"intra": "balle2018", "side_info": "ndic_hyper"}  # role -> tiny checkpoint


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hyper(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(bundle_dir(tmp_path_factory, "hyper"))


def _model(factory: pytest.TempPathFactory, role: str) -> CompressionModel:
    model, _ = model_from_checkpoint(checkpoint(factory, ROLES[role]))
    assert isinstance(model, CompressionModel) and isinstance(model.prior, ScaleHyperprior)
    round_weights_to_half(model)  # as the export stored them
    return model.eval()


def _torch_latents(model: CompressionModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """z and y symbols of a torch run (``torch.round`` inside `analysis`), int32 [C, h, w]."""
    with torch.no_grad():
        xt = to_float(torch.from_numpy(x)[None]).to(next(model.parameters()).dtype)
        return {name: t[0].to(torch.int32).numpy() for name, t in model.analysis(xt).items()}


def _plus_one_ulp(model: CompressionModel) -> CompressionModel:
    """The same model with every float32 weight moved one ulp up: what another backend computes with."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(torch.from_numpy(np.nextafter(p.numpy(), np.float32(np.inf))))
    return out


def test_bundle_ships_z_and_y_tables_and_the_integer_scale_net(
    hyper: Bundle, tmp_path_factory: pytest.TempPathFactory, record_property: Callable[[str, object], None]
) -> None:
    m = hyper.manifest
    sizes = BUNDLES["hyper"][1]
    for role, model_name in (("intra", "balle2018"), ("side_info", "ndic")):
        codec, raw = hyper.codec(role), m["codecs"][role]
        assert codec.model == model_name and codec.stride == 64 and codec.latent_channels == 8
        assert raw["latents"] == [
            {"name": "z", "channels": 8, "stride": 64},
            {"name": "y", "channels": 8, "stride": 16, "conditioned_on": "z"},
        ]
        assert raw["io"]["edge"]["outputs"]["z"]["shape"] == [1, 8, "H/64", "W/64"]
        assert raw["io"]["edge"]["outputs"]["y"]["shape"] == [1, 8, "H/16", "W/16"]
        assert set(raw["io"]["host"]["inputs"]) == ({"y", "side"} if codec.uses_side_info else {"y"})
        assert raw["shapes"] == {"edge": "dynamic", "host": "dynamic"}

        q = codec.quality(0)
        rawq = raw["qualities"][0]
        assert rawq["tables"]["z"] == f"{role}/q0/tables_z.npz"
        # y's Gaussian tables are the same in every codec and quality: stored once, where first written
        assert rawq["tables"]["y"] == "intra/q0/tables.npz" and rawq["tables"]["y"] in m["files"]
        entry = rawq["scale_paths"]["y"]
        assert entry["file"] == f"{role}/q0/scale_path.npz" and entry["file"] in m["files"]
        assert entry["calibration"] == {"latents": len(sizes), "source": "export sample images"}
        coding = load_coding(codec, q)
        net, y_tables = coding.scale_nets["y"], coding.tables["y"]
        assert coding.tables["z"].num_rows == 8 and y_tables.num_rows == net.levels == 64
        # One row per scale level, each coding -c_k..c_k (+ escape): 3 symbols at 0.11, 3131 at 256.
        assert y_tables.cdf_length[0] == 3 + 2 and y_tables.cdf_length[-1] == 3131 + 2
        assert y_tables.offset[0] == -1 and y_tables.offset[-1] == -1565
        size = (hyper.path / rawq["tables"]["y"]).stat().st_size
        record_property(f"{role}_y_tables_npz_bytes", size)
        assert 64 * 3133 * 4 < size < 820_000  # int32 [64 levels, 3131 symbols + 2]: ~0.8 MB a quality

        # Parity: z and y symbols vs torch, and the integer scale path vs the float h_s.
        parity = q.parity
        assert_parity_contract(parity)
        assert parity is not None
        assert set(parity["latents"]) == {"z", "y"} and parity["latents"]["z"]["symbols"] > 0
        scale = parity["scale_path"]
        assert scale["elements"] == parity["latents"]["y"]["symbols"]
        assert scale["index_agreement"] >= 0.99 and abs(scale["rate_increase"]) <= 1e-3
        record_property(f"{role}_scale_path", scale)

        # The shipped net is what the export recipe gives from the checkpoint and the sample's z's.
        model = _model(tmp_path_factory, role)
        x_img = sample_pair()[0]
        zs = [_torch_latents(model, fit(x_img, s, 64))["z"] for s in sizes]
        assert isinstance(model.prior, ScaleHyperprior)
        assert scale_path_from_torch(model.prior, calibration_z=zs).sha256 == net.sha256


@pytest.mark.parametrize("role", ["intra", "side_info"])
def test_onnxruntime_edge_and_torch_host_decode_identical_symbols(
    hyper: Bundle,
    tmp_path_factory: pytest.TempPathFactory,
    role: str,
    record_property: Callable[[str, object], None],
) -> None:
    """Encode with one backend, decode with another, both ways; every decode gives identical symbols.

    Edge = the exported graph on onnxruntime; hosts = torch fp32, torch fp64 and torch with every
    weight one ulp off, each computing its own z with ``torch.round``. The y rows come from the
    integer net on that integer z, so they are the edge's rows. Then the other way: a torch edge
    (one ulp off) encodes, the onnxruntime host decodes.
    """
    codec = hyper.codec(role)
    z_latent, y_latent = codec.latents
    x, side = sample_pair(128, 256, seed=11)
    encoder = EdgeEncoder(hyper, role, 0)
    encoded = encoder.encode(x)
    frame = unpack(encoder.frame(encoded, rig_id=0, camera_id=1, seq=0, t_capture_ns=0).pack())
    coding = encoder.coding
    net_on_host = IntegerScaleNet.from_npz_bytes(codec.quality(0).scale_paths["y"].read_bytes())

    model = _model(tmp_path_factory, role)
    backends = {"torch fp32": model, "torch fp64": copy.deepcopy(model).double(), "torch +1 ulp": _plus_one_ulp(model)}
    z_shape = encoded.latents["z"].shape
    z_decoded = entropy.decode(frame.segments[0], coding.rows(z_latent, z_shape, {}), coding.tables["z"])
    assert np.array_equal(z_decoded, encoded.latents["z"])
    rows = net_on_host.indexes(z_decoded)  # the host's rows: integers from the decoded z, no float
    assert np.array_equal(rows, coding.rows(y_latent, encoded.symbols.shape, {"z": encoded.latents["z"]}))
    assert np.array_equal(entropy.decode(frame.segments[1], rows, coding.tables["y"]), encoded.symbols)
    for name, backend in backends.items():  # a float backend's own z and y: the same up to boundary flips
        latents = _torch_latents(backend, x)
        assert_symbols_agree(latents["z"], z_decoded, name)
        assert_symbols_agree(latents["y"], encoded.symbols, name)

    # What the integer net replaces: the float h_s of two backends (fp32 vs one ulp off). Its rows can
    # differ on a scale that sits on a table boundary (test_scale_path builds one); here, recorded.
    assert isinstance(model.prior, ScaleHyperprior)
    perturbed = backends["torch +1 ulp"].prior
    assert isinstance(perturbed, ScaleHyperprior)
    flips = int((float_indexes(model.prior, z_decoded) != float_indexes(perturbed, z_decoded)).sum())
    record_property("float_h_s_row_flips_fp32_vs_1ulp", flips)

    # The other way round: a torch edge one ulp off codes with the bundle's integers; onnxruntime host.
    latents = _torch_latents(backends["torch +1 ulp"], x)
    segments = []
    for latent in codec.latents:
        rows = coding.rows(latent, latents[latent.name].shape, latents)
        segments.append(entropy.encode(latents[latent.name], rows, coding.tables[latent.name]))
    torch_frame = Frame(**{**frame.__dict__, "segments": tuple(segments)})
    decoded = HostDecoder(hyper).decode(torch_frame, side if codec.uses_side_info else None)
    for name in ("z", "y"):
        assert np.array_equal(decoded.latents[name], latents[name]), name


def test_damaged_hyperprior_frames_raise_bitstream_errors(hyper: Bundle) -> None:
    x, side = sample_pair(seed=2)
    encoder = EdgeEncoder(hyper, "side_info", 0)
    frame = encoder.frame(encoder.encode(x), rig_id=0, camera_id=1, seq=0, t_capture_ns=0)
    z, y = frame.segments
    decoder = HostDecoder(hyper)
    assert np.array_equal(decoder.decode(frame, side).symbols, encoder.encode(x).symbols)
    for segments in (
        (bytes([z[0] ^ 0x40]) + z[1:], y),  # another z: other rows, y no longer decodes
        (z[:-1], y),
        (z, y[: len(y) // 2]),
        (y, z),
        (z,),
    ):
        with pytest.raises(BitstreamError):
            decoder.decode(Frame(**{**frame.__dict__, "segments": segments}), side)


def _rewrite(folder: Path, edit: Callable[[dict], None]) -> None:
    """Edit a bundle's manifest and re-sign it (as a re-export would), so only the content is wrong."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for key in ("files", "schema", SELF_DIGEST):
        manifest.pop(key)
    edit(manifest)
    write_manifest(folder, manifest)
    assert json.loads((folder / MANIFEST).read_text())["schema"] == SCHEMA


def test_inconsistent_hyperprior_bundles_are_refused(hyper: Bundle, tmp_path: Path) -> None:
    no_net = tmp_path / "no_net"
    shutil.copytree(hyper.path, no_net)
    _rewrite(no_net, lambda m: m["codecs"]["intra"]["qualities"][0].pop("scale_paths"))
    with pytest.raises(BundleError, match=r"intra quality 0 lacks \['scale_paths\[y\]'\]"):
        load_bundle(no_net)

    swapped = tmp_path / "swapped"
    shutil.copytree(hyper.path, swapped)

    def y_with_z_tables(m: dict) -> None:
        m["codecs"]["intra"]["qualities"][0]["tables"]["y"] = "intra/q0/tables_z.npz"

    _rewrite(swapped, y_with_z_tables)
    with pytest.raises(BundleError, match="the scale net picks among 64 rows, y's tables have 8"):
        EdgeEncoder(load_bundle(swapped), "intra", 0)

    orphan = tmp_path / "orphan"
    shutil.copytree(hyper.path, orphan)
    _rewrite(orphan, lambda m: m["codecs"]["intra"]["latents"][1].pop("conditioned_on"))
    with pytest.raises(BundleError, match="scale paths for \\['y'\\], which no latent is conditioned with"):
        load_bundle(orphan)


def test_checkpoint_exported_on_the_fly_without_samples(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`open_model` on a checkpoint (what encode/decode with a .pt do): no samples, so no parity, and
    the net's activation ranges come from the worst-case bound; frames still decode to torch's symbols."""
    x, _ = sample_pair(64, 120, seed=4)
    with open_model(checkpoint(tmp_path_factory, "balle2018"), x.shape[:2]) as bundle:
        q = bundle.manifest["codecs"]["intra"]["qualities"][0]
        assert q["parity"] is None
        assert q["scale_paths"]["y"]["calibration"] == {"latents": 0, "source": "worst-case bound"}
        encoder = EdgeEncoder(bundle, "intra", 0)
        encoded = encoder.encode(x)
        frame = unpack(encoder.frame(encoded, rig_id=0, camera_id=0, seq=0, t_capture_ns=0).pack())
        decoded = HostDecoder(bundle).decode(frame)
    assert len(frame.segments) == 2 and decoded.image.shape == x.shape
    model = _model(tmp_path_factory, "intra")
    for name, symbols in _torch_latents(model, fit(x, (64, 120), 64)).items():
        assert np.array_equal(decoded.latents[name], encoded.latents[name])  # the integer path: exact
        assert_symbols_agree(encoded.latents[name], symbols, name)


# --- golden: the integer path's arithmetic must not change under deployed bundles --------------------


def _golden_net() -> IntegerScaleNet:
    """A fixed integer net (N=4, M=6, 64 levels) drawn from numpy's stable PCG64 stream."""
    rng = np.random.default_rng(20240601)
    n, m = 4, 6
    w1, b1 = rng.integers(-3000, 3000, (n, n, 5, 5)).astype(np.int16), rng.integers(-(1 << 20), 1 << 20, n)
    w2, b2 = rng.integers(-3000, 3000, (n, n, 5, 5)).astype(np.int16), rng.integers(-(1 << 20), 1 << 20, n)
    w3, b3 = rng.integers(-3000, 3000, (m, n, 3, 3)).astype(np.int16), rng.integers(1 << 28, 1 << 30, m)
    k = np.arange(63)  # thresholds ~ (4..7) * 2**(16 + k // 4): log-spaced over the accumulator's range
    thresholds = np.sort(((4 + k % 4).astype(np.int64) << (16 + k // 4)) + rng.integers(0, 1 << 16, (m, 63)), axis=1)
    shifts = np.full(n, 6, dtype=np.int32), np.full(n, 9, dtype=np.int32)
    return IntegerScaleNet(w1, b1, shifts[0], w2, b2, shifts[1], w3, b3, thresholds)


GOLDEN_NET_SHA256 = "428a9bd8f08a8694a59d801e57c476d6b44cf3094cdb7a00137a21a5be06a833"
GOLDEN_ROWS_SHA256 = "c0e36796c2308e18432c63d284fcd56314008fd37dc83657ee0993cb8583a3bd"


def test_golden_integer_scale_rows() -> None:
    """Rows of a fixed net on a fixed z, pinned: a change here changes how every deployed bundle's y
    is decoded, so it needs a new scale-path format version, not a new golden."""
    net = _golden_net()
    z = np.random.default_rng(7).integers(-40, 41, (4, 5, 8)).astype(np.int32)
    z[0, 0, 0], z[1, 4, 7] = 2**31 - 1, -(2**31)  # the extremes stay exact too
    rows = net.indexes(z)
    assert rows.shape == (6, 20, 32) and len(np.unique(rows)) > 30  # rows spread over the table
    assert net.sha256 == GOLDEN_NET_SHA256
    assert hashlib.sha256(rows.astype("<i4").tobytes()).hexdigest() == GOLDEN_ROWS_SHA256
