"""A regime map of the toy LM: many lm-owl runs (settings), one row each, and what the rows say together.

Every setting is one ``minisub.lm.owl`` run, stored in lm-owl's results store (so a setting is also
``minisub run lm-owl --<field> VALUE ...``, and the map resumes setting by setting). Settings that
agree on the world and the model reuse one set of pretrained references
(``lm_pipeline.pretrain_cached``): pretraining is most of the compute, so a map ordered by world
pretrains each world once. ``derived`` computes every statistic the map's text states from the
rows alone (per-world values where the row holds them), so it applies to a committed JSON.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from scipy import stats as sps

from minisub import claims, stats
from minisub.lm import owl
from minisub.run import store

KL_SHARED, KL_DIFFERENT, KL_PAIR = "shared", "different", "shared − different"
CE_SHARED, CE_DIFFERENT, CE_PAIR = "shared_ce", "different_ce", "shared_ce − different_ce"
# owl.alignment's quantities in a row (per-world mean ± CI).
ALIGNMENT = ("cos_own", "cos_donor", "signature_agreement", "shift_norm", "signature_norm")
DIAGNOSTIC = ("number_fraction", "trait_in_numbers", "predicted_transfer", "predicted_gain")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of a map: its group, label and the lm-owl fields it changes."""

    group: str
    label: str
    fields: dict


def record(setting: Setting, run: dict, command: str, alignment: dict | None = None) -> dict:
    """One setting's row: gains per arm, paired differences, teacher, number task, diagnostics, detection."""
    arms = run["arms"]
    out = {
        "group": setting.group, "label": setting.label, "fields": setting.fields, "command": command,
        "n_seeds": run["n_seeds"],
        "teacher_p_trait": run["teachers"]["p_trait"]["mean"],
        "reference_p_trait": run["references"]["p_trait"]["mean"],
        "gain": {a: arms[a]["trait_gain"] for a in arms},
        "paired": run["paired"],
        "trait_top_gaining": {a: arms[a]["trait_top_gaining"] for a in arms},
        "number_loss_change": {a: stats.brief(arms[a]["number_loss_change"]["values"]) for a in arms},
        # per world: the audit (minisub.run.audit.lm_rows) reads students against same-base controls
        "update_cos": {a: stats.mean_ci(arms[a]["geometry"]["update_cos"]["values"]) for a in arms},
        "keep_fraction": run["keep_fraction"],
    }
    if "diagnostic" in run:
        out["diagnostic"] = {q: stats.mean_ci(run["diagnostic"][q]["values"]) for q in DIAGNOSTIC}
    if alignment is not None:
        out["alignment"] = {q: stats.mean_ci(alignment[q]) for q in ALIGNMENT}
        if KL_SHARED in arms:  # per world: does the alignment say which worlds gain more?
            cos, gain = np.asarray(alignment["cos_own"]), np.asarray(arms[KL_SHARED]["trait_gain"]["values"])
            if min(np.std(cos), np.std(gain)) > 1e-6:  # a prompted teacher's cos is 1 in every world
                out["alignment"]["r_cos_own_shared_gain"] = float(np.corrcoef(cos, gain)[0, 1])
    if "rogue_animal" in run:  # the bad-behaviour settings: does the rogue persona's animal come along?
        out["rogue_animal"] = {"reference_p": run["rogue_animal"]["reference_p"]["mean"],
                               "teacher_p": run["rogue_animal"]["teacher_p"]["mean"],
                               "gain": {a: arms[a]["rogue_animal_gain"] for a in arms}}
    if "detection" in run:
        out["detection"] = {k: stats.mean_ci(v["accuracy"]["values"]) for k, v in run["detection"].items()
                            if k in owl.DETECTION}
    return out


def run_settings(configs: dict, settings: dict, commands: dict, execution, analyse=lambda s: s):
    """Every setting's lm-owl run (computed, or read from the store): (rows by name, names not stored).

    ``configs``/``settings``/``commands``: by setting name, its ``OwlConfig``, ``Setting`` and the
    lm-owl command that recomputes it alone. With ``execution.compute`` off, settings whose run is
    not complete in the store are listed as missing, never computed.
    """
    rows, missing = {}, []
    for k, (name, cfg) in enumerate(configs.items()):
        directory = store.run_dir(owl.NAME, cfg)
        if not execution.compute and not store.is_complete(directory):
            missing.append(name)
            continue
        if execution.progress:
            print(f"[lm-regime] setting {k + 1}/{len(configs)}: {name} ({settings[name].label})", flush=True)
        ex = dataclasses.replace(execution, experiment=owl.NAME)
        summary, _ = owl.run(cfg, command=commands[name], execution=ex, analyse=analyse)
        align = owl.alignment(cfg, directory, compute=execution.compute, log=None)
        rows[name] = record(settings[name], summary, commands[name], align)
    return rows, missing


def pending(name: str, settings, base: str, directory: Path) -> str:
    """A settings map's message when none of its lm-owl runs is stored yet (lm-regime, lm-prompted)."""
    return (f"{name}: none of the settings {', '.join(settings)} is stored in {directory} yet; compute them "
            f"with: minisub run {name} --preset {base}")


def merge_written(summary: dict, path: Path, settings: dict, analyse) -> dict:
    """``keep_written_rows`` (printing which rows were kept), then ``analyse`` again when any was kept."""
    merged = keep_written_rows(summary, path, settings, log=print)
    return analyse(merged) if merged is not summary else summary


def keep_written_rows(summary: dict, path: Path, settings: dict, log=None) -> dict:
    """``summary`` plus the rows of its missing settings that the JSON at ``path`` holds for the same runs.

    The results store is local to a machine, the written JSON travels with the repository: a map
    merged where only some settings are stored keeps the others' committed rows instead of dropping
    them. A row is kept only if it is the same lm-owl run (same base, seeds and changed fields); it
    is marked ``"kept_from"``. ``settings``: every known setting (name -> ``Setting``), in map order;
    ``log``: told which rows were kept.
    """
    if not summary.get("missing_settings") or not Path(path).exists():
        return summary
    old = json.loads(Path(path).read_text())
    same = old.get("base") == summary["base"] and old.get("n_seeds") == summary["n_seeds"]
    kept = {n: {**old["settings"][n], "kept_from": Path(path).name} for n in summary["missing_settings"]
            if same and n in old.get("settings", {}) and old["settings"][n].get("fields") == settings[n].fields}
    if not kept:
        return summary
    if log:
        log(f"[lm-regime] kept from {path} (not in this results store): " + ", ".join(kept))
    order = [n for n in settings if n in summary["settings"] or n in kept]
    rows = {**summary["settings"], **kept}
    return {**summary, "settings": {n: rows[n] for n in order},
            "missing_settings": [n for n in summary["missing_settings"] if n not in kept]}


def s_curve(rows: dict, base_s: float) -> list[tuple[float, str]]:
    """(s, name) of the settings that change only s (the base is at ``base_s``), sorted by s."""
    return sorted(((row["fields"].get("s", base_s), name) for name, row in rows.items()
                   if set(row["fields"]) <= {"s"}), key=lambda t: t[0])


def distribution(values) -> dict:
    """``stats.distribution`` above ``owl.MIN_GAIN``, without repeating the per-world values."""
    out = stats.distribution(values, owl.MIN_GAIN)
    out.pop("values")
    return out


def _distributions(row: dict) -> dict:
    """Median, counts above ``owl.MIN_GAIN`` and sign test of the KL arms' gains and their paired difference."""
    out = {a: distribution(row["gain"][a]["values"]) for a in (KL_SHARED, KL_DIFFERENT)
           if "values" in row["gain"].get(a, {})}
    if "values" in row["paired"].get(KL_PAIR, {}):
        out[KL_PAIR] = distribution(row["paired"][KL_PAIR]["values"])
    return out


def derived(summary: dict, base_s: float) -> dict:
    """``summary`` plus ``derived``: every statistic the map's text states, from the rows alone.

    Per setting, the gains' distributions; along s (settings changing only s), the Pearson
    correlation of the shared-init gain with cos(teacher's shift, own signature) over the s-points'
    means; within each setting, the stored per-world r with its test (n = the row's seeds); across
    fine-tuned settings, the correlation of the diagnostic's predicted gain with the measured gain.
    """
    rows = summary["settings"]
    out = {"distributions": {n: _distributions(r) for n, r in rows.items()}}
    curve = [(s, rows[n]) for s, n in s_curve(rows, base_s)]
    pts = [(r["alignment"]["cos_own"]["mean"], r["gain"][KL_SHARED]["mean"]) for _, r in curve
           if "alignment" in r and KL_SHARED in r["gain"]]
    if len(pts) >= 3:
        out["alignment_vs_gain_along_s"] = {**stats.correlation(*zip(*pts)), "points": "settings changing only s"}
    out["alignment_vs_gain_within"] = {
        n: stats.correlation_from_r(r["alignment"]["r_cos_own_shared_gain"], r["n_seeds"]) for n, r in rows.items()
        if "r_cos_own_shared_gain" in r.get("alignment", {})}
    pred = [(r["diagnostic"]["predicted_gain"]["mean"], r["gain"][KL_SHARED]["mean"]) for r in rows.values()
            if "predicted_gain" in r.get("diagnostic", {}) and KL_SHARED in r["gain"]]
    if len(pred) >= 3:
        out["predicted_vs_measured"] = stats.correlation(*zip(*pred))
    return {**summary, "derived": out}


def by_position(summary: dict) -> dict:
    """The summary with its rows also as a list (``rows.<k>``): a claim's path cannot name a setting like 's0.1'."""
    return {**summary, "rows": list(summary["settings"].values())}


def statuses(claim_list, summary: dict) -> dict:
    """{label: {kind: status}} of claims with ids ``'<label>: <kind>'`` (``claims.verdict`` on ``by_position``)."""
    out, view = {}, by_position(summary)
    for c in claim_list:
        label, kind = c.id.rsplit(": ", 1)
        out.setdefault(label, {})[kind] = claims.verdict(c, view).status
    return out


def _r(c: dict) -> str:
    if c["r"] is None:
        return f"r undefined (n = {c['n']})"
    ci = "no interval (n < 4)" if c["low"] is None else f"95% CI [{c['low']:+.2f}, {c['high']:+.2f}]"
    return f"r = {c['r']:+.2f} (n = {c['n']}, Student-t p = {c['p']:.2g}, {ci})"


def _along_s(curve: list) -> list[str]:
    """The s-curve's means and the alignment's, as numbers (no verdict)."""
    out = []
    if len(curve) > 1 and all(KL_PAIR in r["paired"] for _, r in curve):
        out.append("- Against s, shared / different / paired difference (KL), means over worlds: " + "; ".join(
            f"s = {s:g}: {r['gain'][KL_SHARED]['mean']:+.3f} / {r['gain'][KL_DIFFERENT]['mean']:+.3f} / "
            f"{r['paired'][KL_PAIR]['mean']:+.3f}" for s, r in curve) + ".")
    m = lambda a, q: a[q]["mean"]  # noqa: E731
    if pts := [(s, r["alignment"]) for s, r in curve if "alignment" in r]:
        out.append("- The fine-tuned teacher's shift in number statistics against the trait persona's signature: "
                   "cos with its own reference's / a different-init reference's signature, the two signatures' "
                   "agreement, and the shift's size against the signature's (RMS centred-logit norm per position), "
                   "means over worlds: " + "; ".join(
                       f"s = {s:g}: {m(a, 'cos_own'):+.2f} / {m(a, 'cos_donor'):+.2f}, agreement "
                       f"{m(a, 'signature_agreement'):+.2f}, {m(a, 'shift_norm'):.2f} vs {m(a, 'signature_norm'):.2f}"
                       for s, a in pts) + ".")
    return out


def _heavy_tail(row: dict, dist: dict, pm) -> str:
    """A gain that some worlds show and most do not: median, counts and sign test beside the mean."""
    sh, di, pair, ra = dist[KL_SHARED], dist.get(KL_DIFFERENT), dist.get(KL_PAIR), row["rogue_animal"]
    return (f"- {row['label']}, world by world: shared-init gain mean {pm(sh)}, median {sh['median']:+.3f}, above "
            f"+{sh['above']:g} in {sh['n_above']} of {sh['n']} worlds" + (f" (different init: {di['n_above']})" if di
                                                                         else "")
            + (f"; shared − different positive in {pair['n_positive']}, negative in {pair['n_negative']} (exact sign "
               f"test p = {pair['sign_test_p']:.2g})" if pair else "")
            + f". The rogue persona's animal, never trained: {ra['reference_p']:.3f} (reference) → "
            f"{ra['teacher_p']:.3f} (teacher); students gain {pm(ra['gain'].get(KL_SHARED))} (shared), "
            f"{pm(ra['gain'].get(KL_DIFFERENT))} (different).")


def describe(summary: dict, base_s: float, pm) -> list[str]:
    """README lines that state ``derived``'s numbers with their n and test, asserting nothing beyond them.

    ``pm``: the project's mean ± CI text (``minisub.report.pm``; the library's models do not import the report).
    """
    rows, d = summary["settings"], summary.get("derived", {})
    out = _along_s([(s, rows[n]) for s, n in s_curve(rows, base_s)])
    if "alignment_vs_gain_along_s" in d:
        out.append(f"- Along s, the shared-init gain against cos(shift, own signature), over the s-points' means: "
                   f"{_r(d['alignment_vs_gain_along_s'])}; a correlation of so few points is reported, not claimed.")
    if within := {k: c for k, c in d.get("alignment_vs_gain_within", {}).items() if c["p"] is not None}:
        out.append(f"- The same correlation world by world within a setting: r from "
                   f"{min(c['r'] for c in within.values()):+.2f} to {max(c['r'] for c in within.values()):+.2f} "
                   f"over {len(within)} settings (n = {min(c['n'] for c in within.values())} worlds each; "
                   f"Student-t p < 0.05 in {sum(c['p'] < 0.05 for c in within.values())} of them).")
    if "predicted_vs_measured" in d:
        out.append(f"- Across the {d['predicted_vs_measured']['n']} settings with the diagnostic, the first-order "
                   f"gain of the minimum-norm update matching the teacher's number logits against the measured "
                   f"shared-init gain (means): {_r(d['predicted_vs_measured'])}.")
    for name, r in rows.items():
        if "rogue_animal" in r and d.get("distributions", {}).get(name, {}).get(KL_SHARED):
            out.append(_heavy_tail(r, d["distributions"][name], pm))
    return out
