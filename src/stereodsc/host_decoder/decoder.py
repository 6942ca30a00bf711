"""Host-side codec: wire frame -> rANS decode -> host ONNX graph (+ side image) -> uint8 image.

Latents are decoded in segment order; a scale-hyperprior codec's y is decoded with the table rows
the bundle's integer scale net computes from the z decoded just before (never a float h_s), so the
rows are the ones the camera encoded with, whatever hardware either side runs on.

No torch. Every way a received frame can fail to decode (foreign bundle, unknown role or quality,
impossible size, corrupt payload, unusable side image) raises a `BitstreamError` subclass, so the
host service counts and drops the frame instead of crashing.
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
    Codec,
    Coding,
    GraphSessions,
    QualityPoint,
    check_rgb,
    open_model,
)
from stereodsc.errors import BitstreamError, BundleError, ConfigError, DataError
from stereodsc.eval.preprocess import crop, pad_to_multiple
from stereodsc.wire import BundleMismatchError, Frame, unpack

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


class HostDecoder:
    """Decode frames of one bundle; sessions and tables load once per (role, quality) on first use.

    Frames larger than `max_pixels` are refused before anything is allocated for them.
    """

    def __init__(self, bundle: Bundle, backend: str = "cpu", *, threads: int = 0, max_pixels: int = MAX_PIXELS) -> None:
        self.bundle = bundle
        self.max_pixels = max_pixels
        self._sessions = GraphSessions(bundle, backend, threads)
        self._coding: dict[tuple[str, int], Coding] = {}

    def codec_for(self, frame: Frame) -> Codec:
        """The codec that decodes `frame`: reference frames -> "intra", dependent -> "side_info"."""
        role = next(r for r, wire_role in FRAME_ROLES.items() if wire_role == frame.role)
        try:
            return self.bundle.codec(role)
        except BundleError as e:
            raise UndecodableFrameError(f"{frame.role.name} frame: {e}") from None

    def _point(self, codec: Codec, frame: Frame) -> tuple[QualityPoint, Coding]:
        try:
            point = codec.quality(frame.quality)
        except BundleError as e:
            raise UndecodableFrameError(f"{frame.role.name} frame: {e}; the camera runs another bundle?") from None
        key = (codec.role, frame.quality)
        if key not in self._coding:
            self._coding[key] = codec.load_coding(point)
        return point, self._coding[key]

    def decode(self, frame: Frame, side: np.ndarray | None = None) -> Decoded:
        """Decode `frame`; `side` is the decoded reference image (same size) for dependent frames.

        A dependent frame without `side` is decoded with a grey side image (the "decode without
        side information" policy): lower quality, marked ``side_info_used=False``.
        """
        if frame.bundle_id != self.bundle.id_bytes:
            raise BundleMismatchError(
                f"frame encoded with bundle {frame.bundle_id.hex()}..., this host decodes with "
                f"{self.bundle.id[:16]}...: deploy the same bundle on the camera and the host"
            )
        codec = self.codec_for(frame)
        point, coding = self._point(codec, frame)
        if side is not None and not codec.uses_side_info:
            raise ConfigError(
                f"{frame.role.name} frames ({codec.model}, {codec.role}) decode without side information: "
                "pass side=None"
            )
        ph, pw = codec.padded_size(frame.height, frame.width)
        if ph * pw > self.max_pixels:
            raise UndecodableFrameError(
                f"frame declares {frame.height}x{frame.width} pixels, over this host's max_pixels="
                f"{self.max_pixels}: raise it if such cameras are expected"
            )
        host = point.host.path(ph, pw)
        if host is None:
            raise UndecodableFrameError(
                f"{codec.model}'s host graph in this bundle runs at {point.host.describe()} (padded), "
                f"the frame is {frame.height}x{frame.width} ({ph}x{pw} padded): re-export the bundle for it"
            )
        shapes = codec.latent_shapes(ph, pw)
        if len(frame.segments) != len(shapes):
            raise UndecodableFrameError(
                f"frame has {len(frame.segments)} payload segments, the {codec.role} codec sends "
                f"{len(shapes)} ({', '.join(shapes)})"
            )
        latents: dict[str, np.ndarray] = {}
        for latent, segment in zip(codec.latents, frame.segments, strict=True):
            shape = shapes[latent.name]
            rows = coding.rows(latent, shape, latents)  # the scale net reads the z decoded just before
            latents[latent.name] = entropy.decode(segment, rows, coding.tables[latent.name])
        inputs = {"y": latents["y"][None]}  # the host graph reads y (+ side); z only chose y's rows
        if codec.uses_side_info:
            inputs["side"] = self._side(side, frame, codec)[None]
        image = self._sessions.run(host, inputs)["image"]
        if image.dtype != np.uint8 or image.shape != (1, ph, pw, 3):
            raise BundleError(
                f"host graph {host} gave {image.dtype} {image.shape}, expected uint8 {(1, ph, pw, 3)}: "
                "the bundle is inconsistent; re-export it"
            )
        return Decoded(
            crop(image[0], (frame.height, frame.width)),
            latents["y"],
            codec.uses_side_info and side is not None,
            latents,
        )

    @staticmethod
    def _side(side: np.ndarray | None, frame: Frame, codec: Codec) -> np.ndarray:
        """The side image padded like the frame was, or the neutral grey one when there is none."""
        if side is None:
            return np.full((*codec.padded_size(frame.height, frame.width), 3), NEUTRAL_SIDE, np.uint8)
        try:
            side = check_rgb(side, "side image")
        except DataError as e:
            raise SideImageError(str(e)) from None
        if side.shape[:2] != (frame.height, frame.width):
            raise SideImageError(
                f"side image is {side.shape[0]}x{side.shape[1]}, the frame is {frame.height}x{frame.width}: "
                "pass the decoded reference frame of the same rig (both cameras rectified to one size)"
            )
        return np.ascontiguousarray(pad_to_multiple(side, codec.stride)[0])


def decode_file(frame_path: Path, model: Path, side: Path | None, out_png: Path) -> str:
    """``stereodsc decode``: one wire frame file (+ the side image file) -> PNG; returns a summary.

    `model` is the bundle folder the frame was encoded with (or the same checkpoint). The side
    image is required exactly when the frame's codec uses side information.
    """
    from stereodsc.images import read_rgb, write_rgb  # opencv: only for files

    path = Path(frame_path)
    if not path.is_file():
        raise DataError(f"frame file not found: {path}")
    frame = unpack(path.read_bytes())
    with open_model(model, (frame.height, frame.width)) as bundle:
        decoder = HostDecoder(bundle)
        codec = decoder.codec_for(frame)
        if codec.uses_side_info and side is None:
            raise ConfigError(
                f"{path} is a {frame.role.name} frame of {codec.model}, which decodes with side information: "
                "pass --side with the decoded reference image"
            )
        if side is not None and not codec.uses_side_info:
            raise ConfigError(
                f"{path} is a {frame.role.name} frame of {codec.model}, which uses no side information: drop --side"
            )
        decoded = decoder.decode(frame, None if side is None else read_rgb(Path(side)))
    write_rgb(Path(out_png), decoded.image)
    return (
        f"{path} -> {out_png}: {codec.model} {codec.role} q{frame.quality}, {frame.width}x{frame.height}, "
        f"payload {frame.payload_size} B, side information {'used' if decoded.side_info_used else 'none'}"
    )
