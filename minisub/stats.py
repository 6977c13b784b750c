"""Summary statistics over seeds: the project's one definition of an interval and of significance.

Every interval is a two-sided 95% Student-t interval, mean ± t(0.975, n−1)·s/√n with the sample
standard deviation s; a comparison of two arms is the same interval on their per-seed (paired)
differences. ``TEST`` names it in every summary. For a skewed measure, ``distribution`` adds the
median, the counts above a threshold and an exact sign test beside the mean.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
TEST = "95% Student-t interval over seeds: mean ± t(0.975, n−1)·s/√n (paired differences for comparisons)"


def t_quantile(n: int) -> float:
    """t(0.975, n−1): the factor on s/√n for a 95% interval from n values (nan below n = 2)."""
    return float(sps.t.ppf(0.5 + LEVEL / 2, n - 1)) if n > 1 else float("nan")


def _clean(values) -> np.ndarray:
    return np.asarray(values, np.float64).ravel()


def mean_ci(values) -> dict:
    """{'mean', 'ci95' (Student-t half-width), 'n', 'values'} of a 1-D array of per-seed values."""
    v = _clean(values)
    n = v.size
    ci = float(t_quantile(n) * v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    mean = float(v.mean()) if n else float("nan")
    return {"mean": mean, "ci95": ci, "n": int(n), "values": [float(x) for x in v]}


def brief(values) -> dict:
    """mean_ci without the per-seed values."""
    out = mean_ci(values)
    out.pop("values")
    return out


def paired(a, b) -> dict:
    """mean_ci of the per-seed differences a − b (the same seeds, in the same order)."""
    a, b = _clean(a), _clean(b)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per seed on both sides: got {a.size} and {b.size}")
    return mean_ci(a - b)


def unpaired(a, b) -> dict:
    """Difference of the means of two independent samples, mean(a) − mean(b), with Welch's interval.

    Student-t with the Welch–Satterthwaite degrees of freedom (unequal variances); for samples of
    different worlds, where ``paired`` does not apply. Returns {'mean', 'ci95', 'n' (len a, len b), 'df'}.
    """
    a, b = _clean(a), _clean(b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else np.inf
    half = float(sps.t.ppf(0.5 + LEVEL / 2, df) * np.sqrt(va + vb)) if a.size > 1 and b.size > 1 else float("nan")
    return {"mean": float(a.mean() - b.mean()), "ci95": half, "n": (int(a.size), int(b.size)), "df": float(df)}


def interval(s: dict) -> tuple[float, float]:
    """(low, high) of a mean_ci/brief dict."""
    return s["mean"] - s["ci95"], s["mean"] + s["ci95"]


def distribution(values, above: float) -> dict:
    """Median, counts and an exact two-sided sign test (against a median of 0) beside mean_ci.

    For a skewed measure (a trait that crosses in a few worlds only): ``n_above`` counts the
    values above ``above``; the sign test counts positive against negative values, zeros dropped.
    """
    v = _clean(values)
    pos, neg = int((v > 0).sum()), int((v < 0).sum())
    p = float(sps.binomtest(pos, pos + neg, 0.5).pvalue) if pos + neg else float("nan")
    return {**mean_ci(v), "median": float(np.median(v)) if v.size else float("nan"),
            "above": float(above), "n_above": int((v > above).sum()),
            "n_positive": pos, "n_negative": neg, "sign_test_p": p}


def correlation(x, y) -> dict:
    """Pearson r with its Student-t test (n − 2 degrees of freedom) and its 95% interval.

    With few points (a curve of 5 settings) the interval is wide: a verdict reads it, never r alone.
    What is undefined (r of a constant, an interval below 4 points) is None: JSON null, not NaN.
    """
    x, y = _clean(x), _clean(y)
    n = x.size
    test = "Pearson r, Student-t test with n − 2 degrees of freedom; interval by Fisher's z"
    if n < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"r": None, "n": int(n), "p": None, "low": None, "high": None, "test": test}
    res = sps.pearsonr(x, y)
    lo, hi = (None, None) if n < 4 else (float(v) for v in res.confidence_interval(LEVEL))
    return {"r": float(res.statistic), "n": int(n), "p": float(res.pvalue), "low": lo, "high": hi, "test": test}


def correlation_from_r(r: float, n: int) -> dict:
    """``correlation``'s test and interval for a Pearson r of n pairs stored without its pairs."""
    if n < 3 or not np.isfinite(r):
        return {"r": float(r) if np.isfinite(r) else None, "n": int(n), "p": None, "low": None, "high": None}
    t = r * np.sqrt((n - 2) / max(1.0 - r * r, 1e-300))
    p = float(2 * sps.t.sf(abs(t), n - 2))
    if n < 4:
        return {"r": float(r), "n": int(n), "p": p, "low": None, "high": None}
    z, half = np.arctanh(r), sps.norm.ppf(0.5 + LEVEL / 2) / np.sqrt(n - 3)
    return {"r": float(r), "n": int(n), "p": p, "low": float(np.tanh(z - half)), "high": float(np.tanh(z + half))}
