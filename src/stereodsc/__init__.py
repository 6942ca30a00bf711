"""stereodsc: compress each camera's frame on its own board; decode it on the host with another
camera's frame as side information (distributed source coding, Wyner-Ziv).

Importing the package is cheap: no torch, no onnxruntime. Heavy imports live in the sub-packages
that need them (``models``, ``train``, ``export``, ``eval``).
"""

__version__ = "0.1.0"
