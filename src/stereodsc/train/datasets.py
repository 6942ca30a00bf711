"""Stereo pair datasets: where pairs come from (KITTI raw drives, KITTI split lists, Cityscapes,
plain folders, the bundled sample), how they are paired (stereo or time-shifted "general"), and how
they are preprocessed and augmented for training.

A pair is (x, side): x is the image the encoder sees, side the decoder's side information. Pairing and
augmentation are pure functions of (seed, step) so a resumed run sees exactly the same data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stereodsc.errors import DataError
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.images import image_files, read_rgb

log = logging.getLogger(__name__)

DATASET_KINDS = ("kitti_raw", "kitti_list", "cityscapes", "folder", "sample")


@dataclass(frozen=True)
class Pair:
    """One training example: x is encoded, side is the decoder's side information."""

    x: Path
    side: Path
    frame: int  # time index of x within its sequence (used for train/validation splits)


@dataclass(frozen=True)
class StereoSequence:
    """Frames of a synchronised stereo sequence, in time order (left[i] and right[i] are simultaneous)."""

    left: tuple[Path, ...]
    right: tuple[Path, ...]


def kitti_raw_sequence(drive: Path) -> StereoSequence:
    """A KITTI raw drive folder: image_02/data (left colour) and image_03/data (right colour)."""
    left_dir, right_dir = drive / "image_02" / "data", drive / "image_03" / "data"
    for d in (left_dir, right_dir):
        if not d.is_dir():
            raise DataError(f"{drive} is not a KITTI raw drive: missing {d.relative_to(drive)}/")
    left, right = image_files(left_dir), image_files(right_dir)
    if [p.name for p in left] != [p.name for p in right]:
        raise DataError(f"{drive}: image_02 and image_03 hold different frame names; re-extract the drive")
    return StereoSequence(tuple(left), tuple(right))


def folder_sequence(folder: Path) -> StereoSequence:
    """A plain folder of `<name>_L.<ext>` / `<name>_R.<ext>` pairs, in name order."""
    if not folder.is_dir():
        raise DataError(f"pair folder not found: {folder}")
    lefts = {p.stem[:-2]: p for p in image_files(folder) if p.stem.endswith("_L")}
    rights = {p.stem[:-2]: p for p in image_files(folder) if p.stem.endswith("_R")}
    unmatched = sorted(set(lefts) ^ set(rights))
    if unmatched:
        raise DataError(f"{folder}: no partner for {unmatched[:5]}: every <name>_L needs a <name>_R")
    if not lefts:
        raise DataError(f"{folder}: no <name>_L.<ext> / <name>_R.<ext> pairs found")
    names = sorted(lefts)
    return StereoSequence(tuple(lefts[n] for n in names), tuple(rights[n] for n in names))


def cityscapes_sequence(root: Path, split: str) -> StereoSequence:
    """Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with the matching rightImg8bit."""
    left_root = root / "leftImg8bit" / split
    if not left_root.is_dir():
        raise DataError(f"{root} is not a Cityscapes root: missing leftImg8bit/{split}/")
    left = sorted(left_root.glob("*/*_leftImg8bit.png"))
    right = [
        root / "rightImg8bit" / split / p.parent.name / p.name.replace("_leftImg8bit", "_rightImg8bit") for p in left
    ]
    missing = [p for p in right if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} right images missing, e.g. {missing[0]}; extract rightImg8bit too")
    return StereoSequence(tuple(left), tuple(right))


def kitti_list_pairs(list_file: Path, root: Path) -> list[Pair]:
    """The reference repos' split lists: relative paths, two consecutive lines form an (x, side) pair."""
    if not list_file.is_file():
        raise DataError(f"split list not found: {list_file}")
    lines = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
    if len(lines) % 2:
        raise DataError(f"{list_file}: odd number of lines ({len(lines)}); lines must come in (x, side) pairs")
    return [Pair(root / lines[i], root / lines[i + 1], i // 2) for i in range(0, len(lines), 2)]


def make_pairs(
    seq: StereoSequence,
    pairing: str = "stereo",
    max_shift: int = 3,
    both_directions: bool = True,
    frames: Sequence[int] | None = None,
) -> list[Pair]:
    """Pair frames of a sequence.

    "stereo": x = left[t], side = right[t] (synchronised, calibrated: KITTI Stereo).
    "general": x = left[t], side = right[t+k] for 1 <= |k| <= max_shift (unsynchronised: KITTI General).
    both_directions adds the mirrored pairs (x from the right camera, side from the left).
    """
    if pairing not in ("stereo", "general"):
        raise DataError(f"unknown pairing {pairing!r}: use 'stereo' or 'general'")
    n = len(seq.left)
    ts = range(n) if frames is None else frames
    shifts = [0] if pairing == "stereo" else [k for k in range(-max_shift, max_shift + 1) if k]
    pairs: list[Pair] = []
    for t in ts:
        for k in shifts:
            if 0 <= t + k < n and (frames is None or t + k in frames):
                pairs.append(Pair(seq.left[t], seq.right[t + k], t))
                if both_directions:
                    pairs.append(Pair(seq.right[t], seq.left[t + k], t))
    return pairs


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop (same place in x and side), joint flip, view swap."""

    crop: tuple[int, int] | None = None
    flip: bool = True
    swap: bool = True

    def __call__(self, x: np.ndarray, side: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.crop is not None:
            ch, cw = self.crop
            h, w = x.shape[:2]
            if side.shape != x.shape:
                raise DataError(f"x and side differ in size ({x.shape} vs {side.shape}); cannot crop jointly")
            if ch > h or cw > w:
                raise DataError(f"crop {ch}x{cw} is larger than the images ({h}x{w}); lower data.crop")
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            x, side = x[top : top + ch, left : left + cw], side[top : top + ch, left : left + cw]
        if self.flip and rng.random() < 0.5:
            x, side = x[:, ::-1], side[:, ::-1]
        if self.swap and rng.random() < 0.5:
            x, side = side, x
        return np.ascontiguousarray(x), np.ascontiguousarray(side)


class ImageCache:
    """Decoded, preprocessed images kept in memory: a drive is small and is read every epoch."""

    def __init__(self, protocol: str = "paper") -> None:
        if protocol not in ("paper", "native"):
            raise DataError(f"unknown protocol {protocol!r}: use 'paper' (128x256) or 'native'")
        self.protocol = protocol
        self._images: dict[Path, np.ndarray] = {}

    def __call__(self, path: Path) -> np.ndarray:
        img = self._images.get(path)
        if img is None:
            img = read_rgb(path)
            if self.protocol == "paper":
                img = paper_protocol(img)
            self._images[path] = img
        return img


class PairDataset:
    """Indexable pairs -> (x, side) uint8 arrays; augmentation is drawn from an explicit generator."""

    def __init__(self, pairs: list[Pair], cache: ImageCache, augment: Augment | None = None) -> None:
        if not pairs:
            raise DataError("no pairs: check the dataset path and the validation split")
        self.pairs = pairs
        self.cache = cache
        self.augment = augment

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, i: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[i]
        x, side = self.cache(pair.x), self.cache(pair.side)
        if self.augment is not None and rng is not None:
            x, side = self.augment(x, side, rng)
        return x, side
