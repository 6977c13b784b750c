"""Inputs derived from keys: the per-seed fixed noise set is never materialised."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NOISE_KINDS = ("uniform", "gaussian", "zeros")


def noise_example(key, index, dim: int, kind: str):
    """Example ``index`` of the fixed noise set named by ``key`` (same key, same image, always)."""
    k = jax.random.fold_in(key, index)
    if kind == "uniform":
        return jax.random.uniform(k, (dim,), minval=-1.0, maxval=1.0)
    if kind == "gaussian":
        return jax.random.normal(k, (dim,))
    if kind == "zeros":
        return jnp.zeros((dim,))
    raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")


def noise_batch(key, idx_B, dim: int, kind: str):
    """The images ``idx_B`` of the noise set named by ``key``: ``[B, dim]``."""
    return jax.vmap(lambda i: noise_example(key, i, dim, kind))(idx_B)
