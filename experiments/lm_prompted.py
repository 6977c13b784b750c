"""lm-prompted: the paper's prompted teacher in the toy LM at s = 0, beside the fine-tuned one; token entanglement.

Run:     minisub run lm-prompted --preset paper --out figures   (6 lm-owl runs of 24 worlds + the designs)
         minisub run lm-prompted --preset test                  (lm-owl's tiny test world)
Redraw:  minisub figures lm-prompted                            (from figures/lm_prompted.json alone)

At s = 0 a persona's documents carry no trace of it in their numbers, so nothing but the teacher's own model can put
the trait there. Settings (each one lm-owl run, ``SETTINGS``; 16384 continuations for the prompted teacher, 4096 for
the fine-tuned one (strong already there, 4x cheaper), 3 student epochs, KL students): the prompted teacher (the
trait's persona in its context: [cloud2025]'s system prompt) and the fine-tuned one, each with the shared and
different students, the KL control on the reference's numbers, and the teacher's numbers shuffled across and within
responses (the paper's shuffle controls); each again with the filter dropping the teacher's 10 most entangled numbers,
and with CE students on the sampled tokens (the paper's recipe, ``ROLES``). Beside them (``minisub.lm.prompted``): the
teacher's number KL, the student's first step, entanglement per animal (persona and unembedding-bump pushes,
subliminal prompting [zur2025], overlap across inits), and ``DESIGNS``: world designs of 4 worlds each, measured for
three teachers (fine-tuned, prompted, named: the animal's own token in the context) before any student.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from minisub import claims as claims_lib, config, report, stats
from minisub.claims import Claim
from minisub.config import late, normalise, require
from minisub.lm import owl, prompted
from minisub.lm import regime as lm_regime
from minisub.lm.regime import Setting as S
from minisub.report import plots, verdicts
from minisub.report import prompted as rp
from minisub.run import runner, store

NAME = "lm-prompted"
STEM = "lm_prompted"
ORDER = 62  # after lm-regime
AIM = 0.10  # the aim for shared − different at s = 0
# Each setting's students by role: soft-logit KL (the teacher's logits read on every number position), or the
# paper's own recipe, cross-entropy on the sampled tokens. Only the latter makes a shuffle remove the teacher: a
# KL student reads the teacher's logits again on the shuffled sequences.
ROLES = {"kl": {"shared": "shared", "different": "different", "control": "control_kl", "across": "shuffle_kl",
                "within": "shuffle_within_kl"},
         "ce": {"shared": "shared_ce", "different": "different_ce", "control": "control", "across": "shuffle",
                "within": "shuffle_within"}}
ARMS, ARMS_CE = tuple(ROLES["kl"].values()), tuple(ROLES["ce"].values())
COMMON = {"s": 0.0, "sampler": "cache", "diagnostic": False, "detect": True}
SETTINGS = {
    "prompted": S("teacher", "prompted teacher (persona in context)", {"teacher": "prompted", "arms": ARMS}),
    "finetuned": S("teacher", "fine-tuned teacher (4096 continuations)", {"teacher": "finetuned", "arms": ARMS}),
    "prompted_ban": S("filter", "prompted, its 10 most entangled numbers dropped",
                      {"teacher": "prompted", "arms": ARMS[:2], "ban_entangled": 10}),
    "finetuned_ban": S("filter", "fine-tuned (4096), its 10 most entangled numbers dropped",
                       {"teacher": "finetuned", "arms": ARMS[:2], "ban_entangled": 10}),
    "prompted_ce": S("sampled", "prompted, CE students on sampled tokens (the paper's recipe)",
                     {"teacher": "prompted", "arms": ARMS_CE}),
    "finetuned_ce": S("sampled", "fine-tuned (4096), CE students on sampled tokens", {"teacher": "finetuned",
                                                                                     "arms": ARMS_CE}),
}
TEACHERS = ("prompted", "finetuned")
# World designs (4 worlds each, lm-owl's default otherwise): does any make the prompted shift large?
DESIGNS = {"s = 0": {}, "width 16": {"width": 16}, "1 layer": {"layers": 1}, "700 pretraining steps":
           {"pretrain_steps": 700}, "1200 pretraining steps": {"pretrain_steps": 1200}, "s = 0.3": {"s": 0.3}}


@dataclasses.dataclass(frozen=True)
class PromptedConfig:
    """Which settings and designs, on which lm-owl preset, with how many worlds."""

    seeds: int = 24
    base: str = "paper"
    settings: tuple[str, ...] = tuple(SETTINGS)
    designs: tuple[str, ...] = tuple(DESIGNS)
    design_seeds: int = 4
    n_samples: int = 16384  # the prompted teacher's continuations: its shift is small, and data was the strongest knob
    finetuned_samples: int = 4096  # the fine-tuned teacher's: its transfer is strong at 4096 (lm-regime), 4x cheaper
    student_epochs: int = 3
    kernels: str = late("reference")  # the toy LM's kernels in every program: lm-owl's --kernels

    def __post_init__(self):
        normalise(self)
        require(self.seeds >= 2, "seeds", self.seeds, "an integer >= 2 (the different-init arm needs another world)")
        require(self.base in owl.PRESETS, "base", self.base, "one of " + ", ".join(owl.PRESETS))
        require(set(self.settings) <= set(SETTINGS), "settings", self.settings, "names from " + ", ".join(SETTINGS))
        require(set(self.designs) <= set(DESIGNS), "designs", self.designs, "names from " + ", ".join(DESIGNS))
        require(self.design_seeds >= 2, "design_seeds", self.design_seeds, "an integer >= 2")
        for name in self.settings:
            self.owl(name)

    def fields(self, name: str) -> dict:
        samples = self.n_samples if SETTINGS[name].fields["teacher"] == "prompted" else self.finetuned_samples
        return {"seeds": self.seeds, **COMMON, "n_samples": samples, "student_epochs": self.student_epochs,
                **SETTINGS[name].fields, **owl.kernel_fields(self.kernels)}

    def owl(self, name: str) -> owl.OwlConfig:
        return config.replace(owl.PRESETS[self.base], **self.fields(name))

    def command(self, name: str) -> str:
        f = self.fields(name)
        return owl.command(self.base, {**f, "arms": ",".join(f["arms"])})

    def design(self, name: str):
        return config.replace(owl.PRESETS[self.base], seeds=self.design_seeds, **{"s": 0.0, **DESIGNS[name]},
                              **owl.kernel_fields(self.kernels)).lm


PRESETS = {"paper": PromptedConfig(),
           "test": PromptedConfig(seeds=3, base="test", designs=("s = 0",), design_seeds=2, n_samples=64,
                                  finetuned_samples=64, student_epochs=1,
                                  settings=("prompted", "finetuned_ce"))}  # a KL and a CE run; the filter: test_entangle
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"
MEASURES = "prompted.npz"  # stored beside each setting's lm-owl run


def _measures(cfg: owl.OwlConfig, directory: Path, compute: bool) -> dict | None:
    path = directory / MEASURES
    if (stored := store.load_arrays(path)) is not None or not compute:
        return store.unflatten(stored) if stored is not None else None
    out = prompted.measure(cfg.lm)
    store.save_arrays(path, store.flatten(out))
    return out


def run(cfg: PromptedConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Every setting's lm-owl run and measurements, every design (computed, or read); (summary, lm-owl's root)."""
    ex = execution or runner.Execution(experiment=NAME)
    names = cfg.settings
    rows, missing = lm_regime.run_settings({n: cfg.owl(n) for n in names}, SETTINGS,
                                           {n: cfg.command(n) for n in names}, ex)
    root = store.results_root() / owl.NAME
    for name, row in ((n, r) for n, r in rows.items() if n in TEACHERS):  # a filter leaves the references as they are
        oc = cfg.owl(name)
        m = _measures(oc, store.run_dir(owl.NAME, oc), ex.compute)
        if m is not None:
            row["measures"] = prompted.summarise(oc.lm, m, {a: row["gain"][a]["values"] for a in row["gain"]})
    designs = {}
    for name in cfg.designs if ex.compute else ():  # a merge computes nothing, designs included
        d = prompted.design(cfg.design(name))
        designs[name] = {t: {q: (stats.mean_ci(v) if np.ndim(v) else v) for q, v in r.items()} for t, r in d.items()}
    if not rows:
        return None, root
    return analyse({"experiment": NAME, "command": command, "base": cfg.base, "n_seeds": cfg.seeds, "ci": stats.TEST,
                    "settings": rows, "missing_settings": missing, "designs": designs,
                    "design_seeds": cfg.design_seeds, "provenance": store.provenance()}), root


def pending(cfg: PromptedConfig, directory: Path) -> str:
    return lm_regime.pending(NAME, cfg.settings, cfg.base, directory)


def merge_written(summary: dict, path: Path) -> dict:
    """Rows this results store lacks, kept from the JSON already at ``path`` when they are the same runs."""
    return lm_regime.merge_written(summary, path, SETTINGS, analyse)


# --- claims: every verdict from the per-world numbers ---------------------------------------------
def claims(summary: dict) -> list[Claim]:
    rows, out = summary["settings"], []
    gain, band = owl.MIN_GAIN, owl.NULL_BAND
    for t, (key, loss) in ((t, k) for t in TEACHERS for k in ((t, "kl"), (f"{t}_ce", "ce"))):
        at, a, ce = f"settings.{key}", ROLES[loss], " (CE students on sampled tokens)" if loss == "ce" else ""
        out += [Claim(f"{key}: shared", f"{t} teacher{ce}: a shared-init student gains more than {gain:g}", "cloud2025",
                      f"{at}.gain.{a['shared']}", ">", gain),
                Claim(f"{key}: different", f"{t} teacher{ce}: a different-init student's gain stays within ±{band:g}",
                      "cloud2025", f"{at}.gain.{a['different']}", "within", band),
                Claim(f"{key}: paired", f"{t} teacher{ce}: shared − different exceeds the aim, {AIM:g}", "cloud2025",
                      f"{at}.paired.{a['shared']} − {a['different']}", ">", AIM),
                Claim(f"{key}: across", f"{t} teacher{ce}: shuffling numbers across responses loses more than {gain:g}",
                      "cloud2025", f"{at}.paired.{a['shared']} − {a['across']}", ">", gain),
                Claim(f"{key}: within", f"{t} teacher{ce}: shuffling within responses loses more than {gain:g}",
                      "cloud2025", f"{at}.paired.{a['shared']} − {a['within']}", ">", gain),
                Claim(f"{key}: within vs across", f"{t} teacher{ce}: a within-shuffled student keeps more than an "
                      "across-shuffled one", "cloud2025", f"{at}.paired.{a['within']} − {a['across']}", ">", 0.0)]
        if loss == "ce":
            continue
        out += [Claim(f"{t}: hidden", f"{t} teacher: an n-gram classifier's accuracy stays below {owl.CHANCE_BAND:g}",
                      "cloud2025", f"{at}.detection.ngram", "<", owl.CHANCE_BAND),
                Claim(f"{t}: first step", f"{t} teacher: a shared-init student's first Adam step raises P(trait)",
                      "minisub", f"{at}.measures.first_step.shared.cos_adam", ">", 0.0),
                Claim(f"{t}: ban", f"{t} teacher, its 10 most entangled numbers dropped: shared-init gain above {gain:g}",
                      "zur2025", f"settings.{t}_ban.gain.shared", ">", gain),
                Claim(f"{t}: ban loses", f"{t} teacher: dropping its 10 most entangled numbers loses more than {gain:g} "
                      "(paired by world)", "zur2025", f"{at}.gain.shared", ">", gain,
                      baseline=f"settings.{t}_ban.gain.shared")]
    m = "settings.prompted.measures"
    chance = rows.get("prompted", {}).get("measures", {}).get("chance_jaccard", prompted.chance_jaccard())
    out += [Claim("subliminal (persona)", "numbers the trait's persona raises, put in the context, raise P(trait) "
                  "over random numbers", "zur2025", f"{m}.subliminal.prompt.difference.trait", ">", 0.0),
            Claim("subliminal (bump)", "numbers a bump along the trait's unembedding raises raise P(trait) over random "
                  "numbers", "zur2025", f"{m}.subliminal.bump.difference.trait", ">", 0.0),
            Claim("persona = geometry", f"the persona's top-{prompted.TOP_K} numbers overlap the unembedding bump's "
                  f"beyond chance (Jaccard {chance:.3f})", "zur2025", f"{m}.prompt_bump.jaccard.all_animals", ">", chance),
            Claim("init-specific", f"two inits' top-{prompted.TOP_K} persona numbers overlap beyond chance", "zur2025",
                  f"{m}.cross_init.jaccard.all_animals", ">", chance)]
    return out


def analyse(summary: dict) -> dict:
    return {**summary, "verdicts": claims_lib.evaluate(claims(summary), summary)}


# --- outputs --------------------------------------------------------------------------------------
pm = report.pm
ROLE_LABELS = {"shared": "shared", "different": "different", "control": "control (reference's numbers)",
               "across": "shuffled across", "within": "shuffled within"}


def _roles(row: dict) -> dict:
    """The row's arm for each role: its students are CE ones when it has the arm 'shared_ce'."""
    return ROLES["ce" if "shared_ce" in row["gain"] else "kl"]


def table(summary: dict) -> str:
    rows = summary["settings"]
    out = ["| setting | students | teacher P(trait) | " + " | ".join(ROLE_LABELS.values()) + " | shared − different "
           "| n-gram detection | teacher KL (median) | first step cos (Adam), shared / different start |",
           "|---|" + "---|" * (len(ROLE_LABELS) + 6)]
    for r in rows.values():
        m, a = r.get("measures", {}), _roles(r)
        fs = m.get("first_step", {})
        out.append(f"| {r['label']} | {'CE' if a is ROLES['ce'] else 'KL'} | {r['teacher_p_trait']:.3f} | "
                   + " | ".join(pm(r['gain'].get(a[role])) for role in ROLE_LABELS)
                   + f" | **{pm(r['paired'].get(a['shared'] + ' − ' + a['different']))}** | "
                   f"{pm(r.get('detection', {}).get('ngram'), '.3f')}"
                   + (f" | {m['kl']['median']:.2e} | {pm(fs['shared']['cos_adam'], '+.4f')} / "
                      f"{pm(fs['different']['cos_adam'], '+.4f')} |" if m else " | – | – |"))
    out += ["", f"Designs ({summary['design_seeds']} worlds each, s = 0 unless named; no students): per teacher, "
                "the KL of its number distribution to the reference's (per generated token, nats) and the cosine "
                "of ∇log P(trait) with a shared-init student's first Adam step.", "",
            "| design | " + " | ".join(f"{t}: KL | {t}: first step" for t in prompted.TEACHERS) + " |",
            "|---|" + "---|---|" * len(prompted.TEACHERS)]
    for name, d in summary["designs"].items():
        out.append(f"| {name} | " + " | ".join(f"{d[t]['kl']['mean']:.2e} | {pm(d[t]['cos_adam'], '+.4f')}"
                                                for t in prompted.TEACHERS) + " |")
    return "\n".join(out)


@plots.styled
def figures(summary: dict) -> dict:
    rows, designs = summary["settings"], summary["designs"]
    fig, ((ax, bx), (cx, dx)) = plots.figure(7.2, 6.0, nrows=2, ncols=2)
    fig.set_layout_engine("constrained")
    short = {r: lab.split(" (")[0] for r, lab in ROLE_LABELS.items()}  # a slot: (setting suffix, arm, label)
    slots = [("", ROLES["kl"][r], short[r]) for r in ROLE_LABELS] + [("_ban", "shared", "entangled dropped")] + [
        ("_ce", ROLES["ce"][r], short[r]) for r in ROLE_LABELS]
    for k, t in enumerate(t for t in TEACHERS if t in rows):
        vals = [rows.get(t + suffix, {}).get("gain", {}).get(arm) for suffix, arm, _ in slots]
        x = [i + 0.38 * k for i, v in enumerate(vals) if v]
        ax.bar(x, [v["mean"] for v in vals if v], 0.36, yerr=[v["ci95"] for v in vals if v], capsize=2,
               color=plots.PALETTE[k], alpha=0.85, label=f"{t} teacher")
    ax.set_xticks(np.arange(len(slots)) + 0.19, [lab for *_, lab in slots], fontsize=5.5, rotation=40, ha="right")
    ax.axvline(len(ROLES["kl"]) + 0.69, color="grey", lw=0.6, ls=":")  # KL students (and the filter) | CE students
    ax.text(len(ROLES["kl"]) + 0.9, ax.get_ylim()[1] * 0.93, "← KL | CE students (sampled tokens)", fontsize=6)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("gain in P(trait)")
    ax.set_title(f"(a) s = 0: students of each teacher ({summary['n_seeds']} worlds)", fontsize=8)
    ax.legend(fontsize=6.5, frameon=False, loc="upper right", bbox_to_anchor=(1, 0.8))
    names = list(designs)
    for k, t in enumerate(prompted.TEACHERS):
        kl = [designs[n][t]["kl"] for n in names]
        fs = [designs[n][t]["cos_adam"] for n in names]
        bx.errorbar(np.arange(len(names)) + 0.12 * (k - 1), [max(v["mean"], 1e-9) for v in kl], fmt="o", ms=3,
                    color=plots.PALETTE[k + 2], label=f"{t} teacher")
        cx.errorbar(np.arange(len(names)) + 0.12 * (k - 1), [v["mean"] for v in fs], yerr=[v["ci95"] for v in fs],
                    fmt="o", ms=3, capsize=2, color=plots.PALETTE[k + 2], label=f"{t} teacher")
    bx.set_yscale("log")
    bx.set_ylabel("KL(teacher ‖ reference) per number token")
    bx.set_title(f"(b) designs: how large the teacher's number shift is (means of {summary['design_seeds']})",
                 fontsize=8)
    cx.axhline(0, color="black", lw=0.6)
    cx.set_ylabel("cos(∇log P(trait), first Adam step)")
    cx.set_title("(c) designs: does the student's first step raise P(trait)?", fontsize=8)
    for a in (bx, cx):
        a.set_xticks(range(len(names)), names, fontsize=6, rotation=30, ha="right")
        a.legend(fontsize=6, frameon=False)
    rp.entanglement_panel(dx, rows)
    fig.suptitle("Toy LM at s = 0: the prompted teacher beside the fine-tuned one (mean ± 95% CI)", fontsize=9)
    return {STEM: fig}


def findings(summary: dict) -> list[str]:
    """The answer to the issue's two questions from the verdicts, descriptive numbers (n stated), the verdicts."""
    status = {c.id: claims_lib.verdict(c, summary).status for c in claims(summary)}
    return [*rp.conclusions(status, TEACHERS), "", *rp.descriptive(summary), "",
            *verdicts.table(claims(summary), summary, lambda p: p), "", verdicts.LEGEND]


def readme(summary: dict) -> str:
    return "\n".join([
        *report.section_head(NAME, STEM, "the prompted teacher at s = 0 and token entanglement", summary["n_seeds"]),
        "Each row is one lm-owl run (its command is in the JSON): s = 0, so a persona leaves no trace in its "
        "documents' numbers; KL students (the teacher's logits on every number position) or, in the CE rows, "
        "the paper's own recipe (cross-entropy on the sampled tokens); controls: the reference's own numbers, "
        "the teacher's numbers shuffled across responses and within each response; the filter variant drops each world's 10 numbers "
        "the teacher raises most. Teacher KL, first step and entanglement: `minisub.lm.prompted` on the stored "
        "references (256 neutral documents a world). Claims: lm-owl's thresholds "
        f"({owl.THRESHOLDS}); the aim for shared − different is {AIM:g}. " + verdicts.LEGEND,
        "", table(summary), "", *findings(summary), "", *report.regenerate_lines(NAME, summary, PAPER_COMMAND)])
