"""Key derivation: one root seed per run, named branches, per-seed and per-step keys by fold_in."""

from __future__ import annotations

import zlib

import jax


def root(seed: int):
    """The typed root key of a run."""
    return jax.random.key(seed)


def branch(key, name: str):
    """An independent stream named ``name`` (stable across runs and Python versions)."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def member(key, index):
    """The key of population member ``index`` (an int or a traced int) within a branch."""
    return jax.random.fold_in(key, index)


def stream(seed: int, name: str, index):
    """Member ``index`` of the branch ``name`` of the run seeded ``seed``: one world's key for one purpose."""
    return member(branch(root(seed), name), index)
