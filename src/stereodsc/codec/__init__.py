"""What the camera and the host share to use a bundle identically (torch-free):

- `geometry`: pad to the codec's stride, crop back, image checks, sizes written HxW;
- `roles`: `CodecRole` (intra / side_info) with its wire and camera-config spellings;
- `coding`: the integer tables and table-row selection of one quality (`Coding`);
- `sessions`: the graph session cache;
- `encoder` / `decoder`: `EdgeEncoder` and `HostDecoder`, each reporting per-stage timings.
"""

from stereodsc.codec.decoder import Decoded, HostDecoder, SideImageError, UndecodableFrameError
from stereodsc.codec.encoder import EdgeEncoder, Encoded
from stereodsc.codec.geometry import MAX_PIXELS, crop, pad, padded_size
from stereodsc.codec.roles import CodecRole

__all__ = [
    "MAX_PIXELS",
    "CodecRole",
    "Decoded",
    "EdgeEncoder",
    "Encoded",
    "HostDecoder",
    "SideImageError",
    "UndecodableFrameError",
    "crop",
    "pad",
    "padded_size",
]
