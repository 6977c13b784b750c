"""The mnist-aux runs followed step by step: per-variant runs, alignment traces, weight-matched distances.

Every *variant* is the published mnist-aux recipe with one student optimiser ('adam': Adam 3e-4 as
published; 'sgd': plain SGD at ``sgd_lr``) and optionally the trait projection ('+projection':
each student update loses its component along −∇L_T when it has one). Every ``trace_every``-th
student step the pipeline records, per arm (shared/different init × aux/all logits):
cos(∇L_distill, ∇L_T) with L_T the teacher's task loss on a labelled MNIST batch evaluated at the
student, cos(update, −∇L_T), ‖θ_S − θ_T‖, ‖θ_S − θ_S⁰‖, cos(θ_S − θ_S⁰, θ_T − θ_T⁰),
KL(teacher ‖ student) on held-out test images, and their accuracy. Each variant is an ordinary
cached, resumable mnist-aux-style run of its own (``results/<name>/<variant>/<run-id>``); the
summary combines them. Teachers are the same in every variant (same seeds, same recipe), so
variant contrasts are paired by seed.

Permutation-aware distances need no training: for ``n_aligned`` seeds the teacher's init and the
init the cross-model student starts from are rebuilt from their keys and compared raw and after
weight matching (``minisub.mlp.permutation``); ``trained_distances`` retrains those worlds
keeping their final weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minisub import config as config_lib
from minisub import keys, stats, train
from minisub.config import normalise, require, require_choice
from minisub.mlp import mnist, permutation, pipeline
from minisub.run import parallel, runner, store

SCHEMA = 3  # of the combined summary: another schema is recomputed from the stored variants (3: Student-t curves)
PROJECTION = "projection"
VARIANT_HELP = "OPTIMIZER or OPTIMIZER+projection with OPTIMIZER in ('adam', 'sgd'), e.g. 'adam+projection'"
TRACE = ("grad_cos", "update_trait_cos", "dist_teacher", "travel", "update_cos", "function_kl", "probe_accuracy")
CURVES = (*TRACE, "dist_teacher_rel")  # dist_teacher_rel: ‖θ_S − θ_T‖ / its value at step 0, per seed
ALIGNMENT = ("grad_cos", "update_trait_cos")
CI = stats.TEST
CURVE_CI = "Student-t"  # marks a summary whose per-step curve intervals are Student-t (see trajectory_analysis)


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
    # SGD's rate, tuned on the distillation loss only (never on the trait): on the paper's widths (1 seed,
    # 8192 training and noise images, teacher 3 epochs at Adam 1e-3, shared-init students 4 epochs of batch
    # 1024) the aux student's last-epoch KL was 4.7e-3, 4.3e-3, 3.6e-3 at lr 0.03, 0.1, 0.3, rose above its
    # start at 1 and diverged at 10 (Adam 3e-4: 8.6e-4); over 12 epochs lr 0.3 stayed stable (2.0e-3).
    sgd_lr: float = 0.3
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

# ---------------------------------------------------------------------------------------------
# Compute


def variant_dir(experiment: str, name: str, vcfg: pipeline.AuxConfig) -> Path:
    return store.run_dir(f"{experiment}/{name}", vcfg)


def run_variant(experiment: str, name: str, vcfg: pipeline.AuxConfig,
                ex: runner.Execution) -> tuple[dict | None, Path]:
    """One variant's raw results (trained, or loaded from its own store directory); None while shards remain."""
    directory = variant_dir(experiment, name, vcfg)
    if not ex.force and (done := store.load_complete(directory)):
        return done[0], directory
    if ex.compute and parallel.is_writer():
        store.write_json(directory / "config.json", {"config": config_lib.to_dict(vcfg), **store.provenance()})
    results = runner.run(vcfg, mnist.load_cached() if ex.compute else None, directory,
                         execution=dataclasses.replace(ex, experiment=f"{experiment}/{name}"))
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
            a, permutation.random_permutations(keys.stream(cfg.seed, "control_perm", i), a))
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


def cached_trained_distances(experiment: str, cfg: TrajectoryConfig, variant: str) -> dict:
    """``trained_distances``, stored beside the variant's results (they need a short retraining)."""
    path = variant_dir(experiment, variant, cfg.variant(variant)) / f"trained_distances_{cfg.n_aligned}.npz"
    if (done := store.load_arrays(path)) is not None:
        return done
    out = trained_distances(cfg, variant)
    store.save_arrays(path, out)
    return out


def run(experiment: str, cfg: TrajectoryConfig, ex: runner.Execution, command: str,
        analyse=lambda s: s) -> tuple[dict | None, Path]:
    """Every variant (each trained or loaded on its own), then the combined summary; (summary, directory).

    The summary (``analyse``d, also when it is served from the store) is None while other shards
    still compute; the directory is then the first incomplete variant's, whose missing seeds the
    CLI reports.
    """
    directory = store.run_dir(experiment, cfg)
    done = None if ex.force else store.load_complete(directory)
    if done and done[1].get("schema") == SCHEMA:
        return analyse(done[1]), directory
    results, pending = {}, []
    for name in cfg.variants:  # every variant first, so a shard computes its share of all of them
        results[name], vdir = run_variant(experiment, name, cfg.variant(name), ex)
        if results[name] is None:
            pending.append(vdir)
    if pending:
        return None, pending[0]
    aligned = init_distances(cfg)
    if cfg.n_aligned:
        aligned["trained"] = cached_trained_distances(experiment, cfg, cfg.variants[0])
    summary = analyse(summarise(experiment, cfg, results, aligned, command))
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
    """Per logged step: mean and 95% Student-t CI over seeds (rows)."""
    v = np.asarray(values_SxL, np.float64)
    n = v.shape[0]
    mean = v.mean(0)
    ci = stats.t_quantile(n) * v.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(v.shape[1], np.nan)
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


def summarise(experiment: str, cfg: TrajectoryConfig, results: dict, aligned: dict, command: str) -> dict:
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
        "experiment": experiment,
        "curve_ci": CURVE_CI,
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
