"""Mean lines with 95% interval bands from summary statistics (``mean``/``ci95`` lists that may hold None)."""

from __future__ import annotations

import numpy as np


def array(xs) -> np.ndarray:
    """A float array with NaN where the summary holds None."""
    return np.array([np.nan if x is None else x for x in xs], float)


def band(ax, x, mean, ci, *, color, ls="-", alpha=1.0, label=None, marker=None) -> None:
    """The mean as a line and mean ± ci as a band; on a log axis only the positive parts are drawn."""
    mean, ci = array(mean), np.nan_to_num(array(ci))
    log = ax.get_yscale() == "log"
    if log and not np.any(mean > 0):
        return
    ax.plot(x, np.where(mean > 0, mean, np.nan) if log else mean, ls=ls, color=color, alpha=alpha, lw=1.2,
            marker=marker, ms=2.5, label=label)
    lo = mean - ci
    ax.fill_between(x, np.where(lo > 0, lo, np.nan) if log else lo, mean + ci, color=color, alpha=0.15 * alpha, lw=0)


def symlog_ticks(ax, linthresh: float) -> None:
    """Sparse ticks on a symlog axis: 0 and ±10^k every third decade above ``linthresh``."""
    lo, hi = ax.get_ylim()
    top = int(np.ceil(np.log10(max(abs(lo), abs(hi), linthresh * 10))))
    decades = [10.0**k for k in range(int(np.log10(linthresh)) + 1, top + 1, 3)]
    ticks = sorted([-d for d in decades if -d >= lo] + [0.0] + [d for d in decades if d <= hi])
    ax.set_yticks(ticks, [f"{t:.0e}".replace("e+0", "e").replace("e-0", "e-") if t else "0" for t in ticks])
