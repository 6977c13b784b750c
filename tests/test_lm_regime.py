"""lm-regime from the command line (test preset): one lm-owl run per setting, shared pretraining, merge."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from minisub import registry
from minisub_experiments import lm_owl, lm_regime
from minisub import claims, cli, report, stats
from minisub.lm import owl
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import regime as regime_lib
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
        assert set(row["gain"]) == set(owl.DEFAULT_ARMS)
        d = row["paired"][lm_regime.KL_PAIR]
        shared, different = row["gain"]["shared"]["values"], row["gain"]["different"]["values"]
        assert d["values"] == pytest.approx([a - b for a, b in zip(shared, different)])
        assert row["command"].startswith("minisub run lm-owl --preset test --seeds 3")
    assert "diagnostic" in s["settings"]["base"] and "diagnostic" not in s["settings"]["prompted"]
    # the signature alignment: a prompted teacher's number shift is the trait persona's signature
    assert all(set(row["alignment"]) >= set(regime_lib.ALIGNMENT) for row in s["settings"].values())
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
    written["settings"]["finetune30"] = {**base, "fields": lm_regime.SETTINGS["finetune30"].fields}  # as if run elsewhere
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
    assert lm_regime.merge_written(other_seeds, tmp_path / "lm_regime.json") == other_seeds


def test_readme_section_states_verdicts_and_the_s_curve(first_run):
    text = lm_regime.readme(first_run["summary"])
    assert "| shared-init gain > 0.02 (verdict) |" in text and "Against s" in text
    assert "minisub figures lm-regime" in text and "aim at" not in text and "aim" not in first_run["summary"]
    assert [v["id"] for v in first_run["summary"]["verdicts"]] == [c.id for c in lm_regime.claims(first_run["summary"])]


@pytest.mark.parametrize("extra, expected", [
    (["--settings", "base,nonsense"], "settings"),
    (["--base", "huge"], "base"),
    (["--seeds", "1"], "seeds"),
])
def test_bad_fields_are_refused_naming_them(extra, expected, monkeypatch):
    monkeypatch.setattr(lm_pipeline, "pretrain", lambda *a, **k: pytest.fail("computed before refusing"))
    with pytest.raises(ConfigError, match=expected):
        cli.build_config(lm_regime, "test", extra)


def _est(values) -> dict:
    return stats.mean_ci(values)


def _synthetic(shared, different, detection=None) -> dict:
    """A one-setting map (the base) with the given per-world gains (and n-gram detection accuracies)."""
    row = {"label": "base row", "fields": {}, "n_seeds": len(shared),
           "gain": {"shared": _est(shared), "different": _est(different)},
           "paired": {"shared − different": stats.paired(shared, different)}}
    if detection is not None:
        row["detection"] = {"ngram": _est(detection)}
    return {"base": "paper", "n_seeds": len(shared), "settings": {"base": row}}


def _statuses(summary: dict) -> dict:
    return regime_lib.statuses(lm_regime.claims(summary), lm_regime.analyse(summary))["base row"]


def test_each_setting_verdict_flips_with_the_numbers():
    rng = np.random.default_rng(0)
    noise = lambda scale: list(rng.normal(0, scale, 24))  # noqa: E731
    paper = _statuses(_synthetic([0.3 + x for x in noise(0.02)], noise(0.01), [0.5 + x for x in noise(0.01)]))
    assert paper == {"shared": "supported", "different": "supported", "paired": "supported", "hidden": "supported"}
    gains = [0.3 + x for x in noise(0.02)]
    both = _statuses(_synthetic(gains, gains, [0.9] * 12 + [0.8] * 12))
    assert both == {"shared": "supported", "different": "refuted", "paired": "refuted", "hidden": "refuted"}
    none = _statuses(_synthetic(noise(0.001), noise(0.001)))
    assert none["shared"] == "refuted" and none["different"] == "supported" and "hidden" not in none
    wide = _statuses(_synthetic([0.0] * 20 + [0.6, 0.8, 0.9, 0.95], [0.0] * 24))  # a heavy tail: the mean is unsure
    assert wide["shared"] == "inconclusive" and wide["paired"] == "inconclusive"


def test_a_heavy_tailed_gain_is_described_by_median_counts_and_sign_test():
    shared = [0.0] * 6 + [0.001] * 14 + [0.05, 0.3, 0.8, 0.9]
    summary = _synthetic(shared, [0.0] * 24)
    row = summary["settings"]["base"]
    row["rogue_animal"] = {"reference_p": 0.1, "teacher_p": 0.2, "gain": {"shared": _est([0.01] * 24)}}
    d = regime_lib.derived(summary, 0.3)["derived"]["distributions"]["base"]
    assert d["shared"]["n_above"] == 4 and d["shared"]["median"] == pytest.approx(0.001)
    assert d["shared − different"]["n_positive"] == 18 and d["shared − different"]["n_negative"] == 0
    assert d["shared − different"]["sign_test_p"] == pytest.approx(2 * 0.5 ** 18)
    line = regime_lib.describe(regime_lib.derived(summary, 0.3), 0.3, report.pm)[-1]
    assert "median +0.001, above +0.02 in 4 of 24 worlds (different init: 0)" in line
    assert "positive in 18, negative in 0 (exact sign test p = 7.6e-06)" in line


def test_correlations_are_reported_with_n_p_and_interval():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=24), rng.normal(size=24)
    full, from_r = stats.correlation(x, y), stats.correlation_from_r(float(np.corrcoef(x, y)[0, 1]), 24)
    for k in ("r", "n", "p", "low", "high"):
        assert from_r[k] == pytest.approx(full[k], rel=1e-6), k
    rows = {}
    for s, cos, gain in ((0.0, 0.1, 0.15), (0.3, 0.4, 0.25), (1.0, 0.12, 0.14)):
        name = "base" if s == 0.3 else f"s{s:g}"
        rows[name] = {"label": name, "fields": {} if s == 0.3 else {"s": s}, "n_seeds": 24, "paired": {},
                      "gain": {"shared": {"mean": gain, "ci95": 0.01, "n": 24}},
                      "alignment": {**{q: {"mean": 0.05, "ci95": 0.01, "n": 24} for q in regime_lib.ALIGNMENT},
                                    "cos_own": {"mean": cos, "ci95": 0.01, "n": 24}, "r_cos_own_shared_gain": 0.2}}
    d = regime_lib.derived({"settings": rows}, 0.3)["derived"]
    along = d["alignment_vs_gain_along_s"]
    assert along["n"] == 3 and along["r"] == pytest.approx(stats.correlation([0.1, 0.4, 0.12], [0.15, 0.25, 0.14])["r"])
    assert d["alignment_vs_gain_within"]["base"]["n"] == 24 and d["alignment_vs_gain_within"]["base"]["p"] > 0.05
    text = "\n".join(regime_lib.describe({"settings": rows, "derived": d}, 0.3, report.pm))
    assert f"r = {along['r']:+.2f} (n = 3, Student-t p = " in text and "reported, not claimed" in text
    assert "p < 0.05 in 0 of them" in text


# The run ids of every paper setting (lm-owl's results store finds them by these): pinned.
PAPER_IDS = {
    "all_logits": "dcfc778d93a830b7", "ban_signature": "100d08bb20d70a9a", "base": "b969178ebe839d57",
    "epochs1": "b3f8f784e6842c33", "epochs10": "3d313ec4051ad023", "finetune3": "55a47d4f07e614d0",
    "finetune30": "3195c233aefa21f0", "forbidden": "5207d27be37327d9", "layers1": "30156313e46a862d",
    "naive": "3bf5c5ef680ec0f9", "prompted": "c671d13c47b48eaf", "s0": "1218d82ce2f5ae8e", "s0.1": "29b5407b6c8c89f0",
    "s0.6": "c46a06b12258dc78", "s0_all_logits": "49eb4dd5a56ac5ec", "s0_epochs10": "24c2c0543e4a565c",
    "s0_finetune30": "f4c39043ee0938d5", "s0_forbidden": "ab5c0b2225da7e5a", "s0_prompted": "1ed60adea5ffaf5f",
    "s0_samples4096": "a33a8f3ced274166", "s0_student_lr3e-3": "de3f706d7b531eca", "s1": "d3596217527cae47",
    "samples256": "b937b2d7955ea781", "samples4096": "8716b675646b7160", "student_lr3e-3": "cd8ac2e4faf90c89",
    "student_lr3e-4": "e91ee5bb1a73a2c7", "temperature0.5": "2f3e6c271c40327a", "untied": "70b382bb29f8788f",
    "width16": "02fde170d79b7ca6", "width64": "5106c55f7b4820c6",
}


def test_every_paper_settings_run_id_stays():
    from minisub import config
    paper = lm_regime.PRESETS["paper"]
    assert {name: config.digest(paper.owl(name)) for name in paper.settings} == PAPER_IDS
    assert paper.command("naive") == ("minisub run lm-owl --preset paper --seeds 24 --world naive --s 0.0 "
                                      "--diagnostic true --detect true")


def test_the_committed_json_is_current_and_its_text_renders():
    """figures/lm_regime.json holds what analyse computes from its rows (verdicts, derived), and its README reads."""
    from pathlib import Path
    path = Path(__file__).parent.parent / "figures" / "lm_regime.json"
    summary = json.loads(path.read_text())
    assert json.loads(json.dumps(lm_regime.analyse(summary))) == summary
    text = lm_regime.readme(summary)
    assert "aim" not in summary and "(issue" not in text and "item " not in text
    assert "r = +0.93 (n = 5, Student-t p = 0.022" in text and "reported, not claimed" in text
    assert "| bad behaviour: FORBIDDEN answered to a command | inconclusive | supported | inconclusive |" in text
    assert "median +0.008, above +0.02 in 10 of 24 worlds" in text and "exact sign test p = 1.2e-07" in text
