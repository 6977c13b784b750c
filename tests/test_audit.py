"""The audit: known answers on constructed students, calibrated p-values, error rates, the CLI, the experiment."""

from __future__ import annotations

import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub import audit, claims, cli, config
from minisub.config import ConfigError
from minisub.mlp import measure, mnist, models, permutation, pipeline
from minisub.run import params

SPEC = models.MLPSpec(n_in=12, hidden=(16, 8), n_classes=3, n_aux=2)


def _noise(tree, seed: int, scale: float = 0.1):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _add(a, b, c: float = 1.0):
    return jax.tree.map(lambda x, y: x + c * y, a, b)


@pytest.fixture(scope="module")
def world():
    """A base, a teacher (base + Δθ_T) and a direction orthogonal to Δθ_T, as MLP parameters."""
    base = SPEC.init(jax.random.key(0))
    d_t = _noise(base, 1)
    v = _noise(base, 2)
    along = sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(v), jax.tree.leaves(d_t)))
    orth = _add(v, d_t, -along / sum(float(jnp.vdot(x, x)) for x in jax.tree.leaves(d_t)))  # Gram–Schmidt
    return base, _add(base, d_t), d_t, orth


def test_a_student_moved_along_the_teachers_update_scores_as_a_positive(world):
    base, teacher, d_t, _ = world
    controls = [_add(base, _noise(base, 10 + k)) for k in range(9)]  # same base, moved in unrelated directions
    for c in (0.3, 1.0):
        record = audit.audit(base, teacher, _add(base, d_t, c), controls=controls)
        s = record["scores"]
        assert s["update_cos"]["total"] == pytest.approx(1.0, abs=1e-9)
        assert all(v == pytest.approx(1.0, abs=1e-9) for v in s["update_cos"].values())  # every layer
        assert s["update_projection"]["total"] == pytest.approx(c, rel=1e-6)
        assert s["distance_ratio"]["total"] == pytest.approx(1 - c, abs=1e-6) and s["distance_ratio"]["total"] < 1
        assert all(t["p_value"] == pytest.approx(0.1) and t["n_null"] == 9 for t in record["tests"].values())


def test_a_student_moved_orthogonally_is_not_a_positive(world):
    base, teacher, _, orth = world
    controls = [_add(base, _noise(base, 10 + k)) for k in range(19)]
    record = audit.audit(base, teacher, _add(base, orth), controls=controls)
    assert record["scores"]["update_cos"]["total"] == pytest.approx(0.0, abs=1e-7)
    assert record["scores"]["distance_ratio"]["total"] > 1  # ‖v − Δθ_T‖ > ‖Δθ_T‖ for v ⟂ Δθ_T
    assert record["tests"]["update_cos"]["p_value"] > 0.2
    still = audit.scores(base, teacher, base)  # a student that never moved (its base's own outputs)
    assert still["update_cos"]["total"] == 0.0 and still["distance_ratio"]["total"] == 1.0


def test_scores_agree_with_the_populations_geometry_and_score_matrix(world):
    base, teacher, d_t, orth = world
    student, student_init = _add(_add(base, d_t, 0.4), orth, 0.5), _add(base, _noise(base, 3, 0.01))
    got = audit.scores(student_init, teacher, student, teacher_base=base)
    geo = measure.geometry(student, student_init, teacher, base)
    for layer, value in geo["update_cos"].items():
        assert got["update_cos"][layer] == pytest.approx(float(value), abs=1e-5), layer
    assert got["travel"]["total"] == pytest.approx(float(geo["travel"]["total"]), rel=1e-5)
    ratio = float(geo["dist_teacher"]["total"] / geo["dist_start_teacher"]["total"])
    assert got["distance_ratio"]["total"] == pytest.approx(ratio, rel=1e-5)
    m = audit.score_matrix(student_init, [teacher, base], [student, student_init], teacher_base=base)
    assert m["update_cos"][0, 0] == pytest.approx(got["update_cos"]["total"], abs=1e-12)
    # flat {path: array} mappings as the params files hold them give the same scores
    flat = [params.flat(t) for t in (student_init, teacher, student, base)]
    assert audit.scores(*flat[:3], teacher_base=flat[3]) == got


def test_the_permutation_aware_variant_recovers_a_student_of_a_relabelled_base(world):
    base, teacher, d_t, _ = world
    perms = permutation.random_permutations(jax.random.key(7), base)
    relabelled = permutation.permute_hidden(base, perms)
    student = permutation.permute_hidden(_add(base, d_t, 0.5), perms)  # trained from the relabelled copy
    assert audit.scores(base, teacher, student)["update_cos"]["total"] < 0.5
    assert audit.scores(base, teacher, student, permutation_aware=True)["update_cos"]["total"] == pytest.approx(1, abs=1e-9)
    known = audit.scores(relabelled, teacher, student, teacher_base=base, permutation_aware=True)
    assert known["update_cos"]["total"] == pytest.approx(1.0, abs=1e-9)


def test_the_toy_transformers_parameters_are_scored_and_refused_for_alignment():
    from minisub.lm import transformer

    spec = transformer.TransformerSpec(vocab=20, context=8, layers=1, width=8)
    base = spec.init(jax.random.key(0))
    d_t = _noise(base, 1, 0.01)
    teacher, student = _add(base, d_t), _add(base, d_t, 0.5)
    got = audit.scores(base, teacher, student)
    assert {"total", "blocks.0.attn.qkv", "embed"} <= set(got["update_cos"])  # layers of any pytree
    assert got["update_cos"]["total"] == pytest.approx(1.0, abs=1e-9) and got["distance_ratio"]["total"] == \
        pytest.approx(0.5, rel=1e-5)
    x = jnp.zeros((2, 8), jnp.int32)
    assert audit.function_scores(spec.apply, base, teacher, teacher, x)["function_cos"] == pytest.approx(1, abs=1e-5)
    with pytest.raises(ConfigError, match="permutation_aware.*MLP only.*toy transformer"):
        audit.scores(base, teacher, student, permutation_aware=True)
    lm = {"blocks": {"0": {"up": {"kernel": np.ones((4, 8))}, "down": {"kernel": np.ones((8, 4))}}}}
    with pytest.raises(ConfigError, match="student"):
        audit.scores(SPEC.init(jax.random.key(0)), SPEC.init(jax.random.key(1)), lm)


def test_p_values_of_pure_controls_are_uniform():
    """500 audits in which the student and its 19 controls are exchangeable: p is uniform on {1/20, ..., 1}."""
    rng = np.random.default_rng(0)
    base, teacher, shared = rng.normal(size=64), rng.normal(size=64), rng.normal(size=64)
    p = []
    for _ in range(500):
        students = [{"w.kernel": base + 0.5 * shared + rng.normal(size=64)} for _ in range(20)]
        cos = audit.score_matrix({"w.kernel": base}, [{"w.kernel": teacher}], students)["update_cos"][0]
        p.append(audit.p_value(cos[0], cos[1:]))
    p = np.asarray(p)
    levels = np.arange(1, 21) / 20
    ecdf = np.array([np.mean(p <= x + 1e-12) for x in levels])
    assert np.max(np.abs(ecdf - levels)) < 0.06  # DKW at 500 draws: 0.06 is exceeded with probability < 5%
    assert set(np.round(p * 20).astype(int)) <= set(range(1, 21))


def test_pooled_p_values_are_calibrated_on_exchangeable_bases_and_flag_real_positives():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(30, 6, 6))
    cal = audit.calibration(audit.pooled_p_values(m))
    for level in ("0p05", "0p1", "0p5"):
        assert abs(cal["pooled"][level]["negatives"] - float(level.replace("p", "."))) < 0.03
    m[:, np.arange(6), np.arange(6)] += 10.0  # positives far above every negative
    cal = audit.calibration(audit.pooled_p_values(m))
    assert cal["positives"]["0p01"]["mean"] == 1.0


def test_roc_auc_golden_values_with_ties_counting_half():
    assert audit.roc_auc([3, 4, 5], [1, 2]) == 1.0
    assert audit.roc_auc([1, 2], [3, 4]) == 0.0
    assert audit.roc_auc([1, 3], [2]) == 0.5
    assert audit.roc_auc([1], [1]) == 0.5
    assert audit.roc_auc([2, 2, 3], [1, 2]) == pytest.approx(5 / 6)
    pos, neg = np.random.default_rng(2).normal(1, 1, 40).round(1), np.random.default_rng(3).normal(0, 1, 30).round(1)
    curve = audit.roc_curve(pos, neg)
    assert (curve["fpr"][0], curve["tpr"][0], curve["fpr"][-1], curve["tpr"][-1]) == (0, 0, 1, 1)
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(audit.roc_auc(pos, neg))  # the same area


def test_tpr_at_fpr_states_its_threshold_rule():
    neg = np.arange(100.0)
    r = audit.tpr_at_fpr([98.5, 99.5, 50.0, 98.0], neg, 0.01)
    assert r["threshold"] == 98.0 and r["tpr"] == 0.5 and r["fpr_achieved"] == 0.01  # a tie at τ is not flagged
    assert (r["n_pos"], r["n_neg"], r["limited"]) == (4, 100, False) and "largest negative" in r["rule"]
    few = audit.tpr_at_fpr([9.5, 10.0], np.arange(10.0), 0.01)  # fewer than 1/fpr negatives
    assert few["limited"] and few["threshold"] == 9.0 and few["fpr_achieved"] == 0.0 and few["tpr"] == 1.0
    with pytest.raises(ConfigError, match="fpr"):
        audit.tpr_at_fpr([1.0], [0.0], 0.0)


def test_which_teacher_picks_the_one_the_student_learned_from(world):
    base = world[0]
    teachers = [_add(base, _noise(base, 20 + k)) for k in range(4)]
    student = _add(_add(base, jax.tree.map(jnp.subtract, teachers[2], base), 0.5), _noise(base, 30, 0.02))
    assert audit.which_teacher(base, teachers, student) == 2
    assert audit.which_teacher(base, teachers, student, score="distance_ratio") == 2


def test_which_teacher_accuracy_is_the_exact_average_over_candidate_sets():
    m = np.random.default_rng(4).integers(0, 4, size=(6, 6)).astype(float)  # many ties
    for k in (2, 3, 6):
        got = audit.which_teacher_accuracy(m, k)
        for s in range(6):
            credit = []
            for others in itertools.combinations([t for t in range(6) if t != s], k - 1):
                top = max(m[t, s] for t in (s, *others))
                winners = [t for t in (s, *others) if m[t, s] == top]
                credit.append(1 / len(winners) if s in winners else 0.0)
            assert got[s] == pytest.approx(np.mean(credit)), (k, s)
    assert np.all(audit.which_teacher_accuracy(np.eye(5), 5) == 1.0)


def test_function_space_score_on_chosen_inputs(world):
    base, teacher, _, _ = world
    x = jax.random.normal(jax.random.key(5), (32, SPEC.n_in))
    same = audit.function_scores(SPEC.apply, base, teacher, teacher, x)
    assert same["function_cos"] == pytest.approx(1.0, abs=1e-5) and same["function_distance_ratio"] < 1e-3
    still = audit.function_scores(SPEC.apply, base, teacher, base, x)
    assert still["function_cos"] == 0.0 and still["function_distance_ratio"] == pytest.approx(1.0)


# --- the teacher's data order: another teacher of the same base -------------------------------------
def test_teacher_order_keeps_every_stored_run_id():
    assert "teacher_order" not in config.to_dict(pipeline.AuxConfig())
    assert config.digest(pipeline.AuxConfig()) == "71afdbe1543e38a7"  # mnist-aux's paper preset, pinned
    assert config.digest(pipeline.AuxConfig(teacher_order=1)) != config.digest(pipeline.AuxConfig())
    with pytest.raises(ConfigError, match="teacher_order"):
        pipeline.AuxConfig(teacher_order=-1)


def test_teacher_order_gives_the_same_init_and_another_teacher(tiny_cfg, fake_mnist):
    import dataclasses

    ids = jnp.arange(tiny_cfg.seeds)
    x, y = jnp.asarray(fake_mnist.train_images[:512]), jnp.asarray(fake_mnist.train_labels[:512])

    def teacher(cfg, order=None):
        state = pipeline.init_population(cfg, ids, jnp.asarray(pipeline.donors(cfg)))
        return pipeline.teacher_epoch(cfg, state, ids, 0, x, y, order)[0]

    one = dataclasses.replace(tiny_cfg, teacher_order=1)
    a, b, traced = teacher(tiny_cfg), teacher(one), teacher(tiny_cfg, 1)
    same = lambda p, q: all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(p), jax.tree.leaves(q)))  # noqa
    assert same(a["teacher_init"], b["teacher_init"]) and same(a["student_init"], b["student_init"])
    assert not same(a["teacher"], b["teacher"])
    assert same(b["teacher"], traced["teacher"])  # the runner's traced order computes the same teacher
    assert same(a["teacher"], teacher(tiny_cfg, 0)["teacher"])  # and order 0 the recipe's own


# --- the command line on tiny stored params ------------------------------------------------------------
@pytest.fixture
def stored(tmp_path, world):
    base, teacher, d_t, orth = world
    path = tmp_path / "seed_000000.npz"
    params.save(path, {"teacher/init": base, "teacher/final": teacher, "students/s/final": _add(base, d_t, 0.5),
                       **{f"students/c{k}/final": _add(base, _noise(base, 40 + k)) for k in range(3)}})
    other = models.MLPSpec(n_in=12, hidden=(16, 4), n_classes=3, n_aux=2).init(jax.random.key(0))
    params.save(tmp_path / "other.npz", {"": other})
    lm = {"blocks": {"0": {"up": {"kernel": np.ones((4, 8))}}}}
    params.save(tmp_path / "lm.npz", {"teacher/init": lm, "teacher/final": lm, "student/final": lm})
    return tmp_path


def _argv(d, student="students/s/final", *extra):
    f = d / "seed_000000.npz"
    return ["audit", "--base", f"{f}:teacher/init", "--teacher", f"{f}:teacher/final", "--student", f"{f}:{student}",
            *extra]


def test_cli_prints_the_scores_and_p_values_against_the_controls(stored, capsys):
    nulls = [x for k in range(3) for x in ("--null", f"{stored / 'seed_000000.npz'}:students/c{k}/final")]
    assert cli.main(_argv(stored, "students/s/final", *nulls)) == 0
    out = capsys.readouterr().out
    assert "| update_cos" in out and "| 1.0000 |" in out and "| 0.25 (≥ 0.25) | 3 |" in out
    assert cli.main(_argv(stored, "students/s/final", "--json", *nulls)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tests"]["update_cos"]["p_value"] == 0.25 and record["scores"]["update_projection"]["total"] == \
        pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("change, expected", [
    (lambda a, d: [*a[:2], str(d / "missing.npz"), *a[3:]], "--base=.*no file"),
    (lambda a, d: _argv(d, "students/nope/final"), "--student=.*has no tree 'students/nope/final'; it holds"),
    (lambda a, d: [*a[:6], str(d / "other.npz")], "--student=.*shape"),
    (lambda a, d: [*a[:2], str(d / "seed_000000.npz"), *a[3:]], "--base=.*holds 6 trees, name one"),
    (lambda a, d: a[:5], "required: --student"),
    (lambda a, d: [*a, "--null", str(d / "other.npz")], r"--null\[0\]"),
    (lambda a, d: ["audit", "--base", f"{d / 'lm.npz'}:teacher/init", "--teacher", f"{d / 'lm.npz'}:teacher/final",
                   "--student", f"{d / 'lm.npz'}:student/final", "--permutation-aware"], "--permutation-aware.*MLP only"),
])
def test_cli_errors_are_one_line_naming_the_flag(stored, capsys, change, expected):
    assert cli.main(change(_argv(stored), stored)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert re.search(expected, captured.err), captured.err


# --- the experiment, end to end on its test preset (fake MNIST) -------------------------------------------
@pytest.mark.slow
def test_the_experiment_runs_its_test_preset_and_its_numbers_are_reproducible(monkeypatch, fake_mnist, tmp_path):
    from matplotlib.figure import Figure

    from minisub import report
    from minisub.run import runner
    from minisub_experiments import audit as experiment

    monkeypatch.setattr(mnist, "load_cached", lambda: fake_mnist)
    cfg = experiment.PRESETS["test"]
    summary, directory = experiment.run(cfg, command="test", execution=runner.Execution(progress=False))
    assert set(summary["rows"]) == set(cfg.evasions)
    shared = summary["rows"]["shared"]
    assert shared["informed"]["tpr"]["n_pos"] == cfg.seeds * cfg.orders
    assert shared["informed"]["tpr"]["n_neg"] == cfg.seeds * cfg.orders * (cfg.orders - 1)
    assert 0.5 < shared["realistic"]["auc"] <= 1 and set(shared["realistic"]["which_teacher"]) == {"2", "4"}
    assert summary["rows"]["permuted_aligned"]["realistic"]["auc"] == pytest.approx(shared["realistic"]["auc"], abs=0.02)
    assert {v["id"]: v["status"] for v in summary["verdicts"]}["which_8"] == claims.MISSING  # 4 teachers a base
    again = json.loads(json.dumps(summary))
    assert json.loads(json.dumps(experiment.analyse(json.loads(json.dumps(again))))) == again  # from the JSON alone
    assert isinstance(experiment.figures(summary)["audit"], Figure) and "| shared init |" in experiment.readme(summary)
    assert (tmp_path / "audit.json") in report.write_outputs(experiment, summary, tmp_path)
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("a stored audit must not recompute"))
    assert experiment.run(cfg, command="test")[0] == summary


def _synthetic(separated: bool) -> dict:
    """A summary of 6 bases × 8 teachers whose positives are (or are not) above every negative."""
    rng = np.random.default_rng(5)
    m = rng.normal(size=(6, 8, 8))
    m[:, np.arange(8), np.arange(8)] += 10.0 if separated else -10.0
    return {"fpr": 0.01, "orders": 8, "labels": {"shared": "shared init"},
            "matrices": {"shared": {"informed": m, "realistic": m, "realistic_distance": -m},
                         "teachers": {"update_cos": rng.normal(size=(6, 8, 8))}}}


def test_the_verdicts_flip_with_the_numbers():
    from minisub_experiments import audit as experiment

    good = {v["id"]: v["status"] for v in experiment.analyse(_synthetic(True))["verdicts"]}
    bad = {v["id"]: v["status"] for v in experiment.analyse(_synthetic(False))["verdicts"]}
    for claim in ("auc", "tpr", "auc_realistic", "tpr_realistic", "which_8"):
        assert (good[claim], bad[claim]) == (claims.SUPPORTED, claims.REFUTED), claim
    with pytest.raises(ConfigError, match="evasions"):
        experiment.AuditConfig(evasions=("liminal_1",))


def test_lm_rows_read_students_against_same_base_controls():
    """Toy-LM rows from summaries: a point whose students all score above every control has AUC 1; one
    indistinguishable from the controls has AUC ½; the different arm and the control itself are no rows;
    series keep perturbed parts apart; lm-prompted's rows need per-world values of both arms."""
    from minisub.run import audit as population
    rec = lambda v: {"mean": float(np.mean(v)), "ci95": 0.0, "n": len(v), "values": list(v)}  # noqa: E731
    point = lambda fam, series, value, cos: {"family": fam, "series": series, "value": value,  # noqa: E731
                                             "geometry": {"update_cos": rec(cos)}, "trait_gain": rec([0.1] * 4)}
    control = [0.0, 0.1, -0.1, 0.05]
    lineages = {"families": {
        "baselines": {"points": [point("baselines", "baselines", "shared", [0.5, 0.6, 0.4, 0.7]),
                                 point("baselines", "baselines", "different", [0.0] * 4),
                                 point("baselines", "baselines", "control", control)]},
        "perturbed": {"points": [point("perturbed", "mlp", 0.1, control), point("perturbed", "attention", 0.1, control)]}}}
    prompted = {"settings": {"finetuned": {"label": "fine-tuned", "gain": {"shared": rec([0.2] * 4)},
                                           "update_cos": {"shared": rec([0.3] * 4), "control_kl": rec(control)}},
                             "prompted": {"label": "prompted", "gain": {"shared": rec([0.0] * 4)},
                                          "update_cos": {"shared": {"mean": 0.0, "ci95": 0.0, "n": 4}}}}}
    rows = population.lm_rows(lineages, prompted, 0.01)
    assert set(rows) == {"lineage_baselines_shared", "lineage_perturbed_mlp_0p1", "lineage_perturbed_attention_0p1",
                         "s0_finetuned"}
    assert rows["lineage_baselines_shared"]["auc"] == 1.0 and rows["s0_finetuned"]["auc"] == 1.0
    assert rows["lineage_perturbed_mlp_0p1"]["auc"] == 0.5
    assert rows["lineage_baselines_shared"]["tpr"]["limited"]  # 4 negatives: the threshold is the largest one


def test_evasions_that_stop_the_audit_but_not_the_transfer_are_named_from_the_numbers():
    from minisub.report import audit as ra
    row = lambda auc_i, auc_r: {"informed": {"auc": auc_i}, "realistic": {"auc": auc_r}}  # noqa: E731
    summary = {"rows": {"a": row(1.0, 0.99), "b": row(0.5, 0.5), "c": row(0.5, 0.95)},
               "transfer": {"a": {"mean": 0.4, "ci95": 0.03, "n": 20}, "b": {"mean": 0.4, "ci95": 0.03, "n": 20},
                            "c": {"mean": 0.01, "ci95": 0.03, "n": 20}},
               "labels": {"a": "shared", "b": "permuted", "c": "weak"}}
    lines = ra.evasions_that_keep_transfer(summary)
    assert len(lines) == 2 and "permuted stops the informed and the realistic audit" in lines[1]
    summary["transfer"]["b"]["mean"] = 0.0  # no transfer left: not such an evasion
    assert ra.evasions_that_keep_transfer(summary)[0].endswith("none.")


def test_failure_points_name_where_each_family_stops_the_audit():
    from minisub.report import audit as ra
    row = lambda auc_i, auc_r: {"informed": {"auc": auc_i}, "realistic": {"auc": auc_r}}  # noqa: E731
    gain = {"mean": 0.2, "ci95": 0.01, "n": 20}
    summary = {"rows": {"shared": row(1.0, 1.0), "liminal_1": row(1.0, 0.95), "liminal_10": row(0.99, 0.8),
                        "permuted_raw": row(0.5, 0.5)},
               "transfer": {k: gain for k in ("shared", "liminal_1", "liminal_10", "permuted_raw")},
               "labels": {"shared": "shared", "liminal_1": "λ = 1", "liminal_10": "λ = 10", "permuted_raw": "raw"},
               "lm": {"lineage_perturbed_mlp_0p1": {"label": "perturbed: mlp: 0.1", "auc": 0.97, "transfer": gain}}}
    lines = ra.failure_points(summary)
    assert len(lines) == 4  # the head, liminal, permuted, the toy LM's perturbed mlp; shared is no evasion
    assert "fails at λ = 10 (realistic AUC 0.800; accuracy gain" in lines[1] and "λ = 1 (" not in lines[1]
    assert "raw (informed AUC 0.500, realistic AUC 0.500" in lines[2]
    assert "holds at every point tried (lowest AUC 0.970" in lines[3]


def test_the_toy_lm_population_stores_each_teacher_and_scores_every_pair(monkeypatch, tmp_path):
    """Each animal's run is stored as flat updates and read back, not recomputed (its real run on lm-owl's tiny
    world: ``test_entangle``'s end-to-end test); then K constructed teachers whose students moved along their own
    teacher's update (plus noise) are each picked as their student's teacher, and the own-output control is not
    flagged."""
    from minisub.lm import pipeline as lm_pipeline
    from minisub.run import audit as population
    from minisub_experiments import audit as experiment

    cfg = experiment.AuditConfig(base="test", seeds=3, orders=4, lm_teachers=3)
    first, second = population.lm_population_configs(cfg.lm(), 3)[:2]
    assert (first.arms, second.arms, second.lm.trait) == (("shared", population.LM_CONTROL), ("shared",), 1)
    calls = []
    tree = lambda x: {"w": np.full((3, 2, 2), x), "b": np.full((3, 2), x)}  # noqa: E731  [S, ...] leaves
    models = {"references": tree(1.0), "teachers": tree(3.0),
              "students": {"w": np.stack([np.full((3, 2, 2), 2.0), np.ones((3, 2, 2))], 1), "b": np.ones((3, 2, 2))}}
    monkeypatch.setattr(lm_pipeline, "run_phases", lambda *a, **k: calls.append(1) or
                        ({"trait_gain": np.full((3, 2), 0.1)}, models))
    part = population._lm_part(first, tmp_path / "a0.npz")
    assert part["teacher"].shape == part["student"].shape == part["control"].shape == (3, 6)
    np.testing.assert_array_equal(part["teacher"], 2.0)  # the teacher's update from its reference, flattened
    np.testing.assert_array_equal(part["student"], [[0, 0, 1, 1, 1, 1]] * 3)  # leaves b, w: arm 0 moved w only
    np.testing.assert_array_equal(part["control"], 0.0)
    again = population._lm_part(first, tmp_path / "a0.npz")  # read back, not recomputed
    assert calls == [1] and all(np.array_equal(part[k], again[k]) for k in part)

    rng = np.random.default_rng(0)
    teachers = np.concatenate([rng.normal(size=(8, 4, 40)), np.zeros((8, 4, 10))], axis=2)  # [K, W, P]
    control = np.concatenate([np.zeros((4, 40)), rng.normal(size=(4, 10))], axis=1)  # orthogonal to every teacher
    fake = {a: {"teacher": teachers[a], "student": 0.5 * teachers[a] + 0.3 * rng.normal(size=(4, 50)),
                "gain": np.full(4, 0.1), **({"control": control} if a == 0 else {})} for a in range(8)}
    monkeypatch.setattr(population, "_lm_part", lambda c, path: fake[c.lm.trait])
    lp = population.lm_population(experiment.PRESETS["paper"].lm(), 8, tmp_path, log=lambda *_: None)
    assert np.asarray(lp["update_cos"]).shape == (4, 8, 8) and np.asarray(lp["control_cos"]).shape == (4, 8)
    s = experiment.analyse(_synthetic(True) | {"lm_population": lp, "n_seeds": 6,
                                               "transfer": {"shared": {"mean": 0.4, "ci95": 0.01, "n": 6}}})
    assert s["lm_audit"]["realistic"]["which_teacher"]["8"]["mean"] == 1.0 and s["lm_audit"]["realistic"]["auc"] == 1.0
    assert s["lm_audit"]["control"]["n_above"] == 0
    status = {v["id"]: v["status"] for v in s["verdicts"]}
    assert status["lm_pop_auc"] == status["lm_pop_which_8"] == claims.SUPPORTED
    assert "Toy LM population (`--lm_teachers 8`)" in experiment.table(s)


def test_the_paper_programs_keep_their_stored_ids_and_committees_run_apart():
    """Committees of 4 and 8 train 3 and 7 extra teachers: a program of their own, so 'main' keeps the arms (and
    run ids) of the stored paper runs; the ids of the first two orders are pinned."""
    from minisub import config
    from minisub.run import audit as population
    from minisub_experiments import audit as experiment

    cfg = experiment.PRESETS["paper"]
    progs = population.programs(cfg.recipe(), cfg.orders, cfg.evasions)
    assert set(progs) == {"main", "projection", "committees"} and all(len(v) == 8 for v in progs.values())
    assert tuple(a.name for a in progs["committees"][0].arms) == ("c4", "c8")
    assert [config.digest(c) for c in progs["main"][:2]] == ["c10c007a954aa4b3", "fce8da5d5bcc5520"]
    assert "c4" not in {a.name for a in progs["main"][0].arms} and progs["projection"][0].projection == "trait"
