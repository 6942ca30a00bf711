"""A checkpoint where a bundle is expected: exported to a temporary bundle for the time it is used."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stereodsc.bundle import Bundle, load_bundle
from stereodsc.errors import BundleError


@contextlib.contextmanager
def open_model(path: str | Path, size: tuple[int, int]) -> Iterator[Bundle]:
    """A bundle folder, or a training checkpoint exported on the fly to a temporary bundle.

    `size` is the (unpadded) image size to code; fixed-size graphs are exported for it. The
    on-the-fly export skips the parity check and is deterministic, so the same checkpoint and size
    give the same bundle id where a frame is encoded and where it is decoded (same torch / onnx
    versions): the convenience path for trying a checkpoint; deploy an exported bundle otherwise.
    """
    path = Path(path)
    if path.is_dir():
        yield load_bundle(path)
        return
    if not path.is_file():
        raise BundleError(f"{path}: neither a bundle folder nor a checkpoint file")
    from stereodsc.export.exporter import export_bundle

    with tempfile.TemporaryDirectory(prefix="stereodsc-bundle-") as tmp:
        report = export_bundle([path], Path(tmp) / "bundle", sample_images=[], sizes=[size], progress=False)
        yield load_bundle(report.bundle)
