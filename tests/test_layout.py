"""The code's shape: layers point one way, thin experiments, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80
MAX_EXPERIMENT_LINES = 300


def _python_files(*folders):
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _python_files("minisub", "experiments", "tests"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_experiment_modules_are_thin():
    fat = {p.name: n for p in _python_files("experiments") if (n := len(p.read_text().splitlines())) > MAX_EXPERIMENT_LINES}
    assert not fat, fat


def test_the_library_never_imports_the_experiments():
    offenders = []
    for path in _python_files("minisub"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("experiments", "minisub_experiments") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
