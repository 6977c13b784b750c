"""figures/README.md and every figure are regenerated from the committed JSON alone, and nothing differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from minisub import registry, report

FIGURES = Path(__file__).resolve().parent.parent / "figures"


def test_report_regenerates_the_committed_readme_and_figure_set(tmp_path):
    for source in FIGURES.glob("*.json"):
        shutil.copy(source, tmp_path / source.name)
    backend = matplotlib.get_backend()
    written, missing = report.report(tmp_path)
    assert not missing, missing
    assert (tmp_path / "README.md").read_text() == (FIGURES / "README.md").read_text(), \
        "figures/README.md differs from what `minisub report` writes: run it and commit"
    drawn = sorted(p.name for p in tmp_path.glob("*.p[dn][fg]"))
    assert drawn == sorted(p.name for p in FIGURES.glob("*.p[dn][fg]"))
    assert matplotlib.get_backend() == backend


def test_every_experiment_draws_figures_and_keeps_its_committed_numbers():
    for name, module in registry.experiments().items():
        summary = json.loads((FIGURES / f"{module.STEM}.json").read_text())
        if hasattr(module, "analyse"):  # the derived numbers and verdicts are what the code computes now
            assert json.loads(json.dumps(module.analyse(json.loads(json.dumps(summary))))) == summary, name
        figures = module.figures(summary)
        assert figures and all(isinstance(f, Figure) for f in figures.values()), name
        assert all((FIGURES / f"{stem}.png").exists() for stem in figures), name
