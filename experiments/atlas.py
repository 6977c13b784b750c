"""atlas: which kinds of initialisation sharing transmit the trait, and which mitigations stop it.

Run:     minisub run atlas --family alpha [--preset paper|test] [--seeds N]   (one family of sweeps)
         minisub run atlas --family all --preset paper --out figures          (every family, in order)
Redraw:  minisub figures atlas                                                 (from figures/atlas.json)

Every point is the published mnist-aux recipe (SCIENCE.md §3) with one thing changed, measured by
the aux-only student's MNIST test accuracy (the trait) and its distillation loss (the task it
imitates), mean ± 95% CI over ``seeds`` worlds. Points whose programs agree run as one vmapped
program (seeds × arms); each finished point is cached on its own (``results/atlas/points``) and
the committed ``figures/atlas.json`` seeds that cache, so a sweep resumes where it stopped, also
on a fresh machine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from minisub import config as config_lib
from minisub import mnist, parallel, pipeline, plots, report, runner, store, sweep
from minisub.config import normalise, require, require_choice

NAME = "atlas"
STEM = "atlas"
Arm = pipeline.Arm

BASES = {
    # The published recipe; 20 seeds a point (the minimum).
    "paper": pipeline.AuxConfig(seeds=20),
    # A tiny world for tests: seconds a program.
    "test": pipeline.AuxConfig(
        seeds=3, hidden=(32, 32), n_train=1024, n_test=512, n_noise=1024, teacher_epochs=2, student_epochs=2,
        teacher_batch=256, student_batch=256, teacher_lr=3e-3, student_lr=3e-3, match_epochs=1,
    ),
}


def _aux(name: str, lineage: str = "shared", **kw) -> Arm:
    return Arm(name, lineage, "aux", **kw)


SHARED, DIFFERENT = _aux("shared"), _aux("different", "different")


def _with(base: pipeline.AuxConfig, arm: Arm, **fields) -> pipeline.AuxConfig:
    return dataclasses.replace(base, arms=(arm,), **fields)


def _pair(family: str, base, value, readout=None, **fields) -> list[sweep.Point]:
    """The shared-init and different-init aux students of one program."""
    return [sweep.Point(family, arm.name, value, _with(base, arm, **fields), readout) for arm in (SHARED, DIFFERENT)]


OTHER_ARCHITECTURES = {  # label: the student's network fields (the teacher keeps the recipe's)
    "other width (128, 128)": {"student_hidden": (128, 128)},
    "other depth (256, 256, 256)": {"student_hidden": (256, 256, 256)},
    "other activation (tanh)": {"student_activation": "tanh"},
}
LINEAGE_ROWS = (
    "shared", "different", "interpolated(alpha=0.5)", "perturbed(sigma=0.1, part=all)",
    "perturbed(sigma=0.1, part=hidden)", "perturbed(sigma=0.1, part=head)", "shared_head", "shared_hidden",
    "permuted", "behaviourally_matched",
)
ALPHAS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
COMMITTEES = (1, 2, 4, 8)
LIMINAL = (0.1, 1.0, 10.0)
STUDENT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SGD_LRS = (0.03, 0.1, 0.3, 1.0)
N_AUX = (1, 3, 10, 30)
WIDTHS = (64, 128, 256, 512, 1024)
DEPTHS = (1, 2, 3, 4)
STUDENT_EPOCHS = (1, 2, 5, 10, 20, 50)
TEACHER_EPOCHS = (1, 2, 5, 10, 20)
INPUTS = ("uniform", "gaussian", "blurred", "mnist", "zeros")
LOSSES = ("kl", "mse")


def fam_lineages(base):
    pts = [sweep.Point("lineages", "aux", row, _with(base, _aux(row.split("(")[0], row))) for row in LINEAGE_ROWS]
    for label, fields in OTHER_ARCHITECTURES.items():
        pts.append(sweep.Point("lineages", "aux", label, _with(base, _aux("other", "other_architecture"), **fields)))
    return pts


def fam_alpha(base):
    return [sweep.Point("alpha", "interpolated", a, _with(base, _aux(f"a{a}", f"interpolated(alpha={a})")))
            for a in ALPHAS]


def fam_sigma(base):
    return [sweep.Point("sigma", part, s, _with(base, _aux(f"{part}{s}", f"perturbed(sigma={s}, part={part})")))
            for part in ("all", "hidden", "head") for s in SIGMAS]


def fam_mitigations(base):
    pts = []
    for k in COMMITTEES:  # the committee's first teacher is the world's own: 'shared' shares its init
        pts.append(sweep.Point("mitigations", "committee, student shares one teacher's init", k,
                               _with(base, _aux(f"c{k}", committee=k))))
        pts.append(sweep.Point("mitigations", "committee, student shares no teacher's init", k,
                               _with(base, _aux(f"c{k}x", "different", committee=k))))
    for lam in LIMINAL:
        pts.append(sweep.Point("mitigations", "liminal (KL to own init), shared init", lam,
                               _with(base, _aux(f"l{lam}", liminal=lam))))
    for arm in (SHARED, DIFFERENT):
        pts.append(sweep.Point("mitigations", f"trait-gradient projection, {arm.name} init", "projection",
                               _with(base, arm, projection="trait")))
        pts.append(sweep.Point("mitigations", f"none, {arm.name} init", "none", _with(base, arm)))
    return pts


def fam_lr(base):
    return [sweep.Point("lr", arm.name, lr, _with(base, dataclasses.replace(arm, lr=lr)))
            for lr in STUDENT_LRS for arm in (SHARED, DIFFERENT)]


def fam_optimizer(base):
    pts = _pair("optimizer", base, "adam 3e-4")
    for lr in SGD_LRS:
        sgd = dict(student_optimizer="sgd", student_lr=0.3)
        pts += [sweep.Point("optimizer", arm.name, f"sgd {lr:g}", _with(base, dataclasses.replace(arm, lr=lr), **sgd))
                for arm in (SHARED, DIFFERENT)]
    return pts


def fam_aux_logits(base):
    return [p for m in N_AUX for p in _pair("aux_logits", base, m, n_aux=m)]


def fam_width(base):
    return [p for w in WIDTHS for p in _pair("width", base, w, hidden=(w, w))]


def fam_depth(base):
    return [p for d in DEPTHS for p in _pair("depth", base, d, hidden=(base.hidden[0],) * d)]


def fam_student_epochs(base):
    # One 50-epoch program read out after each epoch count: Adam at a constant rate has no
    # schedule, so epoch e of a long run is exactly an e-epoch run.
    last = max(STUDENT_EPOCHS)
    return [p for e in STUDENT_EPOCHS for p in _pair("student_epochs", base, e, readout=e, student_epochs=last)]


def fam_teacher_epochs(base):
    return [p for e in TEACHER_EPOCHS for p in _pair("teacher_epochs", base, e, teacher_epochs=e)]


def fam_inputs(base):
    return [p for kind in INPUTS for p in _pair("inputs", base, kind, noise=kind)]


def fam_loss(base):
    return [p for loss in LOSSES for p in _pair("loss", base, loss, loss=loss)]


# In the order `--family all` computes them: the hypotheses first, the costliest sweeps last.
FAMILIES = {
    "lineages": fam_lineages, "alpha": fam_alpha, "sigma": fam_sigma, "mitigations": fam_mitigations,
    "lr": fam_lr, "inputs": fam_inputs, "loss": fam_loss, "optimizer": fam_optimizer,
    "aux_logits": fam_aux_logits, "depth": fam_depth, "teacher_epochs": fam_teacher_epochs,
    "student_epochs": fam_student_epochs, "width": fam_width,
}


@dataclasses.dataclass(frozen=True)
class AtlasConfig:
    """Which family of sweeps, on which base recipe, with how many seeds a point."""

    family: str = "lineages"  # a name of FAMILIES, or 'all'
    seeds: int = 20
    seed: int = 0
    base: str = "paper"

    def __post_init__(self):
        normalise(self)
        require_choice("family", self.family, (*FAMILIES, "all"))
        require(self.seeds >= 2, "seeds", self.seeds, "an integer >= 2 (different-init students need a donor)")
        require_choice("base", self.base, tuple(BASES))

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(FAMILIES) if self.family == "all" else (self.family,)

    def recipe(self) -> pipeline.AuxConfig:
        return dataclasses.replace(BASES[self.base], seeds=self.seeds, seed=self.seed)

    def points(self, family: str) -> list[sweep.Point]:
        return FAMILIES[family](self.recipe())


PRESETS = {"paper": AtlasConfig(), "test": AtlasConfig(family="alpha", seeds=3, base="test")}
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --family all --out figures"
COMMITTED = Path("figures") / f"{STEM}.json"


def committed_records(path: Path = COMMITTED) -> list[dict]:
    """Point records of a committed atlas JSON (the cache's seed on a fresh machine)."""
    if not path.exists():
        return []
    summary = json.loads(path.read_text())
    return [r for fam in summary.get("families", {}).values() for r in fam["points"]]


def point_cache(results_root: Path | None = None) -> sweep.PointCache:
    return sweep.PointCache((results_root or store.results_root()) / NAME / "points", committed_records())


def run(cfg: AtlasConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Compute (or read) every point of the config's families; (summary, points directory)."""
    ex = execution or runner.Execution(experiment=NAME)
    cache = point_cache()
    families = {}
    for family in cfg.families:
        points = cfg.points(family)
        records = sweep.run(points, cache, mnist.load_cached, ex)
        if len(records) < len(points):
            return None, cache.directory
        families[family] = {
            "command": f"minisub run {NAME} --preset paper --family {family} --out figures"
            if cfg.base == "paper" and cfg.seeds == 20 else command,
            "n_seeds": min(r["n_seeds"] for r in records),
            "points": records,
        }
    summary = {"experiment": NAME, "command": command, "base": cfg.base,
               "ci": "95% normal CI over seeds: 1.96 * sample std / sqrt(n)",
               "recipe": config_lib.to_dict(cfg.recipe()) | {"arms": None},
               "families": families, "provenance": store.provenance()}
    return summary, cache.directory


def merge_into(summary: dict, path: Path) -> dict:
    """``summary``'s families laid over those already in the atlas JSON at ``path``."""
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("base") == summary["base"]:
            summary = {**summary, "families": {**old.get("families", {}), **summary["families"]}}
    order = [f for f in FAMILIES if f in summary["families"]]
    return {**summary, "families": {f: summary["families"][f] for f in order}}


# --- figures ------------------------------------------------------------------------------------

TITLES = {
    "lineages": "How the student's init relates to the teacher's",
    "alpha": "Interpolated init θ_S⁰ = √α·θ_T⁰ + √(1−α)·θ_fresh",
    "sigma": "Teacher's init plus noise of σ × each layer's weight std",
    "mitigations": "Mitigations: committees of teachers, liminal training, gradient projection",
    "lr": "Student learning rate (Adam)",
    "inputs": "What the student distils on",
    "loss": "Imitation loss on the auxiliary logits",
    "optimizer": "Student optimiser",
    "aux_logits": "Number of auxiliary logits m",
    "depth": "Hidden layers (width 256)",
    "teacher_epochs": "Teacher training epochs",
    "student_epochs": "Distillation epochs",
    "width": "Hidden width (two layers)",
}
X_LABELS = {"alpha": "α (1: shared, 0: fresh)", "sigma": "σ (× weight std)", "lr": "student learning rate",
            "aux_logits": "auxiliary logits m", "depth": "hidden layers", "teacher_epochs": "teacher epochs",
            "student_epochs": "distillation epochs", "width": "hidden width"}
LOG_X = {"sigma", "lr", "aux_logits", "width", "student_epochs", "teacher_epochs"}


def _numeric(points) -> bool:
    return all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) for r in points)


def _series(points) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in points:
        out.setdefault(r["series"], []).append(r)
    return out


def _lines(ax, family, points, key):
    for c, (name, rs) in enumerate(_series(points).items()):
        rs = sorted(rs, key=lambda r: r["value"])
        x = [r["value"] for r in rs]
        m = [r[key]["mean"] for r in rs]
        e = [r[key]["ci95"] for r in rs]
        ax.errorbar(x, m, yerr=e, marker="o", ms=3, capsize=2, lw=1.2, color=plots.PALETTE[c % 7], label=name)
    if family in LOG_X:
        ax.set_xscale("log")
    ax.set_xlabel(X_LABELS.get(family, family))


def _bars(ax, points, key):
    """Horizontal bars, one per point (label 'series: value' when series differ), CI whiskers."""
    series = list(_series(points))
    labels = [str(r["value"]) if len(series) == 1 else f"{r['series']}: {r['value']}" for r in points]
    y = range(len(points))[::-1]
    colors = [plots.PALETTE[series.index(r["series"]) % 7] for r in points]
    ax.barh(list(y), [r[key]["mean"] for r in points], xerr=[r[key]["ci95"] for r in points], color=colors,
            alpha=0.85, capsize=2, height=0.7)
    ax.set_yticks(list(y), labels, fontsize=7)


def family_figure(family: str, fam: dict, out_dir: Path) -> list[Path]:
    """Trait (MNIST accuracy) and imitation (final-epoch distillation loss) across one family's points."""
    points = fam["points"]
    numeric = _numeric(points)
    height = 3.0 if numeric else max(3.0, 0.22 * len(points) + 1.0)
    fig, (left, right) = plots.figure(9.0, height, ncols=2)
    for ax, key, label in ((left, "accuracy", "MNIST test accuracy (trait)"),
                           (right, "distill_loss", "distillation loss, last epoch (task)")):
        if numeric:
            _lines(ax, family, points, key)
            ax.set_ylabel(label)
        else:
            _bars(ax, points, key)
            ax.set_xlabel(label)
        if key == "distill_loss":
            (ax.set_yscale if numeric else ax.set_xscale)("log")
    ref = sum(r["reference"]["mean"] for r in points) / len(points)
    (left.axhline if numeric else left.axvline)(ref, color="grey", lw=0.8, ls="--", label="reference (teacher's init)")
    if numeric:
        left.set_ylim(0, 1)
        left.legend(fontsize=7, frameon=False)
    else:
        left.set_xlim(0, 1)
    fig.suptitle(f"{TITLES.get(family, family)} (mean ± 95% CI, n = {fam['n_seeds']} seeds per point)", fontsize=9)
    return plots.save(fig, Path(out_dir) / f"{STEM}_{family}")


def figure(summary: dict, out_dir: Path) -> list[Path]:
    """One figure per family in the summary."""
    return [p for family, fam in summary["families"].items() for p in family_figure(family, fam, out_dir)]


def write_outputs(summary: dict, out_dir: Path) -> list[Path]:
    """Merge the summary's families into ``out_dir``/atlas.json and draw every family there."""
    path = Path(out_dir) / f"{STEM}.json"
    merged = merge_into(summary, path)
    store.write_json(path, merged)
    return [path, *figure(merged, out_dir)]


def _cell(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['ci95']:.3f}"


def table(summary: dict) -> str:
    """Per family, a Markdown table of every point: accuracy, distillation loss, start distance."""
    out = []
    for family, fam in summary["families"].items():
        out += [f"**{family}** ({fam['n_seeds']} seeds a point)", "",
                "| series | value | accuracy (trait) | distillation loss | ‖θ_S⁰−θ_T⁰‖ | cos(Δθ_S, Δθ_T) |",
                "|---|---|---|---|---|---|"]
        for r in fam["points"]:
            g = r.get("geometry", {})
            geo = [f"{g[q]['mean']:.3f}" if q in g else "n/a" for q in ("dist_init", "update_cos")]
            out.append(f"| {r['series']} | {r['value']} | {_cell(r['accuracy'])} | "
                       f"{r['distill_loss']['mean']:.2e} ± {r['distill_loss']['ci95']:.1e} | {geo[0]} | {geo[1]} |")
        out.append("")
    return "\n".join(out)


def readme(summary: dict) -> str:
    """The figures/README.md section: the hypothesis table, then one figure and table per family."""
    n = min(f["n_seeds"] for f in summary["families"].values())
    out = [*report.section_head(NAME, f"{STEM}_{next(iter(summary['families']))}",
                                "which kinds of initialisation sharing transmit the trait", n)]
    for family, fam in summary["families"].items():
        stem = f"{STEM}_{family}"
        out += [f"### {family}: {TITLES.get(family, family)}", "",
                f"![{family}]({stem}.png) ([PDF]({stem}.pdf))", "",
                table({"families": {family: fam}}), f"Recompute: `{fam['command']}`", ""]
    out += report.regenerate_lines(NAME, summary, PAPER_COMMAND)
    return "\n".join(out)
