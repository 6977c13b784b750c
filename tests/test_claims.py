"""Claims as data: every verdict flips with the numbers, and the one test is Student-t."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from minisub import claims, references, stats
from minisub.claims import Claim


def _arm(values):
    return stats.mean_ci(values)


def _summary(**arms):
    return {"accuracy": {k: _arm(v) for k, v in arms.items()}}


def test_student_t_interval_matches_scipy():
    v = np.array([0.52, 0.55, 0.49, 0.58, 0.51, 0.54, 0.50, 0.56])
    s = stats.mean_ci(v)
    lo, hi = sps.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=sps.sem(v))
    assert s["n"] == 8 and s["ci95"] == pytest.approx(hi - v.mean(), rel=1e-12)
    assert stats.interval(s) == pytest.approx((lo, hi), rel=1e-12)
    # the normal approximation is 17% too narrow at the quick preset's 8 seeds: the reason for the switch
    assert 1.96 / stats.t_quantile(8) == pytest.approx(0.829, abs=1e-3)


def test_paired_is_the_interval_of_differences():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.0, 2.5, 3.0])
    assert stats.paired(a, b)["values"] == list(a - b)
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired(a, b[:3])


def test_unpaired_is_welchs_interval():
    from scipy import stats as sps

    a, b = np.array([0.50, 0.55, 0.61, 0.58, 0.52]), np.array([0.40, 0.47, 0.45, 0.52, 0.43, 0.49, 0.41])
    d = stats.unpaired(a, b)
    res = sps.ttest_ind(a, b, equal_var=False)
    lo, hi = res.confidence_interval(0.95)
    assert d["mean"] == pytest.approx(a.mean() - b.mean()) and d["n"] == (5, 7)
    assert stats.interval(d) == pytest.approx((lo, hi), rel=1e-9)


def test_greater_than_flips_from_supported_to_inconclusive_to_refuted():
    c = Claim("beats_chance", "the aux-only student beats chance", "cloud2025", "accuracy.student", ">", 0.1)
    base = np.linspace(0.45, 0.60, 10)
    assert claims.verdict(c, _summary(student=base)).status == "supported"
    straddle = np.array([0.02, 0.18, 0.05, 0.15, 0.09, 0.12, 0.1, 0.11])
    assert claims.verdict(c, _summary(student=straddle)).status == "inconclusive"
    assert claims.verdict(c, _summary(student=base - 0.5)).status == "refuted"


def test_less_than_and_within():
    lt = Claim("low", "the detector stays at chance or below", "minisub", "accuracy.detector", "<", 0.55)
    assert claims.verdict(lt, _summary(detector=[0.50, 0.51, 0.49, 0.52])).status == "supported"
    assert claims.verdict(lt, _summary(detector=[0.70, 0.71, 0.69, 0.72])).status == "refuted"
    near = Claim("chance", "the cross-model student stays at chance", "cloud2025", "accuracy.cross", "within", 0.02,
                 baseline="accuracy.reference")
    ref = np.full(6, 0.1)
    assert claims.verdict(near, _summary(cross=ref + [0.001, -0.002, 0.0, 0.003, -0.001, 0.002], reference=ref)).status == "supported"
    assert claims.verdict(near, _summary(cross=ref + 0.3 + np.arange(6) * 0.001, reference=ref)).status == "refuted"
    assert claims.verdict(near, _summary(cross=ref + [0.0, 0.04, -0.01, 0.05, 0.0, 0.03], reference=ref)).status == "inconclusive"


def test_paired_baseline_uses_per_seed_differences():
    c = Claim("gain", "shared beats different", "minisub", "accuracy.shared", ">", 0.0, baseline="accuracy.different")
    shared = np.array([0.3, 0.5, 0.4, 0.6, 0.35])
    # unpaired intervals would overlap; the per-seed differences are all +0.01
    v = claims.verdict(c, _summary(shared=shared, different=shared - 0.01))
    assert v.status == "supported" and v.mean == pytest.approx(0.01) and v.n == 5


def test_confound_names_the_task_loss_ratio():
    c = Claim("opt", "SGD students still learn the trait", "minisub", "accuracy.sgd", ">", 0.1,
              task_loss=("loss.sgd", "loss.adam"), confound_factor=2.0)
    summary = {**_summary(sgd=np.linspace(0.3, 0.4, 8)), "loss": {"sgd": {"mean": 0.65}, "adam": {"mean": 0.1}}}
    v = claims.verdict(c, summary)
    assert v.status == "confounded" and "×6.5" in v.detail and "supported" in v.detail
    summary["loss"]["sgd"]["mean"] = 0.15
    assert claims.verdict(c, summary).status == "supported"


def test_trend_needs_every_step_and_ignores_nothing_silently():
    pts = ("sweep.p1", "sweep.p2", "sweep.p3")
    c = Claim("up", "transfer grows with the knob", "minisub", pts, "increasing")
    n = np.arange(8) * 0.001
    mono = {"sweep": {"p1": _arm(0.1 + n), "p2": _arm(0.2 + n), "p3": _arm(0.3 + n)}}
    assert claims.verdict(c, mono).status == "supported"
    # endpoints agree with "increasing", the middle step goes down: an endpoint test would say supported
    peak = {"sweep": {"p1": _arm(0.1 + n), "p2": _arm(0.5 + n), "p3": _arm(0.3 + n)}}
    assert claims.verdict(c, peak).status == "refuted"
    flat = {"sweep": {"p1": _arm(0.1 + n), "p2": _arm(0.1 + n[::-1]), "p3": _arm(0.3 + n)}}
    assert claims.verdict(c, flat).status == "inconclusive"
    assert claims.verdict(Claim("down", "falls", "minisub", pts, "decreasing"), mono).status == "refuted"


def test_missing_metric_is_named_and_malformed_input_raises():
    c = Claim("x", "a claim", "minisub", "families.width.p64", ">", 0.1)
    v = claims.verdict(c, {"families": {}})
    assert v.status == "not measured" and "families.width.p64" in v.detail
    with pytest.raises(TypeError, match="per-seed"):  # a number where per-seed values belong: an error
        claims.verdict(c, {"families": {"width": {"p64": 0.5}}})


def test_claims_are_validated_at_declaration():
    with pytest.raises(ValueError, match="compare"):
        Claim("x", "t", "minisub", "a.b", "bigger")
    with pytest.raises(ValueError, match="source"):
        Claim("x", "t", "SCIENCE.md", "a.b", ">")
    with pytest.raises(ValueError, match="tuple of points"):
        Claim("x", "t", "minisub", "a.b", "increasing")
    assert all(r.key == k for k, r in references.REFERENCES.items())


def test_sentence_states_the_numbers_that_decided_it():
    c = Claim("beats_chance", "the aux-only student beats chance", "cloud2025", "accuracy.student", ">", 0.1)
    line = claims.lines([c], _summary(student=np.linspace(0.45, 0.60, 10)))[0]
    assert "**supported**" in line and "n = 10" in line and "Student-t" in line and "[cloud2025]" in line
    d = claims.evaluate([c], _summary(student=np.linspace(0.45, 0.60, 10)))[0]
    assert d["status"] == "supported" and d["low"] > 0.1 and d["test"] == stats.TEST


def test_distribution_reports_median_counts_and_sign_test():
    v = np.array([0.5, 0.4, 0.01, 0.0, 0.005, -0.001, 0.3, 0.002])
    d = stats.distribution(v, above=0.02)
    assert d["median"] == pytest.approx(np.median(v)) and d["n_above"] == 3
    assert (d["n_positive"], d["n_negative"]) == (6, 1)
    assert d["sign_test_p"] == pytest.approx(sps.binomtest(6, 7, 0.5).pvalue)


def test_correlation_states_its_n_and_test():
    r = stats.correlation([0, 1, 2, 3, 4], [0.1, 0.3, 0.2, 0.5, 0.6])
    assert r["n"] == 5 and -1 <= r["low"] <= r["r"] <= r["high"] <= 1 and 0 < r["p"] < 1
    assert stats.correlation([1, 1, 1], [1, 2, 3])["r"] is None  # undefined: JSON null, never NaN
    assert stats.correlation([0, 1, 2], [0, 2, 1])["low"] is None  # no interval below 4 points
