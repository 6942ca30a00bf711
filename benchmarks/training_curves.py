"""Validation curves of training runs side by side (e.g. balle2017 vs ndic on the KITTI drive).

    python benchmarks/training_curves.py runs/balle2017_kitti runs/ndic_kitti --out benchmarks/results/training_kitti

Reads each run's metrics.jsonl; writes <out>.json (the points) and <out>.png (rd loss, bpp and PSNR
against steps). `rd_loss` = lambda * 255^2 * MSE + bpp of x: the objective both kinds of model share.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

KEYS = (("rd_loss", "validation rate-distortion loss"), ("bpp", "estimated bpp"), ("psnr", "PSNR (dB)"))


def read_run(run: Path) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve: dict[str, list[float]] = {"step": [r["step"] for r in rows], "cpu_seconds": [r["cpu_seconds"] for r in rows]}
    for key, _ in KEYS:
        curve[key] = [r["val"][key] for r in rows]
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training_kitti"))
    args = ap.parse_args()
    curves = {run.name: read_run(run) for run in args.runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(curves, indent=1))
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(KEYS):
        ax = fig.add_subplot(1, len(KEYS), i + 1)
        for name, curve in curves.items():
            ax.plot(curve["step"], curve[key], label=name)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    common = sorted(set.intersection(*(set(c["step"]) for c in curves.values())))
    print(f"{'step':>6}" + "".join(f"{name:>28}" for name in curves))
    shown = common[:: max(1, len(common) // 8)] + common[-1:]
    for step in sorted(set(shown)):
        cells = []
        for c in curves.values():
            j = c["step"].index(step)
            cells.append(f"rd {c['rd_loss'][j]:.3f} {c['bpp'][j]:.3f}bpp {c['psnr'][j]:.2f}dB")
        print(f"{step:>6}" + "".join(f"{cell:>28}" for cell in cells))


if __name__ == "__main__":
    main()
