"""Key-derived noise sets and key streams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub import keys
from minisub.mlp import data


def test_noise_example_is_a_pure_function_of_key_and_index():
    k = keys.root(0)
    a = np.asarray(data.noise_example(k, 5, 784, "uniform"))
    np.testing.assert_array_equal(a, np.asarray(data.noise_example(k, 5, 784, "uniform")))
    assert not np.array_equal(a, np.asarray(data.noise_example(k, 6, 784, "uniform")))
    assert not np.array_equal(a, np.asarray(data.noise_example(keys.root(1), 5, 784, "uniform")))


def test_noise_batch_gathers_the_same_images_in_any_order():
    k = keys.root(3)
    idx = jnp.array([7, 0, 7, 3])
    batch = np.asarray(data.noise_batch(k, idx, 784, "gaussian"))
    assert batch.shape == (4, 784)
    np.testing.assert_array_equal(batch[0], batch[2])
    for row, i in zip(batch, [7, 0, 7, 3]):
        np.testing.assert_array_equal(row, np.asarray(data.noise_example(k, i, 784, "gaussian")))


def test_noise_distributions():
    idx = jnp.arange(64)
    uniform = np.asarray(data.noise_batch(keys.root(0), idx, 784, "uniform"))
    assert uniform.min() >= -1 and uniform.max() <= 1
    assert abs(uniform.mean()) < 0.01 and uniform.std() == pytest.approx(1 / np.sqrt(3), rel=0.01)
    gaussian = np.asarray(data.noise_batch(keys.root(0), idx, 784, "gaussian"))
    assert abs(gaussian.mean()) < 0.01 and gaussian.std() == pytest.approx(1.0, rel=0.01)
    assert np.all(np.asarray(data.noise_batch(keys.root(0), idx, 784, "zeros")) == 0)


def test_unknown_noise_kind_is_refused():
    with pytest.raises(ValueError, match="uniform"):
        data.noise_example(keys.root(0), 0, 4, "pink")


def test_named_branches_are_distinct_and_stable():
    root = keys.root(0)
    bits = lambda k: np.asarray(jax.random.key_data(k)).tolist()  # noqa: E731
    assert bits(keys.branch(root, "init")) == bits(keys.branch(keys.root(0), "init"))
    names = ["init", "noise", "donor", "teacher_shuffle", "student_shuffle"]
    assert len({tuple(bits(keys.branch(root, n))) for n in names}) == len(names)
    assert bits(keys.branch(root, "init")) != bits(keys.branch(keys.root(1), "init"))
    members = {tuple(bits(keys.member(keys.branch(root, "init"), i))) for i in range(10)}
    assert len(members) == 10


@pytest.mark.parametrize("n, lo, hi", [(784, -1.0, 1.0), (5, 0.0, 1.0), (1, -3.0, 2.0)])
def test_fused_uniform_gives_jax_randoms_bits(n, lo, hi):
    """The unrolled-Threefry uniform is ``jax.random.uniform`` bit for bit, eagerly and jitted under vmap."""
    ks = jax.vmap(lambda i: jax.random.fold_in(keys.root(7), i))(jnp.arange(300))
    want = jax.vmap(lambda k: jax.random.uniform(k, (n,), minval=lo, maxval=hi))(ks)
    got = jax.jit(jax.vmap(lambda k: data.uniform(k, n, lo, hi)))(ks)
    assert data.fast_uniform_supported(ks[0])
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
    np.testing.assert_array_equal(np.asarray(data.uniform(ks[3], n, lo, hi)), np.asarray(want[3]))
    raw = jax.random.PRNGKey(5)  # a legacy uint32 key
    np.testing.assert_array_equal(np.asarray(data.uniform(raw, n, lo, hi)),
                                  np.asarray(jax.random.uniform(raw, (n,), minval=lo, maxval=hi)))


def test_fused_uniform_falls_back_for_other_keys():
    k = jax.random.key(3, impl="rbg")
    assert not data.fast_uniform_supported(k)
    np.testing.assert_array_equal(np.asarray(data.uniform(k, 10, -1.0, 1.0)),
                                  np.asarray(jax.random.uniform(k, (10,), minval=-1.0, maxval=1.0)))
