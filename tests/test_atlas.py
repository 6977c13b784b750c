"""The atlas: every family expands to valid points on the grids the issue asks for; one runs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from minisub_experiments import atlas
from minisub import cli, lineage
from minisub.config import ConfigError
from minisub.run import atlas as fams
from minisub.run import sweep


@pytest.fixture(scope="module")
def paper_points():
    cfg = atlas.AtlasConfig()
    return {family: cfg.points(family) for family in fams.FAMILIES}


def _values(points, series=None):
    return sorted({p.value for p in points if series is None or p.series == series}, key=str)


def test_every_family_has_valid_points_with_twenty_seeds(paper_points):
    for family, points in paper_points.items():
        assert points, family
        for p in points:
            assert p.cfg.seeds >= 20 and p.family == family
            p.cfg.validate()


def test_every_lineage_is_in_the_lineage_family(paper_points):
    used = {lineage.parse(p.arm.lineage).name for p in paper_points["lineages"]}
    assert used == set(lineage.BUILTIN)


def test_the_grids_cover_what_the_issue_asks(paper_points):
    alphas = _values(paper_points["alpha"])
    assert len(alphas) >= 6 and min(alphas) == 0 and max(alphas) == 1
    for part in ("all", *atlas.pipeline.AuxConfig().spec.parts):
        sigmas = sorted(_values(paper_points["sigma"], part))
        assert sigmas[0] == 0.01 and sigmas[-1] == 1.0 and len(sigmas) >= 5
        ratios = [b / a for a, b in zip(sigmas, sigmas[1:])]
        assert max(ratios) / min(ratios) < 2.6  # roughly log spaced
    assert _values(paper_points["aux_logits"]) == [1, 10, 3, 30]
    widths = sorted(_values(paper_points["width"]))
    assert widths[0] == 64 and widths[-1] == 1024
    assert sorted(_values(paper_points["depth"])) == [1, 2, 3, 4]
    lrs = sorted(_values(paper_points["lr"]))
    assert math.isclose(lrs[0], 1e-4) and math.isclose(lrs[-1], 1e-2)
    assert sorted(_values(paper_points["student_epochs"]))[::5] == [1, 50]
    assert sorted(_values(paper_points["teacher_epochs"]))[::4] == [1, 20]
    assert set(_values(paper_points["inputs"])) == {"uniform", "gaussian", "blurred", "mnist", "zeros"}
    assert set(_values(paper_points["loss"])) == {"kl", "mse"}
    assert {p.cfg.student_optimizer for p in paper_points["optimizer"]} == {"adam", "sgd"}
    committees = {p.arm.committee for p in paper_points["mitigations"]}
    assert {2, 4, 8} <= committees
    assert any(p.arm.liminal > 0 for p in paper_points["mitigations"])
    assert any(p.cfg.projection == "trait" for p in paper_points["mitigations"])


def test_points_of_a_family_share_programs_where_shapes_agree(paper_points):
    assert len(sweep.groups(paper_points["alpha"])) == 1
    assert len(sweep.groups(paper_points["lr"])) == 1
    assert len(sweep.groups(paper_points["student_epochs"])) == 1  # one 50-epoch run, read out six times
    assert len(sweep.groups(paper_points["width"])) == len(fams.WIDTHS)


def test_bad_family_is_refused_by_name():
    with pytest.raises(ConfigError, match="family='nope' is not allowed: family must be one of 'lineages'"):
        atlas.AtlasConfig(family="nope")


def test_atlas_end_to_end_writes_json_figure_and_redraws(tmp_path, capsys):
    out = tmp_path / "figs"
    argv = ["run", "atlas", "--preset", "test", "--family", "alpha", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "atlas.json").read_text())
    points = summary["families"]["alpha"]["points"]
    assert [p["value"] for p in points] == list(fams.ALPHAS)
    by_alpha = {p["value"]: p for p in points}
    assert by_alpha[1.0]["geometry"]["dist_init"]["mean"] == 0.0  # α = 1 is the shared init
    assert by_alpha[0.0]["geometry"]["dist_init"]["mean"] > 0.0
    for p in points:
        assert 0.0 <= p["accuracy"]["mean"] <= 1.0 and p["n_seeds"] == 3
    assert (out / "atlas_alpha.png").exists() and (out / "atlas_alpha.pdf").exists()
    assert "alpha" in capsys.readouterr().out
    # a second family is merged into the same JSON, the first one kept
    assert cli.main(["run", "atlas", "--preset", "test", "--family", "loss", "--out", str(out), "--no-progress"]) == 0
    assert set(json.loads((out / "atlas.json").read_text())["families"]) == {"alpha", "loss"}
    before = (out / "atlas_alpha.png").read_bytes()
    (out / "atlas_alpha.png").unlink()
    assert cli.main(["figures", "atlas", "--dir", str(out)]) == 0
    assert (out / "atlas_alpha.png").read_bytes() == before


def test_merge_assembles_stored_points_without_computing(tmp_path, capsys, monkeypatch):
    """`minisub merge atlas` writes every family that has stored points, partial ones marked, training nothing."""
    from minisub.run import runner

    out = tmp_path / "figs"
    assert cli.main(["merge", "atlas", "--preset", "test", "--family", "alpha", "--out", str(out)]) == 1
    assert "no family" in capsys.readouterr().out
    assert cli.main(["run", "atlas", "--preset", "test", "--family", "loss", "--out", str(out), "--no-progress"]) == 0

    def forbidden(*a, **k):
        raise AssertionError("merge must not train")

    monkeypatch.setattr(runner, "run_block", forbidden)
    (out / "atlas.json").unlink()
    assert cli.main(["merge", "atlas", "--preset", "test", "--family", "all", "--out", str(out)]) == 0
    families = json.loads((out / "atlas.json").read_text())["families"]
    # the loss family is complete; the inputs family shares its uniform-noise (baseline) points
    assert families["loss"]["missing_points"] == 0
    assert 0 < families["inputs"]["missing_points"] < len(fams.INPUTS) * 2


def test_every_point_id_series_and_value_is_the_committed_atlas(paper_points):
    """The points built from (field, value) changes are exactly the committed atlas's: same ids, labels, epochs."""
    committed = json.loads(Path("figures/atlas.json").read_text())["families"]
    assert set(committed) == set(fams.FAMILIES)
    for family, points in paper_points.items():
        built = [(sweep.point_id(p), p.series, p.value, p.epoch) for p in points]
        assert built == [(r["id"], r["series"], r["value"], r["epoch"]) for r in committed[family]["points"]], family


def test_the_log_axis_of_the_lineages_figure_has_several_labelled_ticks():
    """At one column's width (3.5 in), the distillation-loss axis reads with at least two labelled ticks."""
    summary = atlas.analyse(json.loads(Path("figures/atlas.json").read_text()))
    fig = atlas.figures(summary)["atlas_lineages"]
    assert fig.get_figwidth() == pytest.approx(3.5)
    loss_axis = fig.axes[1].xaxis
    lo, hi = fig.axes[1].get_xlim()
    labels = [t.get_text() for t in loss_axis.get_majorticklabels()
              if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(labels) >= 2, labels
