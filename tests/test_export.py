"""Stored runs you can take away: ``minisub runs`` (done / partial / corrupt) and ``minisub export``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from minisub import cli, config
from minisub.mlp import mnist
from minisub.run import export, store
from minisub_experiments import mnist_aux

# The tiny test preset of mnist-aux on the fake MNIST (1024 training, 512 test images).
SMALL = ["--preset", "test", "--n_train", "1024", "--n_noise", "1024", "--n_test", "512", "--no-progress"]


def _cfg(*overrides: str):
    return cli.build_config(mnist_aux, "test", [*SMALL[2:8], *overrides])


@pytest.fixture(scope="module")
def store_root(tmp_path_factory, fake_mnist):
    """A results store with one done run (three one-seed pieces), a copy corrupted after DONE and a
    partial copy (DONE and results not yet written, one piece missing)."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINISUB_RESULTS", str(root))
        mp.setattr(mnist, "load_cached", lambda: fake_mnist)
        assert cli.main(["run", "mnist-aux", *SMALL, "--block", "1", "--out", str(root / "out")]) == 0
    done = store.run_dir("mnist-aux", _cfg(), root)
    corrupt, partial = done.parent / CORRUPT, done.parent / PARTIAL
    shutil.copytree(done, corrupt)
    summary = json.loads((corrupt / "summary.json").read_text())
    summary["accuracy"]["teacher"]["values"][0] = 1.0  # edited after DONE recorded its hash
    (corrupt / "summary.json").write_text(json.dumps(summary))
    shutil.copytree(done, partial)
    for name in ("DONE", "summary.json", "results.npz", "pieces/seeds_000001_000002.npz"):
        (partial / name).unlink()
    return root


CORRUPT, PARTIAL = "c0000000000000c0", "b0000000000000b0"


def test_runs_lists_status_seeds_and_the_fields_that_differ_from_the_closest_preset(store_root, monkeypatch, capsys):
    monkeypatch.setenv("MINISUB_RESULTS", str(store_root))
    infos = {i.run_id: i for i in export.runs()}
    done = config.digest(_cfg())
    assert set(infos) == {done, CORRUPT, PARTIAL}
    assert (infos[done].status, infos[CORRUPT].status, infos[PARTIAL].status) == ("done", "corrupt", "partial")
    assert infos[done].seeds == "3" and infos[PARTIAL].seeds == "2/3"  # pieces of seeds 0 and 2 so far
    assert infos[done].preset == "test"
    assert infos[done].differs == {"n_train": 1024, "n_test": 512, "n_noise": 1024}
    assert cli.main(["runs", "mnist-aux"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["experiment", "run", "id", "status"]
    row = next(line for line in out if done in line)
    assert "done" in row and "test n_train=1024 n_test=512 n_noise=1024" in row
    assert "corrupt" in next(line for line in out if CORRUPT in line)


def test_runs_of_an_unknown_experiment_is_an_error(capsys):
    assert cli.main(["runs", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_one_tidy_table_that_reads_back(store_root, monkeypatch, tmp_path, fmt, capsys):
    pd = pytest.importorskip("pandas")
    monkeypatch.setenv("MINISUB_RESULTS", str(store_root))
    cfg = _cfg()
    run_dir = store.run_dir("mnist-aux", cfg, store_root)
    out = tmp_path / f"table.{fmt}"
    assert cli.main(["export", config.digest(cfg), "--format", fmt, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    table = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert list(table.columns[:6]) == ["run_id", "experiment", "arm", "seed", "metric", "value"]
    summary = json.loads((run_dir / "summary.json").read_text())
    for arm, s in summary["accuracy"].items():
        rows = table[(table.metric == "accuracy") & (table.arm == arm)].sort_values("seed")
        assert rows.seed.tolist() == [0, 1, 2]
        np.testing.assert_array_equal(rows.value.to_numpy(), s["values"])  # the stored values, bit for bit
    assert (table.run_id == config.digest(cfg)).all() and (table.experiment == "mnist-aux").all()
    assert (table["config.seeds"] == 3).all() and (table["config.n_train"] == 1024).all()
    epochs = table[(table.arm == "student_aux") & table.metric.str.startswith("student_accuracy_by_epoch")]
    assert epochs.empty  # per-epoch entries are summaries without per-seed values: no rows invented


def test_export_of_an_experiment_takes_its_complete_runs_only(store_root, monkeypatch, tmp_path):
    monkeypatch.setenv("MINISUB_RESULTS", str(store_root))
    rows = [r for d in export.resolve("mnist-aux") for r in export.rows(d)]
    assert {r["run_id"] for r in rows} == {config.digest(_cfg())}  # not the corrupt one, not the partial one
    for name, state in ((CORRUPT, "corrupt"), (PARTIAL, "partial")):
        with pytest.raises(config.ConfigError, match=f"is {state}"):
            export.rows(store_root / "mnist-aux" / name)
    out = export.write("mnist-aux", "csv", tmp_path / "all.csv")
    assert out.read_text().splitlines()[0].startswith("run_id,experiment,arm,seed,metric,value,config.")


def test_export_maps_values_to_seeds_around_non_finite_ones(tmp_path):
    run = tmp_path / "mnist-aux" / "0123456789abcdef"
    summary = {"experiment": "mnist-aux", "nonfinite_seeds": [1], "config": {"seeds": 3, "arms": [{"name": "a"}]},
               "accuracy": {"a": {"mean": 0.5, "values": [0.25, 0.75]}}, "paper": {"a": {"values": [9.0]}}}
    store.finish(run, {"x": np.zeros(1)}, summary)
    rows = export.rows(run)
    assert [(r["arm"], r["seed"], r["metric"], r["value"]) for r in rows] == [("a", 0, "accuracy", 0.25),
                                                                               ("a", 2, "accuracy", 0.75)]


def test_status_reads_unreadable_files_as_corrupt(tmp_path):
    run = tmp_path / "mnist-aux" / "0123456789abcdef"
    store.finish(run, {"x": np.zeros(1)}, {"experiment": "mnist-aux"})
    store.write_json(run / "config.json", {"config": {"seeds": 1}})
    assert store.status(run) == "done"
    (run / "config.json").write_text("{not json")
    assert store.status(run) == "corrupt"
    (run / "config.json").unlink()
    (run / "results.npz").unlink()
    assert store.status(run) == "corrupt"
    (run / "DONE").unlink()
    assert store.status(run) == "partial"
    (tmp_path / "mnist-aux" / "points").mkdir()  # not a run id: a cache of another kind, not listed
    assert [d.name for d in store.run_dirs(root=tmp_path)] == ["0123456789abcdef"]


def test_runs_on_an_empty_store_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINISUB_RESULTS", str(tmp_path / "empty"))
    assert cli.main(["runs"]) == 0
    assert capsys.readouterr().out.startswith("no stored runs under ")


def test_export_names_its_file_after_the_run_by_default(store_root, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MINISUB_RESULTS", str(store_root))
    monkeypatch.chdir(tmp_path)
    run_dir = store.run_dir("mnist-aux", _cfg(), store_root)
    assert cli.main(["export", str(run_dir)]) == 0
    assert (tmp_path / f"mnist-aux-{run_dir.name}.csv").exists()
