"""One figure style for the whole project: paper-ready, TrueType fonts, byte-reproducible files."""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

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


def styled(fn):
    """Run a figure function inside the project's style, so its titles, legends and ticks get it too.

    rcParams are read when an artist is made, so the style must be active for the whole function,
    not only while the axes are created.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kw)

    return wrapper


def figure(width: float = 6.0, height: float = 3.2, **kw):
    """(Figure, axes) without pyplot: no backend is chosen or changed, and nothing global is kept."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        return fig, fig.subplots(**kw)


def save(fig, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf without timestamps (same data, same bytes)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(STYLE):
        for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Creator": None, "Producer": None})):
            path = stem.with_suffix("." + ext)
            fig.savefig(path, metadata=meta)
            paths.append(path)
    return paths
