"""Resumable runs: stored pieces are reused, missing or corrupt ones recomputed, results unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import run_population, without_timing
from minisub.run import runner


@pytest.fixture
def counted_blocks(monkeypatch):
    """Record the seed ids of every block that is actually computed."""
    calls = []
    original = runner.run_block

    def counting(cfg, seed_ids, *args, **kwargs):
        calls.append(np.asarray(seed_ids).tolist())
        return original(cfg, seed_ids, *args, **kwargs)

    monkeypatch.setattr(runner, "run_block", counting)
    return calls


@pytest.fixture
def first_run(tiny_cfg, fake_mnist, tmp_path):
    results = run_population(tiny_cfg, fake_mnist, tmp_path, block=1)
    pieces = sorted((tmp_path / "pieces").glob("*.npz"))
    assert len(pieces) == tiny_cfg.seeds  # one piece per block of one seed
    return results, pieces


def _assert_same_results(a, b):
    a, b = without_timing(a), without_timing(b)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_a_deleted_piece_is_the_only_block_recomputed(tiny_cfg, fake_mnist, tmp_path, first_run, counted_blocks):
    results, pieces = first_run
    pieces[1].unlink()
    again = run_population(tiny_cfg, fake_mnist, tmp_path, block=1)
    assert counted_blocks == [[1]]
    assert pieces[1].exists()
    _assert_same_results(again, results)


def test_a_corrupt_piece_is_recomputed(tiny_cfg, fake_mnist, tmp_path, first_run, counted_blocks):
    results, pieces = first_run
    pieces[2].write_bytes(b"this is not an npz file")
    again = run_population(tiny_cfg, fake_mnist, tmp_path, block=1)
    assert counted_blocks == [[2]]
    _assert_same_results(again, results)


def test_a_complete_set_of_pieces_is_not_recomputed(tiny_cfg, fake_mnist, tmp_path, first_run, counted_blocks):
    results, _ = first_run
    again = run_population(tiny_cfg, fake_mnist, tmp_path, block=1)
    assert counted_blocks == []
    _assert_same_results(again, results)
    assert np.array_equal(again["seconds"], results["seconds"])  # loaded, not rerun


def test_force_recomputes_everything(tiny_cfg, fake_mnist, tmp_path, first_run, counted_blocks):
    results, _ = first_run
    again = run_population(tiny_cfg, fake_mnist, tmp_path, block=1, force=True)
    assert sorted(counted_blocks) == [[0], [1], [2]]
    _assert_same_results(again, results)


def test_results_are_in_seed_order(tiny_cfg, first_run):
    results, _ = first_run
    np.testing.assert_array_equal(results["seed"], np.arange(tiny_cfg.seeds))
    assert results["teacher_loss"].shape[0] == tiny_cfg.seeds
