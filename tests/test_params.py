"""Trained weights kept on request: the params format (key paths + manifest) and ``--keep-params``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from minisub import cli
from minisub.lm.transformer import TransformerSpec
from minisub.mlp import mnist, models, pipeline
from minisub.run import params, runner, store
from minisub_experiments import mnist_aux


def test_leaves_are_named_by_their_key_paths():
    spec = models.MLPSpec(n_in=8, hidden=(4, 3), n_aux=2)
    names = sorted(params.flat(spec.init(jax.random.key(0))))
    assert names == ["head/bias", "head/kernel", "hidden.0/bias", "hidden.0/kernel", "hidden.1/bias", "hidden.1/kernel"]


@pytest.mark.parametrize("spec, x", [
    (models.MLPSpec(n_in=8, hidden=(4, 3), n_aux=2), jnp.linspace(-1, 1, 5 * 8).reshape(5, 8)),
    (TransformerSpec(vocab=11, context=6, layers=1, width=8, heads=2, tied_embeddings=False),
     jnp.arange(12).reshape(2, 6) % 11),
])
def test_a_saved_tree_loads_back_and_applies_bitwise(tmp_path, spec, x):
    p = spec.init(jax.random.key(1))
    params.save(tmp_path / "p.npz", {"teacher/final": p, "teacher/init": spec.init(jax.random.key(2))})
    assert params.names(tmp_path / "p.npz", spec) == ["teacher/final", "teacher/init"]
    loaded = params.load(tmp_path / "p.npz", spec, "teacher/final")
    assert jax.tree.structure(loaded) == jax.tree.structure(p)
    np.testing.assert_array_equal(np.asarray(spec.apply(loaded, x)), np.asarray(spec.apply(p, x)))
    with np.load(tmp_path / "p.npz") as z:
        manifest, files = json.loads(str(z[params.MANIFEST])), set(z.files) - {params.MANIFEST}
    assert {m["path"] for m in manifest} == files
    if isinstance(spec, models.MLPSpec):
        assert {"path": "teacher/final/head/kernel", "shape": [3, 12], "dtype": "float32"} in manifest
    params.save(tmp_path / "one.npz", {"": p})  # a single tree needs no name
    np.testing.assert_array_equal(np.asarray(spec.apply(params.load(tmp_path / "one.npz", spec), x)),
                                  np.asarray(spec.apply(p, x)))


def test_another_network_is_refused_naming_the_difference(tmp_path):
    spec = models.MLPSpec(n_in=8, hidden=(4,), n_aux=2)
    params.save(tmp_path / "p.npz", {"a": spec.init(jax.random.key(0)), "b": spec.init(jax.random.key(1))})
    with pytest.raises(params.ParamsMismatch, match=r"head/kernel is float32\[4, 12\], the network.s is float32\[5, 12\]"):
        params.load(tmp_path / "p.npz", models.MLPSpec(n_in=8, hidden=(5,), n_aux=2), "a")
    with pytest.raises(params.ParamsMismatch, match="structure: missing .*hidden.1"):
        params.load(tmp_path / "p.npz", models.MLPSpec(n_in=8, hidden=(4, 4), n_aux=2), "a")
    with pytest.raises(params.ParamsMismatch, match="name one of a, b"):
        params.load(tmp_path / "p.npz", spec)
    with pytest.raises(params.ParamsMismatch, match="no tree 'c'"):
        params.load(tmp_path / "p.npz", spec, "c")


def test_a_damaged_file_is_refused(tmp_path):
    spec = models.MLPSpec(n_in=8, hidden=(4,), n_aux=2)
    path = tmp_path / "p.npz"
    params.save(path, {"a": spec.init(jax.random.key(0))})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(params.ParamsMismatch, match="not a readable params file"):
        params.load(path, spec, "a")


def test_kept_params_are_the_in_memory_ones_bitwise(tmp_path, tiny_cfg, fake_mnist):
    seeds = np.arange(tiny_cfg.seeds)
    block = runner.run_block(tiny_cfg, seeds, pipeline.donors(tiny_cfg), fake_mnist, helpers.noop_advance,
                             keep_state=True)
    state = block["state"]
    params.save_population(tmp_path, seeds, lambda row: runner.kept_params(tiny_cfg, state, row))
    x = mnist.to_unit_range(fake_mnist.test_images[:64])
    spec = tiny_cfg.spec
    for s in seeds:
        path = params.seed_path(tmp_path, s)
        teacher = jax.tree.map(lambda v: v[s], state["teacher"])
        np.testing.assert_array_equal(np.asarray(spec.apply(params.load(path, spec, "teacher/final"), x)),
                                      np.asarray(spec.apply(teacher, x)))
        for k, arm in enumerate(tiny_cfg.arm_names):
            student = jax.tree.map(lambda v: v[s, k], state["students"])
            loaded = params.load(path, spec, f"students/{arm}/final")
            np.testing.assert_array_equal(np.asarray(spec.apply(loaded, x)), np.asarray(spec.apply(student, x)))
        assert params.names(path, spec) == sorted(
            ["teacher/init", "teacher/final", *(f"students/{a}/{w}" for a in tiny_cfg.arm_names for w in ("init", "final"))])


def test_keep_params_from_the_command_line_leaves_the_run_id_and_results_alone(monkeypatch, fake_mnist, capsys):
    monkeypatch.setattr(mnist, "load_cached", lambda: fake_mnist)
    argv = ["run", "mnist-aux", "--preset", "test", "--n_train", "1024", "--n_noise", "1024", "--n_test", "512",
            "--no-progress"]
    assert cli.main(argv) == 0
    cfg = cli.build_config(mnist_aux, "test", argv[4:10])
    directory = store.run_dir("mnist-aux", cfg)
    stored = json.loads((directory / "summary.json").read_text())
    assert not (directory / "params").exists()
    assert cli.main([*argv, "--keep-params"]) == 0  # a stored run without weights: recomputed, same numbers
    assert "params:" in capsys.readouterr().out
    again = json.loads((directory / "summary.json").read_text())
    assert again["accuracy"] == stored["accuracy"]
    assert params.complete(directory, cfg.seeds)
    # The stored students are the ones whose accuracy the run reports.
    spec, x = cfg.student_spec, mnist.to_unit_range(fake_mnist.test_images[: cfg.n_test])
    for s in range(cfg.seeds):
        student = params.load(params.seed_path(directory, s), spec, "students/student_all/final")
        acc = float(np.mean(np.argmax(models.class_logits(spec, spec.apply(student, x)), -1)
                            == fake_mnist.test_labels[: cfg.n_test]))
        assert acc == pytest.approx(stored["accuracy"]["student_all"]["values"][s], abs=2 / cfg.n_test)


def test_keep_params_is_refused_where_the_runner_does_not_train(capsys):
    assert cli.main(["run", "theorem-one-step", "--preset", "test", "--keep-params"]) == 2
    assert "keep_params is not allowed for theorem-one-step" in capsys.readouterr().err


def test_the_toy_lms_stored_references_use_the_same_format(tmp_path):
    """References and pretraining checkpoints: named leaves checked against the structure, through the store."""
    import optax

    from minisub.lm import pipeline as lm_pipeline

    spec = TransformerSpec(vocab=11, context=6, layers=1, width=8, heads=2)
    p = jax.vmap(spec.init)(jax.random.split(jax.random.key(0), 2))  # two worlds: a leading seed axis
    state = (p, jax.vmap(optax.adam(1e-3).init)(p))
    store.save_arrays(tmp_path / "c.npz", {"state": lm_pipeline._leaves(state)})
    back = lm_pipeline._from_leaves(state, store.load_arrays(tmp_path / "c.npz")["state"])
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    numbered = {f"{k:04d}": np.asarray(x) for k, x in enumerate(jax.tree.leaves(state))}  # the old format
    assert lm_pipeline._from_leaves(state, numbered) is None  # not trusted: recomputed
    other = jax.vmap(TransformerSpec(vocab=11, context=6, layers=1, width=16, heads=2).init)(
        jax.random.split(jax.random.key(0), 2))
    assert lm_pipeline._from_leaves(p, lm_pipeline._leaves(other)) is None  # same leaves, other shapes
