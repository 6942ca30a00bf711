"""One frame in a file: what ``stereodsc encode`` and ``stereodsc decode`` do, for trying a codec
by hand and for audits (the frame file holds exactly the bytes a camera would send)."""

from __future__ import annotations

from pathlib import Path

from stereodsc.bundle import Bundle
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.codec.geometry import bpp, format_size
from stereodsc.codec.roles import CodecRole
from stereodsc.errors import ConfigError, DataError
from stereodsc.wire import Frame, unpack

IMAGE_SUFFIXES = (".png", ".ppm", ".bmp", ".tif", ".tiff")
"""Lossless formats a decoded frame may be written as (a JPEG would add its own losses)."""


def output_path(out: Path, suffixes: tuple[str, ...] | None = IMAGE_SUFFIXES) -> Path:
    """Check an output file path before any work: not a folder, a known suffix, its folder created."""
    if out.is_dir():
        example = out / ("frame" + (suffixes or (".sdf",))[0])
        raise ConfigError(f"-o {out} is a folder: name a file in it, e.g. {example}")
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise ConfigError(f"-o {out}: write decoded images as {', '.join(suffixes)} (lossless), not {out.suffix!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def read_frame(path: Path) -> Frame:
    if not path.is_file():
        raise DataError(f"frame file not found: {path}")
    return unpack(path.read_bytes())


def encode_file(bundle: Bundle, quality: int, image: Path, out: Path, codec: str | None = None) -> str:
    """One image file -> one wire frame file; returns a one-line summary.

    `codec` picks the codec when the bundle has both ("intra" or "side_info").
    """
    from stereodsc.images import read_rgb  # opencv: only for files

    output_path(out, suffixes=None)
    pixels = read_rgb(image)
    if codec is None:
        if len(bundle.codecs) > 1:
            raise ConfigError(
                f"bundle {bundle.path.name} has codecs {sorted(bundle.codecs)}: pass --codec intra (reference "
                "camera) or --codec side_info (dependent camera)"
            )
        codec = next(iter(bundle.codecs))
    role = CodecRole.of(codec)
    encoder = EdgeEncoder(bundle, role, quality)
    encoder.check_size(pixels.shape[:2])
    encoded = encoder.encode(pixels)
    frame = encoder.frame(
        encoded, rig_id=0, camera_id=list(CodecRole).index(role), seq=0, t_capture_ns=image.stat().st_mtime_ns
    )
    data = frame.pack()
    out.write_bytes(data)
    h, w = encoded.height, encoded.width
    return (
        f"{image} ({format_size((h, w))}) -> {out}: {encoder.codec.model} {role} q{quality}, payload "
        f"{encoded.payload_bytes} B ({bpp(encoded.payload_bytes, h, w):.4f} bpp), frame {len(data)} B "
        f"({bpp(len(data), h, w):.4f} bpp), bundle {bundle.id[:16]}"
    )


def decode_file(frame_path: Path, frame: Frame, bundle: Bundle, side: Path | None, out: Path) -> str:
    """One wire frame (`frame`, as `read_frame` parsed it from `frame_path`) + the side image file -> an
    image file; returns a summary. The side image is required exactly when the frame's codec uses side
    information."""
    from stereodsc.images import read_rgb, write_rgb  # opencv: only for files

    output_path(out)
    decoder = HostDecoder(bundle)
    codec = decoder.codec_for(frame)
    if codec.uses_side_info and side is None:
        raise ConfigError(
            f"{frame_path} is a {frame.role.name} frame of {codec.model}, which decodes with side information: "
            "pass --side with the decoded reference image"
        )
    if side is not None and not codec.uses_side_info:
        raise ConfigError(
            f"{frame_path} is a {frame.role.name} frame of {codec.model}, which uses no side information: drop --side"
        )
    decoded = decoder.decode(frame, None if side is None else read_rgb(side))
    write_rgb(out, decoded.image)
    return (
        f"{frame_path} -> {out}: {codec.model} {codec.role} q{frame.quality}, "
        f"{format_size((frame.height, frame.width))}, payload {frame.payload_size} B, side information "
        f"{'used' if decoded.side_info_used else 'none'}"
    )
