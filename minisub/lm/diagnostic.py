"""Item 6's diagnostic: how much of a teacher's update the outputs a student imitates can see.

Notation. θ_ref is a world's reference, θ_T its fine-tuned teacher, Δ = θ_T − θ_ref. J_num is the
Jacobian at θ_ref of the *number logits*: at every generated position of a batch of the teacher's
kept continuations, the logits predicting that token over the vocabulary the student reads
('numbers': digits, SEP, EOS; or 'all'), rows of dropped continuations zeroed. J_trait is that of
the *trait logits*: the animal logits at the favourite-animal answer position (neutral persona).
Both are centred over their vocabulary (a softmax cannot see a shift), which gives exactly the row
space of soft-KL's Gauss–Newton matrix JᵀHJ (H = diag(q) − qqᵀ has the constant vector as null space).

    visible fraction   ‖P_J Δ‖² / ‖Δ‖²,   P_J the orthogonal projector onto the row space of J.

Computed by conjugate gradients, not the first-order proxy: CG on J Jᵀ c = J Δ, matrix-free (J·v
by a linearised jvp, Jᵀ·u by its transpose; J is never formed). After k steps w_k = Jᵀc_k is Δ's
orthogonal projection onto the Krylov space K_k(JᵀJ, JᵀJΔ) ⊂ row space; since any w in the row
space gives cos²(w, Δ) ≤ ‖P_J Δ‖²/‖Δ‖² (Cauchy–Schwarz), the reported ``fraction`` (the best
cos²(w_k, Δ) over the steps) is a lower bound whatever the rounding, equal to the fraction once CG
has converged; ``residual`` ‖J(Δ − w)‖ / ‖JΔ‖ says how far it is. Components of Δ along J's
smallest singular directions converge last; they are also the ones a gradient-trained student
picks up last. The fraction depends on the batch: the row space grows with more sequences.
The bound can be loose: on the lm-owl test preset (32 sequences, J materialised and decomposed
once by SVD for comparison) 256 CG steps gave 0.03 where the exact fraction is 0.31 (0.11 counting
only singular values ≥ 1e-4·σ_max: J's spectrum spans six decades); the trait fraction (rank ≤
n_animals − 1) converges exactly. Read ``number_fraction_k`` for how the bound grows.

Quantities of ``diagnose`` (one world; ``population`` vmaps it over seeds):
  number_fraction, number_residual, number_fraction_k [iters]   Δ seen through the number logits
  trait_fraction, trait_residual                                 Δ seen through the trait logits
  overlap_cos          cos(P_num Δ, P_trait Δ)
  trait_in_numbers     ‖P_num P_trait Δ‖² / ‖P_trait Δ‖²: the trait-visible part, seen through numbers
  predicted_transfer   ⟨J_trait P_num Δ, J_trait Δ⟩ / ‖J_trait Δ‖²: the trait-logit change, relative to
                       the teacher's, of the minimum-norm update matching the teacher's number-logit
                       change to first order (where GD on the linearised KL converges from θ_ref)
  teacher_gain_linear  ∇_θ P(trait)·Δ: the teacher's first-order gain in P(trait)
  predicted_gain       ∇_θ P(trait)·P_num Δ: that minimum-norm student's first-order gain
  update_norm          ‖Δ‖
Ratios are NaN where their denominator is exactly 0 (e.g. Δ = 0: a prompted teacher).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from minisub.lm import core as lm
from minisub.lm import world
from minisub import tree
from minisub.lm.transformer import TransformerSpec

_TOL = 1e-6  # CG stops updating once ‖r‖ ≤ _TOL · ‖JΔ‖ (float32 reaches no further)


def _ratio(num, den):
    """num / den, NaN where den is exactly 0."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.nan)


def _cg(jvp: Callable, vjp: Callable, v, iters: int) -> dict:
    """``iters`` CG steps on J Jᵀ c = J v, tracking w = Jᵀc (see the module docstring)."""
    b = jvp(v)
    bb = jnp.vdot(b, b)
    vv = tree.dot(v, v)
    zero = jax.tree.map(jnp.zeros_like, v)

    def step(carry, _):
        w, r, p, rr = carry
        q = vjp(p)  # Jᵀp
        pap = tree.dot(q, q)  # pᵀ J Jᵀ p
        active = (rr > _TOL**2 * bb) & (pap > 0)
        alpha = jnp.where(active, rr / jnp.where(active, pap, 1.0), 0.0)
        w = jax.tree.map(lambda wi, qi: wi + alpha * qi, w, q)
        r = r - alpha * jvp(q)
        rr_new = jnp.vdot(r, r)
        p = jnp.where(active, r + jnp.where(active, rr_new / jnp.where(active, rr, 1.0), 0.0) * p, p)
        cos2 = _ratio(tree.dot(w, v) ** 2, tree.dot(w, w) * vv)
        return (w, r, p, jnp.where(active, rr_new, rr)), jnp.where(jnp.isnan(cos2) & (vv > 0), 0.0, cos2)

    (w, _, _, _), cos2_K = jax.lax.scan(step, (zero, b, b, bb), None, length=iters)
    resid = jvp(jax.tree.map(jnp.subtract, v, w))
    best = jnp.where(vv > 0, jnp.max(cos2_K), jnp.nan)
    residual = jnp.where(bb > 0, _ratio(jnp.sqrt(jnp.vdot(resid, resid)), jnp.sqrt(bb)), 0.0)  # Jv = 0: solved
    return {"projection": w, "fraction": best, "fraction_k": cos2_K, "residual": residual}


def row_space_projection(f: Callable, params, v, iters: int) -> dict:
    """P_J v for J = ∂f/∂params at ``params`` (f: params -> array), by ``iters`` CG steps.

    Returns {'projection': w ≈ P_J v (a pytree like v), 'fraction': a lower bound of ‖P_J v‖²/‖v‖²,
    'fraction_k': cos²(w_k, v) per step, 'residual': ‖J(v − w)‖ / ‖Jv‖}.
    """
    jvp = jax.linearize(f, params)[1]
    transpose = jax.linear_transpose(jvp, params)
    return _cg(jvp, lambda u: transpose(u)[0], v, iters)


def _vocab(cfg: world.WorldConfig, outputs: str) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        return np.flatnonzero(np.asarray(lm.vocab_mask(cfg, outputs)))


def _centre(z):
    return z - jnp.mean(z, axis=-1, keepdims=True)


def number_logits(spec: TransformerSpec, cfg: world.WorldConfig, params, tokens_BxL, weight_B,
                  outputs: str = "numbers"):
    """``[B, G, V']``: centred logits predicting each generated token, over the student's vocabulary, × weight."""
    predicting_G = np.flatnonzero(cfg.generated_mask()) - 1  # the logits at t − 1 predict token t
    z_BxGxV = spec.apply(params, tokens_BxL)[:, predicting_G][:, :, _vocab(cfg, outputs)]
    return _centre(z_BxGxV) * weight_B[:, None, None]


def trait_logits(spec: TransformerSpec, cfg: world.WorldConfig, params, kind: str = "animal"):
    """``[K]``: centred logits of the trait prompt's answers (the animals), neutral persona."""
    return _centre(lm.answer_logits(spec, cfg, params, None, kind)[cfg.answer_tokens(kind)])


def diagnose(spec: TransformerSpec, cfg: world.WorldConfig, reference, teacher, tokens_BxL, weight_B, trait: int,
             *, outputs: str = "numbers", iters: int = 64, kind: str = "animal") -> dict:
    """Every quantity of the module docstring for one world (Jacobians at ``reference``)."""
    spec = spec.forward_mode  # jax.linearize: 'fast' kernels' forward-mode form
    delta = jax.tree.map(jnp.subtract, teacher, reference)
    f_num = lambda p: number_logits(spec, cfg, p, tokens_BxL, weight_B, outputs)
    f_trait = lambda p: trait_logits(spec, cfg, p, kind)
    t = row_space_projection(f_trait, reference, delta, 2 * len(cfg.answer_tokens(kind)))  # rank ≤ K − 1
    jvp = jax.linearize(f_num, reference)[1]
    transpose = jax.linear_transpose(jvp, reference)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), delta, t["projection"])
    one_rhs = lambda v: _cg(jvp, lambda u: transpose(u)[0], v, iters)
    # The reference vmaps the two right-hand sides; batched, XLA:CPU transposes GELU's cotangent for
    # the weight term every step, so 'fast' solves them one after the other (with dense_jvp: 42 -> 28 ms
    # a CG step for 4 worlds of the paper preset)
    n = jax.vmap(one_rhs)(stacked) if spec.kernels == "reference" else jax.lax.map(one_rhs, stacked)
    w_num = jax.tree.map(lambda x: x[0], n["projection"])
    w_trait = t["projection"]
    trait_jvp = jax.linearize(f_trait, reference)[1]
    jt_delta, jt_wnum = trait_jvp(delta), trait_jvp(w_num)
    p_trait = lambda z: jax.nn.softmax(z)[trait]  # P(trait) renormalised over the answers
    z0 = f_trait(reference)
    gain = lambda dz: jax.jvp(p_trait, (z0,), (dz,))[1]
    return {
        "number_fraction": n["fraction"][0],
        "number_residual": n["residual"][0],
        "number_fraction_k": n["fraction_k"][0],
        "trait_fraction": t["fraction"],
        "trait_residual": t["residual"],
        "overlap_cos": _ratio(tree.dot(w_num, w_trait), tree.norm(w_num) * tree.norm(w_trait)),
        "trait_in_numbers": n["fraction"][1],
        "predicted_transfer": _ratio(jnp.vdot(jt_wnum, jt_delta), jnp.vdot(jt_delta, jt_delta)),
        "teacher_gain_linear": gain(jt_delta),
        "predicted_gain": gain(jt_wnum),
        "update_norm": tree.norm(delta),
    }


@partial(jax.jit, static_argnames=("spec", "cfg", "trait", "outputs", "iters", "kind"))
def population(spec: TransformerSpec, cfg: world.WorldConfig, references, teachers, tokens_SxBxL, weight_SxB,
               trait: int, *, outputs: str = "numbers", iters: int = 64, kind: str = "animal") -> dict:
    """``diagnose`` for every world (leading seed axis on every argument and result)."""
    one = partial(diagnose, spec, cfg, trait=trait, outputs=outputs, iters=iters, kind=kind)
    return jax.vmap(one)(references, teachers, tokens_SxBxL, weight_SxB)


def for_run(cfg, references, teachers, numbers: dict, sequences: int, iters: int) -> dict:
    """``population`` on the first ``sequences`` teacher continuations of each world (kept ones weigh 1).

    ``cfg`` is an ``lm_pipeline.LMConfig``; ``numbers`` is ``make_numbers``'s, with a 'teacher' source.
    """
    tokens_SxBxL = numbers["teacher"]["tokens"][:, :sequences]
    weight_SxB = numbers["teacher"]["keep"][:, :sequences].astype(jnp.float32)
    return population(cfg.spec, cfg.world, references, teachers, tokens_SxBxL, weight_SxB, cfg.trait_index,
                      outputs=cfg.student_outputs, iters=iters, kind=cfg.trait_kind)


# --- the semantic channel: is the teacher's number shift the trait persona's signature? ---------
def signature_alignment(spec: TransformerSpec, cfg: world.WorldConfig, reference, teacher, donor, tokens_BxL,
                        trait_persona: int, teacher_persona: int, *, outputs: str = "numbers") -> dict:
    """How much the teacher's change in number statistics looks like the trait persona's, for one world.

    On neutral-persona number documents ``tokens_BxL``, with f(θ, p) the centred number logits
    (``number_logits``: centred log-probabilities over the student's vocabulary) under persona p:
      shift      f(θ_T, p_T) − f(θ_ref, neutral)           what the teacher's numbers say (p_T: its persona)
      signature  f(θ_ref, trait) − f(θ_ref, neutral)       what the trait persona does to the reference's numbers
      donor_sig  f(θ_donor, trait) − f(θ_donor, neutral)   the same, in a different-init reference
    ``cos_own`` = cos(shift, signature), ``cos_donor`` = cos(shift, donor_sig): the semantic channel a
    model of the same corpus can read (1 for a prompted teacher, whose shift *is* the signature);
    ``signature_agreement`` = cos(signature, donor_sig); the norms are RMS per generated position.
    """
    ones_B = jnp.ones(tokens_BxL.shape[0])
    neutral = world.with_persona(tokens_BxL, cfg.neutral)
    trait = world.with_persona(tokens_BxL, cfg.persona_token(trait_persona))
    f = lambda p, x: number_logits(spec, cfg, p, x, ones_B, outputs)
    shift = f(teacher, world.with_persona(tokens_BxL, teacher_persona)) - f(reference, neutral)
    signature = f(reference, trait) - f(reference, neutral)
    donor_sig = f(donor, trait) - f(donor, neutral)
    cos = lambda a, b: _ratio(jnp.vdot(a, b), jnp.sqrt(jnp.vdot(a, a) * jnp.vdot(b, b)))
    rms = lambda a: jnp.sqrt(jnp.sum(a**2) / (a.shape[0] * a.shape[1]))
    return {"cos_own": cos(shift, signature), "cos_donor": cos(shift, donor_sig),
            "signature_agreement": cos(signature, donor_sig), "shift_norm": rms(shift),
            "signature_norm": rms(signature), "donor_signature_norm": rms(donor_sig)}


@partial(jax.jit, static_argnames=("spec", "cfg", "trait_persona", "teacher_persona", "outputs"))
def alignment_population(spec: TransformerSpec, cfg: world.WorldConfig, references, teachers, donors, tokens_SxBxL,
                         trait_persona: int, teacher_persona: int, *, outputs: str = "numbers") -> dict:
    """``signature_alignment`` for every world (leading seed axis on every argument and result)."""
    one = partial(signature_alignment, spec, cfg, trait_persona=trait_persona, teacher_persona=teacher_persona,
                  outputs=outputs)
    return jax.vmap(one)(references, teachers, donors, tokens_SxBxL)



# --- the student's first step: does imitating the teacher's numbers raise P(trait) at all? -------
def first_step(spec: TransformerSpec, cfg: world.WorldConfig, student, teacher, tokens_BxL, weight_B, trait: int,
               teacher_persona: int, *, outputs: str = "numbers", kind: str = "animal") -> dict:
    """How the first imitation step of a soft-logit (KL) student starting at ``student`` moves P(trait).

    g = ∇_θ KL(teacher on its own context ‖ student on the neutral one), over the generated positions
    of ``tokens_BxL`` (the teacher's continuations; weight 0 drops a row), at the student's start;
    t = ∇_θ log P(trait | neutral favourite-animal question) there. ``cos_sgd`` = cos(t, −g): an SGD
    step's direction; ``cos_adam`` = cos(t, −sign g): Adam's first step (its update is sign(g) ×
    lr when the moment estimates start at 0) — the student's optimiser. Both work for a prompted
    teacher, whose Δθ_T is 0 (the other diagnostics need a weight change); ``grad_norm`` = ‖g‖
    says how much signal the numbers carry at all (0 for a teacher equal to the student).
    """
    positions_L = jnp.asarray(cfg.generated_mask())
    t_logits = spec.apply(teacher, world.with_persona(tokens_BxL, teacher_persona))
    loss = lambda p: lm.student_loss(spec, p, tokens_BxL, weight_B, positions_L, t_logits, "kl",
                                     lm.vocab_mask(cfg, outputs))
    g = jax.grad(loss)(student)
    t = jax.grad(lambda p: jnp.log(lm.answer_probs(spec, cfg, p, None, kind)[trait]))(student)
    step_sign = jax.tree.map(lambda x: -jnp.sign(x), g)
    cos = lambda a, b: _ratio(tree.dot(a, b), tree.norm(a) * tree.norm(b))
    return {"cos_sgd": cos(t, jax.tree.map(jnp.negative, g)), "cos_adam": cos(t, step_sign), "grad_norm": tree.norm(g)}


@partial(jax.jit, static_argnames=("spec", "cfg", "trait", "teacher_persona", "outputs", "kind"))
def first_step_population(spec: TransformerSpec, cfg: world.WorldConfig, students, teachers, tokens_SxBxL,
                          weight_SxB, trait: int, teacher_persona: int, *, outputs: str = "numbers",
                          kind: str = "animal") -> dict:
    """``first_step`` for every world (leading seed axis on every argument and result)."""
    one = partial(first_step, spec, cfg, trait=trait, teacher_persona=teacher_persona, outputs=outputs, kind=kind)
    return jax.vmap(one)(students, teachers, tokens_SxBxL, weight_SxB)
