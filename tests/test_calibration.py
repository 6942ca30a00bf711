"""Calibration, rig files, rectification, KITTI/OpenCV import and the rectification check.

Synthetic chessboard views are rendered from known cameras: every pixel is supersampled 3x3,
its ray undistorted exactly (iterative, to 1e-12) and intersected with the board plane, so the
images carry the true lens distortion and anti-aliased edges the detector refines to sub-pixel.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from stereodsc.calibration import (
    CalibrationReport,
    Rectifier,
    StereoRig,
    calibrate_stereo,
    check_rectification,
    find_corners,
    load_rig,
    pairs_from_opencv_imagelist,
    parse_board,
    paths_from_glob,
    rectified_rig,
    rig_from_kitti,
    rig_from_opencv,
)
from stereodsc.calibration.kitti import read_kitti_calib
from stereodsc.errors import CalibrationError, ConfigError, DataError


def _shared_data() -> Path:
    env = os.environ.get("STEREODSC_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED = _shared_data()
OPENCV_SET = SHARED / "opencv_stereo_chessboard"
KITTI_DRIVE = SHARED / "kitti_raw_2011_09_26_drive_0001"

# ---------------------------------------------------------------- synthetic rig and renderer

W, H = 640, 480
K_L = np.array([[610.0, 0.0, 322.0], [0.0, 605.0, 238.0], [0.0, 0.0, 1.0]])
D_L = np.array([-0.12, 0.06, 0.0008, -0.0005, 0.0])
K_R = np.array([[600.0, 0.0, 318.0], [0.0, 598.0, 243.0], [0.0, 0.0, 1.0]])
D_R = np.array([-0.10, 0.04, -0.0004, 0.0006, 0.0])
R_LR = cv2.Rodrigues(np.array([0.004, -0.012, 0.003]))[0]  # X_right = R_LR @ X_left + T_LR
T_LR = np.array([-0.1, 0.002, 0.0015])  # right camera 10 cm to the right of the left one
BOARD = (9, 6)
SQUARE = 0.025
SUPERSAMPLE = 3
# Board poses in the left camera: (rx, ry, rz) degrees, board centre (x, y, z) metres.
POSES = [
    ((0, 0, 0), (0.05, 0.00, 0.55)),
    ((25, 0, 5), (0.05, -0.02, 0.60)),
    ((-25, 0, -5), (0.06, 0.02, 0.60)),
    ((0, 25, 0), (0.02, 0.00, 0.60)),
    ((0, -25, 10), (0.08, 0.00, 0.60)),
    ((20, 20, 0), (0.02, -0.03, 0.65)),
    ((-20, 20, -10), (0.08, 0.03, 0.65)),
    ((20, -20, 15), (0.05, 0.04, 0.70)),
    ((-20, -25, 0), (0.05, -0.04, 0.60)),
    ((10, -10, -15), (0.04, 0.03, 0.50)),
]


@functools.cache
def _rays(which: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalised, undistorted ray (x, y) of every sub-sample of every pixel of one camera."""
    K, D = (K_L, D_L) if which == "left" else (K_R, D_R)
    s = SUPERSAMPLE
    ys, xs = np.mgrid[0 : H * s, 0 : W * s].astype(np.float64)
    pix = np.stack([(xs + 0.5) / s - 0.5, (ys + 0.5) / s - 0.5], -1).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-12)
    rays = cv2.undistortPoints(pix, K, D, criteria=crit).reshape(H * s, W * s, 2).astype(np.float32)
    return rays[..., 0].copy(), rays[..., 1].copy()


def _board_pose(angles: tuple[float, float, float], centre: tuple[float, float, float]):
    Rb = cv2.Rodrigues(np.deg2rad(np.array(angles, dtype=np.float64)))[0]
    mid = np.array([(BOARD[0] - 1) / 2 * SQUARE, (BOARD[1] - 1) / 2 * SQUARE, 0.0])
    return Rb, np.array(centre) - Rb @ mid


def _plane_coords(which: str, Rb: np.ndarray, tb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plane coordinates (metres) seen by every sub-sample of camera ``which``."""
    Rc, tc = (np.eye(3), np.zeros(3)) if which == "left" else (R_LR, T_LR)
    Rp, tp = Rc @ Rb, Rc @ tb + tc
    a = np.linalg.inv(np.column_stack([Rp[:, 0], Rp[:, 1], tp])).astype(np.float32)
    x, y = _rays(which)
    w = a[2, 0] * x + a[2, 1] * y + a[2, 2]
    return (a[0, 0] * x + a[0, 1] * y + a[0, 2]) / w, (a[1, 0] * x + a[1, 1] * y + a[1, 2]) / w


def _downsample(img: np.ndarray) -> np.ndarray:
    s = SUPERSAMPLE
    return img.reshape(H, s, W, s).mean(axis=(1, 3))


def render_board(which: str, pose_index: int, seed: int = 0) -> np.ndarray:
    """A grey uint8 view of the chessboard (white margin of one square, grey background)."""
    u, v = (c / SQUARE for c in _plane_coords(which, *_board_pose(*POSES[pose_index])))
    on_paper = (u >= -2) & (u < BOARD[0] + 1) & (v >= -2) & (v < BOARD[1] + 1)
    img = np.where(on_paper, np.float32(225), np.float32(100))
    rows, cols = np.flatnonzero(on_paper.any(axis=1)), np.flatnonzero(on_paper.any(axis=0))
    box = np.s_[max(rows[0] - 2, 0) : rows[-1] + 3, max(cols[0] - 2, 0) : cols[-1] + 3]
    ub, vb = u[box], v[box]
    # Square edges ramp over two sub-samples (sin(pi u) / (pi |grad u|) is the signed distance to
    # the nearest edge in sub-samples), so the 3x3 box average is close to exact area coverage.
    ramp_u = np.clip(np.sin(np.pi * ub) / (np.pi * np.hypot(*np.gradient(ub)) + 1e-12), -1, 1)
    ramp_v = np.clip(np.sin(np.pi * vb) / (np.pi * np.hypot(*np.gradient(vb)) + 1e-12), -1, 1)
    checker = 125.0 - 100.0 * ramp_u * ramp_v  # 25 (dark, the corner squares) .. 225 (white)
    on_squares = (ub >= -1) & (ub < BOARD[0]) & (vb >= -1) & (vb < BOARD[1])
    img[box] = np.where(on_squares, checker, img[box])
    noise = np.random.default_rng(seed + pose_index).normal(0.0, 1.5, (H, W))
    return np.clip(_downsample(img) + noise, 0, 255).astype(np.uint8)


def render_texture(which: str) -> np.ndarray:
    """A BGR view of a tilted, richly textured plane 1.2 m away (for feature matching)."""
    rng = np.random.default_rng(7)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (1200, 1200, 3)).astype(np.float32), (0, 0), 2.0)
    tex = (tex - tex.min()) * (255.0 / (tex.max() - tex.min()))  # stretch the blurred noise
    Rb = cv2.Rodrigues(np.deg2rad(np.array([10.0, -15.0, 0.0])))[0]
    tb = np.array([-0.55, -0.45, 1.2])
    u, v = (c * 1000.0 for c in _plane_coords(which, Rb, tb))  # 1 texel = 1 mm
    big = cv2.remap(tex, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.clip(cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA), 0, 255).astype(np.uint8)


def true_rig() -> StereoRig:
    return rectified_rig((W, H), K_L, D_L, K_R, D_R, R_LR, T_LR)


@pytest.fixture(scope="module")
def synthetic_views(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    folder = tmp_path_factory.mktemp("chessboard")
    lefts: list[Path] = []
    rights: list[Path] = []
    for i in range(len(POSES)):
        for which, paths in (("left", lefts), ("right", rights)):
            path = folder / f"{which}{i:02d}.png"
            cv2.imwrite(str(path), render_board(which, i))
            paths.append(path)
    return lefts, rights


@pytest.fixture(scope="module")
def synthetic_report(synthetic_views: tuple[list[Path], list[Path]]) -> CalibrationReport:
    return calibrate_stereo(*synthetic_views, BOARD, SQUARE)


# ---------------------------------------------------------------- synthetic calibration


def test_poses_keep_the_board_inside_both_views() -> None:
    obj = np.mgrid[0 : BOARD[0], 0 : BOARD[1]].T.reshape(-1, 2) * SQUARE
    obj3 = np.column_stack([obj, np.zeros(len(obj))])
    for angles, centre in POSES:
        Rb, tb = _board_pose(angles, centre)
        for Rc, tc, K, D in ((np.eye(3), np.zeros(3), K_L, D_L), (R_LR, T_LR, K_R, D_R)):
            pts = (Rc @ (Rb @ obj3.T + tb[:, None]) + tc[:, None]).T
            px = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, D)[0].reshape(-1, 2)
            assert px.min() > 20 and px[:, 0].max() < W - 20 and px[:, 1].max() < H - 20


def test_synthetic_calibration_recovers_cameras_and_baseline(synthetic_report: CalibrationReport) -> None:
    rep, rig = synthetic_report, synthetic_report.rig
    assert len(rep.views) == len(POSES) and not rep.rejected
    for K, K_true in ((rig.K1, K_L), (rig.K2, K_R)):
        assert abs(K[0, 0] / K_true[0, 0] - 1) < 0.005
        assert abs(K[1, 1] / K_true[1, 1] - 1) < 0.005
        assert abs(K[0, 2] - K_true[0, 2]) < 2.0
        assert abs(K[1, 2] - K_true[1, 2]) < 2.0
    assert abs(rig.baseline / np.linalg.norm(T_LR) - 1) < 0.01
    angle = np.rad2deg(np.linalg.norm(cv2.Rodrigues(rig.R @ R_LR.T)[0]))
    assert angle < 0.1
    assert rep.rms < 0.3
    assert rep.row_error_rms < 0.5 and rep.row_error_max < 0.5
    print(
        f"\nsynthetic: RMS {rep.rms:.4f} px, row error RMS {rep.row_error_rms:.4f} "
        f"max {rep.row_error_max:.4f} px; "
        f"fx err {rig.K1[0, 0] / K_L[0, 0] - 1:+.4%} / {rig.K2[0, 0] / K_R[0, 0] - 1:+.4%}, "
        f"fy err {rig.K1[1, 1] / K_L[1, 1] - 1:+.4%} / {rig.K2[1, 1] / K_R[1, 1] - 1:+.4%}, "
        f"cx err {rig.K1[0, 2] - K_L[0, 2]:+.3f} / {rig.K2[0, 2] - K_R[0, 2]:+.3f} px, "
        f"cy err {rig.K1[1, 2] - K_L[1, 2]:+.3f} / {rig.K2[1, 2] - K_R[1, 2]:+.3f} px, "
        f"baseline err {rig.baseline / np.linalg.norm(T_LR) - 1:+.4%}, rotation err {angle:.4f} deg"
    )


def test_recovered_rig_aligns_rows_of_unseen_points(synthetic_report: CalibrationReport) -> None:
    """Points never used for calibration, over the whole field of view, land on the same row."""
    rig = synthetic_report.rig
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(-0.4, 0.5, 500), rng.uniform(-0.3, 0.3, 500), rng.uniform(0.8, 3, 500)])
    pl = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K_L, D_L)[0]
    pr = cv2.projectPoints(pts, cv2.Rodrigues(R_LR)[0], T_LR, K_R, D_R)[0]
    inside = np.all((pl > 0) & (pl < (W, H)) & (pr > 0) & (pr < (W, H)), axis=(1, 2))
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-10)
    rl = cv2.undistortPoints(pl[inside], rig.K1, rig.D1, R=rig.R1, P=rig.P1, criteria=crit)
    rr = cv2.undistortPoints(pr[inside], rig.K2, rig.D2, R=rig.R2, P=rig.P2, criteria=crit)
    dy = np.abs(rl[:, 0, 1] - rr[:, 0, 1])
    assert inside.sum() > 200
    assert np.percentile(dy, 95) < 0.5


def test_rectified_images_put_board_corners_on_the_same_rows(synthetic_report: CalibrationReport) -> None:
    rig = synthetic_report.rig
    rect_l, rect_r = Rectifier.from_rig(rig, "left"), Rectifier.from_rig(rig, "right")
    assert not rect_l.identity
    left = rect_l(render_board("left", 0))
    right = rect_r(render_board("right", 0))
    assert left.dtype == np.uint8 and left.shape == (H, W)
    cl, cr = find_corners(left, BOARD), find_corners(right, BOARD)
    assert cl is not None and cr is not None
    assert np.abs(cl[:, 0, 1] - cr[:, 0, 1]).max() < 0.5


def test_summary_names_every_view(synthetic_report: CalibrationReport) -> None:
    text = synthetic_report.summary()
    assert "left00.png / right00.png" in text and "rectified row error" in text
    assert synthetic_report.rig.rig_id in text


# ---------------------------------------------------------------- rejection and errors


def test_wrong_board_is_rejected_with_the_fix(synthetic_views: tuple[list[Path], list[Path]]) -> None:
    lefts, rights = synthetic_views
    with pytest.raises(CalibrationError, match=r"check --board \(inner corners, columns x rows\)") as err:
        calibrate_stereo(lefts[:2], rights[:2], (8, 6), SQUARE, min_views=2)
    assert "board 8x6 not found in left00.png" in str(err.value)
    assert "not writing a rig" in str(err.value)


def test_bad_views_are_rejected_and_named(synthetic_views: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    lefts, rights = synthetic_views
    for src in (*lefts[:6], *rights[:6]):
        shutil.copy(src, tmp_path / src.name)
    shutil.copy(lefts[0], tmp_path / "left06.png")
    cv2.imwrite(str(tmp_path / "right06.png"), np.full((H, W), 128, np.uint8))  # no board
    (tmp_path / "left07.png").write_bytes(b"not an image")
    shutil.copy(rights[1], tmp_path / "right07.png")
    cv2.imwrite(str(tmp_path / "left08.png"), np.zeros((240, 320), np.uint8))
    shutil.copy(rights[2], tmp_path / "right08.png")
    left, right = paths_from_glob(str(tmp_path / "left*.png")), paths_from_glob(str(tmp_path / "right*.png"))
    rep = calibrate_stereo(left, right, BOARD, SQUARE, min_views=6)
    reasons = {r.left.name: r.reason for r in rep.rejected}
    assert len(rep.views) == 6
    assert reasons["left06.png"].startswith("board 9x6 not found in right06.png: check --board")
    assert reasons["left07.png"] == "left07.png is unreadable (not an image OpenCV can decode)"
    assert reasons["left08.png"] == "left08.png is 320x240, the first view is 640x480"
    assert "rejected left07.png / right07.png" in rep.summary()
    with pytest.raises(CalibrationError, match="only 6 of 9 views usable, need at least 7"):
        calibrate_stereo(left, right, BOARD, SQUARE, min_views=7)


def test_input_errors_say_what_to_do(synthetic_views: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    lefts, rights = synthetic_views
    with pytest.raises(DataError, match="3 left images but 2 right images"):
        calibrate_stereo(lefts[:3], rights[:2], BOARD, SQUARE)
    with pytest.raises(DataError, match="not found"):
        calibrate_stereo([tmp_path / "nope.png"], rights[:1], BOARD, SQUARE)
    with pytest.raises(ConfigError, match="--square"):
        calibrate_stereo(lefts[:1], rights[:1], BOARD, 0.0)
    with pytest.raises(DataError, match="quote the glob"):
        paths_from_glob(str(tmp_path / "*.jpg"))
    assert paths_from_glob(str(lefts[0].parent / "left0[12].png")) == lefts[1:3]
    assert parse_board("9x6") == (9, 6) and parse_board("7X5") == (7, 5)
    for bad in ("9", "nine x six", "1x6"):
        with pytest.raises(ConfigError, match="--board"):
            parse_board(bad)


# ---------------------------------------------------------------- rig files


def test_rig_toml_round_trip_is_exact(tmp_path: Path) -> None:
    rig = true_rig()
    path = rig.save_toml(tmp_path / "rig.toml")
    back = load_rig(path)
    assert back.rig_id == rig.rig_id and len(rig.rig_id) == 16
    assert back.image_size == rig.image_size == back.rectified_size
    for key in ("K1", "D1", "K2", "D2", "R", "T", "R1", "R2", "P1", "P2", "Q"):
        assert np.array_equal(getattr(back, key), getattr(rig, key)), key
    assert not rig.K1.flags.writeable


def test_rig_id_depends_on_every_number() -> None:
    rig = true_rig()
    moved = rectified_rig((W, H), K_L, D_L, K_R, D_R, R_LR, T_LR * 1.001)
    assert moved.rig_id != rig.rig_id
    assert rectified_rig((W, H), K_L, D_L, K_R, D_R, R_LR, T_LR).rig_id == rig.rig_id


def test_bad_rig_files_name_the_key(tmp_path: Path) -> None:
    text = true_rig().save_toml(tmp_path / "rig.toml").read_text()

    def load(body: str) -> StereoRig:
        path = tmp_path / "bad.toml"
        path.write_text(body)
        return load_rig(path)

    t_line = next(line for line in text.splitlines() if line.startswith("T = "))
    with pytest.raises(CalibrationError, match="does not match the rig's numbers"):
        load(text.replace(t_line, "T = [-0.2, 0.0, 0.0]"))
    with pytest.raises(CalibrationError, match=r"T has shape \(2,\), expected 3"):
        load(text.replace(t_line, "T = [-0.2, 0.0]"))
    with pytest.raises(CalibrationError, match="missing key 'T'"):
        load(text.replace(t_line, ""))
    with pytest.raises(CalibrationError, match="image_size must be"):
        load(text.replace("image_size = [640, 480]", "image_size = [640, -1]"))
    with pytest.raises(CalibrationError, match="is not valid TOML"):
        load(text + "\n= broken")
    with pytest.raises(CalibrationError, match="version 2 is not supported"):
        load(text.replace("version = 1", "version = 2"))
    with pytest.raises(CalibrationError, match="run 'stereodsc calibrate'"):
        load_rig(tmp_path / "missing.toml")
    # Deleting rig_id accepts a hand edit: the id is recomputed.
    edited = load("\n".join(line for line in text.splitlines() if not line.startswith("rig_id")))
    assert edited.rig_id == true_rig().rig_id


# ---------------------------------------------------------------- rectifier


def test_rectifier_checks_frames_and_keeps_channels() -> None:
    rect = Rectifier.from_rig(true_rig(), "right")
    frame = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = rect(frame)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert rect(frame[..., :1]).shape == (H, W, 1)
    assert np.array_equal(rect(frame[..., 0]), out[..., 0])
    with pytest.raises(DataError, match="expects a 640x480 frame"):
        rect(np.zeros((480, 641, 3), np.uint8))
    with pytest.raises(DataError, match="uint8"):
        rect(frame.astype(np.float32))
    with pytest.raises(ConfigError, match="'left' or 'right'"):
        Rectifier.from_rig(true_rig(), "middle")  # type: ignore[arg-type]


# ---------------------------------------------------------------- KITTI import


def _kitti_text() -> tuple[str, dict[str, np.ndarray]]:
    """A KITTI-format calib_cam_to_cam.txt built from known cameras, as KITTI's devkit defines it."""
    K_rect = np.array([[700.0, 0.0, 600.0], [0.0, 700.0, 180.0], [0.0, 0.0, 1.0]])
    R00 = cv2.Rodrigues(np.array([0.004, -0.003, 0.008]))[0]
    cams = {
        "00": (np.array([[980.0, 0, 690], [0, 978, 233], [0, 0, 1]]), np.eye(3), np.zeros(3)),
        "02": (
            np.array([[960.0, 0, 696], [0, 957, 224], [0, 0, 1]]),
            cv2.Rodrigues(np.array([0.003, -0.004, 0.005]))[0],
            np.array([0.06, 0.0003, 0.0026]),
        ),
        "03": (
            np.array([[904.0, 0, 695], [0, 902, 224], [0, 0, 1]]),
            cv2.Rodrigues(np.array([0.002, -0.024, 0.017]))[0],
            np.array([-0.473, 0.0055, -0.0052]),
        ),
    }
    fmt = " ".join
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    truth: dict[str, np.ndarray] = {"R_rect_00": R00}
    for name, (K, R, T) in cams.items():
        D = np.array([-0.37, 0.2, 0.001, 0.0005, -0.07])
        R_rect = R00 @ R.T
        t = R00 @ R.T @ T  # rectified camera i sits at -t in rectified camera-0 coordinates
        P = K_rect @ np.column_stack([np.eye(3), t])
        truth |= {f"K_{name}": K, f"D_{name}": D, f"R_{name}": R, f"T_{name}": T, f"P_rect_{name}": P}
        for key, value in (("S", [1392, 512]), ("K", K), ("D", D), ("R", R), ("T", T)):
            lines.append(f"{key}_{name}: " + fmt(f"{v:.12e}" for v in np.ravel(value)))
        lines.append(f"S_rect_{name}: 1.242000e+03 3.750000e+02")
        lines.append(f"R_rect_{name}: " + fmt(f"{v:.12e}" for v in R_rect.ravel()))
        lines.append(f"P_rect_{name}: " + fmt(f"{v:.12e}" for v in P.ravel()))
    return "\n".join(lines) + "\n", truth


def _kitti_projection_matches(rig: StereoRig, calib: dict[str, np.ndarray], a: str, b: str) -> float:
    """Worst difference (px) between rectifying raw projections with the rig and KITTI's formula.

    KITTI's devkit: a point X_0 in camera-0 coordinates lands in rectified image i at
    P_rect_0i @ R_rect_00 @ X_0. The raw rig must rectify raw pixels of camera i to the same place
    (rectified camera i keeps raw camera i's centre, so only the rotation R_rect_0i and the
    intrinsics P_rect_0i[:, :3] matter for where a raw pixel goes).
    """
    rng = np.random.default_rng(0)
    X0 = np.column_stack([rng.uniform(-8, 8, 300), rng.uniform(-2, 2, 300), rng.uniform(6, 40, 300)])
    worst = 0.0
    for name, K, D, R1, P1 in ((a, rig.K1, rig.D1, rig.R1, rig.P1), (b, rig.K2, rig.D2, rig.R2, rig.P2)):
        Xi = X0 @ calib[f"R_{name}"].T + calib[f"T_{name}"]
        raw = cv2.projectPoints(Xi, np.zeros(3), np.zeros(3), K, D)[0]
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
        ours = cv2.undistortPoints(raw, K, D, R=R1, P=P1, criteria=crit).reshape(-1, 2)
        h = (calib[f"P_rect_{name}"] @ np.vstack([calib["R_rect_00"] @ X0.T, np.ones(len(X0))])).T
        worst = max(worst, float(np.abs(ours - h[:, :2] / h[:, 2:]).max()))
    return worst


def test_kitti_import_from_inline_calib(tmp_path: Path) -> None:
    text, truth = _kitti_text()
    path = tmp_path / "calib_cam_to_cam.txt"
    path.write_text(text)
    rig = rig_from_kitti(path)
    stored = read_kitti_calib(path)
    assert np.array_equal(rig.P1, stored["P_rect_02"].reshape(3, 4))
    assert np.array_equal(rig.P2, stored["P_rect_03"].reshape(3, 4))
    assert np.allclose(rig.P2, truth["P_rect_03"], rtol=1e-10, atol=1e-9)
    assert rig.image_size == rig.rectified_size == (1242, 375)
    assert np.allclose(rig.K1, rig.P1[:, :3]) and not rig.D1.any() and np.array_equal(rig.R1, np.eye(3))
    expected_baseline = np.linalg.norm(
        np.linalg.solve(rig.P2[:, :3], rig.P2[:, 3]) - np.linalg.solve(rig.P1[:, :3], rig.P1[:, 3])
    )
    assert rig.baseline == pytest.approx(expected_baseline, rel=1e-12)
    frame = np.zeros((375, 1242, 3), np.uint8)
    assert Rectifier.from_rig(rig, "left").identity and Rectifier.from_rig(rig, "right")(frame) is frame

    raw = rig_from_kitti(path, rectified=False)
    assert raw.image_size == (1392, 512) and raw.rectified_size == (1242, 375)
    assert np.array_equal(raw.P1, rig.P1) and np.array_equal(raw.P2, rig.P2)
    assert raw.baseline == pytest.approx(rig.baseline, rel=1e-9)
    assert _kitti_projection_matches(raw, truth, "02", "03") < 1e-3
    out = Rectifier.from_rig(raw, "left")(np.zeros((512, 1392, 3), np.uint8))
    assert out.shape == (375, 1242, 3)

    with pytest.raises(CalibrationError, match="missing P_rect_03"):
        path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("P_rect_03")))
        rig_from_kitti(path)
    with pytest.raises(CalibrationError, match="not found"):
        rig_from_kitti(tmp_path / "none.txt")


@pytest.mark.shared_data
@pytest.mark.skipif(not KITTI_DRIVE.is_dir(), reason=f"KITTI drive not found at {KITTI_DRIVE}")
def test_kitti_import_reproduces_kitti_rectification() -> None:
    calib_path = KITTI_DRIVE / "calib_cam_to_cam.txt"
    rig = rig_from_kitti(calib_path)
    calib = {
        k: v.reshape({"K": (3, 3), "R": (3, 3), "P": (3, 4)}.get(k[0], (-1,)))
        for k, v in read_kitti_calib(calib_path).items()
    }
    assert np.array_equal(rig.P1, calib["P_rect_02"]) and np.array_equal(rig.P2, calib["P_rect_03"])
    # KITTI's 02/03 baseline is 0.54 m nominal; P_rect gives 0.5327 m between the colour cameras
    # ((P_rect_02[0,3] - P_rect_03[0,3]) / f); -P_rect_03[0,3] / f = 0.4706 m is camera 0 to camera 3.
    f = calib["P_rect_02"][0, 0]
    assert rig.baseline == pytest.approx((calib["P_rect_02"][0, 3] - calib["P_rect_03"][0, 3]) / f, rel=2e-5)
    assert rig.baseline == pytest.approx(0.5327, abs=5e-4)

    raw = rig_from_kitti(calib_path, rectified=False)
    # KITTI's P_rect translation columns sit (0.29, 0.25, 0) mm from R_rect_00 @ R_0i.T @ T_0i for
    # both colour cameras alike (so the baseline is unaffected): f * 0.39 mm / Z = 0.047 px at the
    # nearest test depth of 6 m. Everything else (R_rect, K, D, P_rect[:, :3]) must match exactly.
    assert _kitti_projection_matches(raw, calib, "02", "03") < 0.05
    # OpenCV's own stereoRectify on KITTI's raw K/D/R/T: it picks its own focal length and aligns
    # the x axis with the 02->03 baseline, where KITTI aligns all cameras with camera 0 (0.3 deg
    # apart); the baseline is the invariant, equal to 1e-4 given the file's 7 significant digits.
    ocv = rectified_rig(raw.image_size, raw.K1, raw.D1, raw.K2, raw.D2, raw.R, raw.T)
    assert -ocv.P2[0, 3] / ocv.P2[0, 0] == pytest.approx(rig.baseline, rel=1e-4)

    left = cv2.imread(str(KITTI_DRIVE / "image_02" / "data" / "0000000000.png"))
    assert left is not None
    assert Rectifier.from_rig(rig, "left")(left) is left


# ---------------------------------------------------------------- OpenCV import


def _write_storage(path: Path, entries: Mapping[str, Any]) -> None:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    for key, value in entries.items():
        fs.write(key, value)
    fs.release()


def test_opencv_stereo_calib_files_import(tmp_path: Path) -> None:
    rig = true_rig()
    intr, extr = tmp_path / "intrinsics.yml", tmp_path / "extrinsics.yml"
    _write_storage(intr, {"M1": rig.K1, "D1": rig.D1[None], "M2": rig.K2, "D2": rig.D2[None]})
    _write_storage(
        extr,
        {"R": rig.R, "T": rig.T[:, None], "R1": rig.R1, "R2": rig.R2, "P1": rig.P1, "P2": rig.P2, "Q": rig.Q},
    )
    back = rig_from_opencv(intr, extr, image_size=(W, H))
    assert back.rig_id == rig.rig_id
    with pytest.raises(CalibrationError, match=r"pass image_size=\(width, height\)"):
        rig_from_opencv(intr, extr)
    with pytest.raises(CalibrationError, match="missing R, T"):
        rig_from_opencv(intr, image_size=(W, H))

    only = tmp_path / "stereo.xml"
    _write_storage(
        only,
        {"M1": rig.K1, "D1": rig.D1, "M2": rig.K2, "D2": rig.D2, "R": rig.R, "T": rig.T}
        | {"image_width": W, "image_height": H},
    )
    computed = rig_from_opencv(only)
    assert np.allclose(computed.P2, rig.P2) and np.allclose(computed.R1, rig.R1)
    with pytest.raises(CalibrationError, match="rig_from_opencv"):
        load_rig(only)


def test_opencv_image_list(tmp_path: Path) -> None:
    listing = tmp_path / "list.xml"
    listing.write_text(
        '<?xml version="1.0"?>\n<opencv_storage>\n<imagelist>\n"l1.jpg"\n"r1.jpg"\n"l2.jpg"\n"r2.jpg"\n'
        "</imagelist>\n</opencv_storage>\n"
    )
    assert pairs_from_opencv_imagelist(listing) == (
        [tmp_path / "l1.jpg", tmp_path / "l2.jpg"],
        [tmp_path / "r1.jpg", tmp_path / "r2.jpg"],
    )


# ---------------------------------------------------------------- real chessboard set


@pytest.mark.shared_data
@pytest.mark.skipif(not OPENCV_SET.is_dir(), reason=f"OpenCV chessboard set not found at {OPENCV_SET}")
def test_opencv_chessboard_set_calibrates() -> None:
    lefts, rights = pairs_from_opencv_imagelist(OPENCV_SET / "stereo_calib.xml")
    assert lefts == paths_from_glob(str(OPENCV_SET / "left*.jpg"))
    rep = calibrate_stereo(lefts, rights, BOARD, 1.0)
    print(f"\nOpenCV stereo chessboard set:\n{rep.summary()}")
    assert len(rep.views) == 13 and not rep.rejected
    assert rep.rms < 0.5
    assert rep.row_error_rms < 0.5
    assert rep.rig.image_size == (640, 480)


# ---------------------------------------------------------------- rectification check


def test_check_rectification_measures_rows(tmp_path: Path) -> None:
    rig = true_rig()
    rep = check_rectification(rig, render_texture("left"), render_texture("right"), tmp_path / "check.png")
    print(f"\nsynthetic check: {rep.summary()}")
    assert rep.n_matches > 100
    assert rep.median_abs_dy < 0.3 and rep.p95_abs_dy < 1.0
    out = cv2.imread(str(rep.out_png))
    assert out is not None
    assert out.shape == (H, 2 * W, 3)

    # A rig with a wrong vertical principal point shows up as a row offset.
    shift = np.zeros((3, 4))
    shift[1, 2] = 3.0  # cy of the right view 3 px off
    bad = dataclasses.replace(rig, P2=rig.P2 + shift, rig_id="")
    shifted = check_rectification(bad, render_texture("left"), render_texture("right"), tmp_path / "bad.png")
    assert shifted.median_abs_dy > 2.0 and "recalibrate" in shifted.summary()

    flat = np.full((H, W, 3), 90, np.uint8)
    none = check_rectification(rig, flat, flat, tmp_path / "flat.png")
    assert none.n_matches < 8 and "too few" in none.summary()
    with pytest.raises(DataError, match="cannot read the left image"):
        check_rectification(rig, tmp_path / "missing.png", flat, tmp_path / "x.png")


@pytest.mark.shared_data
@pytest.mark.skipif(not KITTI_DRIVE.is_dir(), reason=f"KITTI drive not found at {KITTI_DRIVE}")
def test_check_rectification_on_kitti(tmp_path: Path) -> None:
    rig = rig_from_kitti(KITTI_DRIVE / "calib_cam_to_cam.txt")
    name = "0000000000.png"
    rep = check_rectification(
        rig,
        KITTI_DRIVE / "image_02" / "data" / name,
        KITTI_DRIVE / "image_03" / "data" / name,
        tmp_path / "k.png",
    )
    print(f"\nKITTI check: {rep.summary()}")
    assert rep.n_matches > 200 and rep.median_abs_dy < 0.5


def test_calibration_never_imports_torch() -> None:
    code = "import sys, stereodsc.calibration; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
