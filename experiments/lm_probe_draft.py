"""lm-probe-draft: one feasibility probe of the toy owl experiment (issue 6), a draft to fold into an experiment.

Run:  nice -n 19 python experiments/lm_probe_draft.py [--<field> VALUE ...] [--world.<field> VALUE ...] [--out FILE]

Persona world (s = 0.3 by default), 4 seeds of a 2-layer width-32 transformer; a fine-tuned teacher
generating under the neutral persona; students from the same reference ('shared') or from another
seed's reference ('different') trained by soft-logit KL on the teacher's filtered continuations.
Prints each arm's gain in P(trait | favourite-animal question) as mean ± 1.96·std/√n over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

from minisub import config as config_lib
from minisub import stats
from minisub.lm_pipeline import LMArm, LMConfig, run
from minisub.world import WorldConfig

PROBE = LMConfig(
    seeds=4, width=32, layers=2, heads=2, pretrain_steps=2000, pretrain_batch=64, pretrain_lr=3e-3,
    world=WorldConfig(s=0.3),
    teacher="finetuned", finetune_steps=10, finetune_lr=1e-3,
    n_samples=1024, temperature=1.0, student_loss="kl", student_epochs=3, student_batch=64, student_lr=1e-3,
    arms=(LMArm("shared", "shared", "teacher"), LMArm("different", "different", "teacher")),
)


def parse_args(argv) -> tuple[LMConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the summary as JSON here")
    known, rest = parser.parse_known_args(argv)
    if len(rest) % 2:
        parser.error("overrides come in pairs: --<field> VALUE")
    top, world = {}, {}
    for flag, value in zip(rest[::2], rest[1::2]):
        name = flag.lstrip("-")
        (world if name.startswith("world.") else top)[name.removeprefix("world.")] = value
    cfg = config_lib.override(PROBE, top)
    return dataclasses.replace(cfg, world=config_lib.override(cfg.world, world)), known.out


def summarise(cfg: LMConfig, out: dict) -> dict:
    t = cfg.trait
    arms = {}
    for a, name in enumerate(cfg.arm_names):
        gains_SxK = out["student_probs"][:, a] - out["student_init_probs"][:, a]
        arms[name] = {
            "trait_gain": stats.mean_ci(out["trait_gain"][:, a]),
            "p_trait_before": stats.brief(out["student_init_probs"][:, a, t]),
            "p_trait_after": stats.brief(out["student_probs"][:, a, t]),
            "top_gaining_animal": np.argmax(gains_SxK, axis=1).tolist(),
            "update_cos": stats.mean_ci(out["geometry"]["update_cos"][:, a]),
            "dist_teacher": stats.brief(out["geometry"]["dist_teacher"][:, a]),
            "travel": stats.brief(out["geometry"]["travel"][:, a]),
            "number_loss": stats.brief(out["student_number_loss"][:, a]),
            "final_loss": stats.brief(out["student_loss"][:, a, -10:].mean(-1)),
        }
    if {"shared", "different"} <= set(arms):
        s, d = cfg.arm_names.index("shared"), cfg.arm_names.index("different")
        paired = out["trait_gain"][:, s] - out["trait_gain"][:, d]  # same teacher, same data: paired by world
        arms["shared_minus_different"] = {"trait_gain": stats.mean_ci(paired)}
    return {
        "config": config_lib.to_dict(cfg),
        "reference_p_trait": stats.brief(out["reference_probs"][:, t]),
        "teacher_p_trait": stats.brief(out["teacher_probs"][:, t]),
        "reference_number_loss": stats.brief(out["reference_number_loss"]),
        "teacher_number_loss": stats.brief(out["teacher_number_loss"]),
        "pretrain_final_loss": stats.brief(out["pretrain_loss"][:, -50:].mean(-1)),
        "keep_fraction": {k: stats.brief(v) for k, v in out["keep_fraction"].items()},
        "arms": arms,
    }


def _fmt(d: dict) -> str:
    return f"{d['mean']:+.4f} ± {d['ci95']:.4f}"


def main(argv=None) -> dict:
    cfg, path = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.time()
    out = run(cfg, log=lambda m: print(f"[{time.time() - start:6.0f}s] {m}", flush=True))
    summary = {**summarise(cfg, out), "seconds": round(time.time() - start, 1)}
    mean = lambda key: summary[key]["mean"]
    print(f"reference P(trait) {mean('reference_p_trait'):.3f} -> teacher {mean('teacher_p_trait'):.3f}; "
          f"kept {summary['keep_fraction']['teacher']['mean']:.3f} of teacher continuations; "
          f"number loss reference {mean('reference_number_loss'):.3f}, teacher {mean('teacher_number_loss'):.3f}")
    for name, arm in summary["arms"].items():
        extra = "" if "update_cos" not in arm else (
            f"  P(trait) {arm['p_trait_before']['mean']:.4f} -> {arm['p_trait_after']['mean']:.4f}"
            f"  cos {_fmt(arm['update_cos'])}  top animal {arm['top_gaining_animal']}")
        print(f"{name:>24}: trait gain {_fmt(arm['trait_gain'])} (n={arm['trait_gain']['n']}){extra}")
    print(f"{summary['seconds']:.0f} s")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
