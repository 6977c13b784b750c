"""Student initialisation lineages: shared = the teacher's init exactly; different = another seed's."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import flat
from minisub import keys, lineage, measure, pipeline


@pytest.fixture(scope="module")
def initial(tiny_cfg):
    """The initial state of the tiny config's worlds, flattened, plus the donors used."""
    donors = pipeline.donors(tiny_cfg)
    state = pipeline.init_population(tiny_cfg, jnp.arange(tiny_cfg.seeds), jnp.asarray(donors))
    geometry = jax.vmap(jax.vmap(measure.geometry, in_axes=(0, 0, None, None)))(
        state["students"], state["student_init"], state["teacher"], state["teacher_init"]
    )
    return {
        "donors": donors,
        "teacher_init": flat(state["teacher_init"]),
        "teacher": flat(state["teacher"]),
        "student_init": flat(state["student_init"]),
        "students": flat(state["students"]),
        "geometry": flat(geometry),  # 'quantity.layer' -> [seed, arm]
    }


def _arms(cfg, lineage_name):
    return [k for k, a in enumerate(cfg.arms) if a.lineage == lineage_name]


def test_shared_student_starts_exactly_at_the_teachers_init(tiny_cfg, initial):
    shared = _arms(tiny_cfg, "shared")
    assert shared, "the tiny config must have a shared arm"
    for name, teacher in initial["teacher_init"].items():
        for k in shared:
            np.testing.assert_array_equal(initial["student_init"][name][:, k], teacher, err_msg=name)
            np.testing.assert_array_equal(initial["students"][name][:, k], teacher, err_msg=name)
    for quantity in ("dist_init", "dist_teacher"):
        for key, value in initial["geometry"].items():
            if key.startswith(quantity + "."):
                assert np.all(value[:, shared] == 0.0), (key, value[:, shared])


def test_different_student_starts_at_its_donors_init_not_the_teachers(tiny_cfg, initial):
    different, donors = _arms(tiny_cfg, "different"), initial["donors"]
    assert different, "the tiny config must have a 'different' arm"
    kernels = [name for name in initial["teacher_init"] if name.endswith("kernel")]
    assert len(kernels) == len(tiny_cfg.hidden) + 1
    for name in kernels:  # biases start at zero for everyone, so only kernels can tell inits apart
        teacher = initial["teacher_init"][name]
        for k in different:
            student = initial["student_init"][name][:, k]
            for i in range(tiny_cfg.seeds):
                assert not np.array_equal(student[i], teacher[i]), (name, i)
                np.testing.assert_array_equal(student[i], teacher[donors[i]], err_msg=f"{name} world {i}")
    for key, value in initial["geometry"].items():
        if key.startswith("dist_init."):
            assert np.all(value[:, different] > 0), (key, value[:, different])


def test_teacher_inits_differ_between_seeds(tiny_cfg, initial):
    kernel = initial["teacher_init"]["head.kernel"]
    for i in range(tiny_cfg.seeds):
        for j in range(i + 1, tiny_cfg.seeds):
            assert not np.array_equal(kernel[i], kernel[j])


def test_lineage_functions_pick_the_right_init():
    spec, a, b = object(), {"w": np.ones(2)}, {"w": np.zeros(2)}
    assert lineage.student_init("shared", spec, a, b) is a
    assert lineage.student_init("different", spec, a, b) is b


@settings(max_examples=30, deadline=None)
@given(n=st.integers(min_value=2, max_value=40), seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_derangement_is_a_permutation_without_fixed_points(n, seed):
    perm = lineage.derangement(keys.root(seed), n)
    assert sorted(perm.tolist()) == list(range(n))
    assert not np.any(perm == np.arange(n))


@pytest.mark.parametrize("n", range(2, 41))
def test_derangement_every_size(n):
    for seed in (0, 1):
        perm = lineage.derangement(keys.branch(keys.root(seed), "donor"), n)
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))


def test_derangement_is_deterministic_in_its_key():
    a = lineage.derangement(keys.root(7), 12)
    np.testing.assert_array_equal(a, lineage.derangement(keys.root(7), 12))
    assert any(not np.array_equal(a, lineage.derangement(keys.root(s), 12)) for s in range(8, 12))


def test_derangement_of_three_is_uniform():
    # The only derangements of 3 are the two 3-cycles; a uniform sampler picks each about half the time.
    counts = collections.Counter(tuple(lineage.derangement(keys.root(s), 3).tolist()) for s in range(300))
    assert set(counts) == {(1, 2, 0), (2, 0, 1)}
    assert 100 < counts[(1, 2, 0)] < 200, counts


@pytest.mark.parametrize("n", [-1, 0, 1])
def test_derangement_needs_two_members(n):
    with pytest.raises(ValueError, match="n >= 2"):
        lineage.derangement(keys.root(0), n)


def test_donors_are_a_derangement_of_the_seeds():
    from helpers import tiny_config

    for seeds in (2, 3, 17):
        donors = pipeline.donors(tiny_config(seeds=seeds))
        assert sorted(donors.tolist()) == list(range(seeds))
        assert not np.any(donors == np.arange(seeds))
