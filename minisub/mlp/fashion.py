"""Fashion-MNIST (a real image set that is not MNIST) from local idx files, checksummed; never downloaded.

Looked for, in order, in ``$MINISUB_DATA_DIR/fashion-mnist``, ``$MINISUB_DATA_DIR`` (or the
user cache directory, as ``minisub.mlp.mnist.cache_dir``), Debian's ``dataset-fashion-mnist``
package (``/usr/share/datasets/fashion-mnist``, or wherever ``dpkg -L`` says it put the files).
Files may be gzipped or not; the sha256 is checked on the *decompressed* idx bytes, so a
re-compressed copy (Debian's) and the canonical files are accepted alike.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np

from minisub.mlp import mnist

PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# sha256 of the decompressed idx files (Xiao, Rasul & Vollgraf 2017).
IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class FashionUnavailable(RuntimeError):
    """No checksummed copy of Fashion-MNIST was found; the message lists where it looked."""


def _dpkg_dirs() -> list[Path]:
    """Directories holding the package's idx files, as ``dpkg -L`` lists them (none without dpkg)."""
    if shutil.which("dpkg") is None:
        return []
    try:
        done = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({Path(line).parent for line in done.stdout.splitlines() if "idx" in line})


def search_dirs() -> list[Path]:
    """Where the idx files are looked for, in order."""
    base = mnist.cache_dir()
    dirs = [base / "fashion-mnist", base, DEBIAN_DIR, *_dpkg_dirs()]
    return list(dict.fromkeys(dirs))


def _read(directory: Path, name: str) -> bytes | None:
    """The decompressed bytes of ``name`` in ``directory`` when present and checksummed, else None."""
    for candidate, opener in ((directory / f"{name}.gz", gzip.open), (directory / name, open)):
        if candidate.exists():
            with opener(candidate, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() == IDX_SHA256[name]:
                return data
    return None


def load(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images ``[N, 784]``, uint8 labels ``[N]``) of ``split`` ('train' or 'test')."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    tried = []
    for directory in search_dirs():
        arrays = [_read(directory, name) for name in SPLITS[split]]
        if all(a is not None for a in arrays):
            images, labels = (mnist._parse_idx(a) for a in arrays)
            return images.reshape(-1, 784), labels
        tried.append(str(directory))
    raise FashionUnavailable(
        f"Fashion-MNIST ({split}) not found with the expected sha256 in: {', '.join(tried)}. "
        f"Install Debian's package (`apt-get install -y {PACKAGE}`) or put the idx files "
        f"{', '.join(SPLITS[split])} (optionally .gz) in {mnist.cache_dir() / 'fashion-mnist'}."
    )


def available(split: str = "test") -> str | None:
    """None when ``load(split)`` works, else the reason it does not."""
    try:
        load(split)
    except FashionUnavailable as e:
        return str(e)
    return None
