"""Drive a population program: blocks of seeds, epochs with a progress bar, resumable pieces.

The hot path is entirely inside the jitted, seed-vmapped epoch programs of ``pipeline``; this
module only loops over blocks of seeds (each block is one stored, resumable piece) and epochs.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minisub import pipeline, store


class NonFiniteError(FloatingPointError):
    """Training produced NaN or inf; the message names the arm, seed and epoch."""


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool):
    """A rich progress bar (``advance(n, description)``), or a no-op when disabled."""
    if not enabled or total == 0:
        yield lambda n=1, description=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("starting", total=total)

        def advance(n=1, description=None):
            bar.update(task, advance=n, **({"description": description} if description else {}))

        yield advance


def _check_finite(cfg, loss, seed_ids, epoch: int, phase: str, arm_names):
    """Raise NonFiniteError naming the first world (and arm) whose losses are not finite."""
    bad = ~np.isfinite(loss)
    if not bad.any():
        return
    where = np.argwhere(bad)[0]
    arm = f", arm {arm_names[where[2]]}" if loss.ndim == 3 else ""
    raise NonFiniteError(
        f"non-finite {phase} loss in mnist-aux: seed {int(seed_ids[where[0]])}{arm}, "
        f"{phase} epoch {epoch}, step {int(where[1])}"
    )


def run_block(cfg: pipeline.AuxConfig, seed_ids: np.ndarray, donor_ids: np.ndarray, mnist, advance) -> dict:
    """Train and evaluate the worlds ``seed_ids``; returns numpy arrays with a leading seed axis."""
    train_x, train_y = jnp.asarray(mnist.train_images[: cfg.n_train]), jnp.asarray(mnist.train_labels[: cfg.n_train])
    test_x, test_y = jnp.asarray(mnist.test_images), jnp.asarray(mnist.test_labels)
    ids, donors = jnp.asarray(seed_ids, jnp.int32), jnp.asarray(donor_ids, jnp.int32)
    start = time.perf_counter()
    state = pipeline.init_population(cfg, ids, donors)
    teacher_loss, student_loss, evals = [], [], []
    for epoch in range(cfg.teacher_epochs):
        state, loss = pipeline.teacher_epoch(cfg, state, ids, epoch, train_x, train_y)
        loss = np.asarray(loss)
        _check_finite(cfg, loss, seed_ids, epoch, "teacher", cfg.arm_names)
        teacher_loss.append(loss)
        advance(1, f"seeds {seed_ids[0]}-{seed_ids[-1]}: teacher epoch {epoch + 1}/{cfg.teacher_epochs}")
    for epoch in range(cfg.student_epochs):
        state, loss = pipeline.student_epoch(cfg, state, ids, epoch)
        loss = np.asarray(loss)
        _check_finite(cfg, loss, seed_ids, epoch, "student", cfg.arm_names)
        student_loss.append(loss)
        evals.append(jax.tree.map(np.asarray, pipeline.evaluate(cfg, state, test_x, test_y)))
        advance(1, f"seeds {seed_ids[0]}-{seed_ids[-1]}: student epoch {epoch + 1}/{cfg.student_epochs}")
    seconds = time.perf_counter() - start
    per_epoch = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *evals)  # [seed, student epoch, ...]
    final = jax.tree.map(lambda x: x[:, -1], per_epoch)
    return {
        "seed": np.asarray(seed_ids),
        "donor": np.asarray(donor_ids),
        "accuracy": {"reference": final["reference"], "teacher": final["teacher"],
                     **{a: final["students"][:, k] for k, a in enumerate(cfg.arm_names)}},
        "student_accuracy_by_epoch": per_epoch["students"],  # [seed, epoch, arm]
        "geometry": final["geometry"],  # {quantity: {layer: [seed, arm]}}
        "geometry_by_epoch": per_epoch["geometry"],  # {quantity: {layer: [seed, epoch, arm]}}
        "teacher_loss": np.stack(teacher_loss, axis=1),  # [seed, epoch, step]
        "student_loss": np.stack(student_loss, axis=1),  # [seed, epoch, step, arm]
        "seconds": np.full(len(seed_ids), seconds / len(seed_ids)),
    }


def blocks(cfg: pipeline.AuxConfig) -> list[tuple[int, int]]:
    b = cfg.seeds_per_block
    return [(s, min(s + b, cfg.seeds)) for s in range(0, cfg.seeds, b)]


def merge(pieces: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *pieces)


def run(cfg: pipeline.AuxConfig, mnist, directory: Path | None = None, show_progress: bool = True,
        force: bool = False) -> dict:
    """All worlds of ``cfg``; with ``directory``, finished blocks are stored and reused (resume)."""
    donor_ids = pipeline.donors(cfg)
    spans = blocks(cfg)
    pieces: dict[tuple[int, int], dict] = {}
    if directory is not None and not force:
        for lo, hi in spans:
            piece = store.load_arrays(directory / "pieces" / f"seeds_{lo:06d}_{hi:06d}.npz")
            if piece is not None:
                pieces[(lo, hi)] = piece
    todo = [s for s in spans if s not in pieces]
    with progress_bar(len(todo) * (cfg.teacher_epochs + cfg.student_epochs), show_progress) as advance:
        for lo, hi in todo:
            ids = np.arange(lo, hi)
            piece = run_block(cfg, ids, donor_ids[lo:hi], mnist, advance)
            if directory is not None:
                store.save_arrays(directory / "pieces" / f"seeds_{lo:06d}_{hi:06d}.npz", piece)
            pieces[(lo, hi)] = piece
    return merge([pieces[s] for s in spans])
