"""The bundle that ships with the package: it loads (hashes verified), codes bit-exactly, and decodes
at least at the quality the model card in the README claims, so a broken or swapped file is caught."""

from __future__ import annotations

import numpy as np
import pytest

from stereodsc.bundle import load_bundle
from stereodsc.bundles import default_bundle
from stereodsc.edge_encoder.encoder import EdgeEncoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.eval.metrics import psnr
from stereodsc.host_decoder.decoder import HostDecoder
from stereodsc.images import read_rgb
from stereodsc.sample import drive_path

# Model card, measured on the bundled sample's frame 0 (192x384): quality -> (payload bpp, PSNR dB).
CARD = {
    "intra": {0: (0.1174, 22.71), 1: (0.2598, 24.41), 2: (0.4201, 25.27)},
    "side_info": {0: (0.0834, 22.00), 1: (0.2127, 24.29), 2: (0.3554, 25.11)},
}


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return (read_rgb(kitti_frames(drive_path(), "left")[0][0]), read_rgb(kitti_frames(drive_path(), "right")[0][0]))


@pytest.mark.parametrize("quality", [0, 1, 2])
def test_shipped_bundle_codes_at_its_model_card_quality(quality: int, pair: tuple[np.ndarray, np.ndarray]) -> None:
    bundle = load_bundle(default_bundle())  # verify=True: every file against its sha256
    assert {role: len(c.qualities) for role, c in bundle.codecs.items()} == {"intra": 3, "side_info": 3}
    decoder = HostDecoder(bundle)
    left, right = pair
    intra, side_info = EdgeEncoder(bundle, "intra", quality), EdgeEncoder(bundle, "side_info", quality)
    ref_enc = intra.encode(left)
    ref_frame = intra.frame(ref_enc, rig_id=1, camera_id=0, seq=0, t_capture_ns=0)
    ref = decoder.decode(ref_frame)
    dep_enc = side_info.encode(right)
    dep = decoder.decode(side_info.frame(dep_enc, rig_id=1, camera_id=1, seq=0, t_capture_ns=0), ref.image)
    assert np.array_equal(ref.symbols, ref_enc.symbols) and np.array_equal(dep.symbols, dep_enc.symbols)
    pixels = left.shape[0] * left.shape[1]
    for role, enc, original, decoded in (("intra", ref_enc, left, ref.image), ("side_info", dep_enc, right, dep.image)):
        card_bpp, card_psnr = CARD[role][quality]
        assert 8 * enc.payload_bytes / pixels <= card_bpp * 1.02, f"{role} q{quality} spends more bits than its card"
        assert psnr(original, decoded) >= card_psnr - 0.1, f"{role} q{quality} decodes worse than its card"
