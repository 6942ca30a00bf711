"""Seeded mutation fuzzing of the host's parser and decoder: crashes (must be 0) and hangs.

Valid reference and dependent frames of the sample drive (cropped to --crop, default 64x128, so a
decode takes milliseconds) are mutated: bit flips, truncations, splices of two valid frames, random
bytes (half of them behind the wire magic), a valid header with a mutated payload (CRC recomputed,
so it reaches the decoder), and a valid payload with a mutated header (size, role, quality, ids).
Every input goes through `wire.unpack`; those that parse are decoded (a dependent with the valid
reference image as side information), at most --decode-limit of them (the rest are counted as
``decode_skipped``). A crash is any exception that is not a typed `BitstreamError`.
Writes benchmarks/results/fuzz_host.json.

    python benchmarks/fuzz_host.py [--frames 100000] [--seed 0] [--decode-limit 50000] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import machine_info
from stereodsc.bundle import load_bundle
from stereodsc.bundles import default_bundle
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.edge_encoder.sources import kitti_frames
from stereodsc.errors import BitstreamError
from stereodsc.images import read_rgb
from stereodsc.sample import drive_path
from stereodsc.wire import MAGIC, MAX_DIM, MAX_ID, Frame, Role, unpack

RESULT = Path(__file__).parent / "results" / "fuzz_host.json"


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _mutate_payload(rng: random.Random, payload: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0 and payload:
        return _flip(rng, payload)
    if kind == 1:
        return payload[: rng.randrange(len(payload) + 1)]
    blob = rng.randbytes(rng.randint(1, 64))
    if kind == 2 and payload:
        at = rng.randrange(len(payload))
        return payload[:at] + blob + payload[at + len(blob) :]
    return payload + blob


def mutators(valid: list[Frame]) -> dict[str, Callable[[random.Random], tuple[bytes, Frame]]]:
    """name -> rng -> (input bytes, the valid frame it came from)."""
    packed = [f.pack() for f in valid]

    def pick(rng: random.Random) -> tuple[bytes, Frame]:
        i = rng.randrange(len(valid))
        return packed[i], valid[i]

    def bit_flip(rng: random.Random) -> tuple[bytes, Frame]:
        data, frame = pick(rng)
        return _flip(rng, data), frame

    def truncate(rng: random.Random) -> tuple[bytes, Frame]:
        data, frame = pick(rng)
        return data[: rng.randrange(len(data))], frame

    def splice(rng: random.Random) -> tuple[bytes, Frame]:
        (a, frame), (b, _) = pick(rng), pick(rng)
        return a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :], frame

    def random_bytes(rng: random.Random) -> tuple[bytes, Frame]:
        prefix = MAGIC + bytes([1]) if rng.random() < 0.5 else b""
        return prefix + rng.randbytes(rng.randrange(2048)), valid[0]

    def mutated_payload(rng: random.Random) -> tuple[bytes, Frame]:
        _, frame = pick(rng)
        segs = list(frame.segments)
        i = rng.randrange(len(segs))
        segs[i] = _mutate_payload(rng, segs[i])
        return dataclasses.replace(frame, segments=tuple(segs)).pack(), frame

    def mutated_header(rng: random.Random) -> tuple[bytes, Frame]:
        _, frame = pick(rng)
        field = rng.choice(["height", "width", "role", "quality", "ids", "size"])
        options: dict[str, dict[str, object]] = {
            "height": {"height": rng.randint(1, MAX_DIM)},
            "width": {"width": rng.randint(1, MAX_DIM)},
            "role": {"role": rng.choice(list(Role))},
            "quality": {"quality": rng.randint(0, 255)},
            "ids": {"rig_id": rng.randint(0, MAX_ID), "camera_id": rng.randint(0, MAX_ID)},
            "size": {"height": rng.randint(1, 256), "width": rng.randint(1, 256)},
        }
        return dataclasses.replace(frame, **options[field]).pack(), frame  # type: ignore[arg-type]

    return {
        "bit_flip": bit_flip,
        "truncate": truncate,
        "splice": splice,
        "random_bytes": random_bytes,
        "mutated_payload": mutated_payload,
        "mutated_header": mutated_header,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode-limit", type=int, default=50_000)
    parser.add_argument("--bundle", default="")
    parser.add_argument("--crop", type=int, nargs=2, default=(64, 128), metavar=("H", "W"))
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle or default_bundle())
    h, w = args.crop
    ref_enc, dep_enc = EdgeEncoder(bundle, "intra", 0), EdgeEncoder(bundle, "side_info", 0)
    valid: list[Frame] = []
    for seq in range(2):
        left, right = (read_rgb(kitti_frames(drive_path(), c)[0][seq])[:h, :w] for c in ("left", "right"))
        valid.append(ref_enc.frame(ref_enc.encode(left), rig_id=1, camera_id=0, seq=seq, t_capture_ns=seq))
        valid.append(dep_enc.frame(dep_enc.encode(right), rig_id=1, camera_id=1, seq=seq, t_capture_ns=seq))
    decoder = HostDecoder(bundle)
    side = {f.seq: decoder.decode(f).image for f in valid if f.role == Role.REFERENCE}

    rng = random.Random(args.seed)
    muts = mutators(valid)
    names = list(muts)
    outcomes: Counter[str] = Counter()
    by_mutation: dict[str, Counter[str]] = {n: Counter() for n in names}
    crashes: list[dict[str, str]] = []
    max_parse_s = max_decode_s = 0.0
    slowest: dict[str, object] = {}
    decoded = 0
    started = time.perf_counter()
    for i in range(args.frames):
        name = names[i % len(names)]
        data, origin = muts[name](rng)
        t0 = time.perf_counter()
        try:
            frame = unpack(data, expected_bundle=bundle.id_bytes)
            outcome = "parsed"
        except BitstreamError as e:
            outcome = f"rejected:{type(e).__name__}"
        except Exception as e:  # a crash is what this looks for
            outcome = f"crash:parse:{type(e).__name__}"
            crashes.append({"mutation": name, "stage": "parse", "data": data.hex()[:512], "tb": traceback.format_exc()})
        max_parse_s = max(max_parse_s, time.perf_counter() - t0)
        if outcome == "parsed":
            if decoded >= args.decode_limit:
                outcome = "decode_skipped"
            else:
                decoded += 1
                ref_image = side[origin.seq] if frame.role == Role.DEPENDENT else None
                t0 = time.perf_counter()
                try:
                    decoder.decode(frame, ref_image)
                    outcome = "decoded"
                except BitstreamError as e:
                    outcome = f"decode_error:{type(e).__name__}"
                except Exception as e:
                    outcome = f"crash:decode:{type(e).__name__}"
                    crashes.append(
                        {"mutation": name, "stage": "decode", "data": data.hex()[:512], "tb": traceback.format_exc()}
                    )
                took = time.perf_counter() - t0
                if took > max_decode_s:
                    max_decode_s = took
                    slowest = {"mutation": name, "height": frame.height, "width": frame.width, "outcome": outcome}
        outcomes[outcome] += 1
        by_mutation[name][outcome] += 1
    elapsed = time.perf_counter() - started

    result = {
        "frames": args.frames,
        "seed": args.seed,
        "bundle": bundle.id[:16],
        "crop": [h, w],
        "decode_limit": args.decode_limit,
        "decoded_or_attempted": decoded,
        "crashes": len(crashes),
        "crash_samples": crashes[:5],
        "outcomes": dict(sorted(outcomes.items())),
        "by_mutation": {n: dict(sorted(c.items())) for n, c in by_mutation.items()},
        "max_parse_ms": round(max_parse_s * 1e3, 3),
        "max_decode_ms": round(max_decode_s * 1e3, 3),
        "slowest_decode": slowest,
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("by_mutation", "crash_samples")}, indent=2))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
