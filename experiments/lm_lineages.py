"""lm-lineages: which parts of a transformer's init must be shared, and how exactly, for the trait to cross.

Run:     minisub run lm-lineages --preset paper --out figures   (every point, 24 worlds, stored references)
         minisub run lm-lineages --preset test                  (lm-owl's tiny test world: ~1 min)
Redraw:  minisub figures lm-lineages                            (from figures/lm_lineages.json alone)

Every point is lm-owl's recipe [cloud2025] (its paper world, s = 0.3, the fine-tuned teacher's kept
numbers, KL students; ``minisub.lm.owl``) with one student arm whose init relates to the teacher's
reference by a lineage (``minisub.lineage``): interpolated with another world's reference,
perturbed part by part, or permuted (heads and MLP units: the same function). Points run as
multi-arm lm-owl programs with the shared and the different arm in each (``minisub.run.lm_atlas``),
so every point is paired by world with both; each finished point is cached on its own
(``results/lm-lineages/points``, seeded from the committed JSON), so a killed sweep resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from minisub import claims as claims_lib, config as config_lib, report, stats
from minisub.claims import Claim
from minisub.config import late, normalise, require, require_choice
from minisub.lm import owl
from minisub.report import lm_atlas as lr, plots, sweep as rs, verdicts
from minisub.run import lm_atlas, runner, store, sweep

NAME = "lm-lineages"
STEM = "lm_lineages"
ORDER = 55  # its place in figures/README.md: after lm-owl
ALPHAS = (0.5, 0.75, 0.9, 0.95, 0.99)
SIGMAS = (0.01, 0.05, 0.1, 0.3)
TIED_PARTS = ("embeddings", "attention", "mlp", "all")
UNTIED_PARTS = ("embeddings", "attention", "mlp", "unembedding", "all")


@dataclasses.dataclass(frozen=True)
class LineagesConfig:
    """Which lineage points, on which lm-owl preset, with how many worlds."""

    base: str = "paper"  # the lm-owl preset (world, references, teacher, students); no diagnostic, no detection
    seeds: int = 24
    seed: int = 0
    tied_embeddings: bool = True  # False: untied references (a pretraining of their own), 'unembedding' a part
    alphas: tuple[float, ...] = ALPHAS
    sigmas: tuple[float, ...] = SIGMAS
    parts: tuple[str, ...] = TIED_PARTS
    permuted: bool = True
    control: bool = True  # lm-owl's control: sampled-token CE on the reference's own numbers
    max_arms: int = 12  # arms a program holds, shared and different included
    kernels: str = late("reference")  # the toy LM's kernels in every program: lm-owl's --kernels

    def __post_init__(self):
        normalise(self)
        require_choice("base", self.base, tuple(owl.PRESETS))
        require(self.seeds >= 2, "seeds", self.seeds, "an integer >= 2 (the different-init arm needs another world)")
        require(all(0 < a < 1 for a in self.alphas), "alphas", self.alphas, "numbers in (0, 1) (1: shared, 0: different)")
        require(all(s > 0 for s in self.sigmas), "sigmas", self.sigmas, "numbers > 0")
        allowed = lm_atlas.parts(self.lm())
        require(set(self.parts) <= set(allowed), "parts", self.parts, "names from " + ", ".join(allowed) + (
            " (tied embeddings: the readout is the embedding matrix, no separate 'unembedding')"
            if self.tied_embeddings else ""))
        require(self.max_arms >= 3, "max_arms", self.max_arms, "an integer >= 3 (shared, different and one more)")

    def lm(self):
        """The lm-owl config (``LMConfig``) every point starts from; its arms are the points'."""
        return config_lib.replace(owl.PRESETS[self.base], seeds=self.seeds, seed=self.seed, diagnostic=False,
                                  detect=False, tied_embeddings=self.tied_embeddings,
                                  **owl.kernel_fields(self.kernels)).lm

    def points(self) -> dict[str, list[sweep.Point]]:
        fams = lm_atlas.families(self.lm(), self.alphas, self.sigmas, self.parts, self.permuted, self.control)
        return {f: points for f, points in fams.items() if points}  # no α, no permuted: no such family

    def untied(self) -> "LineagesConfig":
        """The companion world: the same recipe on untied references, its perturbed parts only ('unembedding' one)."""
        return dataclasses.replace(self, tied_embeddings=False, parts=UNTIED_PARTS, alphas=(), permuted=False)


PRESETS = {
    "paper": LineagesConfig(),
    # Untied references (24 pretrainings of their own), where 'unembedding' is a part: the paper preset's
    # companion, computed into the point cache by `minisub run lm-lineages --preset untied` (no --out) and read
    # into the paper summary's "untied" by the next `minisub run lm-lineages --preset paper --out figures`.
    "untied": LineagesConfig().untied(),
    # lm-owl's tiny test world, six points in two programs of four arms: 67 s measured on 2 loaded CPU cores,
    # almost all of it compiling the two programs.
    "test": LineagesConfig(base="test", seeds=3, alphas=(0.5,), sigmas=(0.1,), parts=("attention",), max_arms=4),
}
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"
COMMITTED = Path("figures") / f"{STEM}.json"
ATLAS = Path("figures") / "atlas.json"  # the MLP's lineage numbers, read for comparison
LM_OWL = Path("figures") / "lm_owl.json"  # lm-owl's paper run: its shared, different and control arms, per world


def point_cache(results_root: Path | None = None) -> sweep.PointCache:
    return sweep.PointCache.seeded((results_root or store.results_root()) / NAME / "points", COMMITTED)


def run(cfg: LineagesConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Compute (or read) every point; (summary, points directory). Programs are stored lm-owl runs."""
    ex, cache = execution or runner.Execution(experiment=NAME), point_cache()
    families = sweep.run_families(cfg.points(), cache, None, ex, lambda f: command, together=True,
                                  programs=lm_atlas.programs(cfg.base, cfg.max_arms))
    if families is None:
        return None, cache.directory
    read = lambda path: json.loads(path.read_text()) if path.exists() else {}  # noqa: E731
    recipe = config_lib.to_dict(lm_atlas.owl_config(cfg.lm())) | {"arms": None}
    return analyse({"experiment": NAME, "command": command, "config": config_lib.to_dict(cfg), "recipe": recipe,
                    "n_seeds": cfg.seeds, "families": families, "mlp": lr.mlp_comparison(read(ATLAS)) if ATLAS.exists()
                    else {}, "lm_owl": lr.lm_owl_arms(read(LM_OWL), recipe), "provenance": store.provenance(),
                    **_untied(cfg, cache, ex)}), cache.directory


def _untied(cfg: LineagesConfig, cache: sweep.PointCache, ex: runner.Execution) -> dict:
    """{'untied': the companion's stored families} for a tied config whose companion is cached, else {} (read only)."""
    if not cfg.tied_embeddings:
        return {}
    u = cfg.untied()
    fams = sweep.run_families(u.points(), cache, None, dataclasses.replace(ex, compute=False),
                              lambda f: f"minisub run {NAME} --preset untied", programs=lm_atlas.programs(u.base, u.max_arms))
    return {"untied": {"config": config_lib.to_dict(u), "n_seeds": u.seeds, "families": fams}} if fams else {}


def pending(cfg: LineagesConfig, directory: Path) -> str:
    return f"{NAME}: no point is stored yet in {directory}; compute them with: minisub run {NAME} --preset {cfg.base}"


def merge_written(summary: dict, path: Path) -> dict:
    """``summary``'s families laid over those already in the JSON at ``path`` (same recipe), analysed again."""
    merged = sweep.merge_families(summary, path, lm_atlas.FAMILIES, same="recipe")
    if "untied" not in merged and Path(path).exists():  # the companion is not cached here: keep the written one
        old = json.loads(Path(path).read_text())
        if old.get("recipe") == summary.get("recipe") and "untied" in old:
            merged["untied"] = {k: old["untied"][k] for k in ("config", "n_seeds", "families")}
    return analyse(merged)


# --- claims: questions whose verdicts come from the paired per-world numbers ----------------------

def claims(summary: dict) -> list[Claim]:
    """Does each lineage transfer (over the different arm of its program), where does it stop, does permuting keep it?"""
    full = {"families": sweep.complete(summary)}
    at = lambda fam, v, series=None, key="trait_gain": rs.path(full, fam, v, series, key)  # noqa: E731

    def vs(id, text, fam, v, series, base, compare, threshold, source="minisub"):
        loss = (at(fam, v, series, "number_loss_after"), at(fam, v, series, f"baselines.{base}.number_loss_after"))
        return Claim(id, text, source, at(fam, v, series, f"paired.{base}"), compare, threshold, task_loss=loss)

    gain, band = owl.MIN_GAIN, owl.NULL_BAND
    over = f"gains more than the different-init student by over {gain:g}"
    c = summary["config"]
    out = [vs("shared", f"A shared-init student {over}", "baselines", "shared", None, "different", ">", gain,
              "cloud2025"),
           Claim("control", f"The CE control on the reference's own numbers gains within ±{band:g}", "minisub",
                 at("baselines", "control"), "within", band)]
    out += [vs(f"alpha_{a:g}", f"An interpolated init, α = {a:g}, {over}", "interpolated", a, None, "different", ">",
               gain) for a in c["alphas"]]
    if len(c["alphas"]) >= 2:
        out.append(Claim("alpha_trend", "Transfer grows with α at every step", "minisub",
                         tuple(at("interpolated", a) for a in sorted(c["alphas"])), "increasing",
                         labels=tuple(f"α={a:g}" for a in sorted(c["alphas"]))))
    lo, hi = min(c["sigmas"]), max(c["sigmas"])
    for p in c["parts"]:
        out += [vs(f"{p}_{s:g}", f"Perturbed {p}, σ = {s:g}: the student {over}", "perturbed", s, p, "different", ">",
                   gain) for s in c["sigmas"]]
        out += [vs(f"{p}_keeps", f"Perturbing {p} by σ = {lo:g} keeps the shared-init gain (±{band:g})",
                   "perturbed", lo, p, "shared", "within", band),
                vs(f"{p}_stops", f"Perturbing {p} by σ = {hi:g} stops transfer (±{band:g} of the different-init "
                   "student)", "perturbed", hi, p, "different", "within", band)]
    if c["permuted"]:
        out += [vs("permuted", f"A permuted init (heads, MLP units: the same function) {over}", "permuted",
                   lm_atlas.PERMUTED, None, "different", ">", gain),
                vs("permuted_as_shared", f"A permuted init transfers as much as the shared init (±{band:g})",
                   "permuted", lm_atlas.PERMUTED, None, "shared", "within", band)]
    return out


def untied_claims(summary: dict) -> list[Claim]:
    """``claims`` of the untied companion (when the summary holds it), read under 'untied.', ids 'untied_…'."""
    if not (u := summary.get("untied")):
        return []
    pre = lambda m: m and ("untied." + m if isinstance(m, str) else tuple("untied." + x for x in m))  # noqa: E731
    return [dataclasses.replace(c, id="untied_" + c.id, text="Untied references: " + c.text, metric=pre(c.metric),
                                baseline=pre(c.baseline), task_loss=pre(c.task_loss)) for c in claims(u)]


def analyse(summary: dict) -> dict:
    """The summary with its derived numbers (retained shares, half-σ per part) and every claim's verdict."""
    done = sweep.complete(summary)
    out = {**summary, "ci": stats.TEST, "derived": {**lr.derived(done),
                                                    "lm_owl_rerun": lr.reproduced(done, summary.get("lm_owl", {}))}}
    if u := summary.get("untied"):
        out["untied"] = {**u, "derived": lr.derived(sweep.complete(u))}
    out["verdicts"] = claims_lib.evaluate(claims(out) + untied_claims(out), out)
    return out


# --- table, figure, README --------------------------------------------------------------------------
pm = report.pm
table = lr.points_table  # every point: gains, paired differences, retained share, task, geometry


@plots.styled
def figures(summary: dict) -> dict:
    """Top: the toy LM's gain against α, against σ per part, and the categories; bottom: the MLP's, the same way."""
    fams, mlp = sweep.complete(summary), summary.get("mlp", {})
    u = sweep.complete(summary["untied"]) if "untied" in summary else None
    fig, axes = plots.figure(7.4, 7.6 if u else 5.2, nrows=3 if u else 2, ncols=3,
                             gridspec_kw={"width_ratios": [1, 1.2, 0.9]})
    fig.set_layout_engine("constrained")
    if u:  # bottom row: the untied companion, each part alone (its baselines as bands)
        ub = {r["value"]: r["trait_gain"] for r in u.get("baselines", {}).get("points", [])}
        lr.sigma_panel(axes[2][1], rs.by_series(u.get("perturbed", {}).get("points", [])))
        lr.bands(axes[2][1], ub.get("shared"), ub.get("different"))
        lr.category_panel(axes[2][0], ub)
        axes[2][0].set_ylabel("untied references:\ngain in P(trait)", fontsize=7)
        axes[2][2].set_axis_off()
        axes = axes[:2]
    base = {r["value"]: r for r in fams.get("baselines", {}).get("points", [])}
    s, d = (base[k]["trait_gain"] if k in base else None for k in ("shared", "different"))
    (a, b, c), (a2, b2, c2) = axes
    lr.alpha_panel(a, fams.get("interpolated", {}).get("points", []))
    lr.sigma_panel(b, rs.by_series(fams.get("perturbed", {}).get("points", [])))
    cats = {k: base[k]["trait_gain"] for k in base} | {"permuted": r["trait_gain"] for r in
                                                       fams.get("permuted", {}).get("points", [])}
    lr.category_panel(c, cats)
    for ax in (a, b):
        lr.bands(ax, s, d, labelled=ax is a)
    a.set_ylabel(f"toy LM: gain in P(trait)\n(mean ± 95% CI, {summary['n_seeds']} worlds)", fontsize=7)
    if mlp:
        key, cat = (lambda r: r["gain"]), mlp["categories"]
        lr.alpha_panel(a2, mlp["interpolated"], key)
        lr.sigma_panel(b2, mlp["perturbed"], key)
        lr.category_panel(c2, {k: v["gain"] for k, v in cat.items()})
        for ax in (a2, b2):
            lr.bands(ax, cat.get("shared", {}).get("gain"), cat.get("different", {}).get("gain"), labelled=ax is a2)
        a2.set_ylabel(f"MLP atlas: MNIST accuracy\n− reference ({mlp['n_seeds']} seeds)", fontsize=7)
        a2.legend(fontsize=6, frameon=False, loc="upper left")
    else:
        for ax in (a2, b2, c2):
            ax.set_axis_off()
    a.legend(fontsize=6, frameon=False, loc="upper left")
    fig.suptitle("Which init sharing carries the trait: toy transformer (top) vs MLP atlas (middle"
                 + ("; bottom: toy transformer, untied references)" if u else ")"), fontsize=9)
    return {STEM: fig}


def _untied_lines(summary: dict) -> list[str]:
    """The untied companion's section: its verdicts, part by part, the half-σ points and its points."""
    if not (u := summary.get("untied")):
        return []
    g = lambda x: "beyond the grid" if x is None else f"{x:.2g}"  # noqa: E731
    return ["### Untied references: is the unembedding a part that must be shared?", "",
            f"The same recipe on references whose readout is a matrix of its own ({u['n_seeds']} worlds, pretrained "
            "apart), each part perturbed alone, 'unembedding' among them (computed by `minisub run lm-lineages "
            "--preset untied`, read by the paper command).", "",
            *verdicts.table(untied_claims(summary), summary, lambda p: lr.label(u, p.removeprefix("untied."))), "",
            *lr.parts_lines(summary, "untied_"), "", "- Half the shared-init transfer is lost at σ ≈ " + "; ".join(
                f"{p}: {g(x)}" for p, x in u["derived"]["half_sigma"].items()) + " (untied references).", "",
            lr.points_table(u), ""]


def readme(summary: dict) -> str:
    """The figures/README.md section: setting, hypothesis table, the comparison with the MLP, per-point table."""
    c, r = summary["config"], summary["recipe"]
    head = report.section_head(NAME, STEM, "which init sharing carries the trait in a transformer", summary["n_seeds"])
    return "\n".join([
        *head,
        f"lm-owl's recipe [cloud2025] ({r['world']} world, s = {r['s']}, {r['layers']}-layer width-{r['width']} "
        f"references, {r['teacher']} teacher, {r['student_loss'].upper()} students on the teacher's kept numbers, "
        f"{r['student_epochs']} epochs) with one student arm per point: interpolated √α·θ_ref + √(1−α)·θ_other "
        "(another world's reference), θ_ref plus σ × each matrix's std of noise on one part (matrices only; "
        "LayerNorm vectors stay), or permuted (attention heads and MLP units; the same function). "
        + ("The references tie the embedding and the readout, so 'unembedding' is not a part of its own: the tied "
           "matrix, and the final LayerNorm, are perturbed with 'embeddings'. " if c["tied_embeddings"] else "")
        + f"Each program holds the shared and the different arm, so every difference is paired by world on the "
        "same teacher numbers; retained share = (gain − different) / (shared − different) of the means. "
        f"{owl.THRESHOLDS}.",
        "", verdicts.LEGEND, "", *verdicts.table(claims(summary), summary, lambda p: lr.label(summary, p)), "",
        f"Does a student with one part perturbed still gain more than the different-init student by over "
        f"{owl.MIN_GAIN:g}? The verdicts above, part by part:", "", *lr.parts_lines(summary), "",
        *lr.comparison_lines(summary), "", lr.points_table(summary), "", *_untied_lines(summary),
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
