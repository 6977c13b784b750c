"""Measurements of a population: accuracy and parameter-space geometry, per layer and in total."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from minisub.mlp.models import layer_names


def _per_layer(fn, *trees):
    """Apply ``fn`` to the leaves of each layer, summed within the layer: {layer: value}."""
    names = layer_names(trees[0])
    flat = [jax.tree_util.tree_flatten_with_path(t)[0] for t in trees]
    out = {name: 0.0 for name in names}
    for leaves in zip(*flat):
        path = leaves[0][0]
        name = ".".join(str(getattr(p, "key", getattr(p, "idx", ""))) for p in path[:-2])
        out[name] = out[name] + fn(*[leaf for _, leaf in leaves])
    return out


def geometry(student, student_init, teacher, teacher_init) -> dict[str, dict[str, jax.Array]]:
    """Distances and update alignment between a student and its teacher.

    Returns {quantity: {layer or 'total': value}} with quantities
    ``dist_teacher`` ||θ_S − θ_T||, ``dist_start_teacher`` ||θ_S⁰ − θ_T|| (where the student began),
    ``dist_init`` ||θ_S⁰ − θ_T⁰||, ``travel`` ||θ_S − θ_S⁰||,
    ``teacher_travel`` ||θ_T − θ_T⁰|| and ``update_cos`` cos(θ_S − θ_S⁰, θ_T − θ_T⁰).
    For a shared init, update_cos is the issue's cos(θ_S − θ⁰, θ_T − θ⁰).
    """
    d_s = jax.tree.map(jnp.subtract, student, student_init)
    d_t = jax.tree.map(jnp.subtract, teacher, teacher_init)
    sq = lambda a: jnp.sum(jnp.square(a))
    terms = {
        "dist_teacher": _per_layer(lambda s, t: sq(s - t), student, teacher),
        "dist_init": _per_layer(lambda s, t: sq(s - t), student_init, teacher_init),
        "dist_start_teacher": _per_layer(lambda s, t: sq(s - t), student_init, teacher),
        "travel": _per_layer(sq, d_s),
        "teacher_travel": _per_layer(sq, d_t),
        "dot": _per_layer(lambda a, b: jnp.sum(a * b), d_s, d_t),
    }
    for q in terms.values():
        q["total"] = sum(q.values())
    out = {q: {k: jnp.sqrt(v) for k, v in terms[q].items()} for q in terms if q != "dot"}
    out["update_cos"] = {
        k: terms["dot"][k] / jnp.maximum(out["travel"][k] * out["teacher_travel"][k], 1e-30) for k in terms["dot"]
    }
    return out


def accuracy(logits_fn, images_NxI, labels_N, chunk: int = 2000):
    """Fraction of ``labels_N`` equal to argmax of ``logits_fn(images)``, evaluated in chunks."""
    n = images_NxI.shape[0]
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    x = jnp.pad(images_NxI, ((0, pad), (0, 0))).reshape(n_chunks, chunk, -1)
    y = jnp.pad(labels_N.astype(jnp.int32), (0, pad), constant_values=-1).reshape(n_chunks, chunk)
    hits = jax.lax.map(lambda xy: jnp.sum(jnp.argmax(logits_fn(xy[0]), -1) == xy[1]), (x, y))
    return jnp.sum(hits) / n
