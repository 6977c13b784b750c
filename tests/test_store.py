"""The results store: atomic writes, array round trips, corrupt pieces, completion markers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minisub.run import store
from minisub.mlp.pipeline import AuxConfig

TREE = {
    "accuracy": {"teacher": np.array([0.9, 0.8], np.float32), "student_aux": np.array([0.5, 0.4], np.float32)},
    "geometry": {"dist_init": {"hidden.0": np.zeros((2, 4)), "head": np.ones((2, 4)), "total": np.ones((2, 4))}},
    "seed": np.arange(2),
    "finite": np.array([True, False]),
    "scalar": np.float64(3.25),
}


def _assert_same_tree(a, b):
    assert isinstance(a, dict) and isinstance(b, dict)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_tree(a[k], b[k])
        else:
            assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k
            np.testing.assert_array_equal(a[k], b[k])


def test_atomic_write_leaves_only_the_file(tmp_path):
    path = tmp_path / "sub" / "x.json"
    store.atomic_write(path, b"one")
    store.atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "x.bin"
    store.atomic_write(path, b"old")
    with pytest.raises(TypeError):
        store.atomic_write(path, "not bytes")  # fails inside the write
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_save_and_load_arrays_round_trip_nested_dicts(tmp_path):
    path = tmp_path / "piece.npz"
    store.save_arrays(path, TREE)
    _assert_same_tree(store.load_arrays(path), TREE)
    assert [p.name for p in tmp_path.iterdir()] == ["piece.npz"]


def test_flatten_and_unflatten_are_inverse():
    flat = store.flatten(TREE)
    assert "geometry/dist_init/hidden.0" in flat
    _assert_same_tree(store.unflatten(flat), TREE)


def test_load_arrays_of_a_missing_file_is_none(tmp_path):
    assert store.load_arrays(tmp_path / "absent.npz") is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "flipped data byte"])
def test_a_corrupt_piece_is_detected_and_removed(tmp_path, damage):
    path = tmp_path / "piece.npz"
    store.save_arrays(path, TREE)
    raw = path.read_bytes()
    if damage == "garbage":
        data = b"\x00not a zip file" * 10
    elif damage == "truncated":
        data = raw[: len(raw) // 2]
    elif damage == "empty":
        data = b""
    else:  # inside the first array's payload: the zip CRC must catch it
        magic = raw.index(b"\x93NUMPY")  # .npy v1: magic, version (2 bytes), header length (<u2), header
        offset = magic + 10 + int.from_bytes(raw[magic + 8: magic + 10], "little")
        data = raw[:offset] + bytes([raw[offset] ^ 0xFF]) + raw[offset + 1:]
    path.write_bytes(data)
    assert store.load_arrays(path) is None
    assert not path.exists()


def test_any_single_byte_corruption_is_detected_or_harmless(tmp_path):
    path = tmp_path / "piece.npz"
    store.save_arrays(path, TREE)
    raw = path.read_bytes()
    failures = []
    for i in range(len(raw)):
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
        try:
            loaded = store.load_arrays(path)
            if loaded is not None:
                _assert_same_tree(loaded, TREE)
        except Exception as e:  # noqa: BLE001
            failures.append((i, type(e).__name__))
    assert not failures, failures[:10]


def _finish(directory):
    store.finish(directory, TREE, {"experiment": "x", "accuracy": {"teacher": 0.9}})


def test_is_complete_requires_the_done_marker(tmp_path):
    assert not store.is_complete(tmp_path)
    store.save_arrays(tmp_path / "results.npz", TREE)
    store.write_json(tmp_path / "summary.json", {})
    assert not store.is_complete(tmp_path)  # results without DONE: an interrupted run
    _finish(tmp_path)
    assert store.is_complete(tmp_path)
    arrays, summary = store.load_complete(tmp_path)
    _assert_same_tree(arrays, TREE)
    assert summary["accuracy"]["teacher"] == 0.9


@pytest.mark.parametrize("name", ["results.npz", "summary.json"])
def test_a_result_file_modified_after_done_is_not_complete(tmp_path, name):
    _finish(tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes() + b" ")
    assert not store.is_complete(tmp_path)
    assert store.load_complete(tmp_path) is None


@pytest.mark.parametrize("name", ["results.npz", "summary.json"])
def test_a_result_file_deleted_after_done_is_not_complete(tmp_path, name):
    _finish(tmp_path)
    (tmp_path / name).unlink()
    assert not store.is_complete(tmp_path)


def test_a_corrupt_done_marker_is_not_complete(tmp_path):
    _finish(tmp_path)
    (tmp_path / "DONE").write_text("{not json")
    assert not store.is_complete(tmp_path)


def test_done_records_the_sha256_of_each_result_file(tmp_path):
    _finish(tmp_path)
    done = json.loads((tmp_path / "DONE").read_text())
    assert set(done) == {"results.npz", "summary.json"}
    assert all(len(h) == 64 for h in done.values())


def test_run_dir_is_under_results_root_and_named_by_the_digest(results_dir):
    from minisub import config

    cfg = AuxConfig(seeds=4)
    assert store.results_root() == results_dir  # the conftest isolates every test's store
    assert store.run_dir("mnist-aux", cfg) == results_dir / "mnist-aux" / config.digest(cfg)
    assert store.run_dir("mnist-aux", cfg) != store.run_dir("mnist-aux", AuxConfig(seeds=5))


def test_provenance_names_versions_and_backend():
    prov = store.provenance()
    assert prov["versions"]["jax"] and prov["versions"]["numpy"]
    assert prov["backend"] in {"cpu", "gpu", "tpu", "cuda", "rocm"} and prov["devices"] >= 1
    json.dumps(prov)  # stored as JSON


def test_matmul_precision_is_an_execution_setting_recorded_in_provenance(monkeypatch):
    import jax
    import jax.numpy as jnp

    from minisub.config import ConfigError
    from minisub.run import precision

    cfg = AuxConfig(seeds=4)
    monkeypatch.delenv(precision.ENV, raising=False)
    assert store.provenance()["matmul_precision"] == "highest"  # full float32: GPU results comparable to CPU ones
    run_id = store.run_dir("mnist-aux", cfg).name
    monkeypatch.setenv(precision.ENV, "tensorfloat32")
    assert store.provenance()["matmul_precision"] == "tensorfloat32"
    assert store.run_dir("mnist-aux", cfg).name == run_id  # never part of the run id
    def traced(value=None):  # the programs traced inside the block carry it
        with precision.applied(value):
            return jax.jit(jnp.dot).lower(jnp.ones((2, 2)), jnp.ones((2, 2))).as_text()

    assert "precision = [HIGH, HIGH]" in traced()
    assert "precision = [HIGHEST, HIGHEST]" in traced("highest")
    monkeypatch.setenv(precision.ENV, "fast")
    with pytest.raises(ConfigError, match=precision.ENV):
        precision.setting()
