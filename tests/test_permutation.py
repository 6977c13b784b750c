"""Hidden-unit permutations: same function, weight matching recovers them, aligned distance ignores them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import flat
from minisub.mlp import models
from minisub.mlp import permutation

SPEC = models.MLPSpec(n_in=12, hidden=(16, 8), n_classes=3, n_aux=2)


@pytest.fixture(scope="module")
def nets():
    """A net (random biases, so the bias term of the matching is exercised), a permuted copy, the permutations."""
    params = SPEC.init(jax.random.key(0))
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape)
        if "bias" in jax.tree_util.keystr(path) else a, params)
    perms = permutation.random_permutations(jax.random.key(1), params)
    return params, permutation.permute_hidden(params, perms), perms


def test_a_permuted_net_computes_the_same_function(nets):
    params, permuted, perms = nets
    assert all(not np.array_equal(p, np.arange(len(p))) for p in perms)
    x = jax.random.normal(jax.random.key(2), (32, SPEC.n_in))
    np.testing.assert_allclose(SPEC.apply(permuted, x), SPEC.apply(params, x), rtol=1e-5, atol=1e-6)


def test_permute_hidden_moves_columns_biases_and_next_rows(nets):
    params, permuted, perms = nets
    a, b = flat(params), flat(permuted)
    p0, p1 = (np.asarray(p) for p in perms)
    np.testing.assert_array_equal(b["hidden.0.kernel"], a["hidden.0.kernel"][:, p0])
    np.testing.assert_array_equal(b["hidden.0.bias"], a["hidden.0.bias"][p0])
    np.testing.assert_array_equal(b["hidden.1.kernel"], a["hidden.1.kernel"][p0][:, p1])
    np.testing.assert_array_equal(b["head.kernel"], a["head.kernel"][p1])
    np.testing.assert_array_equal(b["head.bias"], a["head.bias"])


def test_aligned_distance_is_zero_for_a_permuted_copy_while_the_raw_distance_is_not(nets):
    params, permuted, perms = nets
    raw = float(permutation.distance(params, permuted))
    assert raw > 1.0
    assert float(permutation.aligned_distance(params, permuted)) == pytest.approx(0.0, abs=1e-6)
    matched = permutation.weight_matching(params, permuted)
    for found, true in zip(matched, perms):  # unit i of the reference is unit found[i] of the copy
        np.testing.assert_array_equal(found, np.argsort(np.asarray(true)))


def test_identity_undoes_nothing_and_permuting_back_restores_the_net(nets):
    params, permuted, perms = nets
    same = permutation.permute_hidden(params, permutation.identity(params))
    assert float(permutation.distance(params, same)) == 0.0
    back = permutation.permute_hidden(permuted, [np.argsort(np.asarray(p)) for p in perms])
    for name, value in flat(back).items():
        np.testing.assert_array_equal(value, flat(params)[name], err_msg=name)


def test_aligning_an_independent_net_shrinks_its_distance_and_keeps_its_function():
    a, b = SPEC.init(jax.random.key(3)), SPEC.init(jax.random.key(4))
    aligned = permutation.align(a, b)
    x = jax.random.normal(jax.random.key(5), (16, SPEC.n_in))
    np.testing.assert_allclose(SPEC.apply(aligned, x), SPEC.apply(b, x), rtol=1e-5, atol=1e-6)
    raw, matched = float(permutation.distance(a, b)), float(permutation.distance(a, aligned))
    assert matched < raw  # the identity is one of the candidates, so matching can only help
    assert matched == pytest.approx(float(permutation.aligned_distance(a, b)), rel=1e-6)


def test_permute_hidden_is_jittable_and_checks_its_arguments(nets):
    params, _, perms = nets
    out = jax.jit(permutation.permute_hidden)(params, perms)
    assert float(permutation.distance(out, permutation.permute_hidden(params, perms))) == 0.0
    with pytest.raises(ValueError, match="one permutation per hidden layer"):
        permutation.permute_hidden(params, perms[:1])
    other = models.MLPSpec(n_in=12, hidden=(16,), n_classes=3, n_aux=2).init(jax.random.key(6))
    with pytest.raises(ValueError, match="same shape"):
        permutation.weight_matching(params, other)


def test_a_single_hidden_layer_is_matched_too():
    spec = models.MLPSpec(n_in=5, hidden=(7,), n_classes=2, n_aux=1)
    params = spec.init(jax.random.key(7))
    perm = [jnp.asarray([3, 0, 6, 1, 5, 2, 4])]
    copy = permutation.permute_hidden(params, perm)
    assert float(permutation.distance(params, copy)) > 0.5
    assert float(permutation.aligned_distance(params, copy)) == pytest.approx(0.0, abs=1e-6)
