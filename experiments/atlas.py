"""atlas: which kinds of initialisation sharing transmit the trait, and which mitigations stop it.

Run:     minisub run atlas --family alpha [--preset paper|test] [--seeds N]   (one family of sweeps)
         minisub run atlas --family all --preset paper --out figures          (every family, in order)
Redraw:  minisub figures atlas                                                 (from figures/atlas.json)

Every point is the published mnist-aux recipe [cloud2025] with one thing changed (a sweep of
``minisub.run.sweep``), measured by the aux-only student's MNIST test accuracy (the trait) and its
distillation loss (the task it imitates), over ``seeds`` worlds. Points whose programs agree run as
one vmapped program; each finished point is cached on its own (``results/atlas/points``), seeded
from the committed ``figures/atlas.json``, so a sweep resumes where it stopped on any machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from minisub import claims as claims_lib, config as config_lib, report, stats
from minisub.config import normalise, require, require_choice
from minisub.mlp import mnist, pipeline
from minisub.report import atlas as analysis, plots, sweep as rs, verdicts
from minisub.run import atlas as fams, runner, store, sweep

NAME = "atlas"
STEM = "atlas"
ORDER = 40  # its place in figures/README.md

BASES = {
    # The published recipe; 20 seeds a point.
    "paper": pipeline.AuxConfig(seeds=20),
    # A tiny world for tests: seconds a program.
    "test": pipeline.AuxConfig(
        seeds=3, hidden=(32, 32), n_train=1024, n_test=512, n_noise=1024, teacher_epochs=2, student_epochs=2,
        teacher_batch=256, student_batch=256, teacher_lr=3e-3, student_lr=3e-3, match_epochs=1,
    ),
}


@dataclasses.dataclass(frozen=True)
class AtlasConfig:
    """Which family of sweeps, on which base recipe, with how many seeds a point."""

    family: str = "lineages"  # a name of FAMILIES (minisub.run.atlas), or 'all'
    seeds: int = 20
    seed: int = 0
    base: str = "paper"

    def __post_init__(self):
        normalise(self)
        require_choice("family", self.family, (*fams.FAMILIES, "all"))
        require(self.seeds >= 2, "seeds", self.seeds, "an integer >= 2 (different-init students need a donor)")
        require_choice("base", self.base, tuple(BASES))

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(fams.FAMILIES) if self.family == "all" else (self.family,)

    def recipe(self) -> pipeline.AuxConfig:
        return dataclasses.replace(BASES[self.base], seeds=self.seeds, seed=self.seed)

    def points(self, family: str) -> list[sweep.Point]:
        return fams.FAMILIES[family](self.recipe())


PRESETS = {"paper": AtlasConfig(), "test": AtlasConfig(family="alpha", seeds=3, base="test")}
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --family all --out figures"
COMMITTED = Path("figures") / f"{STEM}.json"


def point_cache(results_root: Path | None = None) -> sweep.PointCache:
    return sweep.PointCache.seeded((results_root or store.results_root()) / NAME / "points", COMMITTED)


def run(cfg: AtlasConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Compute (or read) every point of the config's families; (summary, points directory)."""
    ex, cache = execution or runner.Execution(experiment=NAME), point_cache()
    paper = cfg.base == "paper" and cfg.seeds == 20
    recompute = lambda f: f"minisub run {NAME} --preset paper --family {f} --out figures" if paper else command  # noqa
    families = sweep.run_families({f: cfg.points(f) for f in cfg.families}, cache, mnist.load_cached, ex, recompute)
    if families is None:
        return None, cache.directory
    return analyse({"experiment": NAME, "command": command, "base": cfg.base, "ci": stats.TEST,
                    "recipe": config_lib.to_dict(cfg.recipe()) | {"arms": None}, "families": families,
                    "provenance": store.provenance()}), cache.directory


def pending(cfg: AtlasConfig, directory: Path) -> str:
    """What to say when no family is complete (other shards computing, or nothing stored to merge)."""
    return (f"{NAME}: no family of {', '.join(cfg.families)} has stored points yet in {directory}; compute them with: "
            f"minisub run {NAME} --preset paper --family {cfg.family}")


def merge_written(summary: dict, path: Path) -> dict:
    """``summary``'s families laid over those already in the atlas JSON at ``path`` (same base), analysed again."""
    return analyse(sweep.merge_families(summary, path, fams.FAMILIES))


# --- claims: each one's verdict comes from the per-seed numbers (minisub.claims) ------------------

ONE, LIM, NONE, PROJ = fams.ONE, fams.LIM, "none, shared init", "trait-gradient projection, shared init"
EQUIV = 0.03  # "gains nothing" / "stays at its reference": the paired difference lies within ±0.03


def claims(summary: dict) -> list[claims_lib.Claim]:
    """The atlas's claims, each on the points that test it; a point not computed yet gives 'not measured'."""
    full = {"families": sweep.complete(summary)}
    c = lambda *a, **k: rs.claim(full, *a, **k)  # noqa: E731
    L = lambda v, key="accuracy": ("lineages", v, None, key)  # noqa: E731
    M = lambda v, series, key="accuracy": ("mitigations", v, series, key)  # noqa: E731
    S = lambda fam, vs, series="shared": [(fam, v, series) for v in vs]  # noqa: E731
    arch = list(fams.other_architectures(tuple(summary["recipe"]["hidden"])))
    sgd = [r for r in full["families"].get("optimizer", {}).get("points", []) if r["series"] == "shared"][1:]
    tuned = min(sgd, key=lambda r: r["distill_loss"]["mean"])["value"] if sgd else "sgd (tuned)"  # on the task only
    weak = f"shared, student lr {fams.WEAK_LR:g}"
    return [
        c("shared", "A shared-init student gains over a different-init one", "cloud2025",
          L("shared"), ">", 0, L("different")),
        c("different", f"A different-init student stays at its reference (±{EQUIV})", "cloud2025",
          L("different"), "within", EQUIV, L("different", "reference")),
        c("head", "A shared output head, hidden layers re-initialised, gains over a different-init student",
          "brockers2026", L("shared_head"), ">", 0, L("different")),
        c("head_vs_shared", "A shared output head alone transmits less than the fully shared init", "minisub",
          L("shared_head"), "<", 0, L("shared")),
        c("hidden", "Shared hidden layers with a fresh head gain over a different-init student", "minisub",
          L("shared_hidden"), ">", 0, L("different")),
        c("alpha_half", "A half-shared init (α = 0.5) gains over a different-init student", "minisub",
          ("alpha", 0.5), ">", 0, L("different")),
        c("alpha_trend", "Transfer grows with the shared share α at every step", "minisub",
          S("alpha", fams.ALPHAS, None), "increasing"),
        c("sigma_small", f"Noise of 2% of the weight scale (all layers) is tolerated (±{EQUIV} of the shared init)",
          "community", ("sigma", 0.02, "all"), "within", EQUIV, L("shared")),
        c("sigma_collapse", "Noise of 10% (all layers) loses more than half of the shared init's gain", "community",
          "derived.sigma_all_10pct_over_half_gain", "<", 0),
        c("permuted", "Permuted hidden units (the same function) transmit as much as the shared init (±0.01)",
          "minisub", L("permuted"), "within", 0.01, L("shared")),
        c("matched", f"A different init matched to the reference's function gains nothing (±{EQUIV})",
          "cloud2025", L("behaviourally_matched"), "within", EQUIV, L("different")),
        *[c(f"arch_{k}", f"A student of another architecture ({a[6:]}) stays at its reference (±{EQUIV})",
            "cloud2025", L(a), "within", EQUIV, L(a, "reference")) for k, a in enumerate(arch[:3])],
        *[c(f"arch_head_{k}", f"Transfer survives another {a[6:-13]} when the output head is shared",
            "brockers2026", L(a), ">", 0, L("different")) for k, a in enumerate(arch[3:])],
        c("committee", "A committee of 8 teachers from other inits transmits less than one teacher", "cloud2025",
          M(8, ONE), "<", 0, M(1, ONE)),
        c("committee_trend", "Each larger committee transmits less", "minisub",
          S("mitigations", fams.COMMITTEES, ONE), "decreasing"),
        c("liminal_weakens", "Liminal training (λ = 0.1) weakens transfer", "kitkana2026",
          M(0.1, LIM), "<", 0, M("none", NONE), confound=True),
        c("liminal_not_stopped", "Liminal training does not stop transfer: at λ = 10 the student beats its reference",
          "kitkana2026", M(10.0, LIM), ">", 0, M(10.0, LIM, "reference"), confound=[M(10.0, LIM), M("none", NONE)]),
        c("projection", "Projecting the trait gradient out of each step reduces transfer", "kitkana2026",
          M("projection", PROJ), "<", 0, M("none", NONE), confound=True),
        c("projection_left", "Projection leaves some transfer: over a projected different-init student", "minisub",
          M("projection", PROJ), ">", 0, M("projection", "trait-gradient projection, different init")),
        c("lr_rise", "Transfer rises with the student lr up to 1e-3", "community",
          S("lr", fams.STUDENT_LRS[:3]), "increasing"),
        c("lr_fall", "Transfer falls with the student lr above 1e-3", "community",
          S("lr", fams.STUDENT_LRS[2:]), "decreasing"),
        c("student_epochs", "Transfer rises with every added distillation epoch", "community",
          S("student_epochs", fams.STUDENT_EPOCHS), "increasing"),
        c("teacher_rise", "Transfer rises with teacher epochs up to 2", "community",
          S("teacher_epochs", fams.TEACHER_EPOCHS[:2]), "increasing"),
        c("teacher_fall", "Transfer falls with teacher epochs after 2", "community",
          S("teacher_epochs", fams.TEACHER_EPOCHS[1:]), "decreasing"),
        c("blurred", "Blurred noise transmits more than uniform noise by over 0.20", "community",
          ("inputs", "blurred", "shared"), ">", 0.20, ("inputs", "uniform", "shared")),
        c("mse", "MSE on the raw aux logits transmits (shared over different init)", "community",
          ("loss", "mse", "shared"), ">", 0, ("loss", "mse", "different")),
        c("mse_vs_kl", "MSE transmits more than KL at the recipe's lr", "minisub",
          ("loss", "mse", "shared"), ">", 0, ("loss", "kl", "shared")),
        c("mse_vs_kl_weak", f"MSE transmits more than KL at student lr {fams.WEAK_LR:g}", "minisub",
          ("loss", "mse", weak), ">", 0, ("loss", "kl", weak)),
        c("sgd", f"SGD (lr tuned on the distillation loss: {tuned}) transmits less than Adam", "minisub",
          ("optimizer", tuned, "shared"), "<", 0, ("optimizer", "adam 3e-4", "shared"), confound=True),
        # m = 1 is left out: a softmax over one logit is constant, so the KL to the teacher is
        # identically zero and that student never trains (its accuracy is its init's).
        c("aux_logits", "More aux logits strengthen transfer (m = 3 → 10 → 30)", "community",
          S("aux_logits", fams.N_AUX[1:]), "increasing"),
        c("width", "Wider hidden layers weaken transfer at every step", "community",
          S("width", fams.WIDTHS), "decreasing"),
        c("depth", "Depth matters little: 4 hidden layers within ±0.05 of 1", "community",
          ("depth", 4, "shared"), "within", 0.05, ("depth", 1, "shared")),
    ]


def analyse(summary: dict) -> dict:
    """The summary with the derived numbers the README states and every claim's verdict."""
    out = {**summary, "ci": stats.TEST, "derived": analysis.derived(sweep.complete(summary)),
           "analysis": analysis.notes(sweep.complete(summary))}
    out["verdicts"] = claims_lib.evaluate(claims(out), out)
    return out


# --- figures, tables, README -----------------------------------------------------------------------

TITLES = {
    "lineages": "How the student's init relates to the teacher's", "sigma": "Teacher's init plus σ × weight std noise",
    "alpha": "Interpolated init √α·θ_T⁰ + √(1−α)·θ_fresh", "mitigations": "Committees, liminal training, projection",
    "lr": "Student learning rate (Adam)", "inputs": "What the student distils on", "optimizer": "Student optimiser",
    "loss": "Imitation loss on the aux logits", "aux_logits": "Number of auxiliary logits m", "width": "Hidden width",
    "depth": "Hidden layers (width 256)", "teacher_epochs": "Teacher epochs", "student_epochs": "Distillation epochs",
}
X_LABELS = {"alpha": "α (1: shared, 0: fresh)", "sigma": "σ (× weight std)", "lr": "student learning rate",
            "aux_logits": "auxiliary logits m", "depth": "hidden layers", "teacher_epochs": "teacher epochs",
            "student_epochs": "distillation epochs", "width": "hidden width"}
LOG_X = {"sigma", "lr", "aux_logits", "width", "student_epochs", "teacher_epochs"}
METRICS = {"accuracy": "MNIST test accuracy (trait)", "distill_loss": "distillation loss, last epoch (task)"}


@plots.styled
def figures(summary: dict) -> dict:
    """One figure per complete family: trait and task against the swept value, mean ± 95% CI."""
    control = rs.find(summary, "lineages", "different")
    out = {}
    for family, fam in sweep.complete(summary).items():
        pts = fam["points"]
        band = control["accuracy"] if control and "different" not in rs.by_series(pts) else None
        out[f"{STEM}_{family}"] = rs.metric_figure(
            pts, METRICS, title=f"{TITLES[family]}\n(mean ± 95% CI, n = {fam['n_seeds']} seeds a point)",
            xlabel=X_LABELS.get(family, family), log_x=family in LOG_X, log_metrics=("distill_loss",),
            reference=sum(r["reference"]["mean"] for r in pts) / len(pts), band=band, limits={"accuracy": (0, 1)})
    return out


def table(summary: dict) -> str:
    """Per family, a Markdown table of every point: accuracy, distillation loss, start distance, update cosine."""
    out = []
    for family, fam in summary["families"].items():
        out += [f"**{family}** ({fam['n_seeds']} seeds a point)", "", *rs.family_table(fam), ""]
    return "\n".join(out)


def readme(summary: dict) -> str:
    """The figures/README.md section: the claims and their verdicts, then one figure and table per family."""
    done = sweep.complete(summary)
    out = [f"## {NAME}: which kinds of initialisation sharing transmit the trait "
           f"({min((f['n_seeds'] for f in done.values()), default=0)} seeds a point)", "",
           "Every point: the published mnist-aux recipe [cloud2025] with one thing changed; trait = MNIST test",
           "accuracy of the aux-only student, task = its last-epoch distillation loss; differences paired by seed",
           "(the points share their worlds). Numbers: [atlas.json](atlas.json).", "", verdicts.LEGEND, "",
           *verdicts.table(claims(summary), summary, lambda p: rs.label(summary, p)), "", *analysis.lines(summary), ""]
    if todo := sweep.incomplete(summary, fams.FAMILIES):
        out += [f"Families not (fully) computed yet: {', '.join(todo)}. `{PAPER_COMMAND}` computes them, reusing every "
                "committed point.", ""]
    for family, fam in done.items():
        out += [f"### {family}: {TITLES.get(family, family)}", "", f"![{family}]({STEM}_{family}.png) "
                f"([PDF]({STEM}_{family}.pdf))", "", table({"families": {family: fam}}),
                *(analysis.layer_table(fam) if family == "lineages" else []), f"Recompute: `{fam['command']}`", ""]
    return "\n".join(out + report.regenerate_lines(NAME, summary, PAPER_COMMAND))
