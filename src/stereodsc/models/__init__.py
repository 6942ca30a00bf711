"""The neural codecs (torch) and their registry.

``build_model(name, preset, **options)`` is the one way the trainer, export and eval create a
model; ``model.config`` rebuilds it: ``build_model(**model.config)``.
"""

from __future__ import annotations

import inspect
from typing import Any

from stereodsc.errors import ConfigError
from stereodsc.models.balle import Balle2017, Balle2018
from stereodsc.models.base import CompressionModel
from stereodsc.models.dsin import DSIN, band_si_finder, si_finder
from stereodsc.models.entropy_models import EntropyBottleneck, GaussianConditional
from stereodsc.models.macs import count_macs, edge_macs
from stereodsc.models.ndic import NDIC
from stereodsc.models.ndic_cam import NDICCAM

__all__ = [
    "EDGE_PRESETS",
    "MODEL_NAMES",
    "PRESETS",
    "CompressionModel",
    "EntropyBottleneck",
    "GaussianConditional",
    "band_si_finder",
    "build_model",
    "count_macs",
    "default_options",
    "edge_macs",
    "si_finder",
]

_MODELS: dict[str, type[CompressionModel]] = {cls.name: cls for cls in (Balle2017, Balle2018, NDIC, NDICCAM, DSIN)}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)

# Options a model does not take (e.g. CAM sizes for balle2017) are ignored by that model.
# "small" and "paper" keep Ballé's full encoder (5.3 and ~40 GMAC per 375x1242 frame): the papers'
# architectures, for the paper-protocol comparison. The EDGE_PRESETS are what a camera board runs:
# the minimal encoder (<= 1.5 GMAC per native frame for g_a + h_a, pinned by tests/test_models_edge.py),
# the decoder as wide as the host affords; "native_large" for the high rates where "native" saturates.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"N": 64, "M": 96, "heads": 4, "dim": 128, "dim_head": 32},  # trains on CPU
    "paper": {"N": 192, "M": 192, "heads": 8, "dim": 256, "dim_head": 256},  # NDIC / NDIC-CAM sizes
    "native": {
        "N": 64,
        "M": 128,
        "encoder": "minimal",
        "edge_channels": [24, 64, 96],
        "hyper_channels": 64,
        "heads": 4,
        "dim": 64,
        "dim_head": 16,
    },
    "native_large": {
        "N": 128,
        "M": 192,
        "encoder": "minimal",
        "edge_channels": [24, 64, 96],
        "hyper_channels": 48,
        "heads": 4,
        "dim": 128,
        "dim_head": 32,
    },
}
EDGE_PRESETS = ("native", "native_large")


def _model_class(name: str) -> type[CompressionModel]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return _MODELS[name]


def default_options(name: str, preset: str = "small") -> dict[str, Any]:
    """Every option ``name`` accepts, with its default under ``preset`` (JSON-serialisable)."""
    cls = _model_class(name)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    options = {
        key: list(p.default) if isinstance(p.default, tuple) else p.default
        for key, p in inspect.signature(cls.__init__).parameters.items()
        if key != "self" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }
    options.update({key: value for key, value in PRESETS[preset].items() if key in options})
    return options


def build_model(name: str, preset: str = "small", **options: Any) -> CompressionModel:
    """Build a registered model; unknown name, preset or option raises ConfigError listing choices."""
    resolved = default_options(name, preset)
    unknown = sorted(set(options) - set(resolved))
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {unknown}; valid options: {', '.join(sorted(resolved))}")
    resolved.update(options)
    return _model_class(name)(**resolved)
