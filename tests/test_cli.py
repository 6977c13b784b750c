"""The command line: fast, one-line errors; an end-to-end run on real MNIST; figures from JSON alone."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import readme_block

from minisub import registry
from minisub_experiments import mnist_aux
from minisub import cli, config
from minisub.mlp import mnist
from minisub.run import runner


@pytest.fixture
def no_compute(monkeypatch):
    """Any attempt to load data or train fails the test."""
    def forbidden(*a, **k):
        raise AssertionError("computation started although the command should have failed first")

    for module, name in ((runner, "run"), (runner, "run_block"), (mnist, "load_cached"), (mnist, "load")):
        monkeypatch.setattr(module, name, forbidden)


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["run", "nope"], ["unknown experiment 'nope'", "mnist-aux"]),
    (["run", "mnist-aux", "--preset", "test", "--bogus", "1"], ["unknown field 'bogus'", "seeds", "teacher_lr"]),
    (["run", "mnist-aux", "--preset", "test", "--seeds", "0"], ["seeds=0", ">= 1"]),
    (["run", "mnist-aux", "--preset", "test", "seeds=abc"], ["seeds='abc'"]),
    (["run", "mnist-aux", "--preset", "test", "--noise=pink"], ["noise='pink'", "'uniform'"]),
    (["run", "mnist-aux", "--preset", "test", "--seeds", "1"], ["seeds=1", ">= 2"]),
    (["run", "mnist-aux", "--preset", "nope"], ["--preset", "'nope'", "paper", "quick", "test"]),
    (["run", "mnist-aux", "--preset", "test", "--on-nonfinite", "ignore"], ["--on-nonfinite", "'raise', 'mark'"]),
    (["run", "mnist-aux", "--preset", "test", "--teacher-lr", "inf"], ["teacher_lr=inf", "a finite number"]),
    (["run", "mnist-aux", "--preset", "test", "--student_lr=nan"], ["student_lr=nan", "a finite number"]),
    (["run", "mnist-aux", "--preset", "test", "--arms", "a=shared"], ["arms='a=shared'", "NAME=LINEAGE:OUTPUTS"]),
    (["run", "mnist-aux", "--preset", "test", "--arms", "a=cousin:aux"], ["lineage='cousin'", "'shared'"]),
    (["run", "--seeds", "0", "--preset", "test", "mnist-aux"], ["seeds=0", ">= 1"]),
    (["export", "nothing-here"], ["'nothing-here'"]),
    (["run", "mnist-aux", "--preset", "test", "stray"], ["'stray'"]),
])
def test_bad_arguments_fail_fast_with_one_line_naming_the_problem(no_compute, capsys, argv, expected):
    assert cli.main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("minisub: error: "), line
    for text in expected:
        assert text in line, (text, line)


def test_unexpected_arguments_to_figures_are_refused(capsys, tmp_path):
    assert cli.main(["figures", "--dir", str(tmp_path), "--bogus"]) == 2
    assert "--bogus" in _error_line(capsys)


def test_a_missing_experiment_is_a_one_line_error(capsys):
    assert cli.main(["run"]) == 2
    assert "experiment" in _error_line(capsys)


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"\b(issue|item)s? \d", out, re.I), "development history in the listing"
    assert out.startswith("mnist-aux: ")
    for preset, cfg in mnist_aux.PRESETS.items():
        assert f"--preset {preset}" in out and f"seeds={cfg.seeds}" in out
    assert f"--preset {mnist_aux.DEFAULT_PRESET} (default)" in out


def test_figures_without_json_says_how_to_make_it_and_fails(capsys, tmp_path):
    assert cli.main(["figures", "--dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "no " in captured.out and "minisub run mnist-aux" in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "mnist-aux" in captured.err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["figures", "mnist-aux", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("minisub: error: no JSON")


ARGV = ["run", "mnist-aux", "--preset", "test", "--no-progress"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """`minisub run mnist-aux --preset test --out OUT` on real MNIST, in a fresh results store."""
    results, out = tmp_path_factory.mktemp("cli-results"), tmp_path_factory.mktemp("cli-out")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("MINISUB_RESULTS", str(results))
        rc = cli.main([*ARGV, "--out", str(out)])
    return {"rc": rc, "stdout": stdout.getvalue(), "results": results, "out": out,
            "files": {p.name: p.read_bytes() for p in out.iterdir()}}


def test_run_end_to_end_writes_table_json_and_figure(first_run):
    assert first_run["rc"] == 0
    assert set(first_run["files"]) == {"mnist_aux.json", "mnist_aux.png", "mnist_aux.pdf"}
    assert first_run["files"]["mnist_aux.png"].startswith(b"\x89PNG")
    assert first_run["files"]["mnist_aux.pdf"].startswith(b"%PDF")
    out = first_run["stdout"]
    assert "| arm | ours (mean ± 95% CI) | n | paper |" in out
    for arm in ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all"):
        assert f"| {arm} | " in out
    summary = json.loads(first_run["files"]["mnist_aux.json"])
    assert summary["n_seeds"] == 3 and summary["experiment"] == "mnist-aux"
    assert summary["config"] == config.to_dict(mnist_aux.PRESETS["test"])
    acc = summary["accuracy"]
    assert all(acc[arm]["n"] == 3 and len(acc[arm]["values"]) == 3 for arm in acc)
    assert acc["teacher"]["mean"] > 0.4 and acc["reference"]["mean"] < 0.3  # a trained teacher, an untrained init
    run_dir = first_run["results"] / "mnist-aux" / config.digest(mnist_aux.PRESETS["test"])
    assert (run_dir / "DONE").exists() and f"results: {run_dir}" in out


def test_a_second_identical_run_is_served_from_the_store(first_run, monkeypatch, capsys, tmp_path):
    def forbidden(*a, **k):
        raise AssertionError("recomputed a stored run")

    monkeypatch.setenv("MINISUB_RESULTS", str(first_run["results"]))
    monkeypatch.setattr(runner, "run", forbidden)
    monkeypatch.setattr(runner, "run_block", forbidden)
    assert cli.main([*ARGV, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert table(out) == table(first_run["stdout"])
    again = json.loads((tmp_path / "mnist_aux.json").read_text())
    assert again["accuracy"] == json.loads(first_run["files"]["mnist_aux.json"])["accuracy"]


def test_figures_are_redrawn_from_the_json_alone(first_run, no_compute, capsys, tmp_path):
    shutil.copy(first_run["out"] / "mnist_aux.json", tmp_path / "mnist_aux.json")
    drawn = []
    for _ in range(2):
        assert cli.main(["figures", "mnist-aux", "--dir", str(tmp_path)]) == 0
        drawn.append({ext: (tmp_path / f"mnist_aux.{ext}").read_bytes() for ext in ("png", "pdf")})
        assert "redrew" in capsys.readouterr().out
    assert drawn[0] == drawn[1]  # byte-for-byte deterministic
    assert drawn[0]["png"] == first_run["files"]["mnist_aux.png"]  # the same figure the run drew
    assert drawn[0]["pdf"] == first_run["files"]["mnist_aux.pdf"]


def test_report_regenerates_readme_and_lists_what_is_missing(first_run, no_compute, capsys, tmp_path):
    shutil.copy(first_run["out"] / "mnist_aux.json", tmp_path / "mnist_aux.json")
    assert cli.main(["report", "--dir", str(tmp_path)]) == 1  # the others are missing: an error, after writing
    captured = capsys.readouterr()
    out = captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "no JSON" in captured.err
    readme = (tmp_path / "README.md").read_text()
    assert "## mnist-aux" in readme and "| student_aux | " in readme and "minisub figures mnist-aux" in readme
    assert (tmp_path / "mnist_aux.png").exists()

    for name, module in registry.experiments().items():
        if name != "mnist-aux":  # not computed here: listed with the command that would produce it
            assert f"missing: {name}" in out and module.PAPER_COMMAND in out


def test_accelerator_check_prints_its_table(capsys, monkeypatch):
    from minisub.run import bench
    from minisub_experiments import accelerator_check

    real = bench.matmul_rate
    monkeypatch.setattr(bench, "matmul_rate", lambda: real(256, 2))  # the ceiling's shape is not under test
    out = accelerator_check.main(["--preset", "test", "--seeds", "2", "--lm-steps", "2"])
    text = capsys.readouterr().out
    for row in ("backend", "seeds per second", "achieved FLOP rate", "matmul FLOP rate", "accuracy student_aux",
                "matmul precision 'highest'", "pretraining step, steady", "comparison"):
        assert row in text
    # the test preset is not the committed paper config: nothing is compared, and the table says so
    assert out["mnist_aux"]["comparison_mode"] == "not comparable"
    assert "not comparable" in text and out["lm_owl"]["seeds"] == 3


def test_accelerator_check_compares_paired_on_the_committed_worlds_else_unpaired():
    from minisub_experiments import accelerator_check as ac

    stored = json.loads((Path(__file__).parent.parent / "figures" / "mnist_aux.json").read_text())["config"]
    committed = ac.committed_config(stored)
    paper = mnist_aux.PRESETS["paper"]
    assert ac.comparison_mode(paper, committed) == "paired"  # the committed figure is the paper preset's run
    assert ac.comparison_mode(config.override(paper, {"seeds": "8"}), committed) == "unpaired"
    assert ac.comparison_mode(mnist_aux.PRESETS["test"], committed) == "not comparable"
    assert ac.comparison_mode(paper, None) == "not comparable"
    cpu = {"values": list(np.linspace(0.50, 0.60, 20))}
    same = ac.compare(cpu["values"], cpu, "paired")
    assert same["consistent"] and same["mean"] == 0 and same["ci95"] == 0
    assert not ac.compare([v + 0.01 for v in cpu["values"]], cpu, "paired")["consistent"]  # a shift on every seed
    assert ac.compare(list(np.linspace(0.49, 0.61, 10)), cpu, "unpaired")["consistent"]
    assert not ac.compare(list(np.linspace(0.60, 0.70, 10)), cpu, "unpaired")["consistent"]
    assert ac.compare(cpu["values"], cpu, "not comparable") is None


# --- discoverable options ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(registry.experiments()))
def test_help_lists_every_config_field_with_its_default_and_allowed_values(name, no_compute, capsys):
    module = registry.experiment(name)
    assert cli.main(["run", name, "--help"]) == 0
    text = capsys.readouterr().out
    assert not re.search(r"\b(issue|item)s? \d", text, re.I), "development history in --help"
    out = "".join(text.split())  # argparse wraps lines, also at hyphens
    assert "{" + ",".join(module.PRESETS) + "}" in out  # --preset's choices are this experiment's
    assert "{raise,mark}" in out
    for info in config.describe(module.PRESETS[module.DEFAULT_PRESET]):
        if info.settable:
            assert f"  --{info.name} " in text, info.name
            assert "".join(f"default {info.text}".split())[:40] in out, info.name
            if info.allowed:
                assert "".join(info.allowed.split())[:40] in out, info.name


def test_help_shows_the_chosen_presets_values(capsys):
    assert cli.main(["run", "mnist-aux", "--preset", "test", "-h"]) == 0
    out = capsys.readouterr().out
    assert "defaults: preset test" in out and "default 32" in out  # the test preset's hidden=(32,)


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("minisub ")


@pytest.mark.parametrize("argv", [
    ["run", "--seeds", "20", "mnist-aux", "--preset", "test"],
    ["run", "--preset", "test", "mnist-aux", "--seeds", "20"],
    ["run", "seeds=20", "--preset=test", "mnist-aux"],
    ["run", "mnist-aux", "--preset", "test", "--seeds=20"],
])
def test_options_may_come_before_or_after_the_experiment(argv, no_compute, capsys):
    assert cli.main([*argv, "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    cfg = config.override(mnist_aux.PRESETS["test"], {"seeds": "20"})
    assert shown["experiment"] == "mnist-aux" and shown["preset"] == "test"
    assert shown["config"] == config.to_dict(cfg) and shown["run_id"] == config.digest(cfg)


def test_print_config_resolves_arms_and_computes_nothing(no_compute, capsys):
    arms = "student_aux=shared:aux,probe=perturbed(sigma=0.3,part=hidden):aux"
    assert cli.main(["run", "mnist-aux", "--arms", arms, "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in shown["config"]["arms"]] == ["student_aux", "probe"]
    assert shown["config"]["arms"][1]["lineage"] == "perturbed(sigma=0.3,part=hidden)"
    assert shown["config"]["seeds"] == mnist_aux.PRESETS["quick"].seeds


def test_a_non_finite_run_is_one_line_and_exit_1(monkeypatch, capsys):
    def diverging(cfg, *, command, execution):
        raise runner.NonFiniteError("non-finite student loss in mnist-aux: seed 1, arm cross_all, student epoch 0, "
                                    "step 3 (rerun with --on-nonfinite mark to flag and continue)")

    monkeypatch.setattr(mnist_aux, "run", diverging)
    assert cli.main(["run", "mnist-aux", "--preset", "test", "--no-progress"]) == 1
    assert "--on-nonfinite mark" in _error_line(capsys)


def test_the_readmes_gpu_table_is_rendered_from_the_stored_checks():
    from minisub_experiments import accelerator_check

    root = Path(__file__).resolve().parent.parent
    block = readme_block("accelerator-table")
    order = [line.split("`")[1] for line in block.splitlines()[2:] if line.startswith("| `")]
    assert sorted(order) == sorted(p.name for p in (root / "figures" / "accelerator").glob("*.json"))
    assert block == accelerator_check.table([root / "figures" / "accelerator" / name for name in order])


def test_the_gpu_reading_follows_the_numbers():
    from minisub_experiments import accelerator_check

    def run(wall, consistent):
        arms = {a: {"comparison": {"mean": 0.01, "ci95": 0.002, "consistent": c}} for a, c in zip("ab", consistent)}
        return {"matmul_precision": "highest", "xla_flags": "", "mnist_aux": {
            "seeds": 4, "wall_s": wall, "steady_wall_s": 1.0, "accuracy": arms}}

    (line,) = accelerator_check.reading([run(40.0, (True, False)), run(20.0, (True, True))])
    assert "3 of 4 arm comparisons" in line and "20.0–40.0 s with compilation (not under 30 s)" in line
    (line,) = accelerator_check.reading([run(20.0, (True, True))])
    assert "2 of 2" in line and "20.0 s with compilation (under 30 s)" in line
