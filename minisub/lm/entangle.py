"""Token entanglement in the toy LM: which numbers a push toward an animal raises, and back again.

The mechanism proposed by zur2025 for cloud2025's prompted-teacher transfer: through the softmax
bottleneck, pushing a model toward an animal token raises the probability of particular number
tokens (those whose unembedding shares its direction), and numbers in the context raise P(animal)
("subliminal prompting"); which numbers depends on the model's own unembedding geometry. Here:

* ``number_log_probs``: the exact distribution of the next whole number (``digits`` digit tokens,
  value in ``[0, modulus)``) at a generated slot, by enumerating the digits: a number's
  probability is the product of its digits' probabilities, each conditioned on the earlier ones;
* ``number_shift``: log p̄_pushed(n) − log p̄_base(n) of the prompt-averaged next-number
  distributions, for three pushes: ``prompt_shift`` (the animal's persona in the context),
  ``bump_shift`` (β·W_U û_a added to every position's logits, û_a the animal token's unit
  unembedding direction: the softmax-bottleneck push) and ``model_shift`` (a teacher against its
  reference on the same neutral prompts);
* ``entangled`` (the top-k numbers of a shift), ``overlap`` (Jaccard of top-k sets, Spearman and
  centred cosine of whole shift vectors), ``pairwise`` (every pair of worlds: is a shift init-specific?);
* ``subliminal_prompting``: P(answer | question) with given numbers in the context, against
  random numbers in the same template;
* ``number_kl``: KL(teacher ‖ reference) over number positions of neutral prompts.

Everything is pure jax, jittable with ``spec`` and ``cfg`` static and vmappable over worlds
(``population`` does both for a population of worlds).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from minisub import tree
from minisub.config import require
from minisub.lm import core as lm
from minisub.lm import world
from minisub.lm.transformer import TransformerSpec


# --- the next whole number ----------------------------------------------------------------------
def slot_start(cfg: world.WorldConfig, slot: int) -> int:
    """The position of the first digit of generated number ``slot`` (0: the first one the teacher writes)."""
    generated = cfg.n_numbers - cfg.n_prompt
    require(0 <= slot < generated, "slot", slot, f"in [0, n_numbers - n_prompt - 1 = {generated - 1}]")
    return world.PREFIX + (cfg.n_prompt + slot) * (cfg.digits + 1)


def _digits(digits: int) -> np.ndarray:
    """``[10**digits, digits]``: the digits of 0, 1, ..., most significant first."""
    return (np.arange(10**digits)[:, None] // 10 ** np.arange(digits - 1, -1, -1)) % 10


def number_log_probs(spec: TransformerSpec, cfg: world.WorldConfig, params, tokens_BxL, slot: int = 0,
                     bump_V=None):
    """``(log_p_BxM, log_mass_B)``: the next whole number at generated slot ``slot`` of each row.

    ``log_p_BxM[b, n]`` = log P(number n | the slot holds a number), exact: P(n) = Π_k p(d_k | context,
    d_<k) over the full vocabulary, renormalised over the ``modulus`` numbers; ``log_mass_B`` = log of
    that normaliser, log P(the slot's ``digits`` tokens are all digits). The context is each row's
    tokens before the slot (for slot 0, the prompt). All 10^(D−1) digit prefixes are enumerated in one
    forward (D digits: 10^(D−1) sequences per row); ``bump_V`` is added to every position's logits.
    """
    D, start = cfg.digits, slot_start(cfg, slot)
    B = tokens_BxL.shape[0]
    digits_MxD, prefix_M = _digits(D), np.arange(cfg.modulus) // 10  # number n's first D−1 digits: prefix n // 10
    J = 10 ** (D - 1)
    prefixes_JxP = jnp.asarray(_digits(D - 1), jnp.int32)  # [1, 0] for one digit
    # causal: positions from the slot's last digit on cannot change what is read, so they are cut off
    head_BxS = tokens_BxL[:, :start]
    x_BxJxT = jnp.concatenate([jnp.broadcast_to(head_BxS[:, None], (B, J, start)),
                               jnp.broadcast_to(prefixes_JxP[None], (B, J, D - 1)).astype(tokens_BxL.dtype)], axis=2)
    logits = spec.apply(params, x_BxJxT.reshape(B * J, start + D - 1))[:, start - 1:]
    if bump_V is not None:
        logits = logits + bump_V
    lp_BxJxDx10 = jax.nn.log_softmax(logits, axis=-1)[..., :10].reshape(B, J, D, 10)  # digits are tokens 0..9
    joint_BxMxD = lp_BxJxDx10[:, jnp.asarray(prefix_M)[:, None], jnp.arange(D)[None, :], jnp.asarray(digits_MxD)]
    joint_BxM = jnp.sum(joint_BxMxD, axis=-1)
    log_mass_B = jax.nn.logsumexp(joint_BxM, axis=-1)
    return joint_BxM - log_mass_B[:, None], log_mass_B


# Sequences (prompts × 10^(D−1) digit prefixes) in one forward: with 4 digits, 4 prompts at a time.
NUMBER_BLOCK = 4096


def slot_log_probs(spec: TransformerSpec, cfg: world.WorldConfig, params, prompts_BxL, slots: tuple[int, ...] = (0,),
                   bump_V=None):
    """``[B, len(slots), M]``: ``number_log_probs`` of every prompt at every slot, the prompts taken in
    blocks of ``NUMBER_BLOCK`` enumerated sequences (memory stays bounded however many digits)."""
    def one(row_L):
        return jnp.stack([number_log_probs(spec, cfg, params, row_L[None], s, bump_V)[0][0] for s in slots])

    rows = max(1, NUMBER_BLOCK // 10 ** (cfg.digits - 1))
    return jax.lax.map(one, prompts_BxL, batch_size=min(rows, prompts_BxL.shape[0]))


def mean_number_log_probs(spec: TransformerSpec, cfg: world.WorldConfig, params, prompts_BxL, persona_token=None,
                          bump_V=None, slots: tuple[int, ...] = (0,)):
    """``[M]`` log p̄(n): the next-number distribution averaged (in probability) over prompts and ``slots``.

    ``persona_token``: written into every prompt's persona slot (None: the prompts' own).
    """
    if persona_token is not None:
        prompts_BxL = world.with_persona(prompts_BxL, persona_token)
    log_p = slot_log_probs(spec, cfg, params, prompts_BxL, slots, bump_V).reshape(-1, cfg.modulus)
    return jax.nn.logsumexp(log_p, axis=0) - jnp.log(log_p.shape[0])


# --- pushes ---------------------------------------------------------------------------------------
def number_shift(spec: TransformerSpec, cfg: world.WorldConfig, params, prompts_BxL, *, pushed_params=None,
                 base_persona=None, pushed_persona=None, bump_V=None, slots: tuple[int, ...] = (0,)):
    """``[M]`` log p̄_pushed(n) − log p̄_base(n) over the neutral ``prompts_BxL`` (``world.number_batch``).

    Base: ``params`` with ``base_persona`` (a persona token; None: the prompts' own, neutral). Pushed:
    ``pushed_params`` (default ``params``) with ``pushed_persona`` and ``bump_V`` on its logits.
    By default only the first generated slot is read: its context is the prompt alone, a document
    of the world that base and pushed model read identically, so both distributions are exact. A later
    slot conditions on numbers the model would have sampled itself; ``slots=(0, 1, ...)`` reads the
    prompts' own continuations there instead (teacher forcing), an approximation that costs one
    enumeration per slot.
    """
    pushed_params = params if pushed_params is None else pushed_params
    base = mean_number_log_probs(spec, cfg, params, prompts_BxL, base_persona, None, slots)
    pushed = mean_number_log_probs(spec, cfg, pushed_params, prompts_BxL, pushed_persona, bump_V, slots)
    return pushed - base


def prompt_shift(spec: TransformerSpec, cfg: world.WorldConfig, params, prompts_BxL, animal,
                 slots: tuple[int, ...] = (0,)):
    """Push (a): the animal's persona token in the context against the neutral persona."""
    return number_shift(spec, cfg, params, prompts_BxL, base_persona=cfg.neutral,
                        pushed_persona=cfg.persona_token(animal), slots=slots)


def logit_bump(spec: TransformerSpec, params, token, beta):
    """``[V]`` β·W_U û, û the unit unembedding direction of ``token``: token v's logit rises by β⟨u_v, û⟩.
    The same as adding β·û to the residual stream after the final LayerNorm."""
    w_VxD = spec.unembedding(params)
    u_D = w_VxD[token]
    return beta * w_VxD @ (u_D / jnp.maximum(jnp.linalg.norm(u_D), 1e-30))


def bump_shift(spec: TransformerSpec, cfg: world.WorldConfig, params, prompts_BxL, animal, beta,
               slots: tuple[int, ...] = (0,)):
    """Push (b): ``logit_bump`` of the animal's token at every position (neutral persona on both sides)."""
    bump_V = logit_bump(spec, params, cfg.animal_tokens[0] + animal, beta)
    return number_shift(spec, cfg, params, prompts_BxL, base_persona=cfg.neutral, pushed_persona=cfg.neutral,
                        bump_V=bump_V, slots=slots)


def model_shift(spec: TransformerSpec, cfg: world.WorldConfig, teacher, reference, prompts_BxL, teacher_persona=None,
                slots: tuple[int, ...] = (0,)):
    """Push (c): ``teacher`` with ``teacher_persona`` (a token; None: neutral) against ``reference``, neutral.

    A fine-tuned teacher's shift; a prompted teacher (the reference with the trait persona) gives push (a).
    """
    persona = cfg.neutral if teacher_persona is None else teacher_persona
    return number_shift(spec, cfg, reference, prompts_BxL, pushed_params=teacher, base_persona=cfg.neutral,
                        pushed_persona=persona, slots=slots)


# --- comparing shifts -----------------------------------------------------------------------------
def entangled(shift_M, k: int):
    """``[k]`` int32: the k numbers a push raises most, largest first (ties: the smaller number first)."""
    return jax.lax.top_k(shift_M, k)[1]


def ranks(x_M):
    """``[M]`` average ranks, 1-based (ties share the mean of their ranks), as scipy.stats.rankdata."""
    sorted_M = jnp.sort(x_M)
    below = jnp.searchsorted(sorted_M, x_M, side="left")
    upto = jnp.searchsorted(sorted_M, x_M, side="right")
    return (below + upto + 1) / 2.0


def cosine(shift_a, shift_b):
    """cos of the centred shift vectors (their Pearson r): a log-ratio's constant part is normalisation,
    not a direction. 0 when either is constant."""
    return tree.cos(shift_a - jnp.mean(shift_a), shift_b - jnp.mean(shift_b))


def overlap(shift_a, shift_b, k: int) -> dict:
    """``jaccard``: |A ∩ B| / |A ∪ B| of the two top-k sets; ``spearman``: rank correlation of the
    whole vectors (average ranks for ties; 0 when either is constant); ``cosine``: ``cosine``."""
    top_a, top_b = entangled(shift_a, k), entangled(shift_b, k)
    inter = jnp.sum(top_a[:, None] == top_b[None, :])
    return {"jaccard": inter / (2 * k - inter), "spearman": cosine(ranks(shift_a), ranks(shift_b)),
            "cosine": cosine(shift_a, shift_b)}


def pairwise(shifts_SxM, k: int) -> dict:
    """``overlap`` of every ordered pair of worlds' shifts: ``{jaccard, spearman, cosine}``, each ``[S, S]``."""
    return jax.vmap(lambda a: jax.vmap(lambda b: overlap(a, b, k))(shifts_SxM))(shifts_SxM)


# --- subliminal prompting -------------------------------------------------------------------------
def prompting_context(cfg: world.WorldConfig, numbers_K, persona=None, kind: str = "animal"):
    """``([L] tokens, read position)``: ``BOS P NUMBERS n1 SEP n2 SEP ... nK Q PAD ...``.

    The world has no document that mixes numbers and a question. A causal model can only read numbers
    that precede the position it answers at, so the numbers come first, laid out exactly as in a number
    document (the positions and separators the model knows), and the question token ``Q`` takes the
    separator slot after the K-th number; the answer is read there. Only Q's position is new to the
    model, and it is the same for the given and the random numbers. ``persona``: an animal index
    (None: neutral); ``kind``'s prompt token (the favourite-animal question, or the command).
    """
    K = numbers_K.shape[0]
    require(1 <= K <= cfg.n_numbers, "numbers", K, f"a count in [1, n_numbers = {cfg.n_numbers}]")
    persona_token = cfg.neutral if persona is None else cfg.persona_token(persona)
    body = world.encode_numbers(cfg, jnp.asarray(numbers_K)).at[-1].set(cfg.prompt_token(kind))
    head = jnp.concatenate([jnp.array([world.BOS]), jnp.asarray(persona_token)[None], jnp.array([world.NUMBERS]),
                            body]).astype(jnp.int32)
    return jnp.full((cfg.context,), world.PAD, jnp.int32).at[: head.shape[0]].set(head), head.shape[0] - 1


def subliminal_prompting(spec: TransformerSpec, cfg: world.WorldConfig, params, numbers_K, key, n_random: int = 64,
                         persona=None, kind: str = "animal") -> dict:
    """P(answer | ``kind``'s question) with ``numbers_K`` in the context, against random numbers.

    ``p_numbers`` ``[A]``: the answer distribution (renormalised over ``kind``'s answers: the animals)
    in ``prompting_context`` with the given numbers; ``p_random_draws`` ``[n_random, A]``: the same
    with K numbers uniform in [0, modulus) (drawn from ``key``); ``p_random`` their mean;
    ``difference`` = p_numbers − p_random. Index any of them by the animal.
    """
    random_RxK = jax.random.randint(key, (n_random, numbers_K.shape[0]), 0, cfg.modulus)
    contexts = jax.vmap(lambda n: prompting_context(cfg, n, persona, kind)[0])(
        jnp.concatenate([jnp.asarray(numbers_K)[None], random_RxK]))
    read = prompting_context(cfg, numbers_K, persona, kind)[1]
    probs = lm.animal_probs(cfg, spec.apply(params, contexts)[:, read], kind)
    p_random = jnp.mean(probs[1:], axis=0)
    return {"p_numbers": probs[0], "p_random": p_random, "p_random_draws": probs[1:], "difference": probs[0] - p_random}


# --- how large a teacher's number shift is --------------------------------------------------------
def number_kl(spec: TransformerSpec, cfg: world.WorldConfig, teacher, reference, prompts_BxL, teacher_persona=None,
              outputs: str = "numbers") -> dict:
    """KL(teacher ‖ reference) on neutral number documents ``prompts_BxL`` (teacher: ``teacher_persona``).

    ``token``: per-token KL over ``outputs``' vocabulary (what a KL student reads), averaged over every
    generated position of the documents' own continuations (teacher forcing on the world's numbers);
    ``number``: KL of the whole next number at the first generated slot, averaged over prompts;
    ``averaged``: KL(p̄_teacher ‖ p̄_reference) of the prompt-averaged first-slot distributions
    (= Σ p̄_teacher · ``model_shift``).
    """
    persona = cfg.neutral if teacher_persona is None else teacher_persona
    as_teacher, neutral = world.with_persona(prompts_BxL, persona), world.with_persona(prompts_BxL, cfg.neutral)
    t_logits, r_logits = spec.apply(teacher, as_teacher)[:, :-1], spec.apply(reference, neutral)[:, :-1]
    per_BxT = lm.soft_kl(t_logits, r_logits, lm.vocab_mask(cfg, outputs))
    weight_T = jnp.asarray(cfg.generated_mask()[1:], jnp.float32)
    token = lm.masked_mean(per_BxT, jnp.broadcast_to(weight_T, per_BxT.shape))
    log_t, log_r = (slot_log_probs(spec, cfg, p, x)[:, 0] for p, x in ((teacher, as_teacher), (reference, neutral)))
    number = jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_r), axis=-1))
    bar_t = jax.nn.logsumexp(log_t, axis=0) - jnp.log(log_t.shape[0])
    bar_r = jax.nn.logsumexp(log_r, axis=0) - jnp.log(log_r.shape[0])
    return {"token": token, "number": number, "averaged": jnp.sum(jnp.exp(bar_t) * (bar_t - bar_r))}


# --- one world, and a population --------------------------------------------------------------
def world_measures(spec: TransformerSpec, cfg: world.WorldConfig, reference, teacher, prompts_BxL, *, animal,
                   teacher_persona, beta: float, k: int, slots: tuple[int, ...] = (0,)) -> dict:
    """One world's three shifts (``[M]`` each: 'prompt', 'bump', 'model'), ``number_kl`` of its teacher,
    and the ``overlap`` of each pair of pushes ('model~prompt', 'model~bump', 'prompt~bump')."""
    shifts = {"prompt": prompt_shift(spec, cfg, reference, prompts_BxL, animal, slots),
              "bump": bump_shift(spec, cfg, reference, prompts_BxL, animal, beta, slots),
              "model": model_shift(spec, cfg, teacher, reference, prompts_BxL, teacher_persona, slots)}
    pairs = (("model", "prompt"), ("model", "bump"), ("prompt", "bump"))
    return {"shift": shifts, "kl": number_kl(spec, cfg, teacher, reference, prompts_BxL, teacher_persona),
            "overlap": {f"{a}~{b}": overlap(shifts[a], shifts[b], k) for a, b in pairs}}


@partial(jax.jit, static_argnames=("spec", "cfg", "k", "slots"))
def population(spec: TransformerSpec, cfg: world.WorldConfig, references, teachers, prompts_SxBxL, *, animal,
               teacher_persona, beta, k: int, slots: tuple[int, ...] = (0,)) -> dict:
    """``world_measures`` of every world (a leading seed axis on every argument and result), plus
    ``pairwise``: the overlap of every pair of worlds' model shifts (``[S, S]``: init-specific?).
    ``animal``, ``teacher_persona`` (a token) and ``beta`` are traced: one compiled program for any of them."""
    one = partial(world_measures, spec, cfg, animal=animal, teacher_persona=teacher_persona, beta=beta, k=k,
                  slots=slots)
    out = jax.vmap(one)(references, teachers, prompts_SxBxL)
    return {**out, "pairwise": pairwise(out["shift"]["model"], k)}
