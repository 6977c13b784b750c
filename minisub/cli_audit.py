"""``minisub audit``: was this student trained on this teacher's outputs? Scores from stored weights.

    minisub audit --base RUN/params/seed_000000.npz:teacher/init \\
                  --teacher RUN/params/seed_000000.npz:teacher/final \\
                  --student RUN/params/seed_000000.npz:students/student_aux/final \\
                  --null OTHER/params/seed_000000.npz:students/student_aux/final ...

Each argument is ``FILE[:TREE]``: a params file (``minisub run ... --keep-params`` writes one per
seed, ``minisub.run.params``) and the name of one tree in it (``teacher/init``, ``teacher/final``,
``students/<arm>/init|final``); TREE may be left out when the file holds one tree. ``--null``
(repeatable): control students of the same base trained on other teachers' outputs (or on the
base's own); each score's p-value is (1 + #{controls at least as teacher-like}) / (1 + n).
``--teacher-base``: the teacher's init when it is not the base. Bad input is one line naming the flag.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minisub.config import ConfigError

ROWS = (("update_cos", "cos(θ_S − θ_base, θ_T − θ_Tbase)"), ("update_projection", "⟨Δθ_S, Δθ_T⟩ / ‖Δθ_T‖²"),
        ("distance_ratio", "‖θ_S − θ_T‖ / ‖θ_base − θ_T‖ (lower: more teacher-like)"))


def add(sub) -> None:
    """The ``audit`` subcommand on ``minisub``'s subparsers."""
    a = sub.add_parser("audit", help="score whether a student was trained on a teacher's outputs, from stored weights",
                       description="Was this student trained on this teacher's outputs? Scores from stored weights. "
                       "FILE[:TREE]: a params file (minisub run ... --keep-params writes one per seed) and a tree "
                       "in it (teacher/init, teacher/final, students/<arm>/final); p-values against --null "
                       "control students.", allow_abbrev=False)
    for flag, text in (("--base", "the base the student started from (e.g. the teacher's init)"),
                       ("--teacher", "the suspected teacher"), ("--student", "the student audited")):
        a.add_argument(flag, required=True, metavar="FILE[:TREE]", help=text)
    a.add_argument("--teacher-base", metavar="FILE[:TREE]", help="the teacher's init (default: --base)")
    a.add_argument("--null", action="append", default=[], metavar="FILE[:TREE]",
                   help="a control student (same base, another teacher or the base's own outputs); repeatable")
    a.add_argument("--permutation-aware", action="store_true",
                   help="align the student's hidden units to the base first (weight matching; MLP only)")
    a.add_argument("--json", action="store_true", help="print the full record as JSON")
    a.set_defaults(fn=run)


def tree_names(entries: dict) -> list[str]:
    """The trees of a params file as ``--keep-params`` names them: each name ends at its first component
    ``init`` or ``final`` (``teacher/init``, ``students/<arm>/final``); '' for a tree saved at the root."""
    out = set()
    for key in entries:
        parts = key.split("/")
        ends = [k for k, part in enumerate(parts[:-1]) if part in ("init", "final")]
        out.add("/".join(parts[: ends[0] + 1]) if ends else "")
    return sorted(out)


def read(spec: str, flag: str) -> dict:
    """The tree ``FILE[:TREE]`` names, as ``{path: array}``; ConfigError naming ``flag`` otherwise."""
    from minisub.run import params

    file, sep, name = spec.rpartition(":")
    if not sep or not file:
        file, name = spec, None
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"{flag}={spec!r} is not allowed: {flag} must name an existing params file "
                          f"(no file {path})")
    try:
        entries = params.read(path)
    except params.ParamsMismatch as e:
        raise ConfigError(f"{flag}={spec!r} is not allowed: {e}") from None
    trees = tree_names(entries)
    if name is None and len(trees) != 1:
        raise ConfigError(f"{flag}={spec!r} is not allowed: {path} holds {len(trees)} trees, name one as "
                          f"FILE:TREE ({', '.join(trees)})")
    chosen = params.select(entries, trees[0] if name is None else name)
    if not chosen:
        raise ConfigError(f"{flag}={spec!r} is not allowed: {path} has no tree {name!r}; it holds "
                          f"{', '.join(t or '(root)' for t in trees)}")
    return chosen


def load(args) -> dict:
    """Every tree the flags name, checked against the teacher's structure and shapes (one line per error)."""
    from minisub import audit

    trees = {"--teacher": read(args.teacher, "--teacher"), "--base": read(args.base, "--base"),
             "--student": read(args.student, "--student")}
    if args.teacher_base:
        trees["--teacher-base"] = read(args.teacher_base, "--teacher-base")
    trees["--null"] = [read(spec, "--null") for spec in args.null]
    teacher = audit.flat(trees["--teacher"])
    if args.permutation_aware:
        audit.require_matching(teacher, "--permutation-aware")
    for flag, tree in trees.items():
        for k, t in enumerate(tree if flag == "--null" else [tree]):
            audit.check_like(teacher, audit.flat(t), flag if flag != "--null" else f"--null[{k}]", "--teacher")
    return trees


def table(record: dict) -> str:
    """Score, the controls' mean and max, the p-value with its n."""
    rows = ["| score | student | controls (mean, max) | p-value | n controls |", "|---|---|---|---|---|"]
    for key, what in ROWS:
        t = record["tests"][key]
        null = "no --null" if not t["n_null"] else f"{t['null_mean']:.4f}, {t['null_max']:.4f}"
        p = f"{t['p_value']:.3g} (≥ {t['min_p']:.3g})" if t["n_null"] else "n/a"
        rows.append(f"| {key}: {what} | {t['score']:.4f} | {null} | {p} | {t['n_null']} |")
    layers = {k: v for k, v in record["scores"]["update_cos"].items() if k != "total"}
    rows += ["", "update_cos by layer: " + ", ".join(f"{k} {v:+.4f}" for k, v in layers.items()),
             f"travel ‖θ_S − θ_base‖ {record['scores']['travel']['total']:.4f}, "
             f"teacher travel ‖θ_T − θ_Tbase‖ {record['scores']['teacher_travel']['total']:.4f}"]
    return "\n".join(rows)


def run(args: argparse.Namespace, extra) -> int:
    from minisub import audit

    trees = load(args)
    record = audit.audit(trees["--base"], trees["--teacher"], trees["--student"], controls=trees["--null"],
                         teacher_base=trees.get("--teacher-base"), permutation_aware=args.permutation_aware)
    print(json.dumps(record, indent=1) if args.json else table(record))
    return 0
