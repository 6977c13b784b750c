"""Benchmark: seeds per second, achieved FLOP rate against a large matmul in the same process, peak memory."""

from __future__ import annotations

import hashlib
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from minisub.lm import pipeline as lm_pipeline
from minisub.mlp import mnist
from minisub.mlp import pipeline
from minisub.run import runner


def matmul_rate(n: int = 4096, repeats: int = 10) -> float:
    """FLOP/s of an ``n x n`` float32 matmul (best of ``repeats``), the machine's practical ceiling."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    mm(a, b).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(cfg: pipeline.AuxConfig) -> dict:
    """Run one block of ``cfg.seeds`` worlds, timing every epoch (the first of each phase compiles)."""
    data = mnist.load_cached()
    stamps = [time.perf_counter()]
    results = runner.run_block(cfg, np.arange(cfg.seeds), pipeline.donors(cfg), data,
                     lambda n=1, description=None: stamps.append(time.perf_counter()))
    durations = np.diff(stamps)
    te = cfg.teacher_epochs
    per = pipeline.flops_per_epoch(cfg)
    steady = [(per["teacher"], d) for d in durations[1:te]] + [(per["student"], d) for d in durations[te + 1:]]
    steady_flops = cfg.seeds * sum(f for f, _ in steady)
    steady_time = sum(d for _, d in steady)
    total_flops = cfg.seeds * pipeline.flops_per_seed(cfg)
    # Steady-state wall time of the whole run: every epoch at its phase's steady duration.
    t_epoch = np.mean(durations[1:te]) if te > 1 else durations[0]
    s_epoch = np.mean(durations[te + 1:]) if cfg.student_epochs > 1 else durations[te]
    steady_wall = te * t_epoch + cfg.student_epochs * s_epoch
    return {
        "seeds": cfg.seeds,
        "wall_s": float(stamps[-1] - stamps[0]),
        "steady_wall_s": float(steady_wall),
        "flops_total": float(total_flops),
        "flop_rate": float(steady_flops / steady_time) if steady_time > 0 else float("nan"),
        # every epoch's wall time, teacher's then student's: each phase's first one includes its compilation
        "epoch_s": [float(d) for d in durations],
        "results": results,
    }


def report(cfg: pipeline.AuxConfig) -> dict:
    """Print and return the benchmark figures for ``cfg`` (one block of ``cfg.seeds`` seeds)."""
    ceiling = matmul_rate()
    m = against(measure(cfg), ceiling)
    _print(table_rows(m))
    return m


def against(m: dict, ceiling: float) -> dict:
    """``m`` with the matmul ceiling, the achieved fraction of it and the peak memory added."""
    return m | {"matmul_rate": ceiling, "ratio": m["flop_rate"] / ceiling, "peak_rss_gb": peak_rss_gb()}


def _print(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def _backend_row() -> tuple[str, str]:
    return "backend", f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind})"


def _ceiling_rows(m: dict, digits: int) -> list[tuple[str, str]]:
    """The achieved rate against the matmul ceiling, and the peak memory."""
    return [
        ("achieved FLOP rate", f"{m['flop_rate'] / 1e9:.{digits}f} GFLOP/s (steady state)"),
        ("matmul FLOP rate", f"{m['matmul_rate'] / 1e9:.1f} GFLOP/s (4096^3 float32, same process)"),
        ("ratio", f"{100 * m['ratio']:.{digits}f}% of the matmul rate"),
        ("peak memory (RSS)", f"{m['peak_rss_gb']:.2f} GB"),
    ]


def lm_pretrain_flops_per_step(cfg: lm_pipeline.LMConfig) -> int:
    """Counted FLOPs of one pretraining step of one reference: forward + backward = 3 x forward."""
    return 3 * cfg.spec.flops_per_token() * cfg.world.context * cfg.pretrain_batch


def measure_lm(cfg: lm_pipeline.LMConfig, steps: int = 100) -> dict:
    """Time ``steps`` pretraining steps of ``cfg.seeds`` references in one vmapped program (compiled first)."""
    seed_ids = lm_pipeline.spread(cfg, jnp.arange(cfg.seeds))  # placed as the run places them
    state = lm_pipeline.spread(cfg, lm_pipeline.init_references(cfg, seed_ids))
    t = time.perf_counter()
    state, loss = lm_pipeline.pretrain_chunk(cfg, state, seed_ids, 0, steps)  # compiles, then runs
    jax.block_until_ready(loss)
    first = time.perf_counter() - t
    t = time.perf_counter()
    state, loss = lm_pipeline.pretrain_chunk(cfg, state, seed_ids, steps, steps)
    jax.block_until_ready(loss)
    steady = time.perf_counter() - t
    per_step = cfg.seeds * lm_pretrain_flops_per_step(cfg)
    return {
        "seeds": cfg.seeds,
        "wall_s": first + steady,
        "steady_wall_s": steady * cfg.pretrain_steps / steps,  # the whole pretraining at the steady rate
        "flops_total": float(per_step * cfg.pretrain_steps),
        "flop_rate": float(per_step * steps / steady),
        "step_s": steady / steps,
        # which arithmetic ran: two programs with equal digests gave the same losses bit for bit
        "loss_digest": hashlib.sha256(np.ascontiguousarray(np.asarray(loss)).tobytes()).hexdigest()[:16],
    }


def report_lm(cfg: lm_pipeline.LMConfig, steps: int = 100, ceiling: float | None = None) -> dict:
    """Print and return the pretraining benchmark of ``cfg``'s references (the bulk of a toy-LM run)."""
    ceiling = matmul_rate() if ceiling is None else ceiling
    m = against(measure_lm(cfg, steps), ceiling)
    _print(lm_rows(cfg, m))
    return m


def report_lm_against(cfg: lm_pipeline.LMConfig, baseline: lm_pipeline.LMConfig, steps: int = 100,
                      repeats: int = 2) -> dict:
    """``report_lm`` of ``cfg`` beside ``baseline`` in one process: each measured ``repeats`` times,
    alternately (the machine's speed drifts; the faster reading of each is kept), and the ratio."""
    ceiling = matmul_rate()
    runs = {"baseline": [], "config": []}
    for _ in range(repeats):
        for name, c in (("baseline", baseline), ("config", cfg)):
            runs[name].append(against(measure_lm(c, steps), ceiling))
    base, m = (min(runs[k], key=lambda r: r["step_s"]) for k in ("baseline", "config"))
    tokens = cfg.seeds * cfg.pretrain_batch * cfg.world.context
    _print([*lm_rows(cfg, m),
            ("baseline step, steady", f"{1e3 * base['step_s']:.1f} ms ({_diff(baseline, cfg)})"),
            ("pretraining tokens/s", f"{tokens / m['step_s']:.3e}, baseline {tokens / base['step_s']:.3e}: "
                                     f"{base['step_s'] / m['step_s']:.2f}x (best of {repeats} alternate runs each)")])
    return {"config": m, "baseline": base, "speedup": base["step_s"] / m["step_s"]}


def _diff(baseline, cfg) -> str:
    """The fields in which ``baseline`` differs from ``cfg``, as ``field=value``."""
    from minisub import config as config_lib

    a, b = config_lib.to_dict(baseline), config_lib.to_dict(cfg)
    return ", ".join(f"{k}={config_lib.flat_value(baseline, k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def lm_rows(cfg: lm_pipeline.LMConfig, m: dict) -> list[tuple[str, str]]:
    return [
        _backend_row(),
        ("references (seeds)", f"{m['seeds']}"),
        ("model", f"{cfg.layers} layers, width {cfg.width}, context {cfg.world.context}, batch {cfg.pretrain_batch}"),
        ("pretraining step, steady", f"{1e3 * m['step_s']:.1f} ms for all {m['seeds']} references"),
        ("whole pretraining, steady", f"{m['steady_wall_s']:.0f} s ({cfg.pretrain_steps} steps)"),
        ("counted FLOPs (pretraining)",
         f"{m['flops_total']:.3e}  ({lm_pretrain_flops_per_step(cfg):.3e} per step per reference)"),
        *_ceiling_rows(m, digits=2),
    ]


def table_rows(m: dict) -> list[tuple[str, str]]:
    return [
        _backend_row(),
        ("seeds", f"{m['seeds']}"),
        ("wall time, with compilation", f"{m['wall_s']:.1f} s"),
        ("wall time, steady state", f"{m['steady_wall_s']:.1f} s  ({m['steady_wall_s'] / m['seeds']:.2f} s per seed)"),
        ("seeds per second", f"{m['seeds'] / m['wall_s']:.3f} (with compilation), {m['seeds'] / m['steady_wall_s']:.3f} (steady)"),
        ("epochs (s)", ", ".join(f"{d:.2f}" for d in m["epoch_s"]) + "  (teacher's then student's; each first compiles)"),
        ("counted FLOPs", f"{m['flops_total']:.3e}  ({m['flops_total'] / m['seeds']:.3e} per seed)"),
        *_ceiling_rows(m, digits=1),
    ]
