"""mnist-trajectories: the mnist-aux runs followed step by step: alignment, geometry, projection.

Run:     minisub run mnist-trajectories [--preset quick|paper|test] [--seeds N] [--<field> VALUE ...]
Paper:   minisub run mnist-trajectories --preset paper --out figures   (writes figures/mnist_trajectories.*)
Redraw:  minisub figures mnist-trajectories                          (from figures/mnist_trajectories.json)

Command-line fields: seeds, seed, variants (e.g. --variants adam,sgd,sgd+projection), sgd_lr,
trace_every, trait_batch, n_probe, n_aligned; the recipe itself (widths, data, epochs, rates) is
the preset's.

Beyond Theorem 1 (issue 4, parts 3–5). Every *variant* is the published mnist-aux recipe with one
student optimiser ('adam': Adam 3e-4 as published; 'sgd': plain SGD at ``sgd_lr``) and optionally
the trait projection ('+projection': each student update loses its component along −∇L_T when
it has one). Every ``trace_every``-th student step the pipeline records, per arm (shared/different
init × aux/all logits): cos(∇L_distill, ∇L_T) with L_T the teacher's task loss on a real labelled
MNIST batch evaluated at the student, cos(update, −∇L_T), ‖θ_S − θ_T‖, ‖θ_S − θ_S⁰‖,
cos(θ_S − θ_S⁰, θ_T − θ_T⁰), KL(teacher ‖ student) on held-out test images, and their accuracy.
Each variant is an ordinary cached, resumable mnist-aux-style run of its own
(``results/mnist-trajectories/<variant>/<run-id>``); the summary combines them. Teachers are the
same in every variant (same seeds, same recipe), so variant contrasts are paired by seed.

Permutation-aware distances (part 4) need no training: for ``n_aligned`` seeds the teacher's init
and the init the cross-model student starts from are rebuilt from their keys and compared raw and
after weight matching (``minisub.mlp.permutation``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minisub import config as config_lib
from minisub import keys, report, stats, train
from minisub.mlp import mnist
from minisub.run import parallel
from minisub.mlp import permutation
from minisub.mlp import pipeline
from minisub.report import plots
from minisub.run import runner
from minisub.run import store
from minisub.config import normalise, require, require_choice

NAME = "mnist-trajectories"
STEM = "mnist_trajectories"
ORDER = 30  # its place in figures/README.md
SCHEMA = 2  # of the combined summary: a stored summary with another schema is recomputed from the variants
PROJECTION = "projection"
VARIANT_HELP = "OPTIMIZER or OPTIMIZER+projection with OPTIMIZER in ('adam', 'sgd'), e.g. 'adam+projection'"
TRACE = ("grad_cos", "update_trait_cos", "dist_teacher", "travel", "update_cos", "function_kl", "probe_accuracy")
CURVES = (*TRACE, "dist_teacher_rel")  # dist_teacher_rel: ‖θ_S − θ_T‖ / its value at step 0, per seed
ALIGNMENT = ("grad_cos", "update_trait_cos")
CI = "95% normal CI over seeds: 1.96 * sample std / sqrt(n)"
SGD_LR_NOTE = (
    "SGD's rate was tuned on the distillation loss only (never on the trait): on the paper's widths (1 seed, "
    "8192 training and noise images, teacher 3 epochs at Adam 1e-3, shared-init students 4 epochs of batch 1024), "
    "the aux student's last-epoch KL was 4.7e-3, 4.3e-3, 3.6e-3 at lr 0.03, 0.1, 0.3, rose above its start at 1 "
    "and diverged at 10 (Adam 3e-4: 8.6e-4); over 12 epochs lr 0.3 stayed stable (2.0e-3).")


def parse_variant(text: str) -> tuple[str, bool]:
    """'adam' -> ('adam', False); 'sgd+projection' -> ('sgd', True); anything else is a ConfigError."""
    opt, plus, rest = text.partition("+")
    require(opt in train.OPTIMIZERS and (not plus or rest == PROJECTION), "variants", text, VARIANT_HELP)
    return opt, bool(plus)


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
    """The variants to trace and how; ``recipe`` holds everything else (the published one by default).

    The recipe's seeds, seed, trace_every, trait_batch and n_probe are set from this config's
    fields (so ``--seeds`` etc. work from the command line); its student_lr is Adam's.
    """

    seeds: int = 8
    seed: int = 0
    variants: tuple[str, ...] = ("adam", "sgd", "adam+projection")
    sgd_lr: float = 0.3  # the best last-epoch distillation loss on a log grid; 1.0 diverges (see SGD_LR_NOTE)
    trace_every: int = 5
    trait_batch: int = 1024
    n_probe: int = 1000
    n_aligned: int = 4
    recipe: pipeline.AuxConfig = pipeline.AuxConfig()

    def __post_init__(self):
        normalise(self)
        self.validate()
        object.__setattr__(self, "recipe", dataclasses.replace(
            self.recipe, seeds=self.seeds, seed=self.seed, trace_every=self.trace_every,
            trait_batch=self.trait_batch, n_probe=self.n_probe))

    def validate(self) -> None:
        require(self.seeds >= 1, "seeds", self.seeds, "an integer >= 1")
        require(len(self.variants) >= 1 and len(set(self.variants)) == len(self.variants), "variants",
                self.variants, "one or more distinct variants, each " + VARIANT_HELP)
        for v in self.variants:
            parse_variant(v)
        require(self.sgd_lr > 0, "sgd_lr", self.sgd_lr, "a number > 0")
        require(self.trace_every >= 1, "trace_every", self.trace_every, "an integer >= 1 (student steps)")
        require(self.trait_batch >= 1, "trait_batch", self.trait_batch, "an integer >= 1")
        require(1 <= self.n_probe <= self.recipe.n_test, "n_probe", self.n_probe,
                f"in [1, recipe.n_test={self.recipe.n_test}]")
        require(0 <= self.n_aligned <= self.seeds, "n_aligned", self.n_aligned, f"in [0, seeds={self.seeds}]")
        if self.n_aligned:
            require(self.seeds >= 2, "seeds", self.seeds, ">= 2 when n_aligned > 0 (an init needs another seed's)")
        require(isinstance(self.recipe, pipeline.AuxConfig), "recipe", self.recipe, "a pipeline.AuxConfig")
        require_choice("recipe.student_optimizer", self.recipe.student_optimizer, ("adam",))
        require_choice("recipe.projection", self.recipe.projection, ("none",))

    def variant(self, name: str) -> pipeline.AuxConfig:
        """The AuxConfig of variant ``name``: the recipe with its student optimiser, rate and projection."""
        opt, projected = parse_variant(name)
        return dataclasses.replace(self.recipe, student_optimizer=opt,
                                   student_lr=self.recipe.student_lr if opt == "adam" else self.sgd_lr,
                                   projection="trait" if projected else "none")

    @property
    def arm_names(self) -> tuple[str, ...]:
        return self.recipe.arm_names


PRESETS = {
    # The published recipe, 20 seeds, three variants.
    "paper": TrajectoryConfig(seeds=20),
    # The same on 8 seeds.
    "quick": TrajectoryConfig(seeds=8),
    # A tiny world on a real-MNIST subset, for tests: seconds per variant.
    "test": TrajectoryConfig(
        seeds=3, trace_every=2, trait_batch=128, n_probe=256, n_aligned=3,
        recipe=pipeline.AuxConfig(
            hidden=(32,), n_train=2048, n_noise=2048, n_test=1000, teacher_epochs=2, student_epochs=2,
            teacher_batch=256, student_batch=256, teacher_lr=3e-3, student_lr=3e-3),
    ),
}
DEFAULT_PRESET = "quick"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"


# ---------------------------------------------------------------------------------------------
# Compute


def variant_dir(name: str, vcfg: pipeline.AuxConfig) -> Path:
    return store.run_dir(f"{NAME}/{name}", vcfg)


def run_variant(name: str, vcfg: pipeline.AuxConfig, ex: runner.Execution) -> tuple[dict | None, Path]:
    """One variant's raw results (trained, or loaded from its own store directory); None while shards remain."""
    directory = variant_dir(name, vcfg)
    if not ex.force and (done := store.load_complete(directory)):
        return done[0], directory
    if ex.compute and parallel.is_writer():
        store.write_json(directory / "config.json", {"config": config_lib.to_dict(vcfg), **store.provenance()})
    results = runner.run(vcfg, mnist.load_cached() if ex.compute else None, directory,
                         execution=dataclasses.replace(ex, experiment=f"{NAME}/{name}"))
    if results is not None and parallel.is_writer():
        store.finish(directory, results, summarise_variant(vcfg, results))
    return results, directory


def _pure_layers(params) -> dict[str, dict[str, np.ndarray]]:
    """{'hidden.0': {'kernel', 'bias'}, ..., 'head': {...}} as numpy."""
    pure = nnx.to_pure_dict(params)
    out = {f"hidden.{k}": pure["hidden"][k] for k in sorted(pure["hidden"], key=int)}
    out["head"] = pure["head"]
    return {name: {k: np.asarray(v, np.float64) for k, v in layer.items()} for name, layer in out.items()}


def _layer_distances(a, b) -> dict[str, float]:
    la, lb = _pure_layers(a), _pure_layers(b)
    per = {name: float(np.sqrt(sum(np.sum((la[name][k] - lb[name][k]) ** 2) for k in la[name]))) for name in la}
    per["total"] = float(np.sqrt(sum(v**2 for v in per.values())))
    return per


def init_distances(cfg: TrajectoryConfig) -> dict:
    """Raw and weight-matched ‖θ_T⁰ − θ_X⁰‖ for the first ``n_aligned`` seeds; no training.

    θ_T⁰ is seed i's init (the teacher's and the shared students'); θ_X⁰ that of seed donor[i],
    where the cross-model students start (``pipeline.init_population`` rebuilds both from their
    keys). Control: a copy of θ_T⁰ with its hidden units randomly permuted (raw > 0, matched = 0).
    Returns {'seed', 'donor', 'raw'/'aligned'/'control_raw'/'control_aligned': {layer: [n]}}.
    """
    n, recipe = cfg.n_aligned, cfg.recipe
    out = {"seed": np.arange(n), "donor": pipeline.donors(recipe)[:n].astype(np.int64)}
    if n == 0:
        return out
    ids, donor = jnp.asarray(out["seed"], jnp.int32), jnp.asarray(out["donor"], jnp.int32)
    teacher_init = jax.device_get(pipeline.init_population(recipe, ids, donor)["teacher_init"])
    other_init = jax.device_get(pipeline.init_population(recipe, donor, donor)["teacher_init"])
    rows = {q: [] for q in ("raw", "aligned", "control_raw", "control_aligned")}
    for i in range(n):
        a = jax.tree.map(lambda x: x[i], teacher_init)
        b = jax.tree.map(lambda x: x[i], other_init)
        control = permutation.permute_hidden(
            a, permutation.random_permutations(keys.member(keys.branch(keys.root(cfg.seed), "control_perm"), i), a))
        rows["raw"].append(_layer_distances(a, b))
        rows["aligned"].append(_layer_distances(a, permutation.align(a, b)))
        rows["control_raw"].append(_layer_distances(a, control))
        rows["control_aligned"].append(_layer_distances(a, permutation.align(a, control)))
    for q, per_seed in rows.items():
        out[q] = {layer: np.array([r[layer] for r in per_seed]) for layer in per_seed[0]}
    return out


TRAINED_PAIRS = {  # (reference, other): the other network is weight-matched onto the reference
    "teacher_vs_cross_start": ("teacher", "cross_init"),
    "teacher_vs_cross_aux": ("teacher", "cross_aux"),
    "teacher_vs_cross_all": ("teacher", "cross_all"),
    "teacher_vs_student_aux": ("teacher", "student_aux"),
    "cross_aux_vs_its_init": ("cross_aux", "cross_init"),
}


def trained_distances(cfg: TrajectoryConfig, variant: str = "adam") -> dict:
    """Raw and weight-matched distances between trained teachers, students and inits.

    Retrains the first ``n_aligned`` worlds of ``variant`` (the same keys, so the same networks
    as the stored run) keeping their final weights. Returns {pair: {'raw'|'aligned': {layer: [n]}}}.
    """
    n = cfg.n_aligned
    if n == 0:
        return {}
    vcfg = cfg.variant(variant)
    out = runner.run_block(vcfg, np.arange(n), pipeline.donors(vcfg)[:n], mnist.load_cached(),
                           lambda *a, **k: None, keep_state=True)
    state, arms = out["state"], list(vcfg.arm_names)
    rows = {pair: {"raw": [], "aligned": []} for pair in TRAINED_PAIRS}
    for i in range(n):
        world = jax.tree.map(lambda x: x[i], state)
        nets = {"teacher": world["teacher"],
                "cross_init": jax.tree.map(lambda x: x[arms.index("cross_aux")], world["student_init"]),
                **{a: jax.tree.map(lambda x, k=k: x[k], world["students"]) for k, a in enumerate(arms)}}
        for pair, (ref, other) in TRAINED_PAIRS.items():
            rows[pair]["raw"].append(_layer_distances(nets[ref], nets[other]))
            rows[pair]["aligned"].append(_layer_distances(nets[ref], permutation.align(nets[ref], nets[other])))
    return {pair: {q: {layer: np.array([r[layer] for r in per_seed]) for layer in per_seed[0]}
                   for q, per_seed in qs.items()} for pair, qs in rows.items()}


def cached_trained_distances(cfg: TrajectoryConfig, variant: str) -> dict:
    """``trained_distances``, stored beside the variant's results (they need a short retraining)."""
    path = variant_dir(variant, cfg.variant(variant)) / f"trained_distances_{cfg.n_aligned}.npz"
    if (done := store.load_arrays(path)) is not None:
        return done
    out = trained_distances(cfg, variant)
    store.save_arrays(path, out)
    return out


def run(cfg: TrajectoryConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict | None, Path]:
    """Every variant (each trained or loaded on its own), then the combined summary; (summary, directory).

    The summary is None while other shards still compute; the directory is then the first
    incomplete variant's, whose missing seeds the CLI reports.
    """
    ex = execution or runner.Execution(experiment=NAME)
    directory = store.run_dir(NAME, cfg)
    done = None if ex.force else store.load_complete(directory)
    if done and done[1].get("schema") == SCHEMA:
        return done[1], directory
    results, pending = {}, []
    for name in cfg.variants:  # every variant first, so a shard computes its share of all of them
        results[name], vdir = run_variant(name, cfg.variant(name), ex)
        if results[name] is None:
            pending.append(vdir)
    if pending:
        return None, pending[0]
    aligned = init_distances(cfg)
    if cfg.n_aligned:
        aligned["trained"] = cached_trained_distances(cfg, cfg.variants[0])
    summary = summarise(cfg, results, aligned, command)
    if parallel.is_writer():
        store.write_json(directory / "config.json", {"config": config_lib.to_dict(cfg), **store.provenance()})
        store.finish(directory, {"init_distances": aligned}, summary)
    return summary, directory


# ---------------------------------------------------------------------------------------------
# Summary


def _num(x) -> float | None:
    """A JSON number to 5 significant digits, or None for NaN/inf."""
    x = float(x)
    return float(f"{x:.5g}") if np.isfinite(x) else None


def _brief(values) -> dict:
    """stats.brief over the finite values, JSON-safe (None where undefined)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    b = stats.brief(v)
    return {"mean": _num(b["mean"]), "ci95": _num(b["ci95"]), "n": b["n"]}


def _values(values) -> dict:
    """_brief plus the per-seed values."""
    return {**_brief(values), "values": [_num(x) for x in np.asarray(values, np.float64).ravel()]}


def _curve(values_SxL) -> dict:
    """Per logged step: mean and 95% CI over seeds (rows)."""
    v = np.asarray(values_SxL, np.float64)
    n = v.shape[0]
    mean = v.mean(0)
    ci = stats.Z95 * v.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(v.shape[1], np.nan)
    return {"mean": [_num(x) for x in mean], "ci95": [_num(x) for x in ci]}


def logged_steps(vcfg: pipeline.AuxConfig) -> np.ndarray:
    """Global student steps at which the pipeline traces (before that step's update)."""
    total = vcfg.student_epochs * train.steps_per_epoch(vcfg.n_noise, vcfg.student_batch)
    return np.arange(0, total, vcfg.trace_every)


def trace_arrays(vcfg: pipeline.AuxConfig, results: dict, ok: np.ndarray) -> dict[str, np.ndarray]:
    """{quantity: [seed (finite only), logged step, arm]} from the runner's [seed, epoch, step, arm]."""
    steps = logged_steps(vcfg)
    out = {}
    for q in TRACE:
        v = np.asarray(results["trace"][q], np.float64)[ok]
        out[q] = v.reshape(v.shape[0], -1, v.shape[-1])[:, steps]
    out["dist_teacher_rel"] = out["dist_teacher"] / out["dist_teacher"][:, :1]
    return out


def _alignment(v_SxL: np.ndarray, steps: np.ndarray) -> dict:
    """Is a cosine positive throughout? Over logged steps and per seed."""
    c = _curve(v_SxL)
    mean = np.array([np.nan if m is None else m for m in c["mean"]])
    ci = np.array([np.nan if x is None else x for x in c["ci95"]])
    lo = mean - np.nan_to_num(ci, nan=np.inf)
    negative = np.flatnonzero(mean <= 0)
    return {
        "n_logged": int(len(steps)),
        "frac_mean_pos": _num(np.mean(mean > 0)),
        "frac_ci_lo_pos": _num(np.mean(lo > 0)),
        "first_nonpositive_step": int(steps[negative[0]]) if negative.size else None,
        "first": _brief(v_SxL[:, 0]),
        "last": _brief(v_SxL[:, -1]),
        "time_average": _brief(v_SxL.mean(1)),  # per seed, averaged over logged steps
        "first_epoch_average": None,  # filled by the caller, which knows the epoch length
        "min_mean": _num(np.nanmin(mean)),
        "max": _num(np.nanmax(v_SxL)),
    }


def summarise_variant(vcfg: pipeline.AuxConfig, results: dict) -> dict:
    """One variant: final accuracy, trait by epoch, distillation loss, trajectories with CIs, alignment."""
    ok = np.asarray(results.get("finite", np.ones(vcfg.seeds, bool)), bool)
    arms = vcfg.arm_names
    acc = results["accuracy"]
    ref = np.asarray(acc["reference"])[ok]
    by_epoch = np.asarray(results["student_accuracy_by_epoch"])[ok]  # [seed, epoch, arm]
    loss = np.asarray(results["student_loss"], np.float64)[ok]  # [seed, epoch, step, arm]
    steps = logged_steps(vcfg)
    per_epoch = train.steps_per_epoch(vcfg.n_noise, vcfg.student_batch)
    tr = trace_arrays(vcfg, results, ok)
    trait = {}
    for k, a in enumerate(arms):
        gain = by_epoch[:, :, k] - ref[:, None]  # [seed, epoch]: accuracy gain over the reference
        g1, gf = gain[:, 0].mean(), gain[:, -1].mean()
        trait[a] = {
            "gain_by_epoch": [_brief(gain[:, e]) for e in range(gain.shape[1])],
            "first_epoch_share": _num(g1 / gf) if abs(gf) > 1e-12 else None,  # ratio of mean gains
        }
    alignment = {}
    first_epoch = steps < per_epoch
    for q in ALIGNMENT:
        alignment[q] = {}
        for k, a in enumerate(arms):
            al = _alignment(tr[q][:, :, k], steps)
            al["first_epoch_average"] = _brief(tr[q][:, first_epoch, k].mean(1))
            al["last_epoch_average"] = _brief(tr[q][:, steps >= steps[-1] - steps[-1] % per_epoch, k].mean(1))
            alignment[q][a] = al
    return {
        "optimizer": vcfg.student_optimizer,
        "student_lr": vcfg.student_lr,
        "projection": vcfg.projection,
        "n_seeds": int(ok.sum()),
        "nonfinite_seeds": [int(s) for s in np.flatnonzero(~ok)],
        "accuracy": {a: _values(np.asarray(acc[a])[ok]) for a in ("reference", "teacher", *arms)},
        "accuracy_by_epoch": {a: [_brief(by_epoch[:, e, k]) for e in range(by_epoch.shape[1])]
                              for k, a in enumerate(arms)},
        "trait": trait,
        "distill_loss": {a: {
            "first_step": _brief(loss[:, 0, 0, k]),
            "by_epoch": [_brief(loss[:, e, :, k].mean(1)) for e in range(loss.shape[1])],
            "final": _values(loss[:, -1, :, k].mean(1)),  # mean over the last epoch's steps
            "drop": _brief(loss[:, 0, 0, k] - loss[:, -1, :, k].mean(1)),
        } for k, a in enumerate(arms)},
        "steps": [int(s) for s in steps],
        "steps_per_epoch": per_epoch,
        "curves": {q: {a: _curve(tr[q][:, :, k]) for k, a in enumerate(arms)} for q in CURVES},
        "alignment": alignment,
        "final_geometry": {
            q: {a: _brief(np.asarray(results["geometry"][q]["total"])[ok, k]) for k, a in enumerate(arms)}
            for q in ("dist_teacher", "dist_init", "travel", "teacher_travel", "update_cos")},
        "seconds_per_seed": _num(np.mean(results["seconds"])),
    }


def _paired(a: dict, b: dict, ok: np.ndarray, fn) -> dict:
    """Statistics of fn(variant b) − fn(variant a), per seed (paired: the same teachers)."""
    return _brief(fn(b)[ok] - fn(a)[ok])


def contrast(cfg: TrajectoryConfig, base: str, other: str, results: dict) -> dict:
    """``other`` against ``base`` per arm: accuracy, gain over the reference, final distillation loss (paired)."""
    ra, rb = results[base], results[other]
    ok = np.ones(cfg.seeds, bool)
    for r in (ra, rb):
        ok &= np.asarray(r.get("finite", np.ones(cfg.seeds, bool)), bool)
    final_loss = lambda k: lambda r: np.asarray(r["student_loss"], np.float64)[:, -1, :, k].mean(1)  # noqa: E731
    first_loss = lambda k: lambda r: np.asarray(r["student_loss"], np.float64)[:, 0, 0, k]  # noqa: E731
    out = {"base": base, "other": other, "n_seeds": int(ok.sum()), "arms": {}}
    for k, a in enumerate(cfg.arm_names):
        acc = lambda r, a=a: np.asarray(r["accuracy"][a], np.float64)  # noqa: E731
        gain = lambda r, a=a: acc(r, a) - np.asarray(r["accuracy"]["reference"])  # noqa: E731
        out["arms"][a] = {
            "accuracy": {"base": _brief(acc(ra)[ok]), "other": _brief(acc(rb)[ok]), "diff": _paired(ra, rb, ok, acc)},
            "gain": {"base": _brief(gain(ra)[ok]), "other": _brief(gain(rb)[ok]), "diff": _paired(ra, rb, ok, gain)},
            "distill_loss_final": {"base": _brief(final_loss(k)(ra)[ok]), "other": _brief(final_loss(k)(rb)[ok]),
                                   "diff": _paired(ra, rb, ok, final_loss(k))},
            "distill_loss_first": {"base": _brief(first_loss(k)(ra)[ok]), "other": _brief(first_loss(k)(rb)[ok])},
            "distill_loss_drop": {"base": _brief((first_loss(k)(ra) - final_loss(k)(ra))[ok]),
                                  "other": _brief((first_loss(k)(rb) - final_loss(k)(rb))[ok])},
        }
    teachers = [np.asarray(results[v]["accuracy"]["teacher"]) for v in (base, other)]
    out["teacher_accuracy_max_abs_diff"] = _num(np.max(np.abs(teachers[0] - teachers[1])))
    return out


def summarise_init_distances(aligned: dict) -> dict | None:
    if "raw" not in aligned:
        return None
    out = {"n": int(len(aligned["seed"])), "seed": [int(s) for s in aligned["seed"]],
           "donor": [int(s) for s in aligned["donor"]]}
    for q in ("raw", "aligned", "control_raw", "control_aligned"):
        out[q] = {layer: _values(v) for layer, v in aligned[q].items()}
    out["aligned_over_raw"] = {layer: _brief(aligned["aligned"][layer] / aligned["raw"][layer])
                               for layer in aligned["raw"]}
    if trained := aligned.get("trained"):
        out["trained"] = {pair: {q: {layer: _values(v) for layer, v in by_layer.items()} for q, by_layer in qs.items()}
                          for pair, qs in trained.items()}
    return out


def summarise(cfg: TrajectoryConfig, results: dict, aligned: dict, command: str) -> dict:
    """The JSON behind the figure: every variant, the projection and optimiser contrasts, init distances."""
    variants = {v: summarise_variant(cfg.variant(v), results[v]) for v in cfg.variants}
    projection, optimizers = {}, {}
    for v in cfg.variants:
        opt, projected = parse_variant(v)
        if projected and opt in results:
            projection[v] = contrast(cfg, opt, v, results)
    if "adam" in results and "sgd" in results:
        optimizers["sgd_vs_adam"] = contrast(cfg, "adam", "sgd", results)
    recipe = cfg.recipe
    return {
        "experiment": NAME,
        "schema": SCHEMA,
        "command": command,
        "n_seeds": min(s["n_seeds"] for s in variants.values()),
        "ci": CI,
        "arms": [dataclasses.asdict(a) for a in recipe.arms],
        "variants": variants,
        "projection": projection,
        "optimizers": optimizers,
        "init_distances": summarise_init_distances(aligned),
        "config": config_lib.to_dict(cfg),
        "provenance": store.provenance(),
        "total_steps": int(recipe.student_epochs * train.steps_per_epoch(recipe.n_noise, recipe.student_batch)),
    }


# ---------------------------------------------------------------------------------------------
# Outputs


def _pm(s: dict | None, fmt: str = ".3f") -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:{fmt}}" + (f" ± {s['ci95']:{fmt}}" if s.get("ci95") is not None else "")


def _frac(x: float | None, n: int) -> str:
    return "n/a" if x is None else f"{round(x * n)}/{n}"


def table(summary: dict) -> str:
    """Markdown tables: final accuracy, alignment, geometry, projection, init distances."""
    variants = summary["variants"]
    arms = [a["name"] for a in summary["arms"]]
    rows = ["| variant | reference | teacher | " + " | ".join(arms) + " |", "|---" * (3 + len(arms)) + "|"]
    for v, s in variants.items():
        acc = s["accuracy"]
        rows.append(f"| {v} | {_pm(acc['reference'])} | {_pm(acc['teacher'])} | "
                    + " | ".join(_pm(acc[a]) for a in arms) + " |")
    rows += ["", "| variant | arm | grad_cos > 0 (mean / CI low) | grad_cos step 0 | grad_cos time avg "
             "| grad_cos last | cos(update, −∇L_T) avg | ‖θ_S−θ_T‖ last/first | KL(T‖S) first → last "
             "| 1st-epoch share of gain | distill loss first → final |", "|---" * 11 + "|"]
    for v, s in variants.items():
        for a in arms:
            g, u = s["alignment"]["grad_cos"][a], s["alignment"]["update_trait_cos"][a]
            rel, kl = s["curves"]["dist_teacher_rel"][a], s["curves"]["function_kl"][a]
            dl = s["distill_loss"][a]
            share = s["trait"][a]["first_epoch_share"]
            rows.append(
                f"| {v} | {a} | {_frac(g['frac_mean_pos'], g['n_logged'])} / "
                f"{_frac(g['frac_ci_lo_pos'], g['n_logged'])} "
                f"| {_pm(g['first'])} | {_pm(g['time_average'])} | {_pm(g['last'])} | {_pm(u['time_average'])} "
                f"| {_at(rel, -1)} | {_at(kl, 0, '.3g')} → {_at(kl, -1, '.3g')} "
                f"| {_fmt(share, '.2f')} | {_pm(dl['first_step'], '.3g')} → {_pm(dl['final'], '.3g')} |"
            )
    for name, c in {**summary["projection"], **summary["optimizers"]}.items():
        rows += ["", f"{c['other']} against {c['base']} (paired over {c['n_seeds']} seeds; diff = {c['other']} − "
                 f"{c['base']}):", "",
                 "| arm | accuracy (base) | accuracy (other) | diff | gain over ref. (base) | gain (other) "
                 "| final distill loss (base) | (other) | loss drop (other) |", "|---" * 9 + "|"]
        for a, r in c["arms"].items():
            rows.append(f"| {a} | {_pm(r['accuracy']['base'])} | {_pm(r['accuracy']['other'])} "
                        f"| {_pm(r['accuracy']['diff'])} | {_pm(r['gain']['base'])} | {_pm(r['gain']['other'])} "
                        f"| {_pm(r['distill_loss_final']['base'], '.3g')} "
                        f"| {_pm(r['distill_loss_final']['other'], '.3g')} "
                        f"| {_pm(r['distill_loss_drop']['other'], '.3g')} |")
    if d := summary["init_distances"]:
        layers = list(d["raw"])
        rows += ["", f"Teacher's init vs the cross-model student's init ({d['n']} seeds; weight matching):", "",
                 "| | " + " | ".join(layers) + " |", "|---" * (1 + len(layers)) + "|"]
        for q, label in (("raw", "raw ‖θ_T⁰ − θ_X⁰‖"), ("aligned", "weight-matched"),
                         ("control_raw", "control: permuted copy, raw"), ("control_aligned", "control, matched")):
            rows.append(f"| {label} | " + " | ".join(_pm(d[q][layer], ".3g") for layer in layers) + " |")
        if trained := d.get("trained"):
            rows += ["", f"Trained networks, raw vs weight-matched total distance ({d['n']} seeds, the first variant):",
                     "", "| pair | raw | weight-matched |", "|---|---|---|"]
            for pair, qs in trained.items():
                rows.append(f"| {pair} | {_pm(qs['raw']['total'], '.3g')} | {_pm(qs['aligned']['total'], '.3g')} |")
    return "\n".join(rows)


def _at(curve: dict, i: int, fmt: str = ".3f") -> str:
    """Mean ± CI of a curve at logged step index ``i``."""
    return _pm({"mean": curve["mean"][i], "ci95": curve["ci95"][i]}, fmt)


def _fmt(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None else f"{x:{fmt}}"


PLOTTED = (
    ("grad_cos", "cos(∇L_distill, ∇L_T)", "linear"),
    ("update_cos", "cos(θ_S − θ_S⁰, θ_T − θ_T⁰)", "linear"),
    ("dist_teacher_rel", "‖θ_S − θ_T‖ / its value at step 0", "linear"),
    ("function_kl", "KL(teacher ‖ student), test images", "log"),
    ("probe_accuracy", "test accuracy (the trait)", "linear"),
)
ARM_STYLE = {  # colour by lineage, strength by outputs: aux students strong, all-logit students lighter
    "student_aux": (plots.PALETTE[0], 1.0, "-"),
    "cross_aux": (plots.PALETTE[1], 1.0, "-"),
    "student_all": (plots.PALETTE[0], 0.4, "--"),
    "cross_all": (plots.PALETTE[1], 0.4, "--"),
}
ARM_LABEL = {"student_aux": "shared init, aux logits", "cross_aux": "different init, aux logits",
             "student_all": "shared init, all logits", "cross_all": "different init, all logits"}


def _arr(xs) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in xs], float)


def _band(ax, x, curve, color, alpha, ls, label=None, lw=1.2):
    mean, ci = _arr(curve["mean"]), _arr(curve["ci95"])
    ax.plot(x, mean, color=color, alpha=alpha, ls=ls, lw=lw, label=label)
    lo, hi = mean - np.nan_to_num(ci), mean + np.nan_to_num(ci)
    if ax.get_yscale() == "log":
        lo = np.where(lo > 0, lo, np.nan)
    ax.fill_between(x, lo, hi, color=color, alpha=0.15 * alpha, lw=0)


def _bars(ax, c: dict, key: str, arms: list[str], ylabel: str, log: bool = False, first_key: str | None = None):
    x = np.arange(len(arms))
    w = 0.38
    for j, (side, color, label) in enumerate((("base", plots.PALETTE[0], c["base"]),
                                              ("other", plots.PALETTE[2], c["other"]))):
        m = _arr([c["arms"][a][key][side]["mean"] for a in arms])
        e = np.nan_to_num(_arr([c["arms"][a][key][side]["ci95"] for a in arms]))
        ax.bar(x + (j - 0.5) * w, m, w, yerr=e, capsize=2, color=color, alpha=0.85, label=label)
        if first_key:
            f = _arr([c["arms"][a][first_key][side]["mean"] for a in arms])
            ax.plot(x + (j - 0.5) * w, f, "_", color="black", ms=9, mew=1.2,
                    label="at step 0" if j == 0 else None)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(x, [ARM_LABEL.get(a, a).replace(", ", "\n") for a in arms], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False)


def figure(summary: dict, out_dir: Path) -> list[Path]:
    """Trajectories (rows: quantities; columns: unprojected variants) with CI bands, and projection bars."""
    variants = summary["variants"]
    arms = [a["name"] for a in summary["arms"]]
    columns = [v for v in variants if not parse_variant(v)[1]] or list(variants)
    projected = {parse_variant(v)[0]: v for v in variants if parse_variant(v)[1]}
    ncols = max(2, len(columns))
    nrows = len(PLOTTED) + 1
    fig, axes = plots.figure(3.4 * ncols, 1.9 * nrows + 1.0, nrows=nrows, ncols=ncols, squeeze=False,
                             layout="constrained")
    for col in range(ncols):
        for row, (q, label, scale) in enumerate(PLOTTED):
            ax = axes[row][col]
            if col >= len(columns):
                ax.set_visible(False)
                continue
            s = variants[columns[col]]
            ax.set_yscale(scale)
            x = np.asarray(s["steps"])
            for a in arms:
                color, alpha, ls = ARM_STYLE.get(a, (plots.PALETTE[3], 1.0, ":"))
                _band(ax, x, s["curves"][q][a], color, alpha, ls, ARM_LABEL.get(a, a))
            proj = projected.get(s["optimizer"])
            if proj is not None:
                sp = variants[proj]
                _band(ax, np.asarray(sp["steps"]), sp["curves"][q]["student_aux"], plots.PALETTE[2], 1.0, ":",
                      f"shared init, aux logits, {proj}")
            for e in range(1, len(s["accuracy_by_epoch"][arms[0]])):
                ax.axvline(e * s["steps_per_epoch"], color="grey", lw=0.5, alpha=0.5)
            if q in ("grad_cos", "update_cos"):
                ax.axhline(0.0, color="black", lw=0.6)
            if q == "dist_teacher_rel":
                ax.axhline(1.0, color="black", lw=0.6)
            if q == "probe_accuracy":
                ax.axhline(s["accuracy"]["reference"]["mean"], color="grey", lw=0.8, ls="--")
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(f"student {s['optimizer']} (lr {s['student_lr']:g})")
            if row == len(PLOTTED) - 1:
                ax.set_xlabel("student step (grey: epoch ends)")
    for row in range(len(PLOTTED)):  # one y range per row, so the columns compare
        shown = [ax for ax in axes[row][: len(columns)]]
        lo, hi = min(ax.get_ylim()[0] for ax in shown), max(ax.get_ylim()[1] for ax in shown)
        for ax in shown:
            ax.set_ylim(lo, hi)
    bar_axes = axes[-1]
    comparison = next(iter(summary["projection"].values()), None)
    if comparison is None:
        for ax in bar_axes:
            ax.set_visible(False)
    else:
        _bars(bar_axes[0], comparison, "accuracy", arms, "final test accuracy")
        ref = variants[comparison["base"]]["accuracy"]["reference"]["mean"]
        bar_axes[0].axhline(ref, color="grey", lw=0.8, ls="--")
        bar_axes[0].set_title("transfer, with and without projection", fontsize=8)
        _bars(bar_axes[1], comparison, "distill_loss_final", arms, "distillation loss (last epoch)", log=True,
              first_key="distill_loss_first")
        bar_axes[1].set_title("distillation loss: last epoch (bars), step 0 (—)", fontsize=8)
        for ax in bar_axes[2:]:
            ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, fontsize=7)
    fig.suptitle(f"Student trajectories on the mnist-aux recipe, n = {summary['n_seeds']} seeds per curve\n"
                 "lines: mean; bands and error bars: 95% normal CI over seeds (1.96·s/√n); "
                 "dashed grey: reference accuracy",
                 fontsize=8)
    return plots.save(fig, Path(out_dir) / STEM)




def _lo(s: dict) -> float | None:
    return None if s["mean"] is None or s["ci95"] is None else s["mean"] - s["ci95"]


def _hi(s: dict) -> float | None:
    return None if s["mean"] is None or s["ci95"] is None else s["mean"] + s["ci95"]


def _above_zero(s: dict) -> bool:
    """The 95% CI lies above zero."""
    return (lo := _lo(s)) is not None and lo > 0


def _sign(s: dict) -> str:
    """'> 0', '< 0' or '~ 0' by where the 95% CI lies."""
    if (lo := _lo(s)) is None:
        return "n/a"
    return "> 0" if lo > 0 else "< 0" if _hi(s) < 0 else "CI includes 0"


PROJECTION_TOL = 1e-6  # a logged cos(update, −∇L_T) above this under projection would be a bug


def _alignment_line(v: str, s: dict) -> str:
    g = s["alignment"]["grad_cos"]["student_aux"]
    n = g["n_logged"]
    if g["frac_mean_pos"] == 1.0 and g["frac_ci_lo_pos"] == 1.0:
        verdict = "It stays positive throughout, with the CI above 0 at every logged step"
    elif g["frac_mean_pos"] == 1.0:
        verdict = (f"Its mean stays positive throughout, but the CI includes 0 at "
                   f"{n - round(g['frac_ci_lo_pos'] * n)} of {n} steps; per seed, averaged over steps, it is "
                   f"{_sign(g['time_average'])}")
    else:
        verdict = f"It does not stay positive: the mean is first ≤ 0 at step {g['first_nonpositive_step']}"
    text = (f"{v}, shared-init aux student: cos(∇L_distill, ∇L_T) has a positive mean at "
            f"{_frac(g['frac_mean_pos'], n)} logged steps and a CI lower bound above 0 at "
            f"{_frac(g['frac_ci_lo_pos'], n)}; step 0 {_pm(g['first'])}, first-epoch average "
            f"{_pm(g['first_epoch_average'])}, last-epoch average {_pm(g['last_epoch_average'])}, per-seed time "
            f"average {_pm(g['time_average'])}. {verdict} (Kitkana & Arora: weakly positive throughout).")
    if "cross_aux" in s["alignment"]["grad_cos"]:
        c = s["alignment"]["grad_cos"]["cross_aux"]
        text += (f" Different-init aux student: positive mean at {_frac(c['frac_mean_pos'], n)} steps, step 0 "
                 f"{_pm(c['first'])}, time average {_pm(c['time_average'])} ({_sign(c['time_average'])}).")
    return text


def _first_epoch_line(v: str, s: dict) -> str:
    t = s["trait"]["student_aux"]
    gains, share = t["gain_by_epoch"], t["first_epoch_share"]
    text = (f"{v}: accuracy gain of the shared-init aux student over the reference after each epoch: "
            + ", ".join(_pm(x) for x in gains))
    if not _above_zero(gains[-1]):
        return text + "; the final gain's CI includes 0, so its timing cannot be judged at this n."
    return text + (f"; the first epoch brings {share:.0%} of the final gain (ratio of means): "
                   + ("most of the trait arrives in the first epoch, as Kitkana & Arora report." if share >= 0.5 else
                      "most of it arrives later, unlike Kitkana & Arora's report."))


def _ratio_word(curve: dict) -> str:
    m, c = curve["mean"][-1], curve["ci95"][-1]
    if m is None or c is None:
        return ""
    return " (closer)" if m + c < 1 else " (farther)" if m - c > 1 else " (CI includes 1)"


def _geometry_line(v: str, s: dict) -> str:
    """Is the student pulled toward the teacher in parameter space: direction (cos) and distance."""
    rel, geo = s["curves"]["dist_teacher_rel"], s["final_geometry"]
    u = s["alignment"]["update_trait_cos"]["student_aux"]
    arms = [a for a in ("student_aux", "cross_aux") if a in rel]
    text = (f"{v}, parameter space: ‖θ_S − θ_T‖ at the last logged step over its step-0 value: "
            + ", ".join(f"{ARM_LABEL[a]} {_at(rel[a], -1)}{_ratio_word(rel[a])}" for a in arms)
            + "; final cos(θ_S − θ_S⁰, θ_T − θ_T⁰): "
            + ", ".join(f"{ARM_LABEL[a]} {_pm(geo['update_cos'][a])}" for a in arms)
            + f"; time-averaged cos(update, −∇L_T), shared aux: {_pm(u['time_average'])} ({_sign(u['time_average'])}).")
    travel, t_travel, cos = (geo[q]["student_aux"]["mean"] for q in ("travel", "teacher_travel", "update_cos"))
    if None not in (travel, t_travel, cos) and cos > 0 and rel["student_aux"]["mean"][-1] is not None \
            and rel["student_aux"]["mean"][-1] > 1:
        text += (f" The shared-init student moves toward the teacher's update in direction but not in distance: "
                 f"‖θ_S − θ_T‖ shrinks only while ‖θ_S − θ⁰‖ < 2‖θ_T − θ⁰‖·cos, and here ‖θ_S − θ⁰‖ = {travel:.3g} "
                 f"against 2·{t_travel:.3g}·{cos:.3f} = {2 * t_travel * cos:.3g} (means over seeds, end of training).")
    return text


def findings(summary: dict) -> list[str]:
    """What held and what did not, in numbers, computed from the summary (never assumed)."""
    lines, variants = [], summary["variants"]
    for v, s in variants.items():
        acc = s["accuracy"]
        arms = [a for a in ("student_aux", "cross_aux", "student_all", "cross_all") if a in acc]
        lines.append(f"{v}: final accuracy " + ", ".join(f"{ARM_LABEL[a]} {_pm(acc[a])}" for a in arms)
                     + f" (reference {_pm(acc['reference'])}, teacher {_pm(acc['teacher'])}).")
    for v, s in variants.items():
        if s["projection"] != "none" or "student_aux" not in s["alignment"]["grad_cos"]:
            continue
        lines += [_alignment_line(v, s), _first_epoch_line(v, s)]
        lines.append(_geometry_line(v, s))
    for name, c in summary["projection"].items():
        if (r := c["arms"].get("student_aux")) is None:
            continue
        base_gain, gain = r["gain"]["base"], r["gain"]["other"]
        kept = gain["mean"] / base_gain["mean"] if base_gain["mean"] and abs(base_gain["mean"]) > 1e-9 else None
        if not _above_zero(base_gain):
            verdict = "Without projection the gain's CI already includes 0, so suppression cannot be judged at this n. "
        elif _above_zero(gain):
            verdict = "Transfer is reduced but not suppressed: the CI of the projected gain excludes 0. "
        else:
            verdict = "Transfer is suppressed: the CI of the projected gain includes 0. "
        drop = r["distill_loss_drop"]["other"]
        maxima = [m for a in c["arms"] if (m := variants[name]["alignment"]["update_trait_cos"][a]["max"]) is not None]
        max_cos = max(maxima, default=None)
        lines.append(
            f"Projection ({name} vs {c['base']}, paired over {c['n_seeds']} seeds): gain of the shared-init aux "
            f"student over the reference {_pm(base_gain)} without, {_pm(gain)} with projection (paired difference "
            f"{_pm(r['gain']['diff'])}" + (f"; {kept:.0%} of the mean gain survives" if kept is not None else "")
            + f"). {verdict}Distillation loss over the last epoch {_pm(r['distill_loss_final']['base'], '.3g')} "
            f"without, {_pm(r['distill_loss_final']['other'], '.3g')} with projection; with projection it falls from "
            f"step 0 by {_pm(drop, '.3g')} ("
            + ("it still falls" if _above_zero(drop) else "the CI of the fall includes 0")
            + f"; {_pm(r['distill_loss_drop']['base'], '.3g')} without). Largest logged cos(update, −∇L_T) over arms, "
            f"seeds and steps under projection: {_fmt(max_cos, '.2g')}"
            + (" (rounding: no update lowers L_T on its batch to first order)." if max_cos is not None
               and max_cos <= PROJECTION_TOL else " (above tolerance: check the projection)."))
    if (c := summary["optimizers"].get("sgd_vs_adam")) and (r := c["arms"].get("student_aux")):
        lines.append(
            f"SGD (lr {variants['sgd']['student_lr']:g}) vs Adam (lr {variants['adam']['student_lr']:g}), paired: "
            f"shared-init aux gain {_pm(r['gain']['other'])} vs {_pm(r['gain']['base'])} (difference "
            f"{_pm(r['gain']['diff'])}, {_sign(r['gain']['diff'])}); distillation loss over the last epoch "
            f"{_pm(r['distill_loss_final']['other'], '.3g')} vs {_pm(r['distill_loss_final']['base'], '.3g')}: "
            "a transfer gap at a higher SGD loss reflects how far SGD gets in the same number of steps as much as "
            "the optimiser's geometry.")
    if d := summary["init_distances"]:
        t = lambda q: d[q]["total"]  # noqa: E731
        travel = variants[next(iter(variants))]["final_geometry"]["teacher_travel"]
        teacher_travel = next(iter(travel.values()))
        far = teacher_travel["mean"] is not None and t("aligned")["mean"] > 2 * teacher_travel["mean"]
        lines.append(
            f"Permutation-aware distance between the teacher's init and the cross-model student's init ({d['n']} "
            f"seeds): raw {_pm(t('raw'), '.2f')}, after weight matching {_pm(t('aligned'), '.2f')} (ratio "
            f"{_pm(d['aligned_over_raw']['total'])}); control, a hidden-unit-permuted copy of the teacher's init: raw "
            f"{_pm(t('control_raw'), '.2f')}, matched {_pm(t('control_aligned'), '.2g')}. The teacher moves "
            f"{_pm(teacher_travel, '.2f')} from its init"
            + (": even aligned, a different init stays far outside the teacher's neighbourhood." if far else "."))
        if trained := d.get("trained"):
            c = lambda pair, q: trained[pair][q]["total"]  # noqa: E731
            lines.append(
                "Trained networks (weight matching onto the teacher): the cross-model aux student is "
                f"{_pm(c('teacher_vs_cross_aux', 'raw'), '.2f')} from the teacher raw and "
                f"{_pm(c('teacher_vs_cross_aux', 'aligned'), '.2f')} matched, against "
                f"{_pm(c('teacher_vs_cross_start', 'raw'), '.2f')} / {_pm(c('teacher_vs_cross_start', 'aligned'), '.2f')} "
                "for its starting point; the shared-init aux student is "
                f"{_pm(c('teacher_vs_student_aux', 'raw'), '.2f')} raw, {_pm(c('teacher_vs_student_aux', 'aligned'), '.2f')} "
                "matched. A student that moved toward the teacher only up to a relabelling of hidden units would "
                "close the matched gap while the raw one stayed.")
    lines += first_order_limits(summary)
    return lines


def first_order_limits(summary: dict) -> list[str]:
    """Where the one-step (first-order, shared-init) picture stops predicting the multi-step result."""
    out, variants = [], summary["variants"]
    for v, s in variants.items():
        if s["projection"] != "none" or "student_aux" not in s["alignment"]["grad_cos"]:
            continue
        g = s["alignment"]["grad_cos"]["student_aux"]
        first, last = g["first"], g["last"]
        if first["mean"] is None or last["mean"] is None:
            continue
        if first["mean"] > 0:
            out.append(
                f"First order vs many steps ({v}): at step 0 the shared-init student's distillation gradient is "
                f"aligned with the trait gradient ({_pm(first)}, {_sign(first)}); at the last logged step {_pm(last)} "
                f"({_sign(last)}, {last['mean'] / first['mean']:.0%} of the step-0 mean). Theorem 1 covers one small "
                "step from θ⁰ toward a slightly moved teacher; here the teacher is fully trained and the student has "
                "moved, so any positive sign after step 0 is an empirical finding, not the theorem's.")
        else:
            out.append(
                f"First order vs many steps ({v}): already at step 0 the alignment is {_pm(first)}: with a fully "
                "trained teacher (not a small step from θ⁰) the one-step guarantee does not apply.")
    if (c := summary["optimizers"].get("sgd_vs_adam")) and "student_aux" in c["arms"]:
        d = c["arms"]["student_aux"]["gain"]["diff"]
        if d["mean"] is not None:
            decided = _lo(d) is not None and (_lo(d) > 0 or _hi(d) < 0)
            out.append(
                "The step-0 gradient is the same for Adam and SGD (same init, same batch), so the one-step picture "
                f"cannot tell them apart; after training the shared-init aux transfer differs by {_pm(d)} (SGD − Adam)"
                + (": the optimiser, not the first-order alignment alone, decides how much of the trait arrives."
                   if decided else "; the CI includes 0."))
    for name, c in summary["projection"].items():
        r = c["arms"].get("student_aux")
        if not r or _lo(r["gain"]["other"]) is None or not _above_zero(r["gain"]["base"]):
            continue
        out.append(
            f"Projection ({name}): removing the trait-gradient component of every update "
            + (f"leaves a gain of {_pm(r['gain']['other'])} over the reference: transfer also flows through what a "
               "per-step, per-batch first-order projection does not remove (curvature over many steps, the noise of "
               "the trait-gradient estimate)." if _above_zero(r["gain"]["other"]) else
               f"leaves a gain of {_pm(r['gain']['other'])}, consistent with zero: the first-order component carries "
               "the transfer, as the one-step picture says."))
    return out


def readme(summary: dict) -> str:
    """The figures/README.md section: figure, findings in numbers, tables, how to regenerate."""
    cfg = summary["config"]
    r = cfg["recipe"]
    widths = "-".join(str(w) for w in (784, *r["hidden"], 10 + r["n_aux"]))
    return "\n".join([
        *report.section_head(NAME, STEM, "multi-step trajectories, optimiser and trait projection", summary["n_seeds"]),
        f"The mnist-aux recipe (MLP {widths}, {r['n_train']} training images, {r['n_noise']} noise images, teacher "
        f"{r['teacher_epochs']} and students {r['student_epochs']} epochs, batch {r['student_batch']}) in the variants "
        f"{', '.join(cfg['variants'])} (Adam lr {r['student_lr']:g}; SGD lr {cfg['sgd_lr']:g}). Every "
        f"{cfg['trace_every']} student steps, per arm: cos(∇L_distill, ∇L_T) with L_T the teacher's class-logit "
        f"cross-entropy on {cfg['trait_batch']} labelled training images (drawn with replacement) at the student; "
        f"cos(update, −∇L_T); ‖θ_S − θ_T‖; cos(θ_S − θ_S⁰, θ_T − θ_T⁰); KL(teacher ‖ student) over the class "
        f"logits of {cfg['n_probe']} test images and their accuracy. Projection: each update loses its "
        "component along −∇L_T (the same batch's) when positive. Variants share their teachers, so contrasts are "
        f"paired by seed. CI: {summary['ci']}. {SGD_LR_NOTE}",
        "",
        *[f"- {line}" for line in findings(summary)],
        "",
        table(summary),
        "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
