"""What the theorem-one-step summary says, as per-seed statistics a claim can read.

``analyse(summary)`` adds ``summary['analysis']`` from the per-cell, per-seed values the summary
already holds (so it applies to a committed JSON without recomputing anything). A cell is one
(input D_S, imitation, lineage); a per-seed statistic pools cells seed by seed (the minimum, the
maximum or the share of cells), then takes the Student-t interval over seeds (``stats.mean_ci``).

Cells are grouped before any number is looked at:

* *live* shared cells: the inner product is not identically zero (``inner_zero`` < 1; an
  identically zero Δθ_S·Δθ_T is the theorem's orthogonal branch, reported apart);
* *kink* inputs (``KINK_INPUTS``): the zero input with zero biases puts every hidden unit exactly
  on ReLU's kink, where the first-order expansion does not hold (see ``one_step``); the
  first-order claims read the other inputs and the kink inputs get their own claim;
* *compared* different-init cells: those on inputs where the two lineages did not measure
  identical inner products (on the zero input the student's outputs do not depend on its init).

A cell whose per-seed values are incomplete (a non-finite value was dropped) cannot be pooled
seed by seed; it is listed under ``incomplete`` and left out, never silently.
"""

from __future__ import annotations

import numpy as np

from minisub import stats

KINK_INPUTS = ("zeros",)
FIRST_ORDER_TOL = 0.01  # the relative error a first-order prediction may leave at the smallest ε
BREAKDOWN = 0.1  # the mean relative error above which ``breakdown_eps`` says the expansion stopped holding


def _cells(summary: dict, lineage: str):
    for d, by_m in summary["cells"].items():
        for m, by_l in by_m.items():
            if lineage in by_l:
                yield f"{d}/{m}", d, by_l[lineage]


def _value(cell: dict, path: str):
    node = cell
    for part in path.split("."):
        node = node[part]
    return node


def identical_inputs(summary: dict) -> list[str]:
    """Inputs on which shared and different students measured the same inner products for every imitation."""
    def means(c):
        return np.array([np.nan if s["mean"] is None else s["mean"] for s in c["per_eps"]["inner"]])

    out = []
    for d, by_m in summary["cells"].items():
        if all({"shared", "different"} <= set(by_l) for by_l in by_m.values()) and all(
                np.allclose(means(b["shared"]), means(b["different"]), rtol=1e-9, atol=0, equal_nan=True)
                for b in by_m.values()):
            out.append(d)
    return out


def _pool(cells: list, path: str, n: int, how, incomplete: list, f=None) -> dict | None:
    """Per seed, ``how`` (np.min, np.max, np.mean) over the cells' per-seed values at ``path``, then ``f``
    of that per-seed vector (``stats.mean_ci`` by default; a transform such as np.log10 is applied first)."""
    rows = []
    for name, c in cells:
        v = _value(c, path)["values"]
        if len(v) != n or any(x is None for x in v):
            incomplete.append(f"{name}: {path}")
            continue
        rows.append(np.asarray(v, np.float64))
    if not rows:
        return None
    pooled = how(np.stack(rows), axis=0)
    if f is None:
        return stats.mean_ci(pooled)
    return f(pooled) if f is _distribution else stats.mean_ci(f(pooled))


def _distribution(values) -> dict:
    """stats.distribution of a skewed per-seed measure (a relative error): median and counts above FIRST_ORDER_TOL."""
    return stats.distribution(values, FIRST_ORDER_TOL)


def _mapped(cells: list, path: str, fn) -> list:
    """Cells holding only ``mapped``: ``fn`` of each per-seed value at ``path`` (None kept)."""
    return [(name, {"mapped": {"values": [None if x is None else fn(x) for x in _value(c, path)["values"]],
                               "mean": None}}) for name, c in cells]


def _range(cells: list, path: str) -> list | None:
    means = [m for _, c in cells if (m := _value(c, path)["mean"]) is not None]
    return [float(min(means)), float(max(means))] if means else None


def _present(stats_by_name: dict) -> dict:
    """Without the statistics no cell could give (a claim reading one then says 'not measured', naming it)."""
    return {k: v for k, v in stats_by_name.items() if v is not None}


def _shared(summary: dict, n: int, incomplete: list) -> dict:
    live = [(name, c) for name, d, c in _cells(summary, "shared") if c["small_eps"]["inner_zero"]["mean"] < 1.0]
    zero = [name for name, d, c in _cells(summary, "shared") if c["small_eps"]["inner_zero"]["mean"] == 1.0]
    smooth = [(name, c) for name, c in live if name.split("/")[0] not in KINK_INPUTS]
    kink = [(name, c) for name, c in live if name.split("/")[0] in KINK_INPUTS]
    return _present({
        "live": [name for name, _ in live], "zero": zero, "off_kink": [name for name, _ in smooth],
        "kink": [name for name, _ in kink],
        "min_cos_at_eps_min": _pool(live, "cos_at_eps_min", n, np.min, incomplete),
        "share_loss_falls": _pool(live, "small_eps.loss_falls", n, np.mean, incomplete),
        "n_cells_inner_nonneg_every_seed": sum(c["small_eps"]["inner_nonneg"]["mean"] == 1.0 for _, c in live),
        "max_rel_error_at_eps_min": _pool(smooth, "rel_error_at_eps_min", n, np.max, incomplete, _distribution),
        "log10_max_rel_error_at_eps_min": _pool(smooth, "rel_error_at_eps_min", n, np.max, incomplete, np.log10),
        "min_slope_rel_error": _pool(smooth, "small_eps.slope_rel_error", n, np.min, incomplete),
        "max_slope_inner_deviation": _pool(_mapped(smooth, "small_eps.slope_inner", lambda v: abs(v - 1.0)),
                                           "mapped", n, np.max, incomplete),
        "rel_error_at_eps_min_range": _range(smooth, "rel_error_at_eps_min"),
        "slope_inner_range": _range(smooth, "small_eps.slope_inner"),
        "slope_rel_error_range": _range(smooth, "small_eps.slope_rel_error"),
        "slope_before_flip_range": _range(smooth, "slope_rel_error_before_flip"),
        "kink_rel_error_at_eps_min": {name: c["rel_error_at_eps_min"]["mean"] for name, c in kink},
        "breakdown_eps": {name: c["breakdown_eps"] for name, c in live},
        "rises_at_eps_max": [name for name, c in live if (s := c["delta_loss_T_at_eps_max"])["ci95"] is not None
                             and s["mean"] - s["ci95"] > 0],
    })


def _different(summary: dict, n: int, incomplete: list) -> dict:
    same = identical_inputs(summary)
    cells = [(name, c) for name, d, c in _cells(summary, "different") if d not in same]
    return _present({
        "compared": [name for name, _ in cells], "identical_inputs": same,
        "share_inner_nonneg": _pool(cells, "small_eps.inner_nonneg", n, np.mean, incomplete),
        "share_loss_falls": _pool(cells, "small_eps.loss_falls", n, np.mean, incomplete),
        "log10_min_rel_error_at_eps_min": _pool(cells, "rel_error_at_eps_min", n, np.min, incomplete, np.log10),
        "max_taylor_rel_error_at_eps_min": _pool(cells, "taylor_rel_error_at_eps_min", n, np.max, incomplete,
                                                 _distribution),
        "log10_max_taylor_rel_error_at_eps_min": _pool(cells, "taylor_rel_error_at_eps_min", n, np.max, incomplete,
                                                       np.log10),
        "share_inner_nonneg_range": _range(cells, "small_eps.inner_nonneg"),
        "abs_offset_range": _range([(name, {"o": {"mean": None if (m := c["offset"]["mean"]) is None else abs(m)}})
                                    for name, c in cells], "o"),
        "max_abs_mean_cos_at_eps_min": max((abs(c["cos_at_eps_min"]["mean"]) for _, c in cells
                                            if c["cos_at_eps_min"]["mean"] is not None), default=None),
    })


def analyse(summary: dict) -> dict:
    """The summary with ``analysis``: pooled per-seed statistics and the numbers the README states."""
    n, incomplete = summary["n_seeds"], []
    analysis = {
        "kink_inputs": [d for d in summary["inputs"] if d in KINK_INPUTS],
        "first_order_tol": FIRST_ORDER_TOL,
        "breakdown": BREAKDOWN,
        "shared": _shared(summary, n, incomplete) if "shared" in summary["lineages"] else None,
        "different": _different(summary, n, incomplete) if "different" in summary["lineages"] else None,
        "first_flip_median": {d: next(iter(by_m.values()))[summary["lineages"][0]]["first_flip_eps"]["median"]
                              for d, by_m in summary["cells"].items()},
    }
    analysis["incomplete"] = sorted(set(incomplete))
    return {**summary, "analysis": analysis}
