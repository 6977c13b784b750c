"""lm-regime from the command line (test preset): one lm-owl run per setting, shared pretraining, merge."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from minisub import registry
from minisub_experiments import lm_owl, lm_regime
from minisub import cli
from minisub.lm import pipeline as lm_pipeline
from minisub.config import ConfigError

TEST = lm_regime.PRESETS["test"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """`minisub run lm-regime --preset test --out OUT` in a fresh store, counting the pretrainings."""
    results, out = tmp_path_factory.mktemp("regime-results"), tmp_path_factory.mktemp("regime-out")
    calls, stdout = [], io.StringIO()
    pretrain = lm_pipeline.pretrain
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("MINISUB_RESULTS", str(results))
        mp.setattr(lm_pipeline, "pretrain", lambda cfg, *a, **k: calls.append(cfg.world.s) or pretrain(cfg, *a, **k))
        rc = cli.main(["run", "lm-regime", "--preset", "test", "--no-progress", "--out", str(out)])
    return {"rc": rc, "stdout": stdout.getvalue(), "results": results, "out": out, "pretrained": calls,
            "summary": json.loads((out / "lm_regime.json").read_text())}


def test_registered_and_the_paper_base_is_lm_owls_paper_run():
    assert registry.experiments()["lm-regime"] is lm_regime
    assert lm_regime.PRESETS["paper"].owl("base") == lm_owl.PRESETS["paper"]


def test_run_writes_every_setting_with_its_paired_difference(first_run):
    assert first_run["rc"] == 0
    s = first_run["summary"]
    assert list(s["settings"]) == list(TEST.settings) and s["missing_settings"] == []
    for name, row in s["settings"].items():
        assert row["n_seeds"] == TEST.seeds
        assert set(row["gain"]) == set(lm_owl.DEFAULT_ARMS)
        d = row["paired"][lm_regime.KL_PAIR]
        shared, different = row["gain"]["shared"]["values"], row["gain"]["different"]["values"]
        assert d["values"] == pytest.approx([a - b for a, b in zip(shared, different)])
        assert row["command"].startswith("minisub run lm-owl --preset test --seeds 3")
    assert "diagnostic" in s["settings"]["base"] and "diagnostic" not in s["settings"]["prompted"]
    # the signature alignment: a prompted teacher's number shift is the trait persona's signature
    assert all(set(row["alignment"]) >= set(lm_regime.ALIGNMENT) for row in s["settings"].values())
    assert "r_cos_own_shared_gain" not in s["settings"]["prompted"]["alignment"]  # cos_own is 1 in every world
    assert s["settings"]["prompted"]["alignment"]["cos_own"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert abs(s["settings"]["base"]["alignment"]["cos_own"]["mean"]) < 1
    assert -1 <= s["settings"]["base"]["alignment"]["r_cos_own_shared_gain"] <= 1
    assert {p.name for p in first_run["out"].iterdir()} == {"lm_regime.json", "lm_regime.png", "lm_regime.pdf"}
    assert "shared − different (KL)" in first_run["stdout"]


def test_settings_that_share_a_world_pretrain_it_once(first_run):
    # base and prompted share the s = 0.3 world; s0 has its own
    assert sorted(first_run["pretrained"]) == [0.0, 0.3]


def test_merge_reads_the_store_and_names_missing_settings(first_run, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MINISUB_RESULTS", str(first_run["results"]))
    monkeypatch.setattr(lm_pipeline, "pretrain", lambda *a, **k: pytest.fail("merge trained"))
    monkeypatch.setattr(lm_pipeline, "make_numbers", lambda *a, **k: pytest.fail("merge trained"))
    rc = cli.main(["merge", "lm-regime", "--preset", "test", "--no-progress", "--out", str(tmp_path),
                   "--settings", "base,finetune30"])
    assert rc == 0
    s = json.loads((tmp_path / "lm_regime.json").read_text())
    assert list(s["settings"]) == ["base"] and s["missing_settings"] == ["finetune30"]
    assert s["settings"]["base"] == first_run["summary"]["settings"]["base"]
    assert "Not stored yet: finetune30" in capsys.readouterr().out


def test_merge_keeps_the_written_rows_of_settings_this_store_lacks(first_run, monkeypatch, capsys, tmp_path):
    """A map merged on another machine keeps the committed rows of the same runs, and only those."""
    written = json.loads((first_run["out"] / "lm_regime.json").read_text())
    base = written["settings"]["base"]
    written["settings"]["finetune30"] = {**base, "fields": lm_regime.SETTINGS["finetune30"][2]}  # as if run elsewhere
    written["settings"]["s0"]["fields"] = {"s": 0.5}  # another run under the same name: not kept
    (tmp_path / "lm_regime.json").write_text(json.dumps(written))
    monkeypatch.setenv("MINISUB_RESULTS", str(first_run["results"]))
    stored = first_run["results"] / "lm-owl"
    s0_dir = next(d for d in stored.iterdir() if json.loads((d / "config.json").read_text())["config"]["s"] == 0.0)
    complete = lm_regime.store.is_complete
    monkeypatch.setattr(lm_regime.store, "is_complete", lambda d: d != s0_dir and complete(d))  # no s0 here
    rc = cli.main(["merge", "lm-regime", "--preset", "test", "--no-progress", "--out", str(tmp_path),
                   "--settings", "base,finetune30,s0"])
    assert rc == 0
    s = json.loads((tmp_path / "lm_regime.json").read_text())
    assert list(s["settings"]) == ["base", "finetune30"] and s["missing_settings"] == ["s0"]
    assert s["settings"]["finetune30"]["kept_from"] == "lm_regime.json" and "kept_from" not in s["settings"]["base"]
    assert "kept from" in capsys.readouterr().out
    other_seeds = {**s, "n_seeds": 5, "missing_settings": ["finetune30"]}
    assert lm_regime.keep_written_rows(other_seeds, tmp_path / "lm_regime.json") == other_seeds


def test_readme_section_states_the_aim_and_the_s_curve(first_run):
    text = lm_regime.readme(first_run["summary"])
    assert "At s = 0 (no semantic channel)" in text and "Against s" in text
    assert "minisub figures lm-regime" in text


@pytest.mark.parametrize("extra, expected", [
    (["--settings", "base,nonsense"], "settings"),
    (["--base", "huge"], "base"),
    (["--seeds", "1"], "seeds"),
])
def test_bad_fields_are_refused_naming_them(extra, expected, monkeypatch):
    monkeypatch.setattr(lm_pipeline, "pretrain", lambda *a, **k: pytest.fail("computed before refusing"))
    with pytest.raises(ConfigError, match=expected):
        cli.build_config(lm_regime, "test", extra)


def _row(different: float, detection: float) -> dict:
    est = lambda m: {"mean": m, "ci95": 0.01, "n": 24}  # noqa: E731
    return {"gain": {lm_regime.KL_DIFFERENT: est(different)}, "detection": {"ngram": est(detection)}}


def test_the_s_curve_names_a_semantic_channel_only_where_other_inits_gain():
    closed = lm_regime._semantic_along_s([(0.0, _row(0.0, 0.52)), (1.0, _row(0.005, 0.63))])
    assert len(closed) == 1 and "no other-init student gains at any s" in closed[0] and "0.63 at s = 1" in closed[0]
    opened = lm_regime._semantic_along_s([(0.0, _row(0.0, 0.52)), (1.0, _row(0.2, 0.9))])
    assert "a semantic channel opens: other-init students gain at s = 1" in opened[0]
    assert lm_regime._semantic_along_s([(0.0, _row(0.0, 0.5))]) == []  # one point is no curve


def _aligned(own: float, donor: float, agreement: float = 0.5, gain: float = 0.1) -> dict:
    est = lambda m: {"mean": m, "ci95": 0.01, "n": 24}  # noqa: E731
    return {"gain": {lm_regime.KL_SHARED: est(gain)}, "alignment": {"cos_own": est(own), "cos_donor": est(donor), "signature_agreement": est(agreement),
                          "shift_norm": est(0.05), "signature_norm": est(0.4)}}


def test_the_alignment_finding_says_whether_the_shift_is_the_signature():
    apart = lm_regime._alignment_along_s([(0.0, _aligned(0.01, 0.0, 0.0)), (1.0, _aligned(0.1, 0.05, 0.8))], [])
    assert len(apart) == 1 and "|cos| is at most 0.05 (s = 1)" in apart[0] and "s = 1: +0.10 / +0.05" in apart[0]
    assert "agree up to +0.80 (s = 1)" in apart[0] and "only the shared init" not in apart[0]
    own = lm_regime._alignment_along_s([(0.3, _aligned(0.4, 0.1))], [])
    assert "from the teacher's own reference it reaches +0.40 (s = 0.3)" in own[0]
    along = lm_regime._alignment_along_s([(0.0, _aligned(0.0, 0.0)), (1.0, _aligned(0.6, 0.5))], [])
    assert "At s = 1 the shift points along" in along[0]
    prompted = {"label": "prompted teacher", **_aligned(1.0, 0.7)}
    lines = lm_regime._alignment_along_s([(0.3, _aligned(0.0, 0.0))], [prompted])
    assert "prompted teacher: its shift is the signature itself (cos +1.00)" in lines[1]
    assert lm_regime._alignment_along_s([(0.3, {})], [prompted]) == []  # nothing measured, nothing said
    along_gain = lm_regime._alignment_along_s([(s, _aligned(c, 0.0, gain=g)) for s, c, g in
                                               ((0.0, 0.1, 0.15), (0.3, 0.4, 0.25), (1.0, 0.1, 0.15))], [])
    assert "correlation r = +1.00 over the 3 values of s" in along_gain[1] and "goes with" in along_gain[1]
    within = [(s, _aligned(0.1, 0.0)) for s in (0.0, 0.3)]
    for (_, row), r in zip(within, (-0.2, 0.3)):
        row["alignment"]["r_cos_own_shared_gain"] = r
    line = lm_regime._alignment_along_s(within + [(1.0, _aligned(0.2, 0.0, gain=0.2))], [])[1]
    assert "world by world, the correlation is -0.20 to +0.30: the alignment does not say which" in line


def test_world_by_world_counts_and_sign_test_of_a_heavy_tailed_gain():
    est = lambda v: {"mean": float(np.mean(v)), "ci95": 0.1, "n": len(v), "values": v}  # noqa: E731
    shared = [0.0] * 6 + [0.001] * 14 + [0.05, 0.3, 0.8, 0.9]
    row = {"label": "bad", "gain": {lm_regime.KL_SHARED: est(shared), lm_regime.KL_DIFFERENT: est([0.0] * 24)}}
    line = lm_regime._world_by_world(row)[0]
    assert "above +0.02 in 4 of 24 worlds (largest +0.90, +0.80)" in line and "different init above +0.02 in 0" in line
    assert "shared > different in 18 worlds, < in 0 (two-sided sign test p = 7.6e-06)" in line
    assert "heavy-tailed" in line
    even = {"label": "even", "gain": {lm_regime.KL_SHARED: est([0.1] * 24), lm_regime.KL_DIFFERENT: est([0.0] * 24)}}
    assert "heavy-tailed" not in lm_regime._world_by_world(even)[0]
