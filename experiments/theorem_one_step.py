"""theorem-one-step: Theorem 1 measured: one teacher GD step, one student imitation step, at init.

Run:     minisub run theorem-one-step [--preset quick|paper|test] [--seeds N] [--<field> VALUE ...]
Paper:   minisub run theorem-one-step --preset paper --out figures   (writes figures/theorem_one_step.*)
Redraw:  minisub figures theorem-one-step                           (from figures/theorem_one_step.json)

For every seed the paper's MNIST MLP is drawn at its random init θ⁰; the teacher takes one GD
step of size ε on class-logit cross-entropy of a labelled MNIST batch (Δθ_T = −∇L_T(θ⁰)); a
student at θ⁰ (shared) or at another seed's init (different, a derangement) takes one gradient
step on its imitation loss over a batch of inputs from D_S. Measured, per seed and ε: Δθ_S·Δθ_T,
its first-order prediction ε·Δθ_TᵀMΔθ_T (M = E[JᵀHJ], matrix-free), their relative error, and
the change of L_T after the student's step. Everything is float64 by default, so the relative
error can be followed down to ε = 1e-6 without rounding noise.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minisub import config as config_lib
from minisub import keys, lineage, report, stats
from minisub.mlp import data
from minisub.mlp import fashion
from minisub.mlp import mnist
from minisub.mlp import models
from minisub.run import parallel
from minisub.report import plots
from minisub.run import runner
from minisub.run import store
from minisub.theory import one_step as theory
from minisub.config import ConfigError, normalise, require, require_choice

NAME = "theorem-one-step"
STEM = "theorem_one_step"
ORDER = 20  # its place in figures/README.md

INPUTS = ("uniform", "gaussian", "mnist", "zeros", "fashion")
INPUT_LABELS = {"uniform": "uniform noise [−1, 1]", "gaussian": "Gaussian noise N(0, 1)",
                "mnist": "MNIST test images", "zeros": "constant input (zeros)", "fashion": "Fashion-MNIST test images"}
LINEAGES = ("shared", "different")
DTYPES = ("float64", "float32")
MNIST_TRAIN, MNIST_TEST, PIXELS = 60_000, 10_000, 784
SCHEMA = 1  # of summary.json: a stored run with another schema is recomputed, not served
WORLDS_PER_BATCH = 4  # worlds vmapped at once inside the one jitted call (memory, not science)
QUANTITIES = ("inner", "predicted", "rel_error", "taylor_rel_error", "direction_rel_error", "cos",
              "delta_loss_T", "delta_loss_T_linear", "student_norm", "sign_flips")
LOSS_TOL = 1e-12  # L_T "falls" when it drops by more than this (float64 rounding of L_T ≈ 2.3 is ~1e-16)


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
        require(len(self.inputs) >= 1 and len(set(self.inputs)) == len(self.inputs), "inputs", self.inputs,
                "one or more distinct input distributions")
        for name in self.inputs:
            require_choice("inputs", name, INPUTS)
        require(len(self.imitations) >= 1 and len(set(self.imitations)) == len(self.imitations), "imitations",
                self.imitations, "one or more distinct LOSS-OUTPUTS pairs")
        for text in self.imitations:
            loss, _, outputs = text.partition("-")
            require(loss in theory.LOSSES and outputs in theory.OUTPUTS, "imitations", text,
                    f"LOSS-OUTPUTS with LOSS in {theory.LOSSES} and OUTPUTS in {theory.OUTPUTS}, e.g. 'kl-aux'")
        require(self.temperature > 0, "temperature", self.temperature, "a number > 0")
        require(len(self.lineages) >= 1 and len(set(self.lineages)) == len(self.lineages), "lineages",
                self.lineages, "one or more distinct lineages")
        for name in self.lineages:
            require_choice("lineages", name, LINEAGES)
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


PRESETS = {
    # 8 seeds, ε over 5 decades: a couple of minutes on 2 CPU cores.
    "quick": TheoremConfig(),
    # 32 seeds, ε over 6 decades, larger batches.
    "paper": TheoremConfig(seeds=32, eps_min=1e-6, n_eps=13, teacher_batch=512, student_batch=256),
    # A tiny net for tests: seconds.
    "test": TheoremConfig(seeds=3, hidden=(32,), n_eps=9, teacher_batch=64, student_batch=16),
}
DEFAULT_PRESET = "quick"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"


# ---------------------------------------------------------------------------------------------
# Compute


def available_inputs(cfg: TheoremConfig) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the inputs that can be used here, {skipped input: why}); only Fashion-MNIST can be missing."""
    skipped = {}
    if "fashion" in cfg.inputs and (why := fashion.available("test")):
        skipped["fashion"] = why
    return tuple(d for d in cfg.inputs if d not in skipped), skipped


def donors(cfg: TheoremConfig) -> np.ndarray:
    """``donor[i]``: whose init a 'different' student of seed ``i`` starts from (a derangement, as pipeline.donors)."""
    return lineage.donors(cfg.seed, cfg.seeds, "donor")


def _stream(cfg: TheoremConfig, name: str, i):
    return keys.member(keys.branch(keys.root(cfg.seed), name), i)


@partial(jax.jit, static_argnums=(0, 1))
def _draws(cfg: TheoremConfig, n_pool: tuple[int, ...], seed_ids):
    """Per seed: init, teacher-batch indices, the first images of its noise sets, indices into each image pool."""
    B = cfg.student_batch

    def one(i):
        subset = lambda name, n_total, n: jax.random.choice(_stream(cfg, name, i), n_total, (n,), replace=False)
        noise = {kind: data.noise_batch(_stream(cfg, "noise", i), jnp.arange(B), PIXELS, kind)
                 for kind in ("uniform", "gaussian")}  # the per-seed noise set of mnist-aux (its first B images)
        pools = {name: subset(f"{name}_inputs", n, B) for name, n in zip(("mnist", "fashion"), n_pool)}
        init = cfg.spec.init(_stream(cfg, "init", i))
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


def worlds(cfg: TheoremConfig, n_inputs: int) -> dict[str, np.ndarray]:
    """Index arrays of the worlds, ordered (seed, input, lineage): teacher init, student init, input set."""
    donor = donors(cfg)
    s, d, l = np.meshgrid(np.arange(cfg.seeds), np.arange(n_inputs), np.arange(len(cfg.lineages)), indexing="ij")
    s, d, l = s.ravel(), d.ravel(), l.ravel()
    shared = np.asarray([cfg.lineages[k] == "shared" for k in l])
    return {"teacher": s.astype(np.int32), "student": np.where(shared, s, donor[s]).astype(np.int32),
            "input": (s * n_inputs + d).astype(np.int32)}


def compute(cfg: TheoremConfig, inputs: tuple[str, ...], mnist_data, fashion_images=None,
            batch_size: int = WORLDS_PER_BATCH) -> dict:
    """Every Theorem-1 quantity: {imitation: {quantity: [seed, input, lineage, ε] or [seed, input, lineage]}}."""
    start = time.perf_counter()
    prep = prepare(cfg, inputs, mnist_data, fashion_images)
    w = worlds(cfg, len(inputs))
    with jax.enable_x64(cfg.dtype == "float64"):
        dtype = jnp.float64 if cfg.dtype == "float64" else jnp.float32
        cast = lambda a: jnp.asarray(a, dtype)
        out = theory.population(
            cfg.spec, cfg.imitation_specs, jax.tree.map(cast, prep["inits"]),
            (cast(prep["teacher_x"]), jnp.asarray(prep["teacher_y"])),
            cast(prep["inputs"].reshape(-1, cfg.student_batch, PIXELS)),
            jnp.asarray(w["teacher"]), jnp.asarray(w["student"]), jnp.asarray(w["input"]), cast(cfg.eps),
            steps=cfg.teacher_steps, alpha=cfg.alpha, batch_size=min(batch_size, len(w["teacher"])),
        )
        out = jax.tree.map(lambda a: np.asarray(a, np.float64), out)
    shape = (cfg.seeds, len(inputs), len(cfg.lineages))
    results = {m: {q: v.reshape(shape + v.shape[1:]) for q, v in by_q.items()} for m, by_q in out.items()}
    return {
        **results,
        "eps": cfg.eps,
        "seed": np.arange(cfg.seeds),
        "donor": donors(cfg),
        "seconds": np.asarray(time.perf_counter() - start),
    }


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


def summarise_cell(r: dict, eps_E: np.ndarray, small_eps: float) -> dict:
    """The statistics of one (input, imitation, lineage) cell from its per-seed arrays ``r[q]``: [seed, ε]."""
    small = eps_E <= small_eps * (1 + 1e-9)
    inner, dl = r["inner"], r["delta_loss_T"]
    zero = np.all(np.abs(r["cos"]) <= 1e-12, axis=1)  # Δθ_S ⊥ Δθ_T at every ε: the theorem's first branch
    nonneg = np.all(inner[:, small] >= 0, axis=1)
    falls = np.all(dl[:, small] < -LOSS_TOL, axis=1)
    flipped = r["sign_flips"] > 0
    first_flip = np.where(flipped.any(axis=1), eps_E[np.argmax(flipped, axis=1)], np.nan)
    before = [eps_E < f if np.isfinite(f) else np.ones_like(eps_E, bool) for f in first_flip]
    smooth_slope = np.array([_log_slope(eps_E[b], r["rel_error"][s:s + 1, b])[0] if b.sum() >= 2 else np.nan
                             for s, b in enumerate(before)])
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


def summarise(cfg: TheoremConfig, results: dict, command: str, inputs: tuple[str, ...], skipped: dict) -> dict:
    """The JSON behind the figure: per (input, imitation, lineage) cell, per ε and at small ε."""
    eps = np.asarray(results["eps"])
    cells = {
        d_name: {
            m: {
                lin: summarise_cell({q: v[:, d, l] for q, v in results[m].items()}, eps, cfg.small_eps)
                for l, lin in enumerate(cfg.lineages)
            }
            for m in cfg.imitations
        }
        for d, d_name in enumerate(inputs)
    }
    return {
        "experiment": NAME,
        "schema": SCHEMA,
        "command": command,
        "n_seeds": cfg.seeds,
        "ci": "95% normal CI over seeds: 1.96 * sample std / sqrt(n)",
        "eps": [float(e) for e in eps],
        "small_eps": cfg.small_eps,
        "inputs": list(inputs),
        "skipped_inputs": skipped,
        "imitations": list(cfg.imitations),
        "lineages": list(cfg.lineages),
        "cells": cells,
        "seconds": float(results["seconds"]),
        "config": config_lib.to_dict(cfg),
        "provenance": store.provenance(),
    }


def run(cfg: TheoremConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict, Path]:
    """Measure (or load from the results store); (summary, run directory)."""
    ex = execution or runner.Execution(experiment=NAME)
    directory = store.run_dir(NAME, cfg)
    inputs, skipped = available_inputs(cfg)
    done = None if ex.force else store.load_complete(directory)
    if done and done[1].get("schema") == SCHEMA and set(done[1]["skipped_inputs"]) <= set(skipped):
        return done[1], directory
    if not ex.compute:
        raise ConfigError(f"{NAME} has no shards to merge: run it with `minisub run {NAME}`")
    if parallel.is_writer():
        store.write_json(directory / "config.json", {"config": config_lib.to_dict(cfg), **store.provenance()})
    mnist_data = mnist.load_cached()
    fashion_images = fashion.load("test")[0] if "fashion" in inputs else None
    if ex.progress:
        print(f"{NAME}: {cfg.seeds} seeds x {len(inputs)} inputs x {len(cfg.lineages)} inits x "
              f"{len(cfg.imitations)} imitations x {cfg.n_eps} step sizes, one jitted call ({cfg.dtype})", flush=True)
    results = compute(cfg, inputs, mnist_data, fashion_images, batch_size=ex.block or WORLDS_PER_BATCH)
    summary = summarise(cfg, results, command, inputs, skipped)
    if parallel.is_writer():
        store.finish(directory, results, summary)
    return summary, directory


# ---------------------------------------------------------------------------------------------
# Outputs


def _pm(s: dict, fmt: str = ".2g") -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:{fmt}}" + (f" ± {s['ci95']:{fmt}}" if s.get("ci95") is not None else "")


def _eps(value) -> str:
    return "never" if value is None else f"{value:.2g}"


def _frac(s: dict) -> str:
    return "n/a" if s["mean"] is None else f"{round(s['mean'] * s['n'])}/{s['n']}"


def table(summary: dict) -> str:
    """A Markdown table: one row per (input, imitation, init)."""
    e_min, e_max, small = summary["eps"][0], summary["eps"][-1], summary["small_eps"]
    rows = [
        f"| D_S | imitation | init | inner ≥ 0 (ε ≤ {small:g}) | slope log\\|inner\\| | rel. err. at ε = {e_min:g} "
        f"| slope log rel. err. | ε with mean rel. err. > 0.1 | cos at ε = {e_min:g} | L_T falls by > {LOSS_TOL:g} (ε ≤ {small:g}) "
        f"| ΔL_T at ε = {e_max:g} | first sign flip ε (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d, by_m in summary["cells"].items():
        for m, by_l in by_m.items():
            for lin, c in by_l.items():
                se = c["small_eps"]
                zero = " (≡ 0)" if se["inner_zero"]["mean"] == 1.0 else ""
                rows.append(
                    f"| {d} | {m} | {lin} | {_frac(se['inner_nonneg'])}{zero} | {_pm(se['slope_inner'], '.3f')} "
                    f"| {_pm(c['rel_error_at_eps_min'])} | {_pm(se['slope_rel_error'], '.3f')} "
                    f"| {_eps(c['breakdown_eps'])} "
                    f"| {_pm(c['cos_at_eps_min'])} | {_frac(se['loss_falls'])} | {_pm(c['delta_loss_T_at_eps_max'])} "
                    f"| {_eps(c['first_flip_eps']['median'])} |"
                )
    if summary["skipped_inputs"]:
        rows += ["", "Skipped: " + "; ".join(f"{k} ({v.split('.')[0]})" for k, v in summary["skipped_inputs"].items())]
    return "\n".join(rows)


def _band(ax, x, stats_E, color, ls, label=None, transform=lambda v: v, marker=None):
    """Mean line and 95% CI band of per-ε statistics; nothing when there is nothing to draw on a log axis."""
    mean = np.array([np.nan if s["mean"] is None else transform(s["mean"]) for s in stats_E], float)
    ci = np.array([np.nan if s["ci95"] is None else s["ci95"] for s in stats_E], float)
    log = ax.get_yscale() == "log"
    if log and not np.any(mean > 0):
        return
    ax.plot(x, np.where(mean > 0, mean, np.nan) if log else mean, ls=ls, color=color, lw=1.2, marker=marker, ms=2.5,
            label=label)
    lo, hi = mean - ci, mean + ci
    if log:
        lo = np.where(lo > 0, lo, np.nan)
    ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)


def _symlog_ticks(ax, linthresh: float) -> None:
    """Sparse ticks on a symlog axis: 0 and ±10^k every third decade above ``linthresh``."""
    lo, hi = ax.get_ylim()
    top = int(np.ceil(np.log10(max(abs(lo), abs(hi), linthresh * 10))))
    decades = [10.0**k for k in range(int(np.log10(linthresh)) + 1, top + 1, 3)]
    ticks = sorted([-d for d in decades if -d >= lo] + [0.0] + [d for d in decades if d <= hi])
    ax.set_yticks(ticks, [f"{t:.0e}".replace("e+0", "e").replace("e-0", "e-") if t else "0" for t in ticks])


def figure(summary: dict, out_dir: Path) -> list[Path]:
    """Per D_S (rows): |Δθ_S·Δθ_T| vs ε with its first-order prediction, the relative error, ΔL_T; PNG + PDF."""
    inputs, imitations = summary["inputs"], summary["imitations"]
    eps = np.asarray(summary["eps"])
    linthresh = 1e-9
    fig, axes = plots.figure(10.0, 2.1 * len(inputs) + 1.2, nrows=len(inputs), ncols=3, squeeze=False,
                             layout="constrained")
    styles = {"shared": "-", "different": "--"}
    for row, d in enumerate(inputs):
        ax_i, ax_r, ax_l = axes[row]
        for ax in (ax_i, ax_r):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax_l.set_xscale("log")
        ax_l.set_yscale("symlog", linthresh=linthresh)
        for k, m in enumerate(imitations):
            color = plots.PALETTE[k % len(plots.PALETTE)]
            for lin, c in summary["cells"][d][m].items():
                pe, ls = c["per_eps"], styles.get(lin, ":")
                label = f"{m}, {lin} init" if row == 0 else None
                _band(ax_i, eps, pe["inner"], color, ls, label, transform=abs, marker="o" if lin == "shared" else None)
                if lin == "shared":
                    _band(ax_i, eps, pe["predicted"], "black", ":")
                _band(ax_r, eps, pe["rel_error"], color, ls)
                _band(ax_l, eps, pe["delta_loss_T"], color, ls)
        ax_r.axhline(0.1, color="grey", lw=0.6, ls=":")
        flip = next(iter(next(iter(summary["cells"][d].values())).values()))["first_flip_eps"]["median"]
        if flip is not None:  # the teacher is the same for every cell of an input: so is its first sign flip
            for ax in (ax_i, ax_r):
                ax.axvline(flip, color="grey", lw=0.8, ls="-.", label="teacher's first hidden sign flip (median)"
                           if row == 0 and ax is ax_r else None)
        ax_l.axhline(0.0, color="grey", lw=0.6)
        _symlog_ticks(ax_l, linthresh)
        ax_i.set_ylabel(f"{INPUT_LABELS.get(d, d)}\n|Δθ_S·Δθ_T|")
        ax_r.set_ylabel("relative error")
        ax_l.set_ylabel("ΔL_T")
        if row == len(inputs) - 1:
            for ax in (ax_i, ax_r, ax_l):
                ax.set_xlabel("teacher step size ε")
    axes[0][0].plot([], [], ":", color="black", label="shared: first-order prediction ε·Δθ_TᵀMΔθ_T")
    axes[0][0].set_title("inner product (mean of |·|)")
    axes[0][1].set_title("|inner − prediction| / |prediction|")
    axes[0][2].set_title(f"L_T(θ_S⁰ + αΔθ_S) − L_T(θ_S⁰), α = {summary['config']['alpha']:g}")
    fig.legend(loc="outside lower center", ncol=4, frameon=False, fontsize=7)
    fig.suptitle(f"Theorem 1, one step at init: n = {summary['n_seeds']} seeds per point; lines: mean; bands: 95% "
                 f"normal CI over seeds (1.96·s/√n); solid: shared init; dashed: different init", fontsize=8)
    return plots.save(fig, Path(out_dir) / STEM)




def _cells(summary: dict, lineage_name: str):
    for d, by_m in summary["cells"].items():
        for m, by_l in by_m.items():
            if lineage_name in by_l:
                yield d, m, by_l[lineage_name]


def _same_for_both_inits(summary: dict, d: str) -> bool:
    """True when, on input ``d``, shared and different students measured the same inner products for every imitation."""
    by_m = summary["cells"][d]
    if not all({"shared", "different"} <= set(by_l) for by_l in by_m.values()):
        return False
    values = lambda c: np.array([np.nan if s["mean"] is None else s["mean"] for s in c["per_eps"]["inner"]])
    return all(np.allclose(values(by_l["shared"]), values(by_l["different"]), rtol=1e-9, atol=0, equal_nan=True)
               for by_l in by_m.values())


def findings(summary: dict) -> list[str]:
    """What held, in numbers, computed from the summary (never assumed)."""
    small, n, e_min = summary["small_eps"], summary["n_seeds"], summary["eps"][0]
    lines = []
    shared = list(_cells(summary, "shared"))
    if shared:
        zero = [(d, m) for d, m, c in shared if c["small_eps"]["inner_zero"]["mean"] == 1.0]
        live = [(d, m, c) for d, m, c in shared if (d, m) not in zero]
        ok = [(d, m) for d, m, c in live if c["small_eps"]["inner_nonneg"]["mean"] == 1.0]
        bad = [f"{d}/{m} ({_frac(c['small_eps']['inner_nonneg'])})" for d, m, c in live if (d, m) not in ok]
        lines.append(
            f"Shared init: Δθ_S·Δθ_T ≥ 0 at every ε ≤ {small:g} for all {n} seeds in {len(ok)} of {len(live)} "
            f"(D_S, imitation) cells with a nonzero inner product" + (f"; exceptions: {', '.join(bad)}" if bad else "")
            + (". Identically zero for every seed and ε (Δθ_S ⊥ Δθ_T, the theorem's other branch): "
               + ", ".join(f"{d}/{m}" for d, m in zero) if zero else "") + "."
        )
        smooth = [(d, m, c) for d, m, c in live if c["breakdown_eps"] != e_min]
        rough = [(d, m, c) for d, m, c in live if c["breakdown_eps"] == e_min]
        rel = [_dig(c, "rel_error_at_eps_min", "mean") for d, m, c in smooth]
        slopes = [_dig(c, "small_eps", "slope_inner", "mean") for d, m, c in smooth]
        rslopes = [_dig(c, "small_eps", "slope_rel_error", "mean") for d, m, c in smooth]
        if smooth:
            lines.append(
                f"First-order prediction ε·Δθ_TᵀMΔθ_T, shared init, {len(smooth)} cells: relative error at "
                f"ε = {e_min:g} from {_min(rel):.1e} to {_max(rel):.1e} (mean over seeds); log–log slope of the inner "
                f"product against ε for ε ≤ {small:g} from {_min(slopes):.3f} to {_max(slopes):.3f} (1 predicted); "
                f"log–log slope of the relative error from {_min(rslopes):.2f} to {_max(rslopes):.2f} (1 for a smooth "
                f"network: the error is O(ε) relative)."
            )
        if rough:
            lines.append(
                "Not first order even at the smallest ε (mean relative error > 0.1 at ε = "
                f"{e_min:g}): "
                + ", ".join(f"{d}/{m} ({_dig(c, 'rel_error_at_eps_min', 'mean'):.2f})" for d, m, c in rough)
                + (". With a zero input and zero biases every hidden unit sits exactly on ReLU's kink: the teacher's "
                   "step moves the outputs by one-sided derivatives that the Jacobian (relu′(0) = 0) does not contain"
                   if any(d == "zeros" for d, m, c in rough) else "") + "."
            )
        breaks = [f"{d}/{m} {_eps(c['breakdown_eps'])}" for d, m, c in smooth]
        lines.append(f"Smallest ε at which the mean relative error exceeds 0.1 (shared): {', '.join(breaks)}.")
        flips = {d: c["first_flip_eps"]["median"] for d, m, c in live}
        before = [_dig(c, "slope_rel_error_before_flip", "mean") for d, m, c in smooth]
        lines.append(
            "The teacher's step first flips the sign of a hidden pre-activation on x_S (a ReLU kink crossed) at a "
            "median ε of " + ", ".join(f"{_eps(f)} ({d})" for d, f in flips.items())
            + f"; the relative error jumps there, and before it its log–log slope is {_min(before):.2f} to "
            f"{_max(before):.2f} (mean over seeds per cell, 1 for the smooth O(ε) term; from as few as 2 points)."
        )
        falls = [(d, m) for d, m, c in live if c["small_eps"]["loss_falls"]["mean"] == 1.0]
        rises = [f"{d}/{m}" for d, m, c in live if _dig(c, "delta_loss_T_at_eps_max", "mean") is not None
                 and _dig(c, "delta_loss_T_at_eps_max", "mean") > 0]
        lines.append(
            f"L_T falls after the student's step (α = {summary['config']['alpha']:g}) at every ε ≤ {small:g} for all "
            f"seeds in {len(falls)} of {len(live)} nonzero shared cells"
            + (f"; at ε = {summary['eps'][-1]:g} it rises on average in {', '.join(rises)}" if rises else "") + "."
        )
    same = [d for d in summary["inputs"] if _same_for_both_inits(summary, d)]
    diff = [(d, m, c) for d, m, c in _cells(summary, "different") if d not in same]
    if diff:
        fr = [c["small_eps"]["inner_nonneg"]["mean"] for d, m, c in diff]
        pooled = np.concatenate([np.asarray(c["small_eps"]["inner_nonneg"]["values"]) for d, m, c in diff])
        rel = [_dig(c, "rel_error_at_eps_min", "mean") for d, m, c in diff]
        offset = [abs(v) for d, m, c in diff if (v := _dig(c, "offset", "mean")) is not None]
        cos = [abs(v) for d, m, c in diff if (v := _dig(c, "cos_at_eps_min", "mean")) is not None]
        taylor = [_dig(c, "taylor_rel_error_at_eps_min", "mean") for d, m, c in diff]
        falls = np.concatenate([np.asarray(c["small_eps"]["loss_falls"]["values"]) for d, m, c in diff])
        lines.append(
            f"Different init ({len(diff)} cells): Δθ_S·Δθ_T ≥ 0 at every ε ≤ {small:g} in {pooled.mean():.0%} of "
            f"seed × cell pairs (per cell {min(fr):.2f} to {max(fr):.2f}). It tends to an offset as ε → 0 (mean "
            f"|offset| per cell {_min(offset):.1e} to {_max(offset):.1e}), so its relative error against "
            f"ε·Δθ_TᵀMΔθ_T at ε = {e_min:g} is {_min(rel):.1e} to {_max(rel):.1e}, while the expansion around the "
            f"student's own init, offset + ε·Δθ_TᵀE[J_SᵀHJ_T]Δθ_T, is off by {_min(taylor):.1e} to {_max(taylor):.1e} "
            f"in its O(ε) part; mean cos(Δθ_S, Δθ_T) at ε = {e_min:g} at most "
            f"{_max(cos):.2f} in absolute value; L_T falls at every small ε in {falls.mean():.0%} of seed × cell pairs."
        )
    if same:
        lines.append(f"On {', '.join(same)} the shared and different students measured identical inner products: on "
                     "that input the student's outputs and Jacobian do not depend on its init.")
    if summary["skipped_inputs"]:
        lines.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in summary["skipped_inputs"].items()))
    return lines


def _dig(c: dict, *path):
    for p in path:
        c = c[p]
    return c


def _min(values) -> float:
    v = [x for x in values if x is not None]
    return min(v) if v else float("nan")


def _max(values) -> float:
    v = [x for x in values if x is not None]
    return max(v) if v else float("nan")


def readme(summary: dict) -> str:
    """The figures/README.md section: figure, what held in numbers, the table, how to regenerate."""
    cfg = summary["config"]
    widths = "-".join(str(w) for w in (784, *cfg["hidden"], 10 + cfg["n_aux"]))
    return "\n".join([
        *report.section_head(NAME, STEM, "Theorem 1, one step at init", summary["n_seeds"]),
        f"MLP {widths} at its random init (W ~ N(0, 1/fan_in), biases 0), {cfg['dtype']}. Teacher: "
        f"{cfg['teacher_steps']} GD step(s) of size ε on class-logit cross-entropy of {cfg['teacher_batch']} labelled "
        f"MNIST training images; student: one gradient step on its imitation loss over {cfg['student_batch']} inputs "
        f"from D_S, starting at the teacher's init (shared) or another seed's (different, a derangement). "
        f"ε from {summary['eps'][0]:g} to {summary['eps'][-1]:g} ({len(summary['eps'])} log-spaced values). "
        f"First-order prediction ε·Δθ_TᵀMΔθ_T with M = E[JᵀHJ], computed matrix-free (jvp/vjp). CI: 1.96·std/√n.",
        "",
        *[f"- {line}" for line in findings(summary)],
        "",
        table(summary),
        "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
