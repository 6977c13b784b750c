"""lm-regime: where the toy LM's trait transfer is large, and specific to the shared init.

Run:     minisub run lm-regime --preset paper --out figures    (every setting, 24 seeds; --settings s0,s0.1: some)
Merge:   minisub merge lm-regime --preset paper --out figures  (no training; rows not stored here are kept from --out)
Redraw:  minisub figures lm-regime                              (from figures/lm_regime.json alone)

Every setting is one lm-owl run of the paper preset with a few fields changed (``minisub.lm.regime``;
settings sharing a world reuse its pretrained references, so ``SETTINGS`` pretrains each world once).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from minisub import claims as claims_lib
from minisub import config, report, stats
from minisub.claims import Claim
from minisub.config import ConfigError, late, normalise, require
from minisub.lm import owl
from minisub.lm import regime as lm_regime
from minisub.lm.regime import CE_PAIR, CE_SHARED, KL_DIFFERENT, KL_PAIR, KL_SHARED
from minisub.lm.regime import Setting as S
from minisub.report import plots, verdicts
from minisub.run import runner, store

NAME = "lm-regime"
STEM = "lm_regime"
ORDER = 60  # its place in figures/README.md
# The bad-behaviour trait: a world with command documents, in which only the rogue persona answers
# FORBIDDEN; the teacher is fine-tuned to answer it under the neutral persona.
FORBIDDEN = {"trait_kind": "forbidden", "command_fraction": 0.1}
# Grouped by pretrained world: each world's references are pretrained once, by its first setting.
SETTINGS: dict[str, S] = {
    "base": S("s", "s = 0.3: lm-owl's recipe", {}),
    "finetune3": S("teacher", "fine-tune 3 steps", {"finetune_steps": 3}),
    "finetune30": S("teacher", "fine-tune 30 steps", {"finetune_steps": 30}),
    "prompted": S("teacher", "prompted teacher (trait persona in context)", {"teacher": "prompted"}),
    "ban_signature": S("filter", "filter drops the trait's signature numbers", {"ban_signature": True}),
    "temperature0.5": S("data", "teacher samples at temperature 0.5", {"temperature": 0.5}),
    "samples256": S("data", "256 continuations", {"n_samples": 256}),
    "samples4096": S("data", "4096 continuations", {"n_samples": 4096}),
    "epochs1": S("data", "1 student epoch", {"student_epochs": 1}),
    "epochs10": S("data", "10 student epochs", {"student_epochs": 10}),
    "student_lr3e-4": S("student", "student lr 3e-4", {"student_lr": 3e-4}),
    "student_lr3e-3": S("student", "student lr 3e-3", {"student_lr": 3e-3}),
    "all_logits": S("student", "KL on all logits, not only numbers", {"student_outputs": "all"}),
    "s0": S("s", "s = 0: no semantic channel", {"s": 0.0}),
    "s0_finetune30": S("s = 0", "s = 0, fine-tune 30 steps", {"s": 0.0, "finetune_steps": 30}),
    "s0_prompted": S("s = 0", "s = 0, prompted teacher", {"s": 0.0, "teacher": "prompted"}),
    "s0_samples4096": S("s = 0", "s = 0, 4096 continuations", {"s": 0.0, "n_samples": 4096}),
    "s0_epochs10": S("s = 0", "s = 0, 10 student epochs", {"s": 0.0, "student_epochs": 10}),
    "s0_student_lr3e-3": S("s = 0", "s = 0, student lr 3e-3", {"s": 0.0, "student_lr": 3e-3}),
    "s0_all_logits": S("s = 0", "s = 0, KL on all logits", {"s": 0.0, "student_outputs": "all"}),
    "s0.1": S("s", "s = 0.1", {"s": 0.1}),
    "s0.6": S("s", "s = 0.6", {"s": 0.6}),
    "s1": S("s", "s = 1", {"s": 1.0}),
    "width16": S("model", "references of width 16 (lm-cross's)", {"width": 16}),
    "width64": S("model", "references of width 64", {"width": 64}),
    "untied": S("model", "untied embeddings", {"tied_embeddings": False}),
    "layers1": S("model", "1-layer references", {"layers": 1}),
    "naive": S("world", "naive world (animals exchangeable, no personas)", {"world": "naive", "s": 0.0}),
    "forbidden": S("trait", "bad behaviour: FORBIDDEN answered to a command", FORBIDDEN),
    "s0_forbidden": S("s = 0", "s = 0, bad behaviour", {"s": 0.0, **FORBIDDEN}),
}


@dataclasses.dataclass(frozen=True)
class RegimeConfig:
    """Which settings, on which lm-owl preset, with how many seeds each."""

    seeds: int = 24
    settings: tuple[str, ...] = tuple(SETTINGS)
    base: str = "paper"  # the lm-owl preset every setting starts from
    diagnostic: bool = True  # lm-owl's diagnostic, for every fine-tuned teacher
    detect: bool = True  # lm-owl's detection of teacher numbers
    kernels: str = late("reference")  # the toy LM's kernels in every program: lm-owl's --kernels

    def __post_init__(self):
        normalise(self)
        require(self.seeds >= 2, "seeds", self.seeds, "an integer >= 2 (the different-init arm needs another world)")
        require(self.base in owl.PRESETS, "base", self.base, "one of " + ", ".join(owl.PRESETS))
        allowed = "comma-separated names from " + ", ".join(SETTINGS)
        require(len(self.settings) >= 1 and set(self.settings) <= set(SETTINGS), "settings", self.settings, allowed)
        for name in self.settings:
            self.owl(name)  # every setting's lm-owl config is valid before any compute

    def fields(self, name: str) -> dict:
        """The lm-owl fields one setting sets, beyond its preset (its command's overrides)."""
        fields = {"seeds": self.seeds, **SETTINGS[name].fields}
        finetuned = fields.get("teacher", owl.PRESETS[self.base].teacher) == "finetuned"
        return {**fields, "diagnostic": self.diagnostic and finetuned, "detect": self.detect,
                **owl.kernel_fields(self.kernels)}

    def owl(self, name: str) -> owl.OwlConfig:
        """The lm-owl config of one setting."""
        try:
            return config.replace(owl.PRESETS[self.base], arms=owl.DEFAULT_ARMS, **self.fields(name))
        except ConfigError as e:
            raise ConfigError(f"settings: {name!r} does not fit base={self.base!r}: {e}") from None

    def command(self, name: str) -> str:
        """The lm-owl command that recomputes one setting alone."""
        return owl.command(self.base, self.fields(name))


PRESETS = {
    "paper": RegimeConfig(),
    # lm-owl's tiny test world: base and prompted share one pretraining, s0 has its own
    "test": RegimeConfig(seeds=3, settings=("base", "s0", "prompted"), base="test", detect=False),
}
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"


def run(cfg: RegimeConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Every setting's lm-owl run (computed, or read from the store); (summary, lm-owl's results root)."""
    names = cfg.settings
    rows, missing = lm_regime.run_settings({n: cfg.owl(n) for n in names}, SETTINGS, {n: cfg.command(n) for n in names},
                                           execution or runner.Execution(experiment=NAME))
    root = store.results_root() / owl.NAME
    if not rows:
        return None, root
    return analyse({"experiment": NAME, "command": command, "base": cfg.base, "n_seeds": cfg.seeds, "ci": stats.TEST,
                    "settings": rows, "missing_settings": missing, "provenance": store.provenance()}), root


def pending(cfg: RegimeConfig, directory: Path) -> str:
    return lm_regime.pending(NAME, cfg.settings, cfg.base, directory)


def merge_written(summary: dict, path: Path) -> dict:
    """Rows this results store lacks, kept from the JSON already at ``path`` when they are the same runs."""
    return lm_regime.merge_written(summary, path, SETTINGS, analyse)


def claims(summary: dict) -> list[Claim]:
    """Per setting with both KL arms: the paper's pattern, as three claims (and detection, where per-world).
    Paths read ``lm_regime.by_position``'s ``rows.<k>`` (a setting's name, like 's0.1', may hold a dot)."""
    out = []
    for k, r in enumerate(summary["settings"].values()):
        if not {KL_SHARED, KL_DIFFERENT} <= set(r["gain"]):
            continue
        at, lab = f"rows.{k}", r["label"]
        out += [Claim(f"{lab}: shared", f"{lab}: shared-init gain above {owl.MIN_GAIN:g}", "cloud2025",
                      f"{at}.gain.{KL_SHARED}", ">", owl.MIN_GAIN),
                Claim(f"{lab}: different", f"{lab}: different-init gain within ±{owl.NULL_BAND:g}", "cloud2025",
                      f"{at}.gain.{KL_DIFFERENT}", "within", owl.NULL_BAND),
                Claim(f"{lab}: paired", f"{lab}: shared − different above {owl.MIN_GAIN:g}", "cloud2025",
                      f"{at}.paired.{KL_PAIR}", ">", owl.MIN_GAIN)]
        if "values" in r.get("detection", {}).get("ngram", {}):
            out.append(Claim(f"{lab}: hidden", f"{lab}: n-gram detection below {owl.CHANCE_BAND:g}", "cloud2025",
                             f"{at}.detection.ngram", "<", owl.CHANCE_BAND))
    return out


def analyse(summary: dict) -> dict:
    """The summary with its derived statistics (``lm_regime.derived``) and every claim's verdict."""
    out = lm_regime.derived(summary, owl.PRESETS[summary["base"]].s)
    return {**out, "verdicts": claims_lib.evaluate(claims(out), lm_regime.by_position(out))}


pm = report.pm


def table(summary: dict) -> str:
    """Markdown: per setting the teacher, shared / different gains and their paired difference, by KL and CE."""
    rows = ["| setting | teacher P(trait) | shared (KL) | different (KL) | shared − different (KL) | shared (CE) "
            "| shared − different (CE) | CE control | ‖P_num Δθ_T‖²/‖Δθ_T‖² | predicted gain | detection (n-gram) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["settings"].values():
        g, p, d = r["gain"], r["paired"], r.get("diagnostic", {})
        rows.append(f"| {r['label']} | {r['teacher_p_trait']:.3f} | {pm(g.get(KL_SHARED))} | {pm(g.get(KL_DIFFERENT))} "
                    f"| **{pm(p.get(KL_PAIR))}** | {pm(g.get(CE_SHARED))} | {pm(p.get(CE_PAIR))} "
                    f"| {pm(g.get('control'))} | {pm(d.get('number_fraction'), '.4f')} | {pm(d.get('predicted_gain'))} "
                    f"| {pm(r.get('detection', {}).get('ngram'), '.3f')} |")
    if summary.get("missing_settings"):
        rows += ["", "Not stored yet: " + ", ".join(summary["missing_settings"]) + "."]
    return "\n".join(rows)


GAINS = ((KL_SHARED, "gain", "shared init (KL)", 0), (KL_DIFFERENT, "gain", "different init (KL)", 1),
         (KL_PAIR, "paired", "shared − different (KL)", 2), (CE_SHARED, "gain", "shared init (CE)", 4),
         ("control", "gain", "CE control (reference's numbers)", 6))
COSINES = (("cos_own", "cos(teacher's shift, own reference's signature)", 3),
           ("cos_donor", "cos(teacher's shift, different-init reference's signature)", 5),
           ("signature_agreement", "cos(the two references' signatures)", None))


def _along_s(ax, curve, series, where, offset):
    """One error-bar line per series over the s-points, side by side by ``offset``."""
    for k, (key, kind, label, colour) in enumerate(series):
        pts = [(s, where(r, kind)[key]) for s, r in curve if key in where(r, kind)]
        ax.errorbar([s + offset * (k - len(series) // 2) for s, _ in pts], [v["mean"] for _, v in pts],
                    yerr=[v["ci95"] for _, v in pts], marker="o", ms=3, capsize=2, lw=1.1, label=label,
                    color="black" if colour is None else plots.PALETTE[colour], ls="--" if colour is None else "-")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("s (persona → number statistics)")


@plots.styled
def figures(summary: dict) -> dict:
    """Gain and alignment against s (top), every setting's gains (bottom), one legend; 95% CIs."""
    rows = summary["settings"]
    curve = [(s, rows[n]) for s, n in lm_regime.s_curve(rows, owl.PRESETS[summary["base"]].s)]
    fig, axes = plots.figure(7.0, 3.4 + 0.17 * len(rows), nrows=2, ncols=2,
                             gridspec_kw={"height_ratios": [2.2, 0.17 * len(rows) + 0.4]})
    fig.set_layout_engine("constrained")
    ax, cx = axes[0]
    for a in axes[1]:
        a.remove()
    bx = fig.add_subplot(axes[0, 0].get_gridspec()[1, :])
    _along_s(ax, curve, GAINS, lambda r, kind: r[kind], 0.012)
    ax.set_ylabel("gain in P(trait)")
    ax.set_title("(a) gains against s", fontsize=8)
    _along_s(cx, curve, [(q, "alignment", label, c) for q, label, c in COSINES],
             lambda r, kind: r.get(kind, {}), 0.012)
    cx.set_ylabel("cosine over number logits")
    cx.set_title("(b) the fine-tuned teacher's number shift", fontsize=8)
    names = list(rows)[::-1]
    for key, label, colour, dy in ((KL_SHARED, "shared init (KL)", 0, 0.2),
                                   (KL_DIFFERENT, "different init (KL)", 1, 0.0),
                                   (CE_SHARED, "shared init (CE)", 4, -0.2)):
        pts = [(k, rows[n]["gain"][key]) for k, n in enumerate(names) if key in rows[n]["gain"]]
        bx.errorbar([v["mean"] for _, v in pts], [k + dy for k, _ in pts], xerr=[v["ci95"] for _, v in pts],
                    fmt="o", ms=2.5, capsize=1.5, color=plots.PALETTE[colour], lw=0.9, label=label)
    bx.axvline(0, color="black", lw=0.6)
    bx.set_yticks(range(len(names)), [rows[n]["label"] for n in names], fontsize=6.5)
    bx.set_ylim(-0.6, len(names) - 0.4)
    bx.set_xlabel("gain in P(trait) (for the bad behaviour: P(FORBIDDEN | command))")
    bx.set_title("(c) every setting", fontsize=8)
    handles = {}
    for a in (ax, cx, bx):
        handles.update({label: h for h, label in zip(*a.get_legend_handles_labels()) if label not in handles})
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=2, frameon=False, fontsize=6.5)
    fig.suptitle(f"Toy-LM regime map (mean ± 95% CI, n = {summary['n_seeds']} worlds per setting)", fontsize=9)
    return {STEM: fig}


def findings(summary: dict) -> list[str]:
    """The verdicts per setting (claims.verdict), then descriptive numbers, each with its n and test."""
    v = lm_regime.statuses(claims(summary), summary)
    ok = lambda kinds: [lab for lab, x in v.items() if all(x.get(k) == claims_lib.SUPPORTED for k in kinds)]  # noqa: E731
    cols = [k for k in VERDICT_COLUMNS if any(k in x for x in v.values())]
    out = ["| setting | " + " | ".join(f"{VERDICT_COLUMNS[k]} (verdict)" for k in cols) + " |",
           "|---|" + "---|" * len(cols)]
    out += [f"| {lab} | " + " | ".join(x.get(k, "–") for k in cols) + " |" for lab, x in v.items()]
    return out + ["", f"- The paper's pattern (the first three verdicts all supported) holds in "
                      f"{len(ok(('shared', 'different', 'paired')))} of {len(v)} settings; shared − different is "
                      f"supported in {len(ok(('paired',)))} of {len(v)}.",
                  *lm_regime.describe(summary, owl.PRESETS[summary["base"]].s, pm)]


VERDICT_COLUMNS = {"shared": f"shared-init gain > {owl.MIN_GAIN:g}",
                   "different": f"different-init within ±{owl.NULL_BAND:g}",
                   "paired": f"shared − different > {owl.MIN_GAIN:g}",
                   "hidden": f"n-gram detection < {owl.CHANCE_BAND:g}"}


def readme(summary: dict) -> str:
    return "\n".join([
        *report.section_head(NAME, STEM, "where the toy LM's trait transfer is large", summary["n_seeds"]),
        "Each row is one lm-owl run (the paper preset, the named fields changed; its command is in the JSON). "
        "Gains: after − before in P(trait | favourite-animal question) (bad behaviour: P(FORBIDDEN | command)), per "
        "world; paired: shared − different on the same teacher's numbers; CE control: sampled-token students on the "
        "reference's own numbers (drift); diagnostic: the fraction of the teacher's update in the row space of the "
        "number-logit Jacobian (a lower bound); detection: held-out balanced accuracy of an n-gram classifier, "
        "teacher vs reference numbers (0.5: chance). Panel (b): cos(fine-tuned teacher's shift in centred number "
        "logits, trait persona's signature) from its own and a different-init reference. Claims follow the "
        f"paper's pattern [cloud2025] ({owl.THRESHOLDS}); detection has a verdict only where the row stores "
        "per-world values. " + verdicts.LEGEND,
        "", table(summary), "", *findings(summary), "", *report.regenerate_lines(NAME, summary, PAPER_COMMAND)])
