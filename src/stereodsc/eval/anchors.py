"""Classical image codecs as RD anchors, run in-process, decoded through their real decoders.

Each anchor reports the lean payload (the codec's bitstream as a lean format would store it, see
``containers``) and the container total (the file the library writes). Chroma is 4:4:4 wherever
the codec allows (JPEG, AVIF, HEVC, JPEG 2000 and JPEG XL code full-resolution colour; WebP's VP8
is 4:2:0 only). Codec libraries are imported inside the functions, so this module imports with
numpy alone and a missing codec is skipped with a logged reason.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stereodsc.errors import ConfigError, DataError
from stereodsc.eval import containers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnchorResult:
    """One coded image: its decoding, the lean payload and the container file size, in bytes."""

    decoded: np.ndarray
    payload_bytes: int
    container_bytes: int


@dataclass(frozen=True)
class Anchor:
    """A classical codec with its quality sweep (from very low to high rate).

    ``codec(img, quality)`` encodes and decodes a contiguous uint8 HxWx3 image.
    """

    name: str
    qualities: tuple[int, ...]
    description: str
    codec: Callable[[np.ndarray, int], AnchorResult] = field(repr=False)

    def encode(self, img: np.ndarray, quality: int) -> AnchorResult:
        """Encode ``img`` (uint8 HxWx3 RGB) at ``quality`` and decode it again."""
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"anchor {self.name!r} needs a uint8 HxWx3 RGB image, not {img.dtype} {img.shape}")
        result = self.codec(np.ascontiguousarray(img), int(quality))
        if result.decoded.shape != img.shape or result.decoded.dtype != np.uint8:
            raise DataError(
                f"anchor {self.name!r} decoded {result.decoded.dtype} {result.decoded.shape}, "
                f"expected uint8 {img.shape}"
            )
        return result


def _jpeg(img: np.ndarray, quality: int) -> AnchorResult:
    import imagecodecs

    # 4:4:4 (no chroma subsampling) and optimised Huffman tables, as a careful encoder would use.
    full = bytes(imagecodecs.jpeg8_encode(img, level=quality, subsampling="444", optimize=True))
    lean = containers.strip_jpeg_metadata(full)
    return AnchorResult(imagecodecs.jpeg8_decode(lean), len(lean), len(full))


def _jpeg2000(img: np.ndarray, quality: int) -> AnchorResult:
    import imagecodecs

    # OpenJPEG fixed-quality mode: ``quality`` is the target PSNR in dB; J2K codestream, no JP2 boxes.
    data = bytes(imagecodecs.jpeg2k_encode(img, level=quality, codecformat="J2K"))
    return AnchorResult(imagecodecs.jpeg2k_decode(data), len(data), len(data))


def _webp(img: np.ndarray, quality: int) -> AnchorResult:
    import imagecodecs

    data = bytes(imagecodecs.webp_encode(img, level=quality, lossless=False, method=6))
    return AnchorResult(imagecodecs.webp_decode(data), containers.webp_payload_bytes(data), len(data))


def _avif(img: np.ndarray, quality: int) -> AnchorResult:
    import imagecodecs

    # Speed 2: within ~1% of the slowest setting (0) in rate at a third of its time.
    data = bytes(imagecodecs.avif_encode(img, level=quality, pixelformat="yuv444", speed=2))
    return AnchorResult(imagecodecs.avif_decode(data), containers.av1_payload_bytes(data), len(data))


def _jpegxl(img: np.ndarray, quality: int) -> AnchorResult:
    import imagecodecs

    data = bytes(imagecodecs.jpegxl_encode(img, level=quality, usecontainer=False))
    return AnchorResult(imagecodecs.jpegxl_decode(data), len(data), len(data))


def _hevc(img: np.ndarray, quality: int) -> AnchorResult:
    import pillow_heif

    heif = pillow_heif.from_bytes(mode="RGB", size=(img.shape[1], img.shape[0]), data=img.tobytes())
    buffer = io.BytesIO()
    # 4:4:4, and x265 tuned for PSNR rather than libheif's default SSIM tune: on KITTI frames that
    # lowers its BD-rate on PSNR by ~6% and raises it on MS-SSIM by ~2%.
    heif.save(buffer, quality=quality, chroma=444, enc_params={"tune": "psnr"})
    data = buffer.getvalue()
    decoded = np.asarray(pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)[0])
    return AnchorResult(decoded, containers.hevc_payload_bytes(data), len(data))


_ALL = (
    Anchor(
        "jpeg",
        (1, 3, 5, 10, 15, 20, 30, 40, 50, 60, 75, 90),
        "JPEG (libjpeg) 4:4:4, optimised Huffman; quality 1-100; payload = file without APPn/COM segments",
        _jpeg,
    ),
    Anchor(
        "jpeg2000",
        (18, 20, 22, 24, 26, 28, 30, 32, 35, 38, 42),
        "JPEG 2000 (OpenJPEG) fixed-quality mode, quality = target PSNR in dB; payload = J2K codestream",
        _jpeg2000,
    ),
    Anchor(
        "webp",
        (0, 5, 10, 20, 30, 40, 50, 60, 75, 90),
        "WebP lossy (libwebp, method 6, VP8 4:2:0); quality 0-100; payload = VP8 chunk data",
        _webp,
    ),
    Anchor(
        "avif",
        (0, 5, 10, 15, 20, 30, 40, 50, 60, 75, 90),
        "AVIF (libavif, speed 2) 4:4:4; quality 0-100; payload = AV1 OBUs in 'mdat', container = AVIF file",
        _avif,
    ),
    Anchor(
        "jpegxl",
        (0, 10, 20, 30, 40, 50, 60, 70, 80, 90),
        "JPEG XL (libjxl) VarDCT; quality 0-100; payload = raw codestream (no ISO-BMFF container)",
        _jpegxl,
    ),
    Anchor(
        "hevc",
        (0, 3, 6, 10, 14, 18, 22, 27, 33, 40, 50),
        "HEVC intra 4:4:4 (x265 via libheif, tune psnr; the BPG equivalent); quality 0-100; "
        "payload = parameter sets + slices (hvcC + mdat), container = HEIF file",
        _hevc,
    ),
)

ANCHOR_NAMES = tuple(a.name for a in _ALL)

# imagecodecs may be built without some codecs; its flags give the clearest reason.
_IMAGECODECS_FLAGS = {
    "jpeg": "JPEG8",
    "jpeg2000": "JPEG2K",
    "webp": "WEBP",
    "avif": "AVIF",
    "jpegxl": "JPEGXL",
}


@functools.cache
def _unavailable_reason(name: str) -> str | None:
    """Why the codec can't run here (None when it can): a real 64x64 encode + decode round trip."""
    anchor = next(a for a in _ALL if a.name == name)
    if name in _IMAGECODECS_FLAGS:
        try:
            import imagecodecs
        except ImportError:
            return "imagecodecs is not installed; install stereodsc[eval]"
        flag = _IMAGECODECS_FLAGS[name]
        if not getattr(getattr(imagecodecs, flag, None), "available", False):
            return f"this imagecodecs build has no {flag} codec (imagecodecs.{flag}.available is False)"
    probe = np.zeros((64, 64, 3), np.uint8)
    probe[:, 32:] = 200
    try:
        anchor.encode(probe, anchor.qualities[len(anchor.qualities) // 2])
    except ImportError as exc:
        return f"its library is not installed ({exc}); install stereodsc[eval]"
    except Exception as exc:
        return f"its encoder or decoder failed on a test image ({type(exc).__name__}: {exc})"
    return None


def available_anchors(names: Sequence[str] | None = None) -> list[Anchor]:
    """The anchors named (all known ones by default) that run here; the others are logged and skipped."""
    wanted = list(ANCHOR_NAMES) if names is None else list(names)
    unknown = [n for n in wanted if n not in ANCHOR_NAMES]
    if unknown:
        raise ConfigError(f"unknown anchor(s) {unknown}; valid anchors: {', '.join(ANCHOR_NAMES)}")
    anchors = []
    for anchor in _ALL:
        if anchor.name not in wanted:
            continue
        reason = _unavailable_reason(anchor.name)
        if reason is None:
            anchors.append(anchor)
        else:
            log.warning("skipping anchor %r: %s", anchor.name, reason)
    return anchors
