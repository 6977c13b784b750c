"""Networks as Flax NNX modules, used functionally: ``init(key) -> params``, ``apply(params, x)``.

Parameters are ``nnx.State`` pytrees, so ``jax.vmap`` over keys gives a population of networks
and every ``jax.tree`` operation (distances, lineage arithmetic, optax) works on them directly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from minisub import keys, lineage

ACTIVATIONS: dict[str, Callable] = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh, "silu": jax.nn.silu}

# Kernel initialisers by name; biases are always zero.
INITS: dict[str, Callable] = {
    # The paper's: W ~ N(0, 1/fan_in), untruncated.
    "normal_fan_in": nnx.initializers.variance_scaling(1.0, "fan_in", "normal"),
    "lecun_truncated": nnx.initializers.lecun_normal(),
    "he_normal": nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
}


def validate_mlp_fields(cfg) -> None:
    """Check a config's ``hidden``, ``activation``, ``init`` and ``n_aux`` (ConfigError naming the field)."""
    from minisub.config import require, require_choice

    require(len(cfg.hidden) >= 1 and min(cfg.hidden) >= 1, "hidden", cfg.hidden, "one or more widths >= 1")
    require_choice("activation", cfg.activation, tuple(ACTIVATIONS))
    require_choice("init", cfg.init, tuple(INITS))
    require(cfg.n_aux >= 1, "n_aux", cfg.n_aux, "an integer >= 1")


class MLP(nnx.Module):
    """``in -> hidden... -> n_classes + n_aux`` logits; the head is one linear layer."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, activation: str, init: str, *, rngs: nnx.Rngs):
        kernel_init = INITS[init]
        widths = (n_in, *hidden)
        self.hidden = nnx.List(
            [nnx.Linear(a, b, kernel_init=kernel_init, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.head = nnx.Linear(widths[-1], n_out, kernel_init=kernel_init, rngs=rngs)
        self.activation = activation

    def __call__(self, x_BxI):
        act = ACTIVATIONS[self.activation]
        for layer in self.hidden:
            x_BxI = act(layer(x_BxI))
        return self.head(x_BxI)


@dataclasses.dataclass(frozen=True)
class MLPSpec:
    """Shape and init of an MLP with class and auxiliary logits (hashable: a jit static)."""

    n_in: int = 784
    hidden: tuple[int, ...] = (256, 256)
    n_classes: int = 10
    n_aux: int = 3
    activation: str = "relu"
    init_scheme: str = "normal_fan_in"

    @property
    def n_out(self) -> int:
        return self.n_classes + self.n_aux

    def module(self, key) -> MLP:
        return MLP(self.n_in, self.hidden, self.n_out, self.activation, self.init_scheme, rngs=nnx.Rngs(params=key))

    def init(self, key) -> nnx.State:
        """Fresh parameters from a typed key (vmap over keys for a population)."""
        return nnx.split(self.module(key))[1]

    def apply(self, params: nnx.State, x_BxI):
        return nnx.merge(self._graphdef(), params)(x_BxI)

    def _graphdef(self):
        return _graphdef(self)

    def flops_per_example(self) -> int:
        """Multiply-adds x 2 of one forward pass (the matmuls; biases and activations omitted)."""
        widths = (self.n_in, *self.hidden, self.n_out)
        return 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))

    # --- what lineages address (minisub.lineage) ---
    @property
    def parts(self) -> tuple[str, ...]:
        """The parts a lineage can address: every hidden layer, and the output head."""
        return ("hidden", "head")

    def part_of(self, path: str) -> str:
        """The part of the leaf at ``path`` ('hidden.0.kernel' -> 'hidden', 'head.bias' -> 'head')."""
        return "head" if path.split(".")[0] == "head" else "hidden"

    def permute(self, params, key):
        """``params`` with the units of every hidden layer permuted: same function, other parameters."""
        perms = hidden_permutations(self, key)
        depth = len(self.hidden)

        def leaf(path, w):
            layer, name = lineage.layer_of(path), path.rpartition(".")[2]
            k = depth if layer == "head" else int(layer.split(".")[1])
            if k < depth:  # this layer's outputs are hidden units: permute them
                w = w[..., perms[k]]
            if name == "kernel" and k > 0:  # its inputs are the previous layer's (permuted) units
                w = w[perms[k - 1], :]
            return w

        return lineage.map_leaves(leaf, params)


def hidden_permutations(spec: MLPSpec, key) -> list[jax.Array]:
    """One random permutation of the units of every hidden layer (layer k: ``member(key, k)``)."""
    return [jax.random.permutation(keys.member(key, k), width) for k, width in enumerate(spec.hidden)]


_GRAPHDEFS: dict[MLPSpec, nnx.GraphDef] = {}


def _graphdef(spec: MLPSpec) -> nnx.GraphDef:
    if spec not in _GRAPHDEFS:
        _GRAPHDEFS[spec] = nnx.split(nnx.eval_shape(lambda: spec.module(jax.random.key(0))))[0]
    return _GRAPHDEFS[spec]


def class_logits(spec: MLPSpec, logits_BxO):
    return logits_BxO[..., : spec.n_classes]


def output_mask(spec: MLPSpec, outputs: str):
    """Boolean mask over the logits a loss reads: 'aux', 'class' or 'all'."""
    idx = jnp.arange(spec.n_out)
    return {"aux": idx >= spec.n_classes, "class": idx < spec.n_classes, "all": idx >= 0}[outputs]


def layer_names(params: nnx.State) -> list[str]:
    """Dotted names of the parameterised layers, in order (``hidden.0``, ..., ``head``)."""
    return [f"hidden.{i}" for i in range(len(params["hidden"]))] + ["head"]
