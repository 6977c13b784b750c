"""lm-cross (test preset): the teachers × students matrix, its diagonal, the heatmap, refusals."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from minisub import registry
from minisub_experiments import lm_cross, lm_owl
from minisub import cli
from minisub.lm import pipeline as lm_pipeline
from minisub.config import ConfigError

TEST = lm_cross.PRESETS["test"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    results, out = tmp_path_factory.mktemp("cross-results"), tmp_path_factory.mktemp("cross-out")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("MINISUB_RESULTS", str(results))
        rc = cli.main(["run", "lm-cross", "--preset", "test", "--no-progress", "--out", str(out)])
        mp.setattr(lm_pipeline, "pretrain", lambda *a, **k: pytest.fail("pretrained although stored"))
        owl, _ = lm_owl.run(TEST.owls[0], command="test", execution=None)  # reads the cross run's references
    return {"rc": rc, "stdout": stdout.getvalue(), "out": out, "owl": owl,
            "summary": json.loads((out / "lm_cross.json").read_text())}


def test_registered():
    assert registry.experiments()["lm-cross"] is lm_cross


def test_matrix_has_a_cell_per_teacher_and_student_kind(first_run):
    s = first_run["summary"]
    assert first_run["rc"] == 0
    assert s["labels"] == ["w16", "w16′", "w8", "w8′"]
    assert len(s["cells"]) == 4 and all(len(row) == 4 for row in s["cells"])
    assert all(c["n"] == TEST.seeds and np.isfinite(c["mean"]) for row in s["cells"] for c in row)
    assert {"shared init (diagonal)", "same width, other seed", "other width"} == set(s["groups"])
    assert {p.name for p in first_run["out"].iterdir()} == {"lm_cross.json", "lm_cross.png", "lm_cross.pdf"}
    assert "teacher ↓ / student →" in first_run["stdout"]


def test_diagonal_cell_is_lm_owls_shared_student(first_run):
    """Same world, teacher, numbers, shuffle key and loss: the own-own cell is lm-owl's shared arm."""
    cell = first_run["summary"]["cells"][0][0]["values"]
    shared = first_run["owl"]["arms"]["shared"]["trait_gain"]["values"]
    np.testing.assert_allclose(cell, shared, atol=2e-4)


def test_bad_widths_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="widths"):
        cli.build_config(lm_cross, "test", ["--widths", "16,16"])
    with pytest.raises(ConfigError, match="heads"):
        cli.build_config(lm_cross, "test", ["--widths", "16,7"])


def test_every_lm_cross_verdict_flips_with_a_synthetic_summary():
    from minisub import claims, stats
    rng = np.random.default_rng(0)
    n = lambda m, s=0.01: rng.normal(m, s, 24)  # noqa: E731

    def summary(diag, seed, width):
        return {"groups": {lm_cross.DIAGONAL: stats.mean_ci(diag), lm_cross.OTHER_SEED: stats.mean_ci(seed),
                           lm_cross.OTHER_WIDTH: stats.mean_ci(width)},
                "shared_minus_other_seed": stats.paired(diag, seed)}

    status = lambda s: {c.id: claims.verdict(c, s).status for c in lm_cross.CLAIMS}  # noqa: E731
    assert set(status(summary(n(0.3), n(0.0), n(0.0))).values()) == {"supported"}
    assert set(status(summary(n(0.0), n(0.3), n(0.3))).values()) == {"refuted"}
    assert set(status(summary(n(0.03, 0.1), n(0.03, 0.1), n(0.03, 0.1))).values()) == {"inconclusive"}
