"""Camera-side codec: uint8 image -> edge ONNX graph -> int32 symbols -> rANS -> wire frame.

    image (uint8 HxWx3) --pad--> edge graph (g_a [+ h_a], rounding inside) --> y [, z] int32
        --> rANS with the bundle's integer tables (z first; y's rows from the integer scale net on z)
        --> segments --> Frame (bundle id, quality, role, rig/camera ids, seq, capture time, size)

numpy, onnxruntime (through `stereodsc.runtime`), the numba rANS coder and the bundle's integer
tables: no torch, so it runs on a camera board with ``stereodsc[edge]``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stereodsc import entropy
from stereodsc.bundle import Bundle
from stereodsc.codec.coding import load_coding
from stereodsc.codec.geometry import MAX_PIXELS, Size, check_rgb, format_size, pad, padded_size
from stereodsc.codec.roles import CodecRole
from stereodsc.codec.sessions import GraphSessions
from stereodsc.errors import BundleError, ConfigError, DataError
from stereodsc.wire import Frame, Role


@dataclass(frozen=True)
class Encoded:
    """One encoded image: the wire segments, the latents they code and how long each stage took."""

    segments: tuple[bytes, ...]  # one rANS payload per latent, in the codec's order
    symbols: np.ndarray  # int32 [M, h, w]: the y symbols that were coded
    height: int  # original (unpadded) image size
    width: int
    estimated_bits: float | None = None  # information content under the integer tables, if asked
    latents: Mapping[str, np.ndarray] = field(default_factory=dict)  # every coded latent (z too), int32 [C, h, w]
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage: "graph", "entropy"

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
        role: str | CodecRole,
        quality: int,
        backend: str = "cpu",
        *,
        threads: int = 0,
        max_pixels: int = MAX_PIXELS,
        engine_cache: Path | None = None,
        fallback: str | None = None,
    ) -> None:
        self.bundle = bundle
        self.role = CodecRole.of(role)
        self.codec = bundle.codec(self.role)
        self.quality = quality
        self.point = self.codec.quality(quality)
        self.coding = load_coding(self.codec, self.point)
        self.tables = self.coding.tables
        self.max_pixels = max_pixels
        self._sessions = GraphSessions(bundle, backend, threads, engine_cache, fallback)

    def close(self) -> None:
        self._sessions.close()

    def check_size(self, size: Size) -> None:
        """Refuse an image size this bundle cannot code end to end: the edge graph must run at its
        padded size, and so must the host graphs that will decode it (DSIN's exhaustive one is per size)."""
        padded = padded_size(size, self.codec.stride)
        for part, graph in self.point.graphs.items():
            if graph.path(*padded) is None:
                raise DataError(
                    f"{self.codec.model}'s {part} graph in bundle {self.bundle.path.name} runs at "
                    f"{graph.describe()} (HxW, padded), the image {format_size(size)} pads to "
                    f"{format_size(padded)}: resize the camera frames to one of those, or re-export the bundle "
                    "for this size (stereodsc export --size HxW)"
                )

    def warm_up(self, size: Size) -> None:
        """Code one grey image of `size`: opens the graph session and compiles the entropy coder, so
        the first real frame is not late (a camera calls this before its capture loop starts)."""
        self.check_size(size)
        self.encode(np.full((*size, 3), 128, np.uint8))

    def encode(self, image: np.ndarray, *, estimate: bool = False) -> Encoded:
        """uint8 HxWx3 RGB -> Encoded (padded to the codec's stride here; the host crops back).

        `estimate` also computes the exact information content (`entropy.ideal_bits`): the
        payload is within a few bytes of it.
        """
        image = check_rgb(image, "image", self.max_pixels)
        height, width = image.shape[:2]
        t0 = time.perf_counter()
        padded = pad(image, self.codec.stride)
        ph, pw = padded.shape[:2]
        path = self.point.edge.path(ph, pw)
        if path is None:
            self.check_size((height, width))  # raises, naming the sizes the bundle has
        assert path is not None
        outputs = self._sessions.run(path, {"image": padded[None]})
        t1 = time.perf_counter()
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
        timings = {"graph": t1 - t0, "entropy": time.perf_counter() - t1}
        return Encoded(tuple(segments), coded["y"], height, width, bits if estimate else None, coded, timings)

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
        expected = self.role.wire
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
