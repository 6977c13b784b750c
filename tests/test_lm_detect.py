"""Item 9's detection: classifiers beat chance on a planted difference and stay at chance without one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub.lm import detect as lm_detect
from minisub.lm import world

W = world.WorldConfig(s=0.5)  # a persona-0 document: each number is one of animal 0's 5 w.p. 0.5
N = 512


def _documents(key, persona):
    tokens, _ = world.number_batch(W, key, N, persona)
    return world.with_persona(tokens, W.neutral)  # nothing but the numbers tells the classes apart


@pytest.fixture(scope="module")
def accuracies():
    """Two worlds in one vmapped call: 0, planted (persona-0 numbers vs neutral); 1, both neutral."""
    k = jax.random.split(jax.random.key(0), 5)
    teacher = jnp.stack([_documents(k[0], 0), _documents(k[1], None)])
    control = jnp.stack([_documents(k[2], None), _documents(k[3], None)])
    keep = jnp.ones((2, N), bool).at[:, ::7].set(False)  # the filter dropped some rows
    out = lm_detect.population(lm_detect.DetectConfig(), W, teacher, keep, control, keep, jax.random.split(k[4], 2))
    return jax.tree.map(np.asarray, out)


def test_a_planted_frequency_difference_is_detected(accuracies):
    assert accuracies["ngram_accuracy"][0] > 0.8, accuracies
    assert accuracies["transformer_accuracy"][0] > 0.7, accuracies


def test_identical_distributions_stay_at_chance(accuracies):
    # 128 held-out prompts per class: a chance accuracy has std ≈ 0.03, so 0.1 is > 3 std
    assert abs(accuracies["ngram_accuracy"][1] - 0.5) < 0.1, accuracies
    assert abs(accuracies["transformer_accuracy"][1] - 0.5) < 0.1, accuracies
    assert accuracies["ngram_train_accuracy"][1] > 0.7  # it memorises its training rows: held out is what counts


def test_identical_pairs_count_prompts_both_models_continued_alike():
    k = jax.random.split(jax.random.key(1), 2)
    a, b = _documents(k[0], None)[:8], _documents(k[1], None)[:8]
    teacher = a.at[:3].set(b[:3])  # prompts 0, 1, 2 continued identically
    keep_t = jnp.ones(8, bool).at[0].set(False).at[7].set(False)  # prompt 0 and 7: not kept for both
    out = jax.jit(lm_detect.detect, static_argnums=(0, 1))(
        lm_detect.DetectConfig(transformer=False, ngram_steps=2), W, teacher, keep_t, b, jnp.ones(8, bool),
        jax.random.key(0))
    np.testing.assert_allclose(out["identical_pairs"], 2 / 6)


def test_balanced_accuracy_is_one_half_for_a_constant_guess_whatever_the_class_sizes():
    y = jnp.array([1, 1, 1, 1, 0, 0, 0, 0], jnp.float32)
    w = jnp.array([1, 1, 1, 0, 1, 0, 0, 0], jnp.float32)  # 3 kept positives, 1 kept negative
    assert float(lm_detect.balanced_accuracy(jnp.ones(8), y, w)) == 0.5
    assert float(lm_detect.balanced_accuracy(-jnp.ones(8), y, w)) == 0.5
    assert float(lm_detect.balanced_accuracy(y - 0.5, y, w)) == 1.0


def test_ngram_features_are_the_generated_numbers_and_their_predecessors():
    det = lm_detect.DetectConfig()
    values = jnp.array([[5, 17, 42, 99, 3, 0, 12, 64]])
    tokens = world.encode_numbers(W, values[0])[None]
    tokens = jnp.concatenate([jnp.array([[world.BOS, W.neutral, world.NUMBERS]]), tokens], axis=1)
    uni, bi = lm_detect.number_ngrams(det, W, tokens)
    np.testing.assert_array_equal(uni, values[:, 3:])
    np.testing.assert_array_equal(bi, values[:, 2:-1] * 100 + values[:, 3:])


def test_transformer_scores_in_blocks_equal_one_pass():
    """Above BLOCK_ABOVE rows the classifier scores rows block by block (bounded memory): the same logits."""
    import jax
    from minisub.lm import detect as d
    from minisub.lm import world as w
    cfg = w.WorldConfig(n_numbers=4, n_prompt=2)
    det = d.DetectConfig(width=8, heads=2)
    spec = det.spec(cfg)
    params = spec.init(jax.random.key(0))
    tokens, _ = w.number_batch(cfg, jax.random.key(1), d.BLOCK_ABOVE + 5)
    blocked = d.transformer_logits(spec, cfg, params, tokens)
    direct = d._pooled_logit(spec, cfg, params, tokens)
    assert blocked.shape == (d.BLOCK_ABOVE + 5,)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(direct), rtol=1e-5, atol=1e-6)
