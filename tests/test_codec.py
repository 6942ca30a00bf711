"""Edge encoder -> wire -> host decoder on exported bundles: symbols, images, sizes, refusals, files.

Bundles and checkpoints come from tiny_models.py's session cache (exported once per session).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stereodsc.bundle import Bundle, load_bundle
from stereodsc.edge_encoder.encoder import EdgeEncoder, encode_file
from stereodsc.entropy import ideal_bits
from stereodsc.errors import BitstreamError, ConfigError, DataError
from stereodsc.eval.preprocess import pad_to_multiple
from stereodsc.export.graphs import round_weights_to_half, to_float, to_uint8
from stereodsc.host_decoder.decoder import HostDecoder, SideImageError, UndecodableFrameError, decode_file
from stereodsc.images import read_rgb, write_rgb
from stereodsc.models.base import CompressionModel, bits
from stereodsc.train.checkpoint import model_from_checkpoint
from stereodsc.wire import BundleMismatchError, Frame, Role, unpack
from tiny_models import assert_symbols_agree, bundle_dir, checkpoint, sample_pair

# (bundle, role, quality, checkpoint): every model at every quality it was exported at.
CASES = [
    ("stereo", "intra", 0, "balle_lo"),
    ("stereo", "intra", 1, "balle_hi"),
    ("stereo", "side_info", 0, "ndic_lo"),
    ("stereo", "side_info", 1, "ndic_hi"),
    ("cam", "side_info", 0, "cam"),
    ("dsin", "side_info", 0, "dsin"),
    ("hyper", "intra", 0, "balle2018"),  # scale hyperprior: z, then y with integer-scale-net rows
    ("hyper", "side_info", 0, "ndic_hyper"),
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(bundle_dir(tmp_path_factory, "stereo"))


def roundtrip(
    bundle: Bundle, role: str, quality: int, x: np.ndarray, side: np.ndarray | None
) -> tuple[EdgeEncoder, Frame, np.ndarray, np.ndarray, bool]:
    """Encode, pack, unpack, decode; return (encoder, frame, coded symbols, decoded image, SI used)."""
    encoder = EdgeEncoder(bundle, role, quality)
    encoded = encoder.encode(x, estimate=True)
    packed = encoder.frame(encoded, rig_id=1, camera_id=2, seq=7, t_capture_ns=123).pack()
    frame = unpack(packed, expected_bundle=bundle.id_bytes)
    decoded = HostDecoder(bundle).decode(frame, side)
    assert np.array_equal(decoded.symbols, encoded.symbols)
    assert decoded.image.shape == x.shape and decoded.image.dtype == np.uint8
    return encoder, frame, encoded.symbols, decoded.image, decoded.side_info_used


@pytest.mark.parametrize(("bundle_name", "role", "quality", "ckpt"), CASES)
def test_every_model_and_quality_roundtrips_exactly(
    tmp_path_factory: pytest.TempPathFactory, bundle_name: str, role: str, quality: int, ckpt: str
) -> None:
    bundle = load_bundle(bundle_dir(tmp_path_factory, bundle_name))
    model, _ = model_from_checkpoint(checkpoint(tmp_path_factory, ckpt))
    assert isinstance(model, CompressionModel)
    round_weights_to_half(model)  # as the export stored them
    x, side = sample_pair(120, 250, seed=3)  # pads to 128x256 (stride 16, and 64 with a hyperprior)
    codec = bundle.codec(role)
    uses_side = codec.uses_side_info
    encoder, frame, symbols, image, used = roundtrip(bundle, role, quality, x, side if uses_side else None)
    assert used == uses_side
    assert frame.role == (Role.DEPENDENT if uses_side else Role.REFERENCE) and frame.quality == quality
    encoded = encoder.encode(x, estimate=True)
    assert list(encoded.latents) == [lat.name for lat in codec.latents] and encoded.segments == frame.segments

    with torch.no_grad():
        xt = to_float(torch.from_numpy(pad_to_multiple(x, codec.stride)[0])[None])
        yt = to_float(torch.from_numpy(pad_to_multiple(side, codec.stride)[0])[None]) if uses_side else None
        reference = model.analysis(xt)
        for name, coded in encoded.latents.items():  # y, and a hyperprior's z: the model's symbols
            assert_symbols_agree(coded, reference[name][0].to(torch.int32).numpy(), name)
        y = torch.from_numpy(encoded.symbols)[None].to(torch.float32)  # what the host decodes
        expected = to_uint8(model.synthesis({"y": y}, yt))[0].numpy()[:120, :250]
        likelihood_bits = float(bits(model(xt, yt)["likelihoods"].values()))
    assert np.abs(image.astype(int) - expected).max() <= 1
    assert np.abs(symbols).max() > 0  # the tiny models code non-trivial symbols

    payload_bits = 8 * frame.payload_size
    exact = 0.0
    for latent in codec.latents:  # a hyperprior's y rows come from the integer scale net on z
        rows = encoder.coding.rows(latent, encoded.latents[latent.name].shape, encoded.latents)
        exact += ideal_bits(encoded.latents[latent.name], rows, encoder.tables[latent.name])
    assert exact == encoded.estimated_bits
    assert abs(payload_bits - exact) <= 0.001 * exact + 64 * len(codec.latents)
    if len(codec.latents) == 1:  # the tiny hyperpriors' y ignores their scales: outliers hit the 1e-9 floor
        assert payload_bits == pytest.approx(likelihood_bits, rel=0.05, abs=64)


def test_dynamic_sizes_one_bundle(stereo: Bundle) -> None:
    for h, w in ((128, 256), (375, 1242)):  # the paper size, and KITTI's native frame (pads to 384x1248)
        x, side = sample_pair(h, w, seed=h)
        _, frame, symbols, image, _ = roundtrip(stereo, "intra", 1, x, None)
        assert (frame.height, frame.width) == (h, w) and symbols.shape == (8, -(-h // 16), -(-w // 16))
        _, _, _, image, used = roundtrip(stereo, "side_info", 0, x, side)
        assert used and image.shape == (h, w, 3)


def test_dependent_without_side_uses_grey(stereo: Bundle) -> None:
    x, _ = sample_pair()
    *_, image, used = roundtrip(stereo, "side_info", 1, x, None)
    assert not used and image.shape == x.shape


def test_frames_from_another_bundle_are_refused(stereo: Bundle, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = load_bundle(bundle_dir(tmp_path_factory, "cam"))
    encoder = EdgeEncoder(other, "side_info", 0)
    x, side = sample_pair()
    frame = encoder.frame(encoder.encode(x), rig_id=0, camera_id=1, seq=0, t_capture_ns=0)
    with pytest.raises(BundleMismatchError, match="deploy the same bundle"):
        HostDecoder(stereo).decode(frame, side)


def test_bad_side_images_are_refused(stereo: Bundle) -> None:
    x, side = sample_pair()
    encoder = EdgeEncoder(stereo, "side_info", 0)
    frame = encoder.frame(encoder.encode(x), rig_id=0, camera_id=1, seq=0, t_capture_ns=0)
    decoder = HostDecoder(stereo)
    for bad, match in (
        (side[:, :64], "side image is 64x64, the frame is 64x128"),
        (side.astype(np.float32), "uint8"),
        (side[..., 0], "HxWx3"),
    ):
        with pytest.raises(DataError, match=match) as info:
            decoder.decode(frame, bad)
        assert isinstance(info.value, SideImageError) and isinstance(info.value, BitstreamError)
    reference = EdgeEncoder(stereo, "intra", 0)
    ref_frame = reference.frame(reference.encode(side), rig_id=0, camera_id=0, seq=0, t_capture_ns=0)
    with pytest.raises(ConfigError, match="decode without side information"):
        decoder.decode(ref_frame, side)


def test_bad_input_images_are_refused(stereo: Bundle) -> None:
    encoder = EdgeEncoder(stereo, "intra", 0, max_pixels=128 * 256)
    x, _ = sample_pair()
    for bad, match in (
        (x.astype(np.float64) / 255, "must be uint8"),
        (x[..., :2], "HxWx3"),
        (x[..., 0], "HxWx3"),
        (np.zeros((0, 16, 3), np.uint8), "outside 1"),
        (np.zeros((256, 256, 3), np.uint8), "downscale"),
        (x.tolist(), "numpy array"),
    ):
        with pytest.raises(DataError, match=match):
            encoder.encode(bad)


def test_undecodable_frames_raise_bitstream_errors(stereo: Bundle, tmp_path_factory: pytest.TempPathFactory) -> None:
    x, side = sample_pair()
    encoder = EdgeEncoder(stereo, "side_info", 1)
    frame = encoder.frame(encoder.encode(x), rig_id=0, camera_id=1, seq=0, t_capture_ns=0)
    decoder = HostDecoder(stereo, max_pixels=1024 * 1024)
    payload = frame.segments[0]
    variants = {
        "corrupt": Frame(**{**frame.__dict__, "segments": (bytes([payload[0] ^ 0xFF]) + payload[1:],)}),
        "truncated": Frame(**{**frame.__dict__, "segments": (payload[: len(payload) // 2],)}),
        "wrong size": Frame(**{**frame.__dict__, "height": 128}),
        "huge": Frame(**{**frame.__dict__, "height": 4096, "width": 4096}),
        "quality": Frame(**{**frame.__dict__, "quality": 5}),
        "segments": Frame(**{**frame.__dict__, "segments": (payload, payload)}),
    }
    for name, bad in variants.items():
        with pytest.raises(BitstreamError):
            decoder.decode(bad, None if name == "wrong size" else side)
    with pytest.raises(UndecodableFrameError, match="quality 5 is not in the bundle"):
        decoder.decode(variants["quality"], side)
    dsin = load_bundle(bundle_dir(tmp_path_factory, "dsin"))
    enc = EdgeEncoder(dsin, "side_info", 0)
    x, side = sample_pair(96, 160)
    odd = enc.frame(enc.encode(x), rig_id=0, camera_id=1, seq=0, t_capture_ns=0)
    with pytest.raises(UndecodableFrameError, match="runs at only 128x256, 64x128"):
        HostDecoder(dsin).decode(odd, side)


def test_encode_file_decode_file(stereo: Bundle, tmp_path: Path) -> None:
    x, side = sample_pair(64, 120, seed=9)
    write_rgb(tmp_path / "right.png", x)
    write_rgb(tmp_path / "left.png", side)
    line = encode_file(stereo.path, 1, tmp_path / "left.png", tmp_path / "left.sdf", role="intra")
    assert "balle2017 intra q1" in line and "bpp" in line
    line = decode_file(tmp_path / "left.sdf", stereo.path, None, tmp_path / "left_dec.png")
    assert "side information none" in line
    left_dec = read_rgb(tmp_path / "left_dec.png")
    assert left_dec.shape == side.shape

    encode_file(stereo.path, 0, tmp_path / "right.png", tmp_path / "right.sdf", role="side_info")
    decode_file(tmp_path / "right.sdf", stereo.path, tmp_path / "left_dec.png", tmp_path / "right_dec.png")
    frame = unpack((tmp_path / "right.sdf").read_bytes())
    expected = HostDecoder(stereo).decode(frame, left_dec).image
    assert np.array_equal(read_rgb(tmp_path / "right_dec.png"), expected)

    with pytest.raises(ConfigError, match="decodes with side information: pass --side"):
        decode_file(tmp_path / "right.sdf", stereo.path, None, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="uses no side information: drop --side"):
        decode_file(tmp_path / "left.sdf", stereo.path, tmp_path / "left.png", tmp_path / "x.png")
    with pytest.raises(ConfigError, match="pass --role"):
        encode_file(stereo.path, 0, tmp_path / "left.png", tmp_path / "x.sdf")


def test_files_with_a_checkpoint_instead_of_a_bundle(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A checkpoint is exported on the fly, deterministically: encode and decode agree on the id."""
    ckpt = checkpoint(tmp_path_factory, "ndic_lo")
    x, side = sample_pair(64, 128, seed=4)
    write_rgb(tmp_path / "x.png", x)
    write_rgb(tmp_path / "side.png", side)
    encode_file(ckpt, 0, tmp_path / "x.png", tmp_path / "x.sdf")
    line = decode_file(tmp_path / "x.sdf", ckpt, tmp_path / "side.png", tmp_path / "out.png")
    assert "ndic side_info q0" in line and "side information used" in line
    model, _ = model_from_checkpoint(ckpt)
    assert isinstance(model, CompressionModel)
    with torch.no_grad():
        y = model.analysis(to_float(torch.from_numpy(x)[None]))["y"]
        expected = to_uint8(model.synthesis({"y": y}, to_float(torch.from_numpy(side)[None])))[0].numpy()
    assert np.abs(read_rgb(tmp_path / "out.png").astype(int) - expected).max() <= 1


def test_codecs_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import stereodsc.edge_encoder, stereodsc.edge_encoder.encoder, stereodsc.host_decoder.decoder\n"
        "import stereodsc.bundle\n"
        "assert sys.modules['torch'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
