"""Auditing a student from its weights: was it trained on this teacher's outputs?

Given a *base* (the init the student started from, or a public reference model), a suspected
*teacher* (trained from ``teacher_base``, by default the same base) and a *student*, all as
parameters, ``scores`` measures how far the student's update points along the teacher's:

* ``update_cos``: cos(θ_S − θ_base, θ_T − θ_Tbase), in total and per layer. 1: the student moved
  exactly along the teacher's update; 0: orthogonally (or not at all); < 0: against it.
* ``update_projection``: ⟨θ_S − θ_base, θ_T − θ_Tbase⟩ / ‖θ_T − θ_Tbase‖²: how much of the teacher's
  update the student travelled (c for a student at base + c·Δθ_T).
* ``distance_ratio``: ‖θ_S − θ_T‖ / ‖θ_base − θ_T‖: where the student ended relative to where it
  started, as distances to the teacher (< 1: it came closer; 1: no closer, e.g. it never moved).
* ``travel`` ‖θ_S − θ_base‖ and ``teacher_travel`` ‖θ_T − θ_Tbase‖, for reading the others.

For the MLP, ``update_cos`` and the norms are ``minisub.mlp.measure.geometry``'s (there, of a whole
population inside the jitted programs; here, of any pytree on the host, in float64; ``score_matrix``
gives every (teacher, student) pair of a population at once). A *layer* is a leaf's
path without its own name (``lineage.layer_of``: ``hidden.0``, ``blocks.1.attn.qkv``), so the same
functions serve the MLP, the toy transformer and any other pytree. Parameters may be any pytree
(``nnx.State``, nested dicts) or a flat ``{path: array}`` mapping as ``minisub.run.params`` stores
them (``hidden.0/kernel``); ``flat`` reads all of them as ``{dotted path: array}``.

A bare score is not a verdict: ``calibrated`` turns it into a one-sided p-value against the same
score of *control* students (same base, trained on other teachers' outputs or on the base's own),
``audit`` does both from parameters. Error rates of a score over labelled populations:
``roc_auc`` (Mann–Whitney), ``placements`` (its per-positive terms, for an interval over worlds),
``tpr_at_fpr`` and ``roc_curve``. ``which_teacher`` picks among candidate teachers of one base;
``which_teacher_accuracy`` is its exact accuracy over every candidate set of size k.

Permutation-aware scoring (``permutation_aware=True``): a student whose base is a relabelled copy
of the public base (hidden units reordered: the same function, other coordinates) is first aligned
to it by weight matching (``minisub.mlp.permutation``), for the MLP; other models are refused.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from minisub import lineage, tree
from minisub.config import ConfigError, require

SCORES = ("update_cos", "update_projection", "distance_ratio")  # the scores a p-value can be asked for
LARGER_IS_TEACHER = {"update_cos": True, "update_projection": True, "distance_ratio": False}
THRESHOLD_RULE = ("flag score > τ, where τ is the (⌊fpr·n_neg⌋ + 1)-th largest negative score (a tie at τ is "
                  "not flagged); with fewer than 1/fpr negatives that is the largest negative")


# --- parameters ------------------------------------------------------------------------------------
def flat(params) -> dict[str, np.ndarray]:
    """``{dotted path: array}`` of any pytree or of a ``minisub.run.params`` mapping (``'hidden.0/kernel'``)."""
    return {path.replace("/", "."): np.asarray(leaf) for path, leaf in lineage.leaf_paths(params)}


def check_like(reference: dict, other: dict, name: str, reference_name: str) -> None:
    """ConfigError (one line naming ``name``) unless ``other`` has ``reference``'s paths and shapes."""
    missing, extra = sorted(set(reference) - set(other)), sorted(set(other) - set(reference))
    require(not missing and not extra, name, f"<{len(other)} leaves>",
            f"parameters of the same network as {reference_name} (missing {missing[:3]}, unexpected {extra[:3]})")
    for path, value in reference.items():
        shape = tuple(np.shape(other[path]))
        require(shape == tuple(np.shape(value)), name, f"{path} of shape {list(shape)}",
                f"{reference_name}'s shape {list(np.shape(value))} at {path}")


def layers(params: dict) -> dict[str, list[str]]:
    """``{layer: [paths]}`` of a ``flat`` mapping, in path order."""
    out: dict[str, list[str]] = {}
    for path in sorted(params):
        out.setdefault(lineage.layer_of(path), []).append(path)
    return out


# --- permutation-aware alignment ----------------------------------------------------------------------
def _mlp_nested(params: dict, name: str) -> dict:
    """A ``flat`` MLP as the nested dict weight matching reads; ConfigError for any other network."""
    names = layers(params)
    depth = sum(1 for layer in names if layer.startswith("hidden."))
    expected = {f"hidden.{i}" for i in range(depth)} | {"head"}
    is_mlp = set(names) == expected and all(set(p.rpartition(".")[2] for p in ps) == {"kernel", "bias"}
                                            for ps in names.values())
    require(is_mlp and depth >= 1, name, f"a network with layers {sorted(names)[:4]}",
            "an MLP (layers hidden.N and head, each a kernel and a bias) for permutation-aware scoring: weight "
            "matching (minisub.mlp.permutation) exists for the MLP only; a model with permute() but no matching, "
            "such as the toy transformer, cannot be aligned yet")
    nested: dict = {"hidden": {}, "head": {}}
    for path, value in params.items():
        layer, _, leaf = path.rpartition(".")
        (nested["head"] if layer == "head" else nested["hidden"].setdefault(layer.split(".")[1], {}))[leaf] = value
    return nested


def require_matching(params, name: str) -> None:
    """ConfigError naming ``name`` unless weight matching applies to ``params`` (an MLP's layers)."""
    _mlp_nested(flat(params), name)


def align(reference, other, *more, seed: int = 0) -> tuple[dict, ...]:
    """``other`` (and each of ``more``) with the MLP's hidden units permuted to match ``reference``.

    One permutation, found by weight matching ``other`` to ``reference``, is applied to ``other``
    and to every tree of ``more`` (e.g. a student found from its known base). Returns ``flat`` mappings.
    """
    from minisub.mlp import permutation

    ref, oth = flat(reference), flat(other)
    check_like(ref, oth, "other", "the reference")
    perms = permutation.weight_matching(_mlp_nested(ref, "reference"), _mlp_nested(oth, "other"), seed=seed)
    out = []
    for k, params in enumerate((oth, *(flat(m) for m in more))):
        check_like(ref, params, f"more[{k - 1}]" if k else "other", "the reference")
        out.append(flat(permutation.permute_hidden(_mlp_nested(params, "other"), perms)))
    return tuple(out)


# --- scores -------------------------------------------------------------------------------------------
def _stack(trees: Sequence[dict], paths: list[str]) -> np.ndarray:
    """``[n, P]`` float64: each tree's leaves at ``paths``, raveled and concatenated."""
    return np.stack([np.concatenate([np.asarray(t[p], np.float64).ravel() for p in paths]) for t in trees])


def _ratio(num, den, floor: float = 1e-30):
    """num / den elementwise; 0 where both vanish (no update), NaN where only the denominator does."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > floor, num / np.where(den > floor, den, 1.0), np.where(np.abs(num) <= floor, 0.0, np.nan))


def _matrix(b: dict, tb: dict, teachers: list[dict], students: list[dict], paths: list[str]) -> dict[str, np.ndarray]:
    """Every score of every (teacher, student) pair on the leaves ``paths``: ``{score: [T, S]}``.

    Differences are taken from the base before any product (float64), so nothing cancels.
    """
    base = _stack([b], paths)
    d_s = _stack(students, paths) - base  # θ_S − θ_base
    u = _stack(teachers, paths) - base  # θ_T − θ_base: the start's distance to the teacher
    d_t = u - (_stack([tb], paths) - base)  # θ_T − θ_Tbase: the teacher's update
    ss, tt, uu = (np.sum(x * x, axis=1) for x in (d_s, d_t, u))
    st, su = d_t @ d_s.T, u @ d_s.T
    end = np.maximum(uu[:, None] + ss[None, :] - 2 * su, 0.0)  # ‖θ_S − θ_T‖²
    return {"update_cos": _ratio(st, np.sqrt(tt[:, None] * ss[None, :])),
            "update_projection": _ratio(st, np.broadcast_to(tt[:, None], st.shape)),
            "distance_ratio": _ratio(np.sqrt(end), np.broadcast_to(np.sqrt(uu)[:, None], st.shape)),
            "travel": np.broadcast_to(np.sqrt(ss)[None, :], st.shape).copy(),
            "teacher_travel": np.broadcast_to(np.sqrt(tt)[:, None], st.shape).copy()}


def _prepared(base, teachers, students, teacher_base, permutation_aware: bool, seed: int):
    """``flat`` trees checked against the first teacher, students aligned when asked (see ``scores``)."""
    b, ts, ss = flat(base), [flat(t) for t in teachers], [flat(s) for s in students]
    require(len(ts) >= 1 and len(ss) >= 1, "teachers/students", (len(ts), len(ss)), "at least one of each")
    tb = b if teacher_base is None else flat(teacher_base)
    named = [("base", b), ("teacher_base", tb), *((f"teachers[{k}]", t) for k, t in enumerate(ts)),
             *((f"students[{k}]" if len(ss) > 1 else "student", s) for k, s in enumerate(ss))]
    for name, params in named:
        check_like(ts[0], params, name, "the teacher")
    if permutation_aware:
        require_matching(ts[0], "permutation_aware")
    if permutation_aware and teacher_base is None:
        ss = [align(b, s, seed=seed)[0] for s in ss]
    elif permutation_aware:
        b, *ss = align(tb, b, *ss, seed=seed)
    return b, tb, ts, ss


def score_matrix(base, teachers: Sequence, students: Sequence, *, teacher_base=None, permutation_aware: bool = False,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """``{score: [n_teachers, n_students] array}`` of the totals of ``scores`` for every pair, at once.

    All teachers share ``teacher_base`` (default ``base``); all students share ``base``. With
    ``permutation_aware`` and no ``teacher_base`` each student is aligned to ``base`` on its own.
    """
    b, tb, ts, ss = _prepared(base, teachers, students, teacher_base, permutation_aware, seed)
    return _matrix(b, tb, ts, ss, sorted(ts[0]))


def scores(base, teacher, student, *, teacher_base=None, permutation_aware: bool = False, seed: int = 0) -> dict:
    """The student's scores against the teacher (module docstring): ``{score: {'total', layer: value}}``.

    ``base``: what the student started from, as far as the auditor knows (a public base, or the
    student's own init); ``teacher_base``: the teacher's init (default ``base``). With
    ``permutation_aware``, the student is first aligned by weight matching (MLP only): to ``base``;
    or, when ``teacher_base`` is given, ``base`` is matched to ``teacher_base`` and that permutation
    moves both ``base`` and the student. A zero update gives cos 0; an undefined ratio is NaN.
    """
    b, tb, (t,), (s,) = _prepared(base, [teacher], [student], teacher_base, permutation_aware, seed)
    parts = {"total": sorted(t), **layers(t)}
    by_part = {k: _matrix(b, tb, [t], [s], paths) for k, paths in parts.items()}
    return {q: {k: float(m[q][0, 0]) for k, m in by_part.items()} for q in by_part["total"]}


def function_scores(apply: Callable, base, teacher, student, inputs, *, teacher_base=None) -> dict:
    """Function space on inputs the auditor chooses: ``apply(params, inputs)`` -> outputs (e.g. logits).

    ``function_cos``: cos(f_S − f_base, f_T − f_Tbase) over every output on ``inputs``;
    ``function_distance_ratio``: ‖f_S − f_T‖ / ‖f_base − f_T‖. Parameters are passed to ``apply``
    as given (not flattened).
    """
    f = {k: jnp.asarray(apply(p, inputs), jnp.float32) for k, p in
         (("b", base), ("t", teacher), ("s", student), ("tb", base if teacher_base is None else teacher_base))}
    require(len({v.shape for v in f.values()}) == 1, "apply", "outputs of different shapes",
            "a function giving outputs of one shape for every network")
    return {"function_cos": float(tree.cos(f["s"] - f["b"], f["t"] - f["tb"])),
            "function_distance_ratio": float(_ratio(tree.norm(f["s"] - f["t"]), tree.norm(f["b"] - f["t"])))}


# --- calibration against controls -----------------------------------------------------------------------
def p_value(score: float, null_scores: Sequence[float], larger: bool = True) -> float:
    """One-sided p = (1 + #{null ≥ score}) / (1 + n_null) (``larger=False``: #{null ≤ score}).

    Valid (P(p ≤ α) ≤ α) when the score and the null scores are exchangeable under "not trained on
    this teacher"; a tie counts against the student. With n_null controls p is at least 1/(n_null + 1).
    """
    null = np.asarray(null_scores, np.float64).ravel()
    require(math.isfinite(score) and bool(np.all(np.isfinite(null))), "score", score,
            "a finite score with finite null scores")
    hits = np.sum(null >= score) if larger else np.sum(null <= score)
    return float((1 + hits) / (1 + null.size))


def calibrated(score: float, null_scores: Sequence[float], larger: bool = True) -> dict:
    """The result record: {'score', 'p_value', 'n_null', 'min_p', 'null_mean', 'null_max', 'null_min'}."""
    null = np.asarray(null_scores, np.float64).ravel()
    return {"score": float(score), "p_value": p_value(score, null, larger), "n_null": int(null.size),
            "min_p": 1.0 / (1 + null.size), "null_mean": float(null.mean()) if null.size else None,
            "null_max": float(null.max()) if null.size else None, "null_min": float(null.min()) if null.size else None}


def audit(base, teacher, student, *, controls: Sequence = (), teacher_base=None, permutation_aware: bool = False,
          seed: int = 0) -> dict:
    """Scores of ``student`` and, for each of ``SCORES`` (total), its p-value against the ``controls``.

    ``controls``: students of the same base trained on other teachers' outputs (or on the base's
    own), scored against the same teacher; the null distribution. Returns ``{'scores': scores(...),
    'tests': {score: calibrated(...)}, 'null': {score: [control scores]}}``.
    """
    kw = dict(teacher_base=teacher_base, permutation_aware=permutation_aware, seed=seed)
    mine = scores(base, teacher, student, **kw)
    null = [scores(base, teacher, c, **kw) for c in controls]
    values = {k: [n[k]["total"] for n in null] for k in SCORES}
    return {"scores": mine, "null": values,
            "tests": {k: calibrated(mine[k]["total"], values[k], LARGER_IS_TEACHER[k]) for k in SCORES}}


# --- error rates over labelled populations ------------------------------------------------------------------
def _two(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    p, n = (np.asarray(x, np.float64).ravel() for x in (pos, neg))
    require(p.size >= 1 and n.size >= 1, "pos/neg", (p.size, n.size), "at least one positive and one negative")
    require(bool(np.all(np.isfinite(p)) and np.all(np.isfinite(n))), "pos/neg", "non-finite", "finite scores")
    return p, n


def placements(pos, neg) -> np.ndarray:
    """Per positive: the fraction of negatives below it, ties counting ½ (its Mann–Whitney term)."""
    p, n = _two(pos, neg)
    n = np.sort(n)
    below, upto = np.searchsorted(n, p, "left"), np.searchsorted(n, p, "right")
    return (below + 0.5 * (upto - below)) / n.size


def roc_auc(pos, neg) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie): the Mann–Whitney AUC."""
    return float(placements(pos, neg).mean())


def tpr_at_fpr(pos, neg, fpr: float = 0.01) -> dict:
    """True-positive rate at a false-positive rate of at most ``fpr`` (``THRESHOLD_RULE``).

    Returns {'tpr', 'threshold', 'fpr', 'fpr_achieved', 'n_pos', 'n_neg', 'rule', 'limited'};
    ``limited``: fewer than 1/fpr negatives, so the threshold is the largest negative.
    """
    require(0 < fpr < 1, "fpr", fpr, "a number in (0, 1)")
    p, n = _two(pos, neg)
    allowed = int(math.floor(fpr * n.size + 1e-9))
    threshold = float(np.sort(n)[::-1][allowed])
    return {"tpr": float(np.mean(p > threshold)), "threshold": threshold, "fpr": fpr,
            "fpr_achieved": float(np.mean(n > threshold)), "n_pos": int(p.size), "n_neg": int(n.size),
            "rule": THRESHOLD_RULE, "limited": bool(n.size * fpr < 1)}


def roc_curve(pos, neg) -> dict:
    """{'fpr': [...], 'tpr': [...]} from (0, 0) to (1, 1), flagging score ≥ each distinct score in turn."""
    p, n = _two(pos, neg)
    cuts = np.unique(np.concatenate([p, n]))[::-1]
    fpr = [0.0, *(float(np.mean(n >= c)) for c in cuts)]
    tpr = [0.0, *(float(np.mean(p >= c)) for c in cuts)]
    return {"fpr": fpr, "tpr": tpr}


# --- which teacher? --------------------------------------------------------------------------------------------
def which_teacher(base, teachers: Sequence, student, *, score: str = "update_cos", **kw) -> int:
    """The index of the candidate teacher (all of one base) with the most teacher-like ``score``."""
    require(score in SCORES, "score", score, f"one of {', '.join(SCORES)}")
    require(len(teachers) >= 1, "teachers", len(teachers), "at least one candidate teacher")
    values = np.asarray([scores(base, t, student, **kw)[score]["total"] for t in teachers])
    return int(np.argmax(values) if LARGER_IS_TEACHER[score] else np.argmin(values))


def which_teacher_accuracy(scores_TxS, k: int, true_S=None) -> np.ndarray:
    """Per student, the exact probability that the true teacher has the top score in a candidate set.

    ``scores_TxS[t, s]``: student ``s``'s score against teacher ``t`` (larger: more teacher-like);
    ``true_S[s]``: its true teacher (default ``s``, a square matrix). The candidate set is the true
    teacher and ``k − 1`` others drawn uniformly without replacement; a tie at the top scores
    1/(number tied), as a uniform pick among them would.
    """
    m = np.asarray(scores_TxS, np.float64)
    n_t, n_s = m.shape
    true = np.arange(n_s) if true_S is None else np.asarray(true_S)
    require(2 <= k <= n_t, "k", k, f"an integer in [2, {n_t}] (the number of candidate teachers)")
    out = np.empty(n_s)
    for s in range(n_s):
        x, others = m[true[s], s], np.delete(m[:, s], true[s])
        below, tied = int(np.sum(others < x)), int(np.sum(others == x))
        total = math.comb(n_t - 1, k - 1)
        out[s] = sum(math.comb(tied, j) * math.comb(below, k - 1 - j) / (j + 1) for j in range(min(tied, k - 1) + 1)) / total
    return out


# --- populations: K teachers of one base, K students, student s trained on teacher s -------------------------------
def cases(m_WxTxS) -> tuple[np.ndarray, np.ndarray]:
    """(positives [W, K]: each student against its own teacher, negatives [W, K·(K−1)]: against the others)."""
    m = np.asarray(m_WxTxS, np.float64)
    require(m.ndim == 3 and m.shape[1] == m.shape[2] >= 2, "matrices", m.shape, "[worlds, K, K] with K >= 2")
    off = ~np.eye(m.shape[1], dtype=bool)
    return np.diagonal(m, axis1=1, axis2=2).copy(), m[:, off]


def against_controls(m_WxTxS, larger: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(contrast, p-value), each [W, T, S]: every case against its controls.

    The controls of case (w, t, s) are the students of base w trained on teachers other than t,
    itself left out: ``m[w, t, o]`` for o ∉ {t, s} (K − 1 for a positive, K − 2 for a negative, so
    a negative's p-value is uniform on {1/(K−1), ..., 1} when the students are exchangeable).
    ``contrast``: the score minus the controls' mean, signed so that larger is more teacher-like.
    """
    m = np.asarray(m_WxTxS, np.float64)
    m = m if larger else -m
    w, k, _ = m.shape
    contrast, p = np.empty_like(m), np.empty_like(m)
    for t in range(k):
        for s in range(k):
            null = m[:, t, [o for o in range(k) if o not in (t, s)]]
            contrast[:, t, s] = m[:, t, s] - null.mean(axis=1)
            p[:, t, s] = [p_value(m[i, t, s], null[i]) for i in range(w)]
    return contrast, p


def population(m_WxTxS, *, larger: bool = True, fpr: float = 0.01, ks: Sequence[int] = (2, 4, 8)) -> dict:
    """Error rates of one score over W worlds of K teachers and K students (``cases``).

    ``auc`` (pooled Mann–Whitney) with ``auc_by_world``: the mean placement of each world's
    positives among all negatives (their mean is the AUC; a Student-t interval over worlds);
    ``tpr``: ``tpr_at_fpr`` pooled, with ``tpr_by_world`` at the pooled threshold; ``which_teacher``:
    {k: accuracy per world} for every k of ``ks`` up to K (chance: 1/k).
    """
    from minisub import stats

    m = np.asarray(m_WxTxS, np.float64) * (1.0 if larger else -1.0)
    pos, neg = cases(m)
    rate = tpr_at_fpr(pos, neg, fpr)
    k_max = m.shape[1]
    return {
        "auc": roc_auc(pos, neg), "auc_by_world": stats.mean_ci(placements(pos.ravel(), neg).reshape(pos.shape).mean(1)),
        "tpr": rate, "tpr_by_world": stats.mean_ci(np.mean(pos > rate["threshold"], axis=1)),
        "which_teacher": {str(k): stats.mean_ci([which_teacher_accuracy(x, k).mean() for x in m])
                          for k in ks if k <= k_max},
        "n_worlds": int(m.shape[0]), "k": int(k_max),
    }


def pooled_p_values(m_WxTxS, larger: bool = True) -> np.ndarray:
    """[W, T, S] p-values of every case against the negatives of the *other* worlds (leave one world out).

    With controls from one base only, a p-value cannot go below 1/K; pooling the negatives of the
    other bases (same recipe, same arm) gives a resolution of 1/(1 + (W−1)·K·(K−1)). It is valid
    when the bases are exchangeable, which ``calibration`` checks on the negatives.
    """
    m = np.asarray(m_WxTxS, np.float64) * (1.0 if larger else -1.0)
    _, neg = cases(m)
    out = np.empty_like(m)
    for w in range(m.shape[0]):
        null = np.sort(np.delete(neg, w, axis=0).ravel())
        above = null.size - np.searchsorted(null, m[w].ravel(), "left")  # #{null >= score}
        out[w] = ((1 + above) / (1 + null.size)).reshape(m[w].shape)
    return out


LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5)


def level_key(alpha: float) -> str:
    """A summary key for a level that a dotted claim path can read: 0.05 -> '0p05'."""
    return f"{alpha:g}".replace(".", "p")


def calibration(p_WxTxS, levels: Sequence[float] = LEVELS) -> dict:
    """Per level α: the negatives' P(p ≤ α) − α (0 when calibrated) and the positives' P(p ≤ α) (power).

    Each is a Student-t interval over worlds of the per-world fractions (``minisub.stats``), keyed
    by ``level_key(α)``; ``pooled``: the fractions over all cases.
    """
    from minisub import stats

    pos, neg = cases(p_WxTxS)
    at = lambda x, a: np.mean(x <= a + 1e-12, axis=1)  # noqa: E731
    return {"levels": list(levels),
            "negatives": {level_key(a): stats.mean_ci(at(neg, a) - a) for a in levels},
            "positives": {level_key(a): stats.mean_ci(at(pos, a)) for a in levels},
            "pooled": {level_key(a): {"negatives": float(np.mean(neg <= a + 1e-12)),
                                      "positives": float(np.mean(pos <= a + 1e-12))} for a in levels}}
