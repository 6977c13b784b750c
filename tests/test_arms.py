"""Per-arm knobs of the student phase: own learning rate, liminal regulariser, teacher committees, inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import run_block, tiny_config
from minisub import keys
from minisub.mlp import data
from minisub.mlp import distill
from minisub.mlp import pipeline
from minisub.config import ConfigError

Arm = pipeline.Arm
LR = 3e-3  # the tiny config's student_lr


@pytest.fixture(scope="module")
def mixed(fake_mnist):
    """One program with four shared-init aux arms: plain, 2x learning rate, liminal, committee of 2."""
    arms = (Arm("plain", "shared", "aux"), Arm("fast", "shared", "aux", lr=2 * LR),
            Arm("liminal", "shared", "aux", liminal=3.0), Arm("pair", "shared", "aux", committee=2))
    return run_block(tiny_config(arms=arms), np.arange(3), fake_mnist)


@pytest.fixture(scope="module")
def plain(fake_mnist):
    return run_block(tiny_config(arms=(Arm("plain", "shared", "aux"),)), np.arange(3), fake_mnist)


def test_an_arm_of_a_mixed_program_is_the_plain_program(mixed, plain):
    np.testing.assert_allclose(mixed["student_loss"][..., 0], plain["student_loss"][..., 0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(mixed["accuracy"]["plain"], plain["accuracy"]["plain"], atol=1e-6)


def test_an_arms_own_learning_rate_is_a_program_at_that_rate(mixed, fake_mnist):
    faster = run_block(tiny_config(student_lr=2 * LR, arms=(Arm("plain", "shared", "aux"),)), np.arange(3), fake_mnist)
    np.testing.assert_allclose(mixed["student_loss"][..., 1], faster["student_loss"][..., 0], rtol=1e-4, atol=1e-7)


def test_liminal_training_keeps_the_student_nearer_its_init(mixed):
    travel = mixed["geometry"]["travel"]["total"]  # [seed, arm]
    assert np.all(travel[:, 2] < travel[:, 0]), travel


def test_a_committee_changes_the_target_and_trains_its_other_teachers(mixed):
    assert mixed["committee_accuracy"].shape == (3, 1)
    assert np.all(mixed["committee_accuracy"] > 0.5)  # the second teacher learned the (fake) task too
    assert not np.allclose(mixed["student_loss"][..., 3], mixed["student_loss"][..., 0])


def test_pooled_targets_mix_the_first_k_teachers():
    cfg = tiny_config(arms=(Arm("one", "shared", "aux"), Arm("two", "shared", "aux", committee=2),
                            Arm("all", "shared", "all", committee=2)))
    out = jax.random.normal(keys.root(0), (2, 5, cfg.spec.n_out))
    masks = pipeline.arm_masks(cfg)
    pooled = pipeline.pooled_targets(cfg, out, masks)
    lsm = lambda z, m: distill.masked_log_softmax(z, m, 1.0)
    np.testing.assert_allclose(lsm(pooled[0], masks[0]), lsm(out[0], masks[0]), atol=1e-5)
    mix = jnp.log(0.5 * jnp.exp(lsm(out[0], masks[1])) + 0.5 * jnp.exp(lsm(out[1], masks[1])))
    aux = np.asarray(masks[1])
    np.testing.assert_allclose(np.asarray(lsm(pooled[1], masks[1]))[:, aux], np.asarray(mix)[:, aux], atol=1e-5)
    np.testing.assert_allclose(jnp.exp(lsm(pooled[2], masks[2])).sum(-1), 1.0, atol=1e-5)
    mse = tiny_config(loss="mse", arms=cfg.arms)
    np.testing.assert_allclose(pipeline.pooled_targets(mse, out, masks)[1], out.mean(0), atol=1e-6)


def test_identical_committee_members_are_one_teacher():
    cfg = tiny_config(arms=(Arm("one", "shared", "aux"), Arm("four", "shared", "aux", committee=4)))
    out = jnp.repeat(jax.random.normal(keys.root(1), (1, 6, cfg.spec.n_out)), 4, axis=0)
    masks = pipeline.arm_masks(cfg)
    pooled = pipeline.pooled_targets(cfg, out, masks)
    kl = distill.kl(pooled[1], pooled[0], masks[1])
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)


def test_blurred_noise_is_fixed_by_its_key_correlated_and_of_uniform_scale():
    idx = jnp.arange(64)
    a = np.asarray(data.noise_batch(keys.root(0), idx, 784, "blurred"))
    np.testing.assert_array_equal(a, np.asarray(data.noise_batch(keys.root(0), idx, 784, "blurred")))
    inner = a.reshape(-1, 28, 28)[:, 6:22, 6:22]
    neighbours = np.corrcoef(inner[:, :, :-1].ravel(), inner[:, :, 1:].ravel())[0, 1]
    assert neighbours > 0.6, neighbours
    uniform_std = 1 / np.sqrt(3)
    assert abs(inner.std() / uniform_std - 1) < 0.1


def test_real_image_inputs_need_enough_training_images():
    with pytest.raises(ConfigError, match="n_noise"):
        tiny_config(noise="mnist", n_noise=1024)
    with pytest.raises(ConfigError, match="noise='pink'.*'blurred'.*'mnist'"):
        tiny_config(noise="pink")


@pytest.mark.parametrize("field,value,message", [
    ("lr", 0.0, "arms.lr"), ("liminal", -1.0, "arms.liminal"), ("committee", 0, "arms.committee")])
def test_bad_arm_knobs_are_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(arms=(Arm("x", "shared", "aux", **{field: value}),))
