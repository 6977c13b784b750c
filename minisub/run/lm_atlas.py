"""The toy LM's lineage atlas: lm-owl's recipe with the student's init related to the teacher's in many ways.

Every point is one student arm of lm-owl's program (``minisub.lm.owl``) on its stored references:
a lineage (``minisub.lineage``: interpolated, perturbed by part, permuted, ...) imitating the
fine-tuned teacher's kept numbers. Points run through ``sweep.ArmPrograms``: the arms of one lm-owl
config share one program (one teacher, one sampling phase, every arm vmapped), at most
``max_arms`` a program, and ``BASELINES`` (the shared and the different arm) run in every program,
so each point's per-world trait gain is paired with theirs on the same teacher numbers, in the
same program. Each program is also a stored lm-owl run (its ``program_id``), which
``minisub run lm-owl --arms ...`` (the record's ``command``) reads back or recomputes.
"""

from __future__ import annotations

import dataclasses
import shlex

from minisub import config as config_lib
from minisub import stats
from minisub.lm import owl
from minisub.lm.pipeline import LMArm, LMConfig
from minisub.run import store, sweep

BASELINES = (owl.ARMS["shared"], owl.ARMS["different"])
CONTROL = owl.ARMS["control"]  # sampled-token CE on the reference's own kept numbers
FAMILIES = ("baselines", "interpolated", "perturbed", "permuted")
PERMUTED = "heads and MLP units"  # the permuted point's label
GEOMETRY = ("update_cos", "dist_teacher", "travel", "dist_init", "dist_start_teacher")


def parts(lmc: LMConfig) -> tuple[str, ...]:
    """The parts a perturbation can address in ``lmc``'s references, then 'all'.

    Tied embeddings: one matrix is the token embedding and the readout, so there is no separate
    'unembedding' part (``TransformerSpec.part_of``); it belongs to 'embeddings'.
    """
    return (*lmc.spec.parts, "all")


def families(lmc: LMConfig, alphas=(), sigmas=(), parts_=(), permuted: bool = True,
             control: bool = True) -> dict[str, list[sweep.Point]]:
    """The atlas's points on the lm-owl config ``lmc`` (its arms are replaced), by family.

    baselines: shared, different (and the control); interpolated: one point per α; perturbed: one
    per (part, σ), series = the part; permuted: heads and MLP units, the same function.
    """
    def at(family, series, value, arm):
        return sweep.point(family, series, value, lmc, ("arm", arm), baselines=BASELINES)

    base = [*BASELINES, *([CONTROL] if control else [])]
    return {
        "baselines": [at("baselines", "baselines", a.name, a) for a in base],
        "interpolated": [at("interpolated", "interpolated", a, LMArm(f"a{a:g}", f"interpolated(alpha={a:g})", "teacher"))
                         for a in alphas],
        "perturbed": [at("perturbed", part, s, LMArm(f"{part}{s:g}", f"perturbed(sigma={s:g}, part={part})", "teacher"))
                      for part in parts_ for s in sigmas],
        "permuted": [at("permuted", "permuted", PERMUTED, LMArm("permuted", "permuted", "teacher"))] if permuted else [],
    }


def owl_config(lmc: LMConfig) -> owl.OwlConfig:
    """The lm-owl config of a program (no diagnostic, no detection): its run id is the program's."""
    return owl.OwlConfig(lm=lmc)


def command(preset: str, lmc: LMConfig) -> str:
    """``minisub run lm-owl`` that reproduces a program: lm-owl's ``preset`` with the fields it changes."""
    fields = sweep.changed_fields(owl.PRESETS[preset], owl_config(lmc))
    if "arms" in fields:
        fields["arms"] = shlex.quote(",".join(fields["arms"]))
    return owl.command(preset, fields)


def programs(preset: str, max_arms: int = sweep.MAX_ARMS) -> sweep.ArmPrograms:
    """How the atlas's programs run: each one an lm-owl run (stored in lm-owl's results store)."""

    def run(lmc: LMConfig, execution):
        cfg, ex = owl_config(lmc), dataclasses.replace(execution, experiment=owl.NAME)
        if not ex.compute and not store.is_complete(store.run_dir(owl.NAME, cfg)):
            return None  # merging only: a program not stored here is not computed
        summary, _ = owl.run(cfg, command=command(preset, lmc), execution=ex)
        return summary

    return sweep.ArmPrograms(run, lambda p, lmc, summary, k: record(p, lmc, summary, k, preset), max_arms)


def record(p: sweep.Point, lmc: LMConfig, summary: dict, k: int, preset: str) -> dict:
    """Point ``p``'s numbers from arm ``k`` of an lm-owl summary whose first arms are ``BASELINES``.

    Per world: the trait gain, the number-task loss change and the geometry, and the gain paired
    with each baseline arm of the same program (same worlds, same teacher numbers); the baselines'
    own gains, so that pairs can be formed again from the record alone.
    """
    names = list(summary["arms"])
    arm = summary["arms"][names[k]]
    base = {b.name: summary["arms"][names[j]] for j, b in enumerate(BASELINES)}
    gain = arm["trait_gain"]["values"]
    return {
        "lineage": str(p.arm.lineage), "source": p.arm.source, "loss": arm["loss"],
        "n_seeds": arm["trait_gain"]["n"],
        "trait_gain": arm["trait_gain"],
        "p_trait_before": stats.brief(arm["p_trait_before"]["values"]),
        "p_trait_after": stats.brief(arm["p_trait_after"]["values"]),
        "sampled_trait_gain": stats.brief(arm["sampled_trait_gain"]["values"]),
        "other_animals_gain": stats.brief(arm["other_animals_gain"]["values"]),
        "trait_top_gaining": arm["trait_top_gaining"],
        "number_loss_after": stats.brief(arm["number_loss_after"]["values"]),
        "number_loss_change": arm["number_loss_change"],
        "geometry": {q: arm["geometry"][q] for q in GEOMETRY},
        "paired": {b: stats.paired(gain, a["trait_gain"]["values"]) for j, (b, a) in enumerate(base.items()) if j != k},
        "baselines": {b: {"trait_gain": a["trait_gain"],
                          "number_loss_after": stats.brief(a["number_loss_after"]["values"])} for b, a in base.items()},
        "teacher_p_trait": stats.brief(summary["teachers"]["p_trait"]["values"]),
        "reference_p_trait": stats.brief(summary["references"]["p_trait"]["values"]),
        "keep_fraction": summary["keep_fraction"]["teacher"],
        "program_id": config_lib.digest(owl_config(lmc)),
        "command": command(preset, lmc),
    }
