"""Results on disk: one directory per config hash, atomic writes, pieces that make runs resumable.

Layout: ``<root>/<experiment>/<run-id>/`` with ``config.json`` (config, package versions, git
commit), ``pieces/*.npz`` (finished blocks of seeds), ``results.npz`` and ``summary.json``, and a
``DONE`` marker written last that records the sha256 of every result file, so a partial or
corrupted directory is never read as a result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from minisub import config as config_lib

RESULT_FILES = ("results.npz", "summary.json")


def results_root() -> Path:
    return Path(os.environ.get("MINISUB_RESULTS", "results"))


def run_dir(experiment: str, cfg, root: Path | None = None) -> Path:
    return (root or results_root()) / experiment / config_lib.digest(cfg)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {'a/b/c': array}."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "/"))
        else:
            out[name] = np.asarray(v)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for name, v in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


_KEYS = "__keys__"


def save_arrays(path: Path, tree: dict) -> None:
    """Save nested arrays with a manifest of their names, so a damaged file is never half-read."""
    flat = flatten(tree)
    buf = io.BytesIO()
    np.savez(buf, **flat, **{_KEYS: np.array(sorted(flat))})
    atomic_write(path, buf.getvalue())


def load_arrays(path: Path) -> dict | None:
    """The arrays in ``path``, or None when the file is missing or unreadable (then it is removed)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            flat = {k: z[k] for k in z.files}
        manifest = flat.pop(_KEYS)
        if sorted(flat) != manifest.tolist():
            raise ValueError("entries differ from the manifest")
        return unflatten(flat)
    except Exception:  # noqa: BLE001 -- any damage means: recompute this piece
        path.unlink(missing_ok=True)
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance() -> dict:
    """Package versions, the git commit of the code that produced a result, and how it computed.

    ``matmul_precision`` is the float32 matmul precision runs use (``minisub.run.precision``).
    """
    versions = {}
    for pkg in ("minisub", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import jax

    from minisub.run import precision

    return {"versions": versions, "git_commit": commit, "backend": jax.default_backend(), "devices": jax.device_count(),
            "matmul_precision": precision.setting()}


def is_complete(directory: Path) -> bool:
    """True when ``DONE`` exists and every result file still has the sha256 it records."""
    marker = directory / "DONE"
    if not marker.exists():
        return False
    try:
        expected = json.loads(marker.read_text())
        return isinstance(expected, dict) and set(expected) == set(RESULT_FILES) and all((directory / f).exists() and _sha256(directory / f) == h for f, h in expected.items())
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def locked(directory: Path):
    """An exclusive lock on ``directory`` across processes (``flock`` on ``directory/.lock``)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finish(directory: Path, arrays: dict, summary: dict) -> None:
    """Write the results, then the ``DONE`` marker (last, atomically).

    Under a lock, so two processes completing the same run cannot interleave their files.
    """
    with locked(directory):
        save_arrays(directory / "results.npz", arrays)
        write_json(directory / "summary.json", summary)
        write_json(directory / "DONE", {f: _sha256(directory / f) for f in RESULT_FILES})


def load_complete(directory: Path) -> tuple[dict, dict] | None:
    """(arrays, summary) of a complete run directory, or None."""
    if not is_complete(directory):
        return None
    arrays = load_arrays(directory / "results.npz")
    return (arrays, json.loads((directory / "summary.json").read_text())) if arrays is not None else None


RUN_ID = re.compile(r"^[0-9a-f]{16}$")


def status(directory: Path) -> str:
    """``done`` (complete and intact), ``corrupt`` (a result file changed, missing or unreadable
    after ``DONE``, or a damaged ``config.json``) or ``partial`` (no ``DONE`` yet: pieces so far)."""
    if (directory / "DONE").exists():
        if not is_complete(directory):
            return "corrupt"
        try:
            json.loads((directory / "summary.json").read_text())
        except (OSError, ValueError):
            return "corrupt"
    config_file = directory / "config.json"
    if config_file.exists():
        try:
            json.loads(config_file.read_text())
        except (OSError, ValueError):
            return "corrupt"
    return "done" if (directory / "DONE").exists() else "partial"


def run_dirs(experiment: str | None = None, root: Path | None = None) -> list[Path]:
    """Every run directory (``<root>/<experiment>/<run id>/``) under the results root, oldest first."""
    root = root or results_root()
    parents = [root / experiment] if experiment else sorted(p for p in root.glob("*") if p.is_dir())
    found = [d for parent in parents if parent.is_dir() for d in parent.iterdir() if d.is_dir() and RUN_ID.match(d.name)]
    return sorted(found, key=lambda d: (modified(d), str(d)))


def modified(directory: Path) -> float:
    """When a run directory last changed: the newest mtime of its files (the directory's own if empty)."""
    times = [p.stat().st_mtime for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return max(times, default=directory.stat().st_mtime)
