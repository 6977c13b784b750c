"""audit: from weights alone, was a student trained on this teacher's outputs? Error rates on MNIST and the toy LM.

Run:     minisub run audit [--preset paper|test] [--seeds N] [--orders K]
Paper:   minisub run audit --preset paper --out figures        (20 bases × 8 teachers; writes figures/audit.*)
Redraw:  minisub figures audit                                  (from figures/audit.json alone)

Every base (a world's teacher init) gets K teachers: the published mnist-aux recipe [cloud2025]
with K data orders. Each teacher's students, one per evasion (``minisub.run.audit.ROWS``), are
audited against every teacher of their base (``minisub.audit``): a positive when it is their own
teacher, a negative otherwise. Two auditors: *informed* (knows the student's own init; scores each
case against control students, the other teachers' students of the same base) and *realistic*
(knows only the public base and the two trained models: the bare score).

The toy LM (``lm_teachers``, 8 in the paper preset): per world, K teachers fine-tuned from the one
reference toward K trait animals at s = 0 (lm-prompted's fine-tuned recipe), a shared-init student of
each (``minisub.run.audit.lm_population``); plus the toy LM's rows read from the committed
lm-lineages and lm-prompted summaries.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from minisub import audit, claims as claims_lib, config as config_lib, report, stats
from minisub.claims import Claim
from minisub.config import ConfigError, late, normalise, require, require_choice
from minisub.lm import owl
from minisub.mlp import mnist, pipeline
from minisub.report import audit as ra, plots, verdicts
from minisub.run import audit as population, runner, store

NAME = "audit"
STEM = "audit"
ORDER = 45  # its place in figures/README.md: after the atlas, whose evasions it audits
PROGRAMS = f"{NAME}-programs"  # where each teacher order's training runs are stored (results/audit-programs/<id>)

BASES = {
    "paper": pipeline.AuxConfig(seeds=20),  # the published recipe
    "test": pipeline.AuxConfig(seeds=3, hidden=(16,), n_train=1024, n_test=512, n_noise=1024, teacher_epochs=2,
                               student_epochs=2, teacher_batch=256, student_batch=256, teacher_lr=3e-3,
                               student_lr=3e-3),
}


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """How many bases (seeds), teachers per base (orders), on which recipe; the false-positive rate."""

    seeds: int = 20
    seed: int = 0
    orders: int = 8
    base: str = "paper"
    fpr: float = 0.01
    evasions: tuple[str, ...] = ()  # row ids of minisub.run.audit.ROWS ('shared' among them); empty: every row
    lm_teachers: int = late(0)  # the toy LM's population: this many trait animals' teachers of one reference (0: none)
    kernels: str = late("reference")  # the toy LM's kernels in every program: lm-owl's --kernels

    def __post_init__(self):
        normalise(self)
        require(self.seeds >= 2, "seeds", self.seeds, "an integer >= 2 (interpolated students need a donor init)")
        require(self.orders >= 3, "orders", self.orders, "an integer >= 3 (a negative needs another control)")
        require_choice("base", self.base, tuple(BASES))
        require(0 < self.fpr < 1, "fpr", self.fpr, "a number in (0, 1)")
        require(not self.evasions or ("shared" in self.evasions and set(self.evasions) <= set(population.ROW_IDS)),
                "evasions", self.evasions, "empty (every row) or row ids including 'shared', from "
                + ", ".join(population.ROW_IDS))
        n = owl.PRESETS[self.base].lm.world.n_animals
        require(self.lm_teachers == 0 or 3 <= self.lm_teachers <= n, "lm_teachers", self.lm_teachers,
                f"0 (none) or an integer in [3, {n}] (one teacher per trait animal)")
        require(self.kernels == "reference" or self.lm_teachers > 0, "kernels", self.kernels,
                "'reference' unless lm_teachers > 0 (only the toy LM's population runs a transformer)")

    def recipe(self) -> pipeline.AuxConfig:
        return dataclasses.replace(BASES[self.base], seeds=self.seeds, seed=self.seed)

    def lm(self) -> owl.OwlConfig:
        """The toy LM's recipe: lm-prompted's fine-tuned teacher at s = 0 (4096 continuations on the paper base)."""
        samples = {"n_samples": 4096} if self.base == "paper" else {}
        return config_lib.replace(owl.PRESETS[self.base], s=0.0, teacher="finetuned", sampler="cache",
                                  student_epochs=3, **samples, **owl.kernel_fields(self.kernels))


# test: one program (no projection row), 4 teachers a base (which-teacher of 8: not measured); seconds once compiled.
PRESETS = {"paper": AuditConfig(lm_teachers=8),
           "test": AuditConfig(seeds=3, orders=4, base="test",
                               evasions=("shared", "liminal_1", "committee_2", "perturbed_0p1", "permuted_aligned",
                                         "permuted_raw"))}
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"
KS = (2, 4, 8)
# The toy LM's students are read from the committed summaries of lm-lineages and lm-prompted (per-world scores)
LM_LINEAGES, LM_PROMPTED = Path("figures") / "lm_lineages.json", Path("figures") / "lm_prompted.json"


def run(cfg: AuditConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict, Path]:
    """Train (or read) every teacher order's programs, score every pair, analyse; (summary, run directory)."""
    ex = execution or runner.Execution(experiment=NAME)
    require(ex.shard == (0, 1), "shard", f"{ex.shard[0]}/{ex.shard[1]}", f"0/1 ({NAME} runs its programs in turn)")
    directory = store.run_dir(NAME, cfg)
    if not ex.force and (done := store.load_complete(directory)):
        return done[1], directory
    if not ex.compute:
        raise ConfigError(f"{NAME} has no shards to merge: run it with `minisub run {NAME}`")
    start, ids = time.time(), cfg.evasions
    results, dirs = population.run_programs(cfg.recipe(), cfg.orders, ids, PROGRAMS, ex, mnist.load_cached)
    runs = [r for rs in results.values() for r in rs]
    per_seed = lambda key: np.mean([np.asarray(r["accuracy"][key]) for r in runs], axis=0)  # noqa: E731
    gains = population.transfer(results, ids)
    summary = analyse({
        "experiment": NAME, "command": command, "config": config_lib.to_dict(cfg), "ci": stats.TEST,
        "recipe": config_lib.to_dict(cfg.recipe()) | {"arms": None}, "n_seeds": cfg.seeds, "orders": cfg.orders,
        "fpr": cfg.fpr, "labels": {r.id: r.label for r in population.rows(ids)},
        "arms": {r.id: str(next(a for a in population.ARMS if a.name == r.arm)) for r in population.rows(ids)},
        "matrices": population.matrices(dirs, cfg.seeds, ids),
        "transfer": {k: stats.mean_ci(v) for k, v in gains.items()},
        "accuracy": {k: stats.mean_ci(per_seed(k)) for k in ("reference", "teacher")},
        "seconds_per_seed_and_program": float(np.mean([np.mean(r["seconds"]) for r in runs])),
        "seconds": round(time.time() - start, 1), "provenance": store.provenance(),
        **({"lm_population": population.lm_population(cfg.lm(), cfg.lm_teachers, store.results_root() / f"{NAME}-lm"),
            "lm_recipe": config_lib.to_dict(cfg.lm())} if cfg.lm_teachers else {}),
    })
    store.finish(directory, {"transfer": gains}, summary)
    return summary, directory


def merge_written(summary: dict, path: Path) -> dict:
    """Analysed again when written: the toy LM's rows read the lm-lineages and lm-prompted JSON as they are now."""
    return analyse(summary)


def analyse(summary: dict) -> dict:
    """Error rates, which-teacher accuracy and calibration of every row, from the stored matrices; the verdicts."""
    rows, fpr = {}, summary["fpr"]
    for row, m in summary["matrices"].items():
        if row == "teachers":
            continue
        contrast, same_base_p = audit.against_controls(m["informed"])
        realistic = audit.population(m["realistic"], fpr=fpr, ks=KS)
        rows[row] = {"informed": audit.population(contrast, fpr=fpr, ks=KS), "realistic": realistic,
                     "realistic_distance": audit.population(m["realistic_distance"], larger=False, fpr=fpr, ks=KS),
                     "calibration": audit.calibration(audit.pooled_p_values(contrast)),
                     "same_base_p": audit.calibration(same_base_p, (1 / summary["orders"],)),
                     # a student that imitates its own base's outputs gets exactly zero gradient: it stays at
                     # the base, update_cos 0, so the bare score flags it only when the threshold is below 0
                     "own_output_flagged": bool(realistic["tpr"]["threshold"] < 0)}
    teachers = audit.cases(summary["matrices"]["teachers"]["update_cos"])[1]
    read = lambda path: json.loads(path.read_text()) if path.exists() else None  # noqa: E731
    out = {**summary, "rows": rows, "teacher_cos": stats.mean_ci(teachers.mean(axis=1)),
           "lm": population.lm_rows(read(LM_LINEAGES), read(LM_PROMPTED), fpr)}
    if lp := summary.get("lm_population"):  # the student's init is the base: one bare score, read by both auditors
        m = np.asarray(lp["update_cos"])
        realistic = audit.population(m, fpr=fpr, ks=KS)
        out["lm_audit"] = {"realistic": realistic,
                           "informed": audit.population(audit.against_controls(m)[0], fpr=fpr, ks=KS),
                           # the own-output control against every teacher: how many the realistic threshold flags
                           "control": stats.distribution(np.ravel(lp["control_cos"]), realistic["tpr"]["threshold"]),
                           "transfer": stats.mean_ci(np.mean(lp["gain"], axis=1)),
                           "teacher_cos": stats.mean_ci(audit.cases(np.asarray(lp["teacher_cos"]))[1].mean(axis=1))}
    out["verdicts"] = claims_lib.evaluate(claims(out), out)
    return out


def claims(summary: dict) -> list[Claim]:
    """The shared-init claims, then one per evasion: does the informed audit still detect it?"""
    rows, fpr = summary.get("labels", {r.id: r.label for r in population.ROWS}), f"{summary.get('fpr', 0.01):.0%}"
    base = [
        Claim("auc", "Informed audit, shared init: AUC > 0.99", "minisub", "rows.shared.informed.auc_by_world", ">", 0.99),
        Claim("tpr", f"Informed audit, shared init: TPR > 0.9 at {fpr} FPR", "minisub", "rows.shared.informed.tpr_by_world",
              ">", 0.9),
        Claim("auc_realistic", "Realistic audit (public base and the two models only), shared init: AUC > 0.99",
              "minisub", "rows.shared.realistic.auc_by_world", ">", 0.99),
        Claim("tpr_realistic", f"Realistic audit, shared init: TPR > 0.9 at {fpr} FPR", "minisub",
              "rows.shared.realistic.tpr_by_world", ">", 0.9),
        Claim("which_8", "Which teacher, shared init: the right one of 8 candidates more than 90% of the time "
              "(realistic)", "minisub", "rows.shared.realistic.which_teacher.8", ">", 0.9),
        Claim("calibrated", "The informed p-values are calibrated: negatives with p ≤ 0.05 are within ±0.03 of 5% "
              "(shared init)", "minisub", "rows.shared.calibration.negatives.0p05", "within", 0.03),
    ]
    k = len(lp["gain"][0]) if (lp := summary.get("lm_population")) else "K"  # teachers a reference
    lm = [Claim(f"lm_pop_{c}", f"Toy LM, fine-tuned teacher at s = 0, {k} teachers (trait animals) of one reference: "
                f"{text}", "minisub", f"lm_audit.realistic.{path}", ">", x) for c, text, path, x in (
        ("auc", "AUC > 0.99", "auc_by_world", 0.99), ("tpr", f"TPR > 0.9 at {fpr} FPR", "tpr_by_world", 0.9),
        ("which_8", "the right teacher of 8 more than 90% of the time", "which_teacher.8", 0.9))]
    lm += [Claim(f"lm_{key}", f"Toy LM, {r['label']}: informed AUC > 0.99 (against same-base controls)", "minisub",
                f"lm.{key}.auc_by_world", ">", 0.99) for key, r in summary.get("lm", {}).items()
          if key in ("lineage_baselines_shared", "s0_finetuned", "lineage_permuted_heads_and_MLP_units")]
    return base + lm + [Claim(f"detects_{row}", f"Informed audit still detects {label}: AUC > 0.9", "minisub",
                         f"rows.{row}.informed.auc_by_world", ">", 0.9) for row, label in rows.items() if row != "shared"]


def _cell(p: dict) -> str:
    return f"{p['auc']:.3f} / {p['tpr']['tpr']:.2f}" + ("†" if p["tpr"]["limited"] else "")


def table(summary: dict) -> str:
    """One row per evasion: transfer, then each auditor's AUC / TPR at the FPR, which-teacher accuracy."""
    fpr = f"{summary['fpr']:g}"
    out = [f"| evasion | transfer (accuracy gain) | informed AUC / TPR@{fpr} | realistic AUC / TPR@{fpr} | "
           f"realistic, distance ratio | which teacher of 2 / 4 / 8 (realistic) | informed P(p ≤ 0.05): "
           "negatives − 0.05, positives |", "|---|---|---|---|---|---|---|"]
    for row, r in summary["rows"].items():
        which = " / ".join(f"{r['realistic']['which_teacher'][str(k)]['mean']:.2f}" if str(k) in
                           r["realistic"]["which_teacher"] else "n/a" for k in KS)
        out.append(f"| {summary['labels'][row]} | {report.pm(summary['transfer'][row])} | {_cell(r['informed'])} | "
                   f"{_cell(r['realistic'])} | {_cell(r['realistic_distance'])} | {which} | "
                   f"{report.pm(r['calibration']['negatives']['0p05'])}, "
                   f"{report.pm(r['calibration']['positives']['0p05'], '.2f', '.2f')} |")
    shared = summary["rows"]["shared"]["informed"]["tpr"]
    limited = "; †: fewer than 1/FPR negatives, so τ is the largest negative" if shared["limited"] else ""
    out += ["", f"n = {summary['n_seeds']} bases × {summary['orders']} teachers: {shared['n_pos']} positives, "
            f"{shared['n_neg']} negatives a row{limited}. Teachers of one base: cos(Δθ_T, Δθ_T′) "
            f"{report.pm(summary['teacher_cos'], '.3f')}."]
    if summary.get("lm"):
        out += ["", f"Toy LM (informed auditor: update_cos against the student's own init; negatives: same-base "
                    f"students trained on the reference's own numbers): AUC / TPR@{fpr}, transfer (gain in P(trait))",
                "", "| students | AUC (per-world mean ± 95% CI) | TPR | transfer | n pos / neg |", "|---|---|---|---|---|"]
        out += [f"| {r['label']} | {report.pm(r['auc_by_world'], '.3f')} | {_cell(r)} | {report.pm(r['transfer'])} "
                f"| {r['tpr']['n_pos']} / {r['tpr']['n_neg']} |" for r in summary["lm"].values()]
    if a := summary.get("lm_audit"):
        r, c, k = a["realistic"], a["control"], a["realistic"]["k"]
        out += ["", f"Toy LM population (`--lm_teachers {k}`): per world, {k} teachers fine-tuned from its one reference "
                f"(the public base) toward {k} trait animals at s = 0, a shared-init KL student of each ({r['n_worlds']} "
                "worlds); the student's init is the base, so both auditors read cos(θ_S − θ_ref, θ_T − θ_ref): the realistic one "
                "bare, the informed one against the world's other students (as on MNIST).", "",
                "| auditor | AUC / TPR@" + f"{summary['fpr']:g} | which teacher of 2 / 4 / 8 | n pos / neg |", "|---|---|---|---|"]
        out += [f"| {name} | {_cell(a[name])} | " + " / ".join(f"{a[name]['which_teacher'][str(j)]['mean']:.2f}" if
                str(j) in a[name]["which_teacher"] else "n/a" for j in KS) + f" | {a[name]['tpr']['n_pos']} / "
                f"{a[name]['tpr']['n_neg']} |" for name in ("realistic", "informed")]
        out += ["", f"Transfer (each student's gain in P(its teacher's animal), mean over the {k}): "
                f"{report.pm(a['transfer'])}; teachers of one reference: cos(Δθ_T, Δθ_T′) {report.pm(a['teacher_cos'], '.3f')}"
                f". The student of the reference's own numbers against each teacher: mean {report.pm(c, '.3f')}, median "
                f"{c['median']:.3f}; {c['n_above']} of {c['n']} above the realistic threshold."]
    return "\n".join(out)


@plots.styled
def figures(summary: dict) -> dict:
    """ROC curves of both auditors for every evasion, and each evasion's AUC against its remaining transfer."""
    fig, axes = plots.figure(11.0, 3.6, ncols=3)
    styles = ["-", "--", ":", "-."]
    for ax, (auditor, title) in zip(axes, (("informed", "informed auditor (controls)"),
                                           ("realistic", "realistic auditor (public base only)"))):
        for k, (row, m) in enumerate((r, m) for r, m in summary["matrices"].items() if r != "teachers"):
            scores = audit.against_controls(m["informed"])[0] if auditor == "informed" else m["realistic"]
            curve = audit.roc_curve(*audit.cases(scores))
            ax.plot(curve["fpr"], curve["tpr"], styles[k // 7 % 4], lw=1.1, label=summary["labels"][row])
        if lp := summary.get("lm_population"):  # the toy LM's own population of K teachers a reference
            m = np.asarray(lp["update_cos"])
            curve = audit.roc_curve(*audit.cases(audit.against_controls(m)[0] if auditor == "informed" else m))
            ax.plot(curve["fpr"], curve["tpr"], color="black", lw=1.6, label="toy LM, fine-tuned teacher, s = 0")
        ax.axvline(summary["fpr"], color="grey", lw=0.7, ls=":")
        ax.set_xscale("symlog", linthresh=summary["fpr"])  # the low false-positive rates an audit works at
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate (symlog)", ylabel="true-positive rate",
               title=title)
    ax = axes[2]
    for k, (row, r) in enumerate(summary["rows"].items()):
        gain = summary["transfer"][row]
        for auditor, marker in (("informed", "o"), ("realistic", "s")):
            ax.errorbar(gain["mean"], r[auditor]["auc"], xerr=gain["ci95"], fmt=marker, ms=4,
                        color=plots.PALETTE[k % len(plots.PALETTE)], mfc="none" if auditor == "realistic" else None)
        low = min(r["informed"]["auc"], r["realistic"]["auc"])
        if low < 0.95:  # named where an audit weakens; the rest sit at AUC ≈ 1 in the legend's colours
            ax.annotate(summary["labels"][row], (gain["mean"], low), fontsize=6, xytext=(4, -3),
                        textcoords="offset points")
    ax.set(xlabel="transfer: accuracy gain over reference", ylabel="AUC (○ informed, □ realistic)",
           title="an evasion that stops the audit but not the transfer?")
    axes[0].legend(fontsize=5, loc="lower right")
    fig.suptitle(f"Auditing students from their weights: {summary['n_seeds']} bases × {summary['orders']} teachers")
    return {STEM: fig}


def readme(summary: dict) -> str:
    """The figures/README.md section: what is audited, the table, the verdicts, how to regenerate."""
    rule, k = summary["rows"]["shared"]["informed"]["tpr"], summary["orders"]
    same = summary["rows"]["shared"]["same_base_p"]["positives"][audit.level_key(1 / k)]
    return "\n".join([
        *report.section_head(NAME, STEM, "auditing students from their weights", summary["n_seeds"]),
        f"Each of {summary['n_seeds']} bases (a teacher init of the published mnist-aux recipe [cloud2025]) gets {k} "
        "teachers (data orders) and, per evasion, one student per teacher. A case is (teacher, student) of one "
        "base: positive when the student learned from that teacher. Score: cos(θ_S − θ_base, θ_T − θ_T⁰) "
        "(`minisub.audit`). Informed auditor: knows the student's own init and scores the case against control "
        "students (the other teachers' students of the base): contrast = score − the controls' mean; its p-value "
        "is taken against the negatives of the other bases (a p-value from one base's controls alone is at least "
        f"1/{k}: shared-init positives reach it in a fraction {report.pm(same, '.2f', '.2f')} of cases). "
        "Realistic auditor: the public base and the two trained models only, the bare score. "
        f"Threshold rule: {rule['rule']}. Transfer: the student's MNIST test-accuracy gain over its reference "
        f"(mean over the teachers; {stats.TEST}). A student that imitates its own base's outputs gets exactly zero "
        "gradient and never moves (update_cos 0): the realistic threshold flags it for "
        f"{sum(r['own_output_flagged'] for r in summary['rows'].values())} of {len(summary['rows'])} evasions.",
        "", *ra.evasions_that_keep_transfer(summary), "", *ra.failure_points(summary), "", table(summary), "", verdicts.LEGEND, "",
        *verdicts.table(claims(summary), summary, lambda p: p.split(".")[1]), "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
