"""Experiments by name, found through the ``minisub.experiments`` entry-point group.

The library never imports an experiment module directly: minisub's own experiments (the
``minisub_experiments`` package, from the repository's ``experiments/`` folder) and any outside
package register themselves the same way, with one line in their ``pyproject.toml``::

    [project.entry-points."minisub.experiments"]
    my-experiment = "my_package.my_experiment"

An experiment module provides ``NAME``, ``STEM``, ``PRESETS``, ``DEFAULT_PRESET``, ``PAPER_COMMAND``,
``run(cfg, *, command, execution) -> (summary | None, directory)``, ``table(summary) -> str``,
``figures(summary) -> {file stem: matplotlib Figure}`` and ``readme(summary) -> str``; it declares
its claims as ``CLAIMS`` (``minisub.claims.Claim``s) or ``claims(summary)`` (when they depend on
which points exist) and evaluates them in ``analyse(summary) -> summary``. Optionally: ``ORDER``
(default 1000: its place in figures/README.md), ``merge_written(summary, path) -> summary`` and
``sweep_metrics(summary) -> {name: stats}`` (what ``minisub sweep`` reports).
"""

from __future__ import annotations

import importlib.metadata
from types import ModuleType

from minisub.config import ConfigError

GROUP = "minisub.experiments"
REQUIRED = ("NAME", "STEM", "PRESETS", "DEFAULT_PRESET", "PAPER_COMMAND", "run", "table", "figures", "readme")


def experiments() -> dict[str, ModuleType]:
    """Every registered experiment module, by its ``NAME``, in ``ORDER`` then name.

    A module that fails to import, lacks a required attribute or registers under a name other
    than its ``NAME`` raises: a broken registration is an error, never a silently missing entry.
    """
    found = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        module = ep.load()
        missing = [a for a in REQUIRED if not hasattr(module, a)]
        if missing:
            raise ConfigError(f"experiment entry point {ep.name!r} ({ep.value}) lacks {', '.join(missing)}")
        if module.NAME != ep.name:
            raise ConfigError(f"experiment entry point {ep.name!r} loads a module named {module.NAME!r}")
        found.setdefault(ep.name, module)  # the first distribution on sys.path wins, as for imports
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 1000), kv[0])))


def experiment(name: str) -> ModuleType:
    """The experiment module registered as ``name``; a one-line error lists the allowed names."""
    found = experiments()
    if name not in found:
        raise ConfigError(f"unknown experiment {name!r}: allowed experiments are {', '.join(found)}")
    return found[name]
