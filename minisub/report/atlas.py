"""The atlas's numbers beside its claims: per-seed combinations, half-gain points, interpolations, correlations.

Pure functions of the atlas's complete families ({family: {'points': [...]}}, ``minisub.run.sweep``
records), so they apply to the committed ``figures/atlas.json`` as well as to a fresh run. Each
returns only what the families hold: a family not computed yet leaves its numbers out.
"""

from __future__ import annotations

import numpy as np

from minisub import stats
from minisub.report import sweep as rs

# Published by the community replications [community], read off their write-ups: shown beside
# ours, never used as results.
COMMUNITY = {
    "lr": {1e-4: 0.16, 3e-4: 0.275, 1e-3: 0.69, 3e-3: 0.30, 1e-2: 0.10},
    "student_epochs": {1: 0.18, 2: 0.30, 5: 0.55, 10: 0.70, 20: 0.76, 50: 0.79},
    "teacher_epochs": {2: 0.63, 20: 0.35},
    "inputs": {"uniform": 0.55, "gaussian": 0.53, "mnist": 0.15, "zeros": 0.095},
}
COMMUNITY_SIGMA_04 = {"all": 0.26, "hidden": 0.30}  # accuracy at σ = 0.4 (not on our grid)
COMMUNITY_MSE = {"shared": (0.271, 0.033), "different": (0.093, 0.018)}
TRENDS = ("aux_logits", "width", "depth")  # families whose update alignment is correlated with transfer


def _p(families: dict, family: str, value, series: str | None = None):
    return rs.find({"families": families}, family, value, series)


def _gain(a: dict, b: dict) -> dict:
    return stats.paired(a["accuracy"]["values"], b["accuracy"]["values"])


def derived(families: dict) -> dict:
    """Per-seed combinations that claims read: {name: stats.mean_ci}."""
    out = {}
    s, d = _p(families, "lineages", "shared"), _p(families, "lineages", "different")
    s01 = _p(families, "sigma", 0.1, "all")
    if s and d and s01:  # > 0: σ = 0.1 keeps more than half of the shared init's gain over the different init
        v = lambda r: np.asarray(r["accuracy"]["values"], np.float64)  # noqa: E731
        out["sigma_all_10pct_over_half_gain"] = {**stats.mean_ci(v(s01) - 0.5 * v(s) - 0.5 * v(d)),
                                                 "label": "σ = 0.1 (all) minus the shared/different midpoint"}
    return out


def _shares(families: dict) -> dict:
    s, d = _p(families, "lineages", "shared"), _p(families, "lineages", "different")
    if not (s and d):
        return {}
    full = _gain(s, d)["mean"]
    return {f"{v}_share_of_gain": _gain(r, d)["mean"] / full
            for v in ("shared_head", "shared_hidden") if (r := _p(families, "lineages", v))}


def _alpha(families: dict) -> dict:
    d, pts = _p(families, "lineages", "different"), sorted(families.get("alpha", {}).get("points", []),
                                                             key=lambda r: -r["value"])
    if not (d and pts and pts[0]["value"] == 1.0):
        return {}
    xs = [max(1 - r["value"], 1e-9) for r in pts]  # the fresh share 1 − α, increasing
    return {"alpha_half_fresh_share": rs.half_point(xs, [_gain(r, d)["mean"] for r in pts], _gain(pts[0], d)["mean"])}


def _sigma(families: dict) -> dict:
    s, d = _p(families, "lineages", "shared"), _p(families, "lineages", "different")
    if not (s and d and "sigma" in families):
        return {}
    full, out = _gain(s, d)["mean"], {}
    for part in ("all", "hidden", "head"):
        pts = rs.curve({"families": families}, "sigma", part)
        gains = [_gain(r, d)["mean"] for r in pts]
        out[part] = {"half_gain_sigma": rs.half_point([r["value"] for r in pts], gains, full),
                     "at_0.4_interpolated": rs.at_log(pts, 0.4), "community_at_0.4": COMMUNITY_SIGMA_04.get(part),
                     "between": [max(r["value"] for r in pts if r["value"] <= 0.4),
                                 min(r["value"] for r in pts if r["value"] >= 0.4)] if rs.at_log(pts, 0.4) else None}
    return {"sigma": out}


def _community(families: dict) -> dict:
    out = {}
    for family, theirs in COMMUNITY.items():
        rows = [{"value": v, "ours": r["accuracy"]["mean"], "theirs": t}
                for v, t in theirs.items() if (r := _p(families, family, v, "shared"))]
        if rows:
            out[family] = rows
    return out


def _correlations(families: dict) -> dict:
    """Across a family's shared-init points: accuracy against cos(Δθ_S, Δθ_T) (means per point), Pearson r."""
    out = {}
    for family in TRENDS:
        pts = [r for r in rs.curve({"families": families}, family, "shared") if "update_cos" in r.get("geometry", {})]
        if family == "aux_logits":
            pts = [r for r in pts if r["value"] > 1]  # m = 1 never trains (a one-logit KL is identically zero)
        if len(pts) >= 3:
            out[family] = stats.correlation([r["accuracy"]["mean"] for r in pts],
                                            [r["geometry"]["update_cos"]["mean"] for r in pts])
    return out


def notes(families: dict) -> dict:
    """Descriptive numbers the README states beside the verdicts (interpolations are marked as such)."""
    out = {**_shares(families), **_alpha(families), **_sigma(families)}
    if community := _community(families):
        out["community"] = community
    if "loss" in families:
        out["community_mse"] = COMMUNITY_MSE
    if corr := _correlations(families):
        out["alignment_vs_transfer"] = corr
    return out


def _v(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _g(x) -> str:
    return "none on this grid" if x is None else f"{x:.2g}"


def lines(summary: dict) -> list[str]:
    """README bullets of ``summary['analysis']``: every number here is in the summary JSON."""
    a, out = summary.get("analysis", {}), []
    if "shared_head_share_of_gain" in a:
        out.append(f"- Share of the shared init's gain over a different-init student: shared head "
                   f"{a['shared_head_share_of_gain']:.0%}, shared hidden layers "
                   f"{a.get('shared_hidden_share_of_gain', 0):.0%}"
                   " (ratios of mean gains).")
    if "alpha_half_fresh_share" in a:
        out.append(f"- Interpolated init: the gain over a different-init student falls to half once the fresh "
                   f"component's variance share 1−α reaches ≈ {_g(a['alpha_half_fresh_share'])} "
                   "(log-linear between grid points).")
    for part, v in a.get("sigma", {}).items():
        theirs = f"; the community's ≈{v['community_at_0.4']:.2f} [community]" if v["community_at_0.4"] else ""
        at = "n/a" if v["at_0.4_interpolated"] is None else f"{v['at_0.4_interpolated']:.2f}"
        between = f" between σ = {v['between'][0]:g} and {v['between'][1]:g}" if v.get("between") else ""
        out.append(f"- Perturbed init ({part}): the gain halves at σ ≈ {_g(v['half_gain_sigma'])}; accuracy at σ = 0.4 "
                   f"≈ {at} (interpolated{between}){theirs}.")
    for family, rows in a.get("community", {}).items():
        out.append(f"- {family}, ours vs the community's [community]: "
                   + "; ".join(f"{_v(r['value'])}: {r['ours']:.2f} vs {r['theirs']:.2f}" for r in rows) + ".")
    if "community_mse" in a:
        (ms, cs), (md, cd) = a["community_mse"]["shared"], a["community_mse"]["different"]
        out.append(f"- MSE, the community's numbers [community]: {ms:.3f} ± {cs:.3f} shared vs {md:.3f} ± {cd:.3f} "
                   "cross-model.")
    for family, c in a.get("alignment_vs_transfer", {}).items():
        ci = "no interval (n < 4)" if c["low"] is None else f"95% CI [{c['low']:+.2f}, {c['high']:+.2f}]"
        out.append(f"- {family}: accuracy against cos(Δθ_S, Δθ_T) across the shared-init points: r = {c['r']:+.2f}, "
                   f"n = {c['n']} points, Student-t p = {c['p']:.2g}, {ci} "
                   "(a few points: a description, not a finding).")
    return out


def layer_table(fam: dict) -> list[str]:
    """Per lineage, the update cosine cos(Δθ_S, Δθ_T) layer by layer: where the aligned component sits."""
    rows = [r for r in fam["points"] if r.get("geometry_by_layer", {}).get("update_cos")]
    if not rows:
        return []
    layers = list(rows[0]["geometry_by_layer"]["update_cos"])
    out = ["Where the student's update aligns with the teacher's, layer by layer "
           "(cos(Δθ_S, Δθ_T), mean over seeds):", "",
           "| lineage | accuracy | " + " | ".join(layers) + " |", "|---|---|" + "---|" * len(layers)]
    for r in rows:
        cells = " | ".join(f"{r['geometry_by_layer']['update_cos'][layer]['mean']:+.3f}" for layer in layers)
        out.append(f"| {r['value']} | {r['accuracy']['mean']:.3f} | {cells} |")
    return out + [""]
