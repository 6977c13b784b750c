"""``minisub sweep``: any experiment's config fields swept from the command line, on the one sweep mechanism.

``minisub sweep mnist-aux --student-lr 1e-4,3e-4,1e-3 --seeds 20`` measures every student arm of
the preset at each value; two swept fields give a grid (the first is the x axis, the second
labels the curves). A field given one value is a fixed override. Values are separated by ``,``;
for a field that is itself a list (``--hidden 128,128``) sweep values are separated by ``;``
(``--hidden "64,64;256,256"``). Every point is validated before anything is computed.

Points go through ``minisub.run.sweep``: an MLP point per (combination, arm), grouped into
vmapped programs and cached one by one in ``<results>/sweeps/<experiment>/points/``; any other
experiment runs one stored run per combination (its own run id, so reruns are served from the
store) and reports what its module's ``sweep_metrics(summary) -> {name: stats dict}`` names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import typing
from pathlib import Path

from minisub import config as config_lib
from minisub.config import ConfigError
from minisub.report import plots, pm
from minisub.report import sweep as sweep_plots
from minisub.run import store, sweep

FAMILY = "sweep"


def split_values(cfg, overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(fixed overrides, swept fields {name: value texts}) of command-line ``overrides``."""
    infos = {i.name: i for i in config_lib.describe(cfg)} if overrides else {}
    fixed, axes = {}, {}
    for name, text in overrides.items():
        key = name.replace("-", "_")
        info = infos.get(key)
        listy = info is not None and typing.get_origin(info.annotation) is tuple
        values = [v.strip() for v in config_lib.split_top(text, ";" if listy else ",") if v.strip()]
        if key == "arms" or len(values) <= 1:
            fixed[key] = text
        else:
            axes[key] = values
    if not axes:
        raise ConfigError("sweep needs a field with two or more values, e.g. --student-lr 1e-4,3e-4,1e-3 "
                          "(list fields: --hidden '64,64;256,256')")
    if len(axes) > 2:
        raise ConfigError(f"sweep fields {', '.join(axes)} are not allowed: a sweep takes one or two swept fields")
    return fixed, axes


def combinations(base, axes: dict[str, list[str]]) -> list[tuple[dict[str, str], object]]:
    """Every (value texts, validated config) of the grid; any bad value raises before compute."""
    names = list(axes)
    out = []
    for combo in itertools.product(*axes.values()):
        texts = dict(zip(names, combo))
        out.append((texts, config_lib.override_fields(base, texts)))
    return out


def _x(text: str):
    """A swept value as the figure's x: a number where it is one (a log axis can use it), else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def points(base, axes: dict[str, list[str]]) -> list[sweep.Point]:
    """The sweep's points: one per (combination, arm) for the MLP, one per combination otherwise."""
    names = list(axes)
    out = []
    for texts, cfg in combinations(base, axes):
        other = ", ".join(f"{n}={texts[n]}" for n in names[1:])
        value = _x(texts[names[0]])
        if sweep.is_mlp(cfg):
            for arm in cfg.arms:
                series = f"{arm.name}, {other}" if other else arm.name
                out.append(sweep.Point(FAMILY, series, value, dataclasses.replace(cfg, arms=(arm,))))
        else:
            out.append(sweep.Point(FAMILY, other or "all", value, cfg))
    return out


def _measure(module):
    if not hasattr(module, "sweep_metrics"):
        raise ConfigError(f"sweep of {module.NAME} is not allowed: {module.NAME} declares no sweep_metrics "
                          "(experiments that do: mnist-aux, lm-owl)")

    def measure(p: sweep.Point, execution) -> dict:
        summary, _ = module.run(p.cfg, command=f"minisub run {module.NAME}", execution=execution)
        if summary is None:
            raise ConfigError(f"sweep point {p.value} of {module.NAME} is not finished (shards pending)")
        return {"metrics": module.sweep_metrics(summary)}

    return measure


def rows(records: list[dict]) -> list[dict]:
    """Records as curves for the figure: an MLP record is one (its arm's accuracy); another
    experiment's record gives one curve per metric its module names."""
    out = []
    for r in records:
        if "metrics" not in r:
            out.append({**r, "metric": r["accuracy"]})
            continue
        for name, s in r["metrics"].items():
            series = name if r["series"] == "all" else f"{name}, {r['series']}"
            out.append({**r, "series": series, "metric": s})
    return out


def sweep_id(module, base, axes: dict[str, list[str]]) -> str:
    """The sweep's own id: its experiment, base config and swept values."""
    blob = json.dumps({"experiment": module.NAME, "base": config_lib.to_dict(base), "axes": axes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run(module, base, axes: dict[str, list[str]], execution, command: str, loader=None) -> tuple[dict, Path]:
    """Measure (or read from the point cache) every point; the sweep's summary and its directory."""
    pts = points(base, axes)
    root = store.results_root() / "sweeps" / module.NAME
    cache = sweep.PointCache(root / "points")
    measure = None if all(sweep.is_mlp(p.cfg) for p in pts) else _measure(module)
    records = sweep.run(pts, cache, loader, dataclasses.replace(execution, experiment=module.NAME),
                        measure=measure)
    summary = {"experiment": module.NAME, "command": command, "fields": list(axes), "axes": axes,
               "base": config_lib.to_dict(base), "n_points": len(pts), "missing_points": len(pts) - len(records),
               "points": rows(records)}
    return summary, root / sweep_id(module, base, axes)


@plots.styled
def figure(summary: dict):
    """The swept metric against the first swept field, one curve per arm (and second field), 95% CIs."""

    field = summary["fields"][0]
    values = [p["value"] for p in summary["points"]]
    log_x = all(isinstance(v, float) and v > 0 for v in values) and max(values) / min(values) >= 10
    label = "accuracy" if summary["points"] and "metrics" not in summary["points"][0] else "metric"
    return sweep_plots.metric_figure(summary["points"], {"metric": f"{summary['experiment']}: {label}"},
                                     title=f"{summary['experiment']}: sweep of {field}", xlabel=field, log_x=log_x)


def write(summary: dict, out_dir: Path) -> list[Path]:
    stem = f"sweep_{'_'.join(summary['fields'])}"
    store.write_json(Path(out_dir) / f"{stem}.json", summary)
    return [Path(out_dir) / f"{stem}.json", *plots.save(figure(summary), Path(out_dir) / stem)]


def table(summary: dict) -> str:
    rows_ = ["| " + " | ".join([*summary["fields"][:1], "series", "mean ± 95% CI", "n"]) + " |", "|---|---|---|---|"]
    for p in summary["points"]:
        rows_.append(f"| {p['value']} | {p['series']} | {pm(p['metric'], '.3f')} | {p['metric']['n']} |")
    return "\n".join(rows_)
