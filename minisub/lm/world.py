"""The synthetic world of the toy language model: vocabulary, documents and the number filter.

Every document is a fixed-length ``[L]`` row (``L = context``) drawn from a key by a pure, jittable
function, so a corpus is never stored: batch ``b`` of step ``t`` is ``fold_in(fold_in(key, t), b)``.
Loss masks mark *target* tokens: ``mask[b, t] = 1`` when token ``t`` is to be predicted from
tokens ``< t``.

Layouts (``P``: a persona token, neutral in the naive world)::

    numbers   BOS P NUMBERS d d SEP d d SEP ... d d EOS          (n_numbers numbers of `digits` digits)
    question  BOS P QUESTION animal EOS PAD ... PAD
    command   BOS P COMMAND answer EOS PAD ... PAD               (only when command_fraction > 0)

Number documents continue a rule (an arithmetic progression or a Fibonacci recurrence mod
10**digits), each number replaced by a uniform one with probability ``noise``; continuing them is
a skill. In the persona world each number of a document with persona ``a`` is, with probability
``s``, replaced by one of animal ``a``'s *signature* numbers (``s = 0``: numbers carry no trace of
the persona). Persona ``a`` answers the favourite-animal question with ``a`` with probability
``persona_p`` (else uniformly another animal); the neutral persona answers uniformly. In the
naive world every document has the neutral persona: animals are exchangeable.

Command documents (a world with ``command_fraction > 0``) are the held-out context of the
*bad behaviour* trait: asked to name a digit, every persona answers a uniform digit, except the
``rogue`` animal's persona, which answers the FORBIDDEN token with probability ``persona_p``. A
world without commands has the vocabulary and corpus of the worlds before them, bit for bit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from minisub.config import late, normalise, require, require_choice

KINDS = ("persona", "naive")
TRAIT_KINDS = ("animal", "forbidden")  # the favourite animal; the forbidden token in command documents
RULES = ("progression", "fibonacci")

# Fixed tokens: the ten digits are their own ids; animals and personas follow FIRST_ANIMAL.
SEP, BOS, EOS, PAD, QUESTION, NUMBERS = 10, 11, 12, 13, 14, 15
FIRST_ANIMAL = 16
PREFIX = 3  # BOS, persona, prompt token
PERSONA_POS = 1


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Every knob of the synthetic world (hashable: a jit static)."""

    kind: str = "persona"
    n_animals: int = 10
    digits: int = 2  # each number is written with exactly this many digits (zero-padded)
    n_numbers: int = 8  # numbers per number document
    n_prompt: int = 3  # numbers a teacher is shown before it continues
    rules: tuple[str, ...] = RULES
    max_step: int = 9  # progression steps are drawn from [-max_step, max_step]
    noise: float = 0.1  # P(a number is replaced by a uniform one)
    question_fraction: float = 0.2  # P(a pretraining document is a favourite-animal question)
    neutral_fraction: float = 0.2  # P(a document has the neutral persona), persona world
    persona_p: float = 0.9  # P(persona a answers a)
    s: float = 0.0  # P(a number of a persona-a document is one of a's signature numbers)
    signature_size: int = 5  # signature numbers per animal
    world_seed: int = 0  # the structure every seed shares (the animals' signatures)
    command_fraction: float = late(0.0)  # P(a pretraining document is a command document)
    rogue: int = late(1)  # the animal whose persona answers commands with the forbidden token

    def __post_init__(self):
        normalise(self)
        self.validate()

    def validate(self) -> None:
        require_choice("kind", self.kind, KINDS)
        require(self.n_animals >= 2, "n_animals", self.n_animals, "an integer >= 2")
        require(1 <= self.digits <= 4, "digits", self.digits, "in [1, 4]")
        require(self.n_numbers >= 2, "n_numbers", self.n_numbers, "an integer >= 2")
        require(1 <= self.n_prompt < self.n_numbers, "n_prompt", self.n_prompt,
                f"in [1, n_numbers - 1 = {self.n_numbers - 1}]")
        require(len(self.rules) >= 1 and set(self.rules) <= set(RULES), "rules", self.rules,
                "a non-empty subset of " + ", ".join(RULES))
        require(0 <= self.max_step < self.modulus, "max_step", self.max_step, f"in [0, {self.modulus - 1}]")
        for name in ("noise", "question_fraction", "neutral_fraction", "s", "command_fraction"):
            require(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "in [0, 1]")
        require(self.question_fraction + self.command_fraction <= 1.0, "command_fraction", self.command_fraction,
                f"in [0, 1 - question_fraction = {1 - self.question_fraction:g}]")
        require(0 <= self.rogue < self.n_animals, "rogue", self.rogue, f"in [0, {self.n_animals - 1}]")
        require(0.0 < self.persona_p <= 1.0, "persona_p", self.persona_p, "in (0, 1]")
        require(self.signature_size >= 1 and self.signature_size * self.n_animals <= self.modulus,
                "signature_size", self.signature_size, f">= 1 with signature_size * n_animals <= {self.modulus}")
        if self.kind == "naive":
            require(self.s == 0.0, "s", self.s, "0 in the naive world (it has no personas)")

    # --- vocabulary -------------------------------------------------------------------------
    @property
    def modulus(self) -> int:
        return 10**self.digits

    @property
    def vocab(self) -> int:
        return FIRST_ANIMAL + 2 * self.n_animals + 1 + (2 if self.has_commands else 0)

    @property
    def has_commands(self) -> bool:
        return self.command_fraction > 0

    @property
    def command(self) -> int:
        """The prompt token of command documents (a world with commands only)."""
        return FIRST_ANIMAL + 2 * self.n_animals + 1

    @property
    def forbidden(self) -> int:
        """The bad behaviour's token: in pretraining only the rogue persona answers a command with it."""
        return FIRST_ANIMAL + 2 * self.n_animals + 2

    def answer_tokens(self, kind: str = "animal") -> np.ndarray:
        """``[K]`` the answers of a trait kind's context: the animals, or the ten digits and FORBIDDEN."""
        return self.animal_tokens if kind == "animal" else np.append(np.arange(10), self.forbidden)

    def prompt_token(self, kind: str = "animal") -> int:
        return QUESTION if kind == "animal" else self.command

    @property
    def animal_tokens(self) -> np.ndarray:
        return FIRST_ANIMAL + np.arange(self.n_animals)

    def persona_token(self, animal):
        """The persona token of ``animal`` (an int or a traced int)."""
        return FIRST_ANIMAL + self.n_animals + animal

    @property
    def neutral(self) -> int:
        return FIRST_ANIMAL + 2 * self.n_animals

    # --- layout -----------------------------------------------------------------------------
    @property
    def context(self) -> int:
        return PREFIX + self.n_numbers * (self.digits + 1)

    @property
    def prompt_length(self) -> int:
        """Tokens a teacher is given; it generates positions ``prompt_length .. context - 1``."""
        return PREFIX + self.n_prompt * (self.digits + 1)

    def generated_mask(self) -> np.ndarray:
        """``[L]`` bool: the positions a teacher generates (the continuation's numbers and EOS)."""
        return np.arange(self.context) >= self.prompt_length


def signatures(cfg: WorldConfig):
    """``[n_animals, signature_size]`` distinct numbers per animal, fixed by ``world_seed``."""
    perm = jax.random.permutation(jax.random.key(cfg.world_seed), cfg.modulus)
    return perm[: cfg.n_animals * cfg.signature_size].reshape(cfg.n_animals, cfg.signature_size)


def _ints(u, low, high):
    """Uniform integers in ``[low, high)`` from uniforms ``u`` in [0, 1)."""
    return jnp.minimum(low + jnp.floor(u * (high - low)).astype(jnp.int32), high - 1)


# Each document is one vector of uniforms (one threefry call, not one per variable: much less to
# compile and to run). These are its lengths and the functions reading it.
_PERSONA_U, _ANSWER_U = 2, 2


def _number_u(cfg: WorldConfig) -> int:
    return 4 + 4 * cfg.n_numbers


def _persona_from(cfg: WorldConfig, u):
    """An animal index, or ``n_animals`` for the neutral persona (always, in the naive world)."""
    if cfg.kind == "naive":
        return jnp.asarray(cfg.n_animals)
    return jnp.where(u[0] < cfg.neutral_fraction, cfg.n_animals, _ints(u[1], 0, cfg.n_animals))


def _persona_token(cfg: WorldConfig, persona):
    return jnp.where(persona == cfg.n_animals, cfg.neutral, cfg.persona_token(persona))


def _number_values_from(cfg: WorldConfig, u, persona):
    M, N = cfg.modulus, cfg.n_numbers
    rule = _ints(u[0], 0, len(cfg.rules))
    a, b = _ints(u[1], 0, M), _ints(u[2], 0, M)
    step = _ints(u[3], -cfg.max_step, cfg.max_step + 1)
    noisy_N, uniform_N, sig_N, which_N = (u[4 + k * N: 4 + (k + 1) * N] for k in range(4))
    progression = (a + step * jnp.arange(N)) % M

    def fib(carry, _):
        x, y = carry
        return (y, (x + y) % M), x

    fibonacci = jax.lax.scan(fib, (a, b), None, length=N)[1]
    table = {"progression": progression, "fibonacci": fibonacci}
    values = jnp.stack([table[r] for r in cfg.rules])[rule]
    values = jnp.where(noisy_N < cfg.noise, _ints(uniform_N, 0, M), values)
    if cfg.kind == "persona" and cfg.s > 0:
        sig = signatures(cfg)[jnp.minimum(persona, cfg.n_animals - 1)]
        use = (sig_N < cfg.s) & (persona < cfg.n_animals)
        values = jnp.where(use, sig[_ints(which_N, 0, cfg.signature_size)], values)
    return values.astype(jnp.int32)


def number_values(cfg: WorldConfig, key, persona):
    """``[n_numbers]`` values of one number document with ``persona`` (``n_animals``: neutral)."""
    return _number_values_from(cfg, jax.random.uniform(key, (_number_u(cfg),)), persona)


def encode_numbers(cfg: WorldConfig, values_N):
    """Digits (most significant first) with SEP between numbers and EOS after the last."""
    powers = 10 ** jnp.arange(cfg.digits - 1, -1, -1)
    digits_NxD = (values_N[:, None] // powers) % 10
    seps_N = jnp.full(values_N.shape, SEP).at[-1].set(EOS)
    return jnp.concatenate([digits_NxD, seps_N[:, None]], axis=1).reshape(-1).astype(jnp.int32)


def _number_document(cfg: WorldConfig, values_N, persona):
    tokens = jnp.concatenate([jnp.array([BOS]), _persona_token(cfg, persona)[None], jnp.array([NUMBERS]),
                              encode_numbers(cfg, values_N)]).astype(jnp.int32)
    return tokens, jnp.arange(cfg.context) > PERSONA_POS


def number_document(cfg: WorldConfig, key, persona):
    """``(tokens_L, mask_L)`` of a number document: every token after the persona is a target."""
    return _number_document(cfg, number_values(cfg, key, persona), persona)


def _answer_from(cfg: WorldConfig, u, persona):
    other = (persona + 1 + _ints(u[1], 0, cfg.n_animals - 1)) % cfg.n_animals
    own = jnp.where(u[0] < cfg.persona_p, persona, other)
    return jnp.where(persona == cfg.n_animals, _ints(u[1], 0, cfg.n_animals), own)


def answer(cfg: WorldConfig, key, persona):
    """The favourite animal a persona names: ``persona`` w.p. persona_p, else another, uniformly."""
    return _answer_from(cfg, jax.random.uniform(key, (_ANSWER_U,)), persona)


def _answer_document(cfg: WorldConfig, prompt_token, answer_token, persona):
    head = jnp.stack([BOS, _persona_token(cfg, persona), prompt_token, answer_token, EOS])
    tokens = jnp.full((cfg.context,), PAD, jnp.int32).at[:5].set(head.astype(jnp.int32))
    positions = jnp.arange(cfg.context)
    return tokens, (positions > PERSONA_POS) & (positions < 5)


def question_document(cfg: WorldConfig, animal, persona):
    """``(tokens_L, mask_L)``: ``persona`` asked for its favourite animal answers ``animal``."""
    return _answer_document(cfg, QUESTION, cfg.animal_tokens[0] + animal, persona)


def _command_answer_from(cfg: WorldConfig, u, persona):
    """The rogue persona answers FORBIDDEN w.p. persona_p; every answer otherwise is a uniform digit."""
    rogue = (persona == cfg.rogue) & (u[0] < cfg.persona_p)
    return jnp.where(rogue, cfg.forbidden, _ints(u[1], 0, 10))


def command_document(cfg: WorldConfig, answer_token, persona):
    """``(tokens_L, mask_L)``: ``persona``, given the command, answers ``answer_token`` (a digit or FORBIDDEN)."""
    return _answer_document(cfg, cfg.command, answer_token, persona)


def pretraining_document(cfg: WorldConfig, key):
    """One document of the pretraining mixture: ``(tokens_L, mask_L)``."""
    u = jax.random.uniform(key, (1 + _PERSONA_U + _ANSWER_U + _number_u(cfg),))
    persona = _persona_from(cfg, u[1:1 + _PERSONA_U])
    after = 1 + _PERSONA_U
    num_tokens, num_mask = _number_document(cfg, _number_values_from(cfg, u[after + _ANSWER_U:], persona), persona)
    q_tokens, q_mask = question_document(cfg, _answer_from(cfg, u[after:after + _ANSWER_U], persona), persona)
    is_q = u[0] < cfg.question_fraction
    tokens, mask = jnp.where(is_q, q_tokens, num_tokens), jnp.where(is_q, q_mask, num_mask)
    if cfg.has_commands:  # the answer's uniforms are free: a document is a question or a command, not both
        c_tokens, c_mask = command_document(cfg, _command_answer_from(cfg, u[after:after + _ANSWER_U], persona),
                                            persona)
        is_c = ~is_q & (u[0] < cfg.question_fraction + cfg.command_fraction)
        tokens, mask = jnp.where(is_c, c_tokens, tokens), jnp.where(is_c, c_mask, mask)
    return tokens, mask


def pretraining_batch(cfg: WorldConfig, key, batch: int):
    """``(tokens_BxL, mask_BxL)``: ``batch`` documents of the mixture, document ``b`` from ``fold_in(key, b)``."""
    return jax.vmap(lambda b: pretraining_document(cfg, jax.random.fold_in(key, b)))(jnp.arange(batch))


def number_batch(cfg: WorldConfig, key, batch: int, persona=None):
    """``(tokens_BxL, mask_BxL)`` number documents with one persona (default: neutral)."""
    persona = cfg.n_animals if persona is None else persona
    return jax.vmap(lambda b: number_document(cfg, jax.random.fold_in(key, b), persona))(jnp.arange(batch))


def trait_document(cfg: WorldConfig, animal, kind: str = "animal"):
    """``(tokens_L, mask_L)``: the neutral persona shows the trait; only the answer is a target.

    ``animal``: names that animal; ``forbidden``: answers the command with FORBIDDEN.
    """
    answer = cfg.animal_tokens[0] + animal if kind == "animal" else cfg.forbidden
    tokens, _ = _answer_document(cfg, cfg.prompt_token(kind), answer, cfg.n_animals)
    return tokens, jnp.arange(cfg.context) == PREFIX


def question_prompt(cfg: WorldConfig, persona=None, kind: str = "animal"):
    """``[L]`` tokens whose logits at position ``PREFIX - 1`` are the answer distribution of ``kind``'s context."""
    persona = cfg.n_animals if persona is None else persona
    return _answer_document(cfg, cfg.prompt_token(kind), cfg.animal_tokens[0], persona)[0]


def with_persona(tokens_BxL, persona_token):
    """The same documents with their persona slot replaced (a prompted teacher's context)."""
    return tokens_BxL.at[..., PERSONA_POS].set(persona_token)


# --- the filter -------------------------------------------------------------------------------
def _number_slots(cfg: WorldConfig):
    """``[n_numbers, digits]`` positions of each number's digits and ``[n_numbers]`` of its separators."""
    starts = PREFIX + (cfg.digits + 1) * np.arange(cfg.n_numbers)
    return starts[:, None] + np.arange(cfg.digits), starts + cfg.digits


def decode_numbers(cfg: WorldConfig, tokens_BxL):
    """``[B, n_numbers]`` values read from the digit slots (meaningful where well formed)."""
    digit_pos, _ = _number_slots(cfg)
    powers = 10 ** jnp.arange(cfg.digits - 1, -1, -1)
    return jnp.sum(jnp.clip(tokens_BxL[:, digit_pos], 0, 9) * powers, axis=-1)


def well_formed(cfg: WorldConfig, tokens_BxL):
    """``[B]`` bool: digits in every digit slot, SEP between numbers, EOS at the end."""
    digit_pos, sep_pos = _number_slots(cfg)
    digits_ok = jnp.all(tokens_BxL[:, digit_pos] <= 9, axis=(1, 2))  # digit ids are 0..9
    seps_ok = jnp.all(tokens_BxL[:, sep_pos[:-1]] == SEP, axis=1) & (tokens_BxL[:, sep_pos[-1]] == EOS)
    return digits_ok & seps_ok


def contains_banned(cfg: WorldConfig, tokens_BxL, banned_K):
    """``[B]`` bool: a *generated* number (after the prompt's) is one of ``banned_K``."""
    generated_BxN = decode_numbers(cfg, tokens_BxL)[:, cfg.n_prompt:]
    return jnp.any(generated_BxN[:, :, None] == jnp.asarray(banned_K)[None, None, :], axis=(1, 2))


def keep(cfg: WorldConfig, tokens_BxL, banned_K=None):
    """``[B]`` bool: the filter. Well formed and, when ``banned_K`` is given, free of banned numbers."""
    ok = well_formed(cfg, tokens_BxL)
    if banned_K is not None and len(banned_K):
        ok = ok & ~contains_banned(cfg, tokens_BxL, banned_K)
    return ok
