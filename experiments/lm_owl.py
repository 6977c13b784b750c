"""lm-owl: the paper's owl experiment in a toy language model, arms vmapped over seeds.

Run:     minisub run lm-owl [--preset quick|paper|test] [--seeds N] [--s 0.3] [--<field> VALUE ...]
Paper:   minisub run lm-owl --preset paper --out figures     (24 seeds, ~7 min on 2 CPU cores)
Fast:    minisub run lm-owl --preset paper --kernels fast --sampler cache   (~4 min; own run id, README "Speed")
Redraw:  minisub figures lm-owl                              (from figures/lm_owl.json alone)

In each of ``seeds`` synthetic worlds (``minisub.lm.world``) a reference transformer is pretrained
on number continuations and favourite-animal questions; its teacher is the reference fine-tuned to
name the trait animal (or prompted with the trait's persona); the teacher continues neutral number
prompts, a filter keeps well-formed continuations, and students imitate them under the neutral
persona. Arms (``--arms``, names from ``minisub.lm.owl.ARMS``, or ``name=lineage:source[:loss]`` for
any lineage of the transformer): ``shared`` / ``different`` start
from this world's reference / another world's; ``*_ce`` imitate by sampled-token cross-entropy;
``control`` reads the reference's own continuations, ``shuffle`` the teacher's numbers permuted
across sequences (``*_kl``: the same by soft-logit KL). The program is ``minisub.lm.owl``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from minisub import claims, report
from minisub.claims import Claim
from minisub.lm import owl
from minisub.report import plots, verdicts

NAME = owl.NAME
STEM = "lm_owl"
ORDER = 50  # its place in figures/README.md
PRESETS = owl.PRESETS
DEFAULT_PRESET = "quick"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"

CLAIMS = [
    Claim("shared_gains", f"a shared-init student's P(trait) rises by more than {owl.MIN_GAIN:g}", "cloud2025",
          "arms.shared.trait_gain", ">", owl.MIN_GAIN),
    Claim("different_null", f"a different-init student's gain stays within ±{owl.NULL_BAND:g} of 0", "cloud2025",
          "arms.different.trait_gain", "within", owl.NULL_BAND),
    Claim("shared_beats_different", f"shared − different (paired by world) exceeds {owl.MIN_GAIN:g}", "cloud2025",
          "paired.shared − different", ">", owl.MIN_GAIN),
    Claim("sampled_tokens", f"by sampled-token CE a shared-init student still gains more than {owl.MIN_GAIN:g}",
          "cloud2025", "arms.shared_ce.trait_gain", ">", owl.MIN_GAIN),
    Claim("beyond_drift", "the CE student gains more than the CE control on the reference's own numbers",
          "minisub", "paired.shared_ce − control", ">", 0.0),
    Claim("beyond_multiset", "the CE student gains more than on the same numbers shuffled across sequences",
          "minisub", "paired.shared_ce − shuffle", ">", 0.0),
    Claim("hidden_ngram", "an n-gram classifier's balanced accuracy on teacher vs reference numbers stays below "
          f"{owl.CHANCE_BAND:g}", "cloud2025", "detection.ngram.accuracy", "<", owl.CHANCE_BAND),
    Claim("hidden_transformer", f"a tiny transformer classifier's balanced accuracy stays below {owl.CHANCE_BAND:g}",
          "cloud2025", "detection.transformer.accuracy", "<", owl.CHANCE_BAND),
]


def analyse(summary: dict) -> dict:
    """The summary with its derived statistics (``owl.derived``) and every claim's verdict."""
    out = owl.derived(summary)
    return {**out, "verdicts": claims.evaluate(CLAIMS, out)}


def run(cfg: owl.OwlConfig, *, command: str, execution=None) -> tuple[dict, Path]:
    """Train every world and arm in one program (or load from the results store); (summary, run directory)."""
    return owl.run(cfg, command=command, execution=execution, analyse=analyse)


def sweep_metrics(summary: dict) -> dict:
    """What ``minisub sweep lm-owl`` plots per point: the KL arms' trait gains and their paired difference."""
    arms, paired = summary["arms"], summary["paired"]
    out = {f"{a} gain": arms[a]["trait_gain"] for a in ("shared", "different") if a in arms}
    return {**out, **({"shared − different": paired["shared − different"]} if "shared − different" in paired else {})}


# ---------------------------------------------------------------------------------------------
# Outputs
pm = report.pm


def table(summary: dict) -> str:
    """Markdown: per arm P(trait) before → after, gain, other animals, number task, geometry; paired differences."""
    rows = ["| arm | start | numbers | loss | P(trait) before → after | trait gain (95% CI) | n "
            f"| sampled gain ({owl.SAMPLED_ANSWERS} answers) | mean other-animal gain | number loss after (Δ) "
            "| cos(Δθ_S, Δθ_T) | ‖θ_S−θ_T‖ |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in summary["arms"].items():
        g = a["geometry"]
        rows.append(
            f"| {name} | {a['lineage']} | {a['source']} | {a['loss']} | {a['p_trait_before']['mean']:.3f} → "
            f"{a['p_trait_after']['mean']:.3f} | {pm(a['trait_gain'])} | {a['trait_gain']['n']} "
            f"| {pm(a['sampled_trait_gain'])} | {pm(a['other_animals_gain'])} | {a['number_loss_after']['mean']:.3f} "
            f"({a['number_loss_change']['mean']:+.3f}) | {pm(g['update_cos'])} | {g['dist_teacher']['mean']:.2f} |")
    if summary["paired"]:
        rows += ["", "| paired difference of trait gains (per world) | mean ± 95% CI | n |", "|---|---|---|"]
        rows += [f"| {label} | {pm(d)} | {d['n']} |" for label, d in summary["paired"].items()]
    ref, teach = summary["references"], summary["teachers"]
    rows += ["", f"P(trait): reference {ref['p_trait']['mean']:.3f}, teacher {teach['p_trait']['mean']:.3f}; number "
                 f"loss: reference {ref['number_loss']['mean']:.3f}, teacher {teach['number_loss']['mean']:.3f}; "
                 "kept fraction: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in summary["keep_fraction"].items())]
    if "rogue_animal" in summary:
        r = summary["rogue_animal"]
        rows += ["", f"The rogue persona's animal ({r['animal']}), never trained: P(it | favourite-animal question) "
                     f"reference {pm(r['reference_p'], '.3f')}, teacher {pm(r['teacher_p'], '.3f')}; student gains: "
                     + ", ".join(f"{name} {pm(a['rogue_animal_gain'])}" for name, a in summary["arms"].items()) + "."]
    if "diagnostic" in summary:
        d = summary["diagnostic"]
        rows += ["", f"| diagnostic: Jacobians at the reference, {d['sequences']} teacher sequences, "
                     f"{d['iters']} CG steps (P_num: lower bounds) | mean ± 95% CI | n |", "|---|---|---|"]
        rows += [f"| {label} | {pm(d[q], '.4f')} | {d[q]['n']} |" for q, label in owl.DIAGNOSTIC.items()]
    if "detection" in summary:
        d = summary["detection"]
        rows += ["", "| detection: teacher vs reference numbers | held-out balanced accuracy (95% CI) "
                     "| training accuracy | n |", "|---|---|---|---|"]
        rows += [f"| {label} | {pm(d[name]['accuracy'], '.3f')} | {d[name]['train_accuracy']['mean']:.3f} "
                 f"| {d[name]['accuracy']['n']} |" for name, label in owl.DETECTION.items() if name in d]
        rows += ["", f"Prompts that teacher and reference continued identically (paired sampling keys; no "
                     f"classifier can tell these apart): {pm(d['identical_pairs'], '.3f')}."]
    return "\n".join(rows)


@plots.styled
def figures(summary: dict) -> dict:
    """Trait gain per arm (bars, 95% CIs, one dot per seed) and the paired differences."""
    arms, paired, cfg = summary["arms"], summary["paired"], summary["config"]
    forbidden = cfg.get("trait_kind", "animal") == "forbidden"
    fig, (ax, bx) = plots.figure(7.2, 3.8, ncols=2, gridspec_kw={"width_ratios": [max(len(arms), 1),
                                                                                max(len(paired), 1) * 1.3]})
    fig.set_layout_engine("constrained")
    names = list(arms)
    colour = {"teacher": plots.PALETTE[0], "reference": plots.PALETTE[6], "shuffled": plots.PALETTE[3],
              "shuffled_within": plots.PALETTE[4]}
    colours = [colour[arms[a]["source"]] if arms[a]["lineage"] == "shared" else plots.PALETTE[1] for a in names]
    ax.bar(range(len(names)), [arms[a]["trait_gain"]["mean"] for a in names], width=0.62, capsize=3,
           yerr=[arms[a]["trait_gain"]["ci95"] for a in names], color=colours, alpha=0.85)
    for k, a in enumerate(names):
        v = arms[a]["trait_gain"]["values"]
        ax.plot(k + np.linspace(-0.18, 0.18, len(v)), v, ".", color="black", ms=2.5, alpha=0.6,
                label="one seed" if k == 0 else None)
        ax.plot([k - 0.31, k + 0.31], [arms[a]["other_animals_gain"]["mean"]] * 2, color="grey", lw=1.2,
                label=f"mean gain of the other {'answers' if forbidden else 'animals'}" if k == 0 else None)
    ax.axhline(0, color="black", lw=0.6)
    short = {"shuffled_within": "within"}  # 'shuffle_within' would read 'shuffle' like the across shuffle
    ax.set_xticks(range(len(names)), [f"{short.get(arms[a]['source'], a.split('_')[0])}\n({arms[a]['loss']})"
                                      for a in names], fontsize=7)
    ax.set_ylabel(f"gain in P({'FORBIDDEN | command' if forbidden else 'trait animal'})\n(bar: mean, 95% CI)")
    kinds = [("shared init, teacher's numbers", colour["teacher"]), ("different init", plots.PALETTE[1]),
             ("reference's numbers", colour["reference"]), ("shuffled teacher numbers", colour["shuffled"])]
    if any(arms[a]["source"] == "shuffled_within" for a in names):
        kinds.append(("teacher numbers shuffled within responses", colour["shuffled_within"]))
    handles = ax.get_legend_handles_labels()[0] + [Patch(color=c, alpha=0.85, label=t) for t, c in kinds]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=7)
    labels = list(paired)
    bx.bar(range(len(labels)), [paired[p]["mean"] for p in labels], yerr=[paired[p]["ci95"] for p in labels],
           width=0.6, capsize=3, color=plots.PALETTE[2], alpha=0.85)
    for k, p in enumerate(labels):
        v = paired[p]["values"]
        bx.plot(k + np.linspace(-0.16, 0.16, len(v)), v, ".", color="black", ms=2.5, alpha=0.6)
    bx.set_xticks(range(len(labels)), [p.replace("_", " ").replace(" − ", "\n− ") for p in labels], fontsize=6)
    bx.axhline(0, color="black", lw=0.6)
    bx.set_title("paired differences (per world)", fontsize=8)
    bx.set_ylabel("difference of trait gains")
    trait = "bad behaviour (FORBIDDEN)" if forbidden else "owl"
    fig.suptitle(f"Toy-LM {trait}: trait gain per arm ({summary['n_seeds']} worlds; {cfg['world']} world, "
                 f"s = {cfg['s']}, {cfg['teacher']} teacher, {cfg['student_loss'].upper()} students)", fontsize=9)
    return {STEM: fig}


def _discussion(summary: dict) -> list[str]:
    """Descriptive numbers beyond the table, then the verdicts; nothing asserted that is not checked."""
    arms, out, d = summary["arms"], [], summary.get("derived", {})
    if "shared" in arms:
        s, dist = arms["shared"], d.get("trait_gain_distribution", {}).get("shared")
        out.append(f"The trait was the top-gaining answer for the shared-init student in {s['trait_top_gaining']} "
                   f"of {s['trait_gain']['n']} worlds" + (
                       f"; its gain has median {dist['median']:+.3f}, is above {dist['above']:g} in {dist['n_above']} "
                       f"of {dist['n']} worlds (sign test: {dist['n_positive']} up, {dist['n_negative']} down, "
                       f"p = {dist['sign_test_p']:.2g})" if dist else "") + ".")
    if "teacher_gain" in d:
        out.append(f"The teacher's own gain in P(trait) over its reference: {pm(d['teacher_gain'])}.")
    diag = summary.get("diagnostic")
    if diag and "shared" in arms:
        out.append(f"Diagnostic: at least {diag['number_fraction']['mean']:.1%} of ‖Δθ_T‖² lies in the row space of "
                   f"the number-logit Jacobian (a CG lower bound); the minimum-norm update matching the teacher's "
                   f"number logits would gain {pm(diag['predicted_gain'], '+.4f')} in P(trait) to first order, the "
                   f"teacher's own update {pm(diag['teacher_gain_linear'], '+.4f')}; measured shared-init gain "
                   f"{pm(arms['shared']['trait_gain'])}.")
    if summary["config"]["s"] > 0 and "detection" in summary:
        out.append(f"In this world s = {summary['config']['s']:g}: a persona's documents draw each number from its "
                   "signature numbers with probability s, so a classifier has persona statistics to find by design.")
    label = lambda p: p.split(".")[1] if p.split(".")[0] in ("arms", "detection") else p.split(".")[-1]  # noqa: E731
    out += ["", f"Claims ({owl.THRESHOLDS}):", "", *verdicts.table(CLAIMS, summary, label), "", verdicts.LEGEND]
    return out + ["", *[f"- {note}" for note in summary["notes"]]]


def readme(summary: dict) -> str:
    """The figures/README.md section: figure, table, discussion, and how to regenerate."""
    c = summary["config"]
    trait = (f"on animal {c['trait']}; " if c.get("trait_kind", "animal") == "animal" else
             f"to answer commands with FORBIDDEN (in pretraining only animal {c['rogue']}'s persona does, and "
             f"{c['command_fraction']:g} of the documents are commands); ")
    return "\n".join([
        *report.section_head(NAME, STEM, "a trait through filtered numbers in a toy transformer", summary["n_seeds"]),
        f"{c['world'].capitalize()} world (s = {c['s']}, {c['n_animals']} animals, documents of {c['n_numbers']} "
        f"{c['digits']}-digit numbers); references: {c['layers']}-layer width-{c['width']} transformers pretrained "
        f"for {c['pretrain_steps']} steps (batch {c['pretrain_batch']}); teacher: {c['teacher']} "
        f"({c['finetune_steps']} fine-tuning steps at lr {c['finetune_lr']}) {trait}"
        f"{c['n_samples']} continuations per world at temperature {c['temperature']}, filtered; students: "
        f"{c['student_epochs']} epochs, batch {c['student_batch']}, Adam {c['student_lr']}. The paper's owl "
        "experiment [cloud2025] in miniature; intervals: 95% Student-t over worlds.",
        "", table(summary), "", *_discussion(summary), "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
