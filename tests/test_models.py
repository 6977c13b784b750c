"""MLPSpec: the paper's initialisation, output layout, populations by vmap, layer names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import flat
from minisub.mlp import models

WIDE = models.MLPSpec(n_in=784, hidden=(512,), n_classes=10, n_aux=3)


@pytest.fixture(scope="module")
def wide_params():
    return flat(WIDE.init(jax.random.key(0)))


def test_kernels_are_normal_with_variance_one_over_fan_in(wide_params):
    for name, fan_in in (("hidden.0.kernel", 784), ("head.kernel", 512)):
        w = wide_params[name]
        std = 1 / np.sqrt(fan_in)
        assert abs(w.mean()) < 0.05 * std, name
        assert w.std() == pytest.approx(std, rel=0.05 if w.size < 10_000 else 0.01), name


def test_kernels_are_untruncated(wide_params):
    # 401k draws: a N(0, 1) sample has ~1.2% of |z| > 2.5; a truncated normal (cut at 2 sigma) has none.
    w = wide_params["hidden.0.kernel"] * np.sqrt(784)
    tail = np.mean(np.abs(w) > 2.5)
    assert 0.009 < tail < 0.016, tail
    assert np.abs(w).max() > 4.0


def test_truncated_scheme_is_distinguishable():
    # Guards the test above: the truncated initialiser really has no such tail.
    spec = models.MLPSpec(n_in=784, hidden=(512,), init_scheme="lecun_truncated")
    w = flat(spec.init(jax.random.key(0)))["hidden.0.kernel"] * np.sqrt(784)
    assert np.abs(w).max() < 2.5


def test_biases_start_at_zero(wide_params):
    biases = [name for name in wide_params if name.endswith("bias")]
    assert sorted(biases) == ["head.bias", "hidden.0.bias"]
    for name in biases:
        assert np.all(wide_params[name] == 0), name


def test_parameter_shapes(wide_params):
    assert wide_params["hidden.0.kernel"].shape == (784, 512)
    assert wide_params["head.kernel"].shape == (512, 13)
    assert wide_params["head.bias"].shape == (13,)


@pytest.mark.parametrize("hidden", [(8,), (8, 4), (5, 6, 7)])
def test_output_has_class_and_aux_logits(hidden):
    spec = models.MLPSpec(n_in=20, hidden=hidden, n_classes=10, n_aux=3)
    params = spec.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (6, 20))
    out = spec.apply(params, x)
    assert out.shape == (6, 13) and spec.n_out == 13
    assert models.class_logits(spec, out).shape == (6, 10)
    np.testing.assert_array_equal(models.class_logits(spec, out), out[:, :10])


def test_apply_is_the_documented_mlp():
    spec = models.MLPSpec(n_in=5, hidden=(4, 3), n_classes=2, n_aux=1, activation="tanh")
    p = flat(spec.init(jax.random.key(3)))
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    h = np.tanh(x @ p["hidden.0.kernel"] + p["hidden.0.bias"])
    h = np.tanh(h @ p["hidden.1.kernel"] + p["hidden.1.bias"])
    expected = h @ p["head.kernel"] + p["head.bias"]
    np.testing.assert_allclose(spec.apply(spec.init(jax.random.key(3)), x), expected, rtol=1e-5, atol=1e-6)


def test_init_is_a_pure_function_of_the_key():
    spec = models.MLPSpec(n_in=10, hidden=(6,))
    a, b = flat(spec.init(jax.random.key(4))), flat(spec.init(jax.random.key(4)))
    c = flat(spec.init(jax.random.key(5)))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["head.kernel"], c["head.kernel"])


def test_vmap_over_keys_gives_a_population():
    spec = models.MLPSpec(n_in=10, hidden=(6,))
    ks = jax.random.split(jax.random.key(6), 4)
    population = jax.vmap(spec.init)(ks)
    pop = flat(population)
    assert pop["hidden.0.kernel"].shape == (4, 10, 6)
    assert pop["head.bias"].shape == (4, spec.n_out)
    for m in range(4):  # member m is exactly the network initialised alone from key m
        alone = flat(spec.init(ks[m]))
        for name in alone:
            np.testing.assert_array_equal(pop[name][m], alone[name], err_msg=f"{name} member {m}")
    x = jnp.ones((3, 10))
    out = jax.vmap(spec.apply, in_axes=(0, None))(population, x)
    assert out.shape == (4, 3, spec.n_out)
    assert len({np.asarray(o).tobytes() for o in out}) == 4


def test_output_masks():
    spec = models.MLPSpec(n_classes=10, n_aux=3)
    aux, cls, everything = (np.asarray(models.output_mask(spec, o)) for o in ("aux", "class", "all"))
    assert aux.tolist() == [False] * 10 + [True] * 3
    assert cls.tolist() == [True] * 10 + [False] * 3
    assert everything.all() and everything.shape == (13,)


@pytest.mark.parametrize("depth", [1, 2, 11])
def test_layer_names_are_the_layers(depth):
    spec = models.MLPSpec(n_in=4, hidden=(3,) * depth)
    names = models.layer_names(spec.init(jax.random.key(0)))
    assert sorted(names) == sorted([f"hidden.{i}" for i in range(depth)] + ["head"])
    assert len(set(names)) == len(names)
    hidden = [n for n in names if n.startswith("hidden.")]
    assert hidden == [f"hidden.{i}" for i in range(depth)]  # numeric order, not "hidden.10" < "hidden.2"


def test_layer_names_follow_the_network_order():
    spec = models.MLPSpec(n_in=4, hidden=(3, 3))
    assert models.layer_names(spec.init(jax.random.key(0))) == ["hidden.0", "hidden.1", "head"]


def test_flops_per_example():
    spec = models.MLPSpec(n_in=784, hidden=(256, 256), n_classes=10, n_aux=3)
    assert spec.flops_per_example() == 2 * (784 * 256 + 256 * 256 + 256 * 13)
