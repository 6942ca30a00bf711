"""The host side: receive wire frames, validate them, pair dependents with references, decode, deliver.

Importing this package stays light (no torch, no onnxruntime): the pairing logic is pure Python.
"""

from stereodsc.host_decoder.pairing import (
    DecodeDependent,
    DecodeReference,
    Dropped,
    Event,
    Pairer,
    PairingPolicy,
    PairingStats,
    Reason,
    ReleaseReference,
)

__all__ = [
    "DecodeDependent",
    "DecodeReference",
    "Dropped",
    "Event",
    "Pairer",
    "PairingPolicy",
    "PairingStats",
    "Reason",
    "ReleaseReference",
]
