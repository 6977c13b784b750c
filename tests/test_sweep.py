"""Sweeps: points grouped into shared programs, each cached on its own; a killed sweep resumes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from helpers import tiny_config
from minisub import stats
from minisub.mlp import pipeline
from minisub.run import runner
from minisub.run import sweep
from minisub.config import ConfigError

Arm = pipeline.Arm
EX = runner.Execution(experiment="sweep-test", progress=False)


def _point(value, arm, family="f", readout=None, **fields):
    return sweep.Point(family, arm.name, value, tiny_config(arms=(arm,), **fields), readout)


SHARED, DIFFERENT = Arm("s", "shared", "aux"), Arm("d", "different", "aux")
HALF = Arm("h", "interpolated(alpha=0.5)", "aux")


def test_points_of_one_program_share_it_and_each_distinct_arm_runs_once():
    pts = [_point(1, SHARED), _point(1, DIFFERENT), _point(2, HALF), _point(3, SHARED, readout=1),
           _point(4, SHARED, n_aux=2)]
    plan = sweep.groups(pts)
    assert len(plan) == 2
    (cfg, readers), (cfg2, readers2) = plan
    assert [a.lineage for a in cfg.arms] == ["shared", "different", "interpolated(alpha=0.5)"]
    assert [len(r) for r in readers] == [2, 1, 1]  # the shared arm is read after both epochs
    assert cfg2.n_aux == 2 and len(readers2) == 1


def test_large_programs_are_split_into_chunks_of_max_arms():
    pts = [_point(s, Arm(f"p{s}", f"perturbed(sigma={s})", "aux")) for s in (0.1, 0.2, 0.3, 0.4, 0.5)]
    plan = sweep.groups(pts, max_arms=2)
    assert [len(c.arms) for c, _ in plan] == [2, 2, 1]


def test_point_identity_ignores_names_and_labels_but_not_the_science():
    a = _point(1, SHARED)
    assert sweep.point_id(a) == sweep.point_id(_point("other label", dataclasses.replace(SHARED, name="x"), family="g"))
    assert sweep.point_id(a) == sweep.point_id(_point(1, dataclasses.replace(SHARED, lr=a.cfg.student_lr)))
    for other in (_point(1, DIFFERENT), _point(1, SHARED, readout=1), _point(1, SHARED, n_aux=2),
                  _point(1, dataclasses.replace(SHARED, lr=1e-2)), _point(1, dataclasses.replace(SHARED, liminal=1.0))):
        assert sweep.point_id(other) != sweep.point_id(a)


def test_a_point_needs_one_arm_and_a_readout_inside_the_run():
    with pytest.raises(ConfigError, match="arms"):
        sweep.Point("f", "s", 1, tiny_config())
    with pytest.raises(ConfigError, match="readout"):
        _point(1, SHARED, readout=3)


def _sweep():
    return [_point(1, SHARED), _point(1, DIFFERENT), _point(2, SHARED, readout=1), _point(3, SHARED, n_aux=2)]


def test_a_killed_sweep_resumes_without_recomputing_finished_points(tmp_path, fake_mnist):
    """Kill the sweep as its second program starts; the rerun computes that program only."""
    started = []

    def kill_second(cfg, readers):
        started.append(cfg)
        if len(started) == 2:
            raise KeyboardInterrupt

    cache = sweep.PointCache(tmp_path / "points")
    with pytest.raises(KeyboardInterrupt):
        sweep.run(_sweep(), cache, lambda: fake_mnist, EX, results_root=tmp_path / "r", on_group=kill_second)
    finished = {p.name: p.read_bytes() for p in cache.directory.glob("*.json")}
    assert len(finished) == 3  # every point of the first program

    rerun = []
    records = sweep.run(_sweep(), cache, lambda: fake_mnist, EX, results_root=tmp_path / "r",
                        on_group=lambda cfg, readers: rerun.append(cfg))
    assert len(rerun) == 1 and rerun[0].n_aux == 2
    assert {p.name: p.read_bytes() for p in cache.directory.glob("*.json") if p.name in finished} == finished
    assert [r["value"] for r in records] == [1, 1, 2, 3]

    # ... and the resumed numbers are those of a sweep that was never killed.
    fresh = sweep.run(_sweep(), sweep.PointCache(tmp_path / "fresh"), lambda: fake_mnist, EX,
                      results_root=tmp_path / "r2")
    for a, b in zip(records, fresh):
        assert a["accuracy"]["values"] == b["accuracy"]["values"]
        assert a["distill_loss"]["values"] == b["distill_loss"]["values"]


def test_a_second_run_computes_nothing(tmp_path, fake_mnist):
    cache = sweep.PointCache(tmp_path / "points")
    first = sweep.run(_sweep(), cache, lambda: fake_mnist, EX, results_root=tmp_path / "r")

    def forbidden(*a, **k):
        raise AssertionError("computed although every point is cached")

    second = sweep.run(_sweep(), cache, forbidden, EX, results_root=tmp_path / "r", on_group=forbidden)
    assert first == second


def test_committed_records_seed_the_cache_on_a_fresh_machine(tmp_path, fake_mnist):
    records = sweep.run(_sweep()[:1], sweep.PointCache(tmp_path / "a"), lambda: fake_mnist, EX,
                        results_root=tmp_path / "r")
    committed = json.loads(json.dumps(records))  # as read back from a committed JSON
    cache = sweep.PointCache(tmp_path / "empty", committed)
    assert sweep.run(_sweep()[:1], cache, lambda: pytest.fail("recomputed"), EX) == records


def test_readouts_of_a_long_run_are_the_short_runs(tmp_path, fake_mnist):
    """Epoch e of a longer run is an e-epoch run: a constant-rate optimiser has no schedule."""
    long_, short = _point(1, SHARED, readout=1), _point(1, SHARED, student_epochs=1)
    a, b = sweep.run([long_, short], sweep.PointCache(tmp_path / "p"), lambda: fake_mnist, EX,
                     results_root=tmp_path / "r")
    np.testing.assert_allclose(a["accuracy"]["values"], b["accuracy"]["values"], atol=1e-6)
    np.testing.assert_allclose(a["distill_loss"]["values"], b["distill_loss"]["values"], rtol=1e-5)


# --- the generic interface: a base config and (field, value) changes -----------------------------

def test_grid_crosses_fields_last_varying_fastest_with_labels_and_series():
    base = tiny_config()
    pts = sweep.grid(base, {"n_aux": [1, 2], "arm": (SHARED, DIFFERENT)}, family="m")
    assert [(p.value, p.series) for p in pts] == [(1, "s"), (1, "d"), (2, "s"), (2, "d")]
    assert [p.cfg.n_aux for p in pts] == [1, 1, 2, 2] and [p.arm.lineage for p in pts][:2] == ["shared", "different"]
    labelled = sweep.grid(base, {"hidden": {"narrow": (8,), "wide": (32,)}, "arm": (SHARED,)}, family="w")
    assert [(p.value, p.cfg.hidden) for p in labelled] == [("narrow", (8,)), ("wide", (32,))]


def test_apply_changes_top_level_fields_together_then_dotted_ones_and_the_readout():
    base = tiny_config()
    cfg, readout = sweep.apply(base, [("arms.0.lr", 1e-2), ("arm", SHARED), ("student_epochs", 2), ("readout", 1)])
    assert cfg.arms == (dataclasses.replace(SHARED, lr=1e-2),) and cfg.student_epochs == 2 and readout == 1
    with pytest.raises(ConfigError, match="unknown field 'nope'"):
        sweep.apply(base, [("nope", 1)])
    with pytest.raises(ConfigError, match="unknown field 'nope'"):
        sweep.apply(base, [("arms.0.nope", 1)])


def test_a_point_built_from_changes_is_the_point_built_by_hand():
    by_hand = _point(2, SHARED, n_aux=2)
    built = sweep.point("f", "s", 2, tiny_config(), ("arm", SHARED), ("n_aux", 2))
    assert sweep.point_id(built) == sweep.point_id(by_hand) and built.cfg == by_hand.cfg


@dataclasses.dataclass(frozen=True)
class Toy:
    """A program that is not the MLP: its 'measurement' is a function of its fields."""

    seeds: int = 3
    scale: float = 1.0
    shift: float = 0.0


def _measure(calls):
    def measure(p, execution):
        calls.append(p.cfg)
        return {"accuracy": stats.mean_ci(p.cfg.scale * np.arange(p.cfg.seeds) + p.cfg.shift)}
    return measure


def test_any_program_sweeps_point_by_point_through_measure_and_is_cached(tmp_path):
    calls = []
    pts = sweep.grid(Toy(), {"scale": [1.0, 2.0], "shift": [0.0, 0.5]}, family="toy")
    assert [(p.value, p.series) for p in pts] == [(1.0, "0.0"), (1.0, "0.5"), (2.0, "0.0"), (2.0, "0.5")]
    cache = sweep.PointCache(tmp_path / "points")
    records = sweep.run(pts, cache, None, EX, measure=_measure(calls))
    assert len(calls) == 4 and [r["accuracy"]["mean"] for r in records] == [1.0, 1.5, 2.0, 2.5]
    assert len({r["id"] for r in records}) == 4
    again = sweep.run(pts, cache, None, EX, measure=lambda p, ex: pytest.fail("recomputed"))
    assert again == records
    with pytest.raises(ConfigError, match="needs measure="):
        sweep.run(sweep.grid(Toy(), {"scale": [3.0]}), sweep.PointCache(tmp_path / "other"), None, EX)


def test_families_run_and_merge_into_a_committed_summary(tmp_path):
    cache = sweep.PointCache(tmp_path / "points")
    fams = {"a": sweep.grid(Toy(), {"scale": [1.0, 2.0]}, family="a"),
            "b": sweep.grid(Toy(), {"shift": [1.0]}, family="b")}
    out = sweep.run_families(fams, cache, None, EX, lambda f: f"run {f}", measure=_measure([]))
    assert list(out) == ["a", "b"] and out["a"]["missing_points"] == 0 and out["a"]["command"] == "run a"
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"base": "x", "families": {"b": out["b"], "old": {"points": []}}}))
    merged = sweep.merge_families({"base": "x", "families": {"a": out["a"]}}, path, ["a", "b", "old"])
    assert list(merged["families"]) == ["a", "b", "old"]
    other = sweep.merge_families({"base": "y", "families": {"a": out["a"]}}, path, ["a", "b", "old"])
    assert list(other["families"]) == ["a"]
    # merging only (no compute): a family without stored points is left out, not computed
    merge_only = runner.Execution(experiment="sweep-test", progress=False, compute=False)
    fresh = sweep.PointCache(tmp_path / "empty")
    assert sweep.run_families(fams, fresh, None, merge_only, str, measure=lambda p, ex: pytest.fail("computed")) is None


def test_the_generic_figure_draws_any_metric_against_the_swept_field(tmp_path):
    from minisub.report import sweep as rs

    records = sweep.run(sweep.grid(Toy(), {"scale": [1e-3, 3e-3, 1e-2, 3e-2], "shift": [0.0, 1.0]}, family="toy"),
                        sweep.PointCache(tmp_path / "p"), None, EX, measure=_measure([]))
    fig = rs.metric_figure(records, {"accuracy": "mean"}, xlabel="scale", log_x=True, title="toy")
    (ax,) = fig.axes
    assert len(ax.lines) >= 2 and ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    labels = [t.get_text() for t in ax.xaxis.get_majorticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(labels) >= 2 and "1e-2" in labels
    assert sweep.changed_fields(Toy(), records[1] and Toy(scale=2.0)) == {"scale": 2.0}


@dataclasses.dataclass(frozen=True)
class ToyArm:
    name: str
    offset: float


@dataclasses.dataclass(frozen=True)
class Armed:
    """A multi-arm program that is not the MLP (like the toy LM's): arm k's 'gain' per seed is scale·seed + offset."""

    seeds: int = 3
    scale: float = 1.0
    arms: tuple = ()


BASE_ARMS = (ToyArm("s", 0.0), ToyArm("d", 1.0))


def _armed(offset, baselines=BASE_ARMS, **fields):
    return sweep.Point("f", "x", offset, Armed(arms=(ToyArm(f"o{offset:g}", offset),), **fields), baselines=baselines)


def _programs(calls, max_arms=4):
    def run(cfg, execution):
        calls.append(tuple(a.name for a in cfg.arms))
        return {a.name: cfg.scale * np.arange(cfg.seeds) + a.offset for a in cfg.arms}

    def record(p, cfg, results, k):
        own = results[cfg.arms[k].name]
        return {"gain": stats.mean_ci(own), "minus_first": stats.paired(own, results[cfg.arms[0].name])}

    return sweep.ArmPrograms(run, record, max_arms)


def test_one_arm_points_of_any_multi_arm_program_share_programs_with_their_baselines(tmp_path):
    pts = [_armed(o) for o in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)] + [_armed(2.0, scale=2.0)]
    plan = sweep.arm_groups(pts, max_arms=4)
    assert [tuple(a.name for a in cfg.arms) for cfg, _ in plan] == [("s", "d", "o2", "o3"), ("s", "d", "o4", "o5"),
                                                                      ("s", "d", "o2")]
    assert [[len(r) for r in readers] for _, readers in plan] == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1]]
    calls, cache = [], sweep.PointCache(tmp_path / "points")
    records = sweep.run(pts, cache, None, EX, programs=_programs(calls))
    assert calls == [tuple(a.name for a in cfg.arms) for cfg, _ in plan]
    assert [r["gain"]["mean"] for r in records] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 4.0]
    assert [r["minus_first"]["mean"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 2.0]  # paired in its program
    assert [r["arm_index"] for r in records] == [0, 1, 2, 3, 2, 3, 2]
    assert sweep.run(pts, cache, None, EX, programs=_programs([], 4)) == records  # all cached: nothing runs
    # a killed sweep: the second program's points are missing; it reruns with exactly the arms it had
    for r in records[4:6]:
        cache.path(r["id"]).unlink()
    again = []
    assert sweep.run(pts, cache, None, EX, programs=_programs(again)) == records
    assert again == [("s", "d", "o4", "o5")]


def test_a_point_with_baselines_is_identified_by_its_arm_and_its_baselines():
    a = _armed(2.0)
    assert sweep.point_id(a) == sweep.point_id(sweep.Point("g", "y", "label", a.cfg, baselines=BASE_ARMS))
    renamed = sweep.Point("f", "x", 2.0, Armed(arms=(ToyArm("other", 2.0),)), baselines=BASE_ARMS)
    assert sweep.point_id(renamed) == sweep.point_id(a)
    for other in (_armed(3.0), _armed(2.0, scale=2.0), _armed(2.0, baselines=BASE_ARMS[:1])):
        assert sweep.point_id(other) != sweep.point_id(a)
    with pytest.raises(ConfigError, match="arms"):
        sweep.Point("f", "x", 1, Armed(arms=BASE_ARMS), baselines=BASE_ARMS)
    with pytest.raises(ConfigError, match="needs programs="):
        sweep.run([a], sweep.PointCache("/nonexistent"), None, EX)
    with pytest.raises(ConfigError, match="max_arms"):
        sweep.arm_groups([a], max_arms=2)
