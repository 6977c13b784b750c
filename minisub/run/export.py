"""Stored runs as tables: what the store holds (``runs``), and one tidy long table of per-seed values.

``rows(run_dir)`` walks a complete run's ``summary.json``: every dict holding a ``values`` list
(per-seed values, e.g. ``accuracy/student_aux``) gives one row per seed, ``run_id, experiment,
arm, seed, metric, value``, plus the run's config as ``config.<field>`` columns. The arm is the
path component that names an arm (or ``reference``/``teacher``), the metric the rest of the path.
``frame`` makes it a pandas DataFrame; ``write`` a CSV (standard library) or Parquet file
(pandas + pyarrow: ``pip install 'minisub[export]'``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import time
from pathlib import Path

from minisub.config import ConfigError
from minisub.run import store

COLUMNS = ("run_id", "experiment", "arm", "seed", "metric", "value")
SKIP = ("config", "provenance", "paper", "verdicts")  # not per-seed results of this run
FORMATS = ("csv", "parquet")
_PIECE = re.compile(r"seeds_(\d+)_(\d+)\.npz$")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One stored run, as ``minisub runs`` lists it."""

    experiment: str
    run_id: str
    directory: Path
    status: str  # done, partial or corrupt (store.status)
    seeds: str  # the config's seeds; for a partial run, how many its stored pieces cover
    preset: str  # the closest preset of the experiment ('' when unknown)
    differs: dict  # {field: value} where the run's config differs from that preset
    modified: float  # newest file's mtime


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_config(directory: Path) -> dict | None:
    """The config a run directory was made with (``config.json``, else its summary's), or None."""
    stored = _read_json(directory / "config.json")
    if isinstance(stored, dict) and isinstance(stored.get("config"), dict):
        return stored["config"]
    summary = _read_json(directory / "summary.json")
    return summary.get("config") if isinstance(summary, dict) else None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def closest_preset(experiment: str, cfg: dict | None) -> tuple[str, dict]:
    """(the preset of ``experiment`` whose config differs from ``cfg`` in fewest fields, those fields)."""
    if cfg is None:
        return "", {}
    from minisub import config as config_lib
    from minisub import registry

    try:
        presets = registry.experiment(experiment).PRESETS
    except ConfigError:  # a cache, not an experiment (lm-references), or one not installed here
        return "", {}
    flat = _flat(cfg)
    best = None
    for name, preset in presets.items():
        ref = _flat(config_lib.to_dict(preset))
        diff = {k: v for k, v in flat.items() if ref.get(k, object()) != v}
        diff |= {k: None for k in ref if k not in flat}
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    return best


def _covered(directory: Path) -> int:
    seeds = set()
    for path in (directory / "pieces").glob("seeds_*.npz"):
        if m := _PIECE.search(path.name):
            seeds.update(range(int(m.group(1)), int(m.group(2))))
    return len(seeds)


def runs(experiment: str | None = None, root: Path | None = None) -> list[RunInfo]:
    """Every stored run under the results root (or of one experiment), oldest first."""
    out = []
    for d in store.run_dirs(experiment, root):
        cfg, state = run_config(d), store.status(d)
        seeds = str(cfg.get("seeds", "?")) if isinstance(cfg, dict) else "?"
        if state == "partial":
            seeds = f"{_covered(d)}/{seeds}"
        preset, differs = closest_preset(d.parent.name, cfg)
        out.append(RunInfo(d.parent.name, d.name, d, state, seeds, preset, differs, store.modified(d)))
    return out


def _short(value, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def format_runs(infos: list[RunInfo]) -> str:
    """A plain-text table of ``runs``: experiment, run id, status, seeds, preset + differences, when."""
    header = ("experiment", "run id", "status", "seeds", "config", "modified")
    lines = [header]
    for r in infos:
        config = (f"{r.preset}" + "".join(f" {k}={_short(v)}" for k, v in r.differs.items())) if r.preset else "-"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified))
        lines.append((r.experiment, r.run_id, r.status, r.seeds, config, when))
    widths = [max(len(line[k]) for line in lines) for k in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[-1]]).rstrip() for line in lines)


# --- the tidy table ----------------------------------------------------------------------------
def _arm_names(cfg: dict) -> set[str]:
    arms = cfg.get("arms", []) if isinstance(cfg, dict) else []
    names = {a.get("name") if isinstance(a, dict) else a for a in arms if isinstance(a, (dict, str))}
    return {n for n in names if n} | {"reference", "teacher"}


def _seed_ids(summary: dict, cfg: dict, n_values: int) -> list[int]:
    """Which seed each position of a ``values`` list is: non-finite seeds (left out) are skipped."""
    n = cfg.get("seeds") if isinstance(cfg, dict) else None
    if isinstance(n, int):
        bad = set(summary.get("nonfinite_seeds") or [])
        kept = [s for s in range(n) if s not in bad]
        if len(kept) == n_values:
            return kept
    return list(range(n_values))


def _walk(node, path: tuple = ()):
    """(path, dict) for every dict holding a ``values`` list, outside ``SKIP``."""
    if isinstance(node, dict):
        if isinstance(node.get("values"), list):
            yield path, node
        for k, v in node.items():
            if not (path == () and k in SKIP) and k != "values":
                yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for k, v in enumerate(node):
            yield from _walk(v, (*path, k))


def _scalars(value, suffix: str = ""):
    """(metric suffix, float) of one per-seed value; a vector value gives one entry per element."""
    if isinstance(value, list):
        for k, v in enumerate(value):
            yield from _scalars(v, f"{suffix}/{k}")
    elif value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        yield suffix, math.nan if value is None else float(value)


def rows(directory: Path) -> list[dict]:
    """The tidy long table of one complete run (see the module docstring)."""
    directory = Path(directory)
    state = store.status(directory)
    if state != "done":
        raise ConfigError(f"run={str(directory)!r} is not allowed: only complete runs export, and this one is {state}")
    summary = json.loads((directory / "summary.json").read_text())
    cfg = run_config(directory) or {}
    arms = _arm_names(cfg)
    columns = {f"config.{k}": (json.dumps(v) if isinstance(v, list) else v) for k, v in _flat(cfg).items()}
    base = {"run_id": directory.name, "experiment": summary.get("experiment", directory.parent.name)}
    out = []
    for path, node in _walk(summary):
        arm = next((str(p) for p in path if isinstance(p, str) and p in arms), "")
        metric = "/".join(str(p) for p in path if str(p) != arm)
        given = node.get("seeds")
        ids = given if isinstance(given, list) and len(given) == len(node["values"]) else \
            _seed_ids(summary, cfg, len(node["values"]))
        for seed, value in zip(ids, node["values"]):
            for suffix, x in _scalars(value):
                out.append({**base, "arm": arm, "seed": int(seed), "metric": metric + suffix, "value": x, **columns})
    return out


def resolve(what: str, root: Path | None = None) -> list[Path]:
    """Run directories named by ``what``: a run directory, a run id, or an experiment (all its complete runs)."""
    path = Path(what)
    if path.is_dir() and ((path / "DONE").exists() or (path / "summary.json").exists()):
        return [path]
    if store.RUN_ID.match(what):
        found = [d for d in store.run_dirs(None, root) if d.name == what]
        if found:
            return found
    done = [d for d in store.run_dirs(what, root) if store.status(d) == "done"] if "/" not in what else []
    if done:
        return done
    raise ConfigError(f"export of {what!r} is not allowed: give a run directory, a run id or an experiment "
                      f"with complete runs under {root or store.results_root()} (minisub runs lists them)")


def frame(what: str | Path | list, root: Path | None = None):
    """A pandas DataFrame of the tidy table of ``what`` (see ``resolve``), columns ``COLUMNS`` first."""
    pd = _pandas()
    dirs = what if isinstance(what, list) else resolve(str(what), root)
    table = pd.DataFrame([r for d in dirs for r in rows(d)])
    return table[[*COLUMNS, *[c for c in table.columns if c not in COLUMNS]]] if len(table) else table


def _pandas():
    try:
        import pandas as pd
        import pyarrow  # noqa: F401 -- parquet's engine
    except ImportError:
        raise ConfigError("format='parquet' is not allowed without pandas and pyarrow: install them with "
                          "pip install 'minisub[export]'") from None
    return pd


def write(what: str, fmt: str = "csv", out: Path | None = None, root: Path | None = None) -> Path:
    """Write the tidy table of ``what`` as ``fmt`` (csv or parquet); the path written."""
    from minisub.config import require_choice

    require_choice("format", fmt, FORMATS)
    dirs = resolve(what, root)
    if out is None:
        one = dirs[0]
        out = Path(f"{one.parent.name}-{one.name}.{fmt}" if len(dirs) == 1 else f"{one.parent.name}.{fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame(dirs).to_parquet(out, index=False)
        return out
    table = [r for d in dirs for r in rows(d)]
    names = list(COLUMNS) + sorted({k for r in table for k in r} - set(COLUMNS))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names, restval="")
        writer.writeheader()
        writer.writerows(table)
    return out
