"""A tiny decoder-only transformer as Flax NNX modules, used functionally like ``models.MLPSpec``.

``TransformerSpec.init(key) -> nnx.State`` and ``spec.apply(params, tokens_BxL) -> logits_BxLxV``;
``jax.vmap(spec.init)(keys)`` gives a population. Pre-LayerNorm blocks, learned positional
embedding, causal self-attention, GELU MLP, tied or untied unembedding; no dropout, no biases in
the matmuls (LayerNorm keeps its scale and bias).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from minisub import keys, lineage

EMBED_INIT = nnx.initializers.normal(0.02)  # GPT-2's embedding scale
# How the matmuls of a linear layer run (``TransformerSpec.kernels``): 'reference' is every stored run's
# program; 'fast' gives the weight gradient its own VJP (``dense``), the same maths in other dot shapes.
KERNELS = ("reference", "fast")
# 'fast' for forward-mode programs (``TransformerSpec.forward_mode``): ``dense_jvp``'s rule instead.
FORWARD_KERNELS = {"reference": "reference", "fast": "fast_jvp"}
_MASKED = -1e9  # a finite "minus infinity": exp underflows to exactly 0, so masked keys get no weight


@jax.custom_vjp
def dense(x_xD, w_DxF):
    """``x @ w`` whose weight gradient transposes the narrower of ``x`` and the cotangent itself.

    Left to itself XLA:CPU feeds the weight gradient's batched dot a transposed copy of whichever
    operand its layout assignment picks, often the wide one (GELU's [N, 4·width] backward, written
    transposed at about 5x the cost of the plain fusion). An ``optimization_barrier`` makes the
    narrow transpose explicit, so XLA cannot fold it back into the dot. The forward and ``dx`` are
    the reference's products; ``dw`` sums the same terms in another order (last-bit differences).
    Reverse mode only (a custom VJP): forward-mode programs use ``dense_jvp``.
    """
    return x_xD @ w_DxF


def _dense_fwd(x_xD, w_DxF):
    return x_xD @ w_DxF, (x_xD, w_DxF)


def _dense_bwd(res, dy_xF):
    x_xD, w_DxF = res
    x_NxD, dy_NxF = x_xD.reshape(-1, x_xD.shape[-1]), dy_xF.reshape(-1, dy_xF.shape[-1])
    if x_NxD.shape[1] <= dy_NxF.shape[1]:
        dw_DxF = jax.lax.optimization_barrier(x_NxD.T) @ dy_NxF
    else:
        dw_DxF = (jax.lax.optimization_barrier(dy_NxF.T) @ x_NxD).T
    return dy_xF @ w_DxF.T, dw_DxF


dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_jvp
def dense_jvp(x_xD, w_DxF):
    """``dense`` for forward mode (``jax.linearize``, then ``linear_transpose``: the diagnostic's CG).

    The tangent's weight term reads an explicit transpose of ``x`` (a primal, so it is computed once
    per linearisation), and the transposed program's weight cotangent is then a plain dot. In reverse
    mode ``dense`` is faster: it may transpose the narrower cotangent instead, which a JVP cannot name.
    """
    return x_xD @ w_DxF


@dense_jvp.defjvp
def _dense_jvp_rule(primals, tangents):
    x_xD, w_DxF = primals
    dx_xD, dw_DxF = tangents
    xt_DxN = jax.lax.optimization_barrier(x_xD.reshape(-1, x_xD.shape[-1]).T)
    dy_NxF = xt_DxN.T @ dw_DxF
    return x_xD @ w_DxF, dx_xD @ w_DxF + dy_NxF.reshape(*x_xD.shape[:-1], w_DxF.shape[-1])


_DENSE = {"fast": dense, "fast_jvp": dense_jvp}


def _linear(layer: nnx.Linear, x, kernels: str):
    """``layer(x)`` (a bias-free linear layer) under ``kernels``."""
    return layer(x) if kernels == "reference" else _DENSE[kernels](x, layer.kernel[...])


class Attention(nnx.Module):
    """Causal multi-head self-attention."""

    def __init__(self, width: int, heads: int, out_init, *, rngs: nnx.Rngs, kernels: str = "reference"):
        self.qkv = nnx.Linear(width, 3 * width, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(width, width, use_bias=False, kernel_init=out_init, rngs=rngs)
        self.heads = heads
        self.kernels = kernels

    def __call__(self, x_BxLxD):
        return self.attend(*self.project(x_BxLxD))

    def project(self, x_BxLxD):
        """Queries, keys and values ``[B, L, H, K]`` of every position."""
        B, L, D = x_BxLxD.shape
        qkv_BxLx3xHxK = _linear(self.qkv, x_BxLxD, self.kernels).reshape(B, L, 3, self.heads, D // self.heads)
        return tuple(qkv_BxLx3xHxK[:, :, i] for i in range(3))

    def attend(self, q_BxQxHxK, k_BxLxHxK, v_BxLxHxK, visible_QxL=None):
        """The output of queries ``[B, Q]`` attending to the keys ``visible_QxL`` lets them see (None: causal)."""
        B, Q, H, K = q_BxQxHxK.shape
        s_BxHxQxL = jnp.einsum("blhk,bmhk->bhlm", q_BxQxHxK, k_BxLxHxK) / math.sqrt(K)
        if visible_QxL is None:
            visible_QxL = jnp.tril(jnp.ones((Q, Q), bool))
        # where (not add): a masked score gets exactly zero gradient, so later tokens cannot leak back
        p_BxHxQxL = jax.nn.softmax(jnp.where(visible_QxL, s_BxHxQxL, _MASKED), axis=-1)
        y_BxQxHxK = jnp.einsum("bhlm,bmhk->blhk", p_BxHxQxL, v_BxLxHxK)
        return _linear(self.out, y_BxQxHxK.reshape(B, Q, H * K), self.kernels)


class Block(nnx.Module):
    """x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, out_init, *, rngs: nnx.Rngs,
                 kernels: str = "reference"):
        self.ln_attn = nnx.LayerNorm(width, rngs=rngs)
        self.attn = Attention(width, heads, out_init, rngs=rngs, kernels=kernels)
        self.ln_mlp = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, mlp_ratio * width, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(mlp_ratio * width, width, use_bias=False, kernel_init=out_init, rngs=rngs)
        self.kernels = kernels

    def __call__(self, x_BxLxD):
        x_BxLxD = x_BxLxD + self.attn(self.ln_attn(x_BxLxD))
        return x_BxLxD + self.mlp(x_BxLxD)

    def mlp(self, x_BxLxD):
        h_BxLxF = jax.nn.gelu(_linear(self.up, self.ln_mlp(x_BxLxD), self.kernels))
        return _linear(self.down, h_BxLxF, self.kernels)

    def decode(self, x_BxQxD, cache, at, visible_QxL):
        """``__call__`` for the positions ``at .. at + Q - 1`` alone, their keys and values written into
        ``cache = (k, v)`` ``[B, L, H, K]`` (earlier positions' already there): (x, cache)."""
        q, k, v = self.attn.project(self.ln_attn(x_BxQxD))
        k_cache = jax.lax.dynamic_update_slice_in_dim(cache[0], k, at, axis=1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(cache[1], v, at, axis=1)
        x_BxQxD = x_BxQxD + self.attn.attend(q, k_cache, v_cache, visible_QxL)
        return x_BxQxD + self.mlp(x_BxQxD), (k_cache, v_cache)


class Transformer(nnx.Module):
    """Token + position embedding, pre-LN blocks, final LN, (tied) unembedding."""

    def __init__(self, vocab: int, context: int, layers: int, width: int, heads: int, mlp_ratio: int,
                 tied: bool, *, rngs: nnx.Rngs, kernels: str = "reference"):
        # GPT-2: residual-writing projections scaled by 1/sqrt(2 * layers) so the stream's variance
        # does not grow with depth.
        out_init = nnx.initializers.variance_scaling(1.0 / (2 * layers), "fan_in", "truncated_normal")
        self.embed = nnx.Embed(vocab, width, embedding_init=EMBED_INIT, rngs=rngs)
        self.pos = nnx.Param(EMBED_INIT(rngs.params(), (context, width)))
        self.blocks = nnx.List([Block(width, heads, mlp_ratio, out_init, rngs=rngs, kernels=kernels)
                                for _ in range(layers)])
        self.ln_f = nnx.LayerNorm(width, rngs=rngs)
        self.unembed = None if tied else nnx.Linear(width, vocab, use_bias=False, rngs=rngs)
        self.kernels = kernels

    def __call__(self, tokens_BxL):
        return self.from_embedding(self.embedding(tokens_BxL))

    def embedding(self, tokens_BxL):
        return self.embed(tokens_BxL) + self.pos[...][: tokens_BxL.shape[-1]]

    def from_embedding(self, x_BxLxD):
        for block in self.blocks:
            x_BxLxD = block(x_BxLxD)
        return self.readout(x_BxLxD)

    def readout(self, x_BxLxD):
        h_BxLxD = self.ln_f(x_BxLxD)
        if self.unembed is not None:
            return _linear(self.unembed, h_BxLxD, self.kernels)
        if self.kernels == "reference":
            return self.embed.attend(h_BxLxD)
        return _DENSE[self.kernels](h_BxLxD, self.embed.embedding[...].T)

    def decode(self, tokens_BxQ, caches, at):
        """Logits of positions ``at .. at + Q - 1`` given the keys and values of the earlier ones in
        ``caches`` (one ``(k, v)`` per block, ``[B, L, H, K]``): (logits ``[B, Q, V]``, caches)."""
        Q, L = tokens_BxQ.shape[1], caches[0][0].shape[1]
        x = self.embed(tokens_BxQ) + jax.lax.dynamic_slice_in_dim(self.pos[...], at, Q)
        visible_QxL = jnp.arange(L)[None, :] <= at + jnp.arange(Q)[:, None]
        out = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.decode(x, cache, at, visible_QxL)
            out.append(cache)
        return self.readout(x), out


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """Shape of a decoder-only transformer (hashable: a jit static); ConfigError names a bad field."""

    vocab: int
    context: int
    layers: int = 2
    width: int = 32
    heads: int = 2
    mlp_ratio: int = 4
    tied_embeddings: bool = True
    kernels: str = "reference"  # KERNELS: how the linear layers' matmuls run (not the function computed)

    def __post_init__(self):
        from minisub.config import require, require_choice

        require_choice("kernels", self.kernels, tuple(dict.fromkeys(KERNELS + tuple(FORWARD_KERNELS.values()))))
        for name in ("vocab", "context", "layers", "width", "heads", "mlp_ratio"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(self.width % self.heads == 0, "heads", self.heads, f"a divisor of width={self.width}")

    def module(self, key) -> Transformer:
        return Transformer(self.vocab, self.context, self.layers, self.width, self.heads, self.mlp_ratio,
                           self.tied_embeddings, rngs=nnx.Rngs(params=key), kernels=self.kernels)

    @property
    def forward_mode(self) -> "TransformerSpec":
        """This spec for programs that take JVPs (``dense`` defines a VJP only): its kernels' forward form."""
        return dataclasses.replace(self, kernels=FORWARD_KERNELS.get(self.kernels, self.kernels))

    def init(self, key) -> nnx.State:
        """Fresh parameters from a typed key (vmap over keys for a population)."""
        return nnx.split(self.module(key))[1]

    def apply(self, params: nnx.State, tokens_BxL):
        """Next-token logits ``[B, L, vocab]``; position t sees tokens 0..t only."""
        return nnx.merge(_graphdef(self), params)(tokens_BxL)

    def decode(self, params: nnx.State, tokens_BxQ, caches, at):
        """``Transformer.decode``: logits of ``Q`` new positions from a key/value cache (``empty_cache``)."""
        return nnx.merge(_graphdef(self), params).decode(tokens_BxQ, caches, at)

    def empty_cache(self, batch: int, dtype=jnp.float32):
        """Zero keys and values ``[batch, context, heads, width / heads]`` for every block."""
        shape = (batch, self.context, self.heads, self.width // self.heads)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(self.layers)]

    def embed(self, params: nnx.State, tokens_BxL):
        """The residual stream's input (token + position embedding): ``[B, L, width]``."""
        return nnx.merge(_graphdef(self), params).embedding(tokens_BxL)

    def apply_embedded(self, params: nnx.State, x_BxLxD):
        """Logits from a given input embedding (for gradients w.r.t. the inputs, e.g. causality)."""
        return nnx.merge(_graphdef(self), params).from_embedding(x_BxLxD)

    def unembedding(self, params: nnx.State):
        """``[vocab, width]``: token v's readout direction is row v (logits = LN(x) · rowᵀ); the
        embedding matrix itself when tied."""
        model = nnx.merge(_graphdef(self), params)
        return model.embed.embedding[...] if model.unembed is None else model.unembed.kernel[...].T

    def flops_per_token(self) -> int:
        """Forward FLOPs per token at full context: 2 x matmul weights + attention (Kaplan et al. 2020).

        Counts the qkv, output, MLP and unembedding matmuls and 2 * layers * context * width for the
        scores and the weighted values; embeddings lookups, LayerNorm and softmax are omitted.
        """
        d, f = self.width, self.mlp_ratio * self.width
        per_layer = 3 * d * d + d * d + 2 * d * f
        return 2 * (self.layers * per_layer + d * self.vocab) + 2 * self.layers * self.context * d


    # --- what lineages address (minisub.lineage) ---
    @property
    def parts(self) -> tuple[str, ...]:
        """The parts a lineage can address; a tied model has no 'unembedding' part (see ``part_of``)."""
        return ("embeddings", "attention", "mlp") + (() if self.tied_embeddings else ("unembedding",))

    def part_of(self, path: str) -> str:
        """The part of the leaf at ``path`` (e.g. 'blocks.0.attn.qkv.kernel' -> 'attention').

        Each sublayer's pre-LayerNorm belongs to it ('ln_attn': attention, 'ln_mlp': mlp), the
        final LayerNorm to the readout. Tied embeddings: one matrix is both the token embedding
        and the readout; it is the 'embeddings' part's, and so is the readout's LayerNorm, so the
        tied model has no 'unembedding' part (perturbing it would move the input map too).
        """
        names = path.split(".")
        if names[0] in ("embed", "pos"):
            return "embeddings"
        if names[0] == "blocks":
            return "attention" if names[2] in ("ln_attn", "attn") else "mlp"
        return "embeddings" if self.tied_embeddings else "unembedding"  # ln_f, unembed

    def permute(self, params, key):
        """``params`` with every block's attention heads and MLP hidden units permuted: same function.

        Block ``b`` draws its head permutation from ``member(member(key, b), 0)`` and its unit
        permutation from ``member(member(key, b), 1)``; neither is the identity (for 2+ heads/units).
        Heads move as a whole: their q, k and v columns together, and the rows of the output
        projection that read them; a unit moves with its column of ``up`` and its row of ``down``.
        """
        H, K = self.heads, self.width // self.heads
        perms = [(_moving_permutation(keys.member(keys.member(key, b), 0), H),
                  _moving_permutation(keys.member(keys.member(key, b), 1), self.mlp_ratio * self.width))
                 for b in range(self.layers)]

        def leaf(path, w):
            names = path.split(".")
            if names[0] != "blocks":
                return w
            heads, units = perms[int(names[1])]
            where = ".".join(names[2:])
            if where == "attn.qkv.kernel":  # columns ordered (q/k/v, head, k)
                return w.reshape(w.shape[0], 3, H, K)[:, :, heads].reshape(w.shape)
            if where == "attn.out.kernel":  # rows ordered (head, k)
                return w.reshape(H, K, -1)[heads].reshape(w.shape)
            if where == "up.kernel":
                return w[:, units]
            if where == "down.kernel":
                return w[units, :]
            return w

        return lineage.map_leaves(leaf, params)


def _moving_permutation(key, n: int):
    """A random permutation of ``range(n)`` that is not the identity when n >= 2 (identity -> a shift by one).

    With 2 heads a uniform draw is the identity half the time: the student would keep the teacher's
    parameters there. Jit-friendly (no rejection loop).
    """
    perm = jax.random.permutation(key, n)
    return jnp.where(jnp.all(perm == jnp.arange(n)), jnp.roll(jnp.arange(n), 1), perm)


_GRAPHDEFS: dict[TransformerSpec, nnx.GraphDef] = {}


def _graphdef(spec: TransformerSpec) -> nnx.GraphDef:
    if spec not in _GRAPHDEFS:
        _GRAPHDEFS[spec] = nnx.split(nnx.eval_shape(lambda: spec.module(jax.random.key(0))))[0]
    return _GRAPHDEFS[spec]
