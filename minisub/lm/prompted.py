"""lm-prompted's measurements: how large and how init-specific a teacher's number shift is, what a
student's first step does with it, and which numbers are entangled with each animal.

All are read on a world's stored reference (``pipeline.pretrain_cached``) and its teacher (made
again: deterministic), on ``pipeline.ENTANGLE_PROMPTS`` neutral number documents from key stream
'lm_entangle' (the ones ``ban_entangled`` reads), never on a student:

* ``kl``: ``entangle.number_kl`` of the teacher (in its own context) against the reference;
* ``first_step``: ``diagnostic.first_step`` of a KL student starting at the world's reference
  ('shared') or at the different-init arm's donor reference ('different'), teacher-forced on the
  documents' own continuations (a proxy for the teacher's samples that needs no sampling);
* per animal ``a`` (the animal axis ``[A]``): the reference's ``prompt`` shift (a's persona in the
  context) and ``bump`` shift (β·W_U û_a on the logits); their overlap (are the numbers a persona
  raises those its unembedding geometry predicts?); the overlap of this reference's prompt shift
  with the donor's (``cross_init``: are entangled numbers a property of the init?); subliminal
  prompting with the top ``PROMPT_NUMBERS`` numbers of each shift against random numbers;
* ``pairwise``: the overlap of every two worlds' teacher-vs-reference shifts (``model``).
A same-init pair of models (teacher and shared-init student start) is one model here, so its
overlap is 1 by construction and is not measured.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from minisub import keys
from minisub.lm import diagnostic, entangle
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import world as world_lib
from minisub.lm.pipeline import LMConfig

TOP_K = 10  # entangled numbers compared between pushes and worlds (of modulus = 100 two-digit numbers)
PROMPT_NUMBERS = 4  # numbers put in a subliminal prompt (a number document shows up to n_numbers)
BETA = 4.0  # the logit bump along an animal's unembedding direction (logit units)
RANDOM_PROMPTS = 64  # random-number contexts that subliminal prompting is compared with
TEACHERS = lm_pipeline.TEACHERS  # the three ways to give the teacher its trait, compared in the designs


def _documents(cfg: LMConfig, i):
    return world_lib.number_batch(cfg.world, keys.stream(cfg.seed, "lm_entangle", i), lm_pipeline.ENTANGLE_PROMPTS)[0]


def _animal(cfg: LMConfig, reference, donor, docs_BxL, a, key) -> dict:
    """One animal's shifts in one reference, their overlaps, and subliminal prompting by each push's top numbers."""
    spec, w = cfg.spec, cfg.world
    prompt = entangle.prompt_shift(spec, w, reference, docs_BxL, a)
    bump = entangle.bump_shift(spec, w, reference, docs_BxL, a, BETA)
    donor_prompt = entangle.prompt_shift(spec, w, donor, docs_BxL, a)
    prompting = {name: entangle.subliminal_prompting(spec, w, reference, entangle.entangled(shift, PROMPT_NUMBERS),
                                                     keys.member(key, n), RANDOM_PROMPTS)
                 for n, (name, shift) in enumerate((("prompt", prompt), ("bump", bump)))}
    return {"prompt~bump": entangle.overlap(prompt, bump, TOP_K),
            "cross_init": entangle.overlap(prompt, donor_prompt, TOP_K),
            "subliminal": {k: {"p_numbers": v["p_numbers"][a], "p_random": v["p_random"][a],
                               "difference": v["difference"][a]} for k, v in prompting.items()}}


def world_measures(cfg: LMConfig, reference, teacher, donor, i) -> dict:
    """Every quantity of the module docstring for world ``i`` (its donor: the different-init start)."""
    spec, w, persona = cfg.spec, cfg.world, lm_pipeline.teacher_persona(cfg)
    docs_BxL = _documents(cfg, i)
    ones_B = jnp.ones(docs_BxL.shape[0])
    first = {start: diagnostic.first_step(spec, w, model, teacher, docs_BxL, ones_B, cfg.trait_index, persona,
                                          outputs=cfg.student_outputs, kind=cfg.trait_kind)
             for start, model in (("shared", reference), ("different", donor))}
    key = keys.stream(cfg.seed, "lm_prompting", i)
    animals = jax.vmap(lambda a: _animal(cfg, reference, donor, docs_BxL, a, keys.member(key, a)))(
        jnp.arange(w.n_animals))
    return {"kl": entangle.number_kl(spec, w, teacher, reference, docs_BxL, persona, cfg.student_outputs),
            "model_shift": entangle.model_shift(spec, w, teacher, reference, docs_BxL, persona),
            "first_step": first, "animals": animals}


@partial(jax.jit, static_argnums=0)
def population(cfg: LMConfig, references, teachers, donor_ids, seed_ids) -> dict:
    """``world_measures`` of every world, and ``pairwise`` overlaps of the worlds' teacher shifts ``[S, S]``."""
    donors = jax.tree.map(lambda x: x[donor_ids], references)
    # worlds one after another (lax.map, not vmap): a world's animals x digit prefixes x documents already
    # batch its forwards, and all 24 worlds at once asked for 38 GB
    out = jax.lax.map(lambda a: world_measures(cfg, *a), (references, teachers, donors, seed_ids))
    return {**out, "pairwise": entangle.pairwise(out["model_shift"], TOP_K)}


def measure(cfg: LMConfig, log=None) -> dict:
    """``population`` on ``cfg``'s stored references (pretrained now if not stored), as numpy arrays."""
    seed_ids = jnp.arange(cfg.seeds)
    references, _ = lm_pipeline.pretrain_cached(cfg, seed_ids, log=log)
    teachers, _ = lm_pipeline.make_teachers(cfg, references)
    out = population(cfg, references, teachers, jnp.asarray(lm_pipeline.donors(cfg)), seed_ids)
    return jax.tree.map(np.asarray, out)


def _design_world(cfg: LMConfig, reference, teacher, persona, i) -> dict:
    """``world_measures``' teacher-level part alone (no animals): KL, number shift and the shared first step."""
    spec, w = cfg.spec, cfg.world
    docs_BxL = _documents(cfg, i)
    first = diagnostic.first_step(spec, w, reference, teacher, docs_BxL, jnp.ones(docs_BxL.shape[0]),
                                  cfg.trait_index, persona, outputs=cfg.student_outputs, kind=cfg.trait_kind)
    return {"kl": entangle.number_kl(spec, w, teacher, reference, docs_BxL, persona, cfg.student_outputs)["token"],
            "model_shift": entangle.model_shift(spec, w, teacher, reference, docs_BxL, persona), **first}


@partial(jax.jit, static_argnums=0)
def _design_population(cfg: LMConfig, references, teachers, persona, seed_ids) -> dict:
    """``_design_world`` of every world; ``persona`` is traced, so one compiled program serves every teacher."""
    out = jax.lax.map(lambda a: _design_world(cfg, a[0], a[1], persona, a[2]), (references, teachers, seed_ids))
    return {**out, "pairwise": entangle.pairwise(out["model_shift"], TOP_K)}


def design(cfg: LMConfig, log=None) -> dict:
    """One world design: for each way of giving the teacher its trait (``TEACHERS``), per world the KL of
    its numbers to the reference's and its student's first step, and the mean cross-world overlap of
    its number shifts. The references are pretrained once (stored) and shared by the three teachers."""
    seed_ids = jnp.arange(cfg.seeds)
    references, _ = lm_pipeline.pretrain_cached(cfg, seed_ids, log=log)
    out, off = {}, ~np.eye(cfg.seeds, dtype=bool)
    for teacher in TEACHERS:
        c = dataclasses.replace(cfg, teacher=teacher)
        teachers, _ = lm_pipeline.make_teachers(c, references)
        persona = jnp.asarray(lm_pipeline.teacher_persona(c), jnp.int32)
        m = jax.tree.map(np.asarray, _design_population(dataclasses.replace(cfg, teacher="finetuned"), references,
                                                        teachers, persona, seed_ids))
        out[teacher] = {"kl": m["kl"], "cos_adam": m["cos_adam"], "cos_sgd": m["cos_sgd"], "grad_norm": m["grad_norm"],
                        "cross_world_cosine": float(m["pairwise"]["cosine"][off].mean()),
                        "cross_world_jaccard": float(m["pairwise"]["jaccard"][off].mean())}
    return out


# --- summaries (per-world numbers -> Student-t records, as every experiment stores them) ----------
def chance_jaccard(k: int = TOP_K, m: int = 100) -> float:
    """E[|A ∩ B| / |A ∪ B|] of two independent uniformly random k-subsets of m numbers (hypergeometric)."""
    from scipy import stats as sps
    i = np.arange(0, k + 1)
    return float(np.sum(sps.hypergeom(m, k, k).pmf(i) * i / (2 * k - i)))


def summarise(cfg: LMConfig, m: dict, gains: dict) -> dict:
    """One setting's measurements as records: the trait animal's and the all-animal means per world, the
    first steps, the teacher's KL (skewed: its distribution too), cross-world overlaps, and the per-world
    correlations with the students' gains (``gains``: arm -> per-world trait gains)."""
    from minisub import stats
    t, off = cfg.trait_index, ~np.eye(cfg.seeds, dtype=bool)
    a = m["animals"]
    per_world = lambda x: {"trait": stats.mean_ci(x[:, t]), "all_animals": stats.mean_ci(x.mean(axis=1))}  # noqa: E731
    out = {
        "kl": stats.distribution(m["kl"]["token"], 0.0),
        "kl_number": stats.mean_ci(m["kl"]["number"]),
        "first_step": {s: {q: stats.mean_ci(v) for q, v in f.items()} for s, f in m["first_step"].items()},
        "prompt_bump": {q: per_world(v) for q, v in a["prompt~bump"].items()},
        "cross_init": {q: per_world(v) for q, v in a["cross_init"].items()},
        "subliminal": {push: {q: per_world(v) for q, v in d.items()} for push, d in a["subliminal"].items()},
        "cross_world": {q: stats.brief(v[off]) for q, v in m["pairwise"].items()},
        "chance_jaccard": chance_jaccard(TOP_K, cfg.world.modulus),
        "top_k": TOP_K, "prompt_numbers": PROMPT_NUMBERS, "beta": BETA,
    }
    corr = {}
    if "shared" in gains:
        corr["first step (cos, Adam) vs shared gain"] = (m["first_step"]["shared"]["cos_adam"], gains["shared"])
        corr["teacher KL vs shared gain"] = (m["kl"]["token"], gains["shared"])
    if "different" in gains:
        corr["cross-init Jaccard (trait) vs different gain"] = (a["cross_init"]["jaccard"][:, t], gains["different"])
        corr["first step from the different start vs different gain"] = (m["first_step"]["different"]["cos_adam"],
                                                                        gains["different"])
    out["correlations"] = {k: stats.correlation(x, y) for k, (x, y) in corr.items()}
    return out
