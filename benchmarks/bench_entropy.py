"""Throughput and size overhead of the numba rANS coder on one core.

Workload: a factorized-prior latent of 96 channels x 80 x 128 (983,040 symbols) drawn from rounded
Laplace distributions whose scale varies per channel, coded with 16-bit tables of the matching
discretised Laplace (+-40, the rest escapes). Two rate regimes: "mixed" (scales 0.1-8, ~1.7
bits/symbol) and "low rate" (scales 0.02-1, most symbols 0, like a learned codec near 0.02-0.1 bpp).
The JIT warm-up is excluded; throughput is the median (and best) over repeats of whole
`encode`/`decode` calls.

Targets (DESIGN decision 1): >= 50 M symbols/s encode, >= 20 M symbols/s decode, size within
0.1 % + 8 bytes of `ideal_bits / 8`. Writes benchmarks/results/entropy_coder.json.

    python benchmarks/bench_entropy.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import machine_info
from stereodsc.entropy import CdfTables, build_tables, channel_indexes, decode, encode, ideal_bits

SHAPE = (96, 80, 128)
HALF = 40
RESULT = Path(__file__).parent / "results" / "entropy_coder.json"


def laplace_tables(scales: np.ndarray) -> CdfTables:
    x = np.arange(-HALF, HALF + 1)[None, :]
    b = scales[:, None]

    def cdf(t: np.ndarray) -> np.ndarray:
        return np.where(t < 0, 0.5 * np.exp(np.minimum(t, 0) / b), 1 - 0.5 * np.exp(-np.maximum(t, 0) / b))

    return build_tables(cdf(x + 0.5) - cdf(x - 0.5), np.full(scales.size, -HALF), precision=16)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, best) seconds: the best is less disturbed by neighbours on a shared machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def run_case(name: str, scales: np.ndarray, repeats: int, rng: np.random.Generator) -> dict[str, object]:
    tables = laplace_tables(scales)
    symbols = np.round(rng.laplace(0.0, scales[:, None, None], SHAPE)).astype(np.int32)
    indexes = channel_indexes(SHAPE)
    n = symbols.size
    payload = encode(symbols, indexes, tables)  # JIT warm-up (and the table caches) outside the timing
    assert np.array_equal(decode(payload, indexes, tables), symbols), "round trip failed"
    t_enc, best_enc = timed(lambda: encode(symbols, indexes, tables), repeats)
    t_dec, best_dec = timed(lambda: decode(payload, indexes, tables), repeats)
    ideal_bytes = ideal_bits(symbols, indexes, tables) / 8
    return {
        "case": name,
        "symbols": n,
        "escapes": int(((symbols < -HALF) | (symbols > HALF)).sum()),
        "bits_per_symbol": 8 * len(payload) / n,
        "payload_bytes": len(payload),
        "ideal_bytes": ideal_bytes,
        "overhead_bytes": len(payload) - ideal_bytes,
        "overhead_percent": 100 * (len(payload) - ideal_bytes) / ideal_bytes,
        "within_target": len(payload) <= ideal_bytes * 1.001 + 8,
        "encode_median_s": t_enc,
        "decode_median_s": t_dec,
        "encode_msym_per_s": n / t_enc / 1e6,
        "decode_msym_per_s": n / t_dec / 1e6,
        "encode_best_msym_per_s": n / best_enc / 1e6,
        "decode_best_msym_per_s": n / best_dec / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = [
        run_case("mixed", np.geomspace(0.1, 8.0, SHAPE[0]), args.repeats, rng),
        run_case("low_rate", np.geomspace(0.02, 1.0, SHAPE[0]), args.repeats, rng),
    ]
    result = {
        "benchmark": "stereodsc.entropy rANS, one core",
        "workload": f"latent {SHAPE}, one 16-bit discretised-Laplace table per channel, +-{HALF} then escape",
        "repeats": args.repeats,
        "machine": machine_info(),
        "targets": {"encode_msym_per_s": 50, "decode_msym_per_s": 20, "overhead": "0.1 % + 8 bytes"},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'case':<10} {'bits/sym':>8} {'enc Msym/s':>10} {'dec Msym/s':>10} {'overhead':>18}")
    for c in cases:
        overhead = f"{c['overhead_bytes']:.1f} B ({c['overhead_percent']:.4f} %)"
        print(
            f"{c['case']:<10} {c['bits_per_symbol']:>8.3f} {c['encode_msym_per_s']:>10.1f} "
            f"{c['decode_msym_per_s']:>10.1f} {overhead:>18}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
