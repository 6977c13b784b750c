"""How a student's initialisation relates to its teacher's: the study's independent variable.

Every lineage is a function ``(spec, teacher_init, other_init) -> student_init`` where
``other_init`` is the initialisation of *another* member of the population (chosen by a
derangement, so never the teacher's own). Lineages are registered by name in ``LINEAGES``.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from minisub import keys


def shared(spec, teacher_init, other_init):
    """The student starts exactly at the teacher's initial parameters."""
    del spec, other_init
    return teacher_init


def different(spec, teacher_init, other_init):
    """The student starts at another seed's initialisation (same distribution, independent draw)."""
    del spec, teacher_init
    return other_init


LINEAGES: dict[str, Callable] = {"shared": shared, "different": different}


def student_init(name: str, spec, teacher_init, other_init):
    return LINEAGES[name](spec, teacher_init, other_init)


def derangement(key, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 members, got n={n}")
    for attempt in range(10_000):  # P(derangement) -> 1/e, so this ends after ~3 draws
        perm = np.asarray(jax.random.permutation(keys.member(key, attempt), n))
        if not np.any(perm == np.arange(n)):
            return perm
    raise RuntimeError("no derangement found")  # pragma: no cover
