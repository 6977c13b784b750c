"""What the mnist-trajectories summary says, from the numbers it holds (no recompute).

``student_t_curves(summary)`` brings a summary written before the per-step curves used Student-t
intervals up to date: their half-widths were 1.96·s/√n, and no per-seed values were stored, so
each is rescaled by t(0.975, n−1)/1.96 (n: the variant's seed count) and the per-step counts
that read the intervals (``frac_ci_lo_pos``) are recounted; means and per-seed values are untouched.

``analyse(summary)`` adds ``summary['analysis']``: for each variant the shared-init aux student's
distance to the teacher at the last logged step over its start, the first epoch's share of the
final trait gain as a margin with an interval, the counts of logged steps that the README states,
and, for the projection, the share of the gain that survives.
"""

from __future__ import annotations

import numpy as np

from minisub import stats
from minisub.theory import trajectories as tr

Z_NORMAL = 1.96  # the normal quantile the old per-step intervals used
ARM = "student_aux"  # the arm the trait claims are about: shared init, aux logits only


def _num(x) -> float | None:
    return None if x is None else tr._num(x)


def _frac_ci_lo_pos(curve: dict) -> float | None:
    """The share of logged steps whose interval lies above 0 (an undefined interval counts as not above)."""
    mean = np.array([np.nan if m is None else m for m in curve["mean"]], float)
    ci = np.array([np.inf if c is None else c for c in curve["ci95"]], float)
    return _num(np.mean(mean - ci > 0))


def student_t_curves(summary: dict) -> dict:
    """The summary with its per-step curve intervals rescaled from 1.96 to Student-t (a no-op when already so)."""
    if summary.get("curve_ci") == tr.CURVE_CI:
        return summary
    variants = {}
    for v, s in summary["variants"].items():
        factor = stats.t_quantile(s["n_seeds"]) / Z_NORMAL
        curves = {q: {a: {**c, "ci95": [None if x is None else _num(x * factor) for x in c["ci95"]]}
                      for a, c in by_arm.items()} for q, by_arm in s["curves"].items()}
        alignment = {q: {a: {**al, "frac_ci_lo_pos": _frac_ci_lo_pos(curves[q][a])} for a, al in by_arm.items()}
                     for q, by_arm in s["alignment"].items()}
        variants[v] = {**s, "curves": curves, "alignment": alignment}
    return {**summary, "variants": variants, "curve_ci": tr.CURVE_CI}


def _last(curve: dict, n: int) -> dict:
    """{'mean', 'ci95', 'n'} of a per-step curve at its last logged step."""
    return {"mean": curve["mean"][-1], "ci95": curve["ci95"][-1], "n": n}


def first_epoch_margin(gains: list) -> dict | None:
    """Gain after epoch 1 minus half the final gain, {'mean', 'ci95', 'n', 'bound'}: > 0 means most of it came first.

    Only each epoch's interval is stored, not the per-seed gains, so the paired half-width is
    bounded by ci₁ + ci_last/2 (the standard deviation of a difference is at most the sum of the
    standard deviations): an interval at least as wide as the paired Student-t one.
    """
    first, final = gains[0], gains[-1]
    if first["mean"] is None or final["mean"] is None or first["ci95"] is None or final["ci95"] is None:
        return None
    return {"mean": first["mean"] - final["mean"] / 2, "ci95": first["ci95"] + final["ci95"] / 2,
            "n": min(first["n"], final["n"]), "bound": "ci₁ + ci_last/2, an upper bound on the paired half-width"}


def _variant(s: dict) -> dict:
    n, out = s["n_seeds"], {}
    # an undefined statistic is left out, so a claim reading it says 'not measured' and names it
    out["dist_teacher_rel_last"] = {a: last for a, c in s["curves"]["dist_teacher_rel"].items()
                                    if None not in (last := _last(c, n)).values()}
    out["first_epoch_margin"] = {a: m for a, t in s["trait"].items()
                                 if (m := first_epoch_margin(t["gain_by_epoch"])) is not None}
    out["steps"] = {a: {"n_logged": g["n_logged"], "mean_above_0": round(g["frac_mean_pos"] * g["n_logged"]),
                        "interval_above_0": round(g["frac_ci_lo_pos"] * g["n_logged"])}
                    for a, g in s["alignment"]["grad_cos"].items()}
    out["max_update_trait_cos"] = max((m for al in s["alignment"]["update_trait_cos"].values()
                                       if (m := al["max"]) is not None), default=None)
    return out


def _kept(contrast: dict) -> float | None:
    """The share of the mean gain that survives in ``other`` (ratio of means; None when the base gain is ~0)."""
    r = contrast["arms"].get(ARM)
    if r is None or r["gain"]["base"]["mean"] is None or abs(r["gain"]["base"]["mean"]) < 1e-9:
        return None
    return _num(r["gain"]["other"]["mean"] / r["gain"]["base"]["mean"])


def analyse(summary: dict) -> dict:
    """The summary (Student-t curves) with ``analysis``: the derived numbers the claims and the README read."""
    summary = student_t_curves(summary)
    analysis = {"variants": {v: _variant(s) for v, s in summary["variants"].items()},
                "projection_kept": {name: _kept(c) for name, c in summary["projection"].items()}}
    return {**summary, "analysis": analysis}
