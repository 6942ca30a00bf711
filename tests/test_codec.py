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
from stereodsc.cli import main
from stereodsc.codec.decoder import HostDecoder, SideImageError, UndecodableFrameError
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.codec.geometry import pad
from stereodsc.entropy import ideal_bits
from stereodsc.errors import BitstreamError, ConfigError, DataError
from stereodsc.export.graphs import round_weights_to_half, to_float, to_uint8
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
        xt = to_float(torch.from_numpy(pad(x, codec.stride))[None])
        yt = to_float(torch.from_numpy(pad(side, codec.stride))[None]) if uses_side else None
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


def test_a_bounded_decoder_keeps_few_graphs_open_and_decodes_the_same(stereo: Bundle) -> None:
    """max_open_graphs closes the least recently used session (each holds an arena of ~0.5 GB at
    native size) and reopens it when needed: the images are those of a decoder that keeps all."""
    x, side = sample_pair(seed=3)
    frames = []
    for role, quality in (("intra", 0), ("intra", 1), ("side_info", 0), ("intra", 0)):
        encoder = EdgeEncoder(stereo, role, quality)
        frame = encoder.frame(encoder.encode(x), rig_id=1, camera_id=2, seq=1, t_capture_ns=0)
        frames.append((frame, side if role == "side_info" else None))
    bounded, unbounded = HostDecoder(stereo, max_open_graphs=1), HostDecoder(stereo)
    for frame, s in frames:
        assert np.array_equal(bounded.decode(frame, s).image, unbounded.decode(frame, s).image)
        assert len(bounded._sessions._sessions) == 1
    assert len(unbounded._sessions._sessions) == 3
    with pytest.raises(ValueError, match="at least one"):
        HostDecoder(stereo, max_open_graphs=0)


def test_dependent_without_side_uses_grey(stereo: Bundle) -> None:
    x, _ = sample_pair()
    *_, image, used = roundtrip(stereo, "side_info", 1, x, None)
    assert not used and image.shape == x.shape


def test_frames_from_another_bundle_are_refused(stereo: Bundle, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = load_bundle(bundle_dir(tmp_path_factory, "cam"))
    encoder = EdgeEncoder(other, "side_info", 0)
    x, side = sample_pair()
    frame = encoder.frame(encoder.encode(x), rig_id=0, camera_id=1, seq=0, t_capture_ns=0)
    with pytest.raises(BundleMismatchError, match=r"deploy the camera.s bundle on the host"):
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


def _cli(*args: object) -> int:
    return main([str(a) for a in args])


def test_encode_and_decode_commands(stereo: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`stereodsc encode` / `decode`: the frame file is what a camera sends; every mistake a user can
    make on the command line ends in one error line naming the fix (exit status 2), never a traceback."""
    x, side = sample_pair(64, 120, seed=9)
    write_rgb(tmp_path / "right.png", x)
    write_rgb(tmp_path / "left.png", side)
    assert _cli("encode", tmp_path / "left.png", "--model", stereo.path, "--quality", 1, "--codec", "intra",
                "-o", tmp_path / "left.sdf") == 0  # fmt: skip
    assert "balle2017 intra q1" in capsys.readouterr().out
    assert _cli("decode", tmp_path / "left.sdf", "--model", stereo.path, "-o", tmp_path / "left_dec.png") == 0
    assert "side information none" in capsys.readouterr().out
    left_dec = read_rgb(tmp_path / "left_dec.png")
    assert left_dec.shape == side.shape

    assert _cli("encode", tmp_path / "right.png", "--model", stereo.path, "--codec", "side_info",
                "-o", tmp_path / "right.sdf") == 0  # fmt: skip
    assert _cli("decode", tmp_path / "right.sdf", "--model", stereo.path, "--side", tmp_path / "left_dec.png",
                "-o", tmp_path / "right_dec.png") == 0  # fmt: skip
    frame = unpack((tmp_path / "right.sdf").read_bytes())
    assert np.array_equal(read_rgb(tmp_path / "right_dec.png"), HostDecoder(stereo).decode(frame, left_dec).image)
    capsys.readouterr()

    mistakes = {
        "decodes with side information: pass --side": ("decode", tmp_path / "right.sdf", "--model", stereo.path,
                                                        "-o", tmp_path / "x.png"),
        "uses no side information: drop --side": ("decode", tmp_path / "left.sdf", "--model", stereo.path,
                                                  "--side", tmp_path / "left.png", "-o", tmp_path / "x.png"),
        "pass --codec intra": ("encode", tmp_path / "left.png", "--model", stereo.path, "-o", tmp_path / "x.sdf"),
        "is a folder: name a file in it": ("encode", tmp_path / "left.png", "--model", stereo.path,
                                           "--codec", "intra", "-o", tmp_path),
        "write decoded images as .png": ("decode", tmp_path / "left.sdf", "--model", stereo.path,
                                         "-o", tmp_path / "x.jpg"),
        "does not ship with this install: pass --model": ("decode", tmp_path / "left.sdf", "-o", tmp_path / "x.png"),
        "neither a folder nor a shipped bundle": ("encode", tmp_path / "left.png", "--model", "nonesuch",
                                                  "-o", tmp_path / "x.sdf"),
    }  # fmt: skip
    for message, args in mistakes.items():
        assert _cli(*args) == 2, message
        assert message in capsys.readouterr().err


def test_encode_refuses_a_size_the_host_graph_cannot_decode(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DSIN's host graph runs at the sizes it was exported for: encoding another size is refused at
    the camera, with the sizes it can use, instead of failing later at the host."""
    dsin = bundle_dir(tmp_path_factory, "dsin")
    write_rgb(tmp_path / "x.png", sample_pair(96, 160)[0])
    assert _cli("encode", tmp_path / "x.png", "--model", dsin, "-o", tmp_path / "x.sdf") == 2
    err = capsys.readouterr().err
    assert "host graph" in err and "128x256" in err and "96x160" in err and not (tmp_path / "x.sdf").exists()
    encoder = EdgeEncoder(load_bundle(dsin), "side_info", 0)
    encoder.check_size((128, 256))
    with pytest.raises(DataError, match="re-export the bundle for this size"):
        encoder.warm_up((96, 160))


def test_files_with_a_checkpoint_instead_of_a_bundle(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A checkpoint is exported on the fly, deterministically: encode and decode agree on the id."""
    ckpt = checkpoint(tmp_path_factory, "ndic_lo")
    x, side = sample_pair(64, 128, seed=4)
    write_rgb(tmp_path / "x.png", x)
    write_rgb(tmp_path / "side.png", side)
    assert _cli("encode", tmp_path / "x.png", "--model", ckpt, "-o", tmp_path / "x.sdf") == 0
    assert _cli("decode", tmp_path / "x.sdf", "--model", ckpt, "--side", tmp_path / "side.png",
                "-o", tmp_path / "out.png") == 0  # fmt: skip
    model, _ = model_from_checkpoint(ckpt)
    assert isinstance(model, CompressionModel)
    with torch.no_grad():
        y = model.analysis(to_float(torch.from_numpy(x)[None]))["y"]
        expected = to_uint8(model.synthesis({"y": y}, to_float(torch.from_numpy(side)[None])))[0].numpy()
    assert np.abs(read_rgb(tmp_path / "out.png").astype(int) - expected).max() <= 1


def test_a_checkpoint_on_a_torch_free_board_is_refused_with_the_fix(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import importlib.util; importlib.util.find_spec = lambda name, *a: None if name == 'torch' else 1\n"
        "from stereodsc.cli import main\n"
        f"sys.exit(main(['encode', {str(tmp_path / 'x.png')!r}, '--model', {str(tmp_path / 'm.pt')!r}, '-o', 'f']))\n"
    )
    write_rgb(tmp_path / "x.png", sample_pair()[0])
    (tmp_path / "m.pt").write_bytes(b"not needed: refused before it is read")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "needs torch" in done.stderr and "Traceback" not in done.stderr


def test_codecs_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import stereodsc.edge_encoder, stereodsc.codec.encoder, stereodsc.codec.decoder\n"
        "import stereodsc.bundle\n"
        "assert sys.modules['torch'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
