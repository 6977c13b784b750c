"""The toy LM's 'fast' kernels against the reference: does a whole lm-owl run reach the same conclusions?

    minisub run lm-owl --preset paper --kernels fast --sampler cache --out figures/speed/fast
    python experiments/lm_kernels_check.py --table figures/lm_owl.json figures/speed/fast/lm_owl.json   # the README's table
    python experiments/lm_kernels_check.py --table figures/lm_owl.json figures/speed/rerun/lm_owl.json --labels committed rerun

'fast' kernels (``LMConfig.kernels``) and the key/value-cache sampler compute the same functions as
the reference program up to the last bits; over 2000 pretraining steps those bits grow into other
references, so a fast run is a second measurement of the same 24 worlds (the same seeds, data and
initialisations), not a copy of the stored one. Each number is compared per world: the paired
Student-t interval of fast − reference (``stats.paired``, n = worlds), and whether the fast mean
lies inside the reference's own 95% interval ("the numbers move within their CIs"; two independent
measurements of one mean miss that about 1 time in 6, so the paired interval is the test). Every
claim's verdict is listed for both runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minisub import stats

ARMS = ("shared", "different", "shared_ce", "different_ce", "control", "shuffle")
DIAGNOSTIC = ("number_fraction", "predicted_transfer", "number_residual", "overlap_cos", "trait_in_numbers")


def metrics(summary: dict) -> dict[str, dict]:
    """``{label: {'mean', 'ci95', 'n', 'values'}}`` of every per-world number the check compares."""
    out = {f"trait gain, {a}": summary["arms"][a]["trait_gain"] for a in ARMS if a in summary["arms"]}
    out.update({f"paired: {k}": v for k, v in summary["paired"].items()})
    out.update({f"number loss change, {a}": summary["arms"][a]["number_loss_change"]
                for a in ("shared", "different") if a in summary["arms"]})
    out.update({f"diagnostic: {k}": summary["diagnostic"][k] for k in DIAGNOSTIC if k in summary.get("diagnostic", {})})
    out.update({f"detection: {k} accuracy": summary["detection"][k]["accuracy"]
                for k in ("ngram", "transformer") if k in summary.get("detection", {})})
    return out


def compare(reference: dict, fast: dict) -> list[dict]:
    """One row per number both summaries hold: both means, the paired difference, inside the reference's CI."""
    ref, new = metrics(reference), metrics(fast)
    rows = []
    for label in (k for k in ref if k in new):
        a, b = ref[label], new[label]
        d = stats.paired(b["values"], a["values"])
        low, high = stats.interval(a)
        rows.append({"label": label, "reference": a, "fast": b, "difference": d,
                     "inside": bool(low <= b["mean"] <= high), "paired_contains_0": bool(abs(d["mean"]) <= d["ci95"])})
    return rows


def verdicts(reference: dict, fast: dict) -> list[tuple[str, str, str]]:
    """(claim, reference verdict, fast verdict) for every claim either summary evaluates."""
    a = {v["id"]: v["status"] for v in reference["verdicts"]}
    b = {v["id"]: v["status"] for v in fast["verdicts"]}
    return [(k, a.get(k, "—"), b.get(k, "—")) for k in dict.fromkeys([*a, *b])]


def _ci(s: dict) -> str:
    return f"{s['mean']:+.4f} ± {s['ci95']:.4f}"


def table(reference: dict, fast: dict, labels: tuple[str, str] = ("reference", "fast")) -> str:
    """The README's block: every number, then every verdict, then the generated reading."""
    rows = compare(reference, fast)
    n = rows[0]["difference"]["n"] if rows else 0
    a, b = labels
    lines = [f"| number (per world, n = {n}) | {a} | {b} | {b} − {a} (paired) | {b} mean inside the 95% CI of {a} |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {_ci(r['reference'])} | {_ci(r['fast'])} | {_ci(r['difference'])} | "
                     f"{'yes' if r['inside'] else '**no**'} |")
    lines += ["", f"| claim | {a} | {b} |", "|---|---|---|"]
    lines += [f"| {c} | {x} | {y}{'' if x == y else ' (**differs**)'} |" for c, x, y in verdicts(reference, fast)]
    return "\n".join(lines + ["", *reading(reference, fast, labels)])


def reading(reference: dict, fast: dict, labels: tuple[str, str] = ("reference", "fast")) -> list[str]:
    """What the numbers say, sentence by sentence from ``compare`` and ``verdicts``."""
    a, b = labels
    rows, vs = compare(reference, fast), verdicts(reference, fast)
    outside = [r["label"] for r in rows if not r["inside"]]
    shifted = [r["label"] for r in rows if not r["paired_contains_0"]]
    differ = [f"{c} ({x} → {y})" for c, x, y in vs if x != y]
    return [
        f"- {len(rows) - len(shifted)} of {len(rows)} paired 95% intervals of {b} − {a} contain 0"
        + (f"; not: {', '.join(shifted)}" if shifted else "")
        + f" (each interval excludes 0 by chance 1 time in 20: about {0.05 * len(rows):.1f} of {len(rows)}).",
        f"- {len(rows) - len(outside)} of {len(rows)} {b} means lie inside the 95% interval of {a}"
        + (f"; outside: {', '.join(outside)}." if outside else "."),
        f"- {len(vs) - len(differ)} of {len(vs)} claims reach the same verdict"
        + (f"; different: {', '.join(differ)}." if differ else "."),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", nargs=2, metavar=("REFERENCE.json", "FAST.json"), required=True,
                   help="two lm-owl summaries of the same worlds: print the README's comparison block")
    p.add_argument("--labels", nargs=2, default=("reference", "fast"), help="the two runs' names in the table")
    args = p.parse_args(argv)
    reference, fast = (json.loads(Path(f).read_text()) for f in args.table)
    print(table(reference, fast, tuple(args.labels)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
