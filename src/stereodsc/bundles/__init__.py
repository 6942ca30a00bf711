"""Bundles that ship inside the package (see README, "Shipped models"; `stereodsc models` lists them).

`default/` holds the codecs a fresh install uses when a config names no bundle: the reference
camera's intra codec (balle2017) and the dependent cameras' side-information codec (ndic), at four
qualities each, trained in the papers' setting (128x256 crops of one drive). `native/` holds the
native-resolution models (README, "Native-resolution models"): the camera's minimal-encoder intra
codec (balle2018, preset native) and DSIN with the epipolar-band SI-Finder, at four qualities each,
trained on native-scale crops of four data sets; every graph runs at any size.

A config's ``bundle`` may name a shipped bundle ("default", "native") instead of a folder.
"""

import functools
import hashlib
from pathlib import Path

from stereodsc.errors import ConfigError

_HERE = Path(__file__).resolve().parent


def shipped_bundles() -> dict[str, Path]:
    """Name -> folder of every bundle this install ships (those whose manifest is present)."""
    return {p.name: p for p in sorted(_HERE.iterdir()) if (p / "manifest.json").is_file()}


def resolve_bundle(name_or_path: str) -> Path:
    """A bundle folder from a config value: empty -> the shipped default bundle; an existing path; or
    the name of a shipped bundle. Anything else is a ConfigError that lists the shipped names."""
    shipped = shipped_bundles()
    if not name_or_path:
        if "default" not in shipped:
            raise ConfigError(
                "no bundle configured and no default bundle ships with this install; "
                "set [codec] bundle / [host] bundle to a folder made by 'stereodsc export'"
            )
        return shipped["default"]
    path = Path(name_or_path)
    if path.exists():
        return path
    if name_or_path in shipped:
        return shipped[name_or_path]
    if len(path.parts) == 1:
        raise ConfigError(
            f"bundle {name_or_path!r} is neither a folder nor a shipped bundle ({', '.join(shipped) or 'none'}); "
            "see stereodsc models"
        )
    return path  # load_bundle says what is wrong with it


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def describe(folder: Path, verify: bool = False) -> str:
    """A few lines on a bundle: id, size, and per codec its model and qualities with their lambda and
    the validation bpp (estimated) / PSNR / MS-SSIM its training run recorded (on that run's held-out
    pairs, the float32 checkpoint; the README's model card has the exported codecs' measured bytes)."""
    from stereodsc.bundle import load_bundle

    bundle = load_bundle(folder, verify=verify)
    lines = [
        f"{folder.name}: bundle {bundle.id[:16]}, {folder_bytes(folder) / 1e6:.1f} MB, {folder}",
        "  (per quality: the validation its training run recorded on its held-out pairs; README has measured bytes)",
    ]
    for role, codec in bundle.codecs.items():
        raw = bundle.manifest["codecs"][role]
        cfg = codec.model_config
        lines.append(
            f"  {role:9s} {codec.model} (N={cfg.get('N', 'per quality')}, M={cfg.get('M')}), "
            f"{raw.get('weights', 'float32')} "
            f"weights, graphs {'/'.join(raw['shapes'].values())}, sizes {', '.join(raw['sizes'])}"
        )
        for q, raw_q in zip(codec.qualities, raw["qualities"], strict=True):
            m = q.metrics
            card = (
                f"bpp {m['bpp']:.3f}, PSNR {m['psnr']:.2f} dB, MS-SSIM {m['ms_ssim']:.3f}"
                if "bpp" in m
                else "no metrics"
            )
            host = ", ".join(f"{k}={v}" for k, v in sorted(raw_q.get("host_options", {}).items()))
            twins = [
                f"{other} q{t.index}" + (" (its host graph too)" if t.host.files == q.host.files else "")
                for other, c in bundle.codecs.items()
                if other != role
                for t in c.qualities
                if t.codes_like(q)
            ]
            lines.append(
                f"    q{q.index}  lambda {q.lmbda:<7g} {card}"
                + (f"; host graph: {host}" if host else "")
                + (f"; camera graph shared with {', '.join(twins)}" if twins else "")
            )
    return "\n".join(lines)


def default_bundle() -> Path:
    """Folder of the shipped default bundle, or a ConfigError saying how to get one."""
    return resolve_bundle("")


def find_shipped(bundle_id: bytes) -> Path | None:
    """The shipped bundle whose id starts with `bundle_id` (a frame's 8-byte id), or None."""
    return next((folder for digest, folder in _shipped_digests() if digest.startswith(bundle_id)), None)


@functools.lru_cache(maxsize=1)
def _shipped_digests() -> tuple[tuple[bytes, Path], ...]:
    """(sha256 of manifest.json, folder) of every shipped bundle: hashed once per process, not per frame."""
    return tuple(
        (hashlib.sha256((folder / "manifest.json").read_bytes()).digest(), folder)
        for folder in shipped_bundles().values()
    )
