"""Processes: two jax.distributed hosts, --shard i/n + merge, and SIGKILL then resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import FAST_COMPILE

CLI = [sys.executable, "-m", "minisub.cli"]
TEST = ["run", "mnist-aux", "--preset", "test", "--no-progress", "--block", "1"]


def _env(results: Path, devices: int = 1) -> dict:
    # XLA_FLAGS: only the suite's fast compilation (conftest), nothing that sets a device count
    return dict(os.environ, MINISUB_RESULTS=str(results), JAX_NUM_CPU_DEVICES=str(devices), XLA_FLAGS=FAST_COMPILE)


def _accuracy(out: Path) -> dict:
    return json.loads((out / "mnist_aux.json").read_text())["accuracy"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(tmp_path) -> dict:
    out = tmp_path / "single"
    subprocess.run([*CLI, *TEST, "--out", str(out)], env=_env(tmp_path / "single_results"), check=True,
                   capture_output=True, timeout=600)
    return _accuracy(out)


def test_two_process_distributed_run_matches_single_process(tmp_path):
    reference = _reference(tmp_path)
    port, results, out = _free_port(), tmp_path / "results", tmp_path / "out"
    procs = [
        subprocess.Popen([*CLI, *TEST, "--out", str(out), "--coordinator", f"127.0.0.1:{port}",
                          "--num-processes", "2", "--process-id", str(i)],
                         env=_env(results), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    pieces = sorted(p.name for p in results.glob("mnist-aux/*/pieces/*.npz"))
    assert len(pieces) == 3  # blocks dealt to both hosts, every seed computed once
    got = _accuracy(out)
    for arm, s in reference.items():
        np.testing.assert_allclose(got[arm]["values"], s["values"], atol=1e-6)


def test_shards_then_merge(tmp_path):
    reference = _reference(tmp_path)
    results, out = tmp_path / "results", tmp_path / "out"
    first = subprocess.run([*CLI, *TEST, "--shard", "0/2"], env=_env(results), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and "still missing" in first.stdout, first.stdout + first.stderr
    early = subprocess.run([*CLI, "merge", "mnist-aux", "--preset", "test", "--no-progress"], env=_env(results),
                           capture_output=True, text=True, timeout=600)
    assert early.returncode == 1  # one shard still missing: merge computes nothing and says so
    subprocess.run([*CLI, *TEST, "--shard", "1/2"], env=_env(results), check=True, capture_output=True, timeout=600)
    subprocess.run([*CLI, "merge", "mnist-aux", "--preset", "test", "--no-progress", "--out", str(out)],
                   env=_env(results), check=True, capture_output=True, timeout=600)
    for arm, s in reference.items():
        np.testing.assert_allclose(_accuracy(out)[arm]["values"], s["values"], atol=1e-6)


def test_sigkill_then_resume_recomputes_only_missing_blocks(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    cmd = [*CLI, *TEST, "--out", str(out), "--seeds", "4"]
    proc = subprocess.Popen(cmd, env=_env(results), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(results.glob("mnist-aux/*/pieces/*.npz"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivors = {p: p.stat().st_mtime_ns for p in results.glob("mnist-aux/*/pieces/*.npz")}
    assert 1 <= len(survivors) < 4, "the kill should land between the first and the last block"
    assert not list(results.glob("mnist-aux/*/DONE"))
    subprocess.run(cmd, env=_env(results), check=True, capture_output=True, timeout=600)
    assert len(list(results.glob("mnist-aux/*/pieces/*.npz"))) == 4
    for p, mtime in survivors.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.name} was recomputed"
    assert not list(results.glob("mnist-aux/*/pieces/.*.tmp"))
    assert _accuracy(out)["teacher"]["n"] == 4


def test_two_processes_on_the_same_run_do_not_clobber_each_other(tmp_path):
    results = tmp_path / "results"
    cmd = [*CLI, *TEST, "--out"]
    procs = [subprocess.Popen([*cmd, str(tmp_path / f"out{i}")], env=_env(results), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    from minisub.run import store

    (run_dir,) = results.glob("mnist-aux/*")
    assert store.is_complete(run_dir)
    assert _accuracy(tmp_path / "out0") == _accuracy(tmp_path / "out1")
    assert not list(run_dir.rglob(".*.tmp"))
