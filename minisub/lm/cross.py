"""Cross-model transfer: every reference's teacher × every reference as a student's start.

A *kind* of reference is an architecture (an ``LMConfig``'s model fields) and a seed role: in
replicate ``r``, 'own' is world ``r``'s reference and 'other' is world ``donor[r]``'s (same
architecture, another pretraining seed). With A architectures there are K = 2A kinds; each
kind's reference is fine-tuned into its teacher (the config's recipe), the teacher continues
its world's neutral prompts, and a student from every kind imitates every teacher's kept
numbers: a K × K matrix of trait gains per replicate (rows: teacher, columns: student). The
diagonal is the shared-init student; same architecture off the diagonal, a different-seed
student; across architectures, a student that cannot share the teacher's init. The paper's
GPT-family table in miniature. Every (teacher architecture, student architecture) pair is one
jitted program vmapped over replicates and the 2 × 2 seed roles.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from minisub import keys
from minisub.lm import core as lm
from minisub.lm import pipeline as lm_pipeline
from minisub.config import require
from minisub.lm.pipeline import LMArm, LMConfig

ROLES = ("own", "other")


def check(cfgs: tuple[LMConfig, ...]) -> None:
    """The architectures must share everything but the model: world, seeds, recipe of teachers and students."""
    require(len(cfgs) >= 1, "widths", cfgs, "at least one architecture")
    model = ("layers", "width", "heads", "mlp_ratio", "tied_embeddings")
    rest = lambda c: dataclasses.replace(c, **{f: getattr(cfgs[0], f) for f in model})
    for c in cfgs[1:]:
        require(rest(c) == cfgs[0], "architectures", [c.width for c in cfgs],
                "configs that differ only in layers, width, heads, mlp_ratio, tied_embeddings")
    require(cfgs[0].seeds >= 2, "seeds", cfgs[0].seeds, ">= 2 (the 'other' role is another world's reference)")


def kinds(cfgs: tuple[LMConfig, ...]) -> list[tuple[int, str]]:
    """(architecture index, role) of every kind, architecture-major."""
    return [(a, role) for a in range(len(cfgs)) for role in ROLES]


@partial(jax.jit, static_argnums=(0, 1))
def _pair(student_cfg: LMConfig, teacher_cfg: LMConfig, inits_SxR, teachers_SxR, tokens_SxRxNxL, keep_SxRxN,
          seed_ids):
    """Students of one architecture on teachers of one: gains ``[S, R_teacher, R_student]``.

    ``inits_SxR``: the student architecture's references in each role; ``teachers_SxR`` and the
    numbers: the teacher architecture's, per role. Every cell of a replicate shares its shuffle key.
    """
    persona = lm_pipeline.teacher_persona(teacher_cfg)
    train = partial(lm_pipeline.train_student, student_cfg, teacher_spec=teacher_cfg.spec)
    prob = partial(lm_pipeline.p_trait, student_cfg)

    def replicate(inits_R, teachers_R, tokens_RxNxL, keep_RxN, i):
        key = keys.stream(student_cfg.seed, "lm_student_shuffle", i)

        def cell(t, u):
            init = jax.tree.map(lambda x: x[u], inits_R)
            teacher = jax.tree.map(lambda x: x[t], teachers_R)
            student, _ = train(init, teacher, persona, tokens_RxNxL[t], keep_RxN[t], key)
            return prob(student) - prob(init)

        r = jnp.arange(len(ROLES))
        return jax.vmap(lambda t: jax.vmap(lambda u: cell(t, u))(r))(r)

    return jax.vmap(replicate)(inits_SxR, teachers_SxR, tokens_SxRxNxL, keep_SxRxN, seed_ids)


def _roles(tree, seed_ids, donor_ids):
    """``[S, ...]`` -> ``[S, 2, ...]``: each world's own entry and its donor's."""
    return jax.tree.map(lambda x: jnp.stack([x[seed_ids], x[donor_ids]], axis=1), tree)


def run(cfgs: tuple[LMConfig, ...], log=None, chunk: int = 500, cache: bool = True) -> dict:
    """``gain [S, K, K]`` (teacher kind × student kind), the teachers' and references' P(trait), per replicate."""
    check(cfgs)
    base = cfgs[0]
    seed_ids = jnp.arange(base.seeds)
    donor_ids = jnp.asarray(lm_pipeline.donors(base))
    only_teacher = (LMArm("student", "shared", "teacher"),)
    refs, teachers, numbers, ref_p, teacher_p = [], [], [], [], []
    for a, cfg in enumerate(cfgs):
        cfg = dataclasses.replace(cfg, arms=only_teacher)
        if log:
            log(f"architecture {a + 1}/{len(cfgs)}: {cfg.layers} layers, width {cfg.width}")
        r, _ = (lm_pipeline.pretrain_cached if cache else lm_pipeline.pretrain)(cfg, seed_ids, chunk, log)
        t, _ = lm_pipeline.make_teachers(cfg, r)
        nums = lm_pipeline.make_numbers(cfg, r, t, seed_ids)["teacher"]
        refs.append(_roles(r, seed_ids, donor_ids))
        teachers.append(_roles(t, seed_ids, donor_ids))
        numbers.append(_roles(nums, seed_ids, donor_ids))
        ref_p.append(jax.vmap(partial(lm_pipeline.p_trait, cfg))(r))
        persona = cfg.trait_persona if cfg.teacher == "prompted" else None  # the teacher answers in its own context
        teacher_p.append(jax.vmap(partial(lm_pipeline.p_trait, cfg, persona=persona))(t))
    n_roles = len(ROLES)
    K = n_roles * len(cfgs)
    gain = np.zeros((base.seeds, K, K), np.float32)
    for ta, tcfg in enumerate(cfgs):
        for sa, scfg in enumerate(cfgs):
            if log:
                log(f"students of width {scfg.width} on teachers of width {tcfg.width}")
            g = _pair(dataclasses.replace(scfg, arms=only_teacher), dataclasses.replace(tcfg, arms=only_teacher),
                      refs[sa], teachers[ta], numbers[ta]["tokens"], numbers[ta]["keep"], seed_ids)
            gain[:, ta * n_roles:(ta + 1) * n_roles, sa * n_roles:(sa + 1) * n_roles] = np.asarray(g)
    return {"gain": gain, "reference_p_trait": np.stack([np.asarray(p) for p in ref_p], 1),
            "teacher_p_trait": np.stack([np.asarray(p) for p in teacher_p], 1), "donors": np.asarray(donor_ids)}
