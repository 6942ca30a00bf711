"""Write the golden frames of the shipped bundles (tests/golden/shipped/), after a bundle changes.

Per shipped bundle, codec and quality: the wire frame of the bundled sample's frame 0 (paper
protocol, 128x256; the right camera for side-information codecs, decoded with the left camera's
frame as the bundle's own intra codec, or the default bundle's, decodes it at the same quality: its
golden decode), the
sha256 of its decoded symbols (exact on every machine: the integer path) and the decoded image as PNG (compared within a
tolerance: float backends round differently). tests/test_golden_shipped.py checks them.
"""

from __future__ import annotations

import json
from pathlib import Path

from stereodsc.bundle import load_bundle
from stereodsc.bundles import shipped_bundles
from stereodsc.codec import EdgeEncoder, HostDecoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.images import read_rgb, write_rgb
from stereodsc.records import symbols_digest
from stereodsc.sample import drive_path

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "shipped"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    left, right = (paper_protocol(read_rgb(kitti_frames(drive_path(), cam)[0][0])) for cam in ("left", "right"))
    entries = []
    for name, folder in shipped_bundles().items():  # "default" first: its intra decodes are the side images
        bundle = load_bundle(folder)
        for role, codec in bundle.codecs.items():
            for q in codec.qualities:
                stem = f"{name}_{role}_q{q.index}"
                # the reference camera runs the bundle's own intra codec, or the default bundle's
                reference = name if "intra" in bundle.codecs else "default"
                side_file = f"{reference}_intra_q{q.index}_decoded.png" if codec.uses_side_info else None
                encoder = EdgeEncoder(bundle, role, q.index)
                image = right if codec.uses_side_info else left
                frame = encoder.frame(encoder.encode(image), rig_id=1, camera_id=1, seq=0, t_capture_ns=0)
                decoded = HostDecoder(bundle).decode(frame, read_rgb(OUT / side_file) if side_file else None)
                (OUT / f"{stem}.sdf").write_bytes(frame.pack())
                write_rgb(OUT / f"{stem}_decoded.png", decoded.image)
                entries.append(
                    {
                        "bundle": name,
                        "bundle_id": bundle.id,
                        "codec": role,
                        "quality": q.index,
                        "frame": f"{stem}.sdf",
                        "side": side_file,
                        "decoded": f"{stem}_decoded.png",
                        "symbols_sha256": {k: symbols_digest(v) for k, v in decoded.latents.items()},
                    }
                )
                print(stem, len(frame.pack()), "bytes")
    (OUT / "golden.json").write_text(json.dumps({"frames": entries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
