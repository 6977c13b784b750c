"""How a student's initialisation relates to its teacher's: the study's independent variable.

A lineage is written as a string, ``name`` or ``name(param=value, ...)``, e.g. ``shared``,
``interpolated(alpha=0.5)``, ``perturbed(sigma=0.1, part=hidden)``. Every lineage function has
the signature ``fn(spec, teacher_init, fresh, key, **params) -> student_init`` where ``fresh``
is an independent draw from the student's init distribution (in the pipeline: another world's
init, chosen by a derangement, so never the teacher's own) and ``key`` drives any randomness of
the lineage itself. The key depends on the world and the lineage's *name* only, so one world's
perturbation direction (or permutation) is the same at every point of a parameter grid: common
random numbers along a sweep.

Two lineages need more than a function of inits, and the pipeline provides it:
``behaviourally_matched`` starts at ``fresh`` and is then distilled on all logits of the
teacher's *init* on real images before its noise phase (same function as the reference, other
parameters, reached by training); ``other_architecture`` starts at ``fresh`` drawn from a
student spec whose hidden layers differ from the teacher's (only the output head's shape agrees).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from minisub import keys
from minisub.config import ConfigError

PARTS = ("all", "hidden", "head")


def _layer_leaves(tree):
    """[(layer name, leaf name, leaf)] of a parameter tree: ('hidden.0', 'kernel', array), ..."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path]
        if names[-1] == "value":  # an nnx.Variable's payload
            names = names[:-1]
        out.append((".".join(names[:-1]), names[-1], leaf))
    return out


def _map_leaves(fn, *trees):
    """``fn(layer, leaf_name, *leaves)`` over aligned leaves of ``trees``; the first tree's structure."""
    flat = [_layer_leaves(t) for t in trees]
    new = [fn(layer, name, *(f[k][2] for f in flat)) for k, (layer, name, _) in enumerate(flat[0])]
    return jax.tree.unflatten(jax.tree.structure(trees[0]), new)


def _in_part(layer: str, part: str) -> bool:
    return part == "all" or (part == "head") == (layer == "head")


def shared(spec, teacher_init, fresh, key):
    """The student starts exactly at the teacher's initial parameters."""
    return teacher_init


def different(spec, teacher_init, fresh, key):
    """The student starts at an independent draw (another seed's init: same distribution)."""
    return fresh


def interpolated(spec, teacher_init, fresh, key, alpha: float):
    """θ_S⁰ = √α·θ_T⁰ + √(1−α)·θ_fresh: the weight variance is kept at every α (1: shared, 0: fresh)."""
    a, b = np.sqrt(alpha), np.sqrt(1.0 - alpha)
    return jax.tree.map(lambda t, f: a * t + b * f, teacher_init, fresh)


def perturbed(spec, teacher_init, fresh, key, sigma: float, part: str = "all"):
    """θ_T⁰ plus Gaussian noise of σ times each layer's weight std on the kernels of ``part``.

    ``part``: 'all' layers, 'hidden' layers only or the 'head' only. Biases (zero at init, so of
    zero spread) are left as they are.
    """
    layers = sorted({layer for layer, _, _ in _layer_leaves(teacher_init)})

    def leaf(layer, name, w):
        if name != "kernel" or not _in_part(layer, part):
            return w
        eps = jax.random.normal(keys.member(key, layers.index(layer)), w.shape, w.dtype)
        return w + sigma * jnp.std(w) * eps

    return _map_leaves(leaf, teacher_init)


def shared_head(spec, teacher_init, fresh, key):
    """The last (output) layer is the teacher's init; every hidden layer is fresh."""
    return _map_leaves(lambda layer, name, t, f: t if layer == "head" else f, teacher_init, fresh)


def shared_hidden(spec, teacher_init, fresh, key):
    """Every hidden layer is the teacher's init; the output layer is fresh."""
    return _map_leaves(lambda layer, name, t, f: f if layer == "head" else t, teacher_init, fresh)


def hidden_permutations(spec, key) -> list[jax.Array]:
    """One random permutation of the units of every hidden layer."""
    return [jax.random.permutation(keys.member(key, k), width) for k, width in enumerate(spec.hidden)]


def permuted(spec, teacher_init, fresh, key):
    """The teacher's init with the units of every hidden layer permuted: same function, other parameters."""
    perms = hidden_permutations(spec, key)
    depth = len(spec.hidden)

    def leaf(layer, name, w):
        k = depth if layer == "head" else int(layer.split(".")[1])
        if k < depth:  # this layer's outputs are hidden units: permute them
            w = w[..., perms[k]]
        if name == "kernel" and k > 0:  # its inputs are the previous layer's (permuted) units
            w = w[perms[k - 1], :]
        return w

    return _map_leaves(leaf, teacher_init)


def behaviourally_matched(spec, teacher_init, fresh, key):
    """Starts at a fresh init; the pipeline then distils it on the reference's logits (real images)."""
    return fresh


def other_architecture(spec, teacher_init, fresh, key, head: str = "fresh"):
    """A student whose hidden layers differ from the teacher's: fresh, or with the teacher's head init.

    ``head='shared'`` needs the head's shape to agree (the last hidden widths equal).
    """
    if head == "fresh":
        return fresh
    t_head, s_head = teacher_init["head"]["kernel"].shape, fresh["head"]["kernel"].shape
    if t_head != s_head:
        raise ConfigError(f"lineage other_architecture(head=shared) needs heads of one shape: the teacher's is "
                          f"{t_head}, the student's {s_head}")
    return fresh | {"head": teacher_init["head"]}


@dataclasses.dataclass(frozen=True)
class Param:
    """A lineage parameter: how to parse it, what is allowed, and its default (None: required)."""

    parse: Callable
    check: Callable
    allowed: str
    default: object = None


_UNIT = Param(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
LINEAGES: dict[str, tuple[Callable, dict[str, Param]]] = {
    "shared": (shared, {}),
    "different": (different, {}),
    "interpolated": (interpolated, {"alpha": _UNIT}),
    "perturbed": (perturbed, {
        "sigma": Param(float, lambda v: v >= 0.0, "a number >= 0"),
        "part": Param(str, lambda v: v in PARTS, "one of " + ", ".join(map(repr, PARTS)), "all"),
    }),
    "shared_head": (shared_head, {}),
    "shared_hidden": (shared_hidden, {}),
    "permuted": (permuted, {}),
    "behaviourally_matched": (behaviourally_matched, {}),
    "other_architecture": (other_architecture, {
        "head": Param(str, lambda v: v in ("fresh", "shared"), "one of 'fresh', 'shared'", "fresh"),
    }),
}
# Lineages whose student is another network than the teacher's (the pipeline's student spec).
OTHER_SPEC = ("other_architecture",)
# Lineages that take other parameters than the teacher's init directly (need seeds >= 2).
NEEDS_FRESH = ("different", "interpolated", "shared_head", "shared_hidden", "behaviourally_matched",
               "other_architecture")

_SYNTAX = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


def parse(text: str) -> tuple[str, dict]:
    """``'perturbed(sigma=0.1, part=head)'`` -> ``('perturbed', {'sigma': 0.1, 'part': 'head'})``, validated."""
    m = _SYNTAX.match(text)
    allowed_names = ", ".join(map(repr, LINEAGES))
    if not m or m.group(1) not in LINEAGES:
        raise ConfigError(f"lineage={text!r} is not allowed: lineage must be one of {allowed_names}, "
                          "optionally with parameters, e.g. 'interpolated(alpha=0.5)'")
    name, body = m.group(1), m.group(2)
    spec = LINEAGES[name][1]
    given: dict = {}
    for item in filter(None, (s.strip() for s in (body or "").split(","))):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in spec:
            raise ConfigError(f"lineage parameter {name}.{key} is not allowed: {name} takes "
                              f"{', '.join(spec) or 'no parameters'}")
        try:
            given[key] = spec[key].parse(value)
        except ValueError:
            raise ConfigError(f"lineage parameter {name}.{key}={value!r} is not allowed: "
                              f"{name}.{key} must be {spec[key].allowed}") from None
    for key, p in spec.items():
        if key not in given and p.default is None:
            raise ConfigError(f"lineage {name} needs {key}: {name}.{key} must be {p.allowed}")
        value = given.setdefault(key, p.default)
        if not p.check(value):
            raise ConfigError(f"lineage parameter {name}.{key}={value!r} is not allowed: "
                              f"{name}.{key} must be {p.allowed}")
    return name, given


def student_init(text: str, spec, teacher_init, fresh, key=None):
    """The student's initial parameters under lineage ``text`` (see the module docstring)."""
    name, params = parse(text)
    return LINEAGES[name][0](spec, teacher_init, fresh, key, **params)


def derangement(key, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 members, got n={n}")
    for attempt in range(10_000):  # P(derangement) -> 1/e, so this ends after ~3 draws
        perm = np.asarray(jax.random.permutation(keys.member(key, attempt), n))
        if not np.any(perm == np.arange(n)):
            return perm
    raise RuntimeError("no derangement found")  # pragma: no cover


def donors(seed: int, seeds: int, stream: str = "donor") -> np.ndarray:
    """``donor[i]``: whose init world ``i``'s other-init students take (a derangement; zeros below 2 seeds)."""
    if seeds < 2:
        return np.zeros(seeds, np.int32)
    return derangement(keys.branch(keys.root(seed), stream), seeds).astype(np.int32)
