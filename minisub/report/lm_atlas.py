"""The toy LM's lineage atlas: its derived numbers, the MLP atlas's corresponding numbers, and its figure.

Everything here is computed from stored records (``minisub.run.lm_atlas``; the MLP atlas's
``figures/atlas.json``), so it applies to a committed summary. The *retained share* of a point is
(gain − different's) / (shared's − different's), from the means of the per-world differences
its record pairs within its program; it is descriptive (a ratio of means has no Student-t
interval), the claims read the paired differences themselves.
"""

from __future__ import annotations

import numpy as np

from minisub import stats
from minisub.report import plots
from minisub.report import sweep as rs

# The MLP atlas's points that correspond to the LM's (family, series, value): read-only, for comparison.
MLP_CATEGORIES = ("shared", "different", "permuted", "shared_head", "shared_hidden")
MLP_PARTS = ("hidden", "head", "all")


def retained(to_different: float, to_shared: float) -> float | None:
    """(x − d) / (s − d) from the mean differences x − d and x − s; None when s = d."""
    spread = to_different - to_shared
    return to_different / spread if spread else None


def _mlp_gain(r: dict) -> dict:
    """An MLP point's trait: accuracy − its reference's accuracy, paired by seed."""
    return stats.brief(np.asarray(r["accuracy"]["values"]) - np.asarray(r["reference"]["values"]))


def mlp_comparison(atlas: dict) -> dict:
    """The MLP atlas's lineage numbers as gains over the reference, with their retained shares.

    ``atlas``: the committed MLP atlas summary. Gains are MNIST test accuracy minus the reference's
    (the teacher's init), paired by seed; shares relative to its 'lineages' shared and different points.
    """
    fams = atlas.get("families", {})
    find = lambda fam, value, series=None: rs.find(atlas, fam, value, series)  # noqa: E731
    s, d = find("lineages", "shared"), find("lineages", "different")
    if s is None or d is None:
        return {}
    acc = lambda r: float(np.mean(np.asarray(r["accuracy"]["values"])))  # noqa: E731
    share = lambda r: (acc(r) - acc(d)) / (acc(s) - acc(d))  # noqa: E731
    row = lambda r: {"value": r["value"], "gain": _mlp_gain(r), "retained": share(r)}  # noqa: E731
    out = {
        "source": "figures/atlas.json", "n_seeds": s["n_seeds"],
        "categories": {c: row(r) for c in MLP_CATEGORIES if (r := find("lineages", c)) is not None},
        "interpolated": [row(r) for r in fams.get("alpha", {}).get("points", []) if 0 < r["value"] < 1],
        "perturbed": {p: [row(r) for r in rs.curve(atlas, "sigma", p)] for p in MLP_PARTS},
    }
    out["half_sigma"] = {p: rs.half_point([r["value"] for r in rows], [r["retained"] for r in rows], 1.0)
                         for p, rows in out["perturbed"].items()}
    return out


OWL_ONLY = ("arms", "diagnostic", "diagnostic_sequences", "diagnostic_iters", "detect")  # not the arms' numbers
BASELINE_ARMS = ("shared", "different", "control")


def lm_owl_arms(lm_owl: dict, recipe: dict) -> dict:
    """lm-owl's per-world gains of the baseline arms, when its summary ran this recipe (same worlds, teachers,
    students; its other arms and analyses aside); else {}."""
    same = lambda c: {k: v for k, v in c.items() if k not in OWL_ONLY}  # noqa: E731
    if not lm_owl or same(lm_owl.get("config", {})) != same(recipe):
        return {}
    return {a: lm_owl["arms"][a]["trait_gain"] for a in BASELINE_ARMS if a in lm_owl["arms"]}


def reproduced(families: dict, lm_owl: dict) -> dict:
    """Per baseline arm: the largest per-world |gain here − gain in lm-owl's run of the same recipe|
    (``max``), and the paired difference here − there by world (``paired``: a Student-t record)."""
    ours = {r["value"]: r["trait_gain"]["values"] for r in families.get("baselines", {}).get("points", [])}
    return {a: {"max": float(np.max(np.abs(np.subtract(ours[a], v["values"])))),
                "paired": stats.paired(ours[a], v["values"]), "lm_owl": stats.brief(v["values"])}
            for a, v in lm_owl.items() if a in ours}


def derived(families: dict) -> dict:
    """Each point's retained share of the shared-init transfer, and per part the σ where it falls to half."""
    share = {key(r): retained(r["paired"]["different"]["mean"], r["paired"]["shared"]["mean"])
             for f in families.values() for r in f["points"] if r["value"] not in ("shared", "different")}
    half = {}
    for part, pts in rs.by_series(families.get("perturbed", {}).get("points", [])).items():
        pts = sorted(pts, key=lambda r: r["value"])
        gains = [share[key(r)] for r in pts]
        half[part] = None if None in gains else rs.half_point([r["value"] for r in pts], gains, 1.0)
    return {"retained": share, "half_sigma": half}


SUFFIX = {"paired.different": " − different", "paired.shared": " − shared", "trait_gain": ""}


def name(r: dict) -> str:
    """A reader's name of a point: its value, or 'series: value' when the series says more than the family."""
    return str(r["value"]) if r["series"] in ("baselines", "interpolated", "permuted") else f"{r['series']}: {r['value']}"


def key(r: dict) -> str:
    """A point's key in the derived numbers: 'family: name'."""
    return f"{r['family']}: {name(r)}"


def label(summary: dict, path: str) -> str:
    """A claim path's name: the point (interpolated ones as α = value) and what of it ('− different': paired)."""
    r = rs.record(summary, path)
    if r is None:
        return path.split(".")[-1]
    key = ".".join(path.split(".")[4:])
    point = f"α = {r['value']:g}" if r["family"] == "interpolated" else name(r)
    return point + SUFFIX.get(key, f" ({key})")


# --- figure panels --------------------------------------------------------------------------------
# One colour per kind of point in both models' panels (Paul Tol's bright cycle, ``plots.PALETTE``).
COLOURS = {"shared": 0, "different": 1, "interpolated": 2, "permuted": 3, "control": 6, "shared_head": 4,
           "shared_hidden": 5, "embeddings": 3, "attention": 4, "mlp": 5, "hidden": 5, "unembedding": 2, "head": 2,
           "all": 6}


def colour(name: str):
    return plots.PALETTE[COLOURS.get(name, 6)]


def bands(ax, shared: dict | None, different: dict | None, labelled: bool = True) -> None:
    """The shared and the different arm's gains as horizontal 95% CI bands."""
    for s, name in ((shared, "shared"), (different, "different")):
        if s is not None:
            ax.axhspan(s["mean"] - s["ci95"], s["mean"] + s["ci95"], color=colour(name), alpha=0.2, lw=0,
                       label=f"{name} init (95% CI)" if labelled else None)
    ax.axhline(0, color="black", lw=0.6)


def _thinned(alphas: list[float], gap: float = 0.3) -> list[float]:
    """The α values to label on a log axis of 1 − α: from the largest down, skipping any closer than ``gap`` (ln)."""
    out = []
    for a in sorted(alphas, reverse=True):
        if not out or np.log((1 - a) / (1 - out[-1])) > gap:
            out.append(a)
    return out


def alpha_panel(ax, rows: list[dict], key=lambda r: r["trait_gain"]) -> None:
    """Gain against 1 − α on a log axis (α grows to the right), mean ± 95% CI."""
    rows = sorted(rows, key=lambda r: r["value"])
    if rows:
        ax.errorbar([1 - r["value"] for r in rows], [key(r)["mean"] for r in rows], yerr=[key(r)["ci95"] for r in rows],
                    marker="o", ms=3, capsize=2, lw=1.2, color=colour("interpolated"), label="interpolated")
        ax.set_xscale("log")
        ax.invert_xaxis()
        shown = _thinned([r["value"] for r in rows])
        ax.set_xticks([1 - a for a in shown], [f"{a:g}" for a in shown], fontsize=6)
        ax.minorticks_off()
    ax.set_xlabel("α (share of the teacher's init; log scale of 1 − α)", fontsize=7)


def sigma_panel(ax, series: dict[str, list[dict]], key=lambda r: r["trait_gain"]) -> None:
    """Gain against σ, one line per perturbed part, log x, mean ± 95% CI."""
    for part, rows in series.items():
        rows = sorted(rows, key=lambda r: r["value"])
        ax.errorbar([r["value"] for r in rows], [key(r)["mean"] for r in rows], yerr=[key(r)["ci95"] for r in rows],
                    marker="o", ms=3, capsize=2, lw=1.2, color=colour(part), label=part)
    if series:
        ax.set_xscale("log")
        rs.log_axis(ax, "x")
        ax.legend(fontsize=6, frameon=False, title="perturbed part", title_fontsize=6, loc="lower left")
    ax.set_xlabel("σ (× each matrix's std)", fontsize=7)


def category_panel(ax, rows: dict[str, dict]) -> None:
    """Bars of named points' gains, 95% CI whiskers."""
    names = list(rows)
    ax.bar(range(len(names)), [rows[n]["mean"] for n in names], yerr=[rows[n]["ci95"] for n in names], capsize=3,
           width=0.62, color=[colour(n) for n in names], alpha=0.85)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=6, rotation=35, ha="right")
    ax.axhline(0, color="black", lw=0.6)


def points_table(summary: dict) -> str:
    """Every point of ``summary`` (lm-lineages' or its untied companion's): trait gain, paired differences with
    its program's shared and different arms, retained share, task, geometry."""
    from minisub.report import pm
    share = summary.get("derived", {}).get("retained", {})
    rows = ["| family | point | trait gain (95% CI) | − different (paired) | − shared (paired) | retained share "
            "| number loss Δ | cos(Δθ_S, Δθ_T) | ‖θ_S⁰ − θ_ref‖ | ‖θ_S − θ_T‖ |", "|---" * 10 + "|"]
    for fam, f in summary["families"].items():
        for r in f["points"]:
            g, pair, s = r["geometry"], r["paired"], share.get(key(r))
            rows.append(f"| {fam} | {name(r)} | {pm(r['trait_gain'])} | {pm(pair.get('different'))} "
                        f"| {pm(pair.get('shared'))} | {'n/a' if s is None else f'{s:.0%}'} "
                        f"| {pm(r['number_loss_change'])} | {pm(g['update_cos'])} | {g['dist_init']['mean']:.2f} "
                        f"| {g['dist_teacher']['mean']:.2f} |")
    return "\n".join(rows)


def parts_lines(summary: dict, prefix: str = "") -> list[str]:
    """Per part, the verdict of 'the student gains over the different-init one' at each σ (from the verdicts);
    ``prefix`` 'untied_' reads the untied companion's verdicts and config."""
    v = {x["id"]: x["status"] for x in summary["verdicts"]}
    c = summary["untied"]["config"] if prefix else summary["config"]
    return [f"- {p}: " + ", ".join(f"σ = {s:g} {v.get(f'{prefix}{p}_{s:g}', 'not measured')}" for s in c["sigmas"])
            for p in c["parts"]]


def comparison_lines(summary: dict) -> list[str]:
    """The retained shares and half-σ points, ours and the MLP atlas's (descriptive: ratios of mean gains)."""
    from minisub.report import pm
    d, mlp = summary.get("derived", {}), summary.get("mlp", {})
    g = lambda x: "beyond the grid" if x is None else f"{x:.2g}"  # noqa: E731
    out = ["- Half the shared-init transfer is lost (retained share 50%, log-linear between grid points) at σ ≈ "
           + "; ".join(f"{p}: {g(x)}" for p, x in d.get("half_sigma", {}).items()) + " (toy LM)"]
    if mlp:
        out[0] += "; MLP atlas ([atlas.json](atlas.json)): " + "; ".join(f"{p}: {g(x)}" for p, x in mlp["half_sigma"].items())
        cat = mlp["categories"]
        out.append("- MLP atlas, retained share of its shared-init gain: " + ", ".join(
            f"{k} {v['retained']:.0%}" for k, v in cat.items() if k not in ("shared", "different")) + "; interpolated "
            + ", ".join(f"α = {r['value']:g} {r['retained']:.0%}" for r in mlp["interpolated"]) + ".")
    if rerun := d.get("lm_owl_rerun"):  # same config; the references pretrained again on the machine of this run
        out.append("- The baseline points rerun lm-owl's paper recipe ([lm_owl.json](lm_owl.json): same config, other "
                   "arms in the program, references pretrained again): per world, this − lm_owl.json: "
                   + "; ".join(f"{a} paired {pm(x['paired'])} (n = {x['paired']['n']}; lm_owl.json {pm(x['lm_owl'])}), "
                               f"largest |difference| {x['max']:.1e}" for a, x in rerun.items()) + ". "
                   "A largest difference far above float rounding means the references themselves differ: 2000 "
                   "pretraining steps carry a CPU's last-bit rounding into other references (lm-owl's stored "
                   "references are not in the repository).")
    return out
