"""Rate-distortion records, per-method curves, the BD-rate table and ``results.json``.

Every evaluation (classical anchors here, learned models later) produces one ``Record`` per
(method, quality point, image); curves average them per method and quality point; BD-rates
compare curves on PSNR and on MS-SSIM in dB, with the lean payload bpp as the rate by default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stereodsc.errors import ConfigError, DataError
from stereodsc.eval import bdrate, metrics
from stereodsc.eval.anchors import Anchor

log = logging.getLogger(__name__)

RateKind = Literal["payload", "wire"]


@dataclass(frozen=True)
class Record:
    """One image coded by one method at one quality point.

    ``payload_bytes`` is the coded bitstream (lean, comparable with the papers' bpp), ``wire_bytes``
    what is actually sent or stored (our frame header, or the anchor's container file);
    ``estimated_bpp`` is a learned model's likelihood estimate (None for anchors).
    bpp is over the original (unpadded) pixels.
    """

    method: str
    quality: str
    image: str
    payload_bytes: int
    wire_bytes: int
    payload_bpp: float
    wire_bpp: float
    estimated_bpp: float | None
    psnr: float
    ms_ssim: float

    @classmethod
    def measure(
        cls,
        method: str,
        quality: str,
        image: str,
        original: np.ndarray,
        decoded: np.ndarray,
        payload_bytes: int,
        wire_bytes: int,
        estimated_bpp: float | None = None,
        ms_ssim_win: int = 7,
    ) -> Record:
        """A record with PSNR, MS-SSIM and bpp computed from the original and its decoding."""
        if wire_bytes < payload_bytes:
            raise DataError(f"{method}/{quality}/{image}: wire bytes {wire_bytes} < payload {payload_bytes}")
        h, w = np.asarray(original).shape[:2]
        return cls(
            method=method,
            quality=quality,
            image=image,
            payload_bytes=int(payload_bytes),
            wire_bytes=int(wire_bytes),
            payload_bpp=metrics.bpp(payload_bytes, h, w),
            wire_bpp=metrics.bpp(wire_bytes, h, w),
            estimated_bpp=estimated_bpp,
            psnr=metrics.psnr(original, decoded),
            ms_ssim=metrics.ms_ssim(original, decoded, win_size=ms_ssim_win),
        )


@dataclass(frozen=True)
class CurvePoint:
    """A method's quality point averaged over images.

    PSNR is the mean of per-image PSNRs (the CompressAI convention); ``ms_ssim_db`` is the dB value
    of the mean MS-SSIM, so it matches published curves given as linear MS-SSIM averages.
    """

    method: str
    quality: str
    n_images: int
    payload_bpp: float
    wire_bpp: float
    estimated_bpp: float | None
    psnr: float
    ms_ssim: float
    ms_ssim_db: float

    def rate(self, kind: RateKind) -> float:
        return self.payload_bpp if kind == "payload" else self.wire_bpp


def aggregate(records: Iterable[Record]) -> dict[str, list[CurvePoint]]:
    """Per-method curves: one averaged point per quality label, sorted by payload bpp."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    seen: set[tuple[str, str, str]] = set()
    for rec in records:
        key = (rec.method, rec.quality, rec.image)
        if key in seen:
            raise DataError(f"duplicate record: method {rec.method!r}, quality {rec.quality!r}, image {rec.image!r}")
        seen.add(key)
        groups[(rec.method, rec.quality)].append(rec)
    curves: dict[str, list[CurvePoint]] = defaultdict(list)
    images_of: dict[str, set[frozenset[str]]] = defaultdict(set)
    for (method, quality), group in groups.items():
        images_of[method].add(frozenset(r.image for r in group))
        estimates = [r.estimated_bpp for r in group if r.estimated_bpp is not None]
        mean_ms_ssim = float(np.mean([r.ms_ssim for r in group]))
        curves[method].append(
            CurvePoint(
                method=method,
                quality=quality,
                n_images=len(group),
                payload_bpp=float(np.mean([r.payload_bpp for r in group])),
                wire_bpp=float(np.mean([r.wire_bpp for r in group])),
                estimated_bpp=float(np.mean(estimates)) if len(estimates) == len(group) else None,
                psnr=float(np.mean([r.psnr for r in group])),
                ms_ssim=mean_ms_ssim,
                ms_ssim_db=metrics.ms_ssim_db(mean_ms_ssim),
            )
        )
    for method, image_sets in images_of.items():
        if len(image_sets) > 1:
            log.warning("method %r: its quality points average different sets of images", method)
    return {m: sorted(pts, key=lambda p: p.payload_bpp) for m, pts in sorted(curves.items())}


def bd_rate_table(
    records: Iterable[Record],
    anchors: Sequence[str],
    method: bdrate.Method = "pchip",
    rate: RateKind = "payload",
    notes: list[str] | None = None,
) -> dict[str, dict[str, float | None]]:
    """BD-rate (percent) of every method against each named anchor, on PSNR and on MS-SSIM in dB.

    Keys are ``"<method> vs <anchor>"``; a value is None when the curves don't allow a BD
    computation (no common quality range, too few points): the reason is logged and, like
    dropped points, appended to ``notes`` when it is a list.
    """
    curves = aggregate(records)
    missing = [a for a in anchors if a not in curves]
    if missing:
        raise ConfigError(f"BD reference(s) {missing} have no records; methods present: {sorted(curves)}")
    table: dict[str, dict[str, float | None]] = {}
    for anchor in anchors:
        ref = curves[anchor]
        for name, pts in curves.items():
            if name == anchor:
                continue
            key = f"{name} vs {anchor}"
            entry: dict[str, float | None] = {}
            for metric, value_of in (("psnr", attrgetter("psnr")), ("ms_ssim", attrgetter("ms_ssim_db"))):
                try:
                    entry[metric] = bdrate.bd_rate(
                        [p.rate(rate) for p in pts],
                        [value_of(p) for p in pts],
                        [p.rate(rate) for p in ref],
                        [value_of(p) for p in ref],
                        method=method,
                        notes=notes,
                        labels=(f"{name} ({metric})", f"{anchor} ({metric})"),
                    )
                except bdrate.BDRateError as exc:
                    message = f"{key} ({metric}): no BD-rate: {exc}"
                    log.warning("%s", message)
                    if notes is not None:
                        notes.append(message)
                    entry[metric] = None
            table[key] = entry
    return table


def curves_json(records: Iterable[Record]) -> dict[str, list[dict[str, Any]]]:
    """``aggregate(records)`` as results.json writes it."""
    return {m: [dataclasses.asdict(p) for p in pts] for m, pts in aggregate(records).items()}


def environment_meta() -> dict[str, Any]:
    """Machine and library versions, so that a results file says where its numbers came from."""
    versions: dict[str, str | None] = {}
    dists = (
        "stereodsc",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "imagecodecs",
        "pillow-heif",
        "matplotlib",
    )
    for dist in dists:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        import pillow_heif

        versions["libheif"] = pillow_heif.libheif_info().get("libheif")
    except ImportError:
        pass
    return {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": versions,
    }


def _json_safe(value: Any) -> Any:
    """Non-finite floats (PSNR of a lossless decode) become null: results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_results(
    out_dir: str | Path,
    records: Sequence[Record],
    bd_table: Mapping[str, Mapping[str, float | None]],
    meta: Mapping[str, Any] | None = None,
    sections: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/results.json``: ``bd_rate``, ``curves``, ``records`` and ``meta``.

    ``meta`` (run settings, dataset, notes) is merged over ``environment_meta()``; ``sections`` are
    further top-level entries (``stereodsc eval``'s ``rig``), absent unless given.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "bd_rate": dict(bd_table),
        "curves": curves_json(records),
        "records": [dataclasses.asdict(r) for r in records],
        "meta": {**environment_meta(), **(meta or {})},
    }
    clash = sorted(set(document) & set(sections or {}))
    if clash:
        raise ConfigError(f"results.json sections {clash} would overwrite the standard entries: rename them")
    document.update(sections or {})
    path = out / "results.json"
    path.write_text(json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def run_anchors(
    images: Sequence[tuple[str, np.ndarray]],
    anchors: Sequence[Anchor],
    progress: bool = True,
    ms_ssim_win: int = 7,
) -> list[Record]:
    """Code every (id, uint8 RGB image) with every anchor at every quality of its sweep.

    Progress goes to a tqdm bar when tqdm is installed, else to one log line per anchor.
    """
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(images) * sum(len(a.qualities) for a in anchors), desc="anchors", unit="img")
        except ImportError:
            pass
    records = []
    try:
        for anchor in anchors:
            if progress and bar is None:
                log.info("anchor %s: %d qualities x %d images", anchor.name, len(anchor.qualities), len(images))
            for quality in anchor.qualities:
                for name, img in images:
                    result = anchor.encode(img, quality)
                    records.append(
                        Record.measure(
                            method=anchor.name,
                            quality=str(quality),
                            image=name,
                            original=img,
                            decoded=result.decoded,
                            payload_bytes=result.payload_bytes,
                            wire_bytes=result.container_bytes,
                            ms_ssim_win=ms_ssim_win,
                        )
                    )
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return records
