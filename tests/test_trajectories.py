"""mnist-trajectories: config validation, the summary's shapes and CIs, init distances, and the
`test` preset end to end through the CLI (real MNIST subset), served from the store on a rerun."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import jax
import numpy as np
import pytest

from minisub import registry
from minisub_experiments import mnist_trajectories as mt
from helpers import flat
from minisub import cli, config
from minisub.mlp import pipeline
from minisub.run import runner
from minisub.run import store
from minisub.theory import trajectories as tr

TEST = mt.PRESETS["test"]


# ---------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("overrides, expected", [
    ({"variants": ("adam", "rmsprop")}, ["variants='rmsprop'", "'adam'", "'sgd'", "+projection"]),
    ({"variants": ("adam+dropout",)}, ["variants='adam+dropout'", "OPTIMIZER+projection"]),
    ({"variants": ("adam", "adam")}, ["variants=", "distinct"]),
    ({"sgd_lr": 0.0}, ["sgd_lr=0.0", "> 0"]),
    ({"trace_every": 0}, ["trace_every=0", ">= 1"]),
    ({"n_aligned": 4}, ["n_aligned=4", "[0, seeds=3]"]),
    ({"n_probe": 5000}, ["n_probe=5000", "recipe.n_test=1000"]),
    ({"recipe": pipeline.AuxConfig(student_optimizer="sgd")}, ["recipe.student_optimizer='sgd'", "'adam'"]),
    ({"recipe": pipeline.AuxConfig(projection="trait")}, ["recipe.projection='trait'", "'none'"]),
    ({"seeds": 1, "n_aligned": 0}, ["seeds=1", ">= 2"]),  # raised by the recipe: the cross arms need a donor
])
def test_config_errors_name_the_field_and_the_allowed_values(overrides, expected):
    import dataclasses

    with pytest.raises(config.ConfigError) as err:
        dataclasses.replace(TEST, **overrides)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_variants_are_the_recipe_with_one_optimizer_rate_and_projection():
    cfg = config.override(TEST, {"seeds": "5", "variants": "adam,sgd,sgd+projection", "sgd_lr": "2"})
    assert cfg.recipe.seeds == 5 and cfg.recipe.trace_every == TEST.trace_every
    adam, sgd, sgd_p = (cfg.variant(v) for v in cfg.variants)
    assert (adam.student_optimizer, adam.student_lr, adam.projection) == ("adam", cfg.recipe.student_lr, "none")
    assert (sgd.student_optimizer, sgd.student_lr, sgd.projection) == ("sgd", 2.0, "none")
    assert (sgd_p.student_optimizer, sgd_p.projection) == ("sgd", "trait")
    for v in (adam, sgd, sgd_p):  # only the student's optimiser differs: the teachers are the same
        assert (v.seeds, v.seed, v.hidden, v.n_train, v.teacher_lr) == (5, 0, (32,), 2048, 3e-3)
        assert v.arms == pipeline.PAPER_ARMS
    assert len({config.digest(v) for v in (adam, sgd, sgd_p)}) == 3  # each variant is its own cached run


def test_presets():
    assert registry.experiments()[mt.NAME] is mt and mt.DEFAULT_PRESET in mt.PRESETS
    paper, quick = mt.PRESETS["paper"], mt.PRESETS["quick"]
    assert paper.seeds >= 20 and quick.seeds >= 8
    for cfg in (paper, quick):  # the published recipe, apart from the trace
        assert dataclasses_equal(cfg.recipe, pipeline.AuxConfig(seeds=cfg.seeds, trace_every=cfg.trace_every,
                                                                trait_batch=cfg.trait_batch, n_probe=cfg.n_probe))
        assert {"adam", "sgd", "adam+projection"} <= set(cfg.variants)
    assert TEST.recipe.hidden == (32,) and TEST.recipe.n_train <= 4096 and TEST.seeds == 3


def dataclasses_equal(a, b) -> bool:
    return config.to_dict(a) == config.to_dict(b)


# ---------------------------------------------------------------------------------------------
# Summary from synthetic results (no training)


def _fake_results(vcfg: pipeline.AuxConfig, rng) -> dict:
    """Arrays shaped as runner.run returns them, NaN on the steps the trace skips."""
    S, E, A = vcfg.seeds, vcfg.student_epochs, len(vcfg.arms)
    T = -(-vcfg.n_noise // vcfg.student_batch)
    logged = (np.arange(E * T) % vcfg.trace_every == 0).reshape(E, T)
    trace = {q: np.where(logged[None, :, :, None], rng.uniform(0.1, 1.0, (S, E, T, A)), np.nan) for q in tr.TRACE}
    return {
        "seed": np.arange(S), "finite": np.ones(S, bool),
        "accuracy": {"reference": rng.uniform(0.05, 0.15, S), "teacher": np.full(S, 0.9),
                     **{a: rng.uniform(0.1, 0.9, S) for a in vcfg.arm_names}},
        "student_accuracy_by_epoch": rng.uniform(0.1, 0.9, (S, E, A)),
        "student_loss": rng.uniform(0.01, 0.1, (S, E, T, A)),
        "geometry": {q: {"total": rng.uniform(0.1, 1.0, (S, A))}
                     for q in ("dist_teacher", "dist_init", "travel", "teacher_travel", "update_cos")},
        "seconds": np.ones(S),
        "trace": trace,
    }


def test_summary_has_curves_per_variant_arm_and_logged_step_with_cis():
    cfg = TEST
    rng = np.random.default_rng(0)
    results = {v: _fake_results(cfg.variant(v), rng) for v in cfg.variants}
    results["adam+projection"]["accuracy"]["teacher"] = results["adam"]["accuracy"]["teacher"]
    aligned = {"seed": np.arange(2), "donor": np.array([1, 0]),
               **{q: {"total": np.array([2.0, 3.0])} for q in ("raw", "aligned", "control_raw", "control_aligned")}}
    summary = mt.analyse(tr.summarise(mt.NAME, cfg, results, aligned, "test"))
    json.dumps(summary, allow_nan=False)  # strict JSON: undefined statistics are null, not NaN
    steps_per_epoch = -(-cfg.recipe.n_noise // cfg.recipe.student_batch)
    n_logged = -(-cfg.recipe.student_epochs * steps_per_epoch // cfg.trace_every)
    assert summary["n_seeds"] == cfg.seeds and set(summary["variants"]) == set(cfg.variants)
    for v, s in summary["variants"].items():
        assert s["steps"] == list(range(0, cfg.recipe.student_epochs * steps_per_epoch, cfg.trace_every))
        assert len(s["steps"]) == n_logged
        assert set(s["curves"]) == set(tr.CURVES)
        for q, by_arm in s["curves"].items():
            assert set(by_arm) == set(cfg.arm_names)
            for curve in by_arm.values():
                assert len(curve["mean"]) == len(curve["ci95"]) == n_logged
                assert all(c is not None and c >= 0 for c in curve["ci95"])
        for a in cfg.arm_names:
            assert s["curves"]["dist_teacher_rel"][a]["mean"][0] == 1.0
            stats = (s["accuracy"][a], s["distill_loss"][a]["final"], s["alignment"]["grad_cos"][a]["time_average"])
            for stat in stats:
                assert set(stat) >= {"mean", "ci95", "n"} and stat["n"] == cfg.seeds
            assert len(s["accuracy_by_epoch"][a]) == len(s["trait"][a]["gain_by_epoch"]) == cfg.recipe.student_epochs
            al = s["alignment"]["grad_cos"][a]
            assert al["n_logged"] == n_logged and 0 <= al["frac_ci_lo_pos"] <= al["frac_mean_pos"] <= 1
    proj = summary["projection"]["adam+projection"]
    assert (proj["base"], proj["other"]) == ("adam", "adam+projection")
    assert proj["teacher_accuracy_max_abs_diff"] == 0.0
    for a in cfg.arm_names:
        r = proj["arms"][a]
        expected = results["adam+projection"]["accuracy"][a] - results["adam"]["accuracy"][a]
        assert r["accuracy"]["diff"]["mean"] == pytest.approx(expected.mean(), rel=1e-4)  # paired by seed
        assert {"base", "other", "diff"} <= set(r["distill_loss_final"])
    assert set(summary["optimizers"]) == {"sgd_vs_adam"}
    assert summary["init_distances"]["raw"]["total"]["mean"] == 2.5
    text = mt.readme(summary)
    assert text.startswith(f"## {mt.NAME}") and "adam+projection against adam (paired" in text
    assert "adam+projection: projection stops transfer" in text
    assert "| variant | reference | teacher |" in mt.table(summary)


# ---------------------------------------------------------------------------------------------
# Permutation-aware init distances (no training)


def test_init_distances_compare_the_teacher_init_with_the_cross_students_init():
    out = tr.init_distances(TEST)
    recipe = TEST.recipe
    assert out["seed"].tolist() == [0, 1, 2] and np.all(out["donor"] != out["seed"])
    # θ_X⁰ is where the pipeline's cross-model students really start
    state = pipeline.init_population(recipe, out["seed"].astype(np.int32), out["donor"].astype(np.int32))
    k = [a.lineage for a in recipe.arms].index("different")
    donor_init = pipeline.init_population(recipe, out["donor"].astype(np.int32), out["donor"].astype(np.int32))
    for name, value in flat(jax.tree.map(lambda x: x[:, k], state["student_init"])).items():
        np.testing.assert_array_equal(value, flat(donor_init["teacher_init"])[name])
    raw, aligned = out["raw"]["total"], out["aligned"]["total"]
    assert np.all(raw > 0) and np.all(aligned <= raw + 1e-9) and np.all(aligned > 0.5 * raw)
    np.testing.assert_allclose(out["control_aligned"]["total"], 0.0, atol=1e-5)
    assert np.all(out["control_raw"]["total"] > 1.0)
    assert set(out["raw"]) == {"hidden.0", "head", "total"}


# ---------------------------------------------------------------------------------------------
# End to end: the `test` preset through the CLI, on a real-MNIST subset


ARGV = ["run", mt.NAME, "--preset", "test", "--no-progress"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    results, out = tmp_path_factory.mktemp("traj-results"), tmp_path_factory.mktemp("traj-out")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("MINISUB_RESULTS", str(results))
        rc = cli.main([*ARGV, "--out", str(out)])
    return {"rc": rc, "stdout": stdout.getvalue(), "results": results, "out": out,
            "summary": json.loads((out / f"{mt.STEM}.json").read_text()) if rc == 0 else None}


def _forbid_training(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("recomputed a stored run")

    monkeypatch.setattr(runner, "run", forbidden)
    monkeypatch.setattr(runner, "run_block", forbidden)


@pytest.mark.slow
def test_cli_runs_the_test_preset_end_to_end(first_run):
    assert first_run["rc"] == 0
    assert {p.name for p in first_run["out"].iterdir()} == {f"{mt.STEM}.{e}" for e in ("json", "png", "pdf")}
    assert (first_run["out"] / f"{mt.STEM}.png").read_bytes().startswith(b"\x89PNG")
    summary = first_run["summary"]
    assert summary["experiment"] == mt.NAME and summary["n_seeds"] == 3
    assert summary["config"] == config.to_dict(TEST)
    assert "| variant | reference | teacher |" in first_run["stdout"]
    root = first_run["results"] / mt.NAME
    assert (root / config.digest(TEST) / "DONE").exists()
    for v in TEST.variants:  # each variant is a complete run of its own
        assert store.is_complete(root / v / config.digest(TEST.variant(v)))
        teacher = summary["variants"][v]["accuracy"]["teacher"]
        assert teacher["values"] == summary["variants"]["adam"]["accuracy"]["teacher"]["values"]  # same teachers
        assert teacher["mean"] > 0.3
    s = summary["variants"]["adam"]
    n_logged = len(s["steps"])
    assert n_logged == 8 and all(len(s["curves"][q][a]["mean"]) == n_logged for q in tr.CURVES for a in TEST.arm_names)
    acc = s["accuracy"]
    assert acc["student_all"]["mean"] > acc["reference"]["mean"] + 0.05  # all-logit distillation teaches the task
    grad_cos = s["alignment"]["grad_cos"]
    assert abs(grad_cos["cross_aux"]["first"]["mean"]) < grad_cos["student_all"]["first"]["mean"]
    d = summary["init_distances"]
    assert d["n"] == 3 and d["control_aligned"]["total"]["mean"] < 1e-4 < d["aligned"]["total"]["mean"]


@pytest.mark.slow
def test_projection_leaves_no_logged_update_pointing_down_the_trait_loss(first_run):
    directory = first_run["results"] / mt.NAME / "adam+projection" / config.digest(TEST.variant("adam+projection"))
    arrays, _ = store.load_complete(directory)
    cos = arrays["trace"]["update_trait_cos"]  # [seed, epoch, step, arm]
    assert cos.shape[-1] == len(TEST.arm_names) and np.isfinite(cos).sum() == 3 * 8 * len(TEST.arm_names)
    assert np.nanmax(cos) <= 1e-5  # every arm, seed and logged step
    unprojected = store.load_complete(first_run["results"] / mt.NAME / "adam" / config.digest(TEST.variant("adam")))
    assert np.nanmax(unprojected[0]["trace"]["update_trait_cos"]) > 1e-3  # the unprojected updates do align
    for a in TEST.arm_names:
        assert first_run["summary"]["variants"]["adam+projection"]["alignment"]["update_trait_cos"][a]["max"] <= 1e-5


@pytest.mark.slow
def test_a_rerun_is_served_from_the_store(first_run, monkeypatch, capsys, tmp_path):
    _forbid_training(monkeypatch)
    monkeypatch.setattr(tr, "init_distances", lambda *a, **k: pytest.fail("recomputed the init distances"))
    monkeypatch.setenv("MINISUB_RESULTS", str(first_run["results"]))
    assert cli.main([*ARGV, "--out", str(tmp_path)]) == 0
    table = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert table(capsys.readouterr().out) == table(first_run["stdout"])
    assert json.loads((tmp_path / f"{mt.STEM}.json").read_text())["variants"] == first_run["summary"]["variants"]


@pytest.mark.slow
def test_the_summary_is_rebuilt_from_stored_variants_without_training(first_run, monkeypatch, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(first_run["results"], results)
    shutil.rmtree(results / mt.NAME / config.digest(TEST))  # only the combined summary is gone
    _forbid_training(monkeypatch)
    monkeypatch.setenv("MINISUB_RESULTS", str(results))
    summary, directory = mt.run(TEST, command="again", execution=runner.Execution(experiment=mt.NAME, progress=False))
    assert summary["variants"] == first_run["summary"]["variants"]
    assert summary["init_distances"] == first_run["summary"]["init_distances"]
    assert store.is_complete(directory)


@pytest.mark.slow
def test_figure_and_readme_are_redrawn_from_the_json_alone(first_run, monkeypatch, capsys, tmp_path):
    _forbid_training(monkeypatch)
    shutil.copy(first_run["out"] / f"{mt.STEM}.json", tmp_path / f"{mt.STEM}.json")
    assert cli.main(["figures", mt.NAME, "--dir", str(tmp_path)]) == 0
    for ext in ("png", "pdf"):
        assert (tmp_path / f"{mt.STEM}.{ext}").read_bytes() == (first_run["out"] / f"{mt.STEM}.{ext}").read_bytes()
    text = mt.readme(first_run["summary"])
    assert f"## {mt.NAME}" in text and "cos(∇L_distill, ∇L_T)" in text and "weight matching" in text


@pytest.mark.parametrize("argv, expected", [
    (["--variants", "adam,adamw"], ["variants='adamw'", "'sgd'"]),
    (["--sgd-lr", "-1"], ["sgd_lr=-1.0", "> 0"]),
    (["--recipe", "x"], ["recipe cannot be set from the command line"]),
])
def test_cli_errors_are_one_line_before_any_compute(argv, expected, monkeypatch, capsys):
    _forbid_training(monkeypatch)
    assert cli.main([*ARGV, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minisub: error: ")
    for text in expected:
        assert text in err[0], (text, err[0])


@pytest.mark.slow
def test_trained_networks_are_compared_raw_and_weight_matched(first_run):
    trained = first_run["summary"]["init_distances"]["trained"]
    assert set(trained) == set(tr.TRAINED_PAIRS)
    for pair, qs in trained.items():
        raw, matched = qs["raw"]["total"], qs["aligned"]["total"]
        assert raw["n"] == TEST.n_aligned and matched["n"] == TEST.n_aligned
        assert matched["mean"] <= raw["mean"] * (1 + 1e-6), pair  # matching starts at the identity
    # the shared-init student lives in the teacher's basis: matching changes little there
    s = trained["teacher_vs_student_aux"]
    assert s["aligned"]["total"]["mean"] >= 0.9 * s["raw"]["total"]["mean"]


# ---------------------------------------------------------------------------------------------
# Verdicts from synthetic summaries (no training): each flips with the numbers


def _put(summary: dict, path: str, value) -> None:
    """Set a dotted path; a list of per-seed values becomes a Student-t summary of them."""
    from minisub import stats

    *parents, leaf = path.split(".")
    node = summary
    for part in parents:
        node = node[part]
    node[leaf] = stats.mean_ci(value) if isinstance(value, np.ndarray) else value


def _brief(mean: float, ci: float = 0.002) -> dict:
    return {"mean": mean, "ci95": ci, "n": TEST.seeds}


def _synthetic(*edits) -> dict:
    """A summary from fake arrays, then edited so every claim's numbers are clear-cut (then ``edits``)."""
    rng = np.random.default_rng(1)
    results = {v: _fake_results(TEST.variant(v), rng) for v in TEST.variants}
    distances = lambda: {"total": rng.uniform(30, 31, 3)}  # noqa: E731
    aligned = {"seed": np.arange(3), "donor": np.array([1, 2, 0]),
               **{q: distances() for q in ("raw", "aligned", "control_raw")},
               "control_aligned": {"total": rng.uniform(0, 1e-5, 3)},
               "trained": {"teacher_vs_cross_start": {"raw": distances(),
                                                      "aligned": {"total": np.array([31.0, 31.1, 31.2])}},
                           "teacher_vs_cross_aux": {"raw": distances(),
                                                    "aligned": {"total": np.array([30.5, 30.55, 30.7])}}}}
    s = tr.summarise(mt.NAME, TEST, results, aligned, "test")
    ref = np.array([0.10, 0.11, 0.09])
    noise = lambda: rng.normal(0, 0.003, ref.size)  # noqa: E731
    base = [("variants.adam.accuracy.student_aux", ref + 0.4 + noise()),
            ("variants.adam.accuracy.cross_aux", ref + noise()),
            ("variants.adam+projection.accuracy.student_aux", ref + noise()),
            ("variants.sgd.accuracy.student_aux", ref + 0.1 + noise())]
    for v in ("adam", "sgd", "adam+projection"):
        base += [(f"variants.{v}.accuracy.reference", ref), (f"variants.{v}.distill_loss.student_aux.final",
                                                             0.01 + 0.0001 * rng.random(ref.size))]
    for v in ("adam", "sgd"):
        g = f"variants.{v}.alignment.grad_cos.student_aux."
        base += [(g + "first", _brief(0.01)), (g + "first_epoch_average", _brief(0.01)),
                 (g + "last_epoch_average", _brief(0.01)), (f"variants.{v}.trait.student_aux.gain_by_epoch",
                                                            [_brief(0.3, 0.01), _brief(0.4, 0.01)])]
        s["variants"][v]["curves"]["dist_teacher_rel"]["student_aux"]["mean"][-1] = 0.9
        s["variants"][v]["curves"]["dist_teacher_rel"]["student_aux"]["ci95"][-1] = 0.01
    base += [("projection.adam+projection.arms.student_aux.distill_loss_drop.other", _brief(0.01))]
    s["variants"]["adam"]["final_geometry"]["teacher_travel"]["student_aux"]["mean"] = 5.0
    for path, value in (*base, *edits):
        _put(s, path, value)
    return mt.analyse(s)


def _statuses(summary: dict) -> dict:
    return {v["id"]: v["status"] for v in summary["verdicts"]}


@pytest.mark.parametrize("claim, edit, after", [
    ("shared_aux_transfers", ("variants.adam.accuracy.student_aux", np.array([0.05, 0.06, 0.04])), "refuted"),
    ("cross_aux_at_reference", ("variants.adam.accuracy.cross_aux", np.array([0.4, 0.41, 0.42])), "refuted"),
    ("adam_aligned_step0", ("variants.adam.alignment.grad_cos.student_aux.first", _brief(0.001, 0.004)),
     "inconclusive"),
    ("sgd_aligned_first_epoch", ("variants.sgd.alignment.grad_cos.student_aux.first_epoch_average",
                                 _brief(-0.01)), "refuted"),
    ("adam_aligned_last_epoch", ("variants.adam.alignment.grad_cos.student_aux.last_epoch_average",
                                 _brief(-0.01)), "refuted"),
    ("adam_trait_early", ("variants.adam.trait.student_aux.gain_by_epoch", [_brief(0.1, 0.01), _brief(0.4, 0.01)]),
     "refuted"),
    ("adam+projection_reduces", ("variants.adam+projection.accuracy.student_aux", np.array([0.7, 0.71, 0.72])),
     "refuted"),
    ("adam+projection_reduces", ("variants.adam+projection.distill_loss.student_aux.final", np.array([0.1, 0.2, 0.3])),
     "confounded"),
    ("adam+projection_stops", ("variants.adam+projection.accuracy.student_aux", np.array([0.4, 0.41, 0.42])),
     "refuted"),
    ("adam+projection_still_distils", ("projection.adam+projection.arms.student_aux.distill_loss_drop.other",
                                       _brief(-0.01)), "refuted"),
    ("sgd_transfers_less", ("variants.sgd.distill_loss.student_aux.final", np.array([0.1, 0.2, 0.3])), "confounded"),
    ("matching_control", ("init_distances.control_aligned.total", np.array([1.0, 1.1, 1.2])), "refuted"),
    ("matched_init_far", ("init_distances.aligned.total", np.array([3.0, 3.1, 3.2])), "refuted"),
    ("cross_aux_closer_matched", ("init_distances.trained.teacher_vs_cross_aux.aligned.total",
                                  np.array([32.0, 32.1, 32.2])), "refuted"),
])
def test_each_verdict_flips_with_the_numbers(claim, edit, after):
    base = _statuses(_synthetic())
    assert base[claim] == "supported", base
    flipped = _synthetic(edit)
    assert _statuses(flipped)[claim] == after
    assert f"**{after}**" in mt.readme(flipped)


def test_distance_to_the_teacher_claim_reads_the_last_logged_step():
    s = _synthetic()
    s["variants"]["adam"]["curves"]["dist_teacher_rel"]["student_aux"]["mean"][-1] = 1.1
    assert _statuses(s)["adam_closer"] == "supported" and _statuses(mt.analyse(s))["adam_closer"] == "refuted"


def test_old_curve_intervals_are_rescaled_to_student_t_once():
    from minisub import stats
    from minisub.theory import trajectory_analysis as ta

    s = _synthetic()
    old = {k: v for k, v in s.items() if k != "curve_ci"}
    curve = old["variants"]["adam"]["curves"]["grad_cos"]["student_aux"]
    rescaled = ta.student_t_curves(old)["variants"]["adam"]["curves"]["grad_cos"]["student_aux"]
    factor = stats.t_quantile(TEST.seeds) / 1.96
    np.testing.assert_allclose(rescaled["ci95"], np.asarray(curve["ci95"]) * factor, rtol=1e-4)
    assert rescaled["mean"] == curve["mean"]
    assert ta.student_t_curves(s) is s  # already Student-t: untouched


def test_the_committed_summary_is_analysed_without_changing_a_measured_number():
    from pathlib import Path

    committed = json.loads((Path(__file__).parents[1] / "figures" / f"{mt.STEM}.json").read_text())
    again = mt.analyse({k: v for k, v in committed.items() if k not in ("analysis", "verdicts")})
    assert again["variants"] == committed["variants"] and again["init_distances"] == committed["init_distances"]
    assert again["verdicts"] == committed["verdicts"] and again["analysis"] == committed["analysis"]


def test_an_undefined_statistic_is_not_measured_not_an_error():
    s = _synthetic()
    s["variants"]["adam"]["curves"]["dist_teacher_rel"]["student_aux"]["ci95"][-1] = None
    s["variants"]["adam"]["trait"]["student_aux"]["gain_by_epoch"][0]["ci95"] = None
    verdicts = {v["id"]: v for v in mt.analyse(s)["verdicts"]}
    for claim in ("adam_closer", "adam_trait_early"):
        assert verdicts[claim]["status"] == "not measured" and "analysis.variants.adam." in verdicts[claim]["detail"]
