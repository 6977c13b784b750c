"""Drive a population program: blocks of seeds over devices and hosts, progress, resumable pieces.

The hot path is entirely inside the jitted, seed-vmapped epoch programs of ``pipeline``; this
module loops over blocks of seeds and over epochs only. Each block's seed axis is sharded over
the local devices (``jax.sharding``); each finished block is stored as one piece, so a killed
run loses no finished block and a rerun computes only what is missing. Blocks are dealt to
processes (``--shard i/n`` or ``jax.distributed`` hosts) by a fixed grid, so independent
processes never disagree about who computes what.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from minisub.run import parallel
from minisub.mlp import pipeline
from minisub.run import params as params_lib
from minisub.run import precision
from minisub.run import store

PIECE = re.compile(r"seeds_(\d+)_(\d+)\.npz$")
NONFINITE = ("raise", "mark")


class NonFiniteError(FloatingPointError):
    """Training produced NaN or inf; the message names the experiment, arm, seed and epoch."""


@dataclasses.dataclass(frozen=True)
class Execution:
    """How to run (not what): none of this enters the run id, none of it changes the science."""

    block: int | None = None  # seeds per block; None: from memory_budget_gb, else DEFAULT_BLOCK
    memory_budget_gb: float | None = None
    shard: tuple[int, int] = (0, 1)  # (index, count) of this process among independent processes
    on_nonfinite: str = "raise"  # or 'mark': keep going, flag the seed, leave it out of the statistics
    force: bool = False
    progress: bool = True
    compute: bool = True  # False: only merge stored pieces (``minisub merge``)
    experiment: str = "mnist-aux"
    keep_params: bool = False  # also store each seed's teacher and student parameters and inits (params/)

    def __post_init__(self):
        from minisub.config import require, require_choice

        require(self.block is None or self.block >= 1, "block", self.block, "an integer >= 1")
        require(self.memory_budget_gb is None or self.memory_budget_gb > 0, "memory_budget_gb",
                self.memory_budget_gb, "a number of GB > 0")
        i, n = self.shard
        require(n >= 1 and 0 <= i < n, "shard", f"{i}/{n}", "i/n with 0 <= i < n")
        require_choice("on_nonfinite", self.on_nonfinite, NONFINITE)


DEFAULT_BLOCK = 25


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool):
    """A progress line on stderr (``advance(n, description)``): done/total, elapsed, eta; or a no-op.

    On a terminal the line is rewritten in place; otherwise (a log file) one line per step.
    """
    if not enabled or total == 0:
        yield lambda n=1, description=None: None
        return
    start, done = time.perf_counter(), [0]
    tty = sys.stderr.isatty()

    def advance(n=1, description=None):
        done[0] += n
        elapsed = time.perf_counter() - start
        eta = elapsed / done[0] * (total - done[0])
        line = f"{description or ''} [{done[0]}/{total}] {elapsed:.0f}s elapsed, eta {eta:.0f}s"
        sys.stderr.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        sys.stderr.flush()

    try:
        yield advance
    finally:
        if tty:
            sys.stderr.write("\n")


def _nonfinite_seeds(loss) -> np.ndarray:
    """Per seed: True where any loss of the epoch is NaN or inf."""
    return ~np.isfinite(loss).reshape(loss.shape[0], -1).all(axis=1)


def _check_finite(cfg, loss, seed_ids, epoch: int, phase: str, arm_names, experiment: str = "mnist-aux"):
    """Raise NonFiniteError naming the first world (and arm, step) whose losses are not finite."""
    bad = ~np.isfinite(loss)
    if not bad.any():
        return
    where = np.argwhere(bad)[0]
    arm = f", arm {arm_names[where[2]]}" if loss.ndim == 3 else ""
    raise NonFiniteError(
        f"non-finite {phase} loss in {experiment}: seed {int(seed_ids[where[0]])}{arm}, "
        f"{phase} epoch {epoch}, step {int(where[1])} (rerun with --on-nonfinite mark to flag and continue)"
    )


def run_block(cfg: pipeline.AuxConfig, seed_ids: np.ndarray, donor_ids: np.ndarray, mnist, advance,
              *, on_nonfinite: str = "raise", experiment: str = "mnist-aux", mesh=None,
              keep_state: bool = False) -> dict:
    """Train and evaluate the worlds ``seed_ids`` on the local devices; numpy arrays, seed axis first.

    ``keep_state`` adds the final parameters (``'state'``: inits, teacher, students) for analyses
    that need weights; it is never stored with the pieces. Matmuls run at ``precision.setting()``.
    """
    with precision.applied():
        return _run_block(cfg, seed_ids, donor_ids, mnist, advance, on_nonfinite=on_nonfinite,
                          experiment=experiment, mesh=mesh, keep_state=keep_state)


def _run_block(cfg, seed_ids, donor_ids, mnist, advance, *, on_nonfinite, experiment, mesh, keep_state) -> dict:
    n = len(seed_ids)
    mesh = mesh or parallel.local_mesh()
    pad = (-n) % mesh.size  # the seed axis is padded to a multiple of the device count
    ids_np = np.concatenate([seed_ids, np.repeat(seed_ids[-1:], pad)]).astype(np.int32)
    donors_np = np.concatenate([donor_ids, np.repeat(donor_ids[-1:], pad)]).astype(np.int32)
    by_seed, replicated = parallel.by_seed(mesh), NamedSharding(mesh, PartitionSpec())
    init_population = parallel.seed_sharded(pipeline.init_population, mesh)
    match_epoch = parallel.seed_sharded(pipeline.match_epoch, mesh, donate_argnums=(1,))
    teacher_epoch = parallel.seed_sharded(pipeline.teacher_epoch, mesh, donate_argnums=(1,))
    student_epoch = parallel.seed_sharded(pipeline.student_epoch, mesh, donate_argnums=(1,))
    evaluate_students = parallel.seed_sharded(pipeline.evaluate_students, mesh)
    evaluate_teachers = parallel.seed_sharded(pipeline.evaluate_teachers, mesh)
    ids, donors = jax.device_put(ids_np, by_seed), jax.device_put(donors_np, by_seed)
    train_x = jax.device_put(mnist.train_images[: cfg.n_train], replicated)
    train_y = jax.device_put(mnist.train_labels[: cfg.n_train], replicated)
    test_x = jax.device_put(mnist.test_images[: cfg.n_test], replicated)
    test_y = jax.device_put(mnist.test_labels[: cfg.n_test], replicated)
    label = f"{experiment} seeds {seed_ids[0]}-{seed_ids[-1]}"
    # The teacher's data order is a traced argument, not part of the compiled programs' static
    # config: every order of one recipe (the audit's teachers of one base) runs on one compilation.
    order, cfg = cfg.teacher_order, dataclasses.replace(cfg, teacher_order=0)
    start = time.perf_counter()
    state = init_population(cfg, ids, donors)
    nonfinite = np.zeros(n, bool)
    teacher_loss, student_loss, evals, traces, fixed = [], [], [], [], {}
    total = {"match": cfg.match_phase_epochs, "teacher": cfg.teacher_epochs, "student": cfg.student_epochs}
    for phase, epoch in phases(cfg):
        if phase == "match":
            state, loss = match_epoch(cfg, state, ids, epoch, train_x)
        elif phase == "teacher":
            state, loss = teacher_epoch(cfg, state, ids, epoch, train_x, train_y, order)
        else:
            state, out = student_epoch(cfg, state, ids, epoch, train_x, train_y, test_x, test_y)
            loss = out["loss"]
            if "trace" in out:
                traces.append(jax.tree.map(lambda x: np.asarray(x)[:n], out["trace"]))
        loss = np.asarray(loss)[:n]
        if on_nonfinite == "raise":
            names = [cfg.arm_names[k] for k in cfg.matched_arms] if phase == "match" else cfg.arm_names
            _check_finite(cfg, loss, seed_ids, epoch, phase, names, experiment)
        nonfinite |= _nonfinite_seeds(loss)
        {"match": [], "teacher": teacher_loss, "student": student_loss}[phase].append(loss)
        if phase == "student":
            if epoch == 0:  # the reference, teacher and committee are final once the teacher phase ends
                fixed = jax.tree.map(lambda x: np.asarray(x)[:n], evaluate_teachers(cfg, state, test_x, test_y))
            evals.append(jax.tree.map(lambda x: np.asarray(x)[:n], evaluate_students(cfg, state, test_x, test_y)))
        advance(1, f"{label}: {phase} epoch {epoch + 1}/{total[phase]}")
    seconds = time.perf_counter() - start
    per_epoch = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *evals)  # [seed, student epoch, ...]
    final = jax.tree.map(lambda x: x[:, -1], per_epoch) | fixed
    return {
        "seed": np.asarray(seed_ids),
        "donor": np.asarray(donor_ids),
        "finite": ~nonfinite,
        "accuracy": {"reference": final["reference"], "teacher": final["teacher"],
                     **{a: final["students"][:, k] for k, a in enumerate(cfg.arm_names)}},
        **({"committee_accuracy": final["committee"]} if "committee" in final else {}),  # [seed, member]
        "student_accuracy_by_epoch": per_epoch["students"],  # [seed, epoch, arm]
        "geometry": final["geometry"],  # {quantity: {layer: [seed, arm]}}
        "geometry_by_epoch": per_epoch["geometry"],  # {quantity: {layer: [seed, epoch, arm]}}
        "teacher_loss": np.stack(teacher_loss, axis=1),  # [seed, epoch, step]
        "student_loss": np.stack(student_loss, axis=1),  # [seed, epoch, step, arm]
        "seconds": np.full(n, seconds / n),
        # every trace_every-th student step, NaN elsewhere: {name: [seed, epoch, step, arm]}
        **({"trace": jax.tree.map(lambda *xs: np.stack(xs, axis=1), *traces)} if traces else {}),
        **({"state": jax.tree.map(lambda x: np.asarray(x)[:n], state)} if keep_state else {}),
    }


def phases(cfg: pipeline.AuxConfig) -> list[tuple[str, int]]:
    """The epochs of a world in order: (phase, epoch) for matching, teacher and student phases."""
    return ([("match", e) for e in range(cfg.match_phase_epochs)] + [("teacher", e) for e in range(cfg.teacher_epochs)]
            + [("student", e) for e in range(cfg.student_epochs)])


def bytes_per_seed(cfg: pipeline.AuxConfig) -> int:
    """A generous estimate of the device memory one world needs while its block trains.

    State (parameters, optimiser moments, inits: exact, from ``eval_shape``) plus the largest
    step's transients: the noise batch, saved activations and gradients of every student arm.
    """
    state = jax.eval_shape(pipeline.init_population, cfg, jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    spec, arms = cfg.student_spec, len(cfg.arms) + cfg.n_teachers
    widths = sum(spec.hidden) + spec.n_out
    batch = max(cfg.student_batch, cfg.teacher_batch)
    activations = 4 * batch * (spec.n_in + (1 + 3 * arms) * widths)
    params = spec.flops_per_example() // 2 * 4
    return int(1.5 * (state_bytes + activations + 2 * arms * params))


def block_size(cfg: pipeline.AuxConfig, execution: Execution) -> int:
    """Seeds per block: as asked, or the most that fit the memory budget (a multiple of the devices)."""
    devices = len(jax.local_devices())
    if execution.block is not None:
        return execution.block
    if execution.memory_budget_gb is None:
        return min(DEFAULT_BLOCK, cfg.seeds)
    fixed = 2 * (pipeline.MNIST_TRAIN + 10_000) * (pipeline.MNIST_PIXELS + 1)  # data, replicated
    fit = int((execution.memory_budget_gb * 2**30 - fixed) // bytes_per_seed(cfg))
    if fit < 1:
        from minisub.config import ConfigError

        raise ConfigError(f"memory_budget_gb={execution.memory_budget_gb} is not allowed: memory_budget_gb must "
                          f"exceed one seed's need (~{bytes_per_seed(cfg) / 2**30:.2f} GB)")
    per_device = max(1, fit // devices)
    return min(per_device * devices, math.ceil(cfg.seeds / devices) * devices)


def stored_pieces(directory: Path) -> dict[tuple[int, int], Path]:
    """Finished pieces by seed range ``[lo, hi)``."""
    found = {}
    for path in sorted((directory / "pieces").glob("seeds_*.npz")):
        if m := PIECE.search(path.name):
            found[(int(m.group(1)), int(m.group(2)))] = path
    return found


def _coverage(spans, n_seeds: int) -> np.ndarray:
    """Per seed: True when one of the seed ranges ``spans`` holds it."""
    covered = np.zeros(n_seeds, bool)
    for lo, hi in spans:
        covered[lo:min(hi, n_seeds)] = True
    return covered


def _piece_path(directory: Path, lo: int, hi: int) -> Path:
    return directory / "pieces" / f"seeds_{lo:06d}_{hi:06d}.npz"


def merge(pieces: list[dict], n_seeds: int) -> dict:
    """One result for seeds ``0..n_seeds-1`` from pieces that cover them (first piece wins on overlap)."""
    owner, row = np.full(n_seeds, -1), np.zeros(n_seeds, int)
    for k, piece in enumerate(pieces):
        for r, s in enumerate(piece["seed"]):
            if 0 <= s < n_seeds and owner[s] < 0:
                owner[s], row[s] = k, r
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        raise ValueError(f"cannot merge: seeds {missing.tolist()[:10]}... have no stored piece")
    return jax.tree.map(lambda *xs: np.stack([xs[owner[s]][row[s]] for s in range(n_seeds)]), *pieces)


def run(cfg: pipeline.AuxConfig, mnist, directory: Path | None = None, show_progress: bool = True,
        force: bool = False, execution: Execution | None = None) -> dict | None:
    """All worlds of ``cfg``, or None when other shards still have seeds to compute.

    With ``directory``, each finished block is stored as a piece and stored pieces are reused.
    """
    ex = execution or Execution(force=force, progress=show_progress)
    shard_index, shard_count = parallel.shard_of_process(ex.shard)
    donor_ids = pipeline.donors(cfg)
    block = block_size(cfg, ex)
    grid = [(lo, min(lo + block, cfg.seeds)) for lo in range(0, cfg.seeds, block)]
    loaded: dict[tuple[int, int], dict] = {}
    if directory is not None and not ex.force:
        for span, path in stored_pieces(directory).items():
            kept = not ex.keep_params or all(params_lib.seed_path(directory, s).exists() for s in range(*span))
            if kept and (piece := store.load_arrays(path)) is not None:
                loaded[span] = piece
    covered = _coverage(loaded, cfg.seeds)
    mine = [s for k, s in enumerate(grid) if k % shard_count == shard_index and not covered[s[0]:s[1]].all()]
    if not ex.compute:
        mine = []
    with progress_bar(len(mine) * len(phases(cfg)), ex.progress) as advance:
        for lo, hi in mine:
            piece = run_block(cfg, np.arange(lo, hi), donor_ids[lo:hi], mnist, advance,
                              on_nonfinite=ex.on_nonfinite, experiment=ex.experiment, keep_state=ex.keep_params)
            if ex.keep_params:
                state = piece.pop("state")
                if directory is not None:
                    params_lib.save_population(directory, np.arange(lo, hi), lambda row: kept_params(cfg, state, row))
            if directory is not None:
                store.save_arrays(_piece_path(directory, lo, hi), piece)
            loaded[(lo, hi)] = piece
            covered[lo:hi] = True
    parallel.barrier("minisub-pieces")
    if directory is not None and shard_count > 1:  # other processes' pieces
        for span, path in stored_pieces(directory).items():
            if span not in loaded and (piece := store.load_arrays(path)) is not None:
                loaded[span] = piece
                covered[span[0]:min(span[1], cfg.seeds)] = True
    if not covered.all():
        return None
    return merge([loaded[s] for s in sorted(loaded)], cfg.seeds)


def kept_params(cfg: pipeline.AuxConfig, state: dict, row: int) -> dict:
    """The trees ``--keep-params`` stores for one world (row ``row`` of a block's final state).

    ``teacher/init``, ``teacher/final`` and, per arm, ``students/<arm>/init`` (after a matched arm's
    pre-phase: where its noise phase starts) and ``students/<arm>/final``.
    """
    pick = lambda tree, *index: jax.tree.map(lambda x: np.asarray(x[index]), tree)  # noqa: E731
    trees = {"teacher/init": pick(state["teacher_init"], row), "teacher/final": pick(state["teacher"], row)}
    for k, arm in enumerate(cfg.arm_names):
        trees[f"students/{arm}/init"] = pick(state["student_init"], row, k)
        trees[f"students/{arm}/final"] = pick(state["students"], row, k)
    return trees


def missing_seeds(cfg: pipeline.AuxConfig, directory: Path) -> np.ndarray:
    return np.flatnonzero(~_coverage(stored_pieces(directory), cfg.seeds))


def one_program(name: str, cfg, ex: Execution, compute, resummarise=None, *, reusable=None) -> tuple[dict, Path]:
    """An experiment that computes all its seeds in one program: read it from the store, or compute and store it.

    ``compute(log) -> (arrays, summary without timing)``; ``log`` prints progress lines (None
    without progress). A complete stored run is returned as is, or, given ``resummarise(arrays,
    stored summary) -> summary``, summarised again from its arrays: the arrays are the record, so
    a summary that gains a measurement needs no recompute. ``reusable(stored summary) -> bool``, when
    given, can refuse a stored run (an older schema, an input that has become available since), which
    is then computed again. ``minisub merge`` (no compute) and
    ``--shard`` are refused, since there are no pieces to merge.
    """
    from minisub import config as config_lib
    from minisub.config import ConfigError, require

    directory = store.run_dir(name, cfg)
    done = None if ex.force else store.load_complete(directory)
    if done and (reusable is None or reusable(done[1])):
        return (resummarise(*done) if resummarise else done[1]), directory
    if not ex.compute:
        raise ConfigError(f"{name} has no shards to merge: run it with `minisub run {name}`")
    require(ex.shard == (0, 1), "shard", f"{ex.shard[0]}/{ex.shard[1]}", f"0/1 ({name} runs all seeds in one program)")
    if parallel.is_writer():
        store.write_json(directory / "config.json", {"config": config_lib.to_dict(cfg), **store.provenance()})
    start = time.time()
    log = (lambda m: print(f"{name} [{time.time() - start:5.0f}s] {m}", flush=True)) if ex.progress else None
    with precision.applied():
        arrays, summary = compute(log)
    summary = {**summary, "seconds": round(time.time() - start, 1)}
    if parallel.is_writer():
        store.finish(directory, arrays, summary)
    return summary, directory
