"""Camera-side codec: uint8 image -> edge ONNX graph -> int32 symbols -> rANS -> wire frame.

numpy, onnxruntime (through `stereodsc.runtime`), the numba rANS coder and the bundle's integer
tables: no torch, so it runs on a camera board with ``stereodsc[edge]``. A scale-hyperprior codec
codes z first, then y with the table rows its integer scale net computes from that integer z
(`stereodsc.bundle.Coding`): the host recomputes the same rows from the z it decodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stereodsc import entropy
from stereodsc.bundle import (
    FRAME_ROLES,
    MAX_PIXELS,
    Bundle,
    GraphSessions,
    check_rgb,
    open_model,
)
from stereodsc.errors import BundleError, ConfigError, DataError
from stereodsc.eval.metrics import bpp
from stereodsc.eval.preprocess import pad_to_multiple
from stereodsc.wire import Frame, Role


@dataclass(frozen=True)
class Encoded:
    """One encoded image: the wire segments and what produced them."""

    segments: tuple[bytes, ...]  # one rANS payload per latent, in the codec's order
    symbols: np.ndarray  # int32 [M, h, w]: the y symbols that were coded
    height: int  # original (unpadded) image size
    width: int
    estimated_bits: float | None = None  # information content under the integer tables, if asked
    latents: Mapping[str, np.ndarray] = field(default_factory=dict)  # every coded latent (z too), int32 [C, h, w]

    @property
    def payload_bytes(self) -> int:
        return sum(len(s) for s in self.segments)


class EdgeEncoder:
    """Encode a camera's frames with one codec and quality of a bundle (the session opens once).

    `role` is the codec: "intra" on the reference camera, "side_info" on dependent cameras.
    Images larger than `max_pixels` are refused (bounds the graph's memory on a board).
    """

    def __init__(
        self,
        bundle: Bundle,
        role: str,
        quality: int,
        backend: str = "cpu",
        *,
        threads: int = 0,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.bundle = bundle
        self.role = role
        self.codec = bundle.codec(role)
        self.quality = quality
        self.point = self.codec.quality(quality)
        self.coding = self.codec.load_coding(self.point)
        self.tables = self.coding.tables
        self.max_pixels = max_pixels
        self._sessions = GraphSessions(bundle, backend, threads)

    def encode(self, image: np.ndarray, *, estimate: bool = False) -> Encoded:
        """uint8 HxWx3 RGB -> Encoded (padded to the codec's stride here; the host crops back).

        `estimate` also computes the exact information content (`entropy.ideal_bits`): the
        payload is within a few bytes of it.
        """
        image = check_rgb(image, "image", self.max_pixels)
        height, width = image.shape[:2]
        padded = np.ascontiguousarray(pad_to_multiple(image, self.codec.stride)[0])
        ph, pw = padded.shape[:2]
        path = self.point.edge.path(ph, pw)
        if path is None:
            raise DataError(
                f"{self.codec.model}'s edge graph in this bundle runs at {self.point.edge.describe()} "
                f"(padded), the image pads to {ph}x{pw}: resize the camera frames, or re-export the "
                "bundle for this size"
            )
        outputs = self._sessions.run(path, {"image": padded[None]})
        shapes = self.codec.latent_shapes(ph, pw)
        segments, bits = [], 0.0
        coded: dict[str, np.ndarray] = {}  # latents coded so far: a hyperprior's y rows come from its z
        for latent in self.codec.latents:
            name, shape = latent.name, shapes[latent.name]
            symbols = outputs.get(name)
            if symbols is None or symbols.dtype != np.int32 or symbols.shape != (1, *shape):
                got = None if symbols is None else (symbols.dtype, symbols.shape)
                raise BundleError(
                    f"edge graph {path} gave {name} = {got}, the manifest says int32 {(1, *shape)}: "
                    "the bundle is inconsistent; re-export it"
                )
            indexes = self.coding.rows(latent, shape, coded)
            segments.append(entropy.encode(symbols[0], indexes, self.tables[name]))
            if estimate:
                bits += entropy.ideal_bits(symbols[0], indexes, self.tables[name])
            coded[name] = symbols[0]
        return Encoded(tuple(segments), coded["y"], height, width, bits if estimate else None, coded)

    def frame(
        self,
        encoded: Encoded,
        *,
        rig_id: int,
        camera_id: int,
        role: Role | None = None,
        seq: int,
        t_capture_ns: int,
    ) -> Frame:
        """The wire frame of `encoded` (this bundle's id and quality; role from the codec)."""
        expected = FRAME_ROLES[self.role]
        if role is not None and role != expected:
            raise ConfigError(
                f"the {self.role} codec's frames are {expected.name} frames, not {Role(role).name}: "
                f"configure this camera with the codec of its role"
            )
        return Frame(
            self.bundle.id_bytes,
            self.quality,
            rig_id,
            camera_id,
            expected,
            seq,
            t_capture_ns,
            encoded.height,
            encoded.width,
            encoded.segments,
        )


def encode_file(model: Path, quality: int, image: Path, out: Path, role: str | None = None) -> str:
    """``stereodsc encode``: one image file -> one wire frame file; returns a one-line summary.

    `model` is a bundle folder, or a checkpoint (exported on the fly; slow, for trying a model).
    `role` picks the codec when the bundle has both ("intra" or "side_info").
    """
    from stereodsc.images import read_rgb  # opencv: only for files

    pixels = read_rgb(Path(image))
    with open_model(model, pixels.shape[:2]) as bundle:
        if role is None:
            if len(bundle.codecs) > 1:
                raise ConfigError(
                    f"{model} has codecs {sorted(bundle.codecs)}: pass --role intra (reference camera) or "
                    "--role side_info (dependent camera)"
                )
            role = next(iter(bundle.codecs))
        encoder = EdgeEncoder(bundle, role, quality)
        encoded = encoder.encode(pixels)
        frame = encoder.frame(
            encoded,
            rig_id=0,
            camera_id=list(FRAME_ROLES).index(role),
            seq=0,
            t_capture_ns=Path(image).stat().st_mtime_ns,
        )
        data = frame.pack()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(data)
        h, w = encoded.height, encoded.width
        return (
            f"{image} ({w}x{h}) -> {out}: {encoder.codec.model} {role} q{quality}, payload "
            f"{encoded.payload_bytes} B ({bpp(encoded.payload_bytes, h, w):.4f} bpp), frame {len(data)} B "
            f"({bpp(len(data), h, w):.4f} bpp), bundle {bundle.id[:16]}"
        )
