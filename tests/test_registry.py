"""Experiments are found through the ``minisub.experiments`` entry-point group, outside ones included."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from minisub import registry
from minisub.config import ConfigError

EXTERNAL = '''
"""my-probe: an outside experiment, registered by one pyproject line."""
from minisub.mlp.pipeline import AuxConfig
NAME = "my-probe"
STEM = "my_probe"
PRESETS = {"test": AuxConfig(seeds=2, hidden=(16,))}
DEFAULT_PRESET = "test"
PAPER_COMMAND = "minisub run my-probe"
def run(cfg, *, command, execution=None): raise NotImplementedError
def table(summary): return ""
def readme(summary): return ""
def figures(summary): return {}
'''


def _install_external(root):
    """What ``pip install`` of a package with one module and one entry point leaves on sys.path."""
    (root / "my_lab").mkdir()
    (root / "my_lab" / "__init__.py").write_text("")
    (root / "my_lab" / "probe.py").write_text(EXTERNAL)
    info = root / "my_lab-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-lab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[minisub.experiments]\nmy-probe = my_lab.probe\n")


def test_an_outside_package_shows_up_in_minisub_list(tmp_path):
    _install_external(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "minisub.cli", "list"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "my-probe: an outside experiment" in out and "seeds=2" in out and "mnist-aux" in out


def test_every_builtin_experiment_is_registered_and_the_library_imports_none():
    names = list(registry.experiments())
    assert names[:3] == ["mnist-aux", "theorem-one-step", "mnist-trajectories"]
    assert {"atlas", "lm-owl", "lm-regime", "lm-cross"} <= set(names)
    with pytest.raises(ConfigError, match="allowed experiments are mnist-aux"):
        registry.experiment("mnist-aux2")
    # importing the whole library and the CLI loads no experiment module (layers point one way)
    code = textwrap.dedent("""
        import sys, pkgutil, importlib, minisub
        for m in pkgutil.walk_packages(minisub.__path__, "minisub."):
            importlib.import_module(m.name)
        bad = [m for m in sys.modules if m.split(".")[0] in ("experiments", "minisub_experiments")]
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nothing_called_experiments_is_installed_at_top_level(tmp_path):
    """From outside the checkout, the installed package has minisub_experiments and no ``experiments``."""
    code = ("import importlib.util as u; "
            "print(u.find_spec('experiments') is None, u.find_spec('minisub_experiments') is not None)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True"]
