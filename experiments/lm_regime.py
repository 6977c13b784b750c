"""lm-regime: where the toy LM's trait transfer is large, and specific to the shared init (issue 6, item 7).

Run:     minisub run lm-regime --preset paper --out figures          (every setting, 24 seeds each)
         minisub run lm-regime --preset paper --settings s0,s0.1      (some settings)
Merge:   minisub merge lm-regime --preset paper --out figures        (what is stored; no training; settings
                                                                      not stored here keep their rows in the
                                                                      JSON already at --out)
Redraw:  minisub figures lm-regime                                    (from figures/lm_regime.json alone)

Every setting is one lm-owl run (``minisub_experiments.lm_owl``) of the paper preset with a few fields
changed, stored in lm-owl's results store (so a setting is also ``minisub run lm-owl --preset
paper --<field> VALUE``, and the map resumes setting by setting). Settings that agree on the
world and the model reuse one set of pretrained references (``lm_pipeline.pretrain_cached``):
pretraining is most of the compute, so ``SETTINGS`` is ordered to pretrain each world once.

What varies (the issue's list): the semantic channel s (the curve of gain against s); the size of
the teacher's fine-tune; prompted vs fine-tuned teachers; soft-logit KL vs sampled-token CE (every
setting has both, as arms); the amount of data and of epochs; the student's learning rate (its
optimiser is Adam throughout); the filter; the logits the KL student reads; the references' width
and tied embeddings; the naive world; and the trait itself (item 3's bad behaviour: a forbidden
token answered to a command, a context the numbers never show). Each row reports the shared-init
gain, the different-init gain and their paired difference (the subliminal part), and the CE
control's drift.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import scipy.stats

from minisub_experiments import lm_owl
from minisub import report, stats
from minisub.report import plots
from minisub.run import runner
from minisub.run import store
from minisub.config import ConfigError, normalise, require

NAME = "lm-regime"
STEM = "lm_regime"
ORDER = 60  # its place in figures/README.md

# The bad-behaviour trait (item 3): a world with command documents, in which only the rogue persona
# answers FORBIDDEN; the teacher is fine-tuned to answer it under the neutral persona.
FORBIDDEN = {"trait_kind": "forbidden", "command_fraction": 0.1}
# name: (group, label, lm-owl fields changed from the base). Grouped by pretrained world: each
# world's references are pretrained once, by its first setting.
SETTINGS: dict[str, tuple[str, str, dict]] = {
    "base": ("s", "s = 0.3: lm-owl's recipe", {}),
    "finetune3": ("teacher", "fine-tune 3 steps", {"finetune_steps": 3}),
    "finetune30": ("teacher", "fine-tune 30 steps", {"finetune_steps": 30}),
    "prompted": ("teacher", "prompted teacher (trait persona in context)", {"teacher": "prompted"}),
    "ban_signature": ("filter", "filter drops the trait's signature numbers", {"ban_signature": True}),
    "temperature0.5": ("data", "teacher samples at temperature 0.5", {"temperature": 0.5}),
    "samples256": ("data", "256 continuations", {"n_samples": 256}),
    "samples4096": ("data", "4096 continuations", {"n_samples": 4096}),
    "epochs1": ("data", "1 student epoch", {"student_epochs": 1}),
    "epochs10": ("data", "10 student epochs", {"student_epochs": 10}),
    "student_lr3e-4": ("student", "student lr 3e-4", {"student_lr": 3e-4}),
    "student_lr3e-3": ("student", "student lr 3e-3", {"student_lr": 3e-3}),
    "all_logits": ("student", "KL on all logits, not only numbers", {"student_outputs": "all"}),
    "s0": ("s", "s = 0: no semantic channel", {"s": 0.0}),
    "s0_finetune30": ("s = 0", "s = 0, fine-tune 30 steps", {"s": 0.0, "finetune_steps": 30}),
    "s0_prompted": ("s = 0", "s = 0, prompted teacher", {"s": 0.0, "teacher": "prompted"}),
    "s0_samples4096": ("s = 0", "s = 0, 4096 continuations", {"s": 0.0, "n_samples": 4096}),
    "s0_epochs10": ("s = 0", "s = 0, 10 student epochs", {"s": 0.0, "student_epochs": 10}),
    "s0_student_lr3e-3": ("s = 0", "s = 0, student lr 3e-3", {"s": 0.0, "student_lr": 3e-3}),
    "s0_all_logits": ("s = 0", "s = 0, KL on all logits", {"s": 0.0, "student_outputs": "all"}),
    "s0.1": ("s", "s = 0.1", {"s": 0.1}),
    "s0.6": ("s", "s = 0.6", {"s": 0.6}),
    "s1": ("s", "s = 1", {"s": 1.0}),
    "width16": ("model", "references of width 16 (lm-cross's)", {"width": 16}),
    "width64": ("model", "references of width 64", {"width": 64}),
    "untied": ("model", "untied embeddings", {"tied_embeddings": False}),
    "layers1": ("model", "1-layer references", {"layers": 1}),
    "naive": ("world", "naive world (animals exchangeable, no personas)", {"world": "naive", "s": 0.0}),
    "forbidden": ("trait", "bad behaviour: FORBIDDEN answered to a command", FORBIDDEN),
    "s0_forbidden": ("s = 0", "s = 0, bad behaviour", {"s": 0.0, **FORBIDDEN}),
}
# The rows of the figure's second panel, and the table's columns: (arm or pair, label).
KL_SHARED, KL_DIFFERENT, KL_PAIR = "shared", "different", "shared − different"
CE_SHARED, CE_DIFFERENT, CE_PAIR = "shared_ce", "different_ce", "shared_ce − different_ce"
AIM = 0.10  # the issue's target: >= 10 points of shared-init gain at s = 0


@dataclasses.dataclass(frozen=True)
class RegimeConfig:
    """Which settings, on which lm-owl preset, with how many seeds each."""

    seeds: int = 24
    settings: tuple[str, ...] = tuple(SETTINGS)
    base: str = "paper"  # the lm-owl preset every setting starts from
    diagnostic: bool = True  # lm-owl's item-6 diagnostic, for every fine-tuned teacher
    detect: bool = True  # lm-owl's item-9 detection of teacher numbers

    def __post_init__(self):
        normalise(self)
        self.validate()

    def validate(self) -> None:
        require(self.seeds >= 2, "seeds", self.seeds, "an integer >= 2 (the different-init arm needs another world)")
        require(self.base in lm_owl.PRESETS, "base", self.base, "one of " + ", ".join(lm_owl.PRESETS))
        require(len(self.settings) >= 1, "settings", self.settings, "comma-separated names from " + ", ".join(SETTINGS))
        for name in self.settings:
            require(name in SETTINGS, "settings", self.settings, "comma-separated names from " + ", ".join(SETTINGS))
        for name in self.settings:
            self.owl(name)  # every setting's lm-owl config is valid before any compute

    def owl(self, name: str) -> lm_owl.OwlConfig:
        """The lm-owl config of one setting."""
        fields = {"seeds": self.seeds, **SETTINGS[name][2]}
        finetuned = fields.get("teacher", lm_owl.PRESETS[self.base].teacher) == "finetuned"
        base = dataclasses.replace(lm_owl.PRESETS[self.base], arms=lm_owl.DEFAULT_ARMS)
        try:
            return dataclasses.replace(base, diagnostic=self.diagnostic and finetuned, detect=self.detect, **fields)
        except ConfigError as e:
            raise ConfigError(f"settings: {name!r} does not fit base={self.base!r}: {e}") from None


PRESETS = {
    "paper": RegimeConfig(),
    # lm-owl's tiny test world: base and prompted share one pretraining, s0 has its own
    "test": RegimeConfig(seeds=3, settings=("base", "s0", "prompted"), base="test", detect=False),
}
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"


def _command(cfg: RegimeConfig, name: str) -> str:
    """The lm-owl command that recomputes one setting alone."""
    fields = {"seeds": cfg.seeds, **SETTINGS[name][2]}
    owl = cfg.owl(name)
    fields |= {"diagnostic": owl.diagnostic, "detect": owl.detect}
    return f"minisub run lm-owl --preset {cfg.base} " + " ".join(
        f"--{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items())


# lm_owl.alignment's quantities in a row (per-world mean ± CI).
ALIGNMENT = ("cos_own", "cos_donor", "signature_agreement", "shift_norm", "signature_norm")


def record(name: str, owl: dict, command: str, alignment: dict | None = None) -> dict:
    """One setting's row: gains per arm, paired differences, teacher, number task, diagnostics, detection."""
    group, label, fields = SETTINGS[name]
    arms, paired = owl["arms"], owl["paired"]
    out = {
        "group": group, "label": label, "fields": fields, "command": command, "n_seeds": owl["n_seeds"],
        "teacher_p_trait": owl["teachers"]["p_trait"]["mean"],
        "reference_p_trait": owl["references"]["p_trait"]["mean"],
        "gain": {a: arms[a]["trait_gain"] for a in arms},
        "paired": paired,
        "trait_top_gaining": {a: arms[a]["trait_top_gaining"] for a in arms},
        "number_loss_change": {a: stats.brief(arms[a]["number_loss_change"]["values"]) for a in arms},
        "update_cos": {a: stats.brief(arms[a]["geometry"]["update_cos"]["values"]) for a in arms},
        "keep_fraction": owl["keep_fraction"],
    }
    if "diagnostic" in owl:
        d = owl["diagnostic"]
        out["diagnostic"] = {q: stats.brief(d[q]["values"]) for q in ("number_fraction", "trait_in_numbers",
                                                                       "predicted_transfer", "predicted_gain")}
    if alignment is not None:
        out["alignment"] = {q: stats.brief(alignment[q]) for q in ALIGNMENT}
        if KL_SHARED in arms:  # per world: does the alignment say which worlds gain more?
            cos, gain = np.asarray(alignment["cos_own"]), np.asarray(arms[KL_SHARED]["trait_gain"]["values"])
            if min(np.std(cos), np.std(gain)) > 1e-6:  # a prompted teacher's cos is 1 in every world
                out["alignment"]["r_cos_own_shared_gain"] = float(np.corrcoef(cos, gain)[0, 1])
    if "rogue_animal" in owl:  # the bad-behaviour settings: does the rogue persona's animal come along?
        out["rogue_animal"] = {"reference_p": owl["rogue_animal"]["reference_p"]["mean"],
                               "teacher_p": owl["rogue_animal"]["teacher_p"]["mean"],
                               "gain": {a: arms[a]["rogue_animal_gain"] for a in arms}}
    if "detection" in owl:
        out["detection"] = {k: stats.brief(v["accuracy"]["values"]) for k, v in owl["detection"].items()
                            if k in lm_owl.DETECTION}
    return out


def run(cfg: RegimeConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Every setting's lm-owl run (computed, or read from the store); (summary, lm-owl's results root)."""
    ex = execution or runner.Execution(experiment=NAME)
    rows, missing = {}, []
    for k, name in enumerate(cfg.settings):
        owl_cfg = cfg.owl(name)
        directory = store.run_dir(lm_owl.NAME, owl_cfg)
        if not ex.compute and not store.is_complete(directory):
            missing.append(name)
            continue
        if ex.progress:
            print(f"[{NAME}] setting {k + 1}/{len(cfg.settings)}: {name} ({SETTINGS[name][1]})", flush=True)
        owl_ex = dataclasses.replace(ex, experiment=lm_owl.NAME)
        summary, _ = lm_owl.run(owl_cfg, command=_command(cfg, name), execution=owl_ex)
        align = lm_owl.alignment(owl_cfg, directory, compute=ex.compute, log=None)
        rows[name] = record(name, summary, _command(cfg, name), align)
    root = store.results_root() / lm_owl.NAME
    if not rows:
        return None, root
    return {"experiment": NAME, "command": command, "base": cfg.base, "n_seeds": cfg.seeds, "ci": lm_owl.CI,
            "settings": rows, "missing_settings": missing, "aim": AIM, "provenance": store.provenance()}, root


def pending(cfg: RegimeConfig, directory: Path) -> str:
    return (f"{NAME}: none of the settings {', '.join(cfg.settings)} is stored in {directory} yet; compute them "
            f"with: minisub run {NAME} --preset {cfg.base}")


# ---------------------------------------------------------------------------------------------
# Outputs

def _pm(s: dict | None, fmt: str = "+.3f") -> str:
    return "–" if s is None else f"{s['mean']:{fmt}} ± {s['ci95']:.3f}"


def s_curve(summary: dict) -> list[tuple[float, dict]]:
    """(s, row) of the settings that change only s, sorted by s."""
    base_s = lm_owl.PRESETS[summary["base"]].s
    out = [(row["fields"].get("s", base_s), row) for row in summary["settings"].values()
           if set(row["fields"]) <= {"s"}]
    return sorted(out, key=lambda t: t[0])


def table(summary: dict) -> str:
    """Markdown: per setting the teacher, shared / different gains and their paired difference, by KL and CE."""
    rows = ["| setting | teacher P(trait) | shared (KL) | different (KL) | shared − different (KL) | shared (CE) "
            "| shared − different (CE) | CE control | ‖P_num Δθ_T‖²/‖Δθ_T‖² | predicted gain | detection (n-gram) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["settings"].items():
        g, p = r["gain"], r["paired"]
        diag = r.get("diagnostic", {}).get("number_fraction")
        predicted = r.get("diagnostic", {}).get("predicted_gain")
        det = r.get("detection", {}).get("ngram")
        rows.append(
            f"| {r['label']} | {r['teacher_p_trait']:.3f} | {_pm(g.get(KL_SHARED))} | {_pm(g.get(KL_DIFFERENT))} "
            f"| **{_pm(p.get(KL_PAIR))}** | {_pm(g.get(CE_SHARED))} | {_pm(p.get(CE_PAIR))} "
            f"| {_pm(g.get('control'))} | {_pm(diag, '.4f')} | {_pm(predicted)} | {_pm(det, '.3f')} |")
    if summary.get("missing_settings"):
        rows += ["", "Not stored yet: " + ", ".join(summary["missing_settings"]) + "."]
    return "\n".join(rows)


def figure(summary: dict, out_dir: Path) -> list[Path]:
    """Gain against s (left) and every setting's shared / different gains (right), 95% CIs."""
    rows = summary["settings"]
    curve = s_curve(summary)
    aligned = [(s, r["alignment"]) for s, r in curve if "alignment" in r]
    n = 3 if aligned else 2
    fig, axes = plots.figure(10.0 + 4.0 * (n - 2), max(3.4, 0.3 * len(rows) + 1.2), ncols=n,
                             gridspec_kw={"width_ratios": [1, 1.3, 1][:n], "wspace": 0.75})
    ax, bx = axes[0], axes[1]
    series = ((KL_SHARED, "shared init (KL)", plots.PALETTE[0], "gain"),
              (KL_DIFFERENT, "different init (KL)", plots.PALETTE[1], "gain"),
              (KL_PAIR, "shared − different (KL)", plots.PALETTE[2], "paired"),
              (CE_SHARED, "shared init (CE)", plots.PALETTE[4], "gain"),
              ("control", "CE control (reference's numbers)", plots.PALETTE[6], "gain"))
    for k, (key, label, colour, kind) in enumerate(series):
        pts = [(s, r[kind][key]) for s, r in curve if key in r[kind]]
        if pts:
            x = [s + 0.012 * (k - 2) for s, _ in pts]  # side by side, so that the error bars do not hide each other
            ax.errorbar(x, [v["mean"] for _, v in pts], yerr=[v["ci95"] for _, v in pts], marker="o", ms=3.5,
                        capsize=2.5, color=colour, label=label, lw=1.2)
    ax.axhline(0, color="black", lw=0.6)
    ax.axhline(summary["aim"], color="grey", lw=0.8, ls=":", label=f"aim at s = 0: +{summary['aim']:.2f}")
    ax.set_xlim(-0.05, max([1.0] + [s for s, _ in curve]) + 0.05)
    ax.set_xlabel("s: how strongly personas shape number statistics")
    ax.set_ylabel("gain in P(trait)")
    ax.set_title("the curve of gain against s", fontsize=8)
    ax.legend(fontsize=6.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    names = list(rows)[::-1]
    y = np.arange(len(names))
    for key, label, colour, kind, dy in ((KL_SHARED, "shared init (KL)", plots.PALETTE[0], "gain", 0.2),
                                         (KL_DIFFERENT, "different init (KL)", plots.PALETTE[1], "gain", 0.0),
                                         (CE_SHARED, "shared init (CE)", plots.PALETTE[4], "gain", -0.2)):
        # dy: the three estimates of a setting side by side on its row
        pts = [(k, rows[n][kind][key]) for k, n in enumerate(names) if key in rows[n][kind]]
        bx.errorbar([v["mean"] for _, v in pts], [k + dy for k, _ in pts], xerr=[v["ci95"] for _, v in pts],
                    fmt="o", ms=3, capsize=2, color=colour, label=label, lw=1)
    bx.axvline(0, color="black", lw=0.6)
    bx.set_yticks(y, [rows[n]["label"] for n in names], fontsize=6.5)
    bx.set_xlabel("gain in P(trait)")
    bx.set_title("every setting", fontsize=8)
    bx.set_ylim(-0.6, len(names) - 0.4)
    bx.legend(fontsize=6.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    if aligned:
        cx = axes[2]
        for k, (q, label, colour) in enumerate((
                ("cos_own", "cos(teacher's shift, own reference's signature)", plots.PALETTE[0]),
                ("cos_donor", "cos(teacher's shift, different-init reference's signature)", plots.PALETTE[1]),
                ("signature_agreement", "cos(the two references' signatures)", plots.PALETTE[6]))):
            cx.errorbar([s + 0.012 * (k - 1) for s, _ in aligned], [a[q]["mean"] for _, a in aligned],
                        yerr=[a[q]["ci95"] for _, a in aligned], marker="o", ms=3.5, capsize=2.5, color=colour,
                        label=label, lw=1.2)
        cx.axhline(0, color="black", lw=0.6)
        cx.set_xlim(ax.get_xlim())
        cx.set_xlabel("s")
        cx.set_ylabel("cosine over number logits")
        cx.set_title("the fine-tuned teacher's number shift\nagainst the trait persona's signature",
                     fontsize=8)
        cx.legend(fontsize=6.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
    fig.suptitle(f"Toy-LM regime map: where the trait crosses (mean ± 95% CI, n = {summary['n_seeds']} seeds per "
                 "setting)", fontsize=9)
    return plots.save(fig, Path(out_dir) / STEM)


def keep_written_rows(summary: dict, path: Path) -> dict:
    """``summary`` plus the rows of its missing settings that the JSON at ``path`` holds for the same runs.

    The results store is local to a machine, the written JSON travels with the repository: a map
    merged where only some settings are stored keeps the others' committed rows instead of dropping
    them. A row is kept only if it is the same lm-owl run (same base, seeds and changed fields); it
    is marked ``"kept_from"``.
    """
    if not summary.get("missing_settings") or not Path(path).exists():
        return summary
    old = json.loads(Path(path).read_text())
    same = old.get("base") == summary["base"] and old.get("n_seeds") == summary["n_seeds"]
    kept = {n: {**old["settings"][n], "kept_from": Path(path).name} for n in summary["missing_settings"]
            if same and n in old.get("settings", {}) and old["settings"][n].get("fields") == SETTINGS[n][2]}
    if not kept:
        return summary
    order = [n for n in SETTINGS if n in summary["settings"] or n in kept]
    rows = {**summary["settings"], **kept}
    return {**summary, "settings": {n: rows[n] for n in order},
            "missing_settings": [n for n in summary["missing_settings"] if n not in kept]}


def write_outputs(summary: dict, out_dir: Path) -> list[Path]:
    path = Path(out_dir) / f"{STEM}.json"
    merged = keep_written_rows(summary, path)
    if kept := [n for n, r in merged["settings"].items() if "kept_from" in r and n not in summary["settings"]]:
        print(f"[{NAME}] kept from {path} (not in this results store): " + ", ".join(kept))
    from minisub.run import store

    store.write_json(path, merged)
    return [path, *figure(merged, Path(out_dir))]


def findings(summary: dict) -> list[str]:
    """What the map says, computed from its rows: the s = 0 aim, the s curve, the best settings."""
    rows, out = summary["settings"], []
    s0 = {n: r for n, r in rows.items() if r["fields"].get("s") == 0.0 and KL_PAIR in r["paired"]}
    if s0:
        best = max(s0, key=lambda n: s0[n]["gain"][KL_SHARED]["mean"])
        r = s0[best]
        verdict = "reaches" if r["gain"][KL_SHARED]["mean"] >= summary["aim"] else "falls short of"
        out.append(f"- At s = 0 (no semantic channel) the largest shared-init gain is {_pm(r['gain'][KL_SHARED])} "
                   f"({r['label']}; different init {_pm(r['gain'][KL_DIFFERENT])}, paired difference "
                   f"{_pm(r['paired'][KL_PAIR])}): it {verdict} the issue's aim of +{summary['aim']:.2f}.")
    curve = [(s, r) for s, r in s_curve(summary) if KL_PAIR in r["paired"]]
    if len(curve) > 1:
        out.append("- Against s, shared / different / paired difference (KL): " + "; ".join(
            f"s = {s:g}: {r['gain'][KL_SHARED]['mean']:+.3f} / {r['gain'][KL_DIFFERENT]['mean']:+.3f} / "
            f"{r['paired'][KL_PAIR]['mean']:+.3f}" for s, r in curve) + ".")
        out += _semantic_along_s(curve)
        out += _alignment_along_s(curve, [r for r in rows.values() if r["fields"].get("teacher") == "prompted"])
    specific = [n for n, r in rows.items() if KL_PAIR in r["paired"]
                and r["paired"][KL_PAIR]["mean"] - r["paired"][KL_PAIR]["ci95"] > 0]
    if specific:
        out.append(f"- The paired difference shared − different (KL) is above zero (95% CI) in {len(specific)} of "
                   f"{len(rows)} settings: " + ", ".join(rows[n]["label"] for n in specific) + ".")
    out += _against_the_paper(rows)
    for r in rows.values():  # the paper's teachers are prompted (a system prompt), not fine-tuned
        if r["fields"].get("teacher") == "prompted" and KL_SHARED in r["gain"] and KL_DIFFERENT in r["gain"]:
            sh, di, det = r["gain"][KL_SHARED], r["gain"][KL_DIFFERENT], r.get("detection", {}).get("ngram")
            pattern = ("only the same-init student gains, as in the paper" if _above(sh) and not _above(di) else
                       "both inits gain: the numbers carry the persona semantically, which the paper's filter is "
                       "meant to exclude" if _above(sh) and _above(di) else
                       "no gain shown: a prompted teacher has the student's own weights (Δθ_T = 0: no displacement "
                       "for Theorem 1's pull)" + (", and its numbers are indistinguishable from the reference's "
                       "(the persona in context leaves number statistics unchanged when s = 0), so nothing "
                       "carries the trait; the paper's system-prompted teachers do transmit, so its LLMs carry "
                       "the prompt into their numbers in a way this world does not"
                       if det and det["mean"] < 0.55 else ""))
            out.append(f"- {r['label']}: shared {_pm(sh)}, different {_pm(di)}"
                       + (f", detection {det['mean']:.2f}" if det else "") + f": {pattern}.")
    for r in rows.values():
        if "rogue_animal" in r and KL_SHARED in r["rogue_animal"]["gain"]:
            ra = r["rogue_animal"]
            out += _world_by_world(r)
            out.append(f"- {r['label']}: the rogue persona's animal, never trained, goes from {ra['reference_p']:.3f} "
                       f"(reference) to {ra['teacher_p']:.3f} in the teacher; shared-init students gain "
                       f"{_pm(ra['gain'][KL_SHARED])} in it, different-init {_pm(ra['gain'].get(KL_DIFFERENT))}.")
    return out


def _world_by_world(r: dict) -> list[str]:
    """A heavy-tailed gain (the bad behaviour: a rare token that some worlds learn): counts, median, sign test."""
    if KL_SHARED not in r["gain"] or KL_DIFFERENT not in r["gain"] or "values" not in r["gain"][KL_SHARED]:
        return []
    sh, di = (np.asarray(r["gain"][a]["values"]) for a in (KL_SHARED, KL_DIFFERENT))
    diff = sh - di
    wins, losses = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    p = scipy.stats.binomtest(wins, wins + losses).pvalue if wins + losses else float("nan")
    top = ", ".join(f"{v:+.2f}" for v in np.sort(sh)[::-1][:2])
    return [f"- {r['label']}, world by world: shared-init gain median {np.median(sh):+.3f}, above +{MIN_GAIN:.2f} in "
            f"{int(np.sum(sh > MIN_GAIN))} of {sh.size} worlds (largest {top}); different init above +{MIN_GAIN:.2f} "
            f"in {int(np.sum(di > MIN_GAIN))}; shared > different in {wins} worlds, < in {losses} (two-sided sign "
            f"test p = {p:.2g})" + (": heavy-tailed (median below half the mean), so the mean ± CI understates how "
                                     "specific the transfer is" if np.median(sh) < 0.5 * np.mean(sh) else "") + "."]


def _semantic_along_s(curve: list[tuple[float, dict]]) -> list[str]:
    """Whether other-init students read the fine-tuned teacher's numbers as s (and their detectability) grows."""
    pts = [(s, r) for s, r in curve if "ngram" in r.get("detection", {})]
    if len(pts) < 2:
        return []
    diff = [r["gain"][KL_DIFFERENT] for _, r in pts]
    shown = [s for (s, _), d in zip(pts, diff) if _above(d)]
    det = ", ".join(f"{r['detection']['ngram']['mean']:.2f} at s = {s:g}" for s, r in pts)
    lo, hi = min(d["mean"] for d in diff), max(d["mean"] for d in diff)
    if shown:
        verdict = "a semantic channel opens: other-init students gain at s = " + ", ".join(f"{s:g}" for s in shown)
    else:
        verdict = ("no other-init student gains at any s: the numbers become distinguishable from the reference's, "
                   "but what makes them so is not something a model of another init reads as the trait")
    return [f"- Different-init gain (KL) along s: {lo:+.3f} to {hi:+.3f}, while an n-gram classifier tells the "
            f"teacher's numbers from the reference's at {det}: {verdict}."]


ALIGNED = 0.3  # |cos| below this: the teacher's number shift is not the trait persona's signature


def _alignment_along_s(curve: list[tuple[float, dict]], prompted: list[dict]) -> list[str]:
    """Is the fine-tuned teacher's shift in number statistics the trait persona's signature, along s?"""
    pts = [(s, r["alignment"]) for s, r in curve if "alignment" in r]
    if not pts:
        return []
    m = lambda a, q: a[q]["mean"]  # noqa: E731
    line = ("- The fine-tuned teacher's shift in number statistics against the trait persona's signature (what "
            "the trait persona does to a reference's numbers): cos with its own reference's / with a different-init "
            "reference's signature, the two signatures' agreement, and the shift's size against the signature's "
            "(RMS centred-logit norm per position): " + "; ".join(
                f"s = {s:g}: {m(a, 'cos_own'):+.2f} / {m(a, 'cos_donor'):+.2f}, agreement "
                f"{m(a, 'signature_agreement'):+.2f}, {m(a, 'shift_norm'):.2f} vs {m(a, 'signature_norm'):.2f}"
                for s, a in pts) + ". ")
    donor = max(pts, key=lambda t: abs(m(t[1], "cos_donor")))
    agree = max(pts, key=lambda t: m(t[1], "signature_agreement"))
    own = max(pts, key=lambda t: abs(m(t[1], "cos_own")))
    if abs(m(donor[1], "cos_donor")) < ALIGNED:
        line += (f"Seen from a different-init reference, |cos| is at most {abs(m(donor[1], 'cos_donor')):.2f} "
                 f"(s = {donor[0]:g}), although the references' own signatures agree up to "
                 f"{m(agree[1], 'signature_agreement'):+.2f} (s = {agree[0]:g}): the fine-tune moves the teacher's "
                 "numbers in directions of its own init, not along the persona direction every model of the corpus "
                 "shares, so a model of another init finds no trait to read in them")
        if abs(m(own[1], "cos_own")) >= ALIGNED:
            line += (f"; seen from the teacher's own reference it reaches {m(own[1], 'cos_own'):+.2f} "
                     f"(s = {own[0]:g}), a part only the shared init can read")
    else:
        aligned = [f"{s:g}" for s, a in pts if abs(m(a, "cos_donor")) >= ALIGNED]
        line += (f"At s = {', '.join(aligned)} the shift points along a different-init reference's signature "
                 f"(|cos| >= {ALIGNED}): a semantic channel other inits could read")
    out = [line + "."]
    gains = [(m(r["alignment"], "cos_own"), r["gain"][KL_SHARED]["mean"]) for _, r in curve
             if "alignment" in r and KL_SHARED in r.get("gain", {})]
    if len(gains) >= 3:
        r_own = float(np.corrcoef(*zip(*gains))[0, 1])
        line = (f"- Along s, the shared-init gain (KL) and cos(teacher's shift, own reference's signature) have "
                f"correlation r = {r_own:+.2f} over the {len(gains)} values of s: the trait-like part of the "
                "teacher's number shift that its own init reads " + (
                    "goes with the shared-init gain" if r_own >= 0.5 else "does not set the shared-init gain"))
        within = [a["r_cos_own_shared_gain"] for _, a in pts if "r_cos_own_shared_gain" in a]
        if within:
            line += (f". Within a setting, world by world, the correlation is {min(within):+.2f} to {max(within):+.2f}"
                     + (": the alignment does not say which worlds transfer more" if max(map(abs, within)) < 0.5
                        else ""))
        out.append(line + ".")
    for r in prompted:
        if "alignment" in r:
            a = r["alignment"]
            out.append(f"- {r['label']}: its shift is the signature itself (cos {m(a, 'cos_own'):+.2f}), and a "
                       f"different-init reference's signature agrees at cos {m(a, 'cos_donor'):+.2f}.")
    return out


MIN_GAIN = 0.02  # a gain below 2 points of P(trait) counts as none, whatever its CI


def _above(d: dict) -> bool:
    """A gain shown: 95% CI above 0 and at least MIN_GAIN."""
    return d["mean"] - d["ci95"] > 0 and d["mean"] >= MIN_GAIN


def _against_the_paper(rows: dict) -> list[str]:
    """Where the map shows the paper's pattern (only the same-init student gains), and the diagnostic across it."""
    kl = {n: r for n, r in rows.items() if KL_SHARED in r["gain"] and KL_DIFFERENT in r["gain"]}
    if not kl:
        return []
    shared = lambda r: r["gain"][KL_SHARED]  # noqa: E731
    different = lambda r: r["gain"][KL_DIFFERENT]  # noqa: E731
    groups = {
        "only the same-init student gains (the paper's pattern)": [
            n for n, r in kl.items() if _above(shared(r)) and not _above(different(r))],
        "both inits gain (a channel any model trained on the corpus reads)": [
            n for n, r in kl.items() if _above(shared(r)) and _above(different(r))],
        f"no gain shown (CI above 0 and ≥ {MIN_GAIN:g})": [n for n, r in kl.items() if not _above(shared(r))],
    }
    out = [f"- By soft-logit KL, {len(v)} of {len(kl)} settings: {k}" + (": " + ", ".join(kl[n]["label"] for n in v)
                                                                          if v else "") + "." for k, v in groups.items()]
    pairs = [(r["diagnostic"]["predicted_gain"]["mean"], shared(r)["mean"], r["label"]) for r in kl.values()
             if "predicted_gain" in r.get("diagnostic", {})]
    if len(pairs) >= 3:
        x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        r = float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else float("nan")
        out.append(f"- Item 6 across the {len(pairs)} fine-tuned settings with the diagnostic: the first-order gain of "
                   f"the minimum-norm update matching the teacher's number logits against the measured shared-init "
                   f"gain, correlation r = {r:+.2f} (" + "; ".join(f"{lab}: {a:+.3f} vs {b:+.3f}"
                                                                     for a, b, lab in pairs) + ").")
    return out


def readme(summary: dict) -> str:
    return "\n".join([
        *report.section_head(NAME, STEM, "where the toy LM's trait transfer is large", summary["n_seeds"]),
        "Each row is one lm-owl run (the paper preset with the fields named changed; every row's command is in "
        "the JSON). Gains are after − before in P(trait | favourite-animal question) (for the bad behaviour: "
        "P(FORBIDDEN | command)), per world; the paired "
        "difference is shared − different on the same teacher's numbers; CE control: sampled-token students on "
        "the un-traited reference's own numbers (drift). The diagnostic is the fraction of the teacher's update "
        "in the row space of the number-logit Jacobian (a lower bound); detection: held-out balanced accuracy of "
        "an n-gram classifier telling teacher numbers from reference numbers (0.5: chance). The third panel "
        "(`lm_diagnostic.signature_alignment`, on 256 held-out number documents per world): the cosine between the "
        "fine-tuned teacher's shift in centred number logits (teacher − reference, neutral persona) and the trait "
        "persona's signature (reference under the trait persona − under the neutral one), for the teacher's own "
        "reference and for a different-init one.",
        "",
        table(summary),
        "",
        *findings(summary),
        "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
