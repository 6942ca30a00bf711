"""Entropy coding for edge and host: integer CDF tables + a numba rANS coder (numpy + numba, no torch).

Tables are quantised once at export (`build_tables`) and shipped as integers (`CdfTables`); `encode`
and `decode` only read those integers, so a camera board and a host produce and accept the same bytes.
"""

from .rans import CorruptPayloadError, decode, encode, ideal_bits
from .scale_path import IntegerScaleNet as IntegerScaleNet
from .tables import MAX_PRECISION, CdfTables, TableFormatError, build_tables, channel_indexes

__all__ = [
    "MAX_PRECISION",
    "CdfTables",
    "CorruptPayloadError",
    "TableFormatError",
    "build_tables",
    "channel_indexes",
    "decode",
    "encode",
    "ideal_bits",
]
