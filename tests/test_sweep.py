"""Sweeps: points grouped into shared programs, each cached on its own; a killed sweep resumes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from helpers import tiny_config
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
