"""One figure style for the whole project: paper-ready, TrueType fonts, byte-reproducible files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # TrueType, editable text in the PDF
    "ps.fonttype": 42,
    "svg.hashsalt": "minisub",
}
PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")


def figure(width: float = 6.0, height: float = 3.2, **kw):
    with plt.rc_context(STYLE):
        return plt.subplots(figsize=(width, height), **kw)


def save(fig, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf without timestamps (same data, same bytes)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context(STYLE):
        for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Creator": None, "Producer": None})):
            path = stem.with_suffix("." + ext)
            fig.savefig(path, metadata=meta)
            paths.append(path)
    plt.close(fig)
    return paths
