"""Strict reading of one ``.npy`` member of a table file: never unpickles, and checks the header's
shape against the bytes present before allocating, so a tampered file cannot ask for 10^12 entries.
Also the writing of such files (byte-reproducible) and the freezing of the arrays a loaded table
object holds."""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from stereodsc.errors import BitstreamError


def parse_npy(raw: bytes, name: str, dtype: np.dtype, error: type[BitstreamError]) -> np.ndarray:
    """The C-order array of exactly `dtype` in `raw`, in native byte order; `error` on anything else."""
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, got = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, got = np.lib.format.read_array_header_2_0(f)
    else:
        raise error(f"member {name}: unsupported .npy version {version}")
    if got != dtype or fortran:
        raise error(f"member {name} must be C-order {dtype.str} ({dtype.name}), got {got.str}")
    body = raw[f.tell() :]
    if len(body) != dtype.itemsize * math.prod(shape):
        raise error(f"member {name}: header says shape {shape}, data holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def freeze_arrays(obj: Any, fields: Iterable[tuple[str, Any]]) -> None:
    """Replace each (name, dtype) field of the frozen dataclass `obj` by a read-only, C-order,
    native-byte-order copy of that dtype: nothing outside can change a table after it was checked."""
    for name, dtype in fields:
        arr = np.array(getattr(obj, name), dtype=np.dtype(dtype).newbyteorder("="), order="C", copy=True)
        arr.setflags(write=False)
        object.__setattr__(obj, name, arr)


def write_npz(arrays: Iterable[tuple[str, np.ndarray]]) -> bytes:
    """An uncompressed ``.npz`` (`numpy.load` reads it) of the (name, array) pairs in order, with fixed
    zip metadata: equal arrays give equal bytes, so a bundle's hashes do not change on re-export."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays:
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.array(arr, order="C"), allow_pickle=False)  # keeps 0-d
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    return out.getvalue()
