"""Per-phase benchmark of a whole lm-owl run: wall time, counted FLOPs and rate against a same-process matmul.

Every phase of ``owl.compute`` runs once, as the run itself runs it, on references pretrained for
``steps`` steps here (the stand-in for stored references: the phases after pretraining cost the
same whatever the references' values). Each program is compiled ahead of time
(``jit(...).lower(...).compile()``), so a phase's *compile* and *run* times are separate; the
run time is what grows with the worlds. FLOPs are the model's own count
(``TransformerSpec.flops_per_token``, forward; a training step is 3x forward) of the work the
program does; gathers, LayerNorm and the softmax are not counted (filtering and the n-gram
classifier count 0).

``extrapolate`` scales the run times linearly in worlds (every program is vmapped over worlds)
and pretraining to its whole number of steps; compile times stay. It is an extrapolation, not
a measurement.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from minisub import keys, train
from minisub.lm import detect as lm_detect
from minisub.lm import diagnostic as lm_diagnostic
from minisub.lm import owl
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import world as world_lib
from minisub.run import bench


@dataclasses.dataclass
class Phase:
    name: str
    compile_s: float
    run_s: float
    flops: float
    unit: str = ""  # what ``per`` counts ('step', 'token')
    per: float = 0.0  # how many of them the phase did (0: no per-unit time)


def _timed(fn, *args, statics=(0,)):
    """(compile seconds, run seconds, result) of the jitted ``fn`` on ``args`` (``statics``: its static positions)."""
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    dynamic = [a for i, a in enumerate(args) if i not in statics]
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(*dynamic))
    return compile_s, time.perf_counter() - t, out


def sampler(cfg: lm_pipeline.LMConfig) -> str:
    """The sampler the config runs ('full': a full forward per token; 'cache': a KV cache)."""
    return getattr(cfg, "sampler", "full")


def sampling_flops(cfg: lm_pipeline.LMConfig, rows: int) -> float:
    """Counted FLOPs of continuing ``rows`` prompts (every source, every world: ``rows`` in all)."""
    L, start, fpt = cfg.world.context, cfg.world.prompt_length, cfg.spec.flops_per_token()
    if sampler(cfg) == "cache":  # the prompt once, then one position per generated token
        return float(rows * L * fpt)
    return float(rows * (L - start) * L * fpt)


def student_flops(cfg: lm_pipeline.LMConfig, arm) -> float:
    """One arm's student training, every world: 3x forward per step, plus the teacher's forward for KL."""
    steps = cfg.student_epochs * train.steps_per_epoch(cfg.n_samples, cfg.student_batch)
    per_forward = cfg.student_batch * cfg.world.context * cfg.spec.flops_per_token()
    return float(cfg.seeds * steps * per_forward * (3 + (cfg.arm_loss(arm) == "kl")))


def eval_flops(cfg: lm_pipeline.LMConfig) -> float:
    questions = 2 + (cfg.trait_kind != "animal")
    models = 2 + 2 * len(cfg.arms)
    return float(cfg.seeds * models * (cfg.n_eval + questions) * cfg.world.context * cfg.spec.flops_per_token())


def cg_flops(cfg: owl.OwlConfig) -> float:
    """The number-logit CG (two right-hand sides): per step a transpose (2x forward) and a jvp (1x)."""
    lmc = cfg.lm
    per_forward = cfg.diagnostic_sequences * lmc.world.context * lmc.spec.flops_per_token()
    return float(lmc.seeds * (2 * 3 * cfg.diagnostic_iters + 1) * per_forward)


def transformer_classifier_flops(det: lm_detect.DetectConfig, cfg: lm_pipeline.LMConfig) -> float:
    n_train = 2 * int(round(cfg.n_samples * (1 - det.holdout)))
    spec, L = det.spec(cfg.world), cfg.world.context
    steps = det.epochs * train.steps_per_epoch(n_train, det.batch)
    return float(cfg.seeds * (3 * steps * det.batch + 2 * cfg.n_samples) * L * spec.flops_per_token())


@partial(jax.jit, static_argnums=0)
def _sample_all(cfg: lm_pipeline.LMConfig, references, teachers, seed_ids):
    """The sampling of ``make_numbers`` alone: every sampled source's continuations ``[P, S, N, L]``."""
    models = {"teacher": teachers, "reference": references}
    persona = {"teacher": lm_pipeline.teacher_persona(cfg), "reference": cfg.world.neutral}
    sampled = cfg.sampled_sources
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[models[s] for s in sampled])
    personas = jnp.asarray([persona[s] for s in sampled])

    def one(p, token, i):
        prompts_NxL, _ = world_lib.number_batch(cfg.world, keys.stream(cfg.seed, "lm_prompts", i), cfg.n_samples)
        context_NxL = world_lib.with_persona(prompts_NxL, token)
        return lm_pipeline._sample_blocks(cfg, p, context_NxL, keys.stream(cfg.seed, "lm_samples", i))

    return jax.vmap(lambda p, t: jax.vmap(lambda q, i: one(q, t, i))(p, seed_ids))(params, personas)


@partial(jax.jit, static_argnums=0)
def _filter_all(cfg: lm_pipeline.LMConfig, sampled_PxSxNxL, seed_ids):
    """The filter (and the shuffled source) of ``make_numbers``: keep ``[P, S, N]``, shuffled tokens."""
    tokens = world_lib.with_persona(sampled_PxSxNxL, cfg.world.neutral)
    keep = world_lib.keep(cfg.world, tokens.reshape(-1, tokens.shape[-1]),
                          lm_pipeline.banned_numbers(cfg)).reshape(tokens.shape[:-1])
    shuffle = lambda x, k, i: lm_pipeline.shuffle_numbers(cfg.world, x, k, keys.stream(cfg.seed, "lm_shuffle", i))
    return keep, jax.vmap(shuffle)(tokens[0], keep[0], seed_ids)


def measure(cfg: owl.OwlConfig, steps: int = 50, per_arm: bool = True) -> list[Phase]:
    """Every phase of ``cfg``'s run, once each (see the module docstring)."""
    lmc = cfg.lm
    spread = partial(lm_pipeline.spread, lmc)  # as the run places them ('fast': worlds over devices)
    seed_ids, donor_ids = spread(jnp.arange(lmc.seeds)), jnp.asarray(lm_pipeline.donors(lmc))
    out = []
    state = spread(lm_pipeline.init_references(lmc, seed_ids))
    c, r, (state, _) = _timed(lm_pipeline.pretrain_chunk, lmc, state, seed_ids, 0, steps,
                             statics=(0, 4))
    per_step = lmc.seeds * bench.lm_pretrain_flops_per_step(lmc)
    out.append(Phase("pretraining", c, r, per_step * steps, "step", steps))
    references = state[0]
    c, r, (teachers, _) = _timed(lm_pipeline.make_teachers, lmc, references)
    teachers = spread(teachers)
    ft = lmc.seeds * lmc.finetune_steps * 3 * lmc.spec.flops_per_token() * lmc.world.context
    out.append(Phase("teacher fine-tune", c, r, ft * (lmc.teacher == "finetuned"), "step", lmc.finetune_steps))
    c, r, sampled = _timed(_sample_all, lmc, references, teachers, seed_ids)
    rows = sampled.shape[0] * sampled.shape[1] * sampled.shape[2]
    generated = rows * (lmc.world.context - lmc.world.prompt_length)
    out.append(Phase(f"sampling ({sampler(lmc)})", c, r, sampling_flops(lmc, rows), "token", generated))
    c, r, _ = _timed(_filter_all, lmc, sampled, seed_ids)
    out.append(Phase("filtering", c, r, 0.0))
    numbers = lm_pipeline.make_numbers(lmc, references, teachers, seed_ids)  # the real program's numbers
    numbers = spread(owl._with_sources(lmc, numbers, ("teacher", "reference"), references, teachers, seed_ids))
    arm_numbers = {s: numbers[s] for s in lmc.sources}
    if per_arm and len(lmc.arms) > 1:
        for arm in lmc.arms:
            one = dataclasses.replace(lmc, arms=(arm,))
            c, r, _ = _timed(lm_pipeline.train_students, one, references, teachers,
                             {s: numbers[s] for s in one.sources}, seed_ids, donor_ids)
            out.append(Phase(f"student arm {arm.name} ({lmc.arm_loss(arm)})", c, r, student_flops(lmc, arm)))
    c, r, (inits, students, _) = _timed(lm_pipeline.train_students, lmc, references, teachers, arm_numbers,
                                         seed_ids, donor_ids)
    inits, students = spread((inits, students))
    out.append(Phase(f"students, all {len(lmc.arms)} arms (one program)", c, r,
                     sum(student_flops(lmc, a) for a in lmc.arms)))
    c, r, _ = _timed(lm_pipeline.evaluate, lmc, references, teachers, inits, students, seed_ids)
    out.append(Phase("evaluation", c, r, eval_flops(lmc)))
    if cfg.diagnostic:
        out.append(_diagnostic(cfg, references, teachers, numbers))
    if cfg.detect:
        out.extend(_detection(cfg, numbers, seed_ids))
    return out


def _diagnostic(cfg: owl.OwlConfig, references, teachers, numbers) -> Phase:
    lmc, n = cfg.lm, cfg.diagnostic_sequences
    tokens, weight = numbers["teacher"]["tokens"][:, :n], numbers["teacher"]["keep"][:, :n].astype(jnp.float32)
    fn = partial(lm_diagnostic.population, lmc.spec, lmc.world, trait=lmc.trait_index, outputs=lmc.student_outputs,
                 iters=cfg.diagnostic_iters, kind=lmc.trait_kind)
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(references, teachers, tokens, weight).compile()
    c = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(compiled(references, teachers, tokens, weight))
    return Phase(f"diagnostic CG ({cfg.diagnostic_iters} steps)", c, time.perf_counter() - t, cg_flops(cfg),
                 "step", cfg.diagnostic_iters)


def _detection(cfg: owl.OwlConfig, numbers, seed_ids) -> list[Phase]:
    lmc, det = cfg.lm, owl.DETECT
    t_, r_ = numbers["teacher"], numbers["reference"]
    detect_keys = jax.vmap(lambda i: keys.stream(lmc.seed, "lm_detect", i))(seed_ids)
    args = (t_["tokens"], t_["keep"], r_["tokens"], r_["keep"], detect_keys)
    out = []
    for d in (dataclasses.replace(det, transformer=False), det):
        t = time.perf_counter()
        compiled = lm_detect.population.lower(d, lmc.world, *args).compile()
        c = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        out.append((c, time.perf_counter() - t))
    (c0, r0), (c1, r1) = out
    return [Phase(f"detection: n-gram ({det.ngram_steps} steps)", c0, r0, 0.0),
            Phase("detection: transformer (both minus n-gram)", c1 - c0, r1 - r0,
                  transformer_classifier_flops(det, lmc))]


def sampling_memory_gb(cfg: lm_pipeline.LMConfig, n_samples: int, seeds: int) -> float:
    """Bytes the sampling program needs at ``n_samples`` continuations x ``seeds`` worlds, from XLA's
    memory analysis of the compiled program (arguments, outputs and temporaries; nothing runs)."""
    big = dataclasses.replace(cfg, n_samples=n_samples, seeds=seeds, student_batch=min(cfg.student_batch, n_samples))
    params = jax.eval_shape(lambda: lm_pipeline.init_references(big, jnp.arange(seeds))[0])
    m = _sample_all.lower(big, params, params, jnp.arange(seeds)).compile().memory_analysis()
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 1e9


def extrapolate(phases: list[Phase], cfg: owl.OwlConfig, seeds: int, steps: int) -> float:
    """Seconds of a whole run at ``seeds`` worlds *on stored references* (no pretraining), scaled
    linearly in worlds from ``phases`` (measured at ``cfg.seeds``); compile times as measured."""
    scale = seeds / cfg.lm.seeds
    return sum(p.compile_s + p.run_s * scale for p in phases if _in_run(p))


def _in_run(p: Phase) -> bool:
    """The phases a run on stored references does (per-arm timings repeat the all-arms program's work)."""
    return p.name != "pretraining" and not p.name.startswith("student arm ")


def rows(phases: list[Phase], ceiling: float) -> list[tuple[str, str]]:
    out = []
    for p in phases:
        rate = p.flops / p.run_s if p.run_s > 0 else float("nan")
        unit = f"; {1e6 * p.run_s / p.per:.1f} us per {p.unit}" if p.per else ""
        flops = f"{p.flops:.3e} FLOP, {100 * rate / ceiling:.1f}% of matmul" if p.flops else "0 counted FLOP"
        out.append((p.name, f"compile {p.compile_s:6.1f} s | run {p.run_s:8.2f} s{unit} | {flops}"))
    return out


def report(cfg: owl.OwlConfig, steps: int = 50, per_arm: bool = True, memory: bool = True) -> dict:
    """Print and return every phase's figures, the end-to-end totals and the paper-preset extrapolation."""
    ceiling = bench.matmul_rate()
    phases = measure(cfg, steps, per_arm)
    lmc = cfg.lm
    paper = owl.PRESETS["paper"]
    pre = next(p for p in phases if p.name == "pretraining")
    total = sum(p.compile_s + p.run_s for p in phases if _in_run(p))
    lines = [bench._backend_row(), ("worlds (seeds)", f"{lmc.seeds}"),
             ("model", f"{lmc.layers} layers, width {lmc.width}, context {lmc.world.context}, "
                       f"{lmc.n_samples} prompts, {len(lmc.arms)} arms"),
             ("matmul FLOP rate", f"{ceiling / 1e9:.1f} GFLOP/s (4096^3 float32, same process)"),
             *rows(phases, ceiling),
             ("pretraining tokens/s",
              f"{pre.per * lmc.seeds * lmc.pretrain_batch * lmc.world.context / pre.run_s:.3e}"),
             ("run on stored references", f"{total:.1f} s measured ({lmc.seeds} worlds, compile included)"),
             (f"at {paper.lm.seeds} worlds, extrapolated",
              f"{extrapolate(phases, cfg, paper.lm.seeds, steps):.0f} s on stored references (EXTRAPOLATION: run "
              f"times x {paper.lm.seeds}/{lmc.seeds}, compile as measured); pretraining "
              f"{pre.run_s / steps * lmc.pretrain_steps * paper.lm.seeds / lmc.seeds:.0f} s more "
              f"({lmc.pretrain_steps} steps)"),
             ("peak memory (RSS)", f"{bench.peak_rss_gb():.2f} GB")]
    if memory:
        lines.append(("sampling memory, 16384 x 24", f"{sampling_memory_gb(lmc, 16384, 24):.2f} GB "
                                                      "(XLA memory analysis, not run)"))
    bench._print(lines)
    return {"phases": [dataclasses.asdict(p) for p in phases], "matmul_rate": ceiling, "total_s": total}


def report_against(cfg: owl.OwlConfig, baseline: owl.OwlConfig, steps: int = 50, per_arm: bool = True) -> dict:
    """Every phase of ``baseline`` then of ``cfg`` in this one process, side by side with the ratios.

    Phases pair up by position (both configs run the same phases; a sampler's name may differ).
    """
    ceiling = bench.matmul_rate()
    base, phases = measure(baseline, steps, per_arm), measure(cfg, steps, per_arm)
    lines = [bench._backend_row(), ("worlds (seeds)", f"{cfg.lm.seeds}"),
             ("baseline", bench._diff(baseline, cfg)),
             ("matmul FLOP rate", f"{ceiling / 1e9:.1f} GFLOP/s (4096^3 float32, same process)")]
    for b, p in zip(base, phases):
        name = p.name if p.name == b.name else f"{p.name} / {b.name}"
        lines.append((name, f"run {p.run_s:7.2f} s, baseline {b.run_s:7.2f} s: {b.run_s / p.run_s:5.2f}x | "
                            f"compile {p.compile_s:5.1f} s, baseline {b.compile_s:5.1f} s"))
    pre, pre_base = phases[0], base[0]
    tokens = pre.per * cfg.lm.seeds * cfg.lm.pretrain_batch * cfg.lm.world.context
    lines.append(("pretraining tokens/s", f"{tokens / pre.run_s:.3e}, baseline {tokens / pre_base.run_s:.3e}"))
    paper = owl.PRESETS["paper"].lm.seeds
    totals = [extrapolate(x, c, paper, steps) for x, c in ((phases, cfg), (base, baseline))]
    lines.append((f"at {paper} worlds, extrapolated", f"{totals[0]:.0f} s, baseline {totals[1]:.0f} s on stored "
                                                       f"references: {totals[1] / totals[0]:.2f}x (EXTRAPOLATION: "
                                                       f"run times x {paper}/{cfg.lm.seeds}, compile as measured)"))
    bench._print(lines)
    return {"phases": [dataclasses.asdict(p) for p in phases], "baseline": [dataclasses.asdict(p) for p in base],
            "matmul_rate": ceiling, "extrapolated_s": totals[0], "baseline_extrapolated_s": totals[1]}
