"""Summary statistics over seeds: means with 95% normal-approximation confidence intervals."""

from __future__ import annotations

import numpy as np

Z95 = 1.96


def mean_ci(values) -> dict:
    """{'mean', 'ci95' (1.96·std/√n, sample std), 'n', 'values'} of a 1-D array of per-seed values."""
    v = np.asarray(values, np.float64).ravel()
    n = v.size
    ci = float(Z95 * v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    mean = float(v.mean()) if n else float("nan")
    return {"mean": mean, "ci95": ci, "n": int(n), "values": [float(x) for x in v]}


def brief(values) -> dict:
    """mean_ci without the per-seed values."""
    out = mean_ci(values)
    out.pop("values")
    return out
