"""Every verdict of mnist-aux and the atlas flips with the numbers: supported, refuted, inconclusive, confounded.

Each claim is checked on the committed summaries with its per-seed values replaced by synthetic
ones (paired differences placed on either side of the threshold, or straddling it), so a verdict
that was written by hand, or read from the wrong point, fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from minisub import claims as claims_lib
from minisub import stats
from minisub_experiments import atlas, mnist_aux

NOISE = np.tile([0.004, -0.004], 50)  # a symmetric spread: the mean of the first n is exact for even n


def _committed(stem):
    return json.loads(Path(f"figures/{stem}.json").read_text())


@pytest.fixture(scope="module")
def atlas_summary():
    return atlas.analyse(_committed("atlas"))


@pytest.fixture(scope="module")
def aux_summary():
    return mnist_aux.analyse(_committed("mnist_aux"))


def _set(summary, path, values):
    parent, key = path.rsplit(".", 1)
    claims_lib.lookup(summary, parent)[key] = stats.mean_ci(values)


def _vals(summary, path):
    return np.asarray(claims_lib.lookup(summary, path)["values"], np.float64)


def _comparison(summary, claim, offset, spread=1.0):
    """A copy whose metric is baseline + threshold + offset, seed by seed (± a symmetric spread)."""
    s = copy.deepcopy(summary)
    base = _vals(s, claim.baseline) if claim.baseline else np.zeros(len(_vals(s, claim.metric)))
    n = len(base)
    target = claim.threshold if claim.compare != "within" else 0.0
    _set(s, claim.metric, base + target + offset + spread * NOISE[:n])
    return s


def _losses(summary, claim, ratio):
    s = copy.deepcopy(summary)
    if claim.task_loss:
        a, b = claim.task_loss
        _set(s, b, np.full(len(_vals(s, b)), 1e-3))
        _set(s, a, np.full(len(_vals(s, a)), 1e-3 * ratio))
    return s


def _trend(summary, claim, slope, spread=1.0):
    s = copy.deepcopy(summary)
    n = len(_vals(s, claim.metric[0]))
    for k, p in enumerate(claim.metric):
        _set(s, p, 0.5 + slope * k + spread * (NOISE[:n] if k % 2 else -NOISE[:n]))
    return s


def _status(claim, summary):
    return claims_lib.verdict(claim, summary).status


def _flips(claim, summary):
    """(supported, refuted, inconclusive[, confounded]) summaries for one claim."""
    if claim.compare in ("increasing", "decreasing"):
        up = 0.1 if claim.compare == "increasing" else -0.1
        return _trend(summary, claim, up), _trend(summary, claim, -up), _trend(summary, claim, 0.0, spread=10.0)
    side = {">": 1, "<": -1}.get(claim.compare)
    if side is None:  # within ±threshold
        t = claim.threshold
        return (_comparison(summary, claim, 0.0), _comparison(summary, claim, 3 * t),
                _comparison(summary, claim, t, spread=t / 0.004))
    return (_comparison(summary, claim, side * 0.05), _comparison(summary, claim, -side * 0.05),
            _comparison(summary, claim, 0.0, spread=10.0))


def _check(claim, summary):
    supported, refuted, inconclusive = (_losses(s, claim, 1.0) for s in _flips(claim, summary))
    assert _status(claim, supported) == claims_lib.SUPPORTED, claim.id
    assert _status(claim, refuted) == claims_lib.REFUTED, claim.id
    assert _status(claim, inconclusive) == claims_lib.INCONCLUSIVE, claim.id
    if claim.task_loss:
        assert _status(claim, _losses(supported, claim, 10.0)) == claims_lib.CONFOUNDED, claim.id


def test_every_mnist_aux_verdict_flips_with_the_numbers(aux_summary):
    for claim in mnist_aux.CLAIMS:
        _check(claim, aux_summary)


def test_every_atlas_verdict_flips_with_the_numbers(atlas_summary):
    cs = atlas.claims(atlas_summary)
    assert len({c.id for c in cs}) == len(cs)
    for claim in cs:
        _check(claim, atlas_summary)


def _verdicts(summary):
    return {v["id"]: v for v in summary["verdicts"]}


def test_the_committed_numbers_give_these_verdicts(atlas_summary, aux_summary):
    """What the README states: the overreaches of earlier text are now what the intervals say."""
    v = _verdicts(atlas_summary)
    assert v["liminal_not_stopped"]["status"] == "confounded"  # +0.020 ± 0.006 over its reference, loss ×15
    assert "×15.0" in v["liminal_not_stopped"]["detail"]
    assert v["sgd"]["status"] == "confounded" and "×6.5" in v["sgd"]["detail"]
    assert v["projection"]["status"] == "supported"  # task loss ×1.01: like for like
    assert v["width"]["status"] == "inconclusive"  # rises 64 → 256 (not significantly), falls after
    assert v["lr_rise"]["status"] == v["lr_fall"]["status"] == "supported"  # a peak at 1e-3, every step tested
    assert v["head"]["status"] == "inconclusive" and v["head_vs_shared"]["status"] == "supported"
    a = _verdicts(aux_summary)
    assert a["aux_above_community"]["status"] == "inconclusive"  # 0.562, 95% CI [0.543, 0.581] vs 0.55
    assert a["aux_below_community"]["status"] == "supported"


def test_the_aux_logit_trend_leaves_out_one_logit(atlas_summary):
    """m = 1 never trains (a KL over one logit is zero): whatever it measured does not enter the trend."""
    claim = next(c for c in atlas.claims(atlas_summary) if c.id == "aux_logits")
    one = [k for k, r in enumerate(atlas_summary["families"]["aux_logits"]["points"]) if r["value"] == 1]
    assert one and not any(f"points.{k}." in p for k in one for p in claim.metric)
    s = copy.deepcopy(atlas_summary)
    for k in one:
        _set(s, f"families.aux_logits.points.{k}.accuracy", np.full(20, 0.99))
    assert _status(claim, s) == _status(claim, atlas_summary) == "supported"


def test_a_missing_family_is_not_measured_and_named(atlas_summary):
    s = copy.deepcopy(atlas_summary)
    del s["families"]["width"]
    s = atlas.analyse(s)
    v = _verdicts(s)
    assert v["width"]["status"] == "not measured" and "families.width" in v["width"]["detail"]
    assert v["shared"]["status"] == "supported"
    assert "width" in atlas.readme(s).split("Families not (fully) computed yet:")[1].split(".")[0]


def test_a_partial_family_is_not_measured(atlas_summary):
    s = copy.deepcopy(atlas_summary)
    s["families"]["lr"]["missing_points"] = 2
    v = _verdicts(atlas.analyse(s))
    assert v["lr_rise"]["status"] == v["lr_fall"]["status"] == "not measured"


def test_a_malformed_summary_raises_rather_than_reading_not_measured(atlas_summary):
    s = copy.deepcopy(atlas_summary)
    s["families"]["lineages"]["points"][0]["accuracy"] = {"mean": 0.5}  # no per-seed values
    with pytest.raises((TypeError, KeyError)):
        atlas.analyse(s)


def test_correlations_are_reported_with_n_p_and_interval(atlas_summary):
    corr = atlas_summary["analysis"]["alignment_vs_transfer"]
    assert corr["width"]["n"] == 5 and 0 < corr["width"]["p"] < 1 and corr["width"]["low"] < corr["width"]["high"]
    assert corr["aux_logits"]["n"] == 3  # m = 1 left out
    text = "\n".join(atlas.analysis.lines(atlas_summary))
    assert "n = 5 points, Student-t p = " in text and "not a finding" in text


def test_analyse_keeps_every_per_seed_value_and_mean():
    for module, stem in ((atlas, "atlas"), (mnist_aux, "mnist_aux")):
        before = _committed(stem)
        after = module.analyse(copy.deepcopy(before))
        for key in before:
            if key not in ("verdicts", "derived", "analysis", "official_permutation_cross_aux"):
                assert after[key] == before[key], (stem, key)


def test_the_committed_summaries_hold_what_analyse_gives_them():
    """figures/*.json were rewritten through analyse: their verdicts and derived numbers are current."""
    for module, stem in ((atlas, "atlas"), (mnist_aux, "mnist_aux")):
        committed = _committed(stem)
        fresh = module.analyse(copy.deepcopy(committed))
        assert json.dumps(fresh, sort_keys=True) == json.dumps(committed, sort_keys=True), stem  # NaN-tolerant
