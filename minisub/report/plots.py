"""One figure style for the whole project: paper-ready, TrueType fonts, byte-reproducible files.

The style lives in ``minisub.mplstyle`` beside this module (``STYLE_FILE``; also usable as
``matplotlib.style.use(plots.STYLE_FILE)``). Nothing here changes matplotlib's global state:
``styled``, ``figure`` and ``save`` apply the style inside ``rc_context`` only, and no backend is
chosen, so importing minisub leaves a notebook's settings alone.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

STYLE_FILE = Path(__file__).with_name("minisub.mplstyle")  # the one source of the style
STYLE = dict(matplotlib.rc_params_from_file(STYLE_FILE, use_default_template=False))
PALETTE = tuple("#" + c.lstrip("#").upper() for c in STYLE["axes.prop_cycle"].by_key()["color"])


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
