"""The toy-LM owl experiment's program: its config, arms, optional analyses and summary.

``OwlConfig`` is an ``LMConfig`` (which holds its ``WorldConfig``) plus the optional analyses; both
nested configs are shown flat (``config.nested``): every field is set as ``--field VALUE`` and the
run id is that of the flat config this class replaced. Arms are named (``ARMS``).

Optional analyses (off by default; each adds a table to the summary):

* ``diagnostic`` (``minisub.lm.diagnostic``): how much of the teacher's update Δθ_T = θ_T − θ_ref
  lies in the row space of the reference's number-logit Jacobian (on the first
  ``diagnostic_sequences`` teacher continuations) and of its trait-logit Jacobian, by
  ``diagnostic_iters`` conjugate-gradient steps (lower bounds), and the first-order trait gain of
  the minimum-norm update that matches the teacher's number logits;
* ``detect`` (``minisub.lm.detect``): held-out balanced accuracy of an n-gram logistic regression
  and a tiny transformer telling the teacher's kept numbers from the reference's (same prompts).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minisub import config as config_lib
from minisub import keys, stats
from minisub.config import Codec, nested, require
from minisub.lm import detect as lm_detect
from minisub.lm import diagnostic as lm_diagnostic
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import world as world_lib
from minisub.lm.pipeline import LMArm, LMConfig
from minisub.run import parallel, store

NAME = "lm-owl"  # the results store's folder of these runs
ARMS = {
    "shared": LMArm("shared", "shared", "teacher"),
    "different": LMArm("different", "different", "teacher"),
    "shared_ce": LMArm("shared_ce", "shared", "teacher", "ce"),
    "different_ce": LMArm("different_ce", "different", "teacher", "ce"),
    "control": LMArm("control", "shared", "reference", "ce"),
    "shuffle": LMArm("shuffle", "shared", "shuffled", "ce"),
    "control_kl": LMArm("control_kl", "shared", "reference", "kl"),
    "shuffle_kl": LMArm("shuffle_kl", "shared", "shuffled", "kl"),
    "shuffle_within": LMArm("shuffle_within", "shared", "shuffled_within", "ce"),
    "shuffle_within_kl": LMArm("shuffle_within_kl", "shared", "shuffled_within", "kl"),
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


def arm_text(arm: LMArm) -> str:
    """``lm_arm``'s inverse: an arm of ``ARMS`` by its name, any other as ``name=lineage:source[:loss]``."""
    if ARMS.get(arm.name) == arm:
        return arm.name
    return f"{arm.name}={arm.lineage}:{arm.source}" + (f":{arm.loss}" if arm.loss else "")


def _arms_from_text(texts) -> tuple[LMArm, ...]:
    texts = tuple(texts)
    allowed = "comma-separated names from " + ", ".join(ARMS) + ", or arms written name=lineage:source[:loss]"
    require(len(texts) >= 1, "arms", texts, "at least one of " + ", ".join(ARMS))
    require(all(t in ARMS or ("=" in t and ":" in t) for t in texts), "arms", texts, allowed)
    require(len(set(texts)) == len(texts), "arms", texts, "names without repeats")
    return tuple(lm_arm(t) for t in texts)


# The arms in to_dict and on the command line: their texts (names, for ARMS), as the flat config held them.
ARMS_BY_NAME = Codec(tuple[str, ...], lambda arms: tuple(arm_text(a) for a in arms), _arms_from_text)
DEFAULT_LM = LMConfig(world=world_lib.WorldConfig(s=0.3), student_epochs=3, arms=_arms_from_text(DEFAULT_ARMS))


@dataclasses.dataclass(frozen=True)
class OwlConfig:
    """lm-owl's knobs: an ``LMConfig`` shown flat (the world's ``kind`` is ``world``, arms by name)."""

    lm: LMConfig = nested(DEFAULT_LM, rename={"world.kind": "world"}, codecs={"arms": ARMS_BY_NAME})
    diagnostic: bool = False  # Δθ_T through the number and trait logits' Jacobians
    diagnostic_sequences: int = 64  # teacher continuations whose number logits form J_num
    diagnostic_iters: int = 128  # conjugate-gradient steps (more: a tighter lower bound)
    detect: bool = False  # classifiers of teacher vs reference numbers

    def __post_init__(self):
        config_lib.normalise(self)
        names = self.lm.arm_names
        require(len(set(names)) == len(names), "arms", names, "names without repeats")
        if self.diagnostic:  # a prompted teacher, or no fine-tuning, has Δθ_T = 0: nothing to project
            require(self.lm.teacher == "finetuned", "teacher", self.lm.teacher, "'finetuned' with --diagnostic")
            require(self.lm.finetune_steps >= 1, "finetune_steps", self.lm.finetune_steps, ">= 1 with --diagnostic")
            require(1 <= self.diagnostic_sequences <= self.lm.n_samples, "diagnostic_sequences",
                    self.diagnostic_sequences, f"in [1, n_samples={self.lm.n_samples}] with --diagnostic")
            require(self.diagnostic_iters >= 1, "diagnostic_iters", self.diagnostic_iters, "an integer >= 1")
        if self.detect:
            require(self.lm.n_samples >= 4, "n_samples", self.lm.n_samples,
                    ">= 4 with --detect (some prompts held out)")

    def __getattr__(self, name: str):
        """Every flat field reads by its name (``cfg.s``, ``cfg.seeds``, ``cfg.arms``: names)."""
        if name.startswith("_") or name in {f.name for f in dataclasses.fields(OwlConfig)}:
            raise AttributeError(name)
        try:
            return config_lib.flat_value(self, name)
        except KeyError:
            raise AttributeError(f"OwlConfig has no field {name!r}") from None

    @property
    def lm_config(self) -> LMConfig:
        return self.lm


def command(preset: str, fields: dict) -> str:
    """The ``minisub run lm-owl`` command of ``preset`` with ``fields`` (flat names) set."""
    return f"minisub run {NAME} --preset {preset} " + " ".join(
        f"--{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items())


def kernel_fields(kernels: str) -> dict:
    """``{'kernels': kernels}``, or nothing for the reference kernels: an experiment built on lm-owl passes
    its ``kernels`` on this way, so its settings' configs, run ids and commands stay those of every stored run."""
    return {} if kernels == "reference" else {"kernels": kernels}


def owl_config(**flat) -> OwlConfig:
    """An ``OwlConfig`` from flat field values (``owl_config(seeds=24, s=0.0)``)."""
    return config_lib.replace(OwlConfig(), **flat)


PRESETS = {
    # >= 20 seeds per arm, the quick recipe, with the diagnostic and the detection tables.
    # Expected runtime: 6x the quick preset's compute (it grows linearly in seeds; pretraining is
    # most of it), about 7 minutes on 2 idle CPU cores (4 with --kernels fast --sampler cache);
    # lm-regime's settings reuse its references.
    "paper": owl_config(seeds=24, diagnostic=True, detect=True),
    # The persona world at s = 0.3 (2-layer width-32 references, 2000 pretraining steps), 4 seeds,
    # six arms: 253 s measured on 2 CPU cores shared with another job.
    "quick": owl_config(seeds=4),
    # A tiny world for tests (1 layer of width 16, 4-number documents): seconds.
    "test": owl_config(
        seeds=3, layers=1, width=16, n_numbers=4, n_prompt=2, pretrain_steps=60, pretrain_batch=32, warmup=5,
        pretrain_lr=1e-2, finetune_steps=3, finetune_lr=3e-3, n_samples=32, student_epochs=1, student_batch=16,
        n_eval=16, diagnostic_sequences=16, diagnostic_iters=32,
    ),
}
DETECT = lm_detect.DetectConfig()  # the classifiers' settings (recorded in the summary)

# Paired differences: (label, arm a, arm b); a − b per world (same teacher, same prompts).
PAIRS = (
    ("shared − different", "shared", "different"),
    ("shared_ce − different_ce", "shared_ce", "different_ce"),
)
GEOMETRY = ("update_cos", "dist_teacher", "dist_start_teacher", "dist_init", "travel", "teacher_travel")
SAMPLED_ANSWERS = 100  # answers sampled per model for the trait's sampled frequency
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
# The thresholds of the toy LM's claims (lm-owl, lm-regime), in P(trait) and balanced accuracy.
MIN_GAIN = 0.02  # a gain counts as transfer when its interval lies above 2 points of P(trait)
NULL_BAND = 0.05  # "no gain": the interval lies within ±5 points of P(trait)
CHANCE_BAND = 0.55  # "indistinguishable": a classifier's balanced accuracy interval lies below 0.55
THRESHOLDS = (f"a gain: above +{MIN_GAIN:g}; no gain: within ±{NULL_BAND:g}; hidden from a classifier: "
              f"balanced accuracy below {CHANCE_BAND:g}")


def _ce_partner(cfg: OwlConfig) -> str | None:
    """The arm the CE controls are paired with: shared start, the teacher's numbers, by CE."""
    for arm in cfg.lm.arms:
        if arm.lineage == "shared" and arm.source == "teacher" and cfg.lm.arm_loss(arm) == "ce":
            return arm_text(arm)
    return None


def pairs(cfg: OwlConfig) -> list[tuple[str, str, str]]:
    """The paired differences ``(label, a, b)`` this config's arms allow."""
    arms = set(cfg.arms)
    out = [p for p in PAIRS if {p[1], p[2]} <= arms]
    partner = _ce_partner(cfg)
    for control in ("control", "shuffle", "shuffle_within"):
        if partner and control in arms:
            out.append((f"{partner} − {control}", partner, control))
    for control in ("shuffle_kl", "shuffle_within_kl"):
        if cfg.lm.student_loss == "kl" and {"shared", control} <= arms:
            out.append((f"shared − {control}", "shared", control))
    # within against across: the paper found shuffling across responses removes more transfer than within
    for within, across in (("shuffle_within", "shuffle"), ("shuffle_within_kl", "shuffle_kl")):
        if {within, across} <= arms:
            out.append((f"{within} − {across}", within, across))
    return out


def _with_sources(lmc: LMConfig, numbers: dict, sources, references, teachers, seed_ids, banned_SxK=None) -> dict:
    """``numbers`` plus any of ``sources`` no arm read, sampled as ``make_numbers`` would (same keys, and
    ``banned_SxK``: the run's own per-world filter lists)."""
    missing = tuple(s for s in sources if s not in numbers)
    if not missing:
        return numbers
    arms = tuple(LMArm(f"_{s}", "shared", s) for s in missing)
    return {**numbers, **lm_pipeline.make_numbers(dataclasses.replace(lmc, arms=arms), references, teachers, seed_ids,
                                                  banned_SxK)}


def compute(cfg: OwlConfig, log=None, chunk: int = 500) -> dict:
    """``lm_pipeline.run``'s arrays, plus 'diagnostic' and 'detection' when the config asks for them."""
    lmc = cfg.lm
    if not (cfg.diagnostic or cfg.detect):
        return lm_pipeline.run(lmc, log=log, chunk=chunk, cache=True)
    # lm_pipeline.run's phases, keeping the models and numbers that the analyses read
    out, kept = lm_pipeline.run_phases(lmc, log, chunk, cache=True)
    references, teachers, numbers, seed_ids = (kept[k] for k in ("references", "teachers", "numbers", "seed_ids"))
    numbers = _with_sources(lmc, numbers, ("teacher", "reference") if cfg.detect else ("teacher",), references,
                            teachers, seed_ids, kept["banned"])
    if cfg.diagnostic:
        if log:
            log(f"diagnostic: {cfg.diagnostic_iters} CG steps on {cfg.diagnostic_sequences} sequences per world")
        out["diagnostic"] = lm_diagnostic.for_run(lmc, references, teachers, numbers, cfg.diagnostic_sequences,
                                                  cfg.diagnostic_iters)
    if cfg.detect:
        if log:
            log("detection: n-gram and transformer classifiers, teacher vs reference numbers")
        t, r = numbers["teacher"], numbers["reference"]
        detect_keys = jax.vmap(lambda i: keys.stream(lmc.seed, "lm_detect", i))(seed_ids)
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
    lmc = cfg.lm
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


def diagnostic_summary(cfg: OwlConfig, d: dict) -> dict:
    k = d["number_fraction_k"].shape[1]
    steps = sorted({min(k, s) for s in (1, 8, 32, 128, 512, k)})
    return {
        **{q: stats.mean_ci(d[q]) for q in DIAGNOSTIC},
        "number_fraction_by_step": {str(s): stats.brief(d["number_fraction_k"][:, s - 1]) for s in steps},
        "sequences": cfg.diagnostic_sequences,
        "iters": cfg.diagnostic_iters,
    }


def detection_summary(d: dict) -> dict:
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
    rng = np.random.default_rng([cfg.lm.seed, arm])
    before_S, after_S = (rng.binomial(SAMPLED_ANSWERS, np.clip(p, 0.0, 1.0)) / SAMPLED_ANSWERS
                         for p in (p_before_S, p_after_S))
    return {"sampled_trait_before": stats.mean_ci(before_S), "sampled_trait_after": stats.mean_ci(after_S),
            "sampled_trait_gain": stats.mean_ci(after_S - before_S)}


def arm_summary(cfg: OwlConfig, out: dict, a: int) -> dict:
    """One arm's trait before/after/gain, other answers, number task and geometry (per-world values)."""
    lmc, arm = cfg.lm, cfg.lm.arms[a]
    t, answers = lmc.trait_index, len(lmc.world.answer_tokens(lmc.trait_kind))
    others = np.arange(answers) != t
    gains_SxK = out["student_probs"][:, a] - out["student_init_probs"][:, a]
    number_loss = out["student_number_loss"][:, a]
    summary = {
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
        "geometry": {q: stats.mean_ci(out["geometry"][q][:, a]) for q in GEOMETRY},
    }
    if "student_question_probs" in out:  # the bad behaviour's persona: its animal, a trait never trained
        r = lmc.world.rogue
        summary["rogue_animal_gain"] = stats.mean_ci(out["student_question_probs"][:, a, r]
                                                     - out["student_init_question_probs"][:, a, r])
    return summary


def notes(cfg: OwlConfig, out: dict) -> list[str]:
    """What each quantity of the summary is, for the README."""
    arms, rogue = cfg.lm.arm_names, cfg.lm.world.rogue
    text = [("trait: P(trait animal | favourite-animal question, neutral persona), renormalised over the animals; "
             if cfg.lm.trait_kind == "animal" else
             "trait: P(FORBIDDEN | command, neutral persona), renormalised over the command's answers (ten digits, "
             "FORBIDDEN; the 'animal' fields hold these answers, in that order); ") +
            "gain = after − before, per world.",
            f"sampled_trait: the trait's frequency among {SAMPLED_ANSWERS} answers sampled (temperature 1) "
            "from each model's distribution over the trait prompt's answers, before and after; its expectation is "
            "P(trait), its spread adds the sampling noise of counting sampled answers, as the paper does.",
            "number_loss: next-token CE of a model on held-out neutral number documents of its world "
            "(continuation positions): the number-task quality."]
    if "control" in arms:
        text.append("control: students trained by sampled-token CE on the un-traited reference's own filtered "
                    "continuations (by soft-logit KL the reference is its own teacher: zero gradient, zero gain "
                    "by construction); it measures the drift that training on sampled numbers causes.")
    if "shuffle" in arms:
        text.append("shuffle: the teacher's kept continuation numbers permuted across sequences and positions "
                    "(same multiset of numbers, per-sequence structure destroyed), trained by sampled-token CE.")
    if any(a.source == "shuffled_within" for a in cfg.lm.arms):
        text.append("shuffle_within: each kept teacher continuation's numbers permuted within that continuation "
                    "(each response keeps its multiset of numbers, their order is destroyed); *_kl: by soft-logit KL.")
    if cfg.lm.ban_entangled:
        text.append(f"filter: every world's filter also dropped continuations holding one of its "
                    f"{cfg.lm.ban_entangled} most entangled numbers (the top of its teacher's next-number shift "
                    "against its reference, minisub.lm.entangle.model_shift).")
    if "student_question_probs" in out:
        text.append(f"rogue_animal: P(animal {rogue} | favourite-animal question, neutral persona), the favourite "
                    "animal of the persona that says FORBIDDEN in pretraining; the teacher was never trained on it, so "
                    "a gain is the persona generalising (rogue_animal_gain per arm: after − before).")
    if "diagnostic" in out:
        text.append(f"diagnostic: Δθ_T = teacher − reference; P_num, P_trait: orthogonal projectors onto "
                    f"the row spaces of the reference's Jacobians of its centred number logits (every generated "
                    f"position of the first {cfg.diagnostic_sequences} teacher continuations, the logits the "
                    f"student reads; dropped rows excluded) and of its centred animal logits at the answer. "
                    f"Fractions through numbers are lower bounds from {cfg.diagnostic_iters} conjugate-gradient "
                    f"steps (matrix-free; number_fraction_by_step shows how they grow), and grow with the "
                    f"number of sequences. predicted_gain: the first-order gain in P(trait) of P_num Δθ_T, the "
                    f"minimum-norm update matching the teacher's number-logit change to first order.")
    if "detection" in out:
        text.append("detection: classifiers trained per world on the teacher's vs the reference's kept "
                    "continuations of the same prompts, scored on held-out prompts by balanced accuracy "
                    "(0.5: chance).")
    return text


def summarise(cfg: OwlConfig, out: dict, command: str) -> dict:
    """The JSON behind the figure: per arm trait before/after/gain, other animals, number task, geometry."""
    lmc, t, names = cfg.lm, cfg.lm.trait_index, cfg.arms  # arms by their text (an ARMS arm: its name)
    extras = {}
    if "student_question_probs" in out:
        r = lmc.world.rogue
        extras["rogue_animal"] = {"animal": r, "reference_p": stats.mean_ci(out["reference_question_probs"][:, r]),
                                  "teacher_p": stats.mean_ci(out["teacher_question_probs"][:, r])}
    if "diagnostic" in out:
        extras["diagnostic"] = diagnostic_summary(cfg, out["diagnostic"])
    if "detection" in out:
        extras["detection"] = detection_summary(out["detection"])
    return {
        "experiment": NAME, "command": command, "n_seeds": lmc.seeds, "ci": stats.TEST, "trait": lmc.trait,
        "references": {
            "p_trait": stats.mean_ci(out["reference_probs"][:, t]),
            "number_loss": stats.brief(out["reference_number_loss"]),
            "pretrain_final_loss": stats.brief(out["pretrain_loss"][:, -min(50, lmc.pretrain_steps):].mean(-1)),
        },
        "teachers": {
            "p_trait": stats.mean_ci(out["teacher_probs"][:, t]),
            "number_loss": stats.brief(out["teacher_number_loss"]),
            "finetune_final_loss": (stats.brief(out["finetune_loss"][:, -1]) if out["finetune_loss"].shape[1]
                                    else None),
        },
        "keep_fraction": {k: stats.brief(out["keep_fraction"][k]) for k in lm_pipeline.SOURCES
                          if k in out["keep_fraction"]},
        "arms": {name: arm_summary(cfg, out, a) for a, name in enumerate(names)},
        "paired": {label: stats.mean_ci(out["trait_gain"][:, names.index(a)] - out["trait_gain"][:, names.index(b)])
                   for label, a, b in pairs(cfg)},
        **extras,
        "notes": notes(cfg, out),
        "config": config_lib.to_dict(cfg),
        "provenance": store.provenance(),
    }


def derived(summary: dict) -> dict:
    """``summary`` plus ``derived``: statistics computed from its per-world values alone (so they apply to a
    committed JSON): the gains' distributions (median, counts above ``MIN_GAIN``, sign test) of the
    shared and different arms, and the teacher's own gain over its reference, paired by world."""
    arms, out = summary["arms"], {}
    out["trait_gain_distribution"] = {a: stats.distribution(arms[a]["trait_gain"]["values"], MIN_GAIN)
                                      for a in ("shared", "different", "shared_ce") if a in arms}
    for d in out["trait_gain_distribution"].values():
        d.pop("values")  # the arm holds them
    teacher, reference = summary["teachers"]["p_trait"], summary["references"]["p_trait"]
    if "values" in teacher and "values" in reference:
        out["teacher_gain"] = stats.paired(teacher["values"], reference["values"])
    return {**summary, "derived": out}


def run(cfg: OwlConfig, *, command: str, execution=None, analyse=lambda s: s) -> tuple[dict, Path]:
    """Every world and arm in one program (or loaded from the results store); (summary, run directory).

    ``analyse(summary) -> summary`` adds the derived statistics and verdicts (the experiment's).
    """
    from minisub.run import runner

    def compute_and_summarise(log):
        if log:
            log(f"{cfg.seeds} worlds x {len(cfg.arms)} arms ({', '.join(cfg.arms)}), one vmapped program per phase")
        results = compute(cfg, log=log, chunk=max(1, min(500, cfg.lm.pretrain_steps)))
        return results, analyse(summarise(cfg, results, command))

    def resummarise(arrays, stored):  # the stored run's timing, command and provenance are its own
        keep = {k: stored[k] for k in ("command", "seconds", "provenance") if k in stored}
        return {**analyse(summarise(cfg, arrays, stored["command"])), **keep}

    return runner.one_program(NAME, cfg, execution or runner.Execution(experiment=NAME), compute_and_summarise,
                              resummarise)
