"""Sweeps: a base config and a list of (field, value) changes, each point measured and cached on its own.

A *point* is one config of any experiment's program, labelled by the curve it belongs to
(``series``) and its position along the sweep (``value``), read out after some epoch. ``grid``
builds the points of a base config crossed with lists of field values; ``run`` measures them:

* MLP points (``pipeline.AuxConfig`` with exactly one student arm) take the fast path: points whose
  programs agree in everything but their arms run as one vmapped program (seeds × arms), and a
  long run is read out after each requested student epoch;
* points of any other multi-arm program (a config with an ``arms`` field, e.g. the toy LM's
  ``LMConfig``) that read one arm each (``Point.baselines`` set) run the same way through
  ``ArmPrograms``: one program for the points whose configs differ only in their arms, at most
  ``max_arms`` arms a program, the ``baselines`` arms in every program so that each point's
  record can pair its per-seed values with theirs (same worlds, same program);
* any other program runs point by point through ``measure(point, execution) -> record fields``.

Each finished point is written to the point cache at once (seeded from committed records), so a
killed sweep loses no finished point and a rerun computes only the missing ones (and, inside an
MLP program, only its missing blocks of seeds: the runner's pieces).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from minisub import config as config_lib
from minisub import stats
from minisub.mlp import pipeline
from minisub.run import parallel, runner, store

MAX_ARMS = 12  # arms per program: more are split over several programs (memory)
READOUT = "readout"  # the pseudo-field of ``grid``/``apply`` that sets the point's readout epoch


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured condition: ``cfg`` read out after ``readout`` epochs (None: the last)."""

    family: str
    series: str  # the curve it belongs to, e.g. 'shared' or 'different'
    value: object  # its position along the sweep (a number, or a label for categorical sweeps)
    cfg: object  # a typed config; an MLP point's AuxConfig holds exactly one arm
    readout: int | None = None
    # Arms run beside this point's arm in its program (``ArmPrograms``); None: not such a point.
    baselines: tuple | None = None

    def __post_init__(self):
        if self.baselines is not None:
            config_lib.require(not is_mlp(self.cfg), "baselines", self.baselines,
                               "None for an MLP point (its programs are grouped by arm already)")
            config_lib.require(len(self.cfg.arms) == 1, "arms", tuple(a.name for a in self.cfg.arms),
                               "exactly one arm per sweep point")
        if is_mlp(self.cfg):
            config_lib.require(len(self.cfg.arms) == 1, "arms", self.cfg.arm_names, "exactly one arm per sweep point")
            if self.readout is not None:
                config_lib.require(1 <= self.readout <= self.cfg.student_epochs, "readout", self.readout,
                                   f"in [1, student_epochs={self.cfg.student_epochs}]")

    @property
    def arm(self) -> pipeline.Arm:
        return self.cfg.arms[0]

    @property
    def epoch(self) -> int | None:
        return self.readout or getattr(self.cfg, "student_epochs", None)


def is_mlp(cfg) -> bool:
    return isinstance(cfg, pipeline.AuxConfig)


# --- building points: a base config and (field, value) changes ----------------------------------

def _set(obj, path: list[str], value):
    """``obj`` with the (dotted) field ``path`` set: dataclass fields by name, tuple items by index."""
    head, rest = path[0], path[1:]
    if isinstance(obj, tuple):
        k = int(head)
        return (*obj[:k], _set(obj[k], rest, value) if rest else value, *obj[k + 1:])
    if not (dataclasses.is_dataclass(obj) and head in {f.name for f in dataclasses.fields(obj)}):
        raise config_lib.ConfigError(f"unknown field {head!r} of {type(obj).__name__}")
    return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})


def apply(base, changes: Sequence[tuple[str, object]]):
    """(config, readout): ``base`` with the (field, value) ``changes`` applied.

    Top-level fields change together, in one ``dataclasses.replace`` (so a config validates the
    combination, never a half-changed one); dotted fields (``arms.0.lr``: the first arm's learning
    rate) then change one by one. ``readout`` sets the epoch the point is read after; an MLP
    change ``arm`` sets the one student arm (``arms=(arm,)``).
    """
    top, dotted, readout = {}, [], None
    for field, value in changes:
        if field == READOUT:
            readout = value
        elif "." in field:
            dotted.append((field, value))
        else:
            top["arms" if field == "arm" else field] = (value,) if field == "arm" else value
    unknown = set(top) - {f.name for f in dataclasses.fields(base)}
    if unknown:
        raise config_lib.ConfigError(f"unknown field {sorted(unknown)[0]!r} of {type(base).__name__}")
    cfg = dataclasses.replace(base, **top) if top else base
    for field, value in dotted:
        cfg = _set(cfg, field.split("."), value)
    return cfg, readout


def point(family: str, series: str, value, base, *changes: tuple[str, object],
          baselines: tuple | None = None) -> Point:
    """The point of ``base`` with ``changes`` applied (``baselines``: see ``Point``)."""
    cfg, readout = apply(base, changes)
    return Point(family, series, value, cfg, readout, baselines)


def _label(value) -> str:
    return getattr(value, "name", None) or str(value)


def grid(base, axes: dict[str, Sequence], *, family: str = "sweep", x: str | None = None,
         series: Callable[[dict], str] | None = None, value: Callable[[dict], object] | None = None,
         fixed: Sequence[tuple[str, object]] = ()) -> list[Point]:
    """Every combination of ``axes`` ({field: values}) applied to ``base``, the last axis varying fastest.

    An axis is a list of values, or a dict {label: value} when the point should be labelled other
    than by the field's value (``{'hidden': {64: (64, 64)}}``). A point's ``value`` is its ``x``
    field's label (default: the first axis), its ``series`` the other fields' labels (an arm by its
    name); ``series``/``value`` functions of the combination ({field: value}) override either.
    ``fixed`` changes apply to every point.
    """
    fields = list(axes)
    x = x or fields[0]
    pairs = [list(a.items()) if isinstance(a, dict) else [(v, v) for v in a] for a in axes.values()]
    out = []
    for combo in itertools.product(*pairs):
        at, shown = {f: v for f, (_, v) in zip(fields, combo)}, {f: k for f, (k, _) in zip(fields, combo)}
        label = series(at) if series else ", ".join(_label(shown[f]) for f in fields if f != x) or family
        out.append(point(family, label, value(at) if value else shown[x], base, *fixed, *at.items()))
    return out


# --- identity and grouping ----------------------------------------------------------------------

def _science(arm: pipeline.Arm, cfg: pipeline.AuxConfig) -> dict:
    """An arm's fields without its name (which changes nothing computed); its own lr only if it differs."""
    out = {k: v for k, v in dataclasses.asdict(arm).items() if k != "name"}
    if out["lr"] == cfg.student_lr:
        out["lr"] = None
    return out


def program_key(cfg) -> str:
    """What a point's program is, arms aside: points with equal keys can share one program."""
    fields = {k: v for k, v in config_lib.to_dict(cfg).items() if k != "arms"}
    return json.dumps(fields, sort_keys=True)


def _arm_science(arm) -> dict:
    """Any arm's fields without its name: what it computes."""
    return {k: v for k, v in dataclasses.asdict(arm).items() if k != "name"}


def point_id(p: Point) -> str:
    """A stable hash of everything that determines the point's numbers (labels and arm names aside)."""
    if is_mlp(p.cfg):
        blob = {"program": program_key(p.cfg), "arm": _science(p.arm, p.cfg), "epoch": p.epoch}
    elif p.baselines is not None:  # its record also pairs it with the baselines' arms
        blob = {"type": type(p.cfg).__name__, "program": program_key(p.cfg), "arm": _arm_science(p.arm),
                "baselines": [_arm_science(b) for b in p.baselines], "epoch": p.readout}
    else:
        blob = {"type": type(p.cfg).__name__, "program": program_key(p.cfg), "epoch": p.readout}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def groups(points: list[Point], max_arms: int = MAX_ARMS) -> list[tuple[pipeline.AuxConfig, list[list[Point]]]]:
    """MLP programs to run, in order of first appearance: (config with its arms, points read from each arm)."""
    by_program: dict[str, list[Point]] = {}
    for p in points:
        by_program.setdefault(program_key(p.cfg), []).append(p)
    out = []
    for members in by_program.values():
        arms: dict[str, list[Point]] = {}
        for p in members:
            arms.setdefault(json.dumps(_science(p.arm, p.cfg), sort_keys=True), []).append(p)
        readers = list(arms.values())
        for lo in range(0, len(readers), max_arms):
            chunk = readers[lo:lo + max_arms]
            named = tuple(dataclasses.replace(ps[0].arm, name=f"arm{k}") for k, ps in enumerate(chunk))
            out.append((dataclasses.replace(members[0].cfg, arms=named), chunk))
    return out


@dataclasses.dataclass(frozen=True)
class ArmPrograms:
    """How points that read one arm each of a multi-arm program (``Point.baselines`` set) are computed.

    ``run(cfg, execution) -> results`` runs (or reads from its store) the program of ``cfg``, a
    config holding the program's arms; None when they are not available (merging only, or other
    processes still computing). ``record(point, cfg, results, k) -> dict`` is the point's numbers,
    read from arm ``k`` of those results; the baselines are arms ``0 .. len(baselines) - 1`` of
    every program.
    """

    run: Callable
    record: Callable
    max_arms: int = MAX_ARMS


def _chunks(items: list, room: int) -> list[list]:
    """``items`` cut into the fewest runs of at most ``room`` items, their lengths differing by at most one."""
    n = max(1, -(-len(items) // room))
    sizes = [len(items) // n + (k < len(items) % n) for k in range(n)]
    return [items[sum(sizes[:k]):sum(sizes[:k + 1])] for k in range(n)]


def _named(arms: list) -> tuple:
    """The arms with their names, or ``arm0, arm1, ...`` where their names repeat (a program's arms are unique)."""
    if len({a.name for a in arms}) == len(arms):
        return tuple(arms)
    return tuple(dataclasses.replace(a, name=f"arm{k}") for k, a in enumerate(arms))


def arm_groups(points: list[Point], max_arms: int = MAX_ARMS) -> list[tuple[object, list[list[Point]]]]:
    """Programs for points with ``baselines``, in order of first appearance: (config with its arms, readers).

    Points whose configs differ only in their arm (and share their baselines) share programs: the
    baselines first, then at most ``max_arms - len(baselines)`` other distinct arms each, in
    programs of balanced sizes; ``readers[k]`` are the points read from arm ``k``. A point whose arm
    is a baseline is read from the first of its programs. The plan is a function of ``points``
    alone, so a resumed sweep reruns a program with exactly the arms it had.
    """
    by_program: dict[str, list[Point]] = {}
    for p in points:
        key = json.dumps([program_key(p.cfg), [_arm_science(b) for b in p.baselines]], sort_keys=True)
        by_program.setdefault(key, []).append(p)
    out = []
    for members in by_program.values():
        baselines = list(members[0].baselines)
        config_lib.require(max_arms > len(baselines), "max_arms", max_arms,
                           f"more than the {len(baselines)} baseline arms every program holds")
        ident = lambda arm: json.dumps(_arm_science(arm), sort_keys=True)  # noqa: E731
        readers: dict[str, list[Point]] = {ident(b): [] for b in baselines}
        arms = {ident(b): b for b in baselines}
        for p in members:
            readers.setdefault(ident(p.arm), []).append(p)
            arms.setdefault(ident(p.arm), p.arm)
        base_ids = list(readers)[:len(baselines)]
        others = list(readers)[len(baselines):]
        for c, chunk in enumerate(_chunks(others, max_arms - len(baselines))):
            ids = base_ids + chunk
            cfg = dataclasses.replace(members[0].cfg, arms=_named([arms[i] for i in ids]))
            out.append((cfg, [readers[i] if c == 0 or i in chunk else [] for i in ids]))
    return out


def _label_of(p: Point) -> dict:
    return {"id": point_id(p), "family": p.family, "series": p.series, "value": p.value}


def record(p: Point, cfg: pipeline.AuxConfig, results: dict, k: int) -> dict:
    """The stored numbers of MLP point ``p``, read from arm ``k`` of the program ``cfg``'s results."""
    ok = np.asarray(results.get("finite", np.ones(cfg.seeds, bool)), bool)
    e = p.epoch - 1
    loss = np.asarray(results["student_loss"])[:, e, :, k]  # [seed, step]: the imitation loss of that epoch
    geometry = results.get("geometry_by_epoch", {})
    out = {
        **_label_of(p),
        "epoch": p.epoch,
        "arm": _science(p.arm, p.cfg),
        "n_seeds": int(ok.sum()),
        "nonfinite_seeds": [int(s) for s in np.flatnonzero(~ok)],
        "accuracy": stats.mean_ci(np.asarray(results["student_accuracy_by_epoch"])[ok, e, k]),
        "reference": stats.mean_ci(np.asarray(results["accuracy"]["reference"])[ok]),
        "teacher": stats.mean_ci(np.asarray(results["accuracy"]["teacher"])[ok]),
        "distill_loss": stats.mean_ci(loss[ok].mean(axis=1)),
        "geometry": {q: stats.brief(np.asarray(v["total"])[ok, e, k]) for q, v in geometry.items()},
        "geometry_by_layer": {q: {layer: stats.brief(np.asarray(x)[ok, e, k]) for layer, x in v.items() if layer != "total"}
                              for q, v in geometry.items()},
        "seconds_per_seed": float(np.mean(results["seconds"])),
        "program": config_lib.to_dict(cfg) | {"arms": None},
    }
    if "committee_accuracy" in results:
        out["committee"] = stats.brief(np.asarray(results["committee_accuracy"])[ok].mean(axis=1))
    return out


class PointCache:
    """Finished points, one JSON file each under ``directory``, seeded from committed records."""

    def __init__(self, directory: Path, committed: list[dict] = ()):
        self.directory = Path(directory)
        self.committed = {r["id"]: r for r in committed}

    @classmethod
    def seeded(cls, directory: Path, committed_summary: Path) -> "PointCache":
        """A cache under ``directory`` seeded from the point records of a committed sweep summary (if it exists)."""
        path = Path(committed_summary)
        return cls(directory, committed_records(json.loads(path.read_text())) if path.exists() else [])

    def path(self, pid: str) -> Path:
        return self.directory / f"{pid}.json"

    def get(self, p: Point) -> dict | None:
        pid = point_id(p)
        path = self.path(pid)
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:  # a torn file cannot happen with atomic writes; be safe anyway
                return None
        return self.committed.get(pid)

    def put(self, rec: dict) -> None:
        store.write_json(self.path(rec["id"]), rec)


def committed_records(summary: dict) -> list[dict]:
    """Every point record of a sweep summary ({'families': {name: {'points': [...]}}})."""
    return [r for fam in summary.get("families", {}).values() for r in fam["points"]]


# --- running ------------------------------------------------------------------------------------

def _run_mlp(missing: list[Point], cache: PointCache, loader: Callable | None, execution: runner.Execution,
             results_root: Path | None, on_group: Callable | None) -> None:
    plan = groups(missing)
    data = loader() if plan and execution.compute and loader is not None else None
    for n, (cfg, readers) in enumerate(plan):
        if on_group is not None:
            on_group(cfg, readers)
        if execution.compute:
            values = ", ".join(sorted({str(p.value) for ps in readers for p in ps}))
            print(f"[sweep {time.strftime('%H:%M:%S')}] program {n + 1}/{len(plan)}: {len(readers)} arms x "
                  f"{cfg.seeds} seeds ({readers[0][0].family}: {values})", flush=True)
        directory = store.run_dir(execution.experiment, cfg, results_root)
        if execution.compute and parallel.is_writer():
            store.write_json(directory / "config.json", {"config": config_lib.to_dict(cfg), **store.provenance()})
        results = runner.run(cfg, data, directory, execution=execution)
        if results is None:  # other shards still have seeds of this program
            continue
        for k, ps in enumerate(readers):
            for p in ps:
                cache.put(record(p, cfg, results, k))


def _run_arms(points: list[Point], missing: set[str], cache: PointCache, programs: ArmPrograms,
              execution: runner.Execution, on_group: Callable | None) -> None:
    """Every program of ``arm_groups(points)`` that holds a missing point, each point cached as it finishes."""
    plan = [(cfg, readers) for cfg, readers in arm_groups(points, programs.max_arms)
            if any(point_id(p) in missing for ps in readers for p in ps)]
    for n, (cfg, readers) in enumerate(plan):
        if on_group is not None:
            on_group(cfg, readers)
        if execution.compute and execution.progress:
            values = ", ".join(str(p.value) for ps in readers for p in ps)
            print(f"[sweep {time.strftime('%H:%M:%S')}] program {n + 1}/{len(plan)}: {len(cfg.arms)} arms x "
                  f"{cfg.seeds} seeds ({values})", flush=True)
        results = programs.run(cfg, execution)
        if results is None:
            continue
        for k, ps in enumerate(readers):
            for p in ps:
                if point_id(p) in missing:
                    cache.put({**_label_of(p), "epoch": p.readout, **programs.record(p, cfg, results, k),
                               "arm_index": k, "program": config_lib.to_dict(cfg)})


def run(points: list[Point], cache: PointCache, loader: Callable | None, execution: runner.Execution,
        *, measure: Callable | None = None, results_root: Path | None = None,
        on_group: Callable | None = None, programs: ArmPrograms | None = None) -> list[dict]:
    """Every point's record (cached ones read, missing ones computed), in input order; missing ones left out.

    MLP points run grouped into vmapped programs on ``loader()``'s data (``on_group(cfg, points)``
    is called before each program: progress, tests). Points with ``baselines`` run grouped through
    ``programs`` (``ArmPrograms``; the plan is made from all of them, cached or not, so a program is
    rerun with the arms it had). Any other point runs alone through ``measure(point, execution) ->
    dict`` (its numbers, e.g. ``{'accuracy': stats.mean_ci(...)}``).
    """
    missing = [p for p in points if cache.get(p) is None]
    mlp = [p for p in missing if is_mlp(p.cfg)]
    if mlp:
        _run_mlp(mlp, cache, loader, execution, results_root, on_group)
    if armed := [p for p in missing if p.baselines is not None]:  # never MLP points (Point checks)
        if programs is None:
            raise config_lib.ConfigError(f"sweep point {armed[0].family}/{armed[0].series}/{armed[0].value}: a "
                                         f"{type(armed[0].cfg).__name__} point with baselines needs programs=")
        grouped = [p for p in points if p.baselines is not None]
        _run_arms(grouped, {point_id(p) for p in armed}, cache, programs, execution, on_group)
    for p in (p for p in missing if not is_mlp(p.cfg) and p.baselines is None):
        if measure is None:
            raise config_lib.ConfigError(f"sweep point {p.family}/{p.series}/{p.value}: a "
                                         f"{type(p.cfg).__name__} needs measure=")
        if execution.compute:
            cache.put({**_label_of(p), "epoch": p.readout, **measure(p, execution),
                       "program": config_lib.to_dict(p.cfg)})
    # A cached point may have been measured for another sweep: label it as this sweep's.
    found = [(p, cache.get(p)) for p in points]
    return [r | {"family": p.family, "series": p.series, "value": p.value} for p, r in found if r is not None]


def changed_fields(base, cfg) -> dict:
    """The fields of ``cfg`` (flattened ``to_dict``) that differ from ``base``'s: what a point changed."""
    a, b = config_lib.to_dict(base), config_lib.to_dict(cfg)
    return {k: b[k] for k in b if a.get(k) != b[k]}


# --- families of sweeps: one summary, resumable, merged into a committed JSON --------------------

def complete(summary: dict) -> dict:
    """The families with every point computed (a merged summary may hold partial ones, kept for resuming)."""
    return {f: fam for f, fam in summary["families"].items() if not fam.get("missing_points")}


def run_families(families: dict[str, list[Point]], cache: PointCache, loader: Callable | None,
                 execution: runner.Execution, command: Callable[[str], str], *, together: bool = False,
                 **kw) -> dict | None:
    """{family: {'command', 'n_seeds', 'points', 'missing_points'}} of every family measured, or None.

    Computing, a family with points still missing (other shards) stops the sweep: None. Merging
    (``execution.compute`` False), a family with some stored points is kept, its missing points
    counted. ``command(family)`` is what recomputes the family. ``together``: the points of every
    family are planned and computed at once (a program may hold arms of several families), then
    read family by family; otherwise each family is computed in turn.
    """
    if together:
        run([p for points in families.values() for p in points], cache, loader, execution, **kw)
    out = {}
    for family, points in families.items():
        records = run(points, cache, loader, execution, **kw)
        if len(records) < len(points) and (execution.compute or not records):
            if execution.compute:
                return None
            continue
        out[family] = {"command": command(family), "n_seeds": min(r.get("n_seeds", 0) for r in records),
                       "points": records, "missing_points": len(points) - len(records)}
    return out or None


def incomplete(summary: dict, order) -> list[str]:
    """The families of ``order`` not (fully) in the summary, partial ones counted: 'lr (2 of 10 points to go)'."""
    have = summary["families"]
    return [f + (f" ({have[f]['missing_points']} of {have[f]['missing_points'] + len(have[f]['points'])} points to go)"
                 if f in have else "") for f in order if f not in complete(summary)]


def merge_families(summary: dict, path: Path, order, same: str = "base") -> dict:
    """``summary``'s families laid over those of the JSON at ``path`` (when its ``same`` field agrees), in ``order``."""
    fams = summary["families"]
    if Path(path).exists() and (old := json.loads(Path(path).read_text())).get(same) == summary.get(same):
        fams = {**old.get("families", {}), **fams}
    return {**summary, "families": {f: fams[f] for f in order if f in fams}}
