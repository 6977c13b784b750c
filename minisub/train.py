"""Training building blocks: epoch batching from a key, optimisers, one epoch as a ``lax.scan``.

A step function has the shape ``step(carry, (idx_B, weight_B)) -> (carry, metrics)``: the batch
arrives as indices into a dataset (real or derived from a key) plus a 0/1 weight that pads the
last, shorter batch of an epoch to a fixed shape. Everything here is vmappable over seeds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "sgd")


def steps_per_epoch(n: int, batch: int) -> int:
    return -(-n // batch)


def epoch_batches(key, n: int, batch: int):
    """A fresh shuffle of ``range(n)`` cut into ``[steps, batch]`` indices and 0/1 weights."""
    steps = steps_per_epoch(n, batch)
    perm_N = jax.random.permutation(key, n)
    pad = steps * batch - n
    idx_SxB = jnp.concatenate([perm_N, jnp.zeros((pad,), perm_N.dtype)]).reshape(steps, batch)
    weight_SxB = (jnp.arange(steps * batch) < n).astype(jnp.float32).reshape(steps, batch)
    return idx_SxB, weight_SxB


def optimizer(name: str, lr: float, **kw) -> optax.GradientTransformation:
    """Adam (PyTorch defaults: b1 0.9, b2 0.999, eps 1e-8) or plain SGD."""
    if name == "adam":
        return optax.adam(lr, b1=kw.get("b1", 0.9), b2=kw.get("b2", 0.999), eps=kw.get("eps", 1e-8))
    if name == "sgd":
        return optax.sgd(lr, momentum=kw.get("momentum"))
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def run_epoch(step, carry, key, n: int, batch: int):
    """One shuffled epoch of ``step`` over ``n`` examples: returns (carry, per-step metrics)."""
    return jax.lax.scan(step, carry, epoch_batches(key, n, batch))


def optimizer_step(opt: optax.GradientTransformation, params, opt_state, grads):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
