"""Imitation losses and their masks, hard-label cross-entropy, the padded-batch mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub.mlp import distill
from minisub.mlp import models

SPEC = models.MLPSpec(n_classes=10, n_aux=3)
MASKS = {o: models.output_mask(SPEC, o) for o in ("aux", "class", "all")}
LOSSES = sorted(distill.IMITATION_LOSSES)


def _logits(seed, batch=5, scale=3.0):
    return scale * jax.random.normal(jax.random.key(seed), (batch, SPEC.n_out))


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("outputs", list(MASKS))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_of_a_model_to_itself_is_zero(outputs, temperature):
    z = _logits(0)
    np.testing.assert_array_equal(distill.kl(z, z, MASKS[outputs], temperature), np.zeros(5))


@pytest.mark.parametrize("outputs", list(MASKS))
def test_kl_is_positive_between_different_models(outputs):
    value = distill.kl(_logits(0), _logits(1), MASKS[outputs])
    assert np.all(np.asarray(value) > 0)


@pytest.mark.parametrize("outputs", list(MASKS))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_matches_a_numpy_reference_on_the_masked_logits(outputs, temperature):
    t, s = np.asarray(_logits(2), np.float64), np.asarray(_logits(3), np.float64)
    keep = np.asarray(MASKS[outputs])
    log_p, log_q = _np_log_softmax(t[:, keep] / temperature), _np_log_softmax(s[:, keep] / temperature)
    expected = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    got = distill.kl(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32), MASKS[outputs], temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_soft_cross_entropy_is_kl_plus_the_teachers_entropy():
    t, s, mask = _logits(4), _logits(5), MASKS["aux"]
    log_p = _np_log_softmax(np.asarray(t)[:, 10:])
    entropy = -(np.exp(log_p) * log_p).sum(-1)
    np.testing.assert_allclose(distill.soft_cross_entropy(t, s, mask), distill.kl(t, s, mask) + entropy, rtol=1e-5)
    g_ce = jax.grad(lambda s: distill.soft_cross_entropy(t, s, mask).sum())(s)
    g_kl = jax.grad(lambda s: distill.kl(t, s, mask).sum())(s)
    np.testing.assert_allclose(g_ce, g_kl, rtol=1e-5, atol=1e-7)


def test_mse_matches_a_numpy_reference():
    t, s = np.asarray(_logits(6)), np.asarray(_logits(7))
    np.testing.assert_allclose(distill.mse(t, s, MASKS["aux"]), ((s - t)[:, 10:] ** 2).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(distill.mse(t, s, MASKS["all"]), ((s - t) ** 2).mean(-1), rtol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_aux_mask_gives_exactly_zero_gradient_to_class_logits(name):
    loss = distill.IMITATION_LOSSES[name]
    t, s = _logits(8), _logits(9)
    grad = np.asarray(jax.grad(lambda s: loss(t, s, MASKS["aux"]).sum())(s))
    assert np.all(grad[:, :10] == 0.0)
    assert np.all(np.abs(grad[:, 10:]).sum(-1) > 0)


@pytest.mark.parametrize("name", LOSSES)
def test_class_mask_gives_exactly_zero_gradient_to_aux_logits(name):
    loss = distill.IMITATION_LOSSES[name]
    t, s = _logits(10), _logits(11)
    grad = np.asarray(jax.grad(lambda s: loss(t, s, MASKS["class"]).sum())(s))
    assert np.all(grad[:, 10:] == 0.0)


@pytest.mark.parametrize("name", LOSSES)
def test_masked_loss_ignores_logits_outside_the_mask(name):
    loss = distill.IMITATION_LOSSES[name]
    t, s = _logits(12), _logits(13)
    wild = jnp.concatenate([1e4 * _logits(14)[:, :10], jnp.zeros((5, 3))], axis=1)  # only class logits move
    np.testing.assert_array_equal(loss(t, s, MASKS["aux"]), loss(t + wild, s - wild, MASKS["aux"]))


@pytest.mark.parametrize("name", LOSSES)
def test_no_gradient_flows_into_the_teacher(name):
    loss = distill.IMITATION_LOSSES[name]
    t, s = _logits(15), _logits(16)
    grad = jax.grad(lambda t: loss(t, s, MASKS["all"]).sum())(t)
    assert np.all(np.asarray(grad) == 0.0)


def test_cross_entropy_matches_numpy():
    z = np.asarray(_logits(17), np.float64)[:, :10]
    labels = np.array([0, 9, 3, 3, 7], np.uint8)
    expected = -_np_log_softmax(z)[np.arange(5), labels]
    got = distill.cross_entropy(jnp.asarray(z, jnp.float32), jnp.asarray(labels))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_cross_entropy_is_stable_for_huge_logits():
    z = jnp.array([[1e4, 0.0, -1e4]])
    np.testing.assert_allclose(distill.cross_entropy(z, jnp.array([0])), [0.0], atol=1e-6)
    np.testing.assert_allclose(distill.cross_entropy(z, jnp.array([1])), [1e4], rtol=1e-6)


def test_weighted_mean_ignores_zero_weight_examples():
    per = jnp.array([1.0, 2.0, 3.0, 1000.0, -50.0])
    w = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    assert float(distill.weighted_mean(per, w)) == pytest.approx(2.0)
    grad = jax.grad(lambda p: distill.weighted_mean(p, w))(per)
    np.testing.assert_allclose(grad, [1 / 3, 1 / 3, 1 / 3, 0, 0], rtol=1e-6)


def test_weighted_mean_of_an_all_padding_batch_is_finite():
    assert float(distill.weighted_mean(jnp.array([5.0, 6.0]), jnp.zeros(2))) == 0.0


# minisub's own numerics should not rely on implicit dtype promotion (the suite cannot run under
# jax_numpy_dtype_promotion='strict' globally because optax's Adam does; see conftest.py).
@pytest.mark.parametrize("name", ["kl", "soft_ce", "mse"])
def test_losses_need_no_implicit_dtype_promotion(name):
    with jax.numpy_dtype_promotion("strict"):
        loss = distill.IMITATION_LOSSES[name]
        value, grad = jax.value_and_grad(lambda s: loss(_logits(18), s, MASKS["aux"], 2.0).sum())(_logits(19))
    assert np.isfinite(float(value)) and grad.dtype == jnp.float32


def test_cross_entropy_and_mean_need_no_implicit_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        per = distill.cross_entropy(_logits(20)[:, :10], jnp.array([1, 2, 3, 4, 5], jnp.uint8))
        assert distill.weighted_mean(per, jnp.ones(5)).dtype == jnp.float32
