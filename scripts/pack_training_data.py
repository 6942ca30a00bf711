"""Pack a subset of ../shared/data's native-mix training pairs small enough to travel to a lent GPU
machine (its working-tree transfer is capped at 64 MiB, the repository takes ~40 of them).

Writes ``<out>/<source>_<name>_L.jpg`` / ``_R.jpg`` (JPEG quality 95, 4:4:4: ~38 dB on KITTI, far
above the ~32 dB the top rate point aims at) for a [data] kind = "folder" config: every 8th training
frame of the KITTI drive, frames 0 and 8 of each training odometry sequence, every training
Middlebury and SID pair. None of the native mix's held-out pairs is packed for training; two of them
(a drive frame and an odometry pair) are packed as ``zz_val_*`` so that a folder config's last
``val_frames = 2`` pairs give a small validation on the GPU. The full held-out evaluation runs
afterwards on the lossless originals (``benchmarks/rd_native.py``).

    python scripts/pack_training_data.py --out .gpudata/pairs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from stereodsc.train.datasets import MIX_SOURCES, folder_sequence, held_out_names, kitti_raw_sequence

JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
DRIVE_EVERY = 8  # neighbouring drive frames are near copies
ODOMETRY_FRAMES = ("000000", "000008")
VALIDATION = {"kitti_drive": "0000000100", "kitti_odometry": "seq09_000004"}


def source_pairs(root: Path, key: str) -> dict[str, tuple[Path, Path]]:
    """name -> (left, right) of one data set of the mix."""
    folder = root / MIX_SOURCES[key].folder
    seq = kitti_raw_sequence(folder) if key == "kitti_drive" else folder_sequence(folder)
    return {left.stem.removesuffix("_L"): (left, right) for left, right in zip(seq.left, seq.right, strict=True)}


def chosen(key: str, names: list[str], held: set[str]) -> list[str]:
    """The training pairs of one data set that travel."""
    train = [n for n in names if n not in held]
    if key == "kitti_drive":
        return train[::DRIVE_EVERY]
    if key == "kitti_odometry":
        return [n for n in train if n.endswith(ODOMETRY_FRAMES)]
    return train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path(".gpudata/pairs"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for key, source in MIX_SOURCES.items():
        pairs = source_pairs(args.data, key)
        held = held_out_names(args.data / source.folder) or set()
        jobs = [(f"{key}_{n}", pairs[n]) for n in chosen(key, sorted(pairs), held)]
        if key in VALIDATION:
            jobs.append((f"zz_val_{key}_{VALIDATION[key]}", pairs[VALIDATION[key]]))
        for name, (left, right) in jobs:
            for path, side in ((left, "L"), (right, "R")):
                target = args.out / f"{name}_{side}.jpg"
                cv2.imwrite(str(target), cv2.imread(str(path), cv2.IMREAD_COLOR), JPEG)
                total += target.stat().st_size
        print(f"{key}: {len(jobs)} pairs")
    print(f"{total / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
