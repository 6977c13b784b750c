"""Training programs on the tiny config and fake MNIST: what moves, what must not, and reproducibility."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import flat, run_block, run_population, tiny_config, without_timing
from minisub import keys, train, tree
from minisub.mlp import pipeline
from minisub.run import runner

TEACHER_EPOCHS, STUDENT_EPOCHS = 3, 4


@pytest.fixture(scope="module")
def trajectory(tiny_cfg, fake_mnist):
    """Parameters and losses through the pipeline's epoch programs, called directly."""
    cfg = tiny_cfg
    ids = jnp.arange(cfg.seeds)
    state = pipeline.init_population(cfg, ids, jnp.asarray(pipeline.donors(cfg)))
    init = {k: flat(state[k]) for k in ("teacher", "students")}
    x, y = jnp.asarray(fake_mnist.train_images[: cfg.n_train]), jnp.asarray(fake_mnist.train_labels[: cfg.n_train])
    teacher_loss, student_loss = [], []
    for epoch in range(TEACHER_EPOCHS):
        state, loss = pipeline.teacher_epoch(cfg, state, ids, epoch, x, y)
        teacher_loss.append(np.asarray(loss))
    trained = flat(state["teacher"])
    students_before = flat(state["students"])
    for epoch in range(STUDENT_EPOCHS):
        state, out = pipeline.student_epoch(cfg, state, ids, epoch, x, y, *_probe(fake_mnist))
        student_loss.append(np.asarray(out["loss"]))
    return {
        "init": init,
        "teacher": trained,
        "teacher_after_students": flat(state["teacher"]),
        "students_before": students_before,
        "students": flat(state["students"]),
        "teacher_loss": np.stack(teacher_loss, 1),  # [seed, epoch, step]
        "student_loss": np.stack(student_loss, 1),  # [seed, epoch, step, arm]
    }


def _arm(cfg, name):
    return cfg.arm_names.index(name)


def _probe(data):
    return jnp.asarray(data.test_images), jnp.asarray(data.test_labels)


def _fresh_state(cfg):
    return pipeline.init_population(cfg, jnp.arange(cfg.seeds), jnp.asarray(pipeline.donors(cfg)))


def test_each_epoch_reshuffles(tiny_cfg, fake_mnist):
    """The same state trained as epoch 0 or as epoch 1 sees the data in another order."""
    cfg, ids = tiny_cfg, jnp.arange(tiny_cfg.seeds)
    x, y = jnp.asarray(fake_mnist.train_images[: cfg.n_train]), jnp.asarray(fake_mnist.train_labels[: cfg.n_train])
    teacher = {e: pipeline.teacher_epoch(cfg, _fresh_state(cfg), ids, e, x, y) for e in (0, 1)}
    again = pipeline.teacher_epoch(cfg, _fresh_state(cfg), ids, 0, x, y)
    assert np.array_equal(np.asarray(again[1]), np.asarray(teacher[0][1]))
    assert not np.allclose(np.asarray(teacher[0][1]), np.asarray(teacher[1][1]))
    students = {e: np.asarray(pipeline.student_epoch(cfg, _fresh_state(cfg), ids, e, x, y, *_probe(fake_mnist))[1]["loss"])
                for e in (0, 1)}
    assert not np.allclose(students[0], students[1])


def test_teacher_training_leaves_the_aux_head_bit_for_bit_unchanged(tiny_cfg, trajectory):
    n = 10
    before, after = trajectory["init"]["teacher"], trajectory["teacher"]
    np.testing.assert_array_equal(after["head.kernel"][..., n:], before["head.kernel"][..., n:])
    np.testing.assert_array_equal(after["head.bias"][..., n:], before["head.bias"][..., n:])
    # ... while everything the class logits read did move.
    assert np.all(np.any(after["head.kernel"][..., :n] != before["head.kernel"][..., :n], axis=(1, 2)))
    assert np.all(np.any(after["head.bias"][..., :n] != before["head.bias"][..., :n], axis=1))
    assert np.all(np.any(after["hidden.0.kernel"] != before["hidden.0.kernel"], axis=(1, 2)))


@pytest.mark.parametrize("arm", ["student_aux", "cross_aux"])
def test_aux_only_distillation_leaves_the_class_head_unchanged(tiny_cfg, trajectory, arm):
    k, n = _arm(tiny_cfg, arm), 10
    before, after = trajectory["students_before"], trajectory["students"]
    np.testing.assert_array_equal(after["head.kernel"][:, k, :, :n], before["head.kernel"][:, k, :, :n])
    np.testing.assert_array_equal(after["head.bias"][:, k, :n], before["head.bias"][:, k, :n])
    # The student did learn: its aux head and hidden layer moved.
    assert np.all(np.any(after["head.kernel"][:, k, :, n:] != before["head.kernel"][:, k, :, n:], axis=(1, 2)))
    assert np.all(np.any(after["hidden.0.kernel"][:, k] != before["hidden.0.kernel"][:, k], axis=(1, 2)))


@pytest.mark.parametrize("arm", ["student_all", "cross_all"])
def test_all_logit_distillation_moves_the_class_head(tiny_cfg, trajectory, arm):
    k = _arm(tiny_cfg, arm)
    before, after = trajectory["students_before"], trajectory["students"]
    assert np.all(np.any(after["head.kernel"][:, k, :, :10] != before["head.kernel"][:, k, :, :10], axis=(1, 2)))


def test_distillation_does_not_touch_the_teacher(trajectory):
    for name, value in trajectory["teacher"].items():
        np.testing.assert_array_equal(trajectory["teacher_after_students"][name], value, err_msg=name)


def test_teacher_loss_decreases(trajectory):
    per_epoch = trajectory["teacher_loss"].mean(-1)  # [seed, epoch]
    assert np.all(np.diff(per_epoch, axis=1) < 0), per_epoch
    assert np.all(per_epoch[:, 0] > 1.5)  # ~ln(10) at the start: the loss is a real cross-entropy
    assert np.all(per_epoch[:, -1] < 0.8 * per_epoch[:, 0])


def test_distillation_loss_decreases(tiny_cfg, trajectory):
    per_epoch = trajectory["student_loss"].mean(2)  # [seed, epoch, arm]
    assert per_epoch.shape == (tiny_cfg.seeds, STUDENT_EPOCHS, len(tiny_cfg.arms))
    assert np.all(per_epoch[:, -1] < per_epoch[:, 0]), per_epoch
    assert np.all(per_epoch >= 0)  # a KL
    # Students from another seed's init start further from the teacher than students that share it.
    shared, cross = _arm(tiny_cfg, "student_all"), _arm(tiny_cfg, "cross_all")
    assert np.all(trajectory["student_loss"][:, 0, 0, cross] > trajectory["student_loss"][:, 0, 0, shared])


def test_teacher_learns_the_task(tiny_block):
    assert np.all(tiny_block["accuracy"]["teacher"] > 0.3)  # chance is 0.1
    assert np.all(tiny_block["accuracy"]["teacher"] > tiny_block["accuracy"]["reference"] + 0.15)


def test_block_results_have_the_documented_shapes(tiny_cfg, tiny_block):
    s, a = tiny_cfg.seeds, len(tiny_cfg.arms)
    t_steps = train.steps_per_epoch(tiny_cfg.n_train, tiny_cfg.teacher_batch)
    s_steps = train.steps_per_epoch(tiny_cfg.n_noise, tiny_cfg.student_batch)
    assert tiny_block["teacher_loss"].shape == (s, tiny_cfg.teacher_epochs, t_steps)
    assert tiny_block["student_loss"].shape == (s, tiny_cfg.student_epochs, s_steps, a)
    assert tiny_block["student_accuracy_by_epoch"].shape == (s, tiny_cfg.student_epochs, a)
    assert set(tiny_block["accuracy"]) == {"reference", "teacher", *tiny_cfg.arm_names}
    for arm in tiny_cfg.arm_names:
        np.testing.assert_array_equal(tiny_block["accuracy"][arm],
                                      tiny_block["student_accuracy_by_epoch"][:, -1, tiny_cfg.arm_names.index(arm)])
    for values in tiny_block["accuracy"].values():
        assert values.shape == (s,) and np.all((values >= 0) & (values <= 1))
    np.testing.assert_array_equal(tiny_block["seed"], np.arange(s))


def test_same_config_twice_is_bitwise_identical(tiny_cfg, fake_mnist, tiny_block):
    again = without_timing(run_block(tiny_cfg, np.arange(tiny_cfg.seeds), fake_mnist))
    first = without_timing(tiny_block)
    assert again.keys() == first.keys()
    for name in first:
        assert np.array_equal(again[name], first[name]), name


def test_a_seed_inside_a_vmapped_block_matches_the_seed_alone(tiny_cfg, fake_mnist, tiny_block):
    donors = pipeline.donors(tiny_cfg)
    alone = flat(run_block(tiny_cfg, [1], fake_mnist, donor_ids=donors[[1]]))
    block = flat(tiny_block)
    assert alone["seed"].tolist() == [1] and alone["donor"].tolist() == [donors[1]]
    # Batched and unbatched matmuls may round differently, so allow float noise, nothing more.
    for name in ("teacher_loss", "student_loss"):
        np.testing.assert_allclose(alone[name][0], block[name][1], rtol=1e-4, atol=1e-7, err_msg=name)
    for name in alone:
        if name.startswith("geometry."):
            np.testing.assert_allclose(alone[name][0], block[name][1], rtol=1e-4, atol=1e-6, err_msg=name)
        if name.startswith("accuracy."):  # at most a couple of test images on a decision boundary
            assert abs(alone[name][0] - block[name][1]) <= 2 / len(fake_mnist.test_labels), name
    # and it is not trivially close: another seed of the block is far away.
    assert not np.allclose(alone["teacher_loss"][0], block["teacher_loss"][0], rtol=1e-2)


@pytest.mark.parametrize("n,batch", [(1, 1), (7, 7), (8, 3), (10, 4), (512, 128), (513, 128), (100, 99)])
def test_epoch_batches_cover_every_index_once_with_weight_one(n, batch):
    for seed in range(2):
        idx, w = (np.asarray(a) for a in train.epoch_batches(keys.root(seed), n, batch))
        steps = -(-n // batch)
        assert idx.shape == w.shape == (steps, batch)
        assert set(np.unique(w).tolist()) <= {0.0, 1.0}
        real = idx[w == 1]
        assert sorted(real.tolist()) == list(range(n))  # each index exactly once
        assert int((w == 0).sum()) == steps * batch - n  # the rest is padding of weight 0
        assert np.all(w.reshape(-1)[:n] == 1) and np.all(w.reshape(-1)[n:] == 0)  # padding only at the end
        assert np.all((idx >= 0) & (idx < n))  # padding still indexes real data (finite losses)


def test_epoch_batches_reshuffle_with_the_key():
    a = np.asarray(train.epoch_batches(keys.root(0), 64, 16)[0])
    b = np.asarray(train.epoch_batches(keys.root(1), 64, 16)[0])
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, np.asarray(train.epoch_batches(keys.root(0), 64, 16)[0]))


def test_nonfinite_loss_raises_naming_seed_and_epoch(fake_mnist):
    # Adam's first step moves every weight by ~lr; at 1e30 the next forward pass overflows.
    cfg = tiny_config(teacher_lr=1e30)
    with pytest.raises(runner.NonFiniteError) as err:
        run_population(cfg, fake_mnist)
    message = str(err.value)
    assert "seed 0" in message and "teacher epoch 0" in message, message


def test_check_finite_names_the_first_bad_world_arm_and_step():
    loss = np.zeros((3, 4, 2))  # [seed, step, arm]
    loss[2, 1, 1] = np.nan
    loss[1, 3, 0] = np.inf
    with pytest.raises(runner.NonFiniteError) as err:
        runner._check_finite(None, loss, np.array([10, 11, 12]), 5, "student", ("aux", "all"))
    message = str(err.value)
    assert "seed 11" in message and "arm aux" in message and "student epoch 5" in message and "step 3" in message
    teacher = np.ones((2, 3))
    teacher[1, 2] = np.nan
    with pytest.raises(runner.NonFiniteError, match=r"seed 8\b.*teacher epoch 0\b.*step 2"):
        runner._check_finite(None, teacher, np.array([7, 8]), 0, "teacher", ())
    runner._check_finite(None, np.ones((2, 3)), np.array([7, 8]), 0, "teacher", ())  # finite: no error


def test_projection_leaves_no_component_along_the_trait_descent_direction():
    rng = np.random.default_rng(0)
    for _ in range(20):
        u = {"a": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=4))}
        g = {"a": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=4))}
        p = pipeline.project_out_trait(u, g)
        along = float(tree.dot(p, g))
        before = float(tree.dot(u, g))
        assert along >= -1e-5  # the projected update no longer lowers L_T to first order
        if before >= 0:  # an update that did not lower L_T is untouched
            np.testing.assert_array_equal(np.asarray(p["a"]), np.asarray(u["a"]))


def test_trace_and_projection_run_and_report_per_arm(fake_mnist):
    cfg = tiny_config(trace_every=2, projection="trait", trait_batch=64, n_probe=128, seeds=2)
    out = run_block(cfg, np.arange(2), fake_mnist)
    trace = out["trace"]
    steps = trace["grad_cos"].shape[2]
    assert trace["grad_cos"].shape == (2, cfg.student_epochs, steps, len(cfg.arms))
    logged = np.isfinite(trace["grad_cos"][0, :, :, 0])
    assert logged.reshape(-1)[::2].all() and not logged.reshape(-1)[1::2].any()
    # after projection, no update of any arm points down the trait loss
    assert np.nanmax(trace["update_trait_cos"]) <= 1e-4
    assert np.all(np.abs(trace["grad_cos"][np.isfinite(trace["grad_cos"])]) <= 1 + 1e-5)


def test_mark_mode_flags_nonfinite_seeds_and_keeps_going(fake_mnist):
    from minisub_experiments import mnist_aux

    cfg = tiny_config(student_lr=1e30)  # the students blow up; the teachers are fine
    results = runner.run(cfg, fake_mnist, None, execution=runner.Execution(on_nonfinite="mark", progress=False))
    assert not results["finite"].any()
    assert np.isfinite(results["accuracy"]["teacher"]).all()
    summary = mnist_aux.summarise(cfg, results, command="test")
    assert summary["nonfinite_seeds"] == [0, 1, 2] and summary["n_seeds"] == 0
