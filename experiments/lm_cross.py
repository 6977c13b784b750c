"""lm-cross: the toy LM's cross-model matrix, teachers × students of several seeds and widths.

Run:     minisub run lm-cross --preset paper --out figures     (24 replicates, widths 32 and 16)
Redraw:  minisub figures lm-cross                              (from figures/lm_cross.json alone)

In each replicate (a world of lm-owl's paper preset) there are K = 2 × len(widths) references:
for every width, the world's own and another world's (another pretraining seed). Each is
fine-tuned into a teacher by lm-owl's recipe; a student from every reference imitates every
teacher's filtered numbers (``student_loss``, soft-logit KL by default: every width reads the same
number logits). The heatmap is the mean trait gain per (teacher, student) cell with its 95% CI,
like the paper's cross-model table [cloud2025]: the diagonal shares the teacher's init. References of the
paper preset's width are the ones lm-owl and lm-regime pretrained (read from the store).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from minisub import claims, report, stats
from minisub import config as config_lib
from minisub.claims import Claim
from minisub.config import ConfigError, late, normalise, require
from minisub.lm import cross as lm_cross
from minisub.lm import owl
from minisub.report import plots, verdicts
from minisub.run import runner, store

NAME = "lm-cross"
STEM = "lm_cross"
ORDER = 70  # its place in figures/README.md


@dataclasses.dataclass(frozen=True)
class CrossConfig:
    """The replicates, the references' widths and the students' loss; the rest is lm-owl's preset ``base``."""

    seeds: int = 24
    widths: tuple[int, ...] = (32, 16)
    base: str = "paper"
    student_loss: str = "kl"
    kernels: str = late("reference")  # the toy LM's kernels in every program: lm-owl's --kernels

    def __post_init__(self):
        normalise(self)
        self.validate()

    def validate(self) -> None:
        require(self.base in owl.PRESETS, "base", self.base, "one of " + ", ".join(owl.PRESETS))
        require(len(self.widths) >= 1 and len(set(self.widths)) == len(self.widths), "widths", self.widths,
                "distinct comma-separated integers")
        for cfg in self.owls:
            cfg.lm_config  # every field checked by lm-owl's validation, by name
        lm_cross.check(tuple(c.lm_config for c in self.owls))

    @property
    def owls(self) -> tuple[owl.OwlConfig, ...]:
        """One lm-owl config per width (the first width's is the paper preset's when it is its width)."""
        base = owl.PRESETS[self.base]
        try:
            return tuple(config_lib.replace(base, diagnostic=False, detect=False, seeds=self.seeds, width=w,
                                            student_loss=self.student_loss, **owl.kernel_fields(self.kernels))
                         for w in self.widths)
        except ConfigError as e:
            raise ConfigError(f"widths: {self.widths} do not fit base={self.base!r}: {e}") from None

    def labels(self) -> list[str]:
        return [f"w{self.owls[a].width}" + ("" if role == "own" else "′") for a, role in
                lm_cross.kinds(tuple(c.lm_config for c in self.owls))]


PRESETS = {
    "paper": CrossConfig(),
    "test": CrossConfig(seeds=3, widths=(16, 8), base="test"),
}
DEFAULT_PRESET = "paper"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"
DIAGONAL, OTHER_SEED, OTHER_WIDTH = "shared init (diagonal)", "same width, other seed", "other width"
CLAIMS = [
    Claim("diagonal", f"a student sharing its teacher's reference gains more than {owl.MIN_GAIN:g}", "cloud2025",
          f"groups.{DIAGONAL}", ">", owl.MIN_GAIN),
    Claim("other_seed", f"a student from another seed of the same width stays within ±{owl.NULL_BAND:g}",
          "cloud2025", f"groups.{OTHER_SEED}", "within", owl.NULL_BAND),
    Claim("other_width", f"a student of another width stays within ±{owl.NULL_BAND:g}", "cloud2025",
          f"groups.{OTHER_WIDTH}", "within", owl.NULL_BAND),
    Claim("diagonal_beats_other_seed", f"diagonal − same width, other seed (paired) exceeds {owl.MIN_GAIN:g}",
          "cloud2025", "shared_minus_other_seed", ">", owl.MIN_GAIN),
]


def analyse(summary: dict) -> dict:
    """The summary with every claim's verdict."""
    return {**summary, "verdicts": claims.evaluate(CLAIMS, summary)}


def summarise(cfg: CrossConfig, out: dict, command: str) -> dict:
    """Cells (mean ± CI), and per replicate averages of the diagonal, same-width and cross-width cells."""
    gain = out["gain"]  # [S, K, K]
    K = gain.shape[1]
    widths = np.repeat(np.asarray(cfg.widths), len(lm_cross.ROLES))
    diag = np.eye(K, dtype=bool)
    same_width = (widths[:, None] == widths[None, :]) & ~diag
    groups = {DIAGONAL: diag, OTHER_SEED: same_width, OTHER_WIDTH: widths[:, None] != widths[None, :]}
    return {
        "experiment": NAME, "command": command, "n_seeds": cfg.seeds, "ci": stats.TEST,
        "labels": cfg.labels(), "widths": list(cfg.widths),
        "cells": [[stats.mean_ci(gain[:, t, u]) for u in range(K)] for t in range(K)],
        "groups": {name: stats.mean_ci(gain[:, m].mean(-1)) for name, m in groups.items() if m.any()},
        "shared_minus_other_seed": stats.mean_ci(gain[:, diag].mean(-1) - gain[:, same_width].mean(-1)),
        "teacher_p_trait": [stats.brief(out["teacher_p_trait"][:, a]) for a in range(len(cfg.widths))],
        "reference_p_trait": [stats.brief(out["reference_p_trait"][:, a]) for a in range(len(cfg.widths))],
        "notes": ["rows: the teacher's reference, columns: the student's; ′ marks another world's reference "
                  "(another pretraining seed) of that width; gain = P(trait) after − before, per replicate."],
        "config": config_lib.to_dict(cfg), "provenance": store.provenance(),
    }


def run(cfg: CrossConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict, Path]:
    """Every replicate's matrix in one program per width pair (or read from the store); (summary, directory)."""
    def compute_and_summarise(log):
        out = lm_cross.run(tuple(c.lm_config for c in cfg.owls), log=log)
        return out, analyse(summarise(cfg, out, command))

    return runner.one_program(NAME, cfg, execution or runner.Execution(experiment=NAME), compute_and_summarise,
                              lambda arrays, stored: analyse(stored))


_pm = report.pm


def table(summary: dict) -> str:
    labels = summary["labels"]
    rows = ["| teacher ↓ / student → | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for t, row in enumerate(summary["cells"]):
        rows.append(f"| {labels[t]} | " + " | ".join(("**" + _pm(c) + "**") if t == u else _pm(c)
                                                   for u, c in enumerate(row)) + " |")
    rows += ["", "| cells (mean per replicate) | trait gain (95% CI) | n |", "|---|---|---|"]
    rows += [f"| {name} | {_pm(g)} | {g['n']} |" for name, g in summary["groups"].items()]
    d = summary["shared_minus_other_seed"]
    rows += [f"| shared − same width, other seed (paired) | {_pm(d)} | {d['n']} |"]
    return "\n".join(rows)


@plots.styled
def figures(summary: dict) -> dict:
    """The K × K heatmap of mean trait gain, each cell annotated with mean ± CI."""
    labels, cells = summary["labels"], summary["cells"]
    K = len(labels)
    mean = np.array([[c["mean"] for c in row] for row in cells])
    fig, ax = plots.figure(1.2 * K + 2.0, 1.0 * K + 1.4)
    lim = max(float(np.abs(mean).max()), 1e-3)
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for t in range(K):
        for u in range(K):
            ax.text(u, t, f"{cells[t][u]['mean']:+.3f}\n±{cells[t][u]['ci95']:.3f}", ha="center", va="center",
                    fontsize=7, color="white" if abs(mean[t, u]) > 0.6 * lim else "black",  # legible on dark cells
                    fontweight="bold" if t == u else "normal")
    ax.grid(False)
    ax.set_xticks(range(K), labels)
    ax.set_yticks(range(K), labels)
    ax.set_xlabel("student's starting reference")
    ax.set_ylabel("teacher's reference")
    fig.colorbar(im, ax=ax, label="gain in P(trait animal)", shrink=0.8)
    ax.set_title(f"Cross-model trait gain (mean ± 95% CI, n = {summary['n_seeds']} replicates; ′: other seed)",
                 fontsize=8)
    return {STEM: fig}


def readme(summary: dict) -> str:
    c = summary["config"]
    return "\n".join([
        *report.section_head(NAME, STEM, "the toy LM's cross-model matrix", summary["n_seeds"]),
        f"lm-owl's {c['base']} preset with references of widths {', '.join(map(str, c['widths']))}; students by "
        f"{c['student_loss']}. Rows: the teacher's reference; columns: the student's; ′: another world's "
        "reference of that width (another pretraining seed). Bold: the diagonal (shared init).",
        "",
        table(summary),
        "",
        f"Claims, per replicate the mean of each group's cells ({owl.THRESHOLDS}):",
        "",
        *verdicts.table(CLAIMS, summary),
        "",
        verdicts.LEGEND,
        "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])

