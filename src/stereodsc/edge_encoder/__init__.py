"""The camera side: sources, rectification, encoding and the camera node daemon. No torch.

- ``encoder``: `EdgeEncoder` (uint8 image -> edge graph -> rANS -> wire frame) and `encode_file`.
- ``sources``: cameras, video files, image folders, KITTI drives, the bundled sample.
- ``daemon``: the camera node (capture -> rectify -> encode -> send).

Importing this package loads nothing heavy; import the sub-module you need.
"""
