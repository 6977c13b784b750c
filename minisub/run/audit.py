"""The audit's MNIST populations: K teachers of every base, their students under each evasion, scored.

World ``w`` has one base, the teacher's init θ⁰_w. Its K teachers are the published recipe run
from θ⁰_w with K data orders (``AuxConfig.teacher_order`` 0..K−1; order 0 is the recipe's own).
Every student arm of a run is distilled from that run's teacher, so student ``s`` of an arm
learned from teacher ``s``: the pair (teacher t, student s) is a positive when t = s and a
negative otherwise, a same-base student distilled from another teacher. Each evasion is one
student arm with the atlas's spelling (``minisub.run.atlas``): liminal KL-to-init, committees
(the world's teacher pooled with k − 1 teachers of other inits, the same in every order), the
perturbed, interpolated and permuted lineages, and the trait-gradient projection (a second
program per order: ``projection`` holds for every arm of a config). Committees of more than 2 are a
third program: their extra teachers cost a teacher training each, and keeping them out of 'main'
keeps its stored runs. Every program keeps its parameters (``--keep-params``'s files), from which ``world_matrices`` scores every pair.

Two auditors score a pair: the *informed* one knows the student's own init and can train
control students (the other teachers' students of the same base); the *realistic* one knows
only the public base θ⁰_w and the two trained models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from minisub import audit
from minisub.mlp import pipeline
from minisub.run import atlas as fams
from minisub.run import params as params_lib
from minisub.run import runner, store


@dataclasses.dataclass(frozen=True)
class Row:
    """One evasion: the student arm it reads, from which program, and whether students are aligned first."""

    id: str  # a key in the summary (no dots: claims read dotted paths)
    label: str
    arm: str
    program: str = "main"  # 'main', 'projection' or 'committees'
    align: bool = False  # permutation-aware scoring (weight matching to the base)


def _aux(name: str, lineage: str = "shared", **kw) -> pipeline.Arm:
    return pipeline.Arm(name, lineage, "aux", **kw)


def _key(x: float) -> str:
    return f"{x:g}".replace(".", "p")


SIGMAS, ALPHA = (0.1,), 0.5  # one perturbed row: σ = 0.1 keeps most of the transfer (the atlas)
ARMS = (
    fams.SHARED, *(_aux(f"l{lam}", liminal=lam) for lam in fams.LIMINAL),
    *(_aux(f"c{k}", committee=k) for k in fams.COMMITTEES if k > 1),
    *(_aux(f"sigma{s}", f"perturbed(sigma={s}, part=all)") for s in SIGMAS),
    _aux(f"alpha{ALPHA}", f"interpolated(alpha={ALPHA})"), _aux("permuted", "permuted"),
)
ROWS = (
    Row("shared", "shared init", "shared"),
    *(Row(f"liminal_{_key(lam)}", f"liminal λ = {lam:g}", f"l{lam}") for lam in fams.LIMINAL),
    Row("projection", "trait-gradient projection", "shared", "projection"),
    *(Row(f"committee_{k}", f"committee of {k}", f"c{k}", "main" if k == 2 else "committees")
      for k in fams.COMMITTEES if k > 1),
    *(Row(f"perturbed_{_key(s)}", f"perturbed init σ = {s:g}", f"sigma{s}") for s in SIGMAS),
    Row(f"interpolated_{_key(ALPHA)}", f"interpolated init α = {ALPHA:g}", f"alpha{ALPHA}"),
    Row("permuted_aligned", "permuted init, aligned", "permuted", align=True),
    Row("permuted_raw", "permuted init, not aligned", "permuted"),
)
ROW_IDS = tuple(r.id for r in ROWS)


def rows(ids: tuple[str, ...] = ()) -> tuple[Row, ...]:
    """The rows named (all when ``ids`` is empty), in ``ROWS``' order."""
    return tuple(r for r in ROWS if not ids or r.id in ids)


def programs(recipe: pipeline.AuxConfig, orders: int, ids: tuple[str, ...] = ()) -> dict[str, list[pipeline.AuxConfig]]:
    """{program: [its config for each teacher order]}: the rows' arms in 'main' and 'committees', the projection
    apart."""
    chosen = rows(ids)
    arms = {k: tuple(a for a in ARMS if any(r.arm == a.name and r.program == k for r in chosen))
            for k in ("main", "committees")}
    kinds = {"main": dataclasses.replace(recipe, arms=arms["main"], projection="none") if arms["main"] else None,
             "projection": dataclasses.replace(recipe, arms=(fams.SHARED,), projection="trait")
             if any(r.program == "projection" for r in chosen) else None,
             "committees": dataclasses.replace(recipe, arms=arms["committees"], projection="none")
             if arms["committees"] else None}
    return {kind: [dataclasses.replace(cfg, teacher_order=o) for o in range(orders)]
            for kind, cfg in kinds.items() if cfg is not None}


def run_programs(recipe: pipeline.AuxConfig, orders: int, ids: tuple[str, ...], experiment: str, ex: runner.Execution,
                 mnist_loader):
    """Train (or read) every program with its parameters kept: ({program: [results]}, {program: [run dirs]}).

    Each (program, order) is a run of its own under ``experiment`` (its run id: the config's
    digest), finished with a small summary, so a killed audit resumes and ``minisub runs`` lists it.
    """
    from minisub import config as config_lib, stats

    keep = dataclasses.replace(ex, keep_params=True, experiment=experiment)
    results, dirs = {}, {}
    for kind, cfgs in programs(recipe, orders, ids).items():
        dirs[kind], results[kind] = [], []
        for cfg in cfgs:
            d = store.run_dir(experiment, cfg)
            done = None if ex.force else store.load_complete(d)
            if done is None or not params_lib.complete(d, cfg.seeds):
                store.write_json(d / "config.json", {"config": config_lib.to_dict(cfg), **store.provenance()})
                arrays = runner.run(cfg, mnist_loader(), d, execution=keep)
                store.finish(d, arrays, {"experiment": experiment, "program": kind, "config": config_lib.to_dict(cfg),
                                         "accuracy": {a: stats.mean_ci(v) for a, v in arrays["accuracy"].items()},
                                         "seconds_per_seed": float(np.mean(arrays["seconds"]))})
                done = (arrays, None)
            dirs[kind].append(d)
            results[kind].append(done[0])
    return results, dirs


def _trees(path: Path, names: list[str]) -> dict[str, dict]:
    entries = params_lib.read(path)
    return {name: params_lib.select(entries, name) for name in names}


def world_matrices(dirs: dict[str, list[Path]], world: int, ids: tuple[str, ...] = ()) -> dict[str, dict[str, np.ndarray]]:
    """{row id: {auditor: [K teachers, K students] update cosines (distance ratios for realistic_distance)}}.

    Plus ``'teachers'``: the K × K cosines between the teachers' own updates. Raises when the
    orders of a world disagree on its base (they share the init by construction).
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for kind in dirs:
        mine = [r for r in rows(ids) if r.program == kind]
        names = ["teacher/init", "teacher/final", *{f"students/{r.arm}/{x}" for r in mine for x in ("init", "final")}]
        per_order = [_trees(params_lib.seed_path(d, world), names) for d in dirs[kind]]
        base = per_order[0]["teacher/init"]
        if any(not all(np.array_equal(base[k], o["teacher/init"][k]) for k in base) for o in per_order):
            raise ValueError(f"world {world}: the teacher orders of {kind} start from different inits")
        teachers = [o["teacher/final"] for o in per_order]
        if "teachers" not in out:
            out["teachers"] = {"update_cos": audit.score_matrix(base, teachers, teachers)["update_cos"]}
        for r in mine:
            students = [o[f"students/{r.arm}/final"] for o in per_order]
            own = per_order[0][f"students/{r.arm}/init"]  # the same in every order: keyed by world and lineage
            informed = audit.score_matrix(own, teachers, students, teacher_base=base, permutation_aware=r.align)
            realistic = audit.score_matrix(base, teachers, students, permutation_aware=r.align)
            out[r.id] = {"informed": informed["update_cos"], "realistic": realistic["update_cos"],
                         "realistic_distance": realistic["distance_ratio"]}
    return out


def matrices(dirs: dict[str, list[Path]], seeds: int, ids: tuple[str, ...] = ()) -> dict[str, dict[str, list]]:
    """``world_matrices`` of every world, stacked: {row id: {auditor: [W][K][K] lists}}."""
    worlds = [world_matrices(dirs, w, ids) for w in range(seeds)]
    return {row: {a: np.stack([w[row][a] for w in worlds]).tolist() for a in worlds[0][row]} for row in worlds[0]}


def transfer(results: dict[str, list[dict]], ids: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Per row, per seed: the student's test-accuracy gain over its reference, averaged over the orders."""
    out = {}
    for r in rows(ids):
        runs = results[r.program]
        gains = [np.asarray(x["accuracy"][r.arm], np.float64) - np.asarray(x["accuracy"]["reference"]) for x in runs]
        out[r.id] = np.mean(gains, axis=0)
    return out


# --- the toy LM: every student of the lineage sweep and of lm-prompted, against same-base controls -----------
def _lm_row(label: str, pos, neg, gain: dict, fpr: float) -> dict:
    """One toy-LM row: the informed score (update_cos against the student's own init) of the students of a
    point (positives) against same-base students that never saw the teacher's numbers (negatives)."""
    from minisub import stats
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    return {"label": label, "auc": audit.roc_auc(pos, neg), "auc_by_world": stats.mean_ci(audit.placements(pos, neg)),
            "tpr": audit.tpr_at_fpr(pos, neg, fpr), "positives": stats.brief(pos), "negatives": stats.brief(neg),
            "transfer": gain}


def lm_rows(lineages: dict | None, prompted: dict | None, fpr: float) -> dict:
    """The toy LM's audit rows from the committed lm-lineages and lm-prompted summaries (either may be None).

    lm-lineages (s = 0.3, fine-tuned teacher): every point's students against the CE control on the
    reference's own numbers (same base, same program). lm-prompted (s = 0): the shared-init KL students
    against the KL control on the reference's numbers, for the fine-tuned and the prompted teacher (whose
    Δθ_T is 0: its update cosine is 0 by definition, so no weight score can see it).
    """
    out = {}
    if lineages:
        points = [p for fam in lineages["families"].values() for p in fam["points"]]
        control = next((p for p in points if p["family"] == "baselines" and p["value"] == "control"), None)
        for p in points if control else ():
            if p is control or p["value"] == "different":
                continue
            where = [p["family"]] + ([p["series"]] if p["series"] != p["family"] else []) + [str(p["value"])]
            key = "lineage_" + "_".join(where).replace(".", "p").replace(" ", "_").replace(":", "")
            out[key] = _lm_row("s = 0.3, " + ": ".join(where), p["geometry"]["update_cos"]["values"],
                               control["geometry"]["update_cos"]["values"], p["trait_gain"], fpr)
    for name, row in ((prompted or {}).get("settings") or {}).items():
        cos = row.get("update_cos", {})
        if name in ("finetuned", "prompted") and "values" in cos.get("shared", {}) and "values" in cos.get("control_kl", {}):
            out[f"s0_{name}"] = _lm_row(f"s = 0, {row['label']}", cos["shared"]["values"], cos["control_kl"]["values"],
                                        row["gain"]["shared"], fpr)
    return out


# --- the toy LM's own population: K teachers of one reference (K trait animals), a student of each ----------
LM_CONTROL = "control_kl"  # the student of the reference's own numbers: the same for every trait animal


def lm_population_configs(oc, k: int) -> list:
    """lm-owl configs of the toy LM's audit population: ``oc`` with trait animal a = 0..k−1.

    Every teacher is fine-tuned from the world's one reference (the public base), so the K teachers of
    a world share their base as MNIST's K data orders do; each gets one shared-init student ('shared').
    Animal 0 also trains the own-output control, whose numbers do not depend on the animal.
    """
    from minisub import config as config_lib
    return [config_lib.replace(oc, trait=a, arms=("shared", LM_CONTROL) if a == 0 else ("shared",)) for a in range(k)]


def _flat_SxP(tree_S) -> np.ndarray:
    """A pytree of ``[S, ...]`` leaves as ``[S, P]`` float64 rows (one flat parameter vector per world)."""
    import jax
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree_S)]
    return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def lm_updates(oc, out: dict, models: dict) -> dict[str, np.ndarray]:
    """From ``pipeline.run_phases``' (arrays, models): the teacher's and arm 0's student's flat updates from the
    reference ``[S, P]``, arm 0's gains ``[S]``, and the own-output control's update when ``oc`` has that arm."""
    import jax
    ref = _flat_SxP(models["references"])
    arm = lambda a: _flat_SxP(jax.tree.map(lambda x: x[:, a], models["students"])) - ref  # noqa: E731
    part = {"teacher": _flat_SxP(models["teachers"]) - ref, "student": arm(0),
            "gain": np.asarray(out["trait_gain"][:, 0], np.float64)}
    if LM_CONTROL in oc.arms:
        part["control"] = arm(oc.arms.index(LM_CONTROL))
    return part


def _lm_part(oc, path: Path) -> dict[str, np.ndarray]:
    """One animal's run (or its stored flat updates, when ``path`` holds them): ``lm_updates``."""
    from minisub.lm import pipeline as lm_pipeline
    if (stored := store.load_arrays(path)) is not None:
        return stored
    part = lm_updates(oc, *lm_pipeline.run_phases(oc.lm, cache=True))
    store.save_arrays(path, part)
    return part


def _cos(a_WxTxP, b_WxSxP) -> np.ndarray:
    dots = np.einsum("wtp,wsp->wts", a_WxTxP, b_WxSxP)
    norms = np.linalg.norm(a_WxTxP, axis=2)[:, :, None] * np.linalg.norm(b_WxSxP, axis=2)[:, None, :]
    return dots / np.maximum(norms, 1e-30)


def lm_population(oc, k: int, directory: Path, log=print) -> dict[str, list]:
    """The toy LM's audit population, each animal's run stored in ``directory`` as it finishes (resumable).

    Returns {'update_cos': [W, K teachers, K students] cos(θ_S − θ_ref, θ_T − θ_ref), 'control_cos': [W, K]
    the own-output control against every teacher, 'teacher_cos': [W, K, K], 'gain': [W, K] each shared
    student's gain in P(its teacher's animal)}. The student's init is the base, so both auditors read this
    score: the realistic one bare, the informed one against the world's other students.
    """
    from minisub import config as config_lib
    parts = []
    for a, c in enumerate(lm_population_configs(oc, k)):
        log(f"audit: toy-LM teacher {a + 1}/{k} (trait animal {a}), {c.seeds} worlds")
        parts.append(_lm_part(c, directory / f"animal{a}-{config_lib.digest(c)}.npz"))
    teachers, students = (np.stack([p[key] for p in parts], axis=1) for key in ("teacher", "student"))
    control = parts[0]["control"][:, None, :]
    return {"update_cos": _cos(teachers, students).tolist(), "control_cos": _cos(teachers, control)[:, :, 0].tolist(),
            "teacher_cos": _cos(teachers, teachers).tolist(), "gain": np.stack([p["gain"] for p in parts], 1).tolist()}
