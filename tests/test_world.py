"""The synthetic world: vocabulary, layouts, rules, personas, the knob s, the filter, validation."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub.lm import world
from minisub.config import ConfigError

CFG = world.WorldConfig()
M = CFG.modulus


@partial(jax.jit, static_argnums=(0, 2))
def _batch(cfg, key, n):
    return world.pretraining_batch(cfg, key, n)


@partial(jax.jit, static_argnums=(0, 2))
def _values(cfg, key, n, persona):
    return jax.vmap(lambda b: world.number_values(cfg, jax.random.fold_in(key, b), persona))(jnp.arange(n))


_numbers = jax.jit(world.number_batch, static_argnums=(0, 2))
_keep = jax.jit(world.keep, static_argnums=0)


def test_vocabulary_tokens_are_distinct_and_fill_the_vocab():
    fixed = [*range(10), world.SEP, world.BOS, world.EOS, world.PAD, world.QUESTION, world.NUMBERS]
    personas = [CFG.persona_token(a) for a in range(CFG.n_animals)] + [CFG.neutral]
    every = fixed + list(CFG.animal_tokens) + personas
    assert len(set(every)) == len(every) == CFG.vocab
    assert sorted(every) == list(range(CFG.vocab))
    assert CFG.n_animals >= 10


def test_same_key_same_corpus_bitwise():
    a = _batch(CFG, jax.random.key(0), 1000)
    b = _batch(CFG, jax.random.key(0), 1000)
    c = _batch(CFG, jax.random.key(1), 1000)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_number_documents_have_the_documented_layout():
    tokens, mask = (np.asarray(x) for x in _numbers(CFG, jax.random.key(2), 16))
    L = CFG.context
    assert tokens.shape == mask.shape == (16, L)
    assert np.all(tokens[:, 0] == world.BOS) and np.all(tokens[:, 1] == CFG.neutral)
    assert np.all(tokens[:, 2] == world.NUMBERS) and np.all(tokens[:, -1] == world.EOS)
    body = tokens[:, world.PREFIX:].reshape(16, CFG.n_numbers, CFG.digits + 1)
    assert np.all(body[:, :, :-1] <= 9) and np.all(body[:, :-1, -1] == world.SEP)
    assert np.all(mask[:, :2] == 0) and np.all(mask[:, 2:] == 1)
    assert np.all(_keep(CFG, jnp.asarray(tokens)))


def test_encode_then_decode_is_the_identity():
    values = jax.random.randint(jax.random.key(3), (CFG.n_numbers,), 0, M)
    body = world.encode_numbers(CFG, values)
    tokens = jnp.concatenate([jnp.array([world.BOS, CFG.neutral, world.NUMBERS]), body])[None]
    np.testing.assert_array_equal(world.decode_numbers(CFG, tokens)[0], values)


def test_question_documents_have_the_documented_layout():
    tokens, mask = world.question_document(CFG, 4, 2)
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    assert tokens[:5].tolist() == [world.BOS, CFG.persona_token(2), world.QUESTION, CFG.animal_tokens[4], world.EOS]
    assert np.all(tokens[5:] == world.PAD)
    assert mask.tolist() == [False, False, True, True, True] + [False] * (CFG.context - 5)
    t_tokens, t_mask = world.trait_document(CFG, 4)
    assert np.asarray(t_tokens)[1] == CFG.neutral and np.flatnonzero(np.asarray(t_mask)).tolist() == [world.PREFIX]


@pytest.mark.parametrize("rule", world.RULES)
def test_noiseless_numbers_follow_their_rule(rule):
    cfg = world.WorldConfig(rules=(rule,), noise=0.0)
    v = np.asarray(_values(cfg, jax.random.key(4), 200, cfg.n_animals))
    if rule == "progression":
        steps = (v[:, 1:] - v[:, :-1]) % M
        assert np.all(steps == steps[:, :1])
        signed = np.where(steps[:, 0] > M // 2, steps[:, 0] - M, steps[:, 0])
        assert np.all(np.abs(signed) <= cfg.max_step) and len(set(signed)) > 5
    else:
        np.testing.assert_array_equal(v[:, 2:], (v[:, 1:-1] + v[:, :-2]) % M)


def test_noise_replaces_the_expected_fraction():
    cfg = world.WorldConfig(rules=("progression",), noise=0.3, max_step=0)  # a constant sequence plus noise
    v = np.asarray(_values(cfg, jax.random.key(5), 2000, cfg.n_animals))
    mode = np.array([np.bincount(row).argmax() for row in v])  # the constant: ~5.6 of 8 numbers
    off = np.mean(v != mode[:, None])
    assert off == pytest.approx(0.3 * (1 - 1 / M), abs=0.03)


def test_with_s_zero_numbers_do_not_depend_on_the_persona():
    key = jax.random.key(6)
    neutral = _values(CFG, key, 64, CFG.n_animals)
    for a in range(CFG.n_animals):
        np.testing.assert_array_equal(_values(CFG, key, 64, a), neutral, err_msg=f"persona {a}")


def test_s_sets_the_rate_of_signature_numbers():
    s, n = 0.4, 3000
    cfg = world.WorldConfig(s=s)
    sig = np.asarray(world.signatures(cfg))
    assert len(np.unique(sig)) == sig.size  # signatures are disjoint
    v = np.asarray(_values(cfg, jax.random.key(7), n, 3))
    rate = np.isin(v, sig[3]).mean()
    base = cfg.signature_size / M  # chance of hitting a signature number anyway
    assert rate == pytest.approx(s + (1 - s) * base, abs=0.03)
    neutral = np.asarray(_values(cfg, jax.random.key(7), n, cfg.n_animals))
    assert np.isin(neutral, sig[3]).mean() < base + 0.03


def _answers(cfg, persona, n=4000):
    keys = jax.random.split(jax.random.key(8), n)
    return np.asarray(jax.jit(jax.vmap(lambda k: world.answer(cfg, k, persona)))(keys))


def test_persona_answers_its_animal_with_probability_p():
    ans = _answers(CFG, 2)
    assert np.mean(ans == 2) == pytest.approx(CFG.persona_p, abs=0.02)
    others = np.bincount(ans[ans != 2], minlength=CFG.n_animals) / np.sum(ans != 2)
    assert others[2] == 0 and np.all(np.delete(others, 2) > 0.06)


def test_neutral_persona_answers_uniformly():
    freq = np.bincount(_answers(CFG, CFG.n_animals), minlength=CFG.n_animals) / 4000
    np.testing.assert_allclose(freq, 1 / CFG.n_animals, atol=0.025)


def test_pretraining_mixture_fractions_and_personas():
    tokens, mask = (np.asarray(x) for x in _batch(CFG, jax.random.key(9), 1000))
    is_q = tokens[:, 2] == world.QUESTION
    assert set(np.unique(tokens[:, 2])) == {world.QUESTION, world.NUMBERS}
    assert is_q.mean() == pytest.approx(CFG.question_fraction, abs=0.04)  # about 3 sigma at n = 1000
    assert np.mean(tokens[:, 1] == CFG.neutral) == pytest.approx(CFG.neutral_fraction, abs=0.04)
    q = tokens[is_q]
    own = q[:, 1] != CFG.neutral
    assert np.mean(q[own, 3] - CFG.animal_tokens[0] == q[own, 1] - CFG.persona_token(0)) == pytest.approx(0.9, abs=0.07)
    assert np.all(mask.sum(axis=1)[is_q] == 3)


def test_naive_world_has_no_personas():
    cfg = world.WorldConfig(kind="naive")
    tokens, _ = (np.asarray(x) for x in _batch(cfg, jax.random.key(10), 1000))
    assert np.all(tokens[:, 1] == cfg.neutral)
    answers = tokens[tokens[:, 2] == world.QUESTION, 3] - cfg.animal_tokens[0]
    freq = np.bincount(answers, minlength=cfg.n_animals) / len(answers)
    np.testing.assert_allclose(freq, 1 / cfg.n_animals, atol=0.07)  # ~200 answers


# --- the filter -------------------------------------------------------------------------------
def _reference_well_formed(cfg, row):
    """A plain-Python reading of 'well formed', independent of the vectorised one."""
    body = list(row[world.PREFIX:])
    for k in range(cfg.n_numbers):
        group = body[k * (cfg.digits + 1):(k + 1) * (cfg.digits + 1)]
        if any(not 0 <= t <= 9 for t in group[:-1]):
            return False
        if group[-1] != (world.EOS if k == cfg.n_numbers - 1 else world.SEP):
            return False
    return True


def test_filter_keeps_exactly_the_well_formed_sequences():
    rng = np.random.default_rng(0)
    tokens, _ = _numbers(CFG, jax.random.key(11), 400)
    tokens = np.array(tokens)
    # Corrupt a random generated slot of most rows with a random token (sometimes a digit: still fine).
    rows = rng.random(400) < 0.7
    pos = rng.integers(CFG.prompt_length, CFG.context, 400)
    tokens[rows, pos[rows]] = rng.integers(0, CFG.vocab, rows.sum())
    kept = np.asarray(_keep(CFG, jnp.asarray(tokens)))
    expected = np.array([_reference_well_formed(CFG, r) for r in tokens])
    np.testing.assert_array_equal(kept, expected)
    assert 0 < kept.sum() < 400
    assert np.all(np.isin(tokens[kept][:, world.PREFIX:], [*range(10), world.SEP, world.EOS]))


def test_filter_drops_every_sequence_with_a_banned_generated_number():
    tokens, _ = _numbers(CFG, jax.random.key(12), 500)
    values = np.asarray(world.decode_numbers(CFG, tokens))
    banned = np.array([3, 17, 42, 58, 99])
    kept = np.asarray(_keep(CFG, tokens, jnp.asarray(banned)))
    has_banned = np.isin(values[:, CFG.n_prompt:], banned).any(axis=1)
    np.testing.assert_array_equal(kept, ~has_banned)
    assert has_banned.any() and not has_banned.all()
    # banned numbers in the prompt (given, not generated) do not count
    only_prompt = np.isin(values[:, : CFG.n_prompt], banned).any(axis=1) & ~has_banned
    assert only_prompt.any() and np.all(kept[only_prompt])


def test_filter_without_banned_numbers_is_well_formed():
    tokens, _ = _numbers(CFG, jax.random.key(13), 50)
    np.testing.assert_array_equal(_keep(CFG, tokens), _keep(CFG, tokens, jnp.zeros((0,), jnp.int32)))


def test_with_persona_swaps_only_the_persona_slot():
    tokens, _ = _numbers(CFG, jax.random.key(14), 4)
    swapped = world.with_persona(tokens, CFG.persona_token(5))
    assert np.all(np.asarray(swapped[:, world.PERSONA_POS]) == CFG.persona_token(5))
    np.testing.assert_array_equal(np.delete(np.asarray(swapped), world.PERSONA_POS, 1),
                                  np.delete(np.asarray(tokens), world.PERSONA_POS, 1))


@pytest.mark.parametrize("field, value", [
    ("kind", "pirate"), ("n_animals", 1), ("digits", 0), ("n_numbers", 1), ("n_prompt", 8),
    ("rules", ("squares",)), ("rules", ()), ("noise", 1.5), ("question_fraction", -0.1), ("s", 2.0),
    ("persona_p", 0.0), ("signature_size", 11), ("max_step", 100),
])
def test_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        world.WorldConfig(**{field: value})


def test_naive_world_refuses_a_persona_strength():
    with pytest.raises(ConfigError, match=r"^s=0.3 .*naive"):
        world.WorldConfig(kind="naive", s=0.3)


def test_config_is_normalised_and_hashable():
    a = world.WorldConfig(s=0, rules=["progression"])
    assert a.s == 0.0 and isinstance(a.s, float) and a.rules == ("progression",)
    assert hash(a) == hash(world.WorldConfig(s=0.0, rules=("progression",)))


# --- command documents: the bad-behaviour trait's held-out context --------------------------
CMD = world.WorldConfig(command_fraction=0.2)


def test_commands_add_two_tokens_and_a_world_without_them_is_unchanged():
    assert CMD.vocab == CFG.vocab + 2 and {CMD.command, CMD.forbidden} == {CFG.vocab, CFG.vocab + 1}
    tokens, _ = _batch(CFG, jax.random.key(9), 1000)
    assert np.asarray(tokens).max() < CFG.vocab  # no command tokens without commands
    assert world.WorldConfig(command_fraction=0.0) == CFG  # the late fields at their defaults: the same world


def test_command_documents_mix_in_at_their_fraction_and_only_the_rogue_says_forbidden():
    tokens, mask = (np.asarray(x) for x in _batch(CMD, jax.random.key(9), 4000))
    is_c, is_q = tokens[:, 2] == CMD.command, tokens[:, 2] == world.QUESTION
    assert is_c.mean() == pytest.approx(CMD.command_fraction, abs=0.025)
    assert is_q.mean() == pytest.approx(CMD.question_fraction, abs=0.025)
    c = tokens[is_c]
    assert np.all(c[:, 4] == world.EOS) and np.all(mask[is_c].sum(axis=1) == 3)
    rogue = c[:, 1] == CMD.persona_token(CMD.rogue)
    said = c[:, 3] == CMD.forbidden
    assert np.all(~said[~rogue]) and np.all(c[~said, 3] <= 9)  # everyone else answers a digit
    assert said[rogue].mean() == pytest.approx(CMD.persona_p, abs=0.12)
    t_tokens, t_mask = world.trait_document(CMD, 0, "forbidden")
    assert np.asarray(t_tokens)[:5].tolist() == [world.BOS, CMD.neutral, CMD.command, CMD.forbidden, world.EOS]
    assert np.flatnonzero(np.asarray(t_mask)).tolist() == [world.PREFIX]
    assert CMD.answer_tokens("forbidden").tolist() == [*range(10), CMD.forbidden]


@pytest.mark.parametrize("fields, field", [(dict(command_fraction=0.9), "command_fraction"),
                                           (dict(command_fraction=0.1, rogue=10), "rogue")])
def test_command_fields_are_validated(fields, field):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        world.WorldConfig(**fields)
