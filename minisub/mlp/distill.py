"""Imitation losses: a student matching a teacher's outputs on any subset of logits.

Each returns one value per example; ``mask_O`` selects the logits the loss reads. Logits outside
the mask get exactly zero gradient (they are replaced, not multiplied), so an aux-only student
leaves its class rows untouched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EXCLUDED = -1e9  # a finite "minus infinity": exp underflows to 0 and 0 * log stays finite


def masked_log_softmax(logits_BxO, mask_O, temperature):
    z = jnp.where(mask_O, logits_BxO / temperature, _EXCLUDED)
    return jax.nn.log_softmax(z, axis=-1)


def kl(teacher_BxO, student_BxO, mask_O, temperature: float = 1.0):
    """KL(softmax(teacher/T) || softmax(student/T)) over the masked logits, per example."""
    log_p = masked_log_softmax(jax.lax.stop_gradient(teacher_BxO), mask_O, temperature)
    log_q = masked_log_softmax(student_BxO, mask_O, temperature)
    return jnp.sum(jnp.where(mask_O, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)


def soft_cross_entropy(teacher_BxO, student_BxO, mask_O, temperature: float = 1.0):
    """-sum softmax(teacher/T) log softmax(student/T): KL plus the teacher's entropy (same gradient)."""
    log_p = masked_log_softmax(jax.lax.stop_gradient(teacher_BxO), mask_O, temperature)
    log_q = masked_log_softmax(student_BxO, mask_O, temperature)
    return -jnp.sum(jnp.where(mask_O, jnp.exp(log_p) * log_q, 0.0), axis=-1)


def mse(teacher_BxO, student_BxO, mask_O, temperature: float = 1.0):
    """Mean squared error between raw logits over the masked outputs, per example."""
    del temperature
    sq = jnp.where(mask_O, (student_BxO - jax.lax.stop_gradient(teacher_BxO)) ** 2, 0.0)
    return jnp.sum(sq, axis=-1) / jnp.sum(mask_O, dtype=sq.dtype)


IMITATION_LOSSES = {"kl": kl, "soft_ce": soft_cross_entropy, "mse": mse}


def cross_entropy(logits_BxC, labels_B):
    """Hard-label softmax cross-entropy per example."""
    log_p = jax.nn.log_softmax(logits_BxC, axis=-1)
    return -jnp.take_along_axis(log_p, labels_B[:, None].astype(jnp.int32), axis=-1)[:, 0]


def weighted_mean(per_example_B, weight_B):
    """Mean over the examples with weight 1 (a padded last batch carries weight 0)."""
    return jnp.sum(per_example_B * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)
