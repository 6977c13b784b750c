"""Sweep summaries read and drawn: a metric against the swept field, mean ± 95% CI, one curve per series.

A sweep summary holds families of point records (``minisub.run.sweep``): ``{'families': {name:
{'points': [{'series', 'value', <metric>: {'mean', 'ci95', 'values'}, ...}]}}}``. This module finds
points by (family, value, series) as dotted paths that ``minisub.claims`` reads, combines them
seed by seed, and draws any metric of a family against its swept value (numeric values: lines on
a linear or log axis; labels: horizontal bars).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from minisub import claims as claims_lib
from minisub import stats
from minisub.report import plots


# --- reading points -----------------------------------------------------------------------------

def index(fam: dict, value, series: str | None = None) -> int | None:
    """The position of the point with ``value`` (and ``series``) in a family, None if absent."""
    for k, r in enumerate(fam.get("points", [])):
        if r["value"] == value and (series is None or r["series"] == series):
            return k
    return None


def find(summary: dict, family: str, value, series: str | None = None) -> dict | None:
    """The point record with ``value`` (and ``series``) in a family of the summary, None if absent."""
    fam = summary.get("families", {}).get(family)
    k = None if fam is None else index(fam, value, series)
    return None if k is None else fam["points"][k]


def path(summary: dict, family: str, value, series: str | None = None, key: str = "accuracy") -> str:
    """The dotted path of a point's metric; a path that names what is absent when the point is missing.

    ``minisub.claims`` reports a claim reading a missing path as ``not measured`` (with the path).
    """
    fam = summary.get("families", {}).get(family)
    k = None if fam is None else index(fam, value, series)
    if k is None:
        return f"families.{family}.missing point {series or 'any series'}: {value}"
    return f"families.{family}.points.{k}.{key}"


def record(summary: dict, metric_path: str) -> dict | None:
    """The point record a metric path points into (None for any other path)."""
    parts = metric_path.split(".")
    if len(parts) < 4 or parts[0] != "families" or parts[2] != "points":
        return None
    return summary["families"][parts[1]]["points"][int(parts[3])]


PLAIN_SERIES = ("aux", "shared", "interpolated")  # series a point is named without


def label(summary: dict, metric_path: str) -> str:
    """A reader's name of what a path measures: '[series: ]value[ (metric)]' of a point, else its 'label' or tail."""
    r = record(summary, metric_path)
    if r is None:
        node = claims_lib.lookup(summary, metric_path)
        return node.get("label", metric_path.split(".")[-1]) if isinstance(node, dict) else metric_path.split(".")[-1]
    key = metric_path.split(".")[-1]
    name = str(r["value"]) if r["series"] in (*PLAIN_SERIES, r["family"]) else f"{r['series']}: {r['value']}"
    return name + ("" if key == "accuracy" else f" ({key})")


def combine(summary: dict, weights: dict[str, float]) -> dict:
    """stats.mean_ci of Σ weight · metric, seed by seed (the points' worlds are the same seeds)."""
    vs = [w * np.asarray(claims_lib.lookup(summary, p)["values"], np.float64) for p, w in weights.items()]
    return stats.mean_ci(np.sum(vs, axis=0))


def curve(summary: dict, family: str, series: str, key: str = "accuracy") -> list[dict]:
    """One series of a family's points, sorted by value."""
    pts = [r for r in summary.get("families", {}).get(family, {}).get("points", []) if r["series"] == series]
    return sorted(pts, key=lambda r: r["value"])


def half_point(xs, gains, full: float) -> float | None:
    """Where ``gains`` first falls to half of ``full`` along increasing ``xs`` (log-linear between points)."""
    pairs = list(zip(xs, gains))
    for (x0, g0), (x1, g1) in zip(pairs, pairs[1:]):
        if g0 >= full / 2 > g1:
            t = (g0 - full / 2) / (g0 - g1)
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0))) if x0 > 0 else x0 + t * (x1 - x0)
    return None


def at_log(points: list[dict], x: float, key: str = "accuracy") -> float | None:
    """A series' mean at ``x``, log-linearly interpolated between its grid points (None outside)."""
    for a, b in zip(points, points[1:]):
        if a["value"] <= x <= b["value"]:
            t = (math.log(x) - math.log(a["value"])) / (math.log(b["value"]) - math.log(a["value"]))
            return a[key]["mean"] + t * (b[key]["mean"] - a[key]["mean"])
    return None


# --- tables -------------------------------------------------------------------------------------

def family_table(fam: dict) -> list[str]:
    """Every point of a family: accuracy, distillation loss, start distance and update cosine."""
    out = ["| series | value | accuracy (trait) | distillation loss | ‖θ_S⁰−θ_T⁰‖ | cos(Δθ_S, Δθ_T) |",
           "|---|---|---|---|---|---|"]
    for r in fam["points"]:
        g = r.get("geometry", {})
        geo = [f"{g[q]['mean']:.3f}" if q in g else "n/a" for q in ("dist_init", "update_cos")]
        out.append(f"| {r['series']} | {r['value']} | {r['accuracy']['mean']:.3f} ± {r['accuracy']['ci95']:.3f} | "
                   f"{r['distill_loss']['mean']:.2e} ± {r['distill_loss']['ci95']:.1e} | {geo[0]} | {geo[1]} |")
    return out


# --- figures ------------------------------------------------------------------------------------

def numeric(points) -> bool:
    return all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) for r in points)


def by_series(points) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in points:
        out.setdefault(r["series"], []).append(r)
    return out


def _tick(v: float, sci: bool) -> str:
    """'2e-4' (``sci``) or '0.5', '20': one style on a whole axis."""
    if v <= 0:
        return ""
    if not sci:
        return f"{v:g}"
    m, e = f"{v:.0e}".split("e")
    return f"{m}e{int(e)}"


def log_axis(ax, which: str = "x", max_labels: int = 6) -> None:
    """A log axis with labelled ticks: the densest of 1-2-5, 1-3 or decades per decade that fits ``max_labels``.

    Never a lone label: over a range narrower than a decade the 1-2-5 ticks still fall inside it.
    """
    axis, (lo, hi) = (ax.xaxis, ax.get_xlim()) if which == "x" else (ax.yaxis, ax.get_ylim())
    lo, hi = min(lo, hi), max(lo, hi)
    decades = range(math.floor(math.log10(lo)) if lo > 0 else -12, math.ceil(math.log10(hi)) + 1 if hi > 0 else 1)
    options = [(1.0, 2.0, 5.0), (1.0, 3.0), (1.0,)]
    count = {o: sum(lo <= m * 10.0 ** e <= hi for e in decades for m in o) for o in options}
    fits = [o for o in options if 2 <= count[o] <= max_labels]
    subs = fits[0] if fits else next((o for o in reversed(options) if count[o] >= 2), options[0])
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    sci = lo < 0.01 or hi >= 1e4  # one style per axis: 1e-3, 2e-3, 1e-2 rather than 2e-3, 0.01
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _tick(v, sci)))
    axis.set_minor_formatter(NullFormatter())


def lines(ax, points, key: str, *, log_x: bool = False, xlabel: str = "") -> None:
    """One errorbar curve per series: ``key``'s mean ± 95% CI against the swept value."""
    for c, (name, rs) in enumerate(by_series(points).items()):
        rs = sorted(rs, key=lambda r: r["value"])
        ax.errorbar([r["value"] for r in rs], [r[key]["mean"] for r in rs], yerr=[r[key]["ci95"] for r in rs],
                    marker="o", ms=3, capsize=2, lw=1.2, color=plots.PALETTE[c % 7], label=name)
    if log_x:
        ax.set_xscale("log")
        log_axis(ax, "x")
    ax.set_xlabel(xlabel)


WRAP = 30  # characters a bar label line holds (longer labels wrap)


def bar_labels(points) -> list[str]:
    """'value', or 'series: value' when the points' series differ; wrapped at WRAP characters."""
    one = len(by_series(points)) == 1
    return [textwrap.fill(str(r["value"]) if one else f"{r['series']}: {r['value']}", WRAP) for r in points]


def bars(ax, points, key: str, *, labels: bool = True) -> None:
    """Horizontal bars, one per point (label 'series: value' when series differ), 95% CI whiskers."""
    series, names = list(by_series(points)), bar_labels(points)
    y = list(range(len(points)))[::-1]
    ax.barh(y, [r[key]["mean"] for r in points], xerr=[r[key]["ci95"] for r in points], alpha=0.85, capsize=2,
            height=0.7, color=[plots.PALETTE[series.index(r["series"]) % 7] for r in points])
    ax.set_yticks(y, names if labels else [""] * len(y), fontsize=6.5)


@plots.styled
def metric_figure(points: list[dict], metrics: dict[str, str], *, title: str = "", xlabel: str = "",
                  log_x: bool = False, log_metrics=(), reference: float | None = None, band: dict | None = None,
                  limits: dict | None = None, width: float = 3.5):
    """``metrics`` ({key: axis label}) of a sweep's points against the swept value, one panel each, stacked.

    Numeric values draw lines (``log_x``: a log axis), labels draw bars. ``reference``: a dashed
    line on the first panel; ``band``: a {'mean', 'ci95'} drawn as a grey band there (a control);
    ``limits``: {key: (low, high)} of a metric's axis. Sized for one column of a two-column paper.
    """
    num = numeric(points)
    per = 1.7 if num else 0.12 * sum(n.count("\n") + 1 for n in bar_labels(points)) + 0.1 * len(points) + 0.7
    fig, axes = plots.figure(width, per * len(metrics) + 0.5, nrows=len(metrics), squeeze=False)
    axes = axes[:, 0]
    for k, (ax, (key, text)) in enumerate(zip(axes, metrics.items())):
        if num:
            lines(ax, points, key, log_x=log_x, xlabel=xlabel if k == len(metrics) - 1 else "")
            ax.set_ylabel(text, fontsize=7)
            if key in log_metrics:
                ax.set_yscale("log")
            if key in (limits or {}):
                ax.set_ylim(*limits[key])
        else:
            bars(ax, points, key)
            ax.set_xlabel(text, fontsize=7)
            if key in log_metrics:
                ax.set_xscale("log")
            if key in (limits or {}):
                ax.set_xlim(*limits[key])
    first = axes[0]
    if reference is not None:
        (first.axhline if num else first.axvline)(reference, color="grey", lw=0.8, ls="--", label="reference")
    if band is not None and num:
        m, c = band["mean"], band["ci95"]
        first.axhspan(m - c, m + c, color=plots.PALETTE[6], alpha=0.5, lw=0, label="different init (95% CI)")
    first.legend(fontsize=6, frameon=False, loc=None if num else "lower right")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(h_pad=0.6)
    for ax, key in zip(axes, metrics):  # ticks chosen for each panel's width as laid out (about 0.45 in a label)
        if key in log_metrics:
            log_axis(ax, "y" if num else "x", max(2, int(ax.get_position().width * width / 0.45)))
    return fig


# --- claims over sweep points -------------------------------------------------------------------

def resolve(summary: dict, spec, key: str | None = None):
    """A claim's path from a spec: (family, value[, series[, key]]) a point's metric, a str as is, a list: a trend."""
    if isinstance(spec, list):
        return tuple(resolve(summary, s, key) for s in spec)
    if isinstance(spec, str):
        return spec
    family, value, series, metric = (*spec, None, None)[:4]
    return path(summary, family, value, series, key or metric or "accuracy")


def claim(summary: dict, id: str, text: str, source: str, metric, compare: str, threshold: float = 0.0,
          baseline=None, confound=None) -> claims_lib.Claim:
    """A ``Claim`` on sweep points named by specs (``resolve``); a trend's points are labelled by their values.

    ``confound``: True compares the metric's and the baseline's points' task losses (their
    ``distill_loss``), or a pair of specs names the two points whose task losses to compare; a
    comparison of arms that did not learn their task equally is then named confounded.
    """
    pair = (metric, baseline) if confound is True else confound
    task_loss = tuple(resolve(summary, s, "distill_loss") for s in pair) if pair else None
    labels = tuple(str(s[1]) for s in metric) if isinstance(metric, list) else None
    return claims_lib.Claim(id, text, source, resolve(summary, metric), compare, threshold,
                            resolve(summary, baseline) if baseline is not None else None, task_loss, labels=labels)
