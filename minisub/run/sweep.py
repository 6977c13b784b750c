"""Sweeps: many points of one experiment, grouped into shared programs, each point cached on its own.

A *point* is a program config with exactly one student arm, read out after some student epoch.
Points whose programs agree in everything but their arms run as one vmapped program (seeds ×
arms); each finished point is written to the point cache at once, so a killed sweep loses no
finished point and a rerun computes only the missing ones (and, inside a program, only its
missing blocks of seeds: the runner's pieces).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from minisub import config as config_lib
from minisub import stats
from minisub.run import parallel
from minisub.mlp import pipeline
from minisub.run import runner
from minisub.run import store

MAX_ARMS = 12  # arms per program: more are split over several programs (memory)


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured condition: ``cfg`` (with one arm) read out after ``readout`` student epochs."""

    family: str
    series: str  # the curve it belongs to, e.g. 'shared' or 'different'
    value: object  # its position along the sweep (a number, or a label for categorical sweeps)
    cfg: pipeline.AuxConfig
    readout: int | None = None  # student epoch to read (1-based); None: the last

    def __post_init__(self):
        config_lib.require(len(self.cfg.arms) == 1, "arms", self.cfg.arm_names, "exactly one arm per sweep point")
        if self.readout is not None:
            config_lib.require(1 <= self.readout <= self.cfg.student_epochs, "readout", self.readout,
                               f"in [1, student_epochs={self.cfg.student_epochs}]")

    @property
    def arm(self) -> pipeline.Arm:
        return self.cfg.arms[0]

    @property
    def epoch(self) -> int:
        return self.readout or self.cfg.student_epochs


def _science(arm: pipeline.Arm, cfg: pipeline.AuxConfig) -> dict:
    """An arm's fields without its name (which changes nothing computed); its own lr only if it differs."""
    out = {k: v for k, v in dataclasses.asdict(arm).items() if k != "name"}
    if out["lr"] == cfg.student_lr:
        out["lr"] = None
    return out


def program_key(cfg: pipeline.AuxConfig) -> str:
    """What a point's program is, arms aside: points with equal keys can share one program."""
    fields = {k: v for k, v in config_lib.to_dict(cfg).items() if k != "arms"}
    return json.dumps(fields, sort_keys=True)


def point_id(p: Point) -> str:
    """A stable hash of everything that determines the point's numbers."""
    blob = json.dumps({"program": program_key(p.cfg), "arm": _science(p.arm, p.cfg), "epoch": p.epoch}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def groups(points: list[Point], max_arms: int = MAX_ARMS) -> list[tuple[pipeline.AuxConfig, list[list[Point]]]]:
    """Programs to run, in order of first appearance: (config with its arms, points read from each arm)."""
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


def record(p: Point, cfg: pipeline.AuxConfig, results: dict, k: int) -> dict:
    """The stored numbers of point ``p``, read from arm ``k`` of the program ``cfg``'s results."""
    ok = np.asarray(results.get("finite", np.ones(cfg.seeds, bool)), bool)
    e = p.epoch - 1
    loss = np.asarray(results["student_loss"])[:, e, :, k]  # [seed, step]: the imitation loss of that epoch
    geometry = results.get("geometry_by_epoch", {})
    out = {
        "id": point_id(p),
        "family": p.family,
        "series": p.series,
        "value": p.value,
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


def run(points: list[Point], cache: PointCache, mnist_loader: Callable, execution: runner.Execution,
        *, results_root: Path | None = None, on_group: Callable | None = None) -> list[dict]:
    """Every point's record (cached ones read, missing ones computed group by group), in input order.

    ``on_group(cfg, points)`` is called before each program runs (progress, tests).
    """
    missing = [p for p in points if cache.get(p) is None]
    plan = groups(missing)
    data = mnist_loader() if plan and execution.compute else None
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
    # A cached point may have been measured for another sweep: label it as this sweep's.
    found = [(p, cache.get(p)) for p in points]
    return [r | {"family": p.family, "series": p.series, "value": p.value} for p, r in found if r is not None]
