"""Permutation symmetry of an MLP's hidden units: permute, match, and the distance that ignores it.

Reordering the units of a hidden layer (its kernel's columns and bias, and the next kernel's
rows) leaves the network's function unchanged, so the raw L2 distance between two independently
initialised networks mixes real differences with an arbitrary labelling of units. Weight
matching (Ainsworth, Hayase & Srinivasa 2023, "Git Re-Basin"; samuela/git-re-basin) finds, layer
by layer, the permutation of one network's units that best aligns its weights with another's:
coordinate descent over layers, each step a linear assignment (``scipy.optimize
.linear_sum_assignment``) on the similarity of incoming weights, biases and outgoing weights.

Parameters are the ``nnx.State`` of ``models.MLP`` (``hidden.0 … hidden.{L-1}``, ``head``) or the
same as plain nested dicts (``{'hidden': {0: {...}, ...}, 'head': {...}}``, hidden keys ints or digit
strings), each layer a kernel ``[in, out]`` and a bias ``[out]``. A permutation ``perm`` of layer
``l`` means: unit ``i`` of the permuted network is unit ``perm[i]`` of the original.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.optimize import linear_sum_assignment


def _pure(params) -> dict:
    return params if isinstance(params, dict) else nnx.to_pure_dict(params)


def _layers(params) -> list[dict]:
    """[{'kernel', 'bias'}, ...] for hidden.0 … hidden.{L-1}, head, in order."""
    pure = _pure(params)
    hidden = pure["hidden"]
    return [hidden[k] for k in sorted(hidden, key=int)] + [pure["head"]]


def _with_layers(params, layers: list[dict]):
    """A copy of ``params`` whose layers hold ``layers``."""
    keys = sorted(_pure(params)["hidden"], key=int)
    pure = {"hidden": {k: layers[i] for i, k in enumerate(keys)}, "head": layers[-1]}
    if isinstance(params, dict):
        return pure
    out = jax.tree.map(lambda x: x, params)
    nnx.replace_by_pure_dict(out, pure)
    return out


def hidden_widths(params) -> tuple[int, ...]:
    return tuple(int(layer["bias"].shape[-1]) for layer in _layers(params)[:-1])


def identity(params) -> list[np.ndarray]:
    """The identity permutation of every hidden layer."""
    return [np.arange(n) for n in hidden_widths(params)]


def permute_hidden(params, perms):
    """The same function with hidden layer ``l``'s units reordered by ``perms[l]`` (jit-able)."""
    layers = _layers(params)
    if len(perms) != len(layers) - 1:
        raise ValueError(f"need one permutation per hidden layer ({len(layers) - 1}), got {len(perms)}")
    out = [dict(layer) for layer in layers]
    for l, perm in enumerate(perms):
        perm = jnp.asarray(perm)
        out[l]["kernel"] = jnp.take(out[l]["kernel"], perm, axis=-1)
        out[l]["bias"] = jnp.take(out[l]["bias"], perm, axis=-1)
        out[l + 1]["kernel"] = jnp.take(out[l + 1]["kernel"], perm, axis=-2)
    return _with_layers(params, out)


def random_permutations(key, params) -> list[jax.Array]:
    """One uniformly random permutation per hidden layer."""
    keys = jax.random.split(key, len(hidden_widths(params)))
    return [jax.random.permutation(k, n) for k, n in zip(keys, hidden_widths(params))]


def _similarity(ref: list[dict], other: list[dict], perms: list[np.ndarray], l: int) -> np.ndarray:
    """S[i, j]: how well unit j of ``other`` matches unit i of ``ref`` in layer l, the other layers' perms fixed."""
    w_in_b = other[l]["kernel"] if l == 0 else other[l]["kernel"][perms[l - 1], :]
    s_IxJ = ref[l]["kernel"].T @ w_in_b + np.outer(ref[l]["bias"], other[l]["bias"])
    w_out_b = other[l + 1]["kernel"] if l + 1 == len(perms) else other[l + 1]["kernel"][:, perms[l + 1]]
    return s_IxJ + ref[l + 1]["kernel"] @ w_out_b.T


def weight_matching(reference, other, *, max_sweeps: int = 100, seed: int = 0) -> list[np.ndarray]:
    """Per hidden layer, the permutation of ``other``'s units that best aligns its weights to ``reference``'s.

    Coordinate descent over the layers in a random order (``seed``) until a whole sweep improves
    nothing; each step maximises Σ_i S[i, perm[i]] exactly by linear assignment, which for fixed
    neighbours minimises the squared distance of that layer's incoming, bias and outgoing weights.
    """
    ref = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in _layers(reference)]
    oth = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in _layers(other)]
    if [layer["kernel"].shape for layer in ref] != [layer["kernel"].shape for layer in oth]:
        raise ValueError("weight matching needs two networks of the same shape")
    perms = [np.arange(layer["bias"].shape[-1]) for layer in ref[:-1]]
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        improved = False
        for l in rng.permutation(len(perms)):
            s_IxJ = _similarity(ref, oth, perms, l)
            rows, cols = linear_sum_assignment(s_IxJ, maximize=True)
            old, new = s_IxJ[rows, perms[l]].sum(), s_IxJ[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[l], improved = cols, True
        if not improved:
            break
    return perms


def distance(a, b):
    """‖a − b‖₂ over every parameter."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def align(reference, other, **kw):
    """``other`` with its hidden units permuted to match ``reference`` (the same function as ``other``)."""
    return permute_hidden(other, weight_matching(reference, other, **kw))


def aligned_distance(reference, other, **kw):
    """‖reference − align(reference, other)‖₂: the distance left once permutation symmetry is factored out."""
    return distance(reference, align(reference, other, **kw))
