"""Bundles that ship inside the package (see README, "Shipped models").

`default/` holds the codecs a fresh install uses when a config names no bundle: the reference
camera's intra codec and the dependent cameras' side-information codec, at several qualities.
"""

from pathlib import Path

from stereodsc.errors import ConfigError


def default_bundle() -> Path:
    """Folder of the shipped default bundle, or a ConfigError saying how to get one."""
    path = Path(__file__).resolve().parent / "default"
    if not (path / "manifest.json").is_file():
        raise ConfigError(
            "no bundle configured and no default bundle ships with this install; "
            "set [codec] bundle / [host] bundle to a folder made by 'stereodsc export'"
        )
    return path
