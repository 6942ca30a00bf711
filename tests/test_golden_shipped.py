"""Golden frames of the shipped bundles (tests/golden/shipped, written by scripts/make_golden_shipped.py).

The contract across machines (AVX2 or AVX-512, any thread count, any backend):
- exact: committed frame bytes decode to the pinned symbols (the integer entropy path), and
  encoding the same image gives a frame of the same size within a few bytes;
- within tolerance: the decoded image, which float graphs compute, is within `MIN_PSNR_DB` of the
  committed decode (a rounding flip moves one 8-bit level here and there, never the picture).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stereodsc.bundle import load_bundle
from stereodsc.bundles import shipped_bundles
from stereodsc.codec import HostDecoder
from stereodsc.eval.metrics import psnr
from stereodsc.images import read_rgb
from stereodsc.records import symbols_digest
from stereodsc.wire import unpack

GOLDEN = Path(__file__).parent / "golden" / "shipped"
ENTRIES = json.loads((GOLDEN / "golden.json").read_text())["frames"]
MIN_PSNR_DB = 45.0
"""Decoded image vs the committed decode: 45 dB is an RMS difference of 1.4 levels at most."""


def test_every_shipped_codec_and_quality_has_a_golden_frame() -> None:
    covered = {(e["bundle"], e["codec"], e["quality"]) for e in ENTRIES}
    shipped = {
        (name, role, q.index)
        for name, folder in shipped_bundles().items()
        for role, codec in load_bundle(folder, verify=False).codecs.items()
        for q in codec.qualities
    }
    assert covered == shipped, "rerun scripts/make_golden_shipped.py after changing a shipped bundle"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["frame"] for e in ENTRIES])
def test_golden_frame_decodes_to_its_pinned_symbols(entry: dict[str, object]) -> None:
    bundle = load_bundle(shipped_bundles()[str(entry["bundle"])], verify=False)
    assert bundle.id == entry["bundle_id"], "the shipped bundle changed: rerun scripts/make_golden_shipped.py"
    frame = unpack((GOLDEN / str(entry["frame"])).read_bytes())
    side = read_rgb(GOLDEN / str(entry["side"])) if entry["side"] else None
    decoded = HostDecoder(bundle).decode(frame, side)
    assert {k: symbols_digest(v) for k, v in decoded.latents.items()} == entry["symbols_sha256"]
    assert psnr(read_rgb(GOLDEN / str(entry["decoded"])), decoded.image) >= MIN_PSNR_DB
    assert decoded.image.shape == (128, 256, 3) and decoded.image.dtype == np.uint8
