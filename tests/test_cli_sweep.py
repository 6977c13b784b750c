"""``minisub sweep``: one line sweeps any config field; points are cached one by one and reused."""

from __future__ import annotations

import json

import pytest

from minisub import cli, cli_sweep
from minisub.config import ConfigError
from minisub.mlp import mnist
from minisub.run import runner
from minisub_experiments import mnist_aux

TINY = ["--preset", "test", "--seeds", "2", "--hidden", "16", "--n-train", "512", "--n-noise", "512",
        "--teacher-batch", "128", "--student-batch", "128", "--teacher-epochs", "1", "--student-epochs", "1",
        "--n-test", "256", "--no-progress"]


def test_values_split_into_fixed_fields_and_one_or_two_swept_ones():
    base = mnist_aux.PRESETS["test"]
    fixed, axes = cli_sweep.split_values(base, {"student-lr": "1e-4,3e-4", "hidden": "16,16;32", "seeds": "3"})
    assert fixed == {"seeds": "3"} and axes == {"student_lr": ["1e-4", "3e-4"], "hidden": ["16,16", "32"]}
    with pytest.raises(ConfigError, match="two or more values"):
        cli_sweep.split_values(base, {"seeds": "3"})
    with pytest.raises(ConfigError, match="one or two swept fields"):
        cli_sweep.split_values(base, {"student_lr": "1,2", "teacher_lr": "1,2", "noise_seed": "1,2"})
    points = cli_sweep.points(base, axes)  # 2 x 2 combinations x every arm of the preset, each with one arm
    assert len(points) == 4 * len(base.arms) and all(len(p.cfg.arms) == 1 for p in points)
    assert {p.value for p in points} == {1e-4, 3e-4} and points[0].cfg.hidden == (16, 16)


def test_a_bad_value_anywhere_in_the_grid_stops_before_compute(monkeypatch, capsys):
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("computed before validating"))
    assert cli.main(["sweep", "mnist-aux", *TINY, "--student-lr", "1e-3,-1"]) == 2
    assert "student_lr=-1.0" in capsys.readouterr().err


def test_cli_sweep_runs_draws_and_reuses_cached_points(fake_mnist, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(mnist, "load_cached", lambda: fake_mnist)
    argv = ["sweep", "mnist-aux", *TINY, "--arms", "s=shared:aux,d=different:aux", "--student-lr", "1e-3,3e-3",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    summary = json.loads((tmp_path / "sweep_student_lr.json").read_text())
    assert summary["fields"] == ["student_lr"] and summary["missing_points"] == 0
    assert {(p["series"], p["value"]) for p in summary["points"]} == {(a, v) for a in "sd" for v in (1e-3, 3e-3)}
    assert all(p["metric"]["n"] == 2 and len(p["metric"]["values"]) == 2 for p in summary["points"])
    assert (tmp_path / "sweep_student_lr.png").exists() and (tmp_path / "sweep_student_lr.pdf").exists()
    assert "| 0.001 | s |" in capsys.readouterr().out
    # a rerun with one more value computes only the new points: the cached ones are read back
    computed = []
    real = runner.run
    monkeypatch.setattr(runner, "run", lambda cfg, *a, **k: computed.append(cfg.student_lr) or real(cfg, *a, **k))
    assert cli.main([*argv[:-4], "--student-lr", "1e-3,3e-3,1e-2", "--out", str(tmp_path)]) == 0
    assert computed == [1e-2]
    again = json.loads((tmp_path / "sweep_student_lr.json").read_text())
    old = {(p["series"], p["value"]): p["metric"]["values"] for p in summary["points"]}
    assert all(old[(p["series"], p["value"])] == p["metric"]["values"] for p in again["points"] if p["value"] != 1e-2)


def test_an_experiment_without_sweep_metrics_is_refused_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(runner, "one_program", lambda *a, **k: pytest.fail("computed"))
    assert cli.main(["sweep", "lm-cross", "--preset", "test", "--seeds", "2,3"]) == 2
    assert "declares no sweep_metrics" in capsys.readouterr().err
