"""Notebook-friendly figures: one shipped style sheet, no global state touched, same data same bytes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.style
import numpy as np

from minisub.mlp import mnist
from minisub.report import plots

ROOT = Path(__file__).resolve().parents[1]


def test_the_style_sheet_is_the_one_source_of_the_style():
    assert plots.STYLE_FILE.name == "minisub.mplstyle" and plots.STYLE_FILE.parent == Path(plots.__file__).parent
    sheet = matplotlib.rc_params_from_file(plots.STYLE_FILE, use_default_template=False)
    assert plots.STYLE == dict(sheet)
    assert plots.PALETTE == ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")  # Tol bright
    assert plots.STYLE["pdf.fonttype"] == 42 and plots.STYLE["ps.fonttype"] == 42
    with matplotlib.style.context(plots.STYLE_FILE):  # usable as a plain matplotlib style too
        assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0].upper().lstrip("#") == "4477AA"


def test_the_style_sheet_ships_with_the_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"minisub.report" = \["\*\.mplstyle"\]', text)


def test_importing_minisub_and_every_experiment_leaves_matplotlib_alone():
    code = """
import importlib, pkgutil, sys, matplotlib
rc = matplotlib.rcParams
before = {k: rc._get(k) for k in rc}
import minisub, minisub_experiments
for pkg in (minisub, minisub_experiments):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
from minisub import registry
registry.experiments()
after = {k: rc._get(k) for k in rc}
print(sorted(k for k in before if before[k] != after[k]), rc._get_backend_or_none(), "matplotlib.pyplot" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert out.stdout.split() == ["[]", "None", "False"], out.stdout + out.stderr


@plots.styled
def _figure(seed: int):
    fig, ax = plots.figure(3, 2)
    rng = np.random.default_rng(seed)
    for k in range(3):
        ax.plot(rng.normal(size=10), label=f"line {k}")
    ax.set_title("title")
    ax.legend()
    return fig


def test_saving_twice_gives_identical_bytes_in_the_style(tmp_path):
    files = [{p.suffix: p.read_bytes() for p in plots.save(_figure(0), tmp_path / name / "f")} for name in "ab"]
    assert files[0] == files[1] and set(files[0]) == {".png", ".pdf"}
    fig = _figure(0)
    colours = [matplotlib.colors.to_hex(line.get_color()).upper() for line in fig.axes[0].get_lines()]
    assert colours == list(plots.PALETTE[:3])  # the style's cycle, not matplotlib's default
    assert fig.axes[0].title.get_fontsize() == plots.STYLE["axes.titlesize"]
    assert b"/FontFile2" in files[0][".pdf"]  # TrueType (Type 42) embedded


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- example: notebook -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_goes_from_a_run_to_a_custom_figure_in_under_20_lines(tmp_path, monkeypatch, fake_mnist):
    code = _readme_example()
    assert len(code.strip().splitlines()) < 20
    monkeypatch.setattr(mnist, "load_cached", lambda: fake_mnist)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 -- the README's own example
    assert (tmp_path / "accuracy_by_arm.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "accuracy_by_arm.pdf").read_bytes().startswith(b"%PDF")
    results = namespace["results"]
    assert results["accuracy"]["teacher"].shape == (namespace["cfg"].seeds,)
