"""Rate-distortion curve plots (PNG), drawn with matplotlib's Agg canvas.

The figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, without
pyplot, so plotting never changes the caller's global backend and works on headless hosts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from stereodsc.eval.rd import CurvePoint, RateKind

_PANELS = (
    ("psnr", "PSNR (dB)", "rd_psnr.png"),
    ("ms_ssim_db", "MS-SSIM (dB, -10 log10(1 - MS-SSIM))", "rd_ms_ssim.png"),
)


def plot_rd_curves(
    curves: Mapping[str, Sequence[CurvePoint]],
    out_dir: str | Path,
    anchors: Collection[str] = (),
    rate: RateKind = "payload",
    title: str = "Rate-distortion",
    max_bpp: float | None = None,
) -> list[Path]:
    """Write ``rd_psnr.png`` and ``rd_ms_ssim.png`` to ``out_dir``: one line per method.

    ``curves`` is ``rd.aggregate(records)``; methods named in ``anchors`` are drawn dashed.
    ``max_bpp`` limits the rate axis (the papers plot 0-0.5 bpp; the anchor sweeps reach several
    bpp). Returns the paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, label, filename in _PANELS:
        fig = Figure(figsize=(7.0, 5.0), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for method, points in curves.items():
            pts = sorted((p for p in points if max_bpp is None or p.rate(rate) <= max_bpp), key=lambda p: p.rate(rate))
            ax.plot(
                [p.rate(rate) for p in pts],
                [getattr(p, metric) for p in pts],
                linestyle="--" if method in anchors else "-",
                marker="o",
                markersize=3,
                label=method,
            )
        if max_bpp is not None:
            ax.set_xlim(0.0, max_bpp)
        ax.set_xlabel(f"{rate} bits per pixel")
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label.split(' (')[0]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        paths.append(path)
    return paths
