"""The toy LM's fast paths against plain reference implementations on a tiny config.

The key/value-cache sampler against the full-forward sampler and a Python loop of full forwards;
the scanned training loop against a Python loop of single steps; the 'fast' kernels against the
reference ones (values, gradients, linearisation, a whole run); the per-phase benchmark's FLOP
counts against the parameter tree, and its report end to end (no timing asserted).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub import config as config_lib
from minisub.lm import core as lm
from minisub.lm import diagnostic as lm_diagnostic
from minisub.lm import transformer
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import world
from minisub.lm.transformer import TransformerSpec
from minisub.run import bench, bench_lm
from minisub_experiments import lm_owl

WORLD = world.WorldConfig(n_numbers=4, n_prompt=2, digits=2, s=0.3)
TINY = lm_pipeline.LMConfig(
    seeds=2, width=16, heads=2, layers=2, pretrain_steps=20, pretrain_batch=8, warmup=2, world=WORLD,
    finetune_steps=2, n_samples=16, student_batch=8, student_epochs=1, n_eval=8,
)


def _params(spec: TransformerSpec, seed: int = 0):
    """Random parameters with logits far from uniform (a fresh init's are nearly flat)."""
    params = spec.init(jax.random.key(seed))
    return jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(seed + 1), x.shape), params)


def _prompts(n: int = 24):
    return world.number_batch(WORLD, jax.random.key(5), n)[0]


def _loop_sampler(spec, params, prompts_BxL, start, key, temperature):
    """The plain reference: a Python loop, one full forward of the whole sequence per generated token."""
    tokens = prompts_BxL
    forward = jax.jit(spec.apply)
    for t in range(start, prompts_BxL.shape[1]):
        logits_BxV = forward(params, tokens)[:, t - 1]
        new_B = lm._draw(logits_BxV, key, t, temperature)
        tokens = tokens.at[:, t].set(new_B.astype(tokens.dtype))
    return tokens


@pytest.mark.parametrize("tied", [True, False])
def test_decoding_with_a_cache_gives_the_full_forwards_logits(tied):
    spec = dataclasses.replace(TINY.spec, tied_embeddings=tied)
    params, tokens = _params(spec), _prompts()
    full = spec.apply(params, tokens)
    L, caches, start = tokens.shape[1], spec.empty_cache(tokens.shape[0]), 5
    prefill, caches = spec.decode(params, tokens[:, :start], caches, 0)  # several positions at once
    np.testing.assert_allclose(prefill, full[:, :start], atol=1e-5)
    for t in range(start, L):  # then one at a time, as the sampler does
        logits, caches = spec.decode(params, tokens[:, t:t + 1], caches, t)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_sampler_draws_the_tokens_of_the_plain_samplers(temperature):
    spec, start = TINY.spec, WORLD.prompt_length
    params, prompts, key = _params(spec), _prompts(), jax.random.key(7)
    cached = jax.jit(partial(lm.sample_cached, spec, start=start))(params, prompts, key=key, temperature=temperature)
    full = jax.jit(partial(lm.sample, spec, start=start))(params, prompts, key=key, temperature=temperature)
    loop = _loop_sampler(spec, params, prompts, start, key, temperature)
    np.testing.assert_array_equal(full, loop)  # the scan against the loop
    np.testing.assert_array_equal(cached, full)  # the cache against the full forwards (on this config, exactly)
    np.testing.assert_array_equal(cached[:, :start], prompts[:, :start])
    assert not np.array_equal(cached[:, start:], prompts[:, start:])


def test_sampler_is_a_late_field_and_the_pipeline_uses_it():
    cached = dataclasses.replace(TINY, sampler="cache")
    assert "sampler" not in config_lib.to_dict(TINY)  # default: every stored run id unchanged
    assert config_lib.digest(cached) != config_lib.digest(TINY)
    assert lm_pipeline.PretrainKey.of(cached) == lm_pipeline.PretrainKey.of(TINY)  # the same references
    params, prompts, key = _params(TINY.spec), _prompts(16), jax.random.key(3)
    got = lm_pipeline._sample_blocks(cached, params, prompts, key)
    np.testing.assert_array_equal(got, lm.sample_cached(TINY.spec, params, prompts, WORLD.prompt_length, key, 1.0))
    with pytest.raises(config_lib.ConfigError, match="sampler"):
        dataclasses.replace(TINY, sampler="beam")


def test_scanned_training_is_a_python_loop_of_single_steps():
    cfg, spec = TINY, TINY.spec
    opt = lm.pretrain_optimizer(cfg.pretrain_lr, cfg.pretrain_steps, cfg.warmup)
    batch_fn = partial(world.pretraining_batch, cfg.world, batch=cfg.pretrain_batch)
    params, key = spec.init(jax.random.key(0)), jax.random.key(1)
    fit = jax.jit(partial(lm.fit, spec, opt, batch_fn), static_argnums=3)
    (scanned, _), loss = fit((params, opt.init(params)), key, 0, 6)
    carry, losses = (params, opt.init(params)), []
    for t in range(6):
        carry, l = fit(carry, key, t, 1)
        losses.append(l[0])
    np.testing.assert_allclose(np.asarray(losses), loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(carry[0]), jax.tree.leaves(scanned)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# --- the 'fast' kernels -----------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [transformer.dense, transformer.dense_jvp])
@pytest.mark.parametrize("shape", [(3, 5, 8, 32), (3, 5, 32, 8)])  # x narrower / wider than the output
def test_dense_is_a_matmul_with_its_gradient(dense, shape):
    *lead, d, f = shape
    x = jax.random.normal(jax.random.key(0), (*lead, d))
    w = jax.random.normal(jax.random.key(1), (d, f))
    ct = jax.random.normal(jax.random.key(2), (*lead, f))
    np.testing.assert_array_equal(dense(x, w), x @ w)  # the forward is the reference's product
    got = jax.vjp(dense, x, w)[1](ct)
    want = jax.vjp(jnp.matmul, x, w)[1](ct)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_the_forward_mode_kernel_linearises_and_transposes():
    x = jax.random.normal(jax.random.key(0), (6, 4, 8))
    w, v = (jax.random.normal(jax.random.key(k), (8, 12)) for k in (1, 2))
    f = lambda w: jnp.tanh(transformer.dense_jvp(x, w))
    g = lambda w: jnp.tanh(x @ w)
    (y, jv), (y0, jv0) = jax.jvp(f, (w,), (v,)), jax.jvp(g, (w,), (v,))
    np.testing.assert_allclose(jv, jv0, rtol=1e-5, atol=1e-6)
    lin = jax.linearize(f, w)[1]
    u = jax.random.normal(jax.random.key(3), y.shape)
    np.testing.assert_allclose(jax.linear_transpose(lin, w)(u)[0], jax.vjp(g, w)[1](u)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):  # the reverse-mode kernel has no JVP: why forward_mode exists
        jax.jvp(lambda w: transformer.dense(x, w), (w,), (v,))


def test_fast_kernels_compute_the_reference_model():
    fast = dataclasses.replace(TINY.spec, kernels="fast")
    assert fast.forward_mode.kernels == "fast_jvp" and TINY.spec.forward_mode == TINY.spec
    params, tokens = _params(TINY.spec), _prompts(8)
    mask = jnp.ones_like(tokens)
    for spec in (fast, fast.forward_mode):
        np.testing.assert_allclose(spec.apply(params, tokens), TINY.spec.apply(params, tokens), rtol=1e-6, atol=1e-6)
        loss = lambda s: jax.grad(lm.next_token_loss, argnums=1)(s, params, tokens, mask)
        for a, b in zip(jax.tree.leaves(loss(spec)), jax.tree.leaves(loss(TINY.spec))):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_kernels_is_a_late_field_with_references_of_its_own():
    fast = dataclasses.replace(TINY, kernels="fast")
    assert "kernels" not in config_lib.to_dict(TINY)  # default: every stored run id unchanged
    assert config_lib.digest(fast) != config_lib.digest(TINY)
    assert lm_pipeline.PretrainKey.of(TINY) == lm_pipeline.PretrainKey(
        tuple((f, getattr(TINY, f)) for f in lm_pipeline.PRETRAIN_FIELDS))  # stored references keep their ids
    assert lm_pipeline.PretrainKey.of(fast) != lm_pipeline.PretrainKey.of(TINY)
    with pytest.raises(config_lib.ConfigError, match="kernels must be one of 'reference', 'fast'"):
        dataclasses.replace(TINY, kernels="fast_jvp")  # the forward-mode form is internal


def test_a_fast_run_spreads_its_worlds_and_matches_the_reference_run():
    cfg = dataclasses.replace(TINY, seeds=4)
    fast = dataclasses.replace(cfg, kernels="fast")
    assert jax.local_device_count() >= 2  # conftest: 4 simulated CPU devices
    spread = lm_pipeline.spread(fast, jnp.arange(4))
    assert len(spread.sharding.device_set) == min(4, jax.local_device_count())
    assert lm_pipeline.spread(cfg, jnp.arange(4)) is not spread  # the reference keeps one device
    assert len(lm_pipeline.spread(cfg, jnp.arange(4)).sharding.device_set) == 1
    assert len(lm_pipeline.spread(fast, jnp.arange(3)).sharding.device_set) == 3  # the most that divide
    ref, got = lm_pipeline.run(cfg), lm_pipeline.run(fast)
    # 20 pretraining steps amplify last-bit differences only a little: the same worlds, the same results
    np.testing.assert_allclose(got["pretrain_loss"], ref["pretrain_loss"], rtol=1e-4)
    np.testing.assert_allclose(got["student_loss"], ref["student_loss"], rtol=1e-3, atol=1e-5)
    for key in ("reference_probs", "teacher_probs", "student_probs", "student_number_loss"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-3, atol=1e-5)


def test_the_fast_diagnostic_solves_the_same_systems():
    cfg = dataclasses.replace(TINY, kernels="fast")
    params = [_params(TINY.spec, s) for s in (0, 2)]
    tokens = _prompts(6)
    weight = jnp.ones(tokens.shape[0])
    run = lambda spec: lm_diagnostic.diagnose(spec, WORLD, params[0], params[1], tokens, weight, 0, iters=32)
    got, want = run(cfg.spec), run(TINY.spec)
    for key in ("trait_fraction", "teacher_gain_linear", "update_norm"):  # no CG on the number logits
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
    # The number-logit CG is ill-conditioned: in float32 its iterates follow the rounding (a 1e-7
    # relative change of the parameters moves this config's residual from 0.42 to 0.29), so only
    # its monotone lower bound is compared, at the precision the CG itself has.
    np.testing.assert_allclose(got["number_fraction"], want["number_fraction"], rtol=0.05)


# --- the benchmark's counts ----------------------------------------------------------------------
def test_phase_flops_follow_the_models_count():
    cfg = dataclasses.replace(TINY, arms=lm_owl.PRESETS["test"].lm.arms)  # KL and CE arms
    fpt, L, G = cfg.spec.flops_per_token(), WORLD.context, WORLD.context - WORLD.prompt_length
    assert bench_lm.sampling_flops(cfg, 10) == 10 * G * L * fpt  # a full forward per generated token
    assert bench_lm.sampling_flops(dataclasses.replace(cfg, sampler="cache"), 10) == 10 * L * fpt
    steps = cfg.student_epochs * -(-cfg.n_samples // cfg.student_batch)
    per_forward = cfg.seeds * steps * cfg.student_batch * L * fpt
    kl, ce = (next(a for a in cfg.arms if cfg.arm_loss(a) == x) for x in ("kl", "ce"))
    assert bench_lm.student_flops(cfg, kl) == 4 * per_forward  # 3x forward + the teacher's forward
    assert bench_lm.student_flops(cfg, ce) == 3 * per_forward
    assert bench_lm.eval_flops(cfg) == cfg.seeds * (2 + 2 * len(cfg.arms)) * (cfg.n_eval + 2) * L * fpt


def test_bench_reports_every_phase_of_a_run(capsys, monkeypatch):
    real = bench.matmul_rate
    monkeypatch.setattr(bench, "matmul_rate", lambda: real(256, 2))  # the ceiling's shape is not under test
    cfg = config_lib.replace(lm_owl.PRESETS["test"], seeds=2, diagnostic=True, detect=True, diagnostic_iters=4,
                             sampler="cache")
    out = bench_lm.report(cfg, steps=2, per_arm=False, memory=False)
    text = capsys.readouterr().out
    names = [p["name"] for p in out["phases"]]
    for phase in ("pretraining", "teacher fine-tune", "sampling (cache)", "filtering", "evaluation",
                  "diagnostic CG (4 steps)", "detection: n-gram (300 steps)"):
        assert phase in names
        assert phase in text
    assert any(n.startswith("students, all") for n in names)
    assert any(n.startswith("detection: transformer") for n in names)
    assert "EXTRAPOLATION" in text and "% of matmul" in text


def test_bench_against_times_both_configs_side_by_side(capsys, monkeypatch):
    real = bench.matmul_rate
    monkeypatch.setattr(bench, "matmul_rate", lambda: real(256, 2))
    base = config_lib.replace(lm_owl.PRESETS["test"], seeds=2)
    fast = config_lib.replace(base, kernels="fast", sampler="cache")
    out = bench_lm.report_against(fast, base, steps=2, per_arm=False)
    text = capsys.readouterr().out
    assert [p["name"] for p in out["baseline"]][:3] == ["pretraining", "teacher fine-tune", "sampling (full)"]
    assert "sampling (cache) / sampling (full)" in text
    assert "kernels=reference, sampler=full" in text  # the baseline named by how it differs
    pre = bench.report_lm_against(fast.lm_config, base.lm_config, steps=2, repeats=1)
    assert pre["speedup"] == pre["baseline"]["step_s"] / pre["config"]["step_s"]


def test_bench_against_refuses_a_malformed_baseline_before_compute(capsys):
    from minisub import cli

    assert cli.main(["bench", "lm-owl", "--preset", "test", "--against", "kernels"]) == 2
    assert "against must be FIELD=VALUE" in capsys.readouterr().err
    assert cli.main(["bench", "lm-owl", "--preset", "test", "--against", "kernels=fastest"]) == 2
    assert "kernels must be one of 'reference', 'fast'" in capsys.readouterr().err


def test_every_experiment_built_on_lm_owl_passes_its_kernels_on():
    from minisub_experiments import audit, lm_cross, lm_lineages, lm_prompted, lm_regime

    for module in (lm_regime, lm_prompted, lm_lineages, lm_cross, audit):
        assert "kernels" not in config_lib.to_dict(module.PRESETS["test"])  # stored run ids unchanged
    regime = dataclasses.replace(lm_regime.PRESETS["test"], kernels="fast")
    assert regime.owl("base").lm.kernels == "fast" and "--kernels fast" in regime.command("base")
    assert "--kernels" not in lm_regime.PRESETS["test"].command("base")
    prompted = dataclasses.replace(lm_prompted.PRESETS["test"], kernels="fast")
    assert prompted.owl(prompted.settings[0]).lm.kernels == "fast" and prompted.design(prompted.designs[0]).kernels == "fast"
    assert dataclasses.replace(lm_lineages.PRESETS["test"], kernels="fast").lm().kernels == "fast"
    assert all(c.lm.kernels == "fast" for c in dataclasses.replace(lm_cross.PRESETS["test"], kernels="fast").owls)
    assert config_lib.replace(audit.PRESETS["test"], lm_teachers=3, kernels="fast").lm().lm.kernels == "fast"
    with pytest.raises(config_lib.ConfigError, match="kernels must be 'reference' unless lm_teachers > 0"):
        config_lib.replace(audit.PRESETS["test"], kernels="fast")
    with pytest.raises(config_lib.ConfigError, match="kernels"):
        dataclasses.replace(lm_regime.PRESETS["test"], kernels="fastest")
