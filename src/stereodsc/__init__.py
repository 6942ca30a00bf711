"""stereodsc: compress each camera's frame on its own board; decode it on the host with another
camera's frame as side information (distributed source coding, Wyner-Ziv).

    >>> import stereodsc
    >>> data = stereodsc.encode(image, bundle="default", quality=2)   # bytes, as a camera sends them
    >>> stereodsc.decode(data)                                         # uint8 HxWx3 image

`encode` and `decode` are documented in `stereodsc.api`. Importing the package is cheap: no torch,
no onnxruntime until a codec is used. Heavy imports live in the sub-packages that need them
(``models``, ``train``, ``export``, ``eval``).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["decode", "encode"]

if TYPE_CHECKING:
    from stereodsc.api import decode, encode


def __getattr__(name: str) -> Any:
    if name in __all__:
        from stereodsc import api

        return getattr(api, name)
    raise AttributeError(f"module 'stereodsc' has no attribute {name!r}")
