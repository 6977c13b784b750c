"""lm-lineages: lineage points of the toy LM, grouped into multi-arm lm-owl programs and cached point by point."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from minisub import cli, config, registry, stats
from minisub.lm import owl
from minisub.run import lm_atlas, runner, sweep
from minisub_experiments import lm_lineages as L

TEST, PAPER = L.PRESETS["test"], L.PRESETS["paper"]
EX = runner.Execution(experiment=L.NAME, progress=False)
ENTRY = "[minisub.experiments]\nlm-lineages = minisub_experiments.lm_lineages\n"


def _points(cfg) -> list[sweep.Point]:
    return [p for ps in cfg.points().values() for p in ps]


def _records(summary: dict) -> dict[str, dict]:
    return {r["id"]: r for f in summary["families"].values() for r in f["points"]}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """lm-lineages registered the way ``pip install`` registers it (for a checkout installed before it existed)."""
    root = tmp_path_factory.mktemp("entry")
    info = root / "minisub_lm_lineages-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: minisub-lm-lineages\nVersion: 0\n")
    (info / "entry_points.txt").write_text(ENTRY)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, registered):
    """`minisub run lm-lineages --preset test --out OUT` in a fresh results store, every program and put recorded."""
    results, out = tmp_path_factory.mktemp("lin-results"), tmp_path_factory.mktemp("lin-out")
    programs, puts, stdout = [], [], io.StringIO()
    real_run, real_put = owl.run, sweep.PointCache.put
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("MINISUB_RESULTS", str(results))
        mp.setattr(owl, "run", lambda cfg, **kw: programs.append(cfg.lm.arm_names) or real_run(cfg, **kw))
        mp.setattr(sweep.PointCache, "put",
                   lambda self, rec: puts.append((len(programs), rec["id"])) or real_put(self, rec))
        rc = cli.main(["run", L.NAME, "--preset", "test", "--no-progress", "--out", str(out)])
    return {"rc": rc, "stdout": stdout.getvalue(), "results": results, "out": out, "programs": programs, "puts": puts,
            "summary": json.loads((out / f"{L.STEM}.json").read_text())}


@pytest.mark.slow
def test_the_test_preset_runs_end_to_end_in_two_programs_and_caches_point_by_point(first_run):
    assert first_run["rc"] == 0 and registry.experiments()[L.NAME] is L
    assert {p.name for p in first_run["out"].iterdir()} == {"lm_lineages.json", "lm_lineages.png", "lm_lineages.pdf"}
    # one lm-owl program per chunk, shared and different in each; every point cached once, right after its program
    assert first_run["programs"] == [("shared", "different", "control", "a0.5"),
                                     ("shared", "different", "attention0.1", "permuted")]
    ids = [sweep.point_id(p) for p in _points(TEST)]
    assert [pid for _, pid in first_run["puts"]] == ids
    assert [n for n, _ in first_run["puts"]] == [1, 1, 1, 1, 2, 2]
    cache = L.point_cache(first_run["results"])
    assert sorted(p.stem for p in cache.directory.glob("*.json")) == sorted(ids)
    summary = first_run["summary"]
    assert [r["value"] for r in summary["families"]["baselines"]["points"]] == ["shared", "different", "control"]
    for r in _records(summary).values():
        assert r["n_seeds"] == 3 and len(r["trait_gain"]["values"]) == 3
        assert set(r["paired"]) == {"shared", "different"} - {r["value"]}
        assert set(r["geometry"]) >= {"update_cos", "dist_teacher", "travel"}
    # paired differences are the arm's per-world gains minus its own program's baselines'
    for r in _records(summary).values():
        for b, d in r["paired"].items():
            mine, theirs = np.asarray(r["trait_gain"]["values"]), np.asarray(r["baselines"][b]["trait_gain"]["values"])
            np.testing.assert_allclose(d["values"], mine - theirs, atol=1e-7)
    # the permuted init computes the reference's function: its start distance is not zero, its gain is the shared one's
    perm = summary["families"]["permuted"]["points"][0]
    assert perm["geometry"]["dist_init"]["mean"] > 1.0
    np.testing.assert_allclose(perm["paired"]["shared"]["values"], 0.0, atol=1e-4)
    assert "control" in first_run["stdout"] and "attention: 0.1" in first_run["stdout"]


@pytest.mark.slow
def test_a_rerun_reads_every_point_from_the_cache_and_computes_nothing(first_run, monkeypatch):
    monkeypatch.setenv("MINISUB_RESULTS", str(first_run["results"]))
    monkeypatch.setattr(owl, "run", lambda *a, **k: pytest.fail("a cached point was recomputed"))
    summary, _ = L.run(TEST, command=first_run["summary"]["command"], execution=EX)
    assert _records(summary) == _records(first_run["summary"])


@pytest.mark.slow
def test_a_killed_sweep_resumes_point_by_point_with_identical_records(first_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MINISUB_RESULTS", str(tmp_path))
    real, calls = owl.run, []

    def killed(cfg, **kw):
        calls.append(cfg.lm.arm_names)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed during the second program")
        return real(cfg, **kw)

    monkeypatch.setattr(owl, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        L.run(TEST, command="c", execution=EX)
    cached = {p.stem for p in L.point_cache(tmp_path).directory.glob("*.json")}
    assert cached == {sweep.point_id(p) for p in _points(TEST)[:4]}  # the first program's points
    monkeypatch.setattr(owl, "run", lambda cfg, **kw: calls.append(cfg.lm.arm_names) or real(cfg, **kw))
    summary, _ = L.run(TEST, command="c", execution=EX)
    assert calls[2:] == [("shared", "different", "attention0.1", "permuted")]  # the same arms as before the kill
    assert _records(summary) == _records(first_run["summary"])


@pytest.mark.slow
def test_a_point_run_alone_matches_its_grouped_record(first_run, tmp_path, monkeypatch):
    """Alone, a point runs in a program of three arms (with the baselines), grouped in one of four. The vmapped
    batch of KL students then differs in size, and XLA's batched kernels may round differently: equal to float
    rounding, not bitwise (the interpolated point here happens to match bitwise, the perturbed one does not)."""
    monkeypatch.setenv("MINISUB_RESULTS", str(first_run["results"]))  # the stored references: no pretraining
    point = _points(TEST)[4]
    assert point.series == "attention"
    (alone,) = sweep.run([point], sweep.PointCache(tmp_path / "alone"), None, EX,
                         programs=lm_atlas.programs("test", TEST.max_arms))
    grouped = _records(first_run["summary"])[alone["id"]]
    assert alone["arm_index"] == 2 and alone["program"]["arms"] != grouped["program"]["arms"]
    for metric in ("trait_gain", "number_loss_change"):
        np.testing.assert_allclose(alone[metric]["values"], grouped[metric]["values"], rtol=1e-4, atol=1e-6)
    for b in ("shared", "different"):
        np.testing.assert_allclose(alone["paired"][b]["values"], grouped["paired"][b]["values"], atol=1e-6)
    for q, v in alone["geometry"].items():
        np.testing.assert_allclose(v["values"], grouped["geometry"][q]["values"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_figure_and_readme_render_from_the_stored_summary(first_run):
    summary = first_run["summary"]
    assert json.loads(json.dumps(L.analyse(json.loads(json.dumps(summary))))) == summary
    (fig,) = L.figures(summary).values()
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    text = L.readme(summary)
    assert text.startswith(f"## {L.NAME}") and "not a part of its own" in text and "| claim |" in text
    assert "minisub figures lm-lineages" in text and "MLP atlas" in text


# --- without compute: the plan, the ids, the config ---------------------------------------------------------

def test_the_paper_points_run_as_three_programs_with_both_baselines_in_each():
    pts = _points(PAPER)
    assert len(pts) == 3 + 5 + 4 * 4 + 1
    plan = sweep.arm_groups(pts, PAPER.max_arms)
    assert [len(cfg.arms) for cfg, _ in plan] == [10, 10, 9]
    read = [p for _, readers in plan for ps in readers for p in ps]
    assert sorted(map(sweep.point_id, read)) == sorted(map(sweep.point_id, pts))  # every point read exactly once
    for k, (cfg, readers) in enumerate(plan):
        assert cfg.arm_names[:2] == ("shared", "different") and cfg.seeds == 24 and cfg.world.s == 0.3
        assert cfg.teacher == "finetuned" and all(a.source == "teacher" for a in cfg.arms if a.name != "control")
        assert all(not readers[j] for j in (0, 1)) == (k > 0)  # the baseline points are read from the first only
    # every program is lm-owl's paper preset, diagnostic and detection off, and only the arms changed
    fields = sweep.changed_fields(owl.PRESETS["paper"], lm_atlas.owl_config(plan[0][0]))
    assert set(fields) == {"arms", "diagnostic", "detect"} and not fields["diagnostic"] and not fields["detect"]
    assert lm_atlas.command("paper", plan[0][0]).startswith("minisub run lm-owl --preset paper")


PINNED = {  # point ids of the paper preset: changing one orphans its cached and committed record
    ("baselines", "shared"): "7209245fc4da9a4a",
    ("baselines", "different"): "ff6a06160e4c9912",
    ("baselines", "control"): "ebeeea6cf277e26c",
    ("interpolated", 0.5): "3726c7974cc94492",
    ("interpolated", 0.99): "d8f0d356ae46ecf7",
    ("perturbed", "embeddings", 0.3): "9fb3d5b56a092076",
    ("perturbed", "attention", 0.1): "0517f6476e4b288b",
    ("perturbed", "mlp", 0.01): "4d30be2427fac19b",
    ("perturbed", "all", 0.05): "4c1b14dbbb8e4b4b",
    ("permuted",): "021639201c9310dd",
}


def test_paper_point_ids_are_pinned():
    ids = {}
    for p in _points(PAPER):
        key = {"baselines": (p.family, p.value), "interpolated": (p.family, p.value),
               "perturbed": (p.family, p.series, p.value)}.get(p.family, (p.family,))
        ids[key] = sweep.point_id(p)
    assert {k: ids[k] for k in PINNED} == PINNED
    assert len(set(ids.values())) == len(ids)


def test_the_config_refuses_parts_the_references_do_not_have():
    with pytest.raises(config.ConfigError, match="parts=.*no separate 'unembedding'"):
        config.replace(PAPER, parts=("unembedding",))
    assert "unembedding" in L.PRESETS["untied"].parts and not L.PRESETS["untied"].lm().tied_embeddings
    for bad, match in (({"alphas": (1.0,)}, "alphas="), ({"sigmas": (0.0,)}, "sigmas="), ({"max_arms": 2}, "max_arms="),
                       ({"base": "huge"}, "base=")):
        with pytest.raises(config.ConfigError, match=match):
            config.replace(PAPER, **bad)


# --- claims on constructed numbers: each verdict flips with the numbers ----------------------------------------

WIDTH = {"embeddings": 0.05, "attention": 0.3, "mlp": 0.1, "all": 0.04}  # σ where a part's constructed gain fades


def _gain(p: sweep.Point) -> float:
    if p.family == "baselines":
        return {"shared": 0.25, "different": 0.02, "control": 0.0}[p.value]
    if p.family == "interpolated":
        return 0.02 + 0.23 * p.value ** 8
    if p.family == "perturbed":
        return 0.02 + 0.23 * np.exp(-(p.value / WIDTH[p.series]) ** 2)
    return 0.25


def _synthetic(gain=_gain, loss=lambda p: 1.6, seed=0) -> dict:
    """Every paper point with constructed per-world numbers, shaped as ``lm_atlas.record`` stores them."""
    atlas = json.loads(L.ATLAS.read_text())
    return L.analyse({"experiment": L.NAME, "command": L.PAPER_COMMAND, "config": config.to_dict(PAPER),
                      "recipe": config.to_dict(lm_atlas.owl_config(PAPER.lm())) | {"arms": None}, "n_seeds": 24,
                      "families": _families(PAPER, gain, loss, seed), "mlp": L.lr.mlp_comparison(atlas)})


def _families(cfg, gain, loss, seed) -> dict:
    rng = np.random.default_rng(seed)
    base = {"shared": 0.25 + 0.03 * rng.standard_normal(24), "different": 0.02 + 0.03 * rng.standard_normal(24)}
    fams = {}
    for family, pts in cfg.points().items():
        rows = []
        for p in pts:
            own = base.get(p.value, gain(p) + 0.02 * rng.standard_normal(24))
            rows.append({"id": sweep.point_id(p), "family": family, "series": p.series, "value": p.value,
                         "n_seeds": 24, "trait_gain": stats.mean_ci(own),
                         "paired": {b: stats.paired(own, v) for b, v in base.items() if b != p.value},
                         "baselines": {b: {"trait_gain": stats.mean_ci(v), "number_loss_after": {"mean": 1.6}}
                                       for b, v in base.items()},
                         "number_loss_after": {"mean": loss(p)}, "number_loss_change": stats.mean_ci(rng.normal(size=24)),
                         "geometry": {q: stats.mean_ci(rng.random(24)) for q in lm_atlas.GEOMETRY}})
        fams[family] = {"command": "c", "n_seeds": 24, "points": rows, "missing_points": 0}
    return fams


def _status(summary: dict) -> dict[str, str]:
    return {v["id"]: v["status"] for v in summary["verdicts"]}


def test_each_lineage_verdict_comes_from_the_numbers():
    v = _status(_synthetic())
    assert v["shared"] == v["alpha_0.99"] == v["permuted"] == v["permuted_as_shared"] == "supported"
    assert v["alpha_0.5"] == "refuted" and v["alpha_trend"] in ("supported", "inconclusive")
    assert v["attention_0.3"] == "supported" and v["embeddings_0.3"] == "refuted"  # attention tolerates more noise
    assert v["embeddings_stops"] == v["all_stops"] == "supported" and v["attention_stops"] == "refuted"
    assert v["mlp_keeps"] == "supported" and v["control"] == "supported"
    flipped = _status(_synthetic(gain=lambda p: 0.02 if p.family == "permuted" else _gain(p)))
    assert flipped["permuted"] == flipped["permuted_as_shared"] == "refuted"
    WIDTH["attention"] = 0.02
    try:
        assert _status(_synthetic())["attention_0.3"] == "refuted"
    finally:
        WIDTH["attention"] = 0.3


def test_a_number_task_loss_three_times_the_baselines_names_a_confound_and_a_missing_point_is_not_measured():
    summary = _synthetic(loss=lambda p: 4.8 if p.family == "interpolated" else 1.6)
    verdict = {v["id"]: v for v in summary["verdicts"]}["alpha_0.99"]
    assert verdict["status"] == "confounded" and "task losses differ" in verdict["detail"]
    summary["families"].pop("permuted")
    again = _status(L.analyse(summary))
    assert again["permuted"] == "not measured" and again["shared"] == "supported"


def test_the_figure_and_readme_render_from_a_constructed_paper_summary():
    summary = _synthetic()
    (fig,) = L.figures(summary).values()
    assert len(fig.axes) == 6 and fig.axes[1].get_xscale() == "log"
    text = L.readme(summary)
    assert "- attention: σ = 0.01 supported, σ = 0.05 supported, σ = 0.1 supported, σ = 0.3 supported" in text
    assert "MLP atlas ([atlas.json](atlas.json)): hidden:" in text and text.count("| perturbed |") == 16
    half = summary["derived"]["half_sigma"]
    assert half["embeddings"] < half["mlp"] < half["attention"]


def test_the_baseline_points_are_compared_with_lm_owls_committed_run_of_the_same_recipe():
    recipe = config.to_dict(lm_atlas.owl_config(PAPER.lm())) | {"arms": None}
    committed = json.loads(L.LM_OWL.read_text())
    assert set(L.lr.lm_owl_arms(committed, recipe)) == {"shared", "different", "control"}  # the paper recipe
    assert L.lr.lm_owl_arms(committed, config.to_dict(lm_atlas.owl_config(TEST.lm())) | {"arms": None}) == {}
    summary = _synthetic()
    shared = summary["families"]["baselines"]["points"][0]["trait_gain"]
    summary["lm_owl"] = {"shared": {**shared, "values": [v + 1e-6 for v in shared["values"]]}}
    again = L.analyse(summary)
    assert again["derived"]["lm_owl_rerun"]["shared"]["max"] == pytest.approx(1e-6, rel=1e-3)
    assert again["derived"]["lm_owl_rerun"]["shared"]["paired"]["mean"] == pytest.approx(-1e-6, rel=1e-3)
    assert "rerun lm-owl's paper recipe" in L.readme(again)


def test_the_untied_companion_has_its_own_verdicts_figure_row_and_is_kept_when_written(tmp_path):
    """The untied references' points (perturbed parts, 'unembedding' among them) are read under 'untied', judged
    by the same claims, drawn in a third row, and kept from the written JSON when this machine has no copy."""
    u = L.PRESETS["untied"]
    assert list(u.points()) == ["baselines", "perturbed"] and u == PAPER.untied()
    WIDTH["unembedding"] = 0.02  # a part whose constructed gain fades first
    try:
        summary = _synthetic()
        summary["untied"] = {"config": config.to_dict(u), "n_seeds": 24, "families": _families(u, _gain, lambda p: 1.6, 1)}
    finally:
        del WIDTH["unembedding"]
    s = L.analyse(summary)
    v = _status(s)
    assert v["untied_unembedding_stops"] == v["untied_attention_0.3"] == v["untied_shared"] == "supported"
    assert v["untied_attention_stops"] == "refuted"
    assert v["alpha_0.99"] == "supported" and "untied_alpha_0.99" not in v  # the companion has no interpolated family
    assert "### Untied references" in L.readme(s) and "- unembedding: σ = 0.01 supported" in L.readme(s)
    assert len(L.figures(s)["lm_lineages"].axes) == 9
    path = tmp_path / "lm_lineages.json"
    path.write_text(json.dumps(s))
    alone = {k: v for k, v in s.items() if k not in ("untied", "verdicts", "derived")}
    kept = L.merge_written(alone, path)
    assert kept["untied"]["families"] == s["untied"]["families"] and _status(kept) == v
