"""lm-prompted end to end on lm-owl's tiny test world, its config errors, and its verdicts on constructed numbers."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from minisub import claims, cli, registry
from minisub.config import ConfigError
from minisub.lm import prompted
from minisub_experiments import lm_prompted

TEST = lm_prompted.PRESETS["test"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`minisub run lm-prompted --preset test --out OUT` in a fresh store."""
    results, out = tmp_path_factory.mktemp("prompted-results"), tmp_path_factory.mktemp("prompted-out")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("MINISUB_RESULTS", str(results))
        rc = cli.main(["run", "lm-prompted", "--preset", "test", "--no-progress", "--out", str(out)])
    return {"rc": rc, "results": results, "summary": json.loads((out / "lm_prompted.json").read_text())}


def test_registered_and_settings_are_lm_owl_runs_at_s0():
    assert registry.experiments()["lm-prompted"] is lm_prompted
    paper = lm_prompted.PRESETS["paper"]
    for name in paper.settings:
        c = paper.owl(name)
        assert c.s == 0.0 and c.seeds == 24 and c.lm.sampler == "cache"
        assert c.n_samples == (16384 if c.teacher == "prompted" else 4096)
        assert paper.command(name).startswith("minisub run lm-owl --preset paper --seeds 24")
    assert paper.owl("prompted_ban").lm.ban_entangled == 10 and paper.owl("prompted").lm.ban_entangled == 0


def test_bad_settings_are_one_line_errors_before_compute():
    with pytest.raises(ConfigError, match="settings"):
        lm_prompted.PromptedConfig(settings=("prompted", "nonsense"))
    with pytest.raises(ConfigError, match="designs"):
        lm_prompted.PromptedConfig(designs=("width 1000",))


def test_run_stores_every_setting_measures_and_designs(run):
    assert run["rc"] == 0
    s = run["summary"]
    assert list(s["settings"]) == list(TEST.settings) and list(s["designs"]) == list(TEST.designs)
    for t in (t for t in lm_prompted.TEACHERS if t in TEST.settings):  # the same measurements for any teacher
        m = s["settings"][t]["measures"]
        assert m["kl"]["n"] == TEST.seeds and m["kl"]["median"] >= 0
        assert set(m["first_step"]) == {"shared", "different"}
        assert 0 <= m["cross_init"]["jaccard"]["trait"]["mean"] <= 1
        assert m["chance_jaccard"] == pytest.approx(prompted.chance_jaccard(prompted.TOP_K, 100))
        assert "update_cos" in s["settings"][t] and "values" in s["settings"][t]["update_cos"]["shared"]
    # a prompted teacher is its reference: its update is zero, so every shared student's cosine is 0
    assert s["settings"]["prompted"]["update_cos"]["shared"]["values"] == [0.0] * TEST.seeds
    assert set(s["designs"]["s = 0"]) == set(prompted.TEACHERS)
    # the CE row: the paper's recipe, its shuffles paired with the CE shared-init student
    ce = s["settings"]["finetuned_ce"]
    assert set(ce["gain"]) == set(lm_prompted.ARMS_CE) and "measures" not in ce  # measures: once per teacher
    assert {"shared_ce − shuffle", "shared_ce − shuffle_within", "shuffle_within − shuffle"} <= set(ce["paired"])
    assert "| CE |" in lm_prompted.table(s) and "with CE students on the sampled tokens" in lm_prompted.readme(s)
    assert {v["id"] for v in s["verdicts"]} == {c.id for c in lm_prompted.claims(s)}


def test_chance_jaccard_matches_simulation():
    rng = np.random.default_rng(0)
    draws = [(set(rng.choice(100, 10, replace=False)), set(rng.choice(100, 10, replace=False))) for _ in range(20000)]
    sims = [len(a & b) / len(a | b) for a, b in draws]
    assert prompted.chance_jaccard(10, 100) == pytest.approx(np.mean(sims), abs=0.003)


def test_verdicts_follow_the_numbers(run):
    """The same summary with the prompted shared-init gains raised (or removed) flips that claim's verdict."""
    s = json.loads(json.dumps(run["summary"]))
    claim = next(c for c in lm_prompted.claims(s) if c.id == "prompted: shared")
    gain = s["settings"]["prompted"]["gain"]["shared"]
    for values, status in (([0.3, 0.31, 0.29], claims.SUPPORTED), ([0.0, 0.001, -0.001], claims.REFUTED)):
        gain["values"] = values
        assert claims.verdict(claim, s).status == status
    del s["settings"]["prompted"]["gain"]["shared"]
    assert claims.verdict(claim, s).status == claims.MISSING


def test_conclusion_reads_either_kind_of_student():
    """The headline answer is 'yes' when either the KL or the CE students meet every part of the aim, and names which."""
    from minisub.report import prompted as rp

    ok = {"prompted: hidden": claims.SUPPORTED, "prompted: paired": claims.INCONCLUSIVE,
          "prompted: different": claims.INCONCLUSIVE}
    assert "not decided" in rp.conclusions(ok, ())[0] and "CE" not in rp.conclusions(ok, ())[0]
    ce = ok | {"prompted_ce: paired": claims.SUPPORTED, "prompted_ce: different": claims.SUPPORTED}
    assert "yes, with CE students on sampled tokens" in rp.conclusions(ce, ())[0]
    refuted = ok | {"prompted_ce: paired": claims.REFUTED, "prompted_ce: different": claims.SUPPORTED}
    assert "CE students on sampled tokens: no" in rp.conclusions(refuted, ())[0]


def test_the_size_line_compares_the_two_teachers_medians():
    from minisub.report import prompted as rp
    kl = lambda median: {"kl": {"median": median, "mean": median, "n": 24}}  # noqa: E731
    summary = {"settings": {"prompted": {"measures": kl(1e-4)}, "finetuned": {"measures": kl(2e-2)}}}
    (line,) = rp.size_line(summary)
    assert "200× less" in line and "1.00e-04 against 2.00e-02" in line
    summary["settings"].pop("finetuned")
    assert rp.size_line(summary) == []
