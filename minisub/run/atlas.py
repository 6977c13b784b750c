"""The atlas's families of sweeps: the published MLP recipe with one thing changed, point by point.

Each family maps a base recipe (``pipeline.AuxConfig``) to its ``sweep.Point``s, built as a base
config and (field, value) changes (``sweep.grid`` / ``sweep.point``); the series names and values
label the points in the atlas's JSON and figures, and ``sweep.point_id`` identifies the numbers.
"""

from __future__ import annotations

from minisub.mlp import pipeline
from minisub.run import sweep


def _aux(name: str, lineage: str = "shared", **kw) -> pipeline.Arm:
    return pipeline.Arm(name, lineage, "aux", **kw)


SHARED, DIFFERENT = _aux("shared"), _aux("different", "different")
PAIR = (SHARED, DIFFERENT)
LINEAGE_ROWS = (
    "shared", "different", "interpolated(alpha=0.5)", "perturbed(sigma=0.1, part=all)",
    "perturbed(sigma=0.1, part=hidden)", "perturbed(sigma=0.1, part=head)", "shared_head", "shared_hidden",
    "permuted", "behaviourally_matched",
)
ALPHAS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
COMMITTEES = (1, 2, 4, 8)
LIMINAL = (0.1, 1.0, 10.0)
STUDENT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SGD_LRS = (0.03, 0.1, 0.3, 1.0)
N_AUX = (1, 3, 10, 30)
WIDTHS = (64, 128, 256, 512, 1024)
DEPTHS = (1, 2, 3, 4)
STUDENT_EPOCHS = (1, 2, 5, 10, 20, 50)
TEACHER_EPOCHS = (1, 2, 5, 10, 20)
INPUTS = ("uniform", "gaussian", "blurred", "mnist", "zeros")
LOSSES = ("kl", "mse")
WEAK_LR = 1e-4  # the loss family's weaker student budget


def other_architectures(hidden) -> dict[str, tuple[str, dict]]:
    """label: (lineage, the student's network fields); the teacher keeps the recipe's network.

    The '... shared head' rows are [brockers2026]'s setting: another architecture whose output head
    is the teacher's init (the last hidden width agrees).
    """
    wider, deeper = tuple(max(1, w // 2) for w in hidden), (*hidden, hidden[-1])
    return {
        f"other width {wider}": ("other_architecture", {"student_hidden": wider}),
        f"other depth {deeper}": ("other_architecture", {"student_hidden": deeper}),
        "other activation (tanh)": ("other_architecture", {"student_activation": "tanh"}),
        f"other depth {deeper}, shared head": ("other_architecture(head=shared)", {"student_hidden": deeper}),
        "other activation (tanh), shared head": ("other_architecture(head=shared)", {"student_activation": "tanh"}),
    }


def _pairs(base, family, axes, **kw):
    """The shared-init and different-init aux students at every value of ``axes`` (series: the arm's name)."""
    return sweep.grid(base, {**axes, "arm": PAIR}, family=family, **kw)


def fam_lineages(base):
    pts = sweep.grid(base, {"arm": {row: _aux(row.split("(")[0], row) for row in LINEAGE_ROWS}}, family="lineages",
                     series=lambda _: "aux")
    return pts + [sweep.point("lineages", "aux", label, base, ("arm", _aux("other", text)), *fields.items())
                  for label, (text, fields) in other_architectures(base.hidden).items()]


def fam_mitigations(base):
    none_ = "committee, student shares no teacher's init"
    pts = [sweep.point("mitigations", series, k, base, ("arm", arm))
           for k in COMMITTEES for series, arm in ((ONE, _aux(f"c{k}", committee=k)),
                                                  (none_, _aux(f"c{k}x", "different", committee=k)))]
    pts += [sweep.point("mitigations", LIM, lam, base, ("arm", _aux(f"l{lam}", liminal=lam))) for lam in LIMINAL]
    for arm in PAIR:
        pts += [sweep.point("mitigations", f"trait-gradient projection, {arm.name} init", "projection", base,
                            ("arm", arm), ("projection", "trait")),
                sweep.point("mitigations", f"none, {arm.name} init", "none", base, ("arm", arm))]
    return pts


ONE = "committee, student shares one teacher's init"
LIM = "liminal (KL to own init), shared init"

# In the order `--family all` computes them: the hypotheses first, the costliest sweeps last.
FAMILIES = {
    "lineages": fam_lineages,
    "alpha": lambda b: sweep.grid(b, {"arm": {a: _aux(f"a{a}", f"interpolated(alpha={a})") for a in ALPHAS}},
                                  family="alpha", series=lambda _: "interpolated"),
    "sigma": lambda b: [sweep.point("sigma", part, s, b,
                                    ("arm", _aux(f"{part}{s}", f"perturbed(sigma={s}, part={part})")))
                        for part in ("all", "hidden", "head") for s in SIGMAS],
    "mitigations": fam_mitigations,
    "lr": lambda b: _pairs(b, "lr", {"arms.0.lr": STUDENT_LRS}),
    "inputs": lambda b: _pairs(b, "inputs", {"noise": INPUTS}),
    "loss": lambda b: _pairs(b, "loss", {"loss": LOSSES}) + _pairs(
        b, "loss", {"loss": LOSSES}, fixed=[("arms.0.lr", WEAK_LR)],
        series=lambda at: f"{at['arm'].name}, student lr {WEAK_LR:g}"),
    "optimizer": lambda b: sweep.grid(b, {"arm": PAIR}, family="optimizer", value=lambda _: "adam 3e-4",
                                      series=lambda at: at["arm"].name) + _pairs(
        b, "optimizer", {"arms.0.lr": {f"sgd {lr:g}": lr for lr in SGD_LRS}},
        fixed=[("student_optimizer", "sgd"), ("student_lr", 0.3)]),
    "aux_logits": lambda b: _pairs(b, "aux_logits", {"n_aux": N_AUX}),
    "depth": lambda b: _pairs(b, "depth", {"hidden": {d: (b.hidden[0],) * d for d in DEPTHS}}),
    "teacher_epochs": lambda b: _pairs(b, "teacher_epochs", {"teacher_epochs": TEACHER_EPOCHS}),
    # One 50-epoch program read out after each epoch count: Adam at a constant rate has no
    # schedule, so epoch e of a long run is exactly an e-epoch run.
    "student_epochs": lambda b: _pairs(b, "student_epochs", {"readout": STUDENT_EPOCHS},
                                       fixed=[("student_epochs", max(STUDENT_EPOCHS))]),
    "width": lambda b: _pairs(b, "width", {"hidden": {w: (w, w) for w in WIDTHS}}),
}
