"""The bundles that ship with the package: each loads (hashes verified), codes a sample pair bit-exactly,
and decodes at least at the quality the model card claims, so a broken or swapped file is caught."""

from __future__ import annotations

import numpy as np
import pytest

from stereodsc.bundle import LICENCE_FILE, load_bundle
from stereodsc.bundles import folder_bytes, shipped_bundles
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.eval.metrics import psnr
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.images import read_rgb
from stereodsc.sample import drive_path, native_drive_path

# Model card: bundle -> codec -> quality -> (payload bpp, PSNR dB), measured on a sample the package
# ships: the paper protocol (128x256) of the bundled drive's frame 0 for the paper-protocol bundles,
# the held-out native pair (375x1242) for the native ones (SAMPLE). Dependent cameras decode with the
# reference camera's decoded frame (the bundle's own intra codec, or the default bundle's, at the
# same quality), as on a rig.
NATIVE_CARD = {  # the held-out 375x1242 frame; λ 0.0003 / 0.002 / 0.005 / 0.012 / 0.025 / 0.05
    "intra": {
        0: (0.0459, 19.96),
        1: (0.1922, 23.38),
        2: (0.3635, 24.87),
        3: (0.5800, 25.58),
        4: (0.8272, 25.96),
        5: (1.0831, 26.19),
    },
    "side_info": {
        0: (0.0450, 20.81),
        1: (0.1811, 24.55),
        2: (0.3367, 26.09),
        3: (0.5417, 26.86),
        4: (0.7767, 27.31),
        5: (1.0221, 27.62),
    },
}
CARD = {
    "default": {
        "intra": {0: (0.0291, 19.87), 1: (0.0610, 21.85), 2: (0.1245, 23.28), 3: (0.2668, 25.09)},
        "side_info": {0: (0.0046, 19.21), 1: (0.0300, 21.22), 2: (0.0876, 22.74), 3: (0.2234, 24.91)},
    },
    "native": NATIVE_CARD,
}
SAMPLE = {"default": "paper", "native": "native"}
SHIPPED = shipped_bundles()
POINTS = [(name, role, q) for name, codecs in CARD.items() for role, qs in codecs.items() for q in qs]


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sample -> (left, right): the reference camera is the left one."""
    left, right = (read_rgb(kitti_frames(drive_path(), camera)[0][0]) for camera in ("left", "right"))
    native = tuple(read_rgb(kitti_frames(native_drive_path(), camera)[0][0]) for camera in ("left", "right"))
    return {"paper": (paper_protocol(left), paper_protocol(right)), "native": (native[0], native[1])}


def test_the_card_covers_exactly_what_ships() -> None:
    assert set(SHIPPED) == set(CARD) == set(SAMPLE)
    for name, folder in SHIPPED.items():
        bundle = load_bundle(folder)  # verify=True: every file against its sha256
        assert LICENCE_FILE in bundle.manifest["files"]  # the weights' terms travel with them, hashed
        assert "CC BY-NC-SA 3.0" in (folder / LICENCE_FILE).read_text()
        assert {role: len(c.qualities) for role, c in bundle.codecs.items()} == {
            role: len(qs) for role, qs in CARD[name].items()
        }


def test_the_shipped_bundles_stay_within_their_budget() -> None:
    """All shipped bundles together: 40 MB (10^6 bytes), what a package install is allowed to weigh."""
    total = sum(folder_bytes(folder) for folder in SHIPPED.values())
    assert total <= 40_000_000, f"shipped bundles weigh {total / 1e6:.2f} MB"


def test_each_native_quality_runs_one_camera_graph_in_either_role() -> None:
    """The native intra codec at each quality is the backbone of the DSIN trained jointly at it
    (scripts/intra_from_dsin.py): a camera board runs the same graph whatever its role, the bundle
    stores it once, and a dependent frame whose side image is missing decodes as the intra frame it is."""
    bundle = load_bundle(SHIPPED["native"], verify=False)
    for intra, dsin in zip(bundle.codecs["intra"].qualities, bundle.codecs["side_info"].qualities, strict=True):
        assert intra.codes_like(dsin) and intra.host.files == dsin.host.files, f"q{intra.index}"


@pytest.mark.parametrize(("name", "role", "quality"), POINTS)
def test_shipped_codec_codes_at_its_model_card_quality(
    name: str, role: str, quality: int, pairs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    left, right = pairs[SAMPLE[name]]
    bundle = load_bundle(SHIPPED[name], verify=False)
    reference = bundle if "intra" in bundle.codecs else load_bundle(SHIPPED["default"], verify=False)
    intra = EdgeEncoder(reference, "intra", quality)
    ref_enc = intra.encode(left)
    ref = HostDecoder(reference).decode(intra.frame(ref_enc, rig_id=1, camera_id=0, seq=0, t_capture_ns=0))
    assert np.array_equal(ref.symbols, ref_enc.symbols)
    if role == "intra":
        original, enc, decoded = left, ref_enc, ref.image
    else:
        encoder = EdgeEncoder(bundle, role, quality)
        enc = encoder.encode(right)
        dep = HostDecoder(bundle).decode(encoder.frame(enc, rig_id=1, camera_id=1, seq=0, t_capture_ns=0), ref.image)
        assert np.array_equal(dep.symbols, enc.symbols)
        original, decoded = right, dep.image
    card_bpp, card_psnr = CARD[name][role][quality]
    pixels = original.shape[0] * original.shape[1]
    assert 8 * enc.payload_bytes / pixels <= card_bpp * 1.02, f"{name} {role} q{quality} spends more bits than its card"
    assert psnr(original, decoded) >= card_psnr - 0.1, f"{name} {role} q{quality} decodes worse than its card"
