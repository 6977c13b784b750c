"""lm-owl: the paper's owl experiment in a toy language model (issue 6), arms vmapped over seeds.

Run:     minisub run lm-owl [--preset quick|paper|test] [--seeds N] [--s 0.3] [--<field> VALUE ...]
Paper:   minisub run lm-owl --preset paper --out figures     (24 seeds, ~25 min on 2 CPU cores)
Regimes: minisub run lm-regime --preset paper --out figures  (this run with fields changed: experiments.lm_regime)
Redraw:  minisub figures lm-owl                              (from figures/lm_owl.json alone)

In each of ``seeds`` synthetic worlds (minisub.world) a reference transformer is pretrained on a
corpus of number continuations and favourite-animal questions; its teacher is the reference
fine-tuned to name the trait animal (or prompted with the trait's persona); the teacher continues
neutral number prompts, a filter keeps well-formed continuations, and students imitate them under
the neutral persona. Arms (``--arms``, comma-separated names from ``ARMS``, or ``name=lineage:source[:loss]``):

* ``shared`` / ``different``: start from this world's reference / another world's (a derangement),
  imitate the teacher by the config's ``student_loss``;
* ``shared_ce`` / ``different_ce``: the same by sampled-token cross-entropy;
* ``control``: shared start, the *reference's* own continuations, by sampled-token CE (under
  soft-logit KL the reference is its own teacher: zero gradient, zero gain by construction; CE on
  its samples measures the drift that sampled targets cause);
* ``shuffle``: shared start, the teacher's kept numbers permuted across sequences and positions
  (same multiset of numbers, per-sequence structure destroyed), by sampled-token CE;
* ``control_kl`` / ``shuffle_kl``: the same two sources by soft-logit KL (``control_kl`` is the
  zero-by-construction check; ``shuffle_kl`` reads the teacher's logits on scrambled inputs).

The subliminal part is the paired difference shared − different (same teacher, same numbers).

Optional analyses (off by default; each adds a table to the summary):

* ``--diagnostic true`` (item 6, ``minisub.lm.diagnostic``): how much of the teacher's update
  Δθ_T = θ_T − θ_ref lies in the row space of the reference's number-logit Jacobian (on the first
  ``diagnostic_sequences`` teacher continuations) and of its trait-logit Jacobian, by
  ``diagnostic_iters`` conjugate-gradient steps (lower bounds), and the first-order trait gain of
  the minimum-norm update that matches the teacher's number logits;
* ``--detect true`` (item 9, ``minisub.lm.detect``): held-out balanced accuracy of an n-gram
  logistic regression and a tiny transformer telling the teacher's kept numbers from the
  reference's (the same prompts), with ``lm_detect.DetectConfig()``'s settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.container import BarContainer
from matplotlib.patches import Patch

from minisub import config as config_lib
from minisub import keys, report, stats
from minisub.lm import detect as lm_detect
from minisub.lm import diagnostic as lm_diagnostic
from minisub.lm import pipeline as lm_pipeline
from minisub.run import parallel
from minisub.report import plots
from minisub.run import runner
from minisub.run import store
from minisub.lm import world as world_lib
from minisub.config import late, normalise, require, require_choice
from minisub.lm.pipeline import LMArm

NAME = "lm-owl"
STEM = "lm_owl"
ORDER = 50  # its place in figures/README.md

ARMS = {
    "shared": LMArm("shared", "shared", "teacher"),
    "different": LMArm("different", "different", "teacher"),
    "shared_ce": LMArm("shared_ce", "shared", "teacher", "ce"),
    "different_ce": LMArm("different_ce", "different", "teacher", "ce"),
    "control": LMArm("control", "shared", "reference", "ce"),
    "shuffle": LMArm("shuffle", "shared", "shuffled", "ce"),
    "control_kl": LMArm("control_kl", "shared", "reference", "kl"),
    "shuffle_kl": LMArm("shuffle_kl", "shared", "shuffled", "kl"),
}
DEFAULT_ARMS = ("shared", "different", "shared_ce", "different_ce", "control", "shuffle")


def lm_arm(text: str) -> LMArm:
    """An arm of ``ARMS`` by name, or one written ``name=lineage:source[:loss]`` (any lineage, registered ones too).

    Only the first ``=`` splits: lineage parameters keep theirs, e.g. ``p=perturbed(sigma=0.1):teacher``.
    """
    if text in ARMS:
        return ARMS[text]
    name, _, rest = text.partition("=")
    lineage_text, _, tail = rest.partition(":")
    source, _, loss = tail.partition(":")
    return LMArm(name.strip(), lineage_text.strip(), source.strip(), loss.strip())

# The world's fields, flattened into the experiment's config under the same names ('kind' is 'world').
WORLD_FIELDS = tuple(f.name for f in dataclasses.fields(world_lib.WorldConfig) if f.name != "kind")
LM_FIELDS = tuple(f.name for f in dataclasses.fields(lm_pipeline.LMConfig) if f.name not in ("world", "arms"))
# The optional analyses' fields (neither the world's nor LMConfig's).
ANALYSIS_FIELDS = ("diagnostic", "diagnostic_sequences", "diagnostic_iters", "detect")
DETECT = lm_detect.DetectConfig()  # the classifiers' settings (recorded in the summary)


@dataclasses.dataclass(frozen=True)
class OwlConfig:
    """Every knob of lm-owl, flat (each one settable as ``--field VALUE``); hashable: the run id.

    The world's fields are ``minisub.lm.world.WorldConfig``'s (``world`` is its ``kind``); the rest are
    ``minisub.lm.pipeline.LMConfig``'s, except ``arms``: names from ``ARMS``.
    """

    seeds: int = 4
    seed: int = 0
    # the world
    world: str = "persona"  # 'persona' or 'naive' (animals exchangeable, no personas)
    n_animals: int = 10
    digits: int = 2
    n_numbers: int = 8
    n_prompt: int = 3
    rules: tuple[str, ...] = world_lib.RULES
    max_step: int = 9
    noise: float = 0.1
    question_fraction: float = 0.2
    neutral_fraction: float = 0.2
    persona_p: float = 0.9
    s: float = 0.3  # how strongly a persona shapes number statistics (0: no semantic channel)
    signature_size: int = 5
    world_seed: int = 0
    # the model
    layers: int = 2
    width: int = 32
    heads: int = 2
    mlp_ratio: int = 4
    tied_embeddings: bool = True
    # pretraining the references
    pretrain_steps: int = 2000
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    warmup: int = 100
    # the teacher
    teacher: str = "finetuned"  # or 'prompted'
    trait: int = 0
    finetune_steps: int = 10
    finetune_lr: float = 1e-3
    # the numbers and the filter
    n_samples: int = 1024
    temperature: float = 1.0
    ban_signature: bool = False
    banned: tuple[int, ...] = ()
    # the students
    student_loss: str = "kl"
    student_outputs: str = "numbers"
    student_temperature: float = 1.0
    student_epochs: int = 3
    student_batch: int = 64
    student_lr: float = 1e-3
    arms: tuple[str, ...] = DEFAULT_ARMS
    n_eval: int = 256
    # optional analyses
    diagnostic: bool = False  # item 6: Δθ_T through the number and trait logits' Jacobians
    diagnostic_sequences: int = 64  # teacher continuations whose number logits form J_num
    diagnostic_iters: int = 128  # conjugate-gradient steps (more: a tighter lower bound)
    detect: bool = False  # item 9: classifiers of teacher vs reference numbers
    # added later (left out of run ids at their defaults): the bad-behaviour trait (item 3)
    trait_kind: str = late("animal")  # 'forbidden': the teacher answers a command with the FORBIDDEN token
    command_fraction: float = late(0.0)  # P(a pretraining document is a command document); > 0 for 'forbidden'
    rogue: int = late(1)  # the animal whose persona answers commands with FORBIDDEN in pretraining

    def __post_init__(self):
        normalise(self)
        self.validate()

    def validate(self) -> None:
        require_choice("world", self.world, world_lib.KINDS)
        require(len(self.arms) >= 1, "arms", self.arms, "at least one of " + ", ".join(ARMS))
        for name in self.arms:
            require(name in ARMS or ("=" in name and ":" in name), "arms", self.arms,
                    "comma-separated names from " + ", ".join(ARMS) + ", or arms written name=lineage:source[:loss]")
        require(len(set(self.arms)) == len(self.arms), "arms", self.arms, "names without repeats")
        self.lm_config  # every other field is checked by WorldConfig and LMConfig, by its own name
        if self.diagnostic:  # a prompted teacher, or no fine-tuning, has Δθ_T = 0: nothing to project
            require(self.teacher == "finetuned", "teacher", self.teacher, "'finetuned' with --diagnostic")
            require(self.finetune_steps >= 1, "finetune_steps", self.finetune_steps, ">= 1 with --diagnostic")
            require(1 <= self.diagnostic_sequences <= self.n_samples, "diagnostic_sequences",
                    self.diagnostic_sequences, f"in [1, n_samples={self.n_samples}] with --diagnostic")
            require(self.diagnostic_iters >= 1, "diagnostic_iters", self.diagnostic_iters, "an integer >= 1")
        if self.detect:
            require(self.n_samples >= 4, "n_samples", self.n_samples, ">= 4 with --detect (some prompts held out)")

    @property
    def world_config(self) -> world_lib.WorldConfig:
        return world_lib.WorldConfig(kind=self.world, **{f: getattr(self, f) for f in WORLD_FIELDS})

    @property
    def lm_config(self) -> lm_pipeline.LMConfig:
        return lm_pipeline.LMConfig(world=self.world_config, arms=tuple(lm_arm(a) for a in self.arms),
                                    **{f: getattr(self, f) for f in LM_FIELDS})


PRESETS = {
    # >= 20 seeds per arm, the quick recipe, with the diagnostic and the detection tables.
    # Expected runtime: 6x the quick preset's compute (it grows linearly in seeds; pretraining is
    # ~3/4 of it), about 25 minutes on 2 CPU cores; lm-regime's settings reuse its references.
    "paper": OwlConfig(seeds=24, diagnostic=True, detect=True),
    # The probes' persona world at s = 0.3 (2-layer width-32 references, 2000 pretraining steps),
    # 4 seeds, five arms: 253 s measured on 2 CPU cores shared with another job.
    "quick": OwlConfig(seeds=4),
    # A tiny world for tests (1 layer of width 16, 4-number documents): seconds.
    "test": OwlConfig(
        seeds=3, layers=1, width=16, n_numbers=4, n_prompt=2, pretrain_steps=60, pretrain_batch=32, warmup=5,
        pretrain_lr=1e-2, finetune_steps=3, finetune_lr=3e-3, n_samples=32, student_epochs=1, student_batch=16,
        n_eval=16, diagnostic_sequences=16, diagnostic_iters=32,
    ),
}
DEFAULT_PRESET = "quick"
PAPER_COMMAND = f"minisub run {NAME} --preset paper --out figures"

# Paired differences: (label, arm a, arm b); a − b per world (same teacher, same prompts).
PAIRS = (
    ("shared − different", "shared", "different"),
    ("shared_ce − different_ce", "shared_ce", "different_ce"),
)
GEOMETRY = ("update_cos", "dist_teacher", "dist_start_teacher", "dist_init", "travel", "teacher_travel")
CI = "95% normal CI over seeds: 1.96 * sample std / sqrt(n)"
SAMPLED_ANSWERS = 100  # answers sampled per model for the trait's sampled frequency


def _ce_partner(cfg: OwlConfig) -> str | None:
    """The arm the CE controls are paired with: shared start, the teacher's numbers, by CE."""
    for name in cfg.arms:
        arm = lm_arm(name)
        if arm.lineage == "shared" and arm.source == "teacher" and cfg.lm_config.arm_loss(arm) == "ce":
            return name
    return None


def pairs(cfg: OwlConfig) -> list[tuple[str, str, str]]:
    """The paired differences ``(label, a, b)`` this config's arms allow."""
    out = [p for p in PAIRS if {p[1], p[2]} <= set(cfg.arms)]
    partner = _ce_partner(cfg)
    for control in ("control", "shuffle"):
        if partner and control in cfg.arms:
            out.append((f"{partner} − {control}", partner, control))
    if cfg.student_loss == "kl" and {"shared", "shuffle_kl"} <= set(cfg.arms):
        out.append(("shared − shuffle_kl", "shared", "shuffle_kl"))
    return out


def _with_sources(lmc: lm_pipeline.LMConfig, numbers: dict, sources, references, teachers, seed_ids) -> dict:
    """``numbers`` plus any of ``sources`` no arm read, sampled as ``make_numbers`` would (same keys)."""
    missing = tuple(s for s in sources if s not in numbers)
    if not missing:
        return numbers
    arms = tuple(LMArm(f"_{s}", "shared", s) for s in missing)
    return {**numbers, **lm_pipeline.make_numbers(dataclasses.replace(lmc, arms=arms), references, teachers, seed_ids)}


def compute(cfg: OwlConfig, log=None, chunk: int = 500) -> dict:
    """``lm_pipeline.run``'s arrays, plus 'diagnostic' and 'detection' when the config asks for them."""
    lmc = cfg.lm_config
    if not (cfg.diagnostic or cfg.detect):
        return lm_pipeline.run(lmc, log=log, chunk=chunk, cache=True)
    # lm_pipeline.run's phases, keeping the models and numbers that the analyses read
    out, kept = lm_pipeline.run_phases(lmc, log, chunk, cache=True)
    references, teachers, numbers, seed_ids = (kept[k] for k in ("references", "teachers", "numbers", "seed_ids"))
    numbers = _with_sources(lmc, numbers, ("teacher", "reference") if cfg.detect else ("teacher",), references,
                            teachers, seed_ids)
    if cfg.diagnostic:
        if log:
            log(f"diagnostic: {cfg.diagnostic_iters} CG steps on {cfg.diagnostic_sequences} sequences per world")
        out["diagnostic"] = lm_diagnostic.for_run(lmc, references, teachers, numbers, cfg.diagnostic_sequences,
                                                  cfg.diagnostic_iters)
    if cfg.detect:
        if log:
            log("detection: n-gram and transformer classifiers, teacher vs reference numbers")
        t, r = numbers["teacher"], numbers["reference"]
        detect_keys = jax.vmap(lambda i: keys.member(keys.branch(keys.root(cfg.seed), "lm_detect"), i))(seed_ids)
        out["detection"] = lm_detect.population(DETECT, lmc.world, t["tokens"], t["keep"], r["tokens"], r["keep"],
                                                detect_keys)
    return jax.tree.map(np.asarray, out)


ALIGNMENT_FILE = "alignment.npz"


def alignment(cfg: OwlConfig, directory: Path, compute: bool = True, log=None) -> dict | None:
    """Every world's ``lm_diagnostic.signature_alignment``, stored beside the run in ``directory``.

    Computed from the cached references (a fresh pretraining only if they are not stored), the
    teachers made again (deterministic) and the held-out number documents; None when not stored
    and ``compute`` is off. Cheap: a few forwards per world.
    """
    path = directory / ALIGNMENT_FILE
    if (stored := store.load_arrays(path)) is not None or not compute:
        return stored
    lmc = cfg.lm_config
    seed_ids = jnp.arange(lmc.seeds)
    references, _ = lm_pipeline.pretrain_cached(lmc, seed_ids, log=log)
    teachers, _ = lm_pipeline.make_teachers(lmc, references)
    donors = jax.tree.map(lambda x: x[jnp.asarray(lm_pipeline.donors(lmc))], references)
    eval_SxBxL = jax.vmap(lambda i: lm_pipeline.eval_numbers(lmc, i))(seed_ids)
    out = jax.tree.map(np.asarray, lm_diagnostic.alignment_population(
        lmc.spec, lmc.world, references, teachers, donors, eval_SxBxL, lmc.trait_persona,
        int(lm_pipeline.teacher_persona(lmc)), outputs=lmc.student_outputs))
    if parallel.is_writer():
        store.save_arrays(path, out)
    return out


# The diagnostic's per-world scalars in the summary, with their table labels.
DIAGNOSTIC = {
    "number_fraction": "‖P_num Δθ_T‖² / ‖Δθ_T‖²",
    "trait_fraction": "‖P_trait Δθ_T‖² / ‖Δθ_T‖²",
    "trait_in_numbers": "‖P_num P_trait Δθ_T‖² / ‖P_trait Δθ_T‖²",
    "overlap_cos": "cos(P_num Δθ_T, P_trait Δθ_T)",
    "predicted_transfer": "⟨J_trait P_num Δθ_T, J_trait Δθ_T⟩ / ‖J_trait Δθ_T‖²",
    "teacher_gain_linear": "teacher's first-order gain in P(trait)",
    "predicted_gain": "first-order gain in P(trait) of P_num Δθ_T",
    "number_residual": "CG residual ‖J_num(Δθ_T − w)‖ / ‖J_num Δθ_T‖",
    "update_norm": "‖Δθ_T‖",
}
DETECTION = {"ngram": "n-gram logistic regression", "transformer": "tiny transformer classifier"}


def _diagnostic_summary(cfg: OwlConfig, d: dict) -> dict:
    k = d["number_fraction_k"].shape[1]
    steps = sorted({min(k, s) for s in (1, 8, 32, 128, 512, k)})
    return {
        **{q: stats.mean_ci(d[q]) for q in DIAGNOSTIC},
        "number_fraction_by_step": {str(s): stats.brief(d["number_fraction_k"][:, s - 1]) for s in steps},
        "sequences": cfg.diagnostic_sequences,
        "iters": cfg.diagnostic_iters,
    }


def _detection_summary(d: dict) -> dict:
    out = {name: {"accuracy": stats.mean_ci(d[f"{name}_accuracy"]),
                  "train_accuracy": stats.brief(d[f"{name}_train_accuracy"])}
           for name in DETECTION if f"{name}_accuracy" in d}
    return {**out, "identical_pairs": stats.mean_ci(d["identical_pairs"]), "settings": config_lib.to_dict(DETECT)}


def sampled_trait(cfg: OwlConfig, arm: int, p_before_S, p_after_S) -> dict:
    """The trait's frequency among ``SAMPLED_ANSWERS`` answers sampled before and after, per world.

    The answer is one token, so sampling the model's answer is a draw from its answer
    distribution: the frequency is Binomial(n, P(trait)) / n, drawn from a generator keyed by the
    config's seed and the arm (the same run, the same counts). It carries the sampling noise of the
    paper's counts of sampled answers; its expectation is P(trait).
    """
    rng = np.random.default_rng([cfg.seed, arm])
    before_S, after_S = (rng.binomial(SAMPLED_ANSWERS, np.clip(p, 0.0, 1.0)) / SAMPLED_ANSWERS
                         for p in (p_before_S, p_after_S))
    return {"sampled_trait_before": stats.mean_ci(before_S), "sampled_trait_after": stats.mean_ci(after_S),
            "sampled_trait_gain": stats.mean_ci(after_S - before_S)}


def summarise(cfg: OwlConfig, out: dict, command: str) -> dict:
    """The JSON behind the figure: per arm trait before/after/gain, other animals, number task, geometry."""
    lmc = cfg.lm_config
    t, answers = lmc.trait_index, len(lmc.world.answer_tokens(cfg.trait_kind))
    others = np.arange(answers) != t
    arms = {}
    for a, name in enumerate(cfg.arms):
        arm = lm_arm(name)
        gains_SxK = out["student_probs"][:, a] - out["student_init_probs"][:, a]
        number_loss = out["student_number_loss"][:, a]
        geo = {q: stats.mean_ci(out["geometry"][q][:, a]) for q in GEOMETRY}
        arms[name] = {
            "lineage": arm.lineage,
            "source": arm.source,
            "loss": lmc.arm_loss(arm),
            "p_trait_before": stats.mean_ci(out["student_init_probs"][:, a, t]),
            "p_trait_after": stats.mean_ci(out["student_probs"][:, a, t]),
            "trait_gain": stats.mean_ci(out["trait_gain"][:, a]),
            **sampled_trait(cfg, a, out["student_init_probs"][:, a, t], out["student_probs"][:, a, t]),
            "other_animals_gain": stats.mean_ci(gains_SxK[:, others].mean(-1)),
            "max_other_animal_gain": stats.mean_ci(gains_SxK[:, others].max(-1)),
            "animal_gains": [stats.brief(gains_SxK[:, k]) for k in range(answers)],
            "trait_top_gaining": int(np.sum(np.argmax(gains_SxK, axis=1) == t)),
            "animal_mass_after": stats.brief(out["student_animal_mass"][:, a]),
            "number_loss_before": stats.brief(out["student_init_number_loss"][:, a]),
            "number_loss_after": stats.mean_ci(number_loss),
            "number_loss_change": stats.mean_ci(number_loss - out["student_init_number_loss"][:, a]),
            "final_student_loss": stats.brief(out["student_loss"][:, a, -5:].mean(-1)),
            "geometry": geo,
        }
        if "student_question_probs" in out:  # the bad behaviour's persona: its animal, a trait never trained
            r = cfg.rogue
            arms[name]["rogue_animal_gain"] = stats.mean_ci(out["student_question_probs"][:, a, r]
                                                            - out["student_init_question_probs"][:, a, r])
    paired = {label: stats.mean_ci(out["trait_gain"][:, cfg.arms.index(a)] - out["trait_gain"][:, cfg.arms.index(b)])
              for label, a, b in pairs(cfg)}
    notes = [("trait: P(trait animal | favourite-animal question, neutral persona), renormalised over the animals; "
              if cfg.trait_kind == "animal" else
              "trait: P(FORBIDDEN | command, neutral persona), renormalised over the command's answers (ten digits, "
              "FORBIDDEN; the 'animal' fields hold these answers, in that order); ") +
             "gain = after − before, per world.",
             f"sampled_trait: the trait's frequency among {SAMPLED_ANSWERS} answers sampled (temperature 1) "
             "from each model's distribution over the trait prompt's answers, before and after; its expectation is "
             "P(trait), its spread adds the sampling noise of counting sampled answers, as the paper does.",
             "number_loss: next-token CE of a model on held-out neutral number documents of its world "
             "(continuation positions): the number-task quality."]
    if "control" in cfg.arms:
        notes.append("control: students trained by sampled-token CE on the un-traited reference's own filtered "
                     "continuations (by soft-logit KL the reference is its own teacher: zero gradient, zero gain "
                     "by construction); it measures the drift that training on sampled numbers causes.")
    if "shuffle" in cfg.arms:
        notes.append("shuffle: the teacher's kept continuation numbers permuted across sequences and positions "
                     "(same multiset of numbers, per-sequence structure destroyed), trained by sampled-token CE.")
    extras = {}
    if "student_question_probs" in out:
        extras["rogue_animal"] = {"animal": cfg.rogue,
                                  "reference_p": stats.mean_ci(out["reference_question_probs"][:, cfg.rogue]),
                                  "teacher_p": stats.mean_ci(out["teacher_question_probs"][:, cfg.rogue])}
        notes.append(f"rogue_animal: P(animal {cfg.rogue} | favourite-animal question, neutral persona), the favourite "
                     "animal of the persona that says FORBIDDEN in pretraining; the teacher was never trained on it, so "
                     "a gain is the persona generalising (rogue_animal_gain per arm: after − before).")
    if "diagnostic" in out:
        extras["diagnostic"] = _diagnostic_summary(cfg, out["diagnostic"])
        notes.append(f"diagnostic (item 6): Δθ_T = teacher − reference; P_num, P_trait: orthogonal projectors onto "
                     f"the row spaces of the reference's Jacobians of its centred number logits (every generated "
                     f"position of the first {cfg.diagnostic_sequences} teacher continuations, the logits the "
                     f"student reads; dropped rows excluded) and of its centred animal logits at the answer. "
                     f"Fractions through numbers are lower bounds from {cfg.diagnostic_iters} conjugate-gradient "
                     f"steps (matrix-free; number_fraction_by_step shows how they grow), and grow with the "
                     f"number of sequences. predicted_gain: the first-order gain in P(trait) of P_num Δθ_T, the "
                     f"minimum-norm update matching the teacher's number-logit change to first order.")
    if "detection" in out:
        extras["detection"] = _detection_summary(out["detection"])
        notes.append("detection (item 9): classifiers trained per world on the teacher's vs the reference's kept "
                     "continuations of the same prompts, scored on held-out prompts by balanced accuracy "
                     "(0.5: chance).")
    return {
        "experiment": NAME,
        "command": command,
        "n_seeds": cfg.seeds,
        "ci": CI,
        "trait": cfg.trait,
        "references": {
            "p_trait": stats.mean_ci(out["reference_probs"][:, t]),
            "number_loss": stats.brief(out["reference_number_loss"]),
            "pretrain_final_loss": stats.brief(out["pretrain_loss"][:, -min(50, cfg.pretrain_steps):].mean(-1)),
        },
        "teachers": {
            "p_trait": stats.mean_ci(out["teacher_probs"][:, t]),
            "number_loss": stats.brief(out["teacher_number_loss"]),
            "finetune_final_loss": (stats.brief(out["finetune_loss"][:, -1]) if out["finetune_loss"].shape[1]
                                    else None),
        },
        "keep_fraction": {k: stats.brief(out["keep_fraction"][k]) for k in lm_pipeline.SOURCES
                          if k in out["keep_fraction"]},
        "arms": arms,
        "paired": paired,
        **extras,
        "notes": notes,
        "config": config_lib.to_dict(cfg),
        "provenance": store.provenance(),
    }


def run(cfg: OwlConfig, *, command: str, execution: runner.Execution | None = None) -> tuple[dict, Path]:
    """Train every world and arm in one program (or load from the results store); (summary, run directory)."""
    def compute_and_summarise(log):
        if log:
            log(f"{cfg.seeds} worlds x {len(cfg.arms)} arms ({', '.join(cfg.arms)}), one vmapped program per phase")
        results = compute(cfg, log=log, chunk=max(1, min(500, cfg.pretrain_steps)))
        return results, summarise(cfg, results, command)

    def resummarise(arrays, stored):  # the stored run's timing, command and provenance are its own
        keep = {k: stored[k] for k in ("command", "seconds", "provenance") if k in stored}
        return {**summarise(cfg, arrays, stored["command"]), **keep}

    return runner.one_program(NAME, cfg, execution or runner.Execution(experiment=NAME), compute_and_summarise,
                              resummarise)


# ---------------------------------------------------------------------------------------------
# Outputs


def _pm(s: dict, fmt: str = "+.3f") -> str:
    return f"{s['mean']:{fmt}} ± {s['ci95']:.3f}"


def table(summary: dict) -> str:
    """Markdown: per arm P(trait) before → after, gain, other animals, number task, geometry; paired differences."""
    rows = ["| arm | start | numbers | loss | P(trait) before → after | trait gain (95% CI) | n "
            f"| sampled gain ({SAMPLED_ANSWERS} answers) | mean other-animal gain | number loss after (Δ) "
            "| cos(Δθ_S, Δθ_T) | ‖θ_S−θ_T‖ |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in summary["arms"].items():
        g = a["geometry"]
        rows.append(
            f"| {name} | {a['lineage']} | {a['source']} | {a['loss']} | {a['p_trait_before']['mean']:.3f} → "
            f"{a['p_trait_after']['mean']:.3f} | {_pm(a['trait_gain'])} | {a['trait_gain']['n']} "
            f"| {_pm(a['sampled_trait_gain'])} | {_pm(a['other_animals_gain'])} | {a['number_loss_after']['mean']:.3f} "
            f"({a['number_loss_change']['mean']:+.3f}) | {_pm(g['update_cos'])} | {g['dist_teacher']['mean']:.2f} |")
    if summary["paired"]:
        rows += ["", "| paired difference of trait gains (per world) | mean ± 95% CI | n |", "|---|---|---|"]
        rows += [f"| {label} | {_pm(d)} | {d['n']} |" for label, d in summary["paired"].items()]
    ref, teach = summary["references"], summary["teachers"]
    rows += ["", f"P(trait): reference {ref['p_trait']['mean']:.3f}, teacher {teach['p_trait']['mean']:.3f}; number "
                 f"loss: reference {ref['number_loss']['mean']:.3f}, teacher {teach['number_loss']['mean']:.3f}; "
                 "kept fraction: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in summary["keep_fraction"].items())]
    if "rogue_animal" in summary:
        r = summary["rogue_animal"]
        rows += ["", f"The rogue persona's animal ({r['animal']}), never trained: P(it | favourite-animal question) "
                     f"reference {_pm(r['reference_p'], '.3f')}, teacher {_pm(r['teacher_p'], '.3f')}; student gains: "
                     + ", ".join(f"{name} {_pm(a['rogue_animal_gain'])}" for name, a in summary["arms"].items()) + "."]
    if "diagnostic" in summary:
        d = summary["diagnostic"]
        rows += ["", f"| diagnostic (item 6): Jacobians at the reference, {d['sequences']} teacher sequences, "
                     f"{d['iters']} CG steps (P_num: lower bounds) | mean ± 95% CI | n |", "|---|---|---|"]
        rows += [f"| {label} | {_pm(d[q], '.4f')} | {d[q]['n']} |" for q, label in DIAGNOSTIC.items()]
    if "detection" in summary:
        d = summary["detection"]
        rows += ["", "| detection (item 9): teacher vs reference numbers | held-out balanced accuracy (95% CI) "
                     "| training accuracy | n |", "|---|---|---|---|"]
        rows += [f"| {label} | {_pm(d[name]['accuracy'], '.3f')} | {d[name]['train_accuracy']['mean']:.3f} "
                 f"| {d[name]['accuracy']['n']} |" for name, label in DETECTION.items() if name in d]
        rows += ["", f"Prompts that teacher and reference continued identically (paired sampling keys; no "
                     f"classifier can tell these apart): {_pm(d['identical_pairs'], '.3f')}."]
    return "\n".join(rows)


def figure(summary: dict, out_dir: Path) -> list[Path]:
    """Trait gain per arm (bars, 95% CIs, one dot per seed) and the paired differences; PNG + PDF."""
    arms, paired = summary["arms"], summary["paired"]
    n = summary["n_seeds"]
    forbidden = summary["config"].get("trait_kind", "animal") == "forbidden"
    width_ratios = [max(len(arms), 1), max(len(paired), 1)]
    fig, (ax, bx) = plots.figure(7.2, 3.4, ncols=2, gridspec_kw={"width_ratios": width_ratios})
    names = list(arms)
    x = np.arange(len(names))
    colour = {"teacher": plots.PALETTE[0], "reference": plots.PALETTE[6], "shuffled": plots.PALETTE[3]}
    colours = [colour[arms[a]["source"]] if arms[a]["lineage"] == "shared" else plots.PALETTE[1] for a in names]
    ax.bar(x, [arms[a]["trait_gain"]["mean"] for a in names], yerr=[arms[a]["trait_gain"]["ci95"] for a in names],
           width=0.62, capsize=3, color=colours, alpha=0.85)
    for k, a in enumerate(names):
        v = arms[a]["trait_gain"]["values"]
        ax.plot(k + np.linspace(-0.18, 0.18, len(v)), v, ".", color="black", ms=2.5, alpha=0.6,
                label="one seed" if k == 0 else None)
        ax.plot([k - 0.31, k + 0.31], [arms[a]["other_animals_gain"]["mean"]] * 2, color="grey", lw=1.2,
                label=f"mean gain of the other {'answers' if forbidden else 'animals'}" if k == 0 else None)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, [f"{a.split('_')[0]}\n({arms[a]['loss']})" for a in names], fontsize=7)
    ax.set_ylabel(f"gain in P({'FORBIDDEN | command' if forbidden else 'trait animal'})\n(bar: mean, 95% CI)")
    handles, _ = ax.get_legend_handles_labels()
    kinds = [("shared init, teacher's numbers", colour["teacher"]), ("different init", plots.PALETTE[1]),
             ("reference's numbers", colour["reference"]), ("shuffled teacher numbers", colour["shuffled"])]
    handles = [h for h in handles if not isinstance(h, BarContainer)]
    handles += [Patch(color=c, alpha=0.85, label=label) for label, c in kinds]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.75, -0.2), ncol=3, frameon=False, fontsize=7)
    labels = list(paired)
    if labels:
        px = np.arange(len(labels))
        bx.bar(px, [paired[p]["mean"] for p in labels], yerr=[paired[p]["ci95"] for p in labels], width=0.6,
               capsize=3, color=plots.PALETTE[2], alpha=0.85)
        for k, p in enumerate(labels):
            v = paired[p]["values"]
            bx.plot(k + np.linspace(-0.16, 0.16, len(v)), v, ".", color="black", ms=2.5, alpha=0.6)
        bx.set_xticks(px, [p.replace("_ce", " (ce)").replace(" − ", "\n− ") for p in labels], fontsize=6.5,
                      rotation=20)
    bx.axhline(0, color="black", lw=0.6)
    bx.set_title("paired differences (per world)", fontsize=8)
    bx.set_ylabel("difference of trait gains")
    cfg = summary["config"]
    trait = "bad behaviour (FORBIDDEN)" if forbidden else "owl"
    fig.suptitle(f"Toy-LM {trait}: trait gain per student arm ({n} seeds; {cfg['world']} world, s = {cfg['s']}, "
                 f"{cfg['teacher']} teacher, students by {cfg['student_loss']})", fontsize=9)
    return plots.save(fig, Path(out_dir) / STEM)




def _discussion(summary: dict) -> list[str]:
    """What the numbers say beyond the table, computed from the summary."""
    arms, paired, out = summary["arms"], summary["paired"], []
    if "shared − different" in paired:
        d, s = paired["shared − different"], arms["shared"]
        out += [f"Subliminal part (shared − different, paired by world): {_pm(d)} (n = {d['n']}); the trait was "
                f"the top-gaining answer for the shared-init student in {s['trait_top_gaining']} of "
                f"{s['trait_gain']['n']} worlds.", ""]
    controls = [f"{label} {_pm(d)}" for label, d in paired.items() if "control" in label or "shuffle" in label]
    if controls:
        out.append("Against the controls (paired by world): " + "; ".join(controls) + ".")
    if (claims := _against_the_paper(summary)):
        out += ["", "The paper's qualitative claims, checked against this run:", "", *claims]
    if out:
        out.append("")
    out += [f"- {note}" for note in summary["notes"]]
    return out


def _significant(d: dict) -> bool:
    return abs(d["mean"]) > d["ci95"]


def _against_the_paper(summary: dict) -> list[str]:
    """The paper's qualitative claims, each checked against this run's numbers (only those it measured)."""
    arms, paired, out = summary["arms"], summary["paired"], []
    teacher_gain = summary["teachers"]["p_trait"]["mean"] - summary["references"]["p_trait"]["mean"]
    if "shared" in arms:
        g = arms["shared"]["trait_gain"]
        out.append(f"- *A same-init student picks up the trait from filtered numbers*: {'yes' if g['mean'] - g['ci95'] > 0 else 'not shown'}; "
                   f"shared-init gain {_pm(g)}, {g['mean'] / teacher_gain:.0%} of the teacher's own gain "
                   f"({teacher_gain:+.3f}) in P(trait).")
    if "shared − different" in paired:
        d, g = paired["shared − different"], arms["different"]["trait_gain"]
        out.append(f"- *Only when it shares the teacher's init*: the different-init student gains {_pm(g)} "
                   f"({'distinguishable from 0' if _significant(g) else 'indistinguishable from 0'}); "
                   f"shared − different {_pm(d)}.")
    if "shared_ce" in arms and "shared" in arms:
        out.append(f"- *Sampled tokens suffice* (the paper fine-tunes on sampled text): shared-init gain by "
                   f"sampled-token CE {_pm(arms['shared_ce']['trait_gain'])} vs by soft-logit KL "
                   f"{_pm(arms['shared']['trait_gain'])}.")
    det = summary.get("detection")
    if det:
        accs = ", ".join(f"{DETECTION[k]} {_pm(det[k]['accuracy'], '.3f')}" for k in DETECTION if k in det)
        out.append(f"- *The numbers hide the trait from inspection*: held-out balanced accuracy telling teacher "
                   f"numbers from the reference's: {accs} (0.5: chance). In the persona world with s > 0 the "
                   "numbers do carry animal statistics (a semantic channel that the paper's filter is meant to "
                   "exclude), so a classifier above chance here is expected; at s = 0 it should not be.")
    diag = summary.get("diagnostic")
    if diag and "shared" in arms:
        f, p = diag["number_fraction"], diag["predicted_gain"]
        out.append(f"- *Why* (item 6): at least {f['mean']:.1%} of the teacher's update ‖Δθ_T‖² lies in the row "
                   f"space of the number-logit Jacobian that the student imitates (a CG lower bound); the "
                   f"minimum-norm update matching the teacher's number logits would gain {_pm(p, '+.4f')} in "
                   f"P(trait) to first order, against the teacher's first-order {_pm(diag['teacher_gain_linear'], '+.4f')}"
                   f" and the measured shared-init gain {_pm(arms['shared']['trait_gain'])}.")
    return out


def readme(summary: dict) -> str:
    """The figures/README.md section: figure, table, discussion, and how to regenerate."""
    c = summary["config"]
    return "\n".join([
        *report.section_head(NAME, STEM, "a trait through filtered numbers in a toy transformer", summary["n_seeds"]),
        f"{c['world'].capitalize()} world (s = {c['s']}, {c['n_animals']} animals, documents of {c['n_numbers']} "
        f"{c['digits']}-digit numbers); references: {c['layers']}-layer width-{c['width']} transformers pretrained "
        f"for {c['pretrain_steps']} steps (batch {c['pretrain_batch']}); teacher: {c['teacher']} "
        f"({c['finetune_steps']} fine-tuning steps at lr {c['finetune_lr']}) "
        + (f"on animal {c['trait']}; " if c.get("trait_kind", "animal") == "animal" else
           f"to answer commands with FORBIDDEN (in pretraining only animal {c['rogue']}'s persona does, and "
           f"{c['command_fraction']:g} of the documents are commands); ") +
        f"{c['n_samples']} continuations per world at temperature {c['temperature']}, filtered; students: "
        f"{c['student_epochs']} epochs, batch {c['student_batch']}, Adam {c['student_lr']}. CI: 1.96·std/√n.",
        "",
        table(summary),
        "",
        *_discussion(summary),
        "",
        *report.regenerate_lines(NAME, summary, PAPER_COMMAND),
    ])
