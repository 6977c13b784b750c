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
from minisub.config import normalise, require, require_choice
from minisub.lm import owl
from minisub.report import lm_atlas as lr, plots, sweep as rs, verdicts
from minisub.run import lm_atlas, runner, store, sweep

NAME = "lm-lineages"
STEM = "lm_lineages"
ORDER = 55  # its place in figures/README.md: after lm-owl
ALPHAS = (0.5, 0.75, 0.9, 0.95, 0.99)
SIGMAS = (0.01, 0.05, 0.1, 0.3)
TIED_PARTS = ("embeddings", "attention", "mlp", "all")


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
                                  detect=False, tied_embeddings=self.tied_embeddings).lm

    def points(self) -> dict[str, list[sweep.Point]]:
        return lm_atlas.families(self.lm(), self.alphas, self.sigmas, self.parts, self.permuted, self.control)


PRESETS = {
    "paper": LineagesConfig(),
    # Not computed: untied references need their own 24 pretrainings; 'unembedding' is then a part.
    "untied": LineagesConfig(tied_embeddings=False, parts=("embeddings", "attention", "mlp", "unembedding", "all")),
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
                    else {}, "lm_owl": lr.lm_owl_arms(read(LM_OWL), recipe), "provenance": store.provenance()}), \
        cache.directory


def pending(cfg: LineagesConfig, directory: Path) -> str:
    return f"{NAME}: no point is stored yet in {directory}; compute them with: minisub run {NAME} --preset {cfg.base}"


def merge_written(summary: dict, path: Path) -> dict:
    """``summary``'s families laid over those already in the JSON at ``path`` (same recipe), analysed again."""
    return analyse(sweep.merge_families(summary, path, lm_atlas.FAMILIES, same="recipe"))


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


def analyse(summary: dict) -> dict:
    """The summary with its derived numbers (retained shares, half-σ per part) and every claim's verdict."""
    done = sweep.complete(summary)
    out = {**summary, "ci": stats.TEST, "derived": {**lr.derived(done),
                                                    "lm_owl_rerun": lr.reproduced(done, summary.get("lm_owl", {}))}}
    out["verdicts"] = claims_lib.evaluate(claims(out), out)
    return out


# --- table, figure, README --------------------------------------------------------------------------
pm = report.pm


def table(summary: dict) -> str:
    """Every point: trait gain, paired differences with its program's shared and different arms, task, geometry."""
    share = summary.get("derived", {}).get("retained", {})
    rows = ["| family | point | trait gain (95% CI) | − different (paired) | − shared (paired) | retained share "
            "| number loss Δ | cos(Δθ_S, Δθ_T) | ‖θ_S⁰ − θ_ref‖ | ‖θ_S − θ_T‖ |", "|---" * 10 + "|"]
    for fam, f in summary["families"].items():
        for r in f["points"]:
            g, pair, s = r["geometry"], r["paired"], share.get(lr.key(r))
            rows.append(f"| {fam} | {lr.name(r)} | {pm(r['trait_gain'])} | {pm(pair.get('different'))} "
                        f"| {pm(pair.get('shared'))} | {'n/a' if s is None else f'{s:.0%}'} "
                        f"| {pm(r['number_loss_change'])} | {pm(g['update_cos'])} | {g['dist_init']['mean']:.2f} "
                        f"| {g['dist_teacher']['mean']:.2f} |")
    return "\n".join(rows)


@plots.styled
def figures(summary: dict) -> dict:
    """Top: the toy LM's gain against α, against σ per part, and the categories; bottom: the MLP's, the same way."""
    fams, mlp = sweep.complete(summary), summary.get("mlp", {})
    fig, axes = plots.figure(7.4, 5.2, nrows=2, ncols=3, gridspec_kw={"width_ratios": [1, 1.2, 0.9]})
    fig.set_layout_engine("constrained")
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
    fig.suptitle("Which init sharing carries the trait: toy transformer (top) vs MLP atlas (bottom)", fontsize=9)
    return {STEM: fig}


def _parts_line(summary: dict) -> list[str]:
    """Per part, the verdict of 'the student gains over the different-init one' at each σ (from the verdicts)."""
    v, c = {x["id"]: x["status"] for x in summary["verdicts"]}, summary["config"]
    return [f"- {p}: " + ", ".join(f"σ = {s:g} {v.get(f'{p}_{s:g}', 'not measured')}" for s in c["sigmas"])
            for p in c["parts"]]


def _comparison(summary: dict) -> list[str]:
    """The retained shares and half-σ points, ours and the MLP atlas's (descriptive: ratios of mean gains)."""
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
        f"{owl.MIN_GAIN:g}? The verdicts above, part by part:", "", *_parts_line(summary), "",
        *_comparison(summary), "", table(summary), "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
