"""mnist-aux: the paper's MNIST auxiliary-logit experiment ([cloud2025] §6.2), six arms.

Run:     minisub run mnist-aux [--preset quick|paper|test] [--seeds N] [--<field> VALUE ...]
Paper:   minisub run mnist-aux --preset paper --out figures     (100 seeds; writes figures/mnist_aux.*)
Redraw:  minisub figures mnist-aux                               (from figures/mnist_aux.json alone)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minisub import claims, references, report, stats
from minisub import config as config_lib
from minisub.claims import Claim
from minisub.mlp import mnist, pipeline
from minisub.report import plots, verdicts
from minisub.run import parallel, runner, store

NAME = "mnist-aux"
STEM = "mnist_aux"
ORDER = 10  # its place in figures/README.md

PRESETS = {
    # The published recipe, 100 seeds (tens of minutes on 2 CPU cores).
    "paper": pipeline.AuxConfig(),
    # The same recipe on 8 seeds: the main job, a few minutes on 2 CPU cores.
    "quick": pipeline.AuxConfig(seeds=8),
    # A tiny world for tests: seconds.
    "test": pipeline.AuxConfig(
        seeds=3, hidden=(32,), n_train=2048, n_noise=2048,
        teacher_epochs=2, student_epochs=2, teacher_batch=256, student_batch=256, teacher_lr=3e-3, student_lr=3e-3,
    ),
}
DEFAULT_PRESET = "quick"

# Read off the paper's figure (100 runs) [cloud2025], from minisub/references.py: (mean, CI or None).
# Shown beside ours, never used as results.
PAPER = {arm: (v if isinstance(v, tuple) else (v, None))
         for arm in ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")
         for v in [references.number("cloud2025", f"mnist_{arm}")]}
LABELS = {
    "reference": "reference\n(teacher's init)",
    "teacher": "teacher",
    "student_aux": "student\naux only",
    "student_all": "student\nall logits",
    "cross_aux": "cross-model\naux only",
    "cross_all": "cross-model\nall logits",
}


def summarise(cfg: pipeline.AuxConfig, results: dict, command: str) -> dict:
    """The JSON behind the figure: per arm accuracy (mean, 95% CI, n, per seed) and geometry.

    Seeds flagged non-finite (``--on-nonfinite mark``) are left out of every statistic and counted.
    """
    ok = np.asarray(results.get("finite", np.ones(cfg.seeds, bool)), bool)
    arms = ["reference", "teacher", *cfg.arm_names]
    geometry = {
        arm.name: {
            q: {layer: stats.brief(v[ok, k]) for layer, v in by_layer.items()}
            for q, by_layer in results["geometry"].items()
        }
        for k, arm in enumerate(cfg.arms)
    }
    by_epoch = {
        arm.name: [stats.brief(results["student_accuracy_by_epoch"][ok, e, k]) for e in range(cfg.student_epochs)]
        for k, arm in enumerate(cfg.arms)
    }
    return analyse({
        "experiment": NAME,
        "command": command,
        "n_seeds": int(ok.sum()),
        "nonfinite_seeds": [int(s) for s in np.flatnonzero(~ok)],
        "ci": stats.TEST,
        "accuracy": {a: stats.mean_ci(results["accuracy"][a][ok]) for a in arms},
        "student_accuracy_by_epoch": by_epoch,
        "geometry": geometry,
        "paper": {a: {"mean": m, "ci95": c} for a, (m, c) in PAPER.items()},
        "seconds_per_seed": float(np.mean(results["seconds"])),
        "config": config_lib.to_dict(cfg),
        "provenance": store.provenance(),
    })


def run(cfg: pipeline.AuxConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Train (or load from the results store); (summary, run directory), summary None while shards remain."""
    ex = execution or runner.Execution(experiment=NAME)
    directory = store.run_dir(NAME, cfg)
    if not ex.force and (done := store.load_complete(directory)):
        return done[1], directory
    if ex.compute:
        store.write_json(directory / "config.json", {"config": config_lib.to_dict(cfg), **store.provenance()})
    results = runner.run(cfg, mnist.load_cached() if ex.compute else None, directory, execution=ex)
    if results is None:
        return None, directory
    summary = summarise(cfg, results, command)
    if parallel.is_writer():
        store.finish(directory, results, summary)
    return summary, directory


def table(summary: dict) -> str:
    """A Markdown table: ours against the paper, arm by arm."""
    rows = ["| arm | ours (mean ± 95% CI) | n | paper |", "|---|---|---|---|"]
    for arm, s in summary["accuracy"].items():
        m, c = PAPER.get(arm, (None, None))
        paper = "" if m is None else f"{m:.2f}" + (f" ± {c:.2f}" if c else "")
        rows.append(f"| {arm} | {s['mean']:.3f} ± {s['ci95']:.3f} | {s['n']} | {paper} |")
    rows += ["", "| arm | ‖θ_S−θ_T‖ | ‖θ_S⁰−θ_T‖ (start) | ‖θ_S⁰−θ_T⁰‖ | ‖θ_S−θ_S⁰‖ | cos(θ_S−θ_S⁰, θ_T−θ_T⁰) |",
             "|---|---|---|---|---|---|"]
    for arm, g in summary["geometry"].items():
        cell = lambda q: f"{g[q]['total']['mean']:.3f} ± {g[q]['total']['ci95']:.3f}"
        start = g.get("dist_start_teacher", {}).get("total")
        start_cell = f"{start['mean']:.3f} ± {start['ci95']:.3f}" if start else "n/a"
        rows.append(f"| {arm} | {cell('dist_teacher')} | {start_cell} | {cell('dist_init')} | {cell('travel')} "
                    f"| {cell('update_cos')} |")
    return "\n".join(rows)


CLAIMS = [
    Claim("aux_transfers", "The aux-only student (shared init) beats its reference, the teacher's init", "cloud2025",
          "accuracy.student_aux", ">", 0.0, baseline="accuracy.reference"),
    Claim("cross_aux_stays", "A cross-model aux-only student stays at its reference (within ±0.03)", "cloud2025",
          "accuracy.cross_aux", "within", 0.03, baseline="accuracy.reference"),
    # The community replications' range for the aux-only student, 0.55–0.70: one claim per end.
    Claim("aux_above_community", "The aux-only student is above the community replications' 0.55", "community",
          "accuracy.student_aux", ">", 0.55),
    Claim("aux_below_community", "The aux-only student is below the community replications' 0.70", "community",
          "accuracy.student_aux", "<", 0.70),
]


def official_permutation(summary: dict) -> float:
    """Cross-model aux-only accuracy under the official code's random permutation instead of a derangement.

    A random permutation leaves each student on its own init with probability 1/n: a mixture of the
    two arms' means (an estimate from ours, not a measurement).
    """
    n, acc = summary["n_seeds"], summary["accuracy"]
    return (1 - 1 / n) * acc["cross_aux"]["mean"] + acc["student_aux"]["mean"] / n


def analyse(summary: dict) -> dict:
    """The summary with every number the README states beside the measurements, and the verdicts."""
    out = {**summary, "ci": stats.TEST}
    if {"student_aux", "cross_aux"} <= set(summary["accuracy"]) and summary["n_seeds"] > 0:
        out["official_permutation_cross_aux"] = official_permutation(summary)
    out["verdicts"] = claims.evaluate(CLAIMS, out)
    return out


@plots.styled
def _figure(summary: dict):
    """Bars with 95% CIs per arm, the paper's values marked beside ours."""
    acc = summary["accuracy"]
    arms = list(acc)
    fig, ax = plots.figure(6.4, 3.2)
    x = np.arange(len(arms))
    ax.bar(x, [acc[a]["mean"] for a in arms], yerr=[acc[a]["ci95"] for a in arms], width=0.62, capsize=3,
           color=[plots.PALETTE[0] if "cross" not in a else plots.PALETTE[1] for a in arms], alpha=0.9,
           label=f"minisub (mean, 95% CI, n = {summary['n_seeds']} seeds)")
    for k, a in enumerate(arms):
        if a in PAPER:
            m, c = PAPER[a]
            ax.errorbar(k + 0.4, m, yerr=c or 0, fmt="D", ms=4, color="black", capsize=2,
                        label="paper (read off its figure)" if k == 0 else None)
        ax.text(k, acc[a]["mean"] + (acc[a]["ci95"] or 0) + 0.02, f"{acc[a]['mean']:.2f}", ha="center", fontsize=7)
    ax.axhline(0.1, color="grey", lw=0.8, ls="--")
    ax.text(len(arms) - 0.45, 0.1, "chance", color="grey", fontsize=7, ha="left", va="center", clip_on=False)
    ax.set_xticks(x, [LABELS.get(a, a) for a in arms])
    ax.set_ylabel("MNIST test accuracy (class logits)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Subliminal transfer through auxiliary logits on noise ({summary['n_seeds']} seeds)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig


@plots.styled
def figures(summary: dict) -> dict:
    return {STEM: _figure(summary)}


PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"


def _discussion(summary: dict) -> list[str]:
    """Numbers beyond the table, each read from the summary."""
    acc, geo, out = summary["accuracy"], summary["geometry"], []
    if "official_permutation_cross_aux" in summary:
        out += [f"The paper's values are read off a bar chart (about ±0.01–0.02) [cloud2025]. Our cross-model control "
                f"uses a derangement; the official code's random permutation leaves about 1 in {summary['n_seeds']} "
                f"students on their own init, which with our means would give "
                f"{summary['official_permutation_cross_aux']:.3f} instead of {acc['cross_aux']['mean']:.3f} for "
                "cross-model aux-only (an estimate, not a run).", ""]
    if "student_aux" in geo and "dist_start_teacher" in geo["student_aux"]:
        cells = [f"{arm} {g['dist_start_teacher']['total']['mean']:.2f} → {g['dist_teacher']['total']['mean']:.2f} "
                 f"(cos {g['update_cos']['total']['mean']:+.3f})" for arm, g in geo.items()]
        out += ["Parameter space (distance to the trained teacher, start → end of distillation; cosine of the "
                "student's update with the teacher's; means over seeds): " + "; ".join(cells) + ".", ""]
    return out


def readme(summary: dict) -> str:
    """The figures/README.md section: figure, ours vs the paper, the checked claims, geometry, how to regenerate."""
    acc = summary["accuracy"]
    notes = [f"{arm} {acc[arm]['mean']:.3f} vs {m:.2f} ({acc[arm]['mean'] - m:+.3f})"
             for arm, (m, _) in PAPER.items() if arm in acc]
    return "\n".join([
        *report.section_head(NAME, STEM, "auxiliary-logit transfer on MNIST", summary["n_seeds"]),
        "Published recipe [cloud2025] (§6.2): 784-256-256-13 MLP, W ~ N(0, 1/fan_in), pixels in",
        "[-1, 1]; teacher: CE on the 10 class logits, Adam 3e-4, batch 1024, 5 epochs; students: KL on",
        "the 3 auxiliary logits (or all 13) on a fixed per-seed set of 60 000 Uniform[-1, 1] noise",
        "images, Adam 3e-4, batch 1024, 5 epochs; cross-model students start from another seed's init",
        f"(a derangement). Accuracy: argmax of the class logits on the 10k test set. CI: {stats.TEST}.",
        "",
        table(summary),
        "",
        "Differences from the paper's values (read off its figure) [cloud2025]: " + "; ".join(notes) + ".",
        "",
        *verdicts.table(CLAIMS, summary, lambda p: p.split(".")[-1]),
        "",
        *_discussion(summary),
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
