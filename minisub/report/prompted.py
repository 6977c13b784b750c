"""lm-prompted's text and entanglement panel: every sentence follows a verdict or a stored number."""

from __future__ import annotations

from minisub import claims
from minisub.report import plots

SUPPORTED, REFUTED = claims.SUPPORTED, claims.REFUTED


def _answer(status: str, yes: str, no: str) -> str:
    if status == claims.MISSING:
        return "is not measured (not computed)"
    return yes if status == SUPPORTED else no if status == REFUTED else f"is undecided ({status})"


def conclusions(status: dict, teachers) -> list[str]:
    """Does the toy reproduce the prompted-teacher result, and what carries each teacher's transfer?
    Read off the verdicts of ``experiments/lm_prompted.py``'s claims (their ids), nothing else."""
    parts, reached = [], []
    for kind, key in (("KL students", "prompted"), ("CE students on sampled tokens", "prompted_ce")):
        # the numbers are the prompted teacher's either way: one detection claim for both kinds of student
        paper = [status.get(f"{key}: paired", claims.MISSING), status.get(f"{key}: different", claims.MISSING),
                 status.get("prompted: hidden", claims.MISSING)]
        if all(s == SUPPORTED for s in paper):
            reached.append(kind)
        elif paper[0] == REFUTED:
            parts.append(f"{kind}: no, shared − different is below the aim (its interval lies wholly under it)")
        elif paper[0] != claims.MISSING:
            parts.append(f"{kind}: not decided (" + ", ".join(f"{k} {s}" for k, s in
                                                           zip(("paired", "different", "hidden"), paper)) + ")")
    if reached:
        verdict = ("yes, with " + " and ".join(reached) + ": shared − different is above the aim, the different-init "
                   "gain stays near 0, the numbers pass a classifier")
    else:
        verdict = "; ".join(parts) if parts else "not measured"
    out = [f"**Does the toy reproduce the paper's prompted-teacher result at s = 0?** {verdict}."]
    for t in teachers:
        s = lambda k: status.get(f"{t}: {k}", claims.MISSING)  # noqa: E731
        if s("shared") == claims.MISSING:
            out.append(f"- {t} teacher: not in this summary (its settings are not computed yet).")
        elif s("shared") != SUPPORTED:
            out.append(f"- {t} teacher: no shared-init transfer to explain (shared gain {s('shared')}).")
        else:
            out.append(f"- {t} teacher, what carries it: dropping the 10 most entangled numbers "
                       + _answer(s("ban loses"), "loses transfer", "does not lose transfer") + "; shuffling across "
                       "responses " + _answer(s("across"), "loses transfer", "keeps it") + "; shuffling within "
                       "responses " + _answer(s("within"), "loses transfer", "keeps it") + " (KL students: the "
                       "teacher's logits are read again on the shuffled numbers).")
        c = lambda k: status.get(f"{t}_ce: {k}", claims.MISSING)  # noqa: E731
        if c("shared") == claims.MISSING:
            out.append("  - with CE students on the sampled tokens (the paper's recipe): not computed.")
        elif c("shared") != SUPPORTED:
            out.append(f"  - with CE students on the sampled tokens (the paper's recipe): no shared-init transfer to "
                       f"shuffle (shared gain {c('shared')}).")
        else:
            out.append("  - with CE students on the sampled tokens (the paper's recipe): shuffling across responses "
                       + _answer(c("across"), "loses transfer", "keeps it") + "; shuffling within responses "
                       + _answer(c("within"), "loses transfer", "keeps it") + "; a within-shuffled student "
                       + _answer(c("within vs across"), "keeps more than an across-shuffled one",
                                 "does not keep more than an across-shuffled one") + ".")
    return out


def size_line(summary: dict) -> list[str]:
    """How much less the prompted teacher moves its numbers than the fine-tuned one (medians; [] without both)."""
    kl = {t: summary["settings"][t]["measures"]["kl"] for t in ("prompted", "finetuned")
          if "measures" in summary["settings"].get(t, {})}
    if len(kl) < 2 or kl["prompted"]["median"] <= 0:
        return []
    return [f"- The prompted teacher shifts its number distribution "
            f"{kl['finetuned']['median'] / kl['prompted']['median']:.0f}× less than the fine-tuned one (median KL "
            f"per token {kl['prompted']['median']:.2e} against {kl['finetuned']['median']:.2e}; n = "
            f"{kl['prompted']['n']} and {kl['finetuned']['n']} worlds)."]


def descriptive(summary: dict) -> list[str]:
    """The teachers' number KL (mean and median: skewed), the cross-world shift cosine, the correlations."""
    out = size_line(summary)
    for r in summary["settings"].values():
        m = r.get("measures")
        if not m:
            continue
        k, cw = m["kl"], m["cross_world"]["cosine"]
        out.append(f"- {r['label']}: teacher's number KL per token mean {k['mean']:.2e}, median {k['median']:.2e} "
                   f"(n = {k['n']} worlds); cross-world cosine of the teachers' number shifts {cw['mean']:+.3f} "
                   f"(mean of {cw['n']} ordered pairs).")
        for label, c in m["correlations"].items():
            r_txt = "undefined (a constant)" if c["r"] is None else f"r = {c['r']:+.2f}" + (
                f" (95% CI {c['low']:+.2f} to {c['high']:+.2f}, p = {c['p']:.2g})" if c["low"] is not None else "")
            out.append(f"  - per world, {label}: {r_txt}, n = {c['n']}.")
    return out


def entanglement_panel(ax, rows: dict) -> None:
    """(d) the prompted setting's entanglement: subliminal prompting and overlaps, with chance."""
    m = rows.get("prompted", {}).get("measures")
    if not m:
        ax.set_axis_off()
        return
    items = [("ΔP(trait), persona's\nnumbers in context", m["subliminal"]["prompt"]["difference"]["trait"]),
             ("ΔP(trait), bump's\nnumbers in context", m["subliminal"]["bump"]["difference"]["trait"]),
             ("Jaccard\npersona ~ bump", m["prompt_bump"]["jaccard"]["all_animals"]),
             ("Jaccard\nacross inits", m["cross_init"]["jaccard"]["all_animals"])]
    ax.bar(range(len(items)), [v["mean"] for _, v in items], yerr=[v["ci95"] for _, v in items], capsize=2,
           color=plots.PALETTE[4], alpha=0.85)
    ax.axhline(m["chance_jaccard"], color="grey", ls="--", lw=0.8, label=f"chance Jaccard ({m['chance_jaccard']:.3f})")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(items)), [lab for lab, _ in items], fontsize=5.5, rotation=15)
    ax.set_title(f"(d) entanglement in the references (top {m['top_k']}; {m['prompt_numbers']} numbers in context)",
                 fontsize=8)
    ax.legend(fontsize=6, frameon=False)


