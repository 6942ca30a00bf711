"""The integers one quality is entropy-coded with, loaded identically on the camera and the host.

A factorized latent is coded with one table row per channel; a scale-hyperprior latent y takes the
row of every element from the bundle's integer scale net applied to the integer z coded before it,
so no float ever chooses a CDF (DESIGN decision 2).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stereodsc.bundle import Codec, Latent, QualityPoint
from stereodsc.entropy import CdfTables, IntegerScaleNet, channel_indexes
from stereodsc.errors import BundleError


@functools.lru_cache(maxsize=16)
def latent_indexes(shape: tuple[int, int, int]) -> np.ndarray:
    """Table row of every symbol of a factorized latent (one row per channel), shared read-only."""
    indexes = channel_indexes(shape)
    indexes.setflags(write=False)
    return indexes


@dataclass(frozen=True)
class Coding:
    """CDF tables per latent and an integer scale net per conditioned latent, checked against each other."""

    latents: tuple[Latent, ...]  # in wire-segment order
    tables: Mapping[str, CdfTables]
    scale_nets: Mapping[str, IntegerScaleNet]

    def rows(self, latent: Latent, shape: tuple[int, int, int], coded: Mapping[str, np.ndarray]) -> np.ndarray:
        """Table row of every symbol of `latent` ([C, h, w] `shape`), given the latents coded before it.

        `coded` maps earlier latents to their int32 symbols [C, h, w]: on the edge those it encoded,
        on the host those it decoded, which are the same integers, hence the same rows.
        """
        if latent.conditioned_on is None:
            return latent_indexes(shape)
        rows = self.scale_nets[latent.name].indexes(coded[latent.conditioned_on])
        if rows.shape != shape:
            raise BundleError(
                f"the scale net of {latent.name} gave rows {rows.shape} for {latent.conditioned_on} "
                f"{coded[latent.conditioned_on].shape}, expected {shape}: the bundle is inconsistent; re-export it"
            )
        return rows


def load_coding(codec: Codec, point: QualityPoint) -> Coding:
    """Load one quality's tables and scale nets and check they fit the codec's latents.

    Raises BundleError for a bundle whose files do not fit its manifest (and the table / scale net
    format errors, BitstreamErrors, for damaged files).
    """
    tables = {name: CdfTables.from_npz_bytes(path.read_bytes()) for name, path in point.tables.items()}
    nets = {name: IntegerScaleNet.from_npz_bytes(path.read_bytes()) for name, path in point.scale_paths.items()}
    by_name = {lat.name: lat for lat in codec.latents}

    def bad(msg: str) -> BundleError:
        return BundleError(f"{codec.role} quality {point.index}: {msg}; the bundle is inconsistent, re-export it")

    for lat in codec.latents:
        rows = tables[lat.name].num_rows
        if lat.conditioned_on is None:
            if rows != lat.channels:
                raise bad(f"{lat.name} has {lat.channels} channels but its tables have {rows} rows")
            continue
        net, given = nets[lat.name], by_name[lat.conditioned_on]
        if (net.latent_channels, net.channels) != (given.channels, lat.channels):
            raise bad(
                f"the scale net maps {net.latent_channels} -> {net.channels} channels, the latents are "
                f"{given.name} ({given.channels}) -> {lat.name} ({lat.channels})"
            )
        if net.levels != rows:
            raise bad(f"the scale net picks among {net.levels} rows, {lat.name}'s tables have {rows}")
    return Coding(codec.latents, tables, nets)
