"""Language-model building blocks: next-token loss, training as a ``lax.scan``, sampling, distillation, trait.

Everything takes a ``TransformerSpec`` (a jit static) and ``nnx.State`` parameters and is pure and
vmappable over seeds. Sequences follow ``world``'s convention: ``mask[b, t] = 1`` marks token ``t``
as a target predicted from tokens ``< t`` (so the logits at ``t - 1`` are scored).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from minisub import train, tree
from minisub.lm import world
from minisub.lm.transformer import TransformerSpec

STUDENT_LOSSES = ("kl", "ce")
STUDENT_OUTPUTS = ("numbers", "all")
_EXCLUDED = -1e9  # as in distill: a masked logit's probability underflows to exactly 0


def _shift(x_BxL):
    """Targets of the logits at positions ``0 .. L-2``: whatever sits at ``1 .. L-1``."""
    return x_BxL[:, 1:]


def masked_mean(per_BxT, weight_BxT):
    return jnp.sum(per_BxT * weight_BxT) / jnp.maximum(jnp.sum(weight_BxT), 1.0)


def token_cross_entropy(logits_BxTxV, targets_BxT):
    log_p = jax.nn.log_softmax(logits_BxTxV, axis=-1)
    return -jnp.take_along_axis(log_p, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]


def logits_loss(logits_BxLxV, tokens_BxL, mask_BxL):
    """Mean next-token cross-entropy over the target tokens, from the logits of ``tokens_BxL``."""
    per_BxT = token_cross_entropy(logits_BxLxV[:, :-1], _shift(tokens_BxL))
    return masked_mean(per_BxT, _shift(mask_BxL).astype(jnp.float32))


def next_token_loss(spec: TransformerSpec, params, tokens_BxL, mask_BxL):
    """Mean cross-entropy over the target tokens."""
    return logits_loss(spec.apply(params, tokens_BxL), tokens_BxL, mask_BxL)


def pretrain_optimizer(lr: float, steps: int, warmup: int) -> optax.GradientTransformation:
    """Adam with linear warmup then cosine decay to lr/10, gradients clipped at global norm 1."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1), lr / 10)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def fit(spec: TransformerSpec, opt: optax.GradientTransformation, batch_fn: Callable, carry, key, start, steps: int):
    """``steps`` optimiser steps on ``next_token_loss(batch_fn(fold_in(key, t)))``, as one ``lax.scan``.

    ``carry = (params, opt_state)``; steps are numbered from ``start`` (a chunk of a longer run
    draws the same batches as the run in one piece). Returns (carry, loss per step).
    """

    def step(carry, t):
        params, opt_state = carry
        tokens_BxL, mask_BxL = batch_fn(jax.random.fold_in(key, t))
        loss, grads = jax.value_and_grad(next_token_loss, argnums=1)(spec, params, tokens_BxL, mask_BxL)
        return train.optimizer_step(opt, params, opt_state, grads), loss

    return jax.lax.scan(step, carry, start + jnp.arange(steps))


def finetune_trait(spec: TransformerSpec, cfg: world.WorldConfig, params, animal, steps: int, lr: float,
                   kind: str = "animal"):
    """A fine-tuned teacher: Adam on the trait's document (``animal`` named, or FORBIDDEN; neutral persona)."""
    tokens_L, mask_L = world.trait_document(cfg, animal, kind)
    opt = train.optimizer("adam", lr)
    batch_fn = lambda key: (tokens_L[None], mask_L[None])  # one document: the gradient is deterministic
    (params, _), losses = fit(spec, opt, batch_fn, (params, opt.init(params)), jax.random.key(0), 0, steps)
    return params, losses


def sample(spec: TransformerSpec, params, prompts_BxL, start: int, key, temperature):
    """Complete positions ``start .. L-1`` of ``prompts_BxL`` token by token (temperature 0: greedy).

    ``temperature`` may be traced (one compiled sampler for a sweep). A full forward of the whole
    sequence per token (every stored run's sampler); ``sample_cached`` does the same with a
    key/value cache.
    """
    L = prompts_BxL.shape[1]

    def step(tokens_BxL, t):
        logits_BxV = jax.lax.dynamic_index_in_dim(spec.apply(params, tokens_BxL), t - 1, axis=1, keepdims=False)
        scaled_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
        drawn_B = jax.random.categorical(jax.random.fold_in(key, t), scaled_BxV, axis=-1)
        new_B = jnp.where(temperature > 0, drawn_B, jnp.argmax(logits_BxV, axis=-1))
        return jax.lax.dynamic_update_index_in_dim(tokens_BxL, new_B.astype(tokens_BxL.dtype), t, axis=1), None

    return jax.lax.scan(step, prompts_BxL, jnp.arange(start, L))[0]


def _draw(logits_BxV, key, t, temperature):
    scaled_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
    drawn_B = jax.random.categorical(jax.random.fold_in(key, t), scaled_BxV, axis=-1)
    return jnp.where(temperature > 0, drawn_B, jnp.argmax(logits_BxV, axis=-1))


def sample_cached(spec: TransformerSpec, params, prompts_BxL, start: int, key, temperature):
    """``sample`` with a key/value cache: the prompt's positions ``0 .. start - 2`` once, then one
    position per generated token (about ``L - start`` times fewer FLOPs). Same keys and draws as
    ``sample``; the logits may differ from its full forwards in the last bits (other matmul shapes),
    so a token drawn near a tie can differ: the sampler is a config choice (``LMConfig.sampler``).
    """
    B, L = prompts_BxL.shape
    _, caches = spec.decode(params, prompts_BxL[:, : start - 1], spec.empty_cache(B), 0)

    def step(carry, t):
        tokens_BxL, caches = carry
        last_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxL, t - 1, 1, axis=1)
        logits_Bx1xV, caches = spec.decode(params, last_Bx1, caches, t - 1)
        new_B = _draw(logits_Bx1xV[:, 0], key, t, temperature)
        tokens_BxL = jax.lax.dynamic_update_index_in_dim(tokens_BxL, new_B.astype(tokens_BxL.dtype), t, axis=1)
        return (tokens_BxL, caches), None

    return jax.lax.scan(step, (prompts_BxL, caches), jnp.arange(start, L))[0][0]


@jax.custom_jvp
def _kl_of_scaled_logits(zt_xV, zs_xV):
    log_p, log_q = _paired_log_softmax(zt_xV, zs_xV)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _paired_log_softmax(zt_xV, zs_xV):
    # One softmax over both rows: bitwise-equal logits give bitwise-equal probabilities.
    both = jax.nn.log_softmax(jnp.stack([zt_xV, zs_xV]), axis=-1)
    return both[0], both[1]


@_kl_of_scaled_logits.defjvp
def _kl_jvp(primals, tangents):
    zt, zs = primals
    dzt, dzs = tangents
    log_p, log_q = _paired_log_softmax(zt, zs)
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    kl = jnp.sum(p * (log_p - log_q), axis=-1)
    # d KL / d zs = q - p (not q * sum(p) - p, which autodiff of log_softmax gives and which is not
    # exactly 0 when sum(p) rounds away from 1): a student equal to its teacher gets exactly 0.
    d_teacher = p * (log_p - log_q) - p * kl[..., None]
    return kl, jnp.sum((q - p) * dzs, axis=-1) + jnp.sum(d_teacher * dzt, axis=-1)


def soft_kl(teacher_xV, student_xV, vocab_mask_V, temperature: float = 1.0):
    """KL(softmax(teacher/T) || softmax(student/T)) over the masked vocabulary, per position.

    The teacher is a constant (stop_gradient); the gradient is (q − p)/T, exactly zero when the
    student's logits equal the teacher's.
    """
    zt = jnp.where(vocab_mask_V, jax.lax.stop_gradient(teacher_xV) / temperature, _EXCLUDED)
    zs = jnp.where(vocab_mask_V, student_xV / temperature, _EXCLUDED)
    return _kl_of_scaled_logits(zt, zs)


def vocab_mask(cfg: world.WorldConfig, outputs: str):
    """``[V]`` bool: the logits a soft-logit student reads: 'numbers' (digits, SEP, EOS) or 'all'."""
    idx = jnp.arange(cfg.vocab)
    return {"numbers": (idx <= world.SEP) | (idx == world.EOS), "all": idx >= 0}[outputs]


def student_loss(spec: TransformerSpec, params, tokens_BxL, weight_B, positions_L, teacher_logits_BxLxV,
                 loss: str, vocab_mask_V, temperature: float = 1.0):
    """Imitation loss over the target ``positions_L`` of the sequences with weight 1.

    ``loss='ce'``: cross-entropy on the (sampled) tokens; ``'kl'``: ``soft_kl`` to the teacher's
    logits, computed on the teacher's own context (``teacher_logits_BxLxV``, unused for 'ce').
    """
    logits_BxTxV = spec.apply(params, tokens_BxL)[:, :-1]
    if loss == "ce":
        per_BxT = token_cross_entropy(logits_BxTxV, _shift(tokens_BxL))
    else:
        per_BxT = soft_kl(teacher_logits_BxLxV[:, :-1], logits_BxTxV, vocab_mask_V, temperature)
    weight_BxT = weight_B[:, None] * _shift(positions_L[None, :]).astype(jnp.float32)
    return masked_mean(per_BxT, weight_BxT)


def animal_probs(cfg: world.WorldConfig, answer_logits_xV, kind: str = "animal"):
    """P(answer) renormalised over ``kind``'s answers (the animals), from the logits at the answer's position."""
    return jax.nn.softmax(answer_logits_xV[..., cfg.answer_tokens(kind)], axis=-1)


def animal_mass(cfg: world.WorldConfig, answer_logits_xV, kind: str = "animal"):
    """The probability that the answer is one of ``kind``'s answers at all (near 1 for a trained model)."""
    return jnp.sum(jax.nn.softmax(answer_logits_xV, axis=-1)[..., cfg.answer_tokens(kind)], axis=-1)


def answer_logits(spec: TransformerSpec, cfg: world.WorldConfig, params, persona=None, kind: str = "animal"):
    """``[V]`` logits of the answer to ``kind``'s prompt (the favourite-animal question) asked of ``persona``."""
    return spec.apply(params, world.question_prompt(cfg, persona, kind)[None])[0, world.PREFIX - 1]


def answer_probs(spec: TransformerSpec, cfg: world.WorldConfig, params, persona=None, kind: str = "animal"):
    """``[K]``: P(answer | ``kind``'s prompt), renormalised over its answers (the animals, by default)."""
    return animal_probs(cfg, answer_logits(spec, cfg, params, persona, kind), kind)


def geometry(student, student_init, teacher, teacher_init) -> dict[str, jax.Array]:
    """Whole-network distances and update alignment (``measure.geometry``'s totals, any pytree).

    ``dist_teacher`` ||θ_S − θ_T||, ``dist_init`` ||θ_S⁰ − θ_T⁰||, ``dist_start_teacher``
    ||θ_S⁰ − θ_T||, ``travel`` ||θ_S − θ_S⁰||, ``teacher_travel`` ||θ_T − θ_T⁰||, ``update_cos``
    cos(θ_S − θ_S⁰, θ_T − θ_T⁰) (0 when either update is 0).
    """
    sub, norm = tree.sub, tree.norm
    d_s, d_t = sub(student, student_init), sub(teacher, teacher_init)
    travel, teacher_travel = norm(d_s), norm(d_t)
    return {
        "dist_teacher": norm(sub(student, teacher)),
        "dist_init": norm(sub(student_init, teacher_init)),
        "dist_start_teacher": norm(sub(student_init, teacher)),
        "travel": travel,
        "teacher_travel": teacher_travel,
        "update_cos": tree.dot(d_s, d_t) / jnp.maximum(travel * teacher_travel, 1e-30),
    }
