"""Fashion-MNIST from local idx files: found where documented, gzipped or not, refused on a bad checksum."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

from minisub.mlp import fashion


def _idx(array: np.ndarray) -> bytes:
    """An idx file (uint8 data) for ``array``."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def tiny_set(tmp_path, monkeypatch):
    """A 5-image 'test split' in $MINISUB_DATA_DIR/fashion-mnist, with its checksums registered."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, 5, dtype=np.uint8)
    files = {"t10k-images-idx3-ubyte": _idx(images), "t10k-labels-idx1-ubyte": _idx(labels)}
    monkeypatch.setenv("MINISUB_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fashion, "_dpkg_dirs", lambda: [])
    monkeypatch.setattr(fashion, "IDX_SHA256", {**fashion.IDX_SHA256,
                                                **{k: hashlib.sha256(v).hexdigest() for k, v in files.items()}})
    (tmp_path / "fashion-mnist").mkdir()
    return tmp_path / "fashion-mnist", files, images.reshape(5, 784), labels


def test_gzipped_files_in_the_data_dir_are_found(tiny_set):
    directory, files, images, labels = tiny_set
    for name, data in files.items():
        (directory / f"{name}.gz").write_bytes(gzip.compress(data))
    got_images, got_labels = fashion.load("test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert fashion.available("test") is None


def test_uncompressed_files_are_found_too(tiny_set):
    directory, files, images, _ = tiny_set
    for name, data in files.items():
        (directory / name).write_bytes(data)
    np.testing.assert_array_equal(fashion.load("test")[0], images)


def test_a_corrupt_file_is_refused_with_the_fix_in_the_message(tiny_set):
    directory, files, _, _ = tiny_set
    for name, data in files.items():
        (directory / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(fashion.FashionUnavailable) as err:
        fashion.load("test")
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value) and str(directory) in str(err.value)
    assert "apt-get" in fashion.available("test")


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        fashion.load("valid")
