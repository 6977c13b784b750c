"""lm-owl from the command line (test preset): JSON + figure, the results store, refusals, the controls."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub import registry
from minisub_experiments import lm_owl
from minisub import cli, config
from minisub.lm import owl
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import world

ARGV = ["run", "lm-owl", "--preset", "test", "--no-progress"]
TEST = lm_owl.PRESETS["test"]


@pytest.fixture
def no_compute(monkeypatch):
    """Any attempt to train fails the test."""
    def forbidden(*a, **k):
        raise AssertionError("computation started although the run should not compute")

    for name in ("run", "pretrain", "make_numbers", "train_students"):
        monkeypatch.setattr(lm_pipeline, name, forbidden)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """`minisub run lm-owl --preset test --out OUT` in a fresh results store."""
    results, out = tmp_path_factory.mktemp("owl-results"), tmp_path_factory.mktemp("owl-out")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("MINISUB_RESULTS", str(results))
        rc = cli.main([*ARGV, "--out", str(out)])
    return {"rc": rc, "stdout": stdout.getvalue(), "results": results, "out": out,
            "files": {p.name: p.read_bytes() for p in out.iterdir()}}


def test_registered_with_presets():
    assert registry.experiments()[lm_owl.NAME] is lm_owl and lm_owl.DEFAULT_PRESET in lm_owl.PRESETS
    assert set(lm_owl.PRESETS) == {"test", "quick", "paper"}
    assert lm_owl.PRESETS["paper"].seeds >= 20 and lm_owl.PRESETS["quick"].seeds >= 3


def test_run_end_to_end_writes_table_json_and_figure(first_run):
    assert first_run["rc"] == 0
    assert set(first_run["files"]) == {"lm_owl.json", "lm_owl.png", "lm_owl.pdf"}
    assert first_run["files"]["lm_owl.png"].startswith(b"\x89PNG")
    assert first_run["files"]["lm_owl.pdf"].startswith(b"%PDF")
    summary = json.loads(first_run["files"]["lm_owl.json"])
    assert summary["experiment"] == "lm-owl" and summary["n_seeds"] == TEST.seeds
    assert summary["config"] == config.to_dict(TEST)
    assert list(summary["arms"]) == list(TEST.arms)
    for name, arm in summary["arms"].items():
        assert arm["trait_gain"]["n"] == TEST.seeds and np.all(np.isfinite(arm["trait_gain"]["values"])), name
        assert len(arm["animal_gains"]) == TEST.n_animals
        for when in ("before", "after"):  # counts of sampled answers, centred on P(trait)
            counts = np.asarray(arm[f"sampled_trait_{when}"]["values"]) * owl.SAMPLED_ANSWERS
            np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
            p = np.asarray(arm[f"p_trait_{when}"]["values"])
            sd = np.sqrt(p * (1 - p) / owl.SAMPLED_ANSWERS / TEST.seeds)
            assert abs(np.mean(counts) / owl.SAMPLED_ANSWERS - p.mean()) <= 5 * sd.max() + 1e-9, (name, when)
        assert {"update_cos", "dist_teacher", "travel"} <= set(arm["geometry"])
        if arm["lineage"] == "shared":  # a shared student starts as the reference
            np.testing.assert_allclose(arm["p_trait_before"]["values"], summary["references"]["p_trait"]["values"])
            assert arm["geometry"]["dist_init"]["mean"] == 0
    assert summary["arms"]["different"]["geometry"]["dist_init"]["mean"] > 0
    assert summary["arms"]["control"]["loss"] == "ce" and summary["arms"]["shuffle"]["source"] == "shuffled"
    assert {"shared − different", "shared_ce − control", "shared_ce − shuffle"} <= set(summary["paired"])
    assert summary["teachers"]["p_trait"]["mean"] > summary["references"]["p_trait"]["mean"]
    out = first_run["stdout"]
    for name in TEST.arms:
        assert f"| {name} | " in out
    assert "| shared − different | " in out
    run_dir = first_run["results"] / "lm-owl" / config.digest(TEST)
    assert (run_dir / "DONE").exists() and f"results: {run_dir}" in out
    assert "## lm-owl" in lm_owl.readme(summary) and lm_owl.PAPER_COMMAND.split(" --")[0] in lm_owl.readme(summary)
    metrics = lm_owl.sweep_metrics(summary)
    assert set(metrics) == {"shared gain", "different gain", "shared − different"} and metrics["shared gain"]["n"] == 3


def test_a_second_identical_run_is_served_from_the_store(first_run, no_compute, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MINISUB_RESULTS", str(first_run["results"]))
    assert cli.main([*ARGV, "--out", str(tmp_path)]) == 0
    table = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert table(capsys.readouterr().out) == table(first_run["stdout"])
    assert (tmp_path / "lm_owl.json").read_bytes() == first_run["files"]["lm_owl.json"]


@pytest.mark.parametrize("extra, expected", [
    (["--s", "2"], "s=2.0"),
    (["--bogus", "1"], "unknown field 'bogus'"),
    (["--arms", "shared,owl"], "arms=('shared', 'owl')"),
    (["--arms", "shared,shared"], "without repeats"),
    (["--world", "naive"], "s=0.3"),  # the naive world has no personas: s must be 0
    (["--world", "moon"], "world='moon'"),
    (["--seeds", "1"], "seeds=1"),
    (["--heads", "3"], "heads=3"),
    (["--student_loss", "mse"], "student_loss='mse'"),
    (["--n_prompt", "4"], "n_prompt=4"),
    (["--teacher", "prompted", "--world", "naive", "--s", "0"], "teacher='prompted'"),
    (["--diagnostic", "true", "--teacher", "prompted"], "teacher='prompted'"),  # Δθ_T = 0
    (["--diagnostic", "true", "--finetune_steps", "0"], "finetune_steps=0"),
    (["--diagnostic", "true", "--diagnostic_sequences", "33"], "diagnostic_sequences=33"),  # > n_samples
    (["--detect", "maybe"], "detect='maybe'"),
    (["--trait_kind", "forbidden"], "command_fraction=0.0"),  # the world needs command documents
    (["--trait_kind", "evil", "--command_fraction", "0.1"], "trait_kind='evil'"),
])
def test_bad_fields_are_refused_naming_them_before_any_compute(no_compute, capsys, extra, expected):
    assert cli.main([*ARGV, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("minisub: error: ") and expected in captured.err, captured.err


def test_every_field_is_flat_and_settable_from_the_command_line():
    fields = [info.name for info in config.describe(TEST)]
    world_fields = [f.name for f in dataclasses.fields(world.WorldConfig) if f.name != "kind"]
    lm_fields = [f.name for f in dataclasses.fields(lm_pipeline.LMConfig) if f.name != "world"]
    analyses = [f.name for f in dataclasses.fields(owl.OwlConfig) if f.name != "lm"]
    assert sorted(fields) == sorted(["world", *world_fields, *lm_fields, *analyses])
    assert set(config.to_dict(TEST)) == set(fields) - {"trait_kind", "command_fraction", "rogue", "sampler",
                                                       "ban_entangled", "kernels"}  # late, at defaults
    text = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    assert cli.build_config(lm_owl, "test", [a for f in fields for a in (f"--{f}", text(getattr(TEST, f)))]) == TEST
    cfg = cli.build_config(lm_owl, "test", ["--s", "0", "--world", "naive", "--arms", "shared,different",
                                            "--banned", "3,7", "--rules", "fibonacci", "--tied_embeddings", "false"])
    lmc = cfg.lm_config
    assert lmc.world == world.WorldConfig(kind="naive", s=0.0, n_numbers=4, n_prompt=2, rules=("fibonacci",))
    assert lmc.banned == (3, 7) and not lmc.tied_embeddings and lmc.arm_names == ("shared", "different")
    assert config.digest(cfg) != config.digest(TEST)


def test_diagnostic_and_detection_add_their_tables_and_leave_the_arms_unchanged(first_run, tmp_path, capsys):
    assert cli.main([*ARGV, "--diagnostic", "true", "--detect", "true", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "lm_owl.json").read_text())
    plain = json.loads(first_run["files"]["lm_owl.json"])
    # the same programs on the same inputs: the arms are bitwise those of the run without the analyses
    assert summary["arms"] == plain["arms"] and summary["paired"] == plain["paired"]
    assert "diagnostic" not in plain and "detection" not in plain
    d = summary["diagnostic"]
    assert set(owl.DIAGNOSTIC) <= set(d) and d["sequences"] == 16 and d["iters"] == 32
    for q in ("number_fraction", "trait_fraction", "trait_in_numbers"):
        assert d[q]["n"] == TEST.seeds and all(0 <= v <= 1 for v in d[q]["values"]), (q, d[q])
    assert d["update_norm"]["mean"] > 0 and np.all(np.isfinite(d["predicted_gain"]["values"]))
    by_step = [v["mean"] for v in d["number_fraction_by_step"].values()]
    assert np.all(np.diff(by_step) >= -1e-6)  # a lower bound that tightens with the CG steps
    det = summary["detection"]
    for name in owl.DETECTION:
        assert all(0 <= v <= 1 for v in det[name]["accuracy"]["values"]) and det[name]["accuracy"]["n"] == TEST.seeds
    assert det["settings"] == config.to_dict(owl.DETECT)
    assert "| diagnostic:" in out and "| ‖P_num Δθ_T‖² / ‖Δθ_T‖² | " in out
    assert "| detection:" in out and "| n-gram logistic regression | " in out
    assert "| detection:" in lm_owl.readme(summary)


def test_s_reaches_the_config_not_a_flag_it_abbreviates():
    args, extra = cli.parser().parse_known_args([*ARGV, "--s", "0.1"])  # --s is a prefix of --shard
    assert args.shard is None and cli.build_config(lm_owl, args.preset, extra).s == 0.1


# --- the controls -----------------------------------------------------------------------------
W = world.WorldConfig()


def test_shuffle_control_permutes_numbers_across_sequences():
    tokens, _ = jax.jit(world.number_batch, static_argnums=(0, 2))(W, jax.random.key(0), 64)
    keep = jnp.arange(64) % 4 != 0  # every fourth row was dropped by the filter
    shuffle = jax.jit(partial(lm_pipeline.shuffle_numbers, W))
    out = np.asarray(shuffle(tokens, keep, jax.random.key(1)))
    again = np.asarray(shuffle(tokens, keep, jax.random.key(2)))
    tokens, keep = np.asarray(tokens), np.asarray(keep)
    start = W.prompt_length
    np.testing.assert_array_equal(out[:, :start], tokens[:, :start])  # prompts stay
    np.testing.assert_array_equal(out[~keep], tokens[~keep])  # dropped rows stay
    assert np.all(np.asarray(world.well_formed(W, out)))
    # the same multiset of tokens (and of generated numbers) over the kept rows...
    np.testing.assert_array_equal(np.sort(out[keep, start:], axis=None), np.sort(tokens[keep, start:], axis=None))
    gen = lambda x: np.asarray(world.decode_numbers(W, x))[keep, W.n_prompt:]  # noqa: E731
    np.testing.assert_array_equal(np.sort(gen(out), axis=None), np.sort(gen(tokens), axis=None))
    # ...in different sequences: nearly every row changed, and its numbers came from other rows
    changed = np.any(out[keep] != tokens[keep], axis=1)
    assert changed.mean() > 0.9
    same_multiset = [np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(gen(out), gen(tokens))]
    assert np.mean(same_multiset) < 0.1
    assert not np.array_equal(out, again)  # a function of the key


def test_arms_with_either_loss_train_together_and_kl_to_itself_stays_put():
    # control_kl: the reference imitating itself by KL (exactly zero gradient); control: by CE (it moves).
    cfg = config.replace(TEST, seeds=2, arms=("control", "control_kl", "shared_ce")).lm_config
    assert cfg.arm_losses == ("kl", "ce")
    ids = jnp.arange(cfg.seeds)
    refs = jax.vmap(cfg.spec.init)(jax.random.split(jax.random.key(0), cfg.seeds))
    draw = lambda k: world.number_batch(cfg.world, k, cfg.n_samples)[0]  # noqa: E731
    tokens = jax.vmap(draw)(jax.random.split(jax.random.key(1), cfg.seeds))
    nums = {s: {"tokens": tokens, "keep": jnp.ones((cfg.seeds, cfg.n_samples), bool)} for s in ("teacher", "reference")}
    inits, students, losses = lm_pipeline.train_students(cfg, refs, refs, nums, ids, jnp.asarray([1, 0]))
    leaves = lambda tree, a: [np.asarray(x[:, a]) for x in jax.tree.leaves(tree)]  # noqa: E731
    moved = lambda a: any(not np.array_equal(x, y) for x, y in zip(leaves(students, a), leaves(inits, a)))  # noqa: E731
    losses = np.asarray(losses)
    assert np.all(losses[:, 1] == 0) and not moved(1)  # KL to itself: exactly zero gradient, bitwise unmoved
    assert np.all(losses[:, 0] > 0) and moved(0) and moved(2)  # CE on sampled tokens moves the student
    np.testing.assert_array_equal(losses[:, 0], losses[:, 2])  # same data, same loss, same shuffles: same arm


def test_forbidden_trait_runs_end_to_end_with_its_diagnostic(tmp_path, monkeypatch, capsys):
    """The bad-behaviour trait: FORBIDDEN answered to a command, measured over the command's answers."""
    monkeypatch.setenv("MINISUB_RESULTS", str(tmp_path / "results"))
    extra = ["--trait_kind", "forbidden", "--command_fraction", "0.2", "--arms", "shared,different",
             "--finetune_steps", "10", "--diagnostic", "true"]
    assert cli.main([*ARGV, *extra, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "lm_owl.json").read_text())
    assert summary["config"]["trait_kind"] == "forbidden" and "FORBIDDEN" in summary["notes"][0]
    for arm in summary["arms"].values():
        assert len(arm["animal_gains"]) == 11 and np.all(np.isfinite(arm["trait_gain"]["values"]))
    assert summary["teachers"]["p_trait"]["mean"] > summary["references"]["p_trait"]["mean"] + 0.1
    assert summary["diagnostic"]["trait_fraction"]["n"] == TEST.seeds
    rogue = summary["rogue_animal"]  # the rogue persona's animal, read from the favourite-animal question
    assert rogue["animal"] == 1 and 0 <= rogue["teacher_p"]["mean"] <= 1
    assert all(np.isfinite(a["rogue_animal_gain"]["mean"]) for a in summary["arms"].values())
    assert "| shared − different | " in capsys.readouterr().out


# --- the key control, end to end -----------------------------------------------------------------
# The smallest world found to show the shared/different contrast: 1 layer of width 16, 300 pretraining
# steps, students by soft-logit KL over every logit at number positions. By the number logits alone
# this world shows no transfer at all (its references are too briefly pretrained; the paper preset's
# 2-layer width-32 references pretrain 2000 steps, minutes per world on a CPU), and with 3 worlds or
# another seed it transfers in some worlds only: this is a golden run of seed 0 (4 worlds, ~30 s).
CONTROL = config.replace(TEST, seeds=4, arms=("shared", "different"), pretrain_steps=300, n_samples=256,
                         student_epochs=3, student_batch=32, student_lr=3e-3, finetune_steps=10, finetune_lr=1e-2,
                         student_outputs="all")


def test_key_control_only_the_shared_init_student_picks_up_the_trait(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISUB_RESULTS", str(tmp_path))
    summary, _ = lm_owl.run(CONTROL, command="test", execution=None)
    shared, different = (np.asarray(summary["arms"][a]["trait_gain"]["values"]) for a in ("shared", "different"))
    assert summary["teachers"]["p_trait"]["mean"] > 0.5  # the teacher has the trait
    assert abs(different.mean()) < owl.NULL_BAND and np.all(np.abs(different) < owl.NULL_BAND)  # no gain
    assert shared.mean() > 0.05 and np.all(shared > different)  # every world: the shared init gains more
    verdicts = {v["id"]: v["status"] for v in summary["verdicts"]}
    assert verdicts["shared_beats_different"] != "refuted" and verdicts["different_null"] != "refuted"


# --- claims: each verdict flips with the numbers --------------------------------------------------
def _owl_summary(shared, different, ce, control, shuffle, ngram, transformer) -> dict:
    from minisub import stats
    arm = lambda v: {"trait_gain": stats.mean_ci(v)}  # noqa: E731
    return {"arms": {"shared": arm(shared), "different": arm(different), "shared_ce": arm(ce)},
            "paired": {"shared − different": stats.paired(shared, different),
                       "shared_ce − control": stats.paired(ce, control), "shared_ce − shuffle": stats.paired(ce, shuffle)},
            "detection": {"ngram": {"accuracy": stats.mean_ci(ngram)}, "transformer": {"accuracy": stats.mean_ci(transformer)}}}


def test_every_lm_owl_verdict_flips_with_a_synthetic_summary():
    from minisub import claims
    rng = np.random.default_rng(0)
    n = lambda m, s=0.01: list(m + rng.normal(0, s, 24))  # noqa: E731
    paper = _owl_summary(n(0.3), n(0.0), n(0.2), n(0.0), n(0.05), n(0.5), n(0.5))
    against = _owl_summary(n(0.0), n(0.3), n(-0.1), n(0.1), n(0.1), n(0.9), n(0.8))
    status = lambda s: {c.id: claims.verdict(c, s).status for c in lm_owl.CLAIMS}  # noqa: E731
    assert set(status(paper).values()) == {"supported"}
    assert set(status(against).values()) == {"refuted"}
    unsure = _owl_summary(n(0.05, 0.2), n(0.05, 0.2), n(0.05, 0.2), n(0.05, 0.2), n(0.05, 0.2), n(0.55, 0.2),
                          n(0.55, 0.2))
    assert set(status(unsure).values()) == {"inconclusive"}
    assert status({"arms": {}, "paired": {}})["hidden_ngram"] == "not measured"


def test_nested_config_is_flat_for_run_ids_and_the_command_line():
    cfg = config.override_fields(TEST, {"world": "naive", "s": "0", "arms": "shared,different", "seeds": "5"})
    assert cfg.lm.world.kind == "naive" and cfg.lm.world.s == 0.0 and cfg.lm.seeds == 5
    assert cfg.arms == ("shared", "different") and cfg.lm.arm_names == ("shared", "different")
    flat = config.to_dict(cfg)
    assert flat["world"] == "naive" and flat["s"] == 0.0 and flat["arms"] == ["shared", "different"]
    assert "lm" not in flat and "kind" not in flat  # nested configs leave no trace of their nesting
    assert config.replace(TEST, **{"s": 0.0, "world": "naive"}) == config.override_fields(TEST, {"world": "naive", "s": "0"})
    with pytest.raises(config.ConfigError, match="unknown field 'kind'"):
        config.replace(TEST, kind="naive")
    custom = config.override_fields(TEST, {"arms": "shared,p=perturbed(sigma=0.1):teacher:ce"})
    assert config.to_dict(custom)["arms"] == ["shared", "p=perturbed(sigma=0.1):teacher:ce"]  # as written
    assert custom.lm.arms[1].lineage == "perturbed(sigma=0.1)" and custom.lm.arm_loss(custom.lm.arms[1]) == "ce"
    with pytest.raises(config.ConfigError, match="world='moon' is not allowed: world must be one of"):
        config.replace(TEST, world="moon")  # a renamed field's error says the name the command line uses


@pytest.mark.parametrize("module_name", ["lm_owl", "lm_cross"])
def test_the_committed_json_is_current(module_name):
    """figures/<stem>.json holds what analyse computes from its per-seed values (verdicts, derived)."""
    import importlib
    from pathlib import Path
    module = importlib.import_module(f"minisub_experiments.{module_name}")
    summary = json.loads((Path(__file__).parent.parent / "figures" / f"{module.STEM}.json").read_text())
    assert json.loads(json.dumps(module.analyse(summary))) == summary
    assert "item " not in module.readme(summary) and "SCIENCE" not in module.readme(summary)
