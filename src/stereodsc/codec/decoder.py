"""Host-side codec: wire frame -> rANS decode -> host ONNX graph (+ side image) -> uint8 image.

    Frame --check bundle/role/quality/size--> segments --rANS (z first; y's rows from the integer
        scale net on the decoded z)--> y int32 --host graph (g_s; with the padded side image for a
        side-information codec)--> x_hat uint8 (padded) --crop--> the frame's original size

A codec whose host side is split (DSIN: `QualityPoint.refine`) runs its host graph on y alone (x_dec)
and then its refine graph on x_dec and the padded side image.

No torch. Every way a received frame can fail to decode (foreign bundle, unknown role or quality,
impossible size, corrupt payload, unusable side image) raises a `BitstreamError` subclass, so the
host service counts and drops the frame instead of crashing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stereodsc import entropy
from stereodsc.bundle import Bundle, Codec, Graph, QualityPoint
from stereodsc.codec.coding import Coding, load_coding
from stereodsc.codec.geometry import MAX_PIXELS, Size, check_rgb, crop, format_size, pad, padded_size
from stereodsc.codec.roles import CodecRole
from stereodsc.codec.sessions import GraphSessions
from stereodsc.errors import BitstreamError, BundleError, ConfigError, DataError
from stereodsc.wire import Frame, check_bundle

NEUTRAL_SIDE = 128
"""Grey level of the side image used when a dependent frame is decoded without side information
(0.5 of the model's input range, to the nearest uint8)."""


class UndecodableFrameError(BitstreamError):
    """A valid frame this bundle cannot decode: unknown role or quality, or an impossible size."""


class SideImageError(DataError, BitstreamError):
    """The side image does not fit the frame (a DataError for callers, a BitstreamError for the service)."""


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # uint8 HxWx3, the frame's original size
    symbols: np.ndarray  # int32 [M, h, w]: the decoded y symbols
    side_info_used: bool  # False for reference frames and for dependents decoded with the grey side
    latents: Mapping[str, np.ndarray] = field(default_factory=dict)  # every decoded latent (z too), int32 [C, h, w]
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage: "entropy", "graph"


class HostDecoder:
    """Decode frames of one bundle; sessions and tables load once per (role, quality) on first use.

    Frames larger than `max_pixels` are refused before anything is allocated for them.
    `max_open_graphs` bounds the graph sessions kept open (see `GraphSessions`; None: every one).
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: str = "cpu",
        *,
        threads: int = 0,
        max_pixels: int = MAX_PIXELS,
        engine_cache: Path | None = None,
        fallback: str | None = None,
        max_open_graphs: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.max_pixels = max_pixels
        self._sessions = GraphSessions(bundle, backend, threads, engine_cache, fallback, max_open_graphs)
        self._coding: dict[tuple[str, int], Coding] = {}

    @property
    def fell_back(self) -> bool:
        """Whether a graph runs on the CPU because the GPU backend could not (``fallback = "cpu"``)."""
        return self._sessions.fell_back

    def close(self) -> None:
        self._sessions.close()

    def codec_for(self, frame: Frame) -> Codec:
        """The codec that decodes `frame`: reference frames -> "intra", dependent -> "side_info"."""
        try:
            return self.bundle.codec(CodecRole.from_wire(frame.role))
        except BundleError as e:
            raise UndecodableFrameError(f"{frame.role.name} frame: {e}") from None

    def _point(self, codec: Codec, frame: Frame) -> tuple[QualityPoint, Coding]:
        try:
            point = codec.quality(frame.quality)
        except BundleError as e:
            raise UndecodableFrameError(f"{frame.role.name} frame: {e}; the camera runs another bundle?") from None
        return point, self._coding_of(codec, point)

    def _coding_of(self, codec: Codec, point: QualityPoint) -> Coding:
        """The quality's tables and scale nets, loaded from the bundle once."""
        key = (codec.role, point.index)
        if key not in self._coding:
            self._coding[key] = load_coding(codec, point)
        return self._coding[key]

    def warm_up(self, sizes: Iterable[Size] = ((64, 128),)) -> int:
        """Decode an all-zero frame of every codec and quality at every size the host graphs run at:
        loads every session and table and compiles the entropy decoder before the first camera frame,
        so no frame waits for it. Returns how many graphs were run."""
        runs = 0
        for role, codec in self.bundle.codecs.items():
            for point in codec.qualities:
                for size in sizes:
                    padded = padded_size(size, codec.stride)
                    if any(g.path(*padded) is None for g in (point.host, point.refine) if g is not None):
                        continue
                    side = np.full((*size, 3), NEUTRAL_SIDE, np.uint8) if codec.uses_side_info else None
                    self.decode(self._zero_frame(CodecRole.of(role), codec, point, size), side)
                    runs += 1
        return runs

    def _zero_frame(self, role: CodecRole, codec: Codec, point: QualityPoint, size: Size) -> Frame:
        coding = self._coding_of(codec, point)
        shapes = codec.latent_shapes(*padded_size(size, codec.stride))
        coded: dict[str, np.ndarray] = {}
        segments = []
        for latent in codec.latents:
            coded[latent.name] = np.zeros(shapes[latent.name], np.int32)
            rows = coding.rows(latent, shapes[latent.name], coded)
            segments.append(entropy.encode(coded[latent.name], rows, coding.tables[latent.name]))
        return Frame(self.bundle.id_bytes, point.index, 0, 0, role.wire, 0, 0, size[0], size[1], tuple(segments))

    def decode(self, frame: Frame, side: np.ndarray | None = None) -> Decoded:
        """Decode `frame`; `side` is the decoded reference image (same size) for dependent frames.

        A dependent frame without `side` (the "decode without side information" policy) is marked
        ``side_info_used=False``: where the codec's host side is split (DSIN), it is its decode before
        the side image refines it (trained on the intra codec's frozen decoder: exactly the intra
        frame); otherwise it is decoded with a grey side image, at a lower quality.
        """
        check_bundle(frame, (self.bundle.id_bytes,))
        codec = self.codec_for(frame)
        point, coding = self._point(codec, frame)
        if side is not None and not codec.uses_side_info:
            raise ConfigError(
                f"{frame.role.name} frames ({codec.model}, {codec.role}) decode without side information: "
                "pass side=None"
            )
        size = (frame.height, frame.width)
        ph, pw = padded_size(size, codec.stride)
        if ph * pw > self.max_pixels:
            raise UndecodableFrameError(
                f"frame declares {format_size(size)} pixels, over this host's max_pixels="
                f"{self.max_pixels}: raise it if such cameras are expected"
            )
        refine = point.refine if side is not None else None
        host, refine_path = (
            self._graph_path(codec, part, g, size) for part, g in (("host", point.host), ("refine", refine))
        )
        assert host is not None
        shapes = codec.latent_shapes(ph, pw)
        if len(frame.segments) != len(shapes):
            raise UndecodableFrameError(
                f"frame has {len(frame.segments)} payload segments, the {codec.role} codec sends "
                f"{len(shapes)} ({', '.join(shapes)})"
            )
        t0 = time.perf_counter()
        latents: dict[str, np.ndarray] = {}
        for latent, segment in zip(codec.latents, frame.segments, strict=True):
            shape = shapes[latent.name]
            rows = coding.rows(latent, shape, latents)  # the scale net reads the z decoded just before
            latents[latent.name] = entropy.decode(segment, rows, coding.tables[latent.name])
        t1 = time.perf_counter()
        inputs = {"y": latents["y"][None]}  # the host graph reads y (+ side); z only chose y's rows
        if codec.uses_side_info and point.refine is None:
            inputs["side"] = self._side(side, size, codec)[None]
        image = self._run(host, inputs, (ph, pw))
        if refine_path is not None:
            image = self._run(refine_path, {"x_dec": image, "side": self._side(side, size, codec)[None]}, (ph, pw))
        return Decoded(
            crop(image[0], size),
            latents["y"],
            codec.uses_side_info and side is not None,
            latents,
            {"entropy": t1 - t0, "graph": time.perf_counter() - t1},
        )

    @staticmethod
    def _graph_path(codec: Codec, part: str, graph: Graph | None, size: Size) -> Path | None:
        """The file of `graph` that runs at the frame's padded size (None for no graph); refuses a size
        the bundle has no graph for."""
        if graph is None:
            return None
        padded = padded_size(size, codec.stride)
        path = graph.path(*padded)
        if path is None:
            raise UndecodableFrameError(
                f"{codec.model}'s {part} graph in this bundle runs at {graph.describe()} (HxW, padded), "
                f"the frame is {format_size(size)} ({format_size(padded)} padded): re-export the bundle for it"
            )
        return path

    def _run(self, path: Path, inputs: dict[str, np.ndarray], padded: Size) -> np.ndarray:
        """One host-side graph's uint8 image, its shape checked (a wrong one: an inconsistent bundle)."""
        image = self._sessions.run(path, inputs)["image"]
        if image.dtype != np.uint8 or image.shape != (1, *padded, 3):
            raise BundleError(
                f"graph {path} gave {image.dtype} {image.shape}, expected uint8 {(1, *padded, 3)}: "
                "the bundle is inconsistent; re-export it"
            )
        return image

    @staticmethod
    def _side(side: np.ndarray | None, size: Size, codec: Codec) -> np.ndarray:
        """The side image padded like the frame was, or the neutral grey one when there is none."""
        if side is None:
            return np.full((*padded_size(size, codec.stride), 3), NEUTRAL_SIDE, np.uint8)
        try:
            side = check_rgb(side, "side image")
        except DataError as e:
            raise SideImageError(str(e)) from None
        if side.shape[:2] != size:
            raise SideImageError(
                f"side image is {format_size(side.shape[:2])}, the frame is {format_size(size)}: pass the "
                "decoded reference frame of the same rig (both cameras rectified to one size)"
            )
        return pad(side, codec.stride)
