"""theorem-one-step: Theorem 1 (cloud2025) measured: one teacher GD step, one student imitation step, at init.

Run:     minisub run theorem-one-step [--preset quick|paper|test] [--seeds N] [--<field> VALUE ...]
Paper:   minisub run theorem-one-step --preset paper --out figures   (writes figures/theorem_one_step.*)
Redraw:  minisub figures theorem-one-step                           (from figures/theorem_one_step.json)

The program (``minisub.theory.program``) measures, per seed and ε, Δθ_S·Δθ_T, its first-order
prediction ε·Δθ_TᵀMΔθ_T (M = E[JᵀHJ], matrix-free), their relative error and the change of L_T
after the student's step, for a shared and a different student init; float64 by default.
"""

from __future__ import annotations

import numpy as np

from minisub import claims as claims_lib
from minisub import report
from minisub.claims import Claim
from minisub.mlp import fashion, mnist
from minisub.report import bands, plots
from minisub.run import runner
from minisub.theory import one_step_analysis as analysis
from minisub.theory import program
from minisub.theory.program import TheoremConfig

NAME = "theorem-one-step"
STEM = "theorem_one_step"
ORDER = 20  # its place in figures/README.md
INPUT_LABELS = {"uniform": "uniform noise [−1, 1]", "gaussian": "Gaussian noise N(0, 1)",
                "mnist": "MNIST test images", "zeros": "constant input (zeros)", "fashion": "Fashion-MNIST test images"}

PRESETS = {
    # 8 seeds, ε over 5 decades: a couple of minutes on 2 CPU cores.
    "quick": TheoremConfig(),
    # 32 seeds, ε over 6 decades, larger batches.
    "paper": TheoremConfig(seeds=32, eps_min=1e-6, n_eps=13, teacher_batch=512, student_batch=256),
    # A tiny net for tests: seconds.
    "test": TheoremConfig(seeds=3, hidden=(32,), n_eps=9, teacher_batch=64, student_batch=16),
}
DEFAULT_PRESET = "quick"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"


def claims(summary: dict) -> list[Claim]:
    """The claims this summary can test (the kink cells and the thresholds depend on the preset)."""
    small, tol = summary["small_eps"], analysis.FIRST_ORDER_TOL
    shared, different = "analysis.shared.", "analysis.different."
    out = [
        Claim("shared_positive", "shared init: Δθ_S·Δθ_T > 0 at the smallest ε in every cell where it is not "
              "identically 0 (per seed, the least cos(Δθ_S, Δθ_T) over those cells)", "cloud2025",
              shared + "min_cos_at_eps_min", ">", 0.0),
        Claim("shared_first_order", f"shared init, inputs off ReLU kinks: Δθ_S·Δθ_T matches ε·Δθ_TᵀMΔθ_T to first "
              f"order (per seed, log10 of the largest relative error over cells at the smallest ε, below "
              f"log10 {tol:g})", "cloud2025", shared + "log10_max_rel_error_at_eps_min", "<", float(np.log10(tol))),
        Claim("shared_linear", f"shared init, off kinks: Δθ_S·Δθ_T is linear in ε for ε ≤ {small:g} (per seed, the "
              "largest |log–log slope − 1| over cells, below 0.01)", "cloud2025",
              shared + "max_slope_inner_deviation", "<", 0.01),
        Claim("shared_error_shrinks", f"shared init, off kinks: the relative error shrinks with ε ≤ {small:g} (per "
              "seed, the least log–log slope of the relative error over cells, above 0.5)", "minisub",
              shared + "min_slope_rel_error", ">", 0.5),
        Claim("shared_loss_falls", f"shared init: L_T falls after the student's step at every ε ≤ {small:g} in more "
              "than 90% of the cells (per seed)", "cloud2025", shared + "share_loss_falls", ">", 0.9),
        *[Claim(f"kink_{cell}", f"{cell}, shared init (every hidden unit on a ReLU kink): the first-order prediction "
                f"fails (relative error at the smallest ε above {analysis.BREAKDOWN:g})", "minisub",
                f"cells.{cell.replace('/', '.')}.shared.rel_error_at_eps_min", ">", analysis.BREAKDOWN)
          for cell in (summary.get("analysis", {}).get("shared") or {}).get("kink", [])],
        Claim("different_no_guarantee", f"different init: Δθ_S·Δθ_T ≥ 0 is not guaranteed (per seed, the share of "
              f"cells where it holds at every ε ≤ {small:g}, below 1)", "cloud2025",
              different + "share_inner_nonneg", "<", 1.0),
        Claim("different_sign_mixed", "different init: the sign is not determined either way (that share above 0)",
              "minisub", different + "share_inner_nonneg", ">", 0.0),
        Claim("different_offset", "different init: Δθ_S·Δθ_T tends to an offset, not to ε·Δθ_TᵀMΔθ_T (per seed, "
              "log10 of the least relative error at the smallest ε, above 0)", "minisub",
              different + "log10_min_rel_error_at_eps_min", ">", 0.0),
        Claim("different_own_expansion", "different init: offset + ε·Δθ_TᵀE[J_SᵀHJ_T]Δθ_T holds to first order "
              f"(per seed, log10 of the largest error of its O(ε) part, below log10 {tol:g})", "minisub",
              different + "log10_max_taylor_rel_error_at_eps_min", "<", float(np.log10(tol))),
        Claim("different_loss", f"different init: L_T does not reliably fall after the student's step (per seed, "
              f"the share of cells where it falls at every ε ≤ {small:g}, below 0.5)", "minisub",
              different + "share_loss_falls", "<", 0.5),
    ]
    lineages = set(summary["lineages"])
    return [c for c in out if c.id.split("_")[0] != "different" or "different" in lineages]


def analyse(summary: dict) -> dict:
    """The summary with its pooled per-seed statistics and every claim's verdict (pure; no recompute)."""
    out = analysis.analyse(summary)
    return {**out, "verdicts": claims_lib.evaluate(claims(out), out)}


def run(cfg: TheoremConfig, *, command: str, execution: runner.Execution | None = None):
    """Measure (or load from the results store); (summary, run directory)."""
    ex = execution or runner.Execution(experiment=NAME)
    inputs, skipped = program.available_inputs(cfg)

    def compute(log):
        mnist_data = mnist.load_cached()
        fashion_images = fashion.load("test")[0] if "fashion" in inputs else None
        if log:
            log(f"{cfg.seeds} seeds x {len(inputs)} inputs x {len(cfg.lineages)} inits x {len(cfg.imitations)} "
                f"imitations x {cfg.n_eps} step sizes, one jitted call ({cfg.dtype})")
        results = program.compute(cfg, inputs, mnist_data, fashion_images,
                                  batch_size=ex.block or program.WORLDS_PER_BATCH)
        return results, analyse(program.summarise(cfg, results, inputs, skipped, name=NAME, command=command))

    return runner.one_program(NAME, cfg, ex, compute, lambda arrays, stored: analyse(stored),
                              reusable=lambda stored: program.reusable(stored, skipped))


def _pm(s: dict, fmt: str = ".2g") -> str:
    """mean ± ci, both in ``fmt``."""
    return report.pm(s, fmt, fmt)


def _eps(value) -> str:
    return "never" if value is None else f"{value:.2g}"


def _frac(s: dict) -> str:
    return "n/a" if s["mean"] is None else f"{round(s['mean'] * s['n'])}/{s['n']}"


def table(summary: dict) -> str:
    """A Markdown table: one row per (input, imitation, init)."""
    e_min, e_max, small = summary["eps"][0], summary["eps"][-1], summary["small_eps"]
    rows = [f"| D_S | imitation | init | inner ≥ 0 (ε ≤ {small:g}) | slope log\\|inner\\| | rel. err. at ε = {e_min:g} "
            f"| slope log rel. err. | ε with mean rel. err. > 0.1 | cos at ε = {e_min:g} | L_T falls by > "
            f"{program.LOSS_TOL:g} (ε ≤ {small:g}) | ΔL_T at ε = {e_max:g} | first sign flip ε (median) |",
            "|---" * 12 + "|"]
    for d, by_m in summary["cells"].items():
        for m, by_l in by_m.items():
            for lin, c in by_l.items():
                se = c["small_eps"]
                zero = " (≡ 0)" if se["inner_zero"]["mean"] == 1.0 else ""
                rows.append(
                    f"| {d} | {m} | {lin} | {_frac(se['inner_nonneg'])}{zero} | {_pm(se['slope_inner'], '.3f')} "
                    f"| {_pm(c['rel_error_at_eps_min'])} | {_pm(se['slope_rel_error'], '.3f')} "
                    f"| {_eps(c['breakdown_eps'])} | {_pm(c['cos_at_eps_min'])} | {_frac(se['loss_falls'])} "
                    f"| {_pm(c['delta_loss_T_at_eps_max'])} | {_eps(c['first_flip_eps']['median'])} |")
    if summary["skipped_inputs"]:
        rows += ["", "Skipped: " + "; ".join(f"{k} ({v.split('.')[0]})" for k, v in summary["skipped_inputs"].items())]
    return "\n".join(rows)


def _band(ax, x, stats_E, color, ls, label=None, transform=lambda v: v, marker=None):
    """Mean line and 95% CI band of per-ε statistics."""
    mean = [None if s["mean"] is None else transform(s["mean"]) for s in stats_E]
    bands.band(ax, x, mean, [s["ci95"] for s in stats_E], color=color, ls=ls, label=label, marker=marker)


def _row(axes, summary: dict, d: str, first: bool) -> None:
    """One input's row: |inner| with its prediction, the relative error, ΔL_T; the median first sign flip."""
    ax_i, ax_r, ax_l = axes
    eps = np.asarray(summary["eps"])
    for ax, scale in ((ax_i, "log"), (ax_r, "log"), (ax_l, "symlog")):
        ax.set_xscale("log")
        ax.set_yscale(scale, **({"linthresh": 1e-9} if scale == "symlog" else {}))
    for k, m in enumerate(summary["imitations"]):
        color = plots.PALETTE[k % len(plots.PALETTE)]
        for lin, c in summary["cells"][d][m].items():
            pe, ls = c["per_eps"], {"shared": "-", "different": "--"}.get(lin, ":")
            _band(ax_i, eps, pe["inner"], color, ls, f"{m}, {lin} init" if first else None, abs,
                  "o" if lin == "shared" else None)
            if lin == "shared":
                _band(ax_i, eps, pe["predicted"], "black", ":")
            _band(ax_r, eps, pe["rel_error"], color, ls)
            _band(ax_l, eps, pe["delta_loss_T"], color, ls)
    ax_r.axhline(0.1, color="grey", lw=0.6, ls=":")
    flip = next(iter(next(iter(summary["cells"][d].values())).values()))["first_flip_eps"]["median"]
    if flip is not None:  # the teacher is the same for every cell of an input: so is its first sign flip
        for ax in (ax_i, ax_r):
            ax.axvline(flip, color="grey", lw=0.8, ls="-.",
                       label="teacher's first hidden sign flip (median)" if first and ax is ax_r else None)
    ax_l.axhline(0.0, color="grey", lw=0.6)
    bands.symlog_ticks(ax_l, 1e-9)
    ax_i.set_ylabel(f"{INPUT_LABELS.get(d, d)}\n|Δθ_S·Δθ_T|")
    ax_r.set_ylabel("relative error")
    ax_l.set_ylabel("ΔL_T")


@plots.styled
def figures(summary: dict) -> dict:
    """Per D_S (rows): |Δθ_S·Δθ_T| vs ε with its first-order prediction, the relative error, ΔL_T."""
    inputs = summary["inputs"]
    fig, axes = plots.figure(10.0, 2.1 * len(inputs) + 1.2, nrows=len(inputs), ncols=3, squeeze=False)
    fig.set_layout_engine("constrained")
    for row, d in enumerate(inputs):
        _row(axes[row], summary, d, row == 0)
    for ax in axes[-1]:
        ax.set_xlabel("teacher step size ε")
    axes[0][0].plot([], [], ":", color="black", label="shared: first-order prediction ε·Δθ_TᵀMΔθ_T")
    axes[0][0].set_title("inner product (mean of |·|)")
    axes[0][1].set_title("|inner − prediction| / |prediction|")
    axes[0][2].set_title(f"L_T(θ_S⁰ + αΔθ_S) − L_T(θ_S⁰), α = {summary['config']['alpha']:g}")
    fig.legend(loc="outside lower center", ncol=4, frameon=False, fontsize=7)
    fig.suptitle(f"Theorem 1, one step at init: n = {summary['n_seeds']} seeds per point; lines: mean; bands: 95% "
                 "Student-t CI over seeds; solid: shared init; dashed: different init", fontsize=8)
    return {STEM: fig}


def _cells(names, values=None, fmt=_eps) -> str:
    return ", ".join(f"{n} {fmt(values[n])}" if values else n for n in names) or "none"


def _described(summary: dict) -> list[str]:
    """Descriptive lines: numbers from ``summary['analysis']``, no verdicts."""
    a, e_min, small = summary["analysis"], summary["eps"][0], summary["small_eps"]
    out = []
    if sh := a["shared"]:
        r, rel = sh.get("rel_error_at_eps_min_range", [np.nan] * 2), sh.get("max_rel_error_at_eps_min", {})
        out += [f"Shared init: Δθ_S·Δθ_T ≥ 0 at every ε ≤ {small:g} for every seed in "
                f"{sh['n_cells_inner_nonneg_every_seed']} of {len(sh['live'])} cells where it is not identically 0; "
                f"identically 0 (Δθ_S ⊥ Δθ_T, the theorem's orthogonal branch) in: {_cells(sh['zero'])}.",
                f"Shared init off kinks ({len(sh['off_kink'])} cells): mean relative error at ε = {e_min:g} from "
                f"{r[0]:.1e} to {r[1]:.1e} over cells; per seed, the largest over cells has median "
                f"{rel.get('median', np.nan):.1e} ({rel.get('n_above', 0)} of {rel.get('n', 0)} seeds above "
                f"{analysis.FIRST_ORDER_TOL:g}); log–log slope of the inner product "
                f"{_span(sh.get('slope_inner_range'), '.4f')}, of the relative error "
                f"{_span(sh.get('slope_rel_error_range'))} (before the teacher's first hidden sign flip "
                f"{_span(sh.get('slope_before_flip_range'))}), mean over seeds per cell.",
                f"Smallest ε at which the mean relative error exceeds {a['breakdown']:g} (shared): "
                f"{_cells(sh['breakdown_eps'], sh['breakdown_eps'])}. The teacher's step first flips the sign of a "
                f"hidden pre-activation on x_S at a median ε of "
                f"{_cells(a['first_flip_median'], a['first_flip_median'])}.",
                f"At ε = {summary['eps'][-1]:g} the 95% interval of ΔL_T lies above 0 (L_T rises) in: "
                f"{_cells(sh['rises_at_eps_max'])}."]
    if (df := a["different"]) and df["compared"]:
        taylor = df.get("max_taylor_rel_error_at_eps_min", {})
        out.append(f"Different init ({len(df['compared'])} cells): the share of seeds with Δθ_S·Δθ_T ≥ 0 at every "
                   f"ε ≤ {small:g} runs from {_span(df.get('share_inner_nonneg_range'))} over cells; mean |offset| "
                   f"{_span(df.get('abs_offset_range'), '.1e')}; the largest mean |cos(Δθ_S, Δθ_T)| at ε = {e_min:g} "
                   f"is {df.get('max_abs_mean_cos_at_eps_min', np.nan):.2f}; the error of the own-init expansion has "
                   f"per-seed median {taylor.get('median', np.nan):.1e}.")
    if a["different"] and a["different"]["identical_inputs"]:
        out.append(f"On {', '.join(a['different']['identical_inputs'])} the shared and different students measured "
                   "identical inner products (their outputs and Jacobians there do not depend on the init).")
    if a["incomplete"]:
        out.append("Left out of the pooled statistics (a seed's value is not finite): " + "; ".join(a["incomplete"]))
    return out


def _span(r, fmt: str = ".2f") -> str:
    return "n/a" if not r else f"{r[0]:{fmt}} to {r[1]:{fmt}}"


def readme(summary: dict) -> str:
    """The figures/README.md section: figure, verdicts, numbers, the table, how to regenerate."""
    cfg = summary["config"]
    widths = "-".join(str(w) for w in (784, *cfg["hidden"], 10 + cfg["n_aux"]))
    return "\n".join([
        *report.section_head(NAME, STEM, "Theorem 1, one step at init", summary["n_seeds"]),
        f"MLP {widths} at its random init (W ~ N(0, 1/fan_in), biases 0), {cfg['dtype']}. Teacher: "
        f"{cfg['teacher_steps']} GD step(s) of size ε on class-logit cross-entropy of {cfg['teacher_batch']} labelled "
        f"MNIST training images; student: one gradient step on its imitation loss over {cfg['student_batch']} inputs "
        f"from D_S, starting at the teacher's init (shared) or another seed's (different, a derangement). "
        f"ε from {summary['eps'][0]:g} to {summary['eps'][-1]:g} ({len(summary['eps'])} log-spaced values). "
        f"First-order prediction ε·Δθ_TᵀMΔθ_T with M = E[JᵀHJ], matrix-free (jvp/vjp). A cell is one (D_S, "
        f"imitation, init); per-seed statistics pool cells seed by seed. CI: {summary['ci']}.",
        "", *claims_lib.lines(claims(summary), summary), "",
        *[f"- {line}" for line in _described(summary)],
        "", table(summary), "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
