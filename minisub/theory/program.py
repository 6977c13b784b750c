"""The Theorem-1 program: one teacher GD step, one student imitation step, at init, for many worlds.

For every seed the MNIST MLP is drawn at its random init θ⁰; the teacher takes ``teacher_steps`` GD
steps of size ε on class-logit cross-entropy of a labelled MNIST batch; a student whose init comes
from ``minisub.lineage`` (``shared``: θ⁰; ``different``: another seed's init, a derangement) takes
one gradient step on its imitation loss over a batch of inputs from D_S. ``compute`` measures every
quantity of ``one_step.one_step`` for every (seed, input, lineage) world and ε in one jitted call;
``summarise`` turns the arrays into per-cell statistics over seeds (``stats``, Student-t).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from minisub import config as config_lib
from minisub import keys, lineage, stats
from minisub.config import normalise, require, require_choice
from minisub.mlp import data, fashion, mnist, models
from minisub.run import store
from minisub.theory import one_step as theory

INPUTS = ("uniform", "gaussian", "mnist", "zeros", "fashion")
LINEAGES = ("shared", "different")
DTYPES = ("float64", "float32")
MNIST_TRAIN, MNIST_TEST, PIXELS = 60_000, 10_000, 784
SCHEMA = 1  # of summary.json: a stored run with another schema is recomputed, not served
WORLDS_PER_BATCH = 4  # worlds vmapped at once inside the one jitted call (memory, not science)
QUANTITIES = ("inner", "predicted", "rel_error", "taylor_rel_error", "direction_rel_error", "cos",
              "delta_loss_T", "delta_loss_T_linear", "student_norm", "sign_flips")
LOSS_TOL = 1e-12  # L_T "falls" when it drops by more than this (float64 rounding of L_T ≈ 2.3 is ~1e-16)
CI = stats.TEST


@dataclasses.dataclass(frozen=True)
class TheoremConfig:
    """Every knob of the one-step Theorem-1 measurement; the defaults are the quick preset."""

    seeds: int = 8
    seed: int = 0
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    init: str = "normal_fan_in"
    n_aux: int = 3
    eps_min: float = 1e-5
    eps_max: float = 1.0
    n_eps: int = 11
    teacher_steps: int = 1
    teacher_batch: int = 256
    student_batch: int = 128
    inputs: tuple[str, ...] = INPUTS
    imitations: tuple[str, ...] = ("kl-aux", "kl-all", "mse-aux")
    temperature: float = 1.0
    lineages: tuple[str, ...] = LINEAGES
    alpha: float = 1.0
    small_eps: float = 1e-3
    dtype: str = "float64"

    def __post_init__(self):
        normalise(self)
        self.validate()

    def validate(self) -> None:
        require(self.seeds >= 1, "seeds", self.seeds, "an integer >= 1")
        models.validate_mlp_fields(self)
        require(self.eps_min > 0, "eps_min", self.eps_min, "a number > 0")
        require(self.eps_max > self.eps_min, "eps_max", self.eps_max, f"a number > eps_min ({self.eps_min})")
        require(self.n_eps >= 2, "n_eps", self.n_eps, "an integer >= 2")
        require(self.eps_min <= self.small_eps <= self.eps_max, "small_eps", self.small_eps,
                f"in [eps_min, eps_max] = [{self.eps_min}, {self.eps_max}]")
        require(self.teacher_steps >= 1, "teacher_steps", self.teacher_steps, "an integer >= 1")
        require(1 <= self.teacher_batch <= MNIST_TRAIN, "teacher_batch", self.teacher_batch, f"in [1, {MNIST_TRAIN}]")
        require(1 <= self.student_batch <= MNIST_TEST, "student_batch", self.student_batch, f"in [1, {MNIST_TEST}]")
        _distinct_choices("inputs", self.inputs, INPUTS, "one or more distinct input distributions")
        require(len(self.imitations) >= 1 and len(set(self.imitations)) == len(self.imitations), "imitations",
                self.imitations, "one or more distinct LOSS-OUTPUTS pairs")
        for text in self.imitations:
            loss, _, outputs = text.partition("-")
            require(loss in theory.LOSSES and outputs in theory.OUTPUTS, "imitations", text,
                    f"LOSS-OUTPUTS with LOSS in {theory.LOSSES} and OUTPUTS in {theory.OUTPUTS}, e.g. 'kl-aux'")
        require(self.temperature > 0, "temperature", self.temperature, "a number > 0")
        _distinct_choices("lineages", self.lineages, LINEAGES, "one or more distinct lineages")
        if "different" in self.lineages:
            require(self.seeds >= 2, "seeds", self.seeds, ">= 2 when a student starts from another seed's init")
        require(self.alpha > 0, "alpha", self.alpha, "a number > 0")
        require_choice("dtype", self.dtype, DTYPES)

    @property
    def spec(self) -> models.MLPSpec:
        return models.MLPSpec(PIXELS, self.hidden, 10, self.n_aux, self.activation, self.init)

    @property
    def eps(self) -> np.ndarray:
        return np.logspace(np.log10(self.eps_min), np.log10(self.eps_max), self.n_eps)

    @property
    def imitation_specs(self) -> tuple[theory.Imitation, ...]:
        return tuple(theory.Imitation.parse(m, self.temperature) for m in self.imitations)


def _distinct_choices(field: str, values: tuple, choices: tuple, allowed: str) -> None:
    require(len(values) >= 1 and len(set(values)) == len(values), field, values, allowed)
    for v in values:
        require_choice(field, v, choices)


# ---------------------------------------------------------------------------------------------
# The program


def available_inputs(cfg: TheoremConfig) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the inputs that can be used here, {skipped input: why}); only Fashion-MNIST can be missing."""
    skipped = {}
    if "fashion" in cfg.inputs and (why := fashion.available("test")):
        skipped["fashion"] = why
    return tuple(d for d in cfg.inputs if d not in skipped), skipped


@partial(jax.jit, static_argnums=(0, 1))
def _draws(cfg: TheoremConfig, n_pool: tuple[int, ...], seed_ids):
    """Per seed: init, teacher-batch indices, the first images of its noise sets, indices into each image pool."""
    B = cfg.student_batch

    def one(i):
        subset = lambda name, n_total, n: jax.random.choice(keys.stream(cfg.seed, name, i), n_total, (n,),
                                                            replace=False)
        noise = {kind: data.noise_batch(keys.stream(cfg.seed, "noise", i), jnp.arange(B), PIXELS, kind)
                 for kind in ("uniform", "gaussian")}  # the per-seed noise set of mnist-aux (its first B images)
        pools = {name: subset(f"{name}_inputs", n, B) for name, n in zip(("mnist", "fashion"), n_pool)}
        init = cfg.spec.init(keys.stream(cfg.seed, "init", i))
        return init, subset("teacher_batch", MNIST_TRAIN, cfg.teacher_batch), noise, pools

    return jax.vmap(one)(seed_ids)


def prepare(cfg: TheoremConfig, inputs: tuple[str, ...], mnist_data, fashion_images) -> dict:
    """Inits, teacher batches and student inputs of every seed (float32; the seed streams of mnist-aux)."""
    n_pool = (len(mnist_data.test_images), len(fashion_images) if fashion_images is not None else MNIST_TEST)
    inits, t_idx, noise, pools = jax.device_get(_draws(cfg, n_pool, jnp.arange(cfg.seeds)))
    teacher_x = mnist.to_unit_range(mnist_data.train_images[t_idx])
    teacher_y = mnist_data.train_labels[t_idx].astype(np.int32)
    images = {"mnist": mnist_data.test_images, "fashion": fashion_images}
    by_input = {
        "uniform": noise["uniform"], "gaussian": noise["gaussian"],
        "zeros": np.zeros((cfg.seeds, cfg.student_batch, PIXELS), np.float32),
        **{name: mnist.to_unit_range(images[name][pools[name]]) for name in ("mnist", "fashion") if name in inputs},
    }
    x_SxDxBxI = np.stack([by_input[d] for d in inputs], axis=1).astype(np.float32)
    return {"inits": inits, "teacher_x": teacher_x, "teacher_y": teacher_y, "inputs": x_SxDxBxI}


def student_inits(cfg: TheoremConfig, inits_S):
    """[seed, lineage] student inits: ``lineage.student_init`` of each lineage, the fresh init being the init of
    the seed's donor (``lineage.donors``: a derangement, so never the seed's own)."""
    donor = lineage.donors(cfg.seed, cfg.seeds)
    fresh_S = jax.tree.map(lambda a: a[donor], inits_S)
    per_lineage = [jax.vmap(lambda t, f, text=text: lineage.student_init(text, cfg.spec, t, f))(inits_S, fresh_S)
                   for text in cfg.lineages]
    return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a], axis=1), *per_lineage)


def worlds(cfg: TheoremConfig, n_inputs: int) -> dict[str, np.ndarray]:
    """Index arrays of the worlds, ordered (seed, input, lineage), into the pool [teacher inits, student inits].

    The pool holds the S teacher inits, then the S·L student inits in (seed, lineage) order
    (``student_inits``); ``input`` indexes the S·D input sets in (seed, input) order.
    """
    S, L = cfg.seeds, len(cfg.lineages)
    s, d, l = np.meshgrid(np.arange(S), np.arange(n_inputs), np.arange(L), indexing="ij")
    s, d, l = s.ravel(), d.ravel(), l.ravel()
    return {"teacher": s.astype(np.int32), "student": (S + s * L + l).astype(np.int32),
            "input": (s * n_inputs + d).astype(np.int32)}


def compute(cfg: TheoremConfig, inputs: tuple[str, ...], mnist_data, fashion_images=None,
            batch_size: int = WORLDS_PER_BATCH) -> dict:
    """Every Theorem-1 quantity: {imitation: {quantity: [seed, input, lineage, ε] or [seed, input, lineage]}}."""
    start = time.perf_counter()
    prep = prepare(cfg, inputs, mnist_data, fashion_images)
    students = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), student_inits(cfg, prep["inits"]))
    pool = jax.tree.map(lambda t, s: np.concatenate([t, s]), prep["inits"], students)
    w = worlds(cfg, len(inputs))
    with jax.enable_x64(cfg.dtype == "float64"):
        dtype = jnp.float64 if cfg.dtype == "float64" else jnp.float32
        cast = lambda a: jnp.asarray(a, dtype)
        out = theory.population(
            cfg.spec, cfg.imitation_specs, jax.tree.map(cast, pool),
            (cast(prep["teacher_x"]), jnp.asarray(prep["teacher_y"])),
            cast(prep["inputs"].reshape(-1, cfg.student_batch, PIXELS)),
            jnp.asarray(w["teacher"]), jnp.asarray(w["student"]), jnp.asarray(w["input"]), cast(cfg.eps),
            steps=cfg.teacher_steps, alpha=cfg.alpha, batch_size=min(batch_size, len(w["teacher"])),
        )
        out = jax.tree.map(lambda a: np.asarray(a, np.float64), out)
    shape = (cfg.seeds, len(inputs), len(cfg.lineages))
    results = {m: {q: v.reshape(shape + v.shape[1:]) for q, v in by_q.items()} for m, by_q in out.items()}
    return {**results, "eps": cfg.eps, "seed": np.arange(cfg.seeds),
            "donor": lineage.donors(cfg.seed, cfg.seeds),
            "seconds": np.asarray(time.perf_counter() - start)}


# ---------------------------------------------------------------------------------------------
# Summary


def _ci(values) -> dict:
    """mean_ci over the finite values (n counts them); None for what cannot be computed."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0, "values": []}
    out = stats.mean_ci(v)
    out["ci95"] = out["ci95"] if np.isfinite(out["ci95"]) else None
    return out


def _brief(values) -> dict:
    """_ci without the per-seed values, to 4 significant digits (the per-ε curves of the figure)."""
    out = _ci(values)
    out.pop("values")
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in out.items()}


def _log_slope(eps_E, values_SxE) -> np.ndarray:
    """Per seed, the least-squares slope of log|value| against log ε (NaN unless every value is finite and nonzero)."""
    out = np.full(values_SxE.shape[0], np.nan)
    for s, v in enumerate(np.abs(values_SxE)):
        if len(v) >= 2 and np.all(np.isfinite(v)) and np.all(v > 0):
            out[s] = np.polyfit(np.log(eps_E), np.log(v), 1)[0]
    return out


def _first_flips(r: dict, eps_E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per seed: the first ε whose teacher step flips a hidden sign (NaN: never), the log-slope of the
    relative error over the ε before it)."""
    flipped = r["sign_flips"] > 0
    first_flip = np.where(flipped.any(axis=1), eps_E[np.argmax(flipped, axis=1)], np.nan)
    before = [eps_E < f if np.isfinite(f) else np.ones_like(eps_E, bool) for f in first_flip]
    slope = np.array([_log_slope(eps_E[b], r["rel_error"][s:s + 1, b])[0] if b.sum() >= 2 else np.nan
                      for s, b in enumerate(before)])
    return first_flip, slope


def summarise_cell(r: dict, eps_E: np.ndarray, small_eps: float) -> dict:
    """The statistics of one (input, imitation, lineage) cell from its per-seed arrays ``r[q]``: [seed, ε]."""
    small = eps_E <= small_eps * (1 + 1e-9)
    inner, dl = r["inner"], r["delta_loss_T"]
    zero = np.all(np.abs(r["cos"]) <= 1e-12, axis=1)  # Δθ_S ⊥ Δθ_T at every ε: the theorem's first branch
    nonneg = np.all(inner[:, small] >= 0, axis=1)
    falls = np.all(dl[:, small] < -LOSS_TOL, axis=1)
    first_flip, smooth_slope = _first_flips(r, eps_E)
    mean_rel = np.array([np.nan if (b := _brief(c))["mean"] is None else b["mean"] for c in r["rel_error"].T])
    broken = np.flatnonzero(mean_rel > 0.1)
    return {
        "per_eps": {q: [_brief(c) for c in r[q].T] for q in QUANTITIES},
        "frac_inner_nonneg": [float(np.mean(c >= 0)) for c in inner.T],
        "frac_loss_falls": [float(np.mean(c < -LOSS_TOL)) for c in dl.T],
        "small_eps": {
            "inner_nonneg": _ci(nonneg.astype(float)),
            "loss_falls": _ci(falls.astype(float)),
            "inner_zero": _ci(zero.astype(float)),
            "slope_inner": _ci(_log_slope(eps_E[small], inner[:, small])),
            "slope_rel_error": _ci(_log_slope(eps_E[small], r["rel_error"][:, small])),
        },
        "first_flip_eps": {"median": None if np.all(np.isnan(first_flip)) else float(np.nanmedian(first_flip)),
                           "values": [None if np.isnan(f) else float(f) for f in first_flip]},
        "slope_rel_error_before_flip": _ci(smooth_slope),
        "rel_error_at_eps_min": _ci(r["rel_error"][:, 0]),
        "taylor_rel_error_at_eps_min": _ci(r["taylor_rel_error"][:, 0]),
        "cos_at_eps_min": _ci(r["cos"][:, 0]),
        "cos_at_eps_max": _ci(r["cos"][:, -1]),
        "delta_loss_T_at_eps_max": _ci(dl[:, -1]),
        "breakdown_eps": float(eps_E[broken[0]]) if broken.size else None,
        "quad": _ci(r["quad"]),
        "offset": _ci(r["offset"]),
        "teacher_norm": _ci(r["teacher_norm"]),
    }


def summarise(cfg: TheoremConfig, results: dict, inputs: tuple[str, ...], skipped: dict, *, name: str,
              command: str) -> dict:
    """The JSON behind the figure: per (input, imitation, lineage) cell, per ε and at small ε."""
    eps = np.asarray(results["eps"])
    cells = {d_name: {m: {lin: summarise_cell({q: v[:, d, l] for q, v in results[m].items()}, eps, cfg.small_eps)
                          for l, lin in enumerate(cfg.lineages)}
                      for m in cfg.imitations}
             for d, d_name in enumerate(inputs)}
    return {
        "experiment": name, "schema": SCHEMA, "command": command, "n_seeds": cfg.seeds, "ci": CI,
        "eps": [float(e) for e in eps], "small_eps": cfg.small_eps, "inputs": list(inputs),
        "skipped_inputs": skipped, "imitations": list(cfg.imitations), "lineages": list(cfg.lineages),
        "cells": cells, "seconds": float(results["seconds"]), "config": config_lib.to_dict(cfg),
        "provenance": store.provenance(),
    }


def reusable(stored: dict, skipped: dict) -> bool:
    """A stored summary is served when its schema is current and no input it skipped is available now."""
    return stored.get("schema") == SCHEMA and set(stored["skipped_inputs"]) <= set(skipped)
