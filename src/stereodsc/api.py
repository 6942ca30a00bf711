"""The Python API: one image to the bytes a camera sends, and those bytes back to an image.

    >>> import stereodsc
    >>> data = stereodsc.encode(left, bundle="default", quality=2)          # reference camera
    >>> frame = stereodsc.encode(right, codec="side_info", quality=2)       # a dependent camera
    >>> image = stereodsc.decode(frame, side=stereodsc.decode(data))        # the host

Images are uint8 HxWx3 RGB numpy arrays; the bytes are wire frames (header + rANS payload), the
same a camera node streams and `stereodsc decode` reads. Encoders and decoders are opened once
per bundle, codec and quality and reused across calls.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

from stereodsc.bundle import Bundle, load_bundle
from stereodsc.bundles import find_shipped, resolve_bundle
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.codec.roles import CodecRole
from stereodsc.errors import ConfigError
from stereodsc.wire import unpack


@functools.lru_cache(maxsize=8)
def _bundle(folder: Path) -> Bundle:
    return load_bundle(folder)


@functools.lru_cache(maxsize=16)
def _encoder(folder: Path, role: CodecRole, quality: int) -> EdgeEncoder:
    return EdgeEncoder(_bundle(folder), role, quality)


@functools.lru_cache(maxsize=8)
def _decoder(folder: Path) -> HostDecoder:
    return HostDecoder(_bundle(folder))


def encode(
    image: np.ndarray,
    bundle: str | Path = "default",
    quality: int = 0,
    *,
    codec: str = "intra",
    rig_id: int = 0,
    camera_id: int | None = None,
    seq: int = 0,
    t_capture_ns: int | None = None,
) -> bytes:
    """Encode `image` into one wire frame.

    `bundle` is a shipped bundle's name (``stereodsc models``) or a bundle folder; `codec` is
    "intra" (a reference camera: decodable alone) or "side_info" (a dependent camera: decoded with
    the reference camera's image as `side`). `camera_id` defaults to 0 for intra, 1 for side_info;
    `t_capture_ns` to now.
    """
    role = CodecRole.of(codec)
    encoder = _encoder(resolve_bundle(str(bundle)).resolve(), role, quality)
    encoder.check_size(np.asarray(image).shape[:2])
    return encoder.frame(
        encoder.encode(image),
        rig_id=rig_id,
        camera_id=list(CodecRole).index(role) if camera_id is None else camera_id,
        seq=seq,
        t_capture_ns=time.time_ns() if t_capture_ns is None else t_capture_ns,
    ).pack()


def decode(data: bytes, side: np.ndarray | None = None, *, bundle: str | Path | None = None) -> np.ndarray:
    """Decode one wire frame to a uint8 HxWx3 image.

    A side_info frame needs `side`, the decoded image of the reference camera (same size). The
    bundle is found from the id the frame carries among the shipped ones, unless `bundle` names it.
    """
    frame = unpack(data)
    if bundle is not None:
        folder = resolve_bundle(str(bundle))
    else:
        found = find_shipped(frame.bundle_id)
        if found is None:
            raise ConfigError(
                f"the frame was encoded with bundle {frame.bundle_id.hex()}..., which does not ship with this "
                "install: pass bundle= with its folder"
            )
        folder = found
    decoder = _decoder(folder.resolve())
    if decoder.codec_for(frame).uses_side_info and side is None:
        raise ConfigError("this frame's codec decodes with side information: pass side= (the reference image)")
    return decoder.decode(frame, side).image
