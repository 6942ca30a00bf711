"""Stereo rig calibration (chessboard), rectification maps, and rig import from KITTI / OpenCV files.

numpy + OpenCV only (no torch): the camera node imports this to rectify frames before encoding.
"""

from stereodsc.calibration.check import CheckReport, check_rectification
from stereodsc.calibration.chessboard import (
    CalibrationReport,
    RejectedView,
    ViewError,
    calibrate_stereo,
    find_corners,
    parse_board,
    paths_from_glob,
)
from stereodsc.calibration.kitti import rig_from_kitti
from stereodsc.calibration.opencv_xml import pairs_from_opencv_imagelist, rig_from_opencv
from stereodsc.calibration.rectify import Rectifier, rectified_rig
from stereodsc.calibration.rig import StereoRig, load_rig

__all__ = [
    "CalibrationReport",
    "CheckReport",
    "Rectifier",
    "RejectedView",
    "StereoRig",
    "ViewError",
    "calibrate_stereo",
    "check_rectification",
    "find_corners",
    "load_rig",
    "pairs_from_opencv_imagelist",
    "parse_board",
    "paths_from_glob",
    "rectified_rig",
    "rig_from_kitti",
    "rig_from_opencv",
]
