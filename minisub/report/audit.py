"""The audit's text: which evasions stop an audit, and where each family does; every sentence from the rows."""

from __future__ import annotations

from minisub import report


def evasions_that_keep_transfer(summary: dict, auc: float = 0.9, gain: float = 0.02) -> list[str]:
    """The rows whose transfer interval lies above ``gain`` while an auditor's AUC is below ``auc``: the
    evasions that stop an audit but not the trait (the finding the issue asks to put first), else a line saying none."""
    out = []
    for row, r in summary["rows"].items():
        t = summary["transfer"][row]
        failed = [a for a in ("informed", "realistic") if r[a]["auc"] < auc]
        if failed and t["mean"] - t["ci95"] > gain:
            out.append(f"- **{summary['labels'][row]} stops the " + " and the ".join(failed) + f" audit (AUC "
                       + ", ".join(f"{r[a]['auc']:.3f}" for a in failed) + f" < {auc:g}) but not the transfer** "
                       f"(accuracy gain {report.pm(t)}, interval above {gain:g}).")
    for r in summary.get("lm", {}).values():  # the toy LM (informed auditor; transfer: gain in P(trait))
        t = r["transfer"]
        if r["auc"] < auc and t["mean"] - t["ci95"] > gain:
            out.append(f"- **Toy LM, {r['label']}: stops the informed audit (AUC {r['auc']:.3f} < {auc:g}) but not the "
                       f"transfer** (gain in P(trait) {report.pm(t)}, interval above {gain:g}).")
    head = (f"**Evasions that stop an audit but not the transfer** (an auditor's AUC below {auc:g} while the "
            f"transfer's 95% interval lies above {gain:g}):")
    return [head, *out] if out else [f"{head} none."]


def failure_points(summary: dict, auc: float = 0.9) -> list[str]:
    """Per evasion family (MNIST: the row id's prefix; toy LM: the label without its last value), the points where
    an auditor's AUC falls below ``auc``, each with the transfer left there, or that it holds at every point tried."""
    fams: dict[str, list] = {}
    for row, r in summary["rows"].items():
        if row != "shared":
            fams.setdefault(row.split("_")[0], []).append((summary["labels"][row], r, summary["transfer"][row],
                                                           ("informed", "realistic"), "accuracy gain"))
    for r in (r for key, r in summary.get("lm", {}).items() if "baselines" not in key):  # shared: no evasion
        fams.setdefault("toy LM, " + r["label"].rsplit(": ", 1)[0], []).append(
            (r["label"], {"informed": r}, r["transfer"], ("informed",), "gain in P(trait)"))
    out = [f"**Where each evasion stops an audit** (AUC below {auc:g}; the transfer left there):"]
    for fam, points in fams.items():
        fails = [f"{label} (" + ", ".join(f"{a} AUC {r[a]['auc']:.3f}" for a in bad) + f"; {unit} {report.pm(t)})"
                 for label, r, t, auditors, unit in points if (bad := [a for a in auditors if r[a]["auc"] < auc])]
        low = min((r[a]["auc"], a, label) for label, r, _, auditors, _ in points for a in auditors)
        out.append(f"- {fam} ({len(points)} point{'s' * (len(points) > 1)}): " + (
            "fails at " + "; ".join(fails) if fails else
            f"holds at every point tried (lowest AUC {low[0]:.3f}, {low[1]}, at {low[2]})") + ".")
    return out
