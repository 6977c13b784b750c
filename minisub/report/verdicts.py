"""Claims and their verdicts as a README table: what was claimed, by whom, what we measured, the verdict.

Formatting only: the verdicts are ``summary['verdicts']`` (``minisub.claims.evaluate``, stored in
the summary JSON); the "ours" cell states the numbers the claim reads, with n.
"""

from __future__ import annotations

from typing import Callable

from minisub import claims as claims_lib
from minisub import stats
from minisub.report import pm

LEGEND = (f"Verdicts (`minisub.claims`, {stats.TEST}): supported / refuted when the interval lies on one side of "
          "the threshold, inconclusive when it contains it, confounded when it is decisive but the two arms' task "
          "losses differ by more than the claim's factor (×2 unless stated), not measured when a number is missing.")
_WHERE = {">": "> {t:g}", "<": "< {t:g}", "within": "within ±{t:g}"}


def ours(claim: claims_lib.Claim, summary: dict, label: Callable[[str], str], status: str) -> str:
    """The means the claim reads (mean ± 95% CI), named by ``label(path)``; 'not measured' when its verdict is."""
    if status == claims_lib.MISSING:
        return "not measured"
    get = lambda p: claims_lib.lookup(summary, p)  # noqa: E731
    if isinstance(claim.metric, tuple):
        return ", ".join(f"{label(p)}: {get(p)['mean']:.3f}" for p in claim.metric)
    cell = f"{label(claim.metric)} {pm(get(claim.metric), '.3f')}"
    if claim.baseline:
        cell += f" vs {label(claim.baseline)} {pm(get(claim.baseline), '.3f')}"
    if claim.task_loss:
        a, b = (get(p)["mean"] for p in claim.task_loss)
        cell += f"; task loss {a:.2e} vs {b:.2e}"
    return cell


def cell(v: dict, paired: bool = True) -> str:
    """The verdict cell: the status, the interval that decided it (paired difference, or mean), the detail."""
    out = f"**{v['status']}**"
    if v["mean"] is not None and v["low"] is not None:
        where, f = _WHERE[v["compare"]].format(t=v["threshold"]), "+.3f" if paired else ".3f"
        out += (f": {'difference ' if paired else 'mean '}{v['mean']:{f}}, 95% CI [{v['low']:{f}}, {v['high']:{f}}], "
                f"n = {v['n']} ({where})")
    return out + (f"; {v['detail']}" if v["detail"] else "")


def table(claims, summary: dict, label: Callable[[str], str] = lambda p: p.split(".")[-1]) -> list[str]:
    """One row per claim, in order, from the verdicts stored in the summary."""
    stored = {v["id"]: v for v in summary["verdicts"]}
    rows = ["| claim | source | ours (mean ± 95% CI) | verdict |", "|---|---|---|---|"]
    for c in claims:
        v = stored[c.id]
        measured = ours(c, summary, label, v["status"])
        rows.append(f"| {c.text} | {c.source} | {measured} | {cell(v, c.baseline is not None)} |")
    return rows
