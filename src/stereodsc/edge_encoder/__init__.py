"""The camera side: sources, rectification, encoding and the camera node daemon. No torch.

- ``sources``: cameras, video files, image folders, KITTI drives, the bundled sample.
- ``daemon``: the camera node (capture -> rectify -> encode -> send).

Importing this package loads nothing heavy; import the sub-module you need.
"""
