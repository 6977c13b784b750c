"""mnist-trajectories: the mnist-aux runs followed step by step (``minisub.theory.trajectories``).

Run:     minisub run mnist-trajectories [--preset quick|paper|test] [--variants adam,sgd,sgd+projection] ...
Paper:   minisub run mnist-trajectories --preset paper --out figures   (writes figures/mnist_trajectories.*)
Redraw:  minisub figures mnist-trajectories                          (from figures/mnist_trajectories.json)
"""

from __future__ import annotations

import numpy as np

from minisub import claims as claims_lib
from minisub import report
from minisub.claims import Claim
from minisub.mlp import pipeline
from minisub.report import bands, plots
from minisub.run import runner
from minisub.theory import trajectories as tr
from minisub.theory import trajectory_analysis as analysis
from minisub.theory.trajectories import TrajectoryConfig, parse_variant

NAME = "mnist-trajectories"
STEM = "mnist_trajectories"
ORDER = 30  # its place in figures/README.md
PROJECTION_TOL = 1e-6  # a logged cos(update, −∇L_T) above this under projection would be a bug

PRESETS = {
    # The published recipe, 20 seeds, three variants.
    "paper": TrajectoryConfig(seeds=20),
    # The same on 8 seeds.
    "quick": TrajectoryConfig(seeds=8),
    # A tiny world on a real-MNIST subset, for tests: seconds per variant.
    "test": TrajectoryConfig(
        seeds=3, trace_every=2, trait_batch=128, n_probe=256, n_aligned=3,
        recipe=pipeline.AuxConfig(
            hidden=(32,), n_train=2048, n_noise=2048, n_test=1000, teacher_epochs=2, student_epochs=2,
            teacher_batch=256, student_batch=256, teacher_lr=3e-3, student_lr=3e-3)),
}
DEFAULT_PRESET = "quick"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"


def _variant_claims(v: str) -> list[Claim]:
    al, an = f"variants.{v}.alignment.grad_cos.student_aux.", f"analysis.variants.{v}."
    return [
        Claim(f"{v}_aligned_step0", f"{v}: at step 0 the shared-init aux student's distillation gradient is aligned "
              "with the trait gradient, cos(∇L_distill, ∇L_T) > 0 (the one-step picture)", "minisub",
              al + "first", ">"),
        *[Claim(f"{v}_aligned_{e}_epoch", f"{v}: cos(∇L_distill, ∇L_T) is positive on average over the {e} epoch "
                "(per seed, the mean over its logged steps)", "kitkana2026", al + f"{e}_epoch_average", ">")
          for e in ("first", "last")],
        Claim(f"{v}_trait_early", f"{v}: most of the trait arrives in the first epoch (gain after epoch 1 minus half "
              "the final gain > 0; interval bounded from the per-epoch intervals)", "kitkana2026",
              an + "first_epoch_margin.student_aux", ">"),
        Claim(f"{v}_closer", f"{v}: the shared-init aux student ends closer to the trained teacher than it started "
              "(‖θ_S − θ_T‖ at the last logged step over step 0 < 1)", "minisub",
              an + "dist_teacher_rel_last.student_aux", "<", 1.0),
    ]


def claims(summary: dict) -> list[Claim]:
    """The claims this summary can test: which variants and contrasts exist decide which."""
    variants, out = summary["variants"], []
    loss = lambda v: f"variants.{v}.distill_loss.student_aux.final"  # noqa: E731
    acc = lambda v, a="student_aux": f"variants.{v}.accuracy.{a}"  # noqa: E731
    if "adam" in variants:
        out += [Claim("shared_aux_transfers", "adam (published recipe): the shared-init aux student beats the "
                      "reference", "cloud2025", acc("adam"), ">", baseline=acc("adam", "reference")),
                Claim("cross_aux_at_reference", "adam: the different-init aux student stays at the reference "
                      "(within ±0.02)", "cloud2025", acc("adam", "cross_aux"), "within", 0.02,
                      baseline=acc("adam", "reference"))]
    out += [c for v, s in variants.items() if s["projection"] == "none" for c in _variant_claims(v)]
    for name, c in summary["projection"].items():
        base = c["base"]
        out += [Claim(f"{name}_reduces", f"{name}: projecting out the trait gradient lowers the shared-init aux "
                      f"student's accuracy (paired against {base})", "kitkana2026", acc(name), "<", baseline=acc(base),
                      task_loss=(loss(base), loss(name))),
                Claim(f"{name}_stops", f"{name}: projection stops transfer (the shared-init aux student within ±0.02 "
                      "of the reference)", "kitkana2026", acc(name), "within", 0.02,
                      baseline=acc(name, "reference"), task_loss=(loss(base), loss(name))),
                Claim(f"{name}_still_distils", f"{name}: distillation still works under projection (its loss falls "
                      "from step 0 to the last epoch)", "kitkana2026",
                      f"projection.{name}.arms.student_aux.distill_loss_drop.other", ">")]
    if "sgd_vs_adam" in summary["optimizers"]:
        out.append(Claim("sgd_transfers_less", "plain SGD transfers less of the trait than Adam in the same number "
                         "of steps (shared-init aux accuracy, paired)", "minisub", acc("sgd"), "<",
                         baseline=acc("adam"), task_loss=(loss("adam"), loss("sgd"))))
    if d := summary["init_distances"]:
        travel = next(iter(summary["variants"].values()))["final_geometry"]["teacher_travel"]["student_aux"]["mean"]
        out += [Claim("matching_control", "weight matching undoes a hidden-unit permutation of the teacher's init "
                      "(matched distance within ±1e-3)", "minisub", "init_distances.control_aligned.total", "within",
                      1e-3),
                Claim("matched_init_far", f"a different init stays far from the teacher's after weight matching "
                      f"(matched distance > twice the teacher's travel, {2 * travel:.3g})", "minisub",
                      "init_distances.aligned.total", ">", 2 * travel)]
        if d.get("trained"):
            out.append(Claim("cross_aux_closer_matched", "after distillation the different-init aux student is closer "
                             "to the teacher after weight matching than its starting point was (after − before)",
                             "minisub", "init_distances.trained.teacher_vs_cross_aux.aligned.total", "<",
                             baseline="init_distances.trained.teacher_vs_cross_start.aligned.total"))
    return out


def analyse(summary: dict) -> dict:
    """The summary with Student-t curves, derived numbers and every claim's verdict (pure; no recompute)."""
    out = analysis.analyse(summary)
    return {**out, "verdicts": claims_lib.evaluate(claims(out), out)}


def run(cfg: TrajectoryConfig, *, command: str, execution: runner.Execution | None = None):
    """Every variant (trained or loaded), then the combined, analysed summary; (summary | None, directory)."""
    return tr.run(NAME, cfg, execution or runner.Execution(experiment=NAME), command, analyse)


def _pm(s: dict | None, fmt: str = ".3f", i: int | None = None) -> str:
    """mean ± ci of a brief (or of a curve at logged step ``i``), both in ``fmt``."""
    return report.pm(s, fmt, fmt, i)


def table(summary: dict) -> str:
    """Markdown tables: final accuracy, alignment and geometry, the contrasts, init distances."""
    variants, arms = summary["variants"], [a["name"] for a in summary["arms"]]
    rows = ["| variant | reference | teacher | " + " | ".join(arms) + " |", "|---" * (3 + len(arms)) + "|"]
    rows += [f"| {v} | " + " | ".join(_pm(s["accuracy"][a]) for a in ("reference", "teacher", *arms)) + " |"
             for v, s in variants.items()]
    rows += ["", "| variant | arm | grad_cos > 0 (mean / CI low) | grad_cos step 0 | grad_cos time avg | grad_cos last "
             "| cos(update, −∇L_T) avg | ‖θ_S−θ_T‖ last/first | KL(T‖S) first → last | 1st-epoch share of gain "
             "| distill loss first → final |", "|---" * 11 + "|"]
    for v, s in variants.items():
        for a in arms:
            g, u, kl = (s["alignment"]["grad_cos"][a], s["alignment"]["update_trait_cos"][a],
                        s["curves"]["function_kl"][a])
            n, dl, share = g["n_logged"], s["distill_loss"][a], s["trait"][a]["first_epoch_share"]
            rows.append(f"| {v} | {a} | {round(g['frac_mean_pos'] * n)}/{n} / {round(g['frac_ci_lo_pos'] * n)}/{n} "
                        f"| {_pm(g['first'])} | {_pm(g['time_average'])} | {_pm(g['last'])} | {_pm(u['time_average'])} "
                        f"| {_pm(s['curves']['dist_teacher_rel'][a], i=-1)} | {_pm(kl, '.3g', 0)} → "
                        f"{_pm(kl, '.3g', -1)} | {'n/a' if share is None else f'{share:.2f}'} "
                        f"| {_pm(dl['first_step'], '.3g')} → {_pm(dl['final'], '.3g')} |")
    for c in (*summary["projection"].values(), *summary["optimizers"].values()):
        rows += ["", f"{c['other']} against {c['base']} (paired over {c['n_seeds']} seeds; diff = {c['other']} − "
                 f"{c['base']}):", "", "| arm | accuracy (base) | accuracy (other) | diff | gain over ref. (base) "
                 "| gain (other) | final distill loss (base) | (other) | loss drop (other) |", "|---" * 9 + "|"]
        rows += [f"| {a} | " + " | ".join(_pm(r[k][side], fmt) for k, side, fmt in CONTRAST) + " |"
                 for a, r in c["arms"].items()]
    if d := summary["init_distances"]:
        layers = list(d["raw"])
        rows += ["", f"Teacher's init vs the cross-model student's init ({d['n']} seeds; weight matching):", "",
                 "| | " + " | ".join(layers) + " |", "|---" * (1 + len(layers)) + "|"]
        for q, label in (("raw", "raw ‖θ_T⁰ − θ_X⁰‖"), ("aligned", "weight-matched"),
                         ("control_raw", "control: permuted copy, raw"), ("control_aligned", "control, matched")):
            rows.append(f"| {label} | " + " | ".join(_pm(d[q][layer], ".3g") for layer in layers) + " |")
        if trained := d.get("trained"):
            rows += ["", f"Trained networks, raw vs weight-matched total distance ({d['n']} seeds, the first variant):",
                     "", "| pair | raw | weight-matched |", "|---|---|---|"]
            rows += [f"| {p} | {_pm(q['raw']['total'], '.3g')} | {_pm(q['aligned']['total'], '.3g')} |"
                     for p, q in trained.items()]
    return "\n".join(rows)


CONTRAST = (("accuracy", "base", ".3f"), ("accuracy", "other", ".3f"), ("accuracy", "diff", ".3f"),
            ("gain", "base", ".3f"), ("gain", "other", ".3f"), ("distill_loss_final", "base", ".3g"),
            ("distill_loss_final", "other", ".3g"), ("distill_loss_drop", "other", ".3g"))
PLOTTED = (("grad_cos", "cos(∇L_distill, ∇L_T)", "linear"),
           ("update_cos", "cos(θ_S − θ_S⁰, θ_T − θ_T⁰)", "linear"),
           ("dist_teacher_rel", "‖θ_S − θ_T‖ / its value at step 0", "linear"),
           ("function_kl", "KL(teacher ‖ student), test images", "log"),
           ("probe_accuracy", "test accuracy (the trait)", "linear"))
ARM_STYLE = {"student_aux": (plots.PALETTE[0], 1.0, "-"), "cross_aux": (plots.PALETTE[1], 1.0, "-"),
             "student_all": (plots.PALETTE[0], 0.4, "--"), "cross_all": (plots.PALETTE[1], 0.4, "--")}
ARM_LABEL = {"student_aux": "shared init, aux logits", "cross_aux": "different init, aux logits",
             "student_all": "shared init, all logits", "cross_all": "different init, all logits"}
HLINES = {"grad_cos": 0.0, "update_cos": 0.0, "dist_teacher_rel": 1.0}


def _bars(ax, c: dict, key: str, arms: list[str], ylabel: str, first_key: str | None = None):
    x = np.arange(len(arms))
    for j, (side, color) in enumerate((("base", plots.PALETTE[0]), ("other", plots.PALETTE[2]))):
        ax.bar(x + (j - 0.5) * 0.38, bands.array([c["arms"][a][key][side]["mean"] for a in arms]), 0.38,
               yerr=np.nan_to_num(bands.array([c["arms"][a][key][side]["ci95"] for a in arms])), capsize=2,
               color=color, alpha=0.85, label=c[side])
        if first_key:
            ax.plot(x + (j - 0.5) * 0.38, bands.array([c["arms"][a][first_key][side]["mean"] for a in arms]), "_",
                    color="black", ms=9, mew=1.2, label="at step 0" if j == 0 else None)
            ax.set_yscale("log")
    ax.set_xticks(x, [ARM_LABEL.get(a, a).replace(", ", "\n") for a in arms], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False)


def _panel(ax, summary: dict, v: str, q: str, scale: str, projected: dict) -> None:
    s = summary["variants"][v]
    ax.set_yscale(scale)
    for a in (a["name"] for a in summary["arms"]):
        color, alpha, ls = ARM_STYLE.get(a, (plots.PALETTE[3], 1.0, ":"))
        c = s["curves"][q][a]
        bands.band(ax, s["steps"], c["mean"], c["ci95"], color=color, alpha=alpha, ls=ls, label=ARM_LABEL.get(a, a))
    if (proj := projected.get(s["optimizer"])) is not None:
        sp = summary["variants"][proj]
        c = sp["curves"][q]["student_aux"]
        bands.band(ax, sp["steps"], c["mean"], c["ci95"], color=plots.PALETTE[2], ls=":",
                   label=f"shared init, aux logits, {proj}")
    for e in range(1, len(next(iter(s["accuracy_by_epoch"].values())))):
        ax.axvline(e * s["steps_per_epoch"], color="grey", lw=0.5, alpha=0.5)
    if q in HLINES:
        ax.axhline(HLINES[q], color="black", lw=0.6)
    if q == "probe_accuracy":
        ax.axhline(s["accuracy"]["reference"]["mean"], color="grey", lw=0.8, ls="--")


@plots.styled
def figures(summary: dict) -> dict:
    """Trajectories (rows: quantities; columns: unprojected variants) with CI bands, and projection bars."""
    variants, arms = summary["variants"], [a["name"] for a in summary["arms"]]
    columns = [v for v in variants if not parse_variant(v)[1]] or list(variants)
    projected = {parse_variant(v)[0]: v for v in variants if parse_variant(v)[1]}
    ncols = max(2, len(columns))
    fig, axes = plots.figure(3.4 * ncols, 1.9 * (len(PLOTTED) + 1) + 1.0, nrows=len(PLOTTED) + 1, ncols=ncols,
                             squeeze=False)
    fig.set_layout_engine("constrained")
    for row, (q, label, scale) in enumerate(PLOTTED):
        for col, v in enumerate(columns):
            _panel(axes[row][col], summary, v, q, scale, projected)
        for ax in axes[row][len(columns):]:
            ax.set_visible(False)
        shown = axes[row][:len(columns)]
        for ax in shown:  # one y range per row, so the columns compare
            ax.set_ylim(min(a.get_ylim()[0] for a in shown), max(a.get_ylim()[1] for a in shown))
        axes[row][0].set_ylabel(label, fontsize=8)
    for col, v in enumerate(columns):
        axes[0][col].set_title(f"student {variants[v]['optimizer']} (lr {variants[v]['student_lr']:g})")
        axes[len(PLOTTED) - 1][col].set_xlabel("student step (grey: epoch ends)")
    c = next(iter(summary["projection"].values()), None)
    for k, ax in enumerate(axes[-1]):
        ax.set_visible(c is not None and k < 2)
    if c:
        _bars(axes[-1][0], c, "accuracy", arms, "final test accuracy")
        axes[-1][0].axhline(variants[c["base"]]["accuracy"]["reference"]["mean"], color="grey", lw=0.8, ls="--")
        axes[-1][0].set_title("transfer, with and without projection", fontsize=8)
        _bars(axes[-1][1], c, "distill_loss_final", arms, "distillation loss (last epoch)", "distill_loss_first")
        axes[-1][1].set_title("distillation loss: last epoch (bars), step 0 (—)", fontsize=8)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False, fontsize=7)
    fig.suptitle(f"Student trajectories on the mnist-aux recipe, n = {summary['n_seeds']} seeds per curve\n"
                 "lines: mean; bands and error bars: 95% Student-t CI over seeds; dashed grey: reference accuracy",
                 fontsize=8)
    return {STEM: fig}


def _described(summary: dict) -> list[str]:
    """Descriptive lines: numbers from the summary and its analysis, no verdicts."""
    out, a = [], summary["analysis"]
    for v, s in summary["variants"].items():
        if st := a["variants"][v]["steps"].get("student_aux"):
            gains = ", ".join(_pm(g) for g in s["trait"]["student_aux"]["gain_by_epoch"])
            out.append(f"{v}, shared-init aux student: cos(∇L_distill, ∇L_T) has a positive mean at "
                       f"{st['mean_above_0']} and an interval above 0 at {st['interval_above_0']} of {st['n_logged']} "
                       f"logged steps; its gain over the reference after each epoch: {gains}.")
    for name, c in summary["projection"].items():
        kept = a["projection_kept"][name]
        out.append(f"{name}: {'n/a' if kept is None else f'{kept:.0%}'} of the shared-init aux student's mean gain "
                   f"over the reference survives the projection (ratio of means, paired over {c['n_seeds']} seeds; "
                   f"the contrast table below); the largest logged cos(update, −∇L_T) under projection is "
                   f"{a['variants'][name]['max_update_trait_cos']:.2g} (tolerance {PROJECTION_TOL:g}).")
    out.append("Scope: Theorem 1 covers one small step from θ⁰ toward a slightly moved teacher; past step 0 (a trained "
               "teacher, a moved student) the signs above are measurements, not the theorem's.")
    return out


def readme(summary: dict) -> str:
    """The figures/README.md section: figure, verdicts, numbers, tables, how to regenerate."""
    cfg, r = summary["config"], summary["config"]["recipe"]
    widths = "-".join(str(w) for w in (784, *r["hidden"], 10 + r["n_aux"]))
    return "\n".join([
        *report.section_head(NAME, STEM, "multi-step trajectories, optimiser and trait projection",
                             summary["n_seeds"]),
        f"The mnist-aux recipe (MLP {widths}, {r['n_train']} training images, {r['n_noise']} noise images, teacher "
        f"{r['teacher_epochs']} and students {r['student_epochs']} epochs, batch {r['student_batch']}) in the variants "
        f"{', '.join(cfg['variants'])} (Adam lr {r['student_lr']:g}; SGD lr {cfg['sgd_lr']:g}, chosen on the "
        f"distillation loss alone). Every {cfg['trace_every']} student steps, per arm: cos(∇L_distill, ∇L_T) with L_T "
        f"the teacher's class-logit cross-entropy on {cfg['trait_batch']} labelled training images at the student; "
        f"cos(update, −∇L_T); ‖θ_S − θ_T‖; cos(θ_S − θ_S⁰, θ_T − θ_T⁰); KL(teacher ‖ student) on {cfg['n_probe']} "
        "test images and their accuracy. Projection: each update loses its component along −∇L_T (the same batch's) "
        f"when positive. Variants share their teachers, so contrasts are paired by seed. CI: {summary['ci']}.",
        "", *claims_lib.lines(claims(summary), summary), "",
        *[f"- {line}" for line in _described(summary)],
        "", table(summary), "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
