"""Claims as data, verdicts from the numbers: the only way a finding enters figures/README.md.

A ``Claim`` declares what is claimed, who claimed it, the metric (a path into an experiment's
summary JSON to a dict holding per-seed ``values``), the comparison and the threshold. ``verdict``
turns a claim and a summary into one of:

* ``supported``    the 95% Student-t interval lies wholly on the claimed side of the threshold;
* ``refuted``      it lies wholly on the other side;
* ``inconclusive`` it contains the threshold;
* ``confounded``   the interval is decisive, but the two arms' task losses differ by more than
                   the claim's declared factor, so the comparison is not like for like;
* ``not measured`` the summary lacks a metric the claim reads (named in the verdict).

A metric without per-seed ``values`` but with a stored Student-t ``mean``, ``ci95`` and ``n``
(an older summary that kept only those) is read as it is, for a comparison without ``baseline``.

Comparisons (``compare``):

* ``>`` / ``<``: the mean of the metric (or of its per-seed difference from ``baseline``: a paired
  interval) is above / below ``threshold``;
* ``within``: the interval lies inside ``[-threshold, +threshold]`` (e.g. a control stays at
  chance: accuracy − 0.1 within ±0.02); refuted when it lies wholly outside;
* ``increasing`` / ``decreasing``: ``metric`` is a list of paths (the points of a sweep, in order);
  every consecutive pair's paired difference must be significant in the claimed direction.
  Refuted when some consecutive pair moves significantly the other way; inconclusive otherwise.
  Degenerate points are left out by listing only the others.

There is one test: ``minisub.stats`` (Student-t, n stated). No exception is swallowed: a malformed
summary raises; only a missing metric is reported, as ``not measured``, with the missing path.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from minisub import references, stats

COMPARISONS = (">", "<", "within", "increasing", "decreasing")
SUPPORTED, REFUTED, INCONCLUSIVE, CONFOUNDED, MISSING = (
    "supported", "refuted", "inconclusive", "confounded", "not measured")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One checkable statement about an experiment's summary (see the module docstring)."""

    id: str
    text: str  # the statement, as a reader would make it: "the aux-only student beats chance"
    source: str  # who made it: a reference key in REFERENCES.md, or "minisub" for our own hypotheses
    metric: str | tuple[str, ...]  # dotted path(s) to a dict with per-seed "values"
    compare: str
    threshold: float = 0.0
    baseline: str | None = None  # dotted path: the claim is about metric − baseline, seed by seed
    task_loss: tuple[str, str] | None = None  # dotted paths to the two arms' task losses (means)
    confound_factor: float = 2.0  # a loss ratio above this names a confound
    unit: str = ""
    labels: tuple[str, ...] | None = None  # a trend's points as a reader names them (default: each path's last key)

    def __post_init__(self):
        if self.source not in references.REFERENCES:
            raise ValueError(f"claim {self.id}: source={self.source!r} must be a key of minisub.references: "
                             + ", ".join(references.REFERENCES))
        if self.compare not in COMPARISONS:
            raise ValueError(f"claim {self.id}: compare={self.compare!r} must be one of {', '.join(COMPARISONS)}")
        trend = self.compare in ("increasing", "decreasing")
        if trend != isinstance(self.metric, tuple):
            raise ValueError(f"claim {self.id}: a trend reads a tuple of points, every other comparison one metric")
        if trend and len(self.metric) < 2:
            raise ValueError(f"claim {self.id}: a trend needs at least 2 points")


@dataclasses.dataclass(frozen=True)
class Verdict:
    claim: Claim
    status: str
    mean: float | None = None  # of the metric (or the paired difference); trends: None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    detail: str = ""  # what decided it: the steps of a trend, the confound, the missing path

    def to_dict(self) -> dict:
        return {"id": self.claim.id, "claim": self.claim.text, "source": self.claim.source,
                "status": self.status, "mean": self.mean, "low": self.low, "high": self.high, "n": self.n,
                "threshold": self.claim.threshold, "compare": self.claim.compare, "detail": self.detail,
                "test": stats.TEST}

    def sentence(self) -> str:
        """One line for a README: the claim, the verdict and the numbers that decided it."""
        head = f"{self.claim.text} [{self.claim.source}]: **{self.status}**"
        if self.mean is not None:
            what = "paired difference" if self.claim.baseline else "mean"
            where = {">": f"vs > {self.claim.threshold:g}", "<": f"vs < {self.claim.threshold:g}",
                     "within": f"vs within ±{self.claim.threshold:g}"}[self.claim.compare]
            head += (f" ({what} {self.mean:+.3f}{self.claim.unit}, 95% CI [{self.low:+.3f}, {self.high:+.3f}], "
                     f"n = {self.n}, Student-t; {where})")
        return head + (f"; {self.detail}" if self.detail else "")


class _Missing(LookupError):
    pass


def lookup(summary: dict, path: str):
    """The value at a dotted path of the summary; raises _Missing naming the first absent key."""
    node = summary
    for part in path.split("."):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise _Missing(path)
    return node


def _values(summary: dict, path: str) -> np.ndarray:
    node = lookup(summary, path)
    if not isinstance(node, dict) or "values" not in node:
        raise TypeError(f"claim metric {path!r} holds no per-seed 'values' (got {type(node).__name__})")
    return np.asarray(node["values"], np.float64)


def _stored(summary: dict, path: str) -> dict | None:
    """A stored Student-t summary ({'mean', 'ci95', 'n'}) that kept no per-seed values; None when it has them."""
    node = lookup(summary, path)
    if isinstance(node, dict) and "values" not in node and {"mean", "ci95", "n"} <= set(node):
        return node
    return None


def _side(low: float, high: float, compare: str, threshold: float) -> str:
    if compare == ">":
        return SUPPORTED if low > threshold else REFUTED if high < threshold else INCONCLUSIVE
    if compare == "<":
        return SUPPORTED if high < threshold else REFUTED if low > threshold else INCONCLUSIVE
    # within ±threshold
    if -threshold < low and high < threshold:
        return SUPPORTED
    return REFUTED if (low > threshold or high < -threshold) else INCONCLUSIVE


def _trend(claim: Claim, summary: dict) -> Verdict:
    sign = 1.0 if claim.compare == "increasing" else -1.0
    steps, ok, against = [], True, False
    for a, b in zip(claim.metric, claim.metric[1:]):
        d = stats.paired(_values(summary, b), _values(summary, a))
        lo, hi = stats.interval(d)
        lo, hi = (lo, hi) if sign > 0 else (-hi, -lo)
        ok &= lo > 0
        against |= hi < 0
        steps.append(f"{_name(claim, a)}→{_name(claim, b)} {sign * d['mean']:+.3f} ± {d['ci95']:.3f}")
    status = SUPPORTED if ok else REFUTED if against else INCONCLUSIVE
    n = len(_values(summary, claim.metric[0]))
    return Verdict(claim, status, n=n, detail=f"steps in the claimed direction (paired, n = {n}): " + "; ".join(steps))


def _name(claim: Claim, path: str) -> str:
    return claim.labels[claim.metric.index(path)] if claim.labels else path.split(".")[-1]


def _confound(claim: Claim, summary: dict) -> str:
    if claim.task_loss is None:
        return ""
    a, b = (float(_mean(lookup(summary, p))) for p in claim.task_loss)
    ratio = max(a, b) / min(a, b) if min(a, b) > 0 else math.inf
    if ratio > claim.confound_factor:
        return (f"confound: the task losses differ ({a:.3g} vs {b:.3g}, ×{ratio:.1f} > ×{claim.confound_factor:g}), "
                "so the arms did not learn their task equally")
    return ""


def _mean(node) -> float:
    return node["mean"] if isinstance(node, dict) else node


def verdict(claim: Claim, summary: dict) -> Verdict:
    """The verdict the summary's numbers give ``claim`` (see the module docstring)."""
    try:
        if claim.compare in ("increasing", "decreasing"):
            return _trend(claim, summary)
        s = _stored(summary, claim.metric) if claim.baseline is None else None
        if s is None:
            v = _values(summary, claim.metric)
            s = stats.paired(v, _values(summary, claim.baseline)) if claim.baseline else stats.mean_ci(v)
        confound = _confound(claim, summary)
    except _Missing as e:
        return Verdict(claim, MISSING, detail=f"the summary has no {e.args[0]!r}")
    if s["n"] < 2:
        return Verdict(claim, INCONCLUSIVE, s["mean"], n=s["n"], detail="fewer than 2 seeds: no interval")
    low, high = stats.interval(s)
    status = _side(low, high, claim.compare, claim.threshold)
    if confound and status in (SUPPORTED, REFUTED):
        return Verdict(claim, CONFOUNDED, s["mean"], low, high, s["n"], f"{confound} (without it: {status})")
    return Verdict(claim, status, s["mean"], low, high, s["n"], confound)


def evaluate(claims, summary: dict) -> list[dict]:
    """Every claim's verdict as a dict, for the summary JSON (``summary['verdicts']``)."""
    return [verdict(c, summary).to_dict() for c in claims]


def lines(claims, summary: dict) -> list[str]:
    """README bullet lines, one per claim."""
    return [f"- {verdict(c, summary).sentence()}" for c in claims]
