"""Vector arithmetic on parameter pytrees (any model): the one home of dot products and cosines."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dot(a, b):
    """Σ over leaves of ⟨a, b⟩ (leaves in the trees' common order)."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def norm(a):
    return jnp.sqrt(dot(a, a))


def cos(a, b):
    """cos(a, b); 0 when either is zero (the 1e-30 floor keeps the gradient finite)."""
    return dot(a, b) / jnp.maximum(jnp.sqrt(dot(a, a) * dot(b, b)), 1e-30)


def axpy(alpha, x, y):
    """y + alpha·x, leaf by leaf."""
    return jax.tree.map(lambda xi, yi: yi + alpha * xi, x, y)


def sub(a, b):
    """a − b, leaf by leaf."""
    return jax.tree.map(jnp.subtract, a, b)
