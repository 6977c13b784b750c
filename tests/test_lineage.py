"""Student initialisation lineages: shared = the teacher's init exactly; different = another seed's."""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import flat
from minisub import keys, lineage
from minisub.mlp import measure
from minisub.mlp import pipeline


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


# --- the atlas lineages: each one's defining property -------------------------------------------

from minisub.mlp import models  # noqa: E402
from minisub.config import ConfigError  # noqa: E402

SPEC = models.MLPSpec(784, (256, 128), 10, 3)


@pytest.fixture(scope="module")
def pair():
    """A teacher init, an independent fresh init, and a lineage key, for SPEC."""
    return SPEC.init(keys.root(1)), SPEC.init(keys.root(2)), keys.root(3)


def _kernels(tree) -> dict[str, np.ndarray]:
    return {k: v for k, v in flat(tree).items() if k.endswith("kernel")}


def _init(text, pair):
    teacher, fresh, key = pair
    return lineage.student_init(text, SPEC, teacher, fresh, key)


def _assert_tree_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_interpolated_at_one_is_shared_and_at_zero_is_fresh(pair):
    teacher, fresh, _ = pair
    _assert_tree_equal(_init("interpolated(alpha=1.0)", pair), teacher)
    _assert_tree_equal(_init("interpolated(alpha=0)", pair), fresh)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_interpolated_keeps_the_weight_variance(pair, alpha):
    teacher = _kernels(pair[0])
    for name, w in _kernels(_init(f"interpolated(alpha={alpha})", pair)).items():
        # 784x256 and 256x128 kernels: the sample std is within ~1% of the init's
        assert abs(w.std() / teacher[name].std() - 1) < 0.03, (name, alpha, w.std(), teacher[name].std())


def test_interpolated_moves_monotonically_away_from_the_teacher(pair):
    teacher = _kernels(pair[0])
    dist = [sum(np.sum((w - teacher[n]) ** 2) for n, w in _kernels(_init(f"interpolated(alpha={a})", pair)).items())
            for a in (1.0, 0.9, 0.5, 0.1, 0.0)]
    assert dist[0] == 0 and all(a < b for a, b in zip(dist, dist[1:])), dist


@pytest.mark.parametrize("part", ("all", *SPEC.parts))
def test_perturbed_at_sigma_zero_is_shared(pair, part):
    _assert_tree_equal(_init(f"perturbed(sigma=0, part={part})", pair), pair[0])


@pytest.mark.parametrize("part,changed", [("all", {"hidden.0", "hidden.1", "head"}), ("hidden", {"hidden.0", "hidden.1"}),
                                          ("head", {"head"})])
def test_perturbed_touches_exactly_its_part_at_sigma_times_the_weight_std(pair, part, changed):
    sigma = 0.2
    teacher, student = flat(pair[0]), flat(_init(f"perturbed(sigma={sigma}, part={part})", pair))
    for name, w in student.items():
        layer = name.rsplit(".", 1)[0]
        if name.endswith("bias") or layer not in changed:
            np.testing.assert_array_equal(w, teacher[name], err_msg=name)
        else:
            ratio = (w - teacher[name]).std() / teacher[name].std()
            assert abs(ratio / sigma - 1) < 0.1, (name, ratio)


def test_perturbed_uses_one_direction_along_the_sigma_grid(pair):
    teacher = flat(pair[0])["hidden.0.kernel"]
    d1 = flat(_init("perturbed(sigma=0.1)", pair))["hidden.0.kernel"] - teacher
    d2 = flat(_init("perturbed(sigma=0.4)", pair))["hidden.0.kernel"] - teacher
    np.testing.assert_allclose(d2, 4 * d1, rtol=1e-4, atol=1e-6)


def test_shared_head_shares_exactly_the_last_layer(pair):
    teacher, fresh = flat(pair[0]), flat(pair[1])
    for name, w in flat(_init("shared_head", pair)).items():
        np.testing.assert_array_equal(w, (teacher if name.startswith("head") else fresh)[name], err_msg=name)
        if name.endswith("kernel") and not name.startswith("head"):
            assert not np.array_equal(w, teacher[name])


def test_shared_hidden_shares_exactly_the_hidden_layers(pair):
    teacher, fresh = flat(pair[0]), flat(pair[1])
    for name, w in flat(_init("shared_hidden", pair)).items():
        np.testing.assert_array_equal(w, (fresh if name.startswith("head") else teacher)[name], err_msg=name)
    assert not np.array_equal(flat(_init("shared_hidden", pair))["head.kernel"], teacher["head.kernel"])


def test_permuted_computes_the_teachers_function_with_other_parameters(pair):
    teacher = pair[0]
    student = _init("permuted", pair)
    x = jax.random.uniform(keys.root(9), (64, 784), minval=-1, maxval=1)
    np.testing.assert_allclose(SPEC.apply(student, x), SPEC.apply(teacher, x), rtol=1e-5, atol=1e-5)
    for name, w in _kernels(student).items():
        assert not np.array_equal(w, _kernels(teacher)[name]), name
        # a permutation moves entries around: the multiset of weights is unchanged
        np.testing.assert_array_equal(np.sort(w.ravel()), np.sort(_kernels(teacher)[name].ravel()), err_msg=name)


def test_random_lineages_are_deterministic_in_their_key(pair):
    for text in ("permuted", "perturbed(sigma=0.3)"):
        _assert_tree_equal(_init(text, pair), _init(text, pair))
        other = lineage.student_init(text, SPEC, pair[0], pair[1], keys.root(4))
        assert not np.array_equal(flat(other)["hidden.0.kernel"], flat(_init(text, pair))["hidden.0.kernel"])


@pytest.mark.parametrize("text,message", [
    ("sharedd", "lineage must be one of"),
    ("interpolated", "interpolated needs alpha"),
    ("interpolated(alpha=1.5)", r"interpolated.alpha must be a number in \[0, 1\]"),
    ("interpolated(alpha=x)", "interpolated.alpha must be a number"),
    ("perturbed(sigma=0.1, part=tail)", "perturbed.part must be one of 'all', 'hidden', 'head'"),
    ("perturbed(sigma=-1)", "perturbed.sigma must be a number >= 0"),
    ("shared(alpha=1)", "shared takes no parameters"),
])
def test_bad_lineages_are_named_with_their_allowed_values(text, message):
    with pytest.raises(ConfigError, match=message):
        lineage.parse(text)


def test_other_architecture_and_student_networks_must_agree():
    from helpers import tiny_config

    other = (pipeline.Arm("o", "other_architecture", "aux"),)
    with pytest.raises(ConfigError, match="student_hidden"):
        tiny_config(arms=other)
    with pytest.raises(ConfigError, match="other_architecture"):
        tiny_config(student_hidden=(8, 8))
    cfg = tiny_config(arms=other, student_hidden=(8, 8))
    state = pipeline.init_population(cfg, jnp.arange(cfg.seeds), jnp.asarray(pipeline.donors(cfg)))
    student, teacher = flat(state["student_init"]), flat(state["teacher_init"])
    assert student["head.kernel"].shape[-1] == teacher["head.kernel"].shape[-1]  # the outputs agree
    assert student["hidden.0.kernel"].shape[-1] == 8 and "hidden.1.kernel" in student
    assert teacher["hidden.0.kernel"].shape[-1] == cfg.hidden[0] and "hidden.1.kernel" not in teacher


def test_behaviourally_matched_student_moves_to_the_references_function(tiny_cfg, fake_mnist):
    """After its pre-phase the matched student is closer in function to the teacher's init than at its start."""
    arms = (pipeline.Arm("m", "behaviourally_matched", "aux"), pipeline.Arm("d", "different", "aux"))
    cfg = dataclasses.replace(tiny_cfg, arms=arms, match_epochs=3)
    state = pipeline.init_population(cfg, jnp.arange(cfg.seeds), jnp.asarray(pipeline.donors(cfg)))
    start = flat(state["students"])
    x = jnp.asarray(fake_mnist.test_images[:256], jnp.float32) / 127.5 - 1

    def kl_to_reference(st):
        ref = jax.nn.log_softmax(jax.vmap(cfg.spec.apply, in_axes=(0, None))(st["teacher_init"], x))
        out = jax.nn.log_softmax(jax.vmap(jax.vmap(cfg.spec.apply, in_axes=(0, None)), in_axes=(0, None))(
            st["students"], x))
        return np.asarray(jnp.mean(jnp.sum(jnp.exp(ref[:, None]) * (ref[:, None] - out), -1), -1))  # [seed, arm]

    before = kl_to_reference(state)
    for e in range(cfg.match_epochs):
        state, _ = pipeline.match_epoch(cfg, state, jnp.arange(cfg.seeds), e, jnp.asarray(fake_mnist.train_images))
    after = kl_to_reference(state)
    assert np.all(after[:, 0] < 0.5 * before[:, 0]), (before, after)
    np.testing.assert_array_equal(after[:, 1], before[:, 1])  # the unmatched arm is untouched
    end = flat(state["students"])
    assert not np.array_equal(end["head.kernel"][:, 0], start["head.kernel"][:, 0])
    np.testing.assert_array_equal(flat(state["student_init"])["head.kernel"][:, 0], end["head.kernel"][:, 0])


def test_other_architecture_can_take_the_teachers_head():
    from helpers import tiny_config

    arm = (pipeline.Arm("o", "other_architecture(head=shared)", "aux"),)
    with pytest.raises(ConfigError, match="last width equal to the teacher's"):
        tiny_config(arms=arm, student_hidden=(8, 8))
    cfg = tiny_config(arms=arm, student_hidden=(8, cfg_width := tiny_config().hidden[-1]))
    state = pipeline.init_population(cfg, jnp.arange(cfg.seeds), jnp.asarray(pipeline.donors(cfg)))
    student, teacher = flat(state["student_init"]), flat(state["teacher_init"])
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(student[f"head.{leaf}"][:, 0], teacher[f"head.{leaf}"])
    assert student["hidden.0.kernel"].shape[-1] == 8 and student["hidden.1.kernel"].shape[-1] == cfg_width


# --- run ids: a lineage is its text, so every stored id stays --------------------------------------

def test_every_committed_atlas_point_keeps_its_id():
    """Each point of figures/atlas.json, rebuilt from its stored program and arm, hashes to its stored id."""
    import json
    import typing
    from pathlib import Path

    from minisub.run import sweep

    stored = json.loads((Path(__file__).parents[1] / "figures" / "atlas.json").read_text())
    hints = typing.get_type_hints(pipeline.AuxConfig)
    n = 0
    for family in stored["families"].values():
        for point in family["points"]:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in point["program"].items() if k != "arms"}
            assert set(fields) <= set(hints), set(fields) - set(hints)
            cfg = pipeline.AuxConfig(**fields, arms=(pipeline.Arm("p", **point["arm"]),))
            assert isinstance(cfg.arms[0].lineage, lineage.Lineage)
            p = sweep.Point(point["family"], point["series"], point["value"], cfg, point["epoch"])
            assert sweep.point_id(p) == point["id"], (point["family"], point["value"])
            n += 1
    assert n > 100
