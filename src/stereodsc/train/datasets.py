"""Stereo pair datasets: where pairs come from (KITTI raw drives, KITTI split lists, Cityscapes,
plain folders, the bundled sample, the native-scale mix of ../shared/data), how they are paired
(stereo or time-shifted "general"), and how they are preprocessed and augmented for training.

A pair is (x, side): x is the image the encoder sees, side the decoder's side information. Pairing and
augmentation are pure functions of (seed, step) so a resumed run sees exactly the same data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stereodsc.errors import DataError
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.images import image_files, read_rgb

log = logging.getLogger(__name__)

DATASET_KINDS = ("kitti_raw", "kitti_list", "cityscapes", "folder", "sample", "native_mix")


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


# ---- the native-scale mix of ../shared/data ------------------------------------------------------


@dataclass(frozen=True)
class MixSource:
    """One data set of the native mix: its folder, its share of the training draws, what is held out."""

    folder: str
    weight: float
    held_out: tuple[str, ...]  # pair names (folder sets) or frame names (the drive) never trained on


KITTI_DRIVE = "kitti_raw_2011_09_26_drive_0001"
DRIVE_HELD_OUT = 20  # the drive's last 20 frames: neighbouring frames are near copies, so a block
# The fixed held-out split (also the validation set); written down in the model card.
MIX_SOURCES = {
    "kitti_drive": MixSource(KITTI_DRIVE, 0.4, ()),
    "kitti_odometry": MixSource(
        "kitti_odometry_mini",
        0.3,
        ("seq09_000000", "seq09_000004", "seq09_000008", "seq10_000000", "seq10_000004", "seq10_000008"),
    ),
    "middlebury": MixSource("middlebury2014_trainingQ", 0.2, ("Playroom", "Vintage")),
    "sid": MixSource("sid_mini", 0.1, ("City_Rain_Day_013",)),
}


def mix_source(path: Path) -> str | None:
    """Which data set of the native mix an image belongs to (None: none of them)."""
    return next((key for key, source in MIX_SOURCES.items() if source.folder in path.parts), None)


def held_out_names(folder: Path) -> set[str] | None:
    """The pair names of ``folder`` that the native mix never trains on, or None when ``folder`` is not
    one of the mix's data sets (its name is not a ``MIX_SOURCES`` folder).

    Names are what the pairs are called: a pair folder's ``<name>`` (of ``<name>_L``), the drive's
    frame stem (its last ``DRIVE_HELD_OUT`` frames, read from the folder). One source of truth for
    training (``native_mix_pairs``) and evaluation (``stereodsc eval --held-out``).
    """
    folder = Path(folder)
    key = next((k for k, source in MIX_SOURCES.items() if source.folder == folder.name), None)
    if key is None:
        return None
    if key == "kitti_drive":
        left = kitti_raw_sequence(folder).left
        return {p.stem for p in left[max(0, len(left) - DRIVE_HELD_OUT) :]}
    return set(MIX_SOURCES[key].held_out)


def _named_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """`<name>_L` / `<name>_R` pairs of a folder by name."""
    seq = folder_sequence(folder)
    return {left.stem[:-2]: (left, right) for left, right in zip(seq.left, seq.right, strict=True)}


def native_mix_pairs(root: Path) -> tuple[list[Pair], list[float], list[Pair]]:
    """(training pairs, their draw weights, held-out pairs) of every data set under ``root``.

    Training: both directions of every pair not held out (x = left with side = right, and the
    mirror). Each source gets its ``weight`` of the draws, split evenly over its pairs, so the
    drive's 88 frames do not drown the other cameras. Held out (validation, never trained on): the
    drive's last 20 frames, odometry sequences 09 and 10, Middlebury Playroom and Vintage, SID
    City_Rain_Day_013, each as x = right, side = left (the dependent camera is the right one).
    """
    missing = [s.folder for s in MIX_SOURCES.values() if not (root / s.folder).is_dir()]
    if missing:
        raise DataError(f"native_mix needs {', '.join(missing)} under {root}: point [data] path at ../shared/data")
    train: list[Pair] = []
    weights: list[float] = []
    val: list[Pair] = []
    for key, source in MIX_SOURCES.items():
        folder = root / source.folder
        if key == "kitti_drive":
            seq = kitti_raw_sequence(folder)
            pairs = {left.stem: (left, right) for left, right in zip(seq.left, seq.right, strict=True)}
        else:
            pairs = _named_pairs(folder)
        held = held_out_names(folder) or set()
        unknown = held - set(pairs)
        if unknown:
            raise DataError(f"{folder}: held-out pairs {sorted(unknown)} are missing; the split needs them")
        names = sorted(pairs)
        kept = [name for name in names if name not in held]
        for i, name in enumerate(names):
            left, right = pairs[name]
            if name in held:
                val.append(Pair(right, left, i))
            else:
                train += [Pair(left, right, i), Pair(right, left, i)]
                weights += [source.weight / (2 * len(kept))] * 2
    return train, weights, val


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


SideSource = Callable[[Path, int], np.ndarray]
"""(side image path, draw) -> the side image the decoder gets, e.g. as an intra codec decoded it."""


class PairDataset:
    """Indexable pairs -> (x, side) uint8 arrays; augmentation is drawn from an explicit generator.

    ``weights``: each pair's probability of being drawn in training (None: uniform).
    ``side``: where side images come from (None: the original image files, via the cache); the
    draw passed to it is random in training and the pair's index in validation.
    """

    def __init__(
        self,
        pairs: list[Pair],
        cache: ImageCache,
        augment: Augment | None = None,
        weights: Sequence[float] | None = None,
        side: SideSource | None = None,
    ) -> None:
        if not pairs:
            raise DataError("no pairs: check the dataset path and the validation split")
        if weights is not None and len(weights) != len(pairs):
            raise DataError(f"{len(weights)} weights for {len(pairs)} pairs")
        self.pairs = pairs
        self.cache = cache
        self.augment = augment
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.side = side

    def __len__(self) -> int:
        return len(self.pairs)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Indexes of n training pairs (by ``weights``)."""
        if self.weights is None:
            return rng.integers(len(self.pairs), size=n)
        return rng.choice(len(self.pairs), size=n, p=self.weights)

    def get(self, i: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[i]
        x = self.cache(pair.x)
        if self.side is None:
            side = self.cache(pair.side)
        else:
            side = self.side(pair.side, int(rng.integers(1 << 30)) if rng is not None else i)
        if self.augment is not None and rng is not None:
            x, side = self.augment(x, side, rng)
        return x, side
