"""Trained parameters on disk: one ``.npz`` keyed by each leaf's key path, with a manifest.

A file holds one or more named pytrees; each leaf is stored under ``<tree name>/<key path>``,
the key path written as the layer's dotted path, then ``/`` and the leaf's name::

    teacher/init/hidden.0/kernel   teacher/final/head/bias   students/student_aux/final/hidden.0/kernel

The entry ``__manifest__`` (JSON) lists every entry's path, shape and dtype. ``load(path, spec,
name)`` rebuilds the tree for a network spec (``MLPSpec``, ``TransformerSpec``: the structure of
``spec.init``, from ``jax.eval_shape``) and checks structure, shapes and dtypes against it, so a
file written for another network is an error naming the first mismatch, never a silently
reshaped model. ``flat``/``unflat`` are the same format for any pytree against a template (the
toy LM's stored references and pretraining checkpoints use them).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minisub.config import ConfigError
from minisub.run import store

MANIFEST = "__manifest__"
SEED_FILE = "seed_{:06d}.npz"


class ParamsMismatch(ConfigError):
    """Stored parameters do not fit the network asked for; the message names the first difference."""


def _part(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def key_path(path) -> str:
    """``(DictKey('hidden'), DictKey(0), DictKey('kernel'), GetAttrKey('value'))`` -> ``'hidden.0/kernel'``."""
    parts = [_part(p) for p in path]
    if len(parts) > 1 and parts[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        parts = parts[:-1]  # an nnx.Variable's payload
    if not parts:
        return "value"
    return "/".join(filter(None, (".".join(parts[:-1]), parts[-1])))


def flat(tree) -> dict[str, np.ndarray]:
    """``{key path: numpy array}`` of a pytree's leaves (distinct paths, checked)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = key_path(path)
        if name in out:
            raise ValueError(f"two leaves share the key path {name!r}")
        out[name] = np.asarray(leaf)
    return out


def unflat(template, leaves: dict[str, np.ndarray], what: str = "stored parameters"):
    """The pytree of ``template``'s structure (arrays or ``jax.ShapeDtypeStruct``) from ``flat``'s entries.

    Raises ParamsMismatch unless the entries are exactly the template's key paths, each with the
    template's shape and dtype.
    """
    leaves = store.flatten(leaves) if any(isinstance(v, dict) for v in leaves.values()) else leaves
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [key_path(p) for p, _ in paths]
    missing, extra = sorted(set(names) - set(leaves)), sorted(set(leaves) - set(names))
    if missing or extra:
        raise ParamsMismatch(f"{what} do not have the network's structure: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}")
    out = []
    for name, (_, t) in zip(names, paths):
        v = np.asarray(leaves[name])
        if tuple(v.shape) != tuple(t.shape) or v.dtype != np.dtype(t.dtype):
            raise ParamsMismatch(f"{what}: {name} is {v.dtype}{list(v.shape)}, the network's is "
                                 f"{np.dtype(t.dtype)}{list(t.shape)}")
        out.append(jnp.asarray(v))
    return jax.tree_util.tree_unflatten(treedef, out)


def matches(template, leaves: dict | None) -> bool:
    """Whether ``leaves`` rebuild ``template`` (``unflat`` would succeed)."""
    if leaves is None:
        return False
    try:
        unflat(template, leaves)
    except ParamsMismatch:
        return False
    return True


def save(path: Path, trees: dict[str, object]) -> None:
    """Write named pytrees (``{'teacher/final': params, ...}``) to one npz with its manifest, atomically."""
    entries = {f"{name}/{k}" if name else k: v for name, tree in trees.items() for k, v in flat(tree).items()}
    manifest = [{"path": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in entries.items()]
    buf = io.BytesIO()
    np.savez(buf, **entries, **{MANIFEST: np.asarray(json.dumps(manifest))})
    store.atomic_write(Path(path), buf.getvalue())


def read(path: Path) -> dict[str, np.ndarray]:
    """Every entry of a params file, checked against its manifest."""
    try:
        with np.load(path) as z:
            entries = {k: z[k] for k in z.files}
        manifest = json.loads(str(entries.pop(MANIFEST)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ParamsMismatch(f"{path} is not a readable params file ({e})") from None
    listed = {m["path"]: m for m in manifest}
    if set(listed) != set(entries) or any(
            list(entries[k].shape) != m["shape"] or str(entries[k].dtype) != m["dtype"] for k, m in listed.items()):
        raise ParamsMismatch(f"{path}: its entries differ from its manifest (a damaged file)")
    return entries


def names(path: Path, spec) -> list[str]:
    """The trees for ``spec`` a params file holds (``teacher/init``, ``students/student_aux/final``, ...)."""
    return _roots(read(Path(path)), _template(spec))


def _template(spec):
    return jax.eval_shape(spec.init, jax.random.key(0))


def _roots(entries: dict, template) -> list[str]:
    """Names under which ``entries`` hold a leaf of ``template`` ('' for a tree saved at the root)."""
    leaves = [key_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
    return sorted({k[: len(k) - len(t)].rstrip("/") for k in entries for t in leaves
                   if k == t or k.endswith("/" + t)})


def select(entries: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The entries of the tree ``name`` (``'teacher/final'``; ``''``: every entry), keyed by their path in it."""
    prefix = name.rstrip("/") + "/" if name else ""
    return {k[len(prefix):]: v for k, v in entries.items() if k.startswith(prefix)}


def load(path: Path, spec, name: str | None = None):
    """The tree ``name`` of the params file ``path``, rebuilt for ``spec`` (``MLPSpec``/``TransformerSpec``).

    ``name`` may be omitted when the file holds one tree. Structure, shapes and dtypes are checked
    against ``spec.init``'s (``jax.eval_shape``; nothing is computed).
    """
    entries, template = read(Path(path)), _template(spec)
    roots = _roots(entries, template)
    if name is None:
        if len(roots) != 1:
            raise ParamsMismatch(f"{path} holds {len(roots)} trees for this network: name one of {', '.join(roots)}")
        name = roots[0]
    chosen = select(entries, name)
    if not chosen:
        raise ParamsMismatch(f"{path} has no tree {name!r}: it holds {', '.join(roots) or 'none for this network'}")
    return unflat(template, chosen, f"{path}:{name}")


# --- what --keep-params stores: one file per seed of a population run -----------------------
def seed_path(directory: Path, seed: int) -> Path:
    return Path(directory) / "params" / SEED_FILE.format(seed)


def complete(directory: Path, seeds: int) -> bool:
    """Whether every seed of a run has its params file."""
    return all(seed_path(directory, s).exists() for s in range(seeds))


def save_population(directory: Path, seed_ids, trees_of_seed) -> list[Path]:
    """``trees_of_seed(row) -> {name: tree}`` for each row of a block, saved as ``params/seed_NNNNNN.npz``."""
    paths = []
    for row, seed in enumerate(np.asarray(seed_ids)):
        path = seed_path(directory, int(seed))
        save(path, trees_of_seed(row))
        paths.append(path)
    return paths
