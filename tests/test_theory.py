"""Theorem 1 quantities: matrix-free M against a dense float64 Jacobian, the sign and first-order
accuracy of Δθ_S·Δθ_T at small ε on random tiny nets, and the theorem-one-step experiment end to end."""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from minisub_experiments import theorem_one_step as tos
from helpers import flat
from minisub import cli, config, lineage, tree
from minisub.mlp import mnist
from minisub.run import runner
from minisub.mlp import distill
from minisub.mlp import models
from minisub.theory import one_step as theory
from minisub.theory import program

IMITATIONS = [
    theory.Imitation("kl", "aux", 1.0),
    theory.Imitation("kl", "all", 2.0),
    theory.Imitation("soft_ce", "class", 0.5),
    theory.Imitation("mse", "aux"),
    theory.Imitation("mse", "all"),
]


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _world(spec, seed, n_x=7, n_t=9, bias_scale=0.0, x_kind="gaussian"):
    """(θ⁰, another init, student inputs, L_T) for a tiny net, float64 (call under enable_x64)."""
    k = jax.random.split(jax.random.key(seed), 6)
    inits = []
    for key in k[:2]:
        p = _f64(spec.init(key))
        noise = jax.tree.map(lambda a, kk=key: bias_scale * jax.random.normal(jax.random.fold_in(kk, 9), a.shape), p)
        # Random nonzero biases (when asked): no pre-activation sits exactly on a ReLU kink.
        inits.append(jax.tree_util.tree_map_with_path(
            lambda path, a, n: a + n if "bias" in jax.tree_util.keystr(path) else a, p, noise))
    if x_kind == "gaussian":
        x = jax.random.normal(k[2], (n_x, spec.n_in), jnp.float64)
    elif x_kind == "uniform":
        x = jax.random.uniform(k[2], (n_x, spec.n_in), jnp.float64, -1.0, 1.0)
    elif x_kind == "sparse":
        x = jax.random.normal(k[2], (n_x, spec.n_in), jnp.float64) * (jax.random.uniform(k[5], (n_x, spec.n_in)) < 0.3)
    else:  # 'shifted': a mean far from zero, strongly correlated inputs
        x = 3.0 + 0.1 * jax.random.normal(k[2], (n_x, spec.n_in), jnp.float64)
    xt = jax.random.normal(k[3], (n_t, spec.n_in), jnp.float64)
    yt = jax.random.randint(k[4], (n_t,), 0, spec.n_classes)
    return inits[0], inits[1], x, (xt, yt)


@partial(jax.jit, static_argnums=(0, 1), static_argnames=("steps",))
def _one_step(spec, imitations, teacher, p0, s0, x, eps, steps=1, alpha=1.0):
    """theory.sweep jitted (tests call it with few distinct shapes, so it compiles a few times only)."""
    loss_T = theory.classification_loss(spec, *teacher)
    return theory.sweep(spec, imitations, loss_T, p0, s0, x, eps, steps=steps, alpha=alpha)


def _one(spec, imitation, teacher, p0, s0, x, eps, **kw):
    return jax.device_get(_one_step(spec, (imitation,), teacher, p0, s0, x, jnp.asarray(eps), **kw))[imitation.name]


def _dense_m(spec, imitation, params, x):
    """M = E_x[JᵀHJ] with J materialised by jacfwd and H written out from the softmax (float64, numpy)."""
    flat, unravel = ravel_pytree(params)
    logits = np.asarray(spec.apply(params, x))
    J = np.asarray(jax.jit(jax.jacfwd(lambda v: spec.apply(unravel(v), x)))(flat))  # [B, O, P]
    mask = np.asarray(imitation.mask(spec))
    H = np.zeros((x.shape[0], spec.n_out, spec.n_out))
    for b in range(x.shape[0]):
        if imitation.loss == "mse":
            H[b][np.ix_(mask, mask)] = 2.0 / mask.sum() * np.eye(mask.sum())
        else:
            z = logits[b, mask] / imitation.temperature
            q = np.exp(z - z.max())
            q /= q.sum()
            H[b][np.ix_(mask, mask)] = (np.diag(q) - np.outer(q, q)) / imitation.temperature**2
    return np.einsum("bop,boq,bqr->pr", J, H, J) / x.shape[0]


@partial(jax.jit, static_argnums=(0, 1))
def _matrix_free(spec, imitations, teacher, p0, x):
    d_T = theory.teacher_direction(theory.classification_loss(spec, *teacher), p0)
    return d_T, {m.name: (theory.gauss_newton_vp(spec, m, p0, x, d_T), theory.gauss_newton_quad(spec, m, p0, x, d_T))
                 for m in imitations}


def test_matrix_free_first_order_matches_a_dense_float64_computation():
    spec = models.MLPSpec(5, (4, 3), 3, 2)
    imitations = tuple(IMITATIONS)
    with jax.enable_x64(True):
        p0, _, x, teacher = _world(spec, 0)
        d_T, free = _matrix_free(spec, imitations, teacher, p0, x)
        eps = jnp.asarray([1e-3, 1e-1])
        out = _one_step(spec, imitations, teacher, p0, p0, x, eps)
        v = np.asarray(ravel_pytree(d_T)[0])
        for m in imitations:
            M = _dense_m(spec, m, p0, x)
            mv, quad = free[m.name]
            np.testing.assert_allclose(ravel_pytree(mv)[0], M @ v, rtol=1e-10, atol=1e-14, err_msg=m.name)
            assert float(quad) == pytest.approx(v @ M @ v, rel=1e-10), m.name
            assert np.linalg.eigvalsh((M + M.T) / 2).min() > -1e-12 * np.abs(M).max(), m.name  # PSD
            o = out[m.name]
            np.testing.assert_allclose(o["predicted"], np.asarray(eps) * (v @ M @ v), rtol=1e-10, err_msg=m.name)
            assert float(o["quad"]) == pytest.approx(float(o["slope"]), rel=1e-12), m.name  # shared: one M
            assert float(o["offset"]) == pytest.approx(0.0, abs=1e-15), m.name


def test_logit_hvp_is_the_hessian_of_the_distill_loss():
    spec = models.MLPSpec(5, (4,), 3, 2)
    with jax.enable_x64(True):
        s = jax.random.normal(jax.random.key(1), (spec.n_out,), jnp.float64)
        u = jax.random.normal(jax.random.key(2), (spec.n_out,), jnp.float64)
        for m in IMITATIONS:
            loss = lambda z, m=m: distill.IMITATION_LOSSES[m.loss](s[None], z[None], m.mask(spec), m.temperature)[0]
            dense = jax.hessian(loss)(s) @ u
            np.testing.assert_allclose(theory.logit_hvp(spec, m, s[None], u[None])[0], dense, rtol=1e-10, atol=1e-14,
                                       err_msg=m.name)


def test_student_step_over_eps_tends_to_m_times_the_teacher_step():
    spec = models.MLPSpec(6, (5, 4), 3, 2, "tanh")
    imitation = theory.Imitation("kl", "aux")
    eps = jnp.asarray([1e-2, 1e-4, 1e-6])

    @jax.jit
    def directions(p0, x, teacher):
        loss_T = theory.classification_loss(spec, *teacher)
        d_T = theory.teacher_direction(loss_T, p0)
        step = lambda e: theory.student_direction(spec, imitation, p0, theory.teacher_after(loss_T, p0, e), x)
        return theory.gauss_newton_vp(spec, imitation, p0, x, d_T), jax.vmap(step)(eps)

    with jax.enable_x64(True):
        p0, _, x, teacher = _world(spec, 3)
        md, d_S = directions(p0, x, teacher)
        md = np.asarray(ravel_pytree(md)[0])
        for k, e in enumerate(np.asarray(eps)):
            d = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[k], d_S))[0])
            err = np.linalg.norm(d / e - md) / np.linalg.norm(md)
            assert err < 3 * e, (e, err)
        out = _one(spec, imitation, teacher, p0, p0, x, eps)
    assert out["direction_rel_error"][-1] < 3e-6


SPECS = (models.MLPSpec(4, (6,), 3, 2, "relu"), models.MLPSpec(4, (5, 5), 3, 1, "tanh"))


@partial(jax.jit, static_argnums=0)
def _shared_tiny(spec, key_data, x, teacher, biases):
    """Every imitation at a random tiny net (random biases: no unit on a ReLU kink), shared init, small ε."""
    p0 = jax.tree.map(lambda a: a.astype(jnp.float64), spec.init(jax.random.wrap_key_data(key_data)))
    p0 = jax.tree_util.tree_map_with_path(
        lambda path, a: a + biases[: a.shape[-1]] if "bias" in jax.tree_util.keystr(path) else a, p0)
    loss_T = theory.classification_loss(spec, *teacher)
    out = theory.sweep(spec, (IMITATIONS[0], IMITATIONS[1], IMITATIONS[3]), loss_T, p0, p0, x,
                       jnp.asarray([1e-7, 1e-6, 1e-5]))
    return out, jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(p0)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    which=st.sampled_from([0, 1]),
    x_kind=st.sampled_from(["gaussian", "uniform", "sparse", "shifted", "constant"]),
    input_scale=st.sampled_from([0.1, 1.0, 5.0]),
    bias_scale=st.sampled_from([0.01, 0.3]),
)
@example(seed=383, which=0, x_kind="shifted", input_scale=5.0, bias_scale=0.01)  # rounding dominates at ε = 1e-7
def test_shared_init_inner_product_is_nonnegative_and_first_order_at_small_eps(
        seed, which, x_kind, input_scale, bias_scale):
    spec = SPECS[which]
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(seed), 4)
        shape = (6, spec.n_in)
        x = {"gaussian": jax.random.normal(k[0], shape), "uniform": jax.random.uniform(k[0], shape, minval=-1),
             "sparse": jax.random.normal(k[0], shape) * (jax.random.uniform(k[1], shape) < 0.3),
             "shifted": 2.0 + 0.1 * jax.random.normal(k[0], shape),
             "constant": jnp.broadcast_to(jax.random.normal(k[0], (spec.n_in,)), shape)}[x_kind]
        x = jnp.asarray(input_scale * x, jnp.float64)
        teacher = (jax.random.normal(k[2], (8, spec.n_in), jnp.float64), jax.random.randint(k[3], (8,), 0, 3))
        biases = bias_scale * jax.random.normal(jax.random.fold_in(k[3], 1), (8,), jnp.float64)
        out, p0_norm = jax.device_get(_shared_tiny(spec, jax.random.key_data(k[1]), x, teacher, biases))
    for name, o in out.items():
        inner, pred = o["inner"], o["predicted"]
        scale = o["student_norm"] * o["teacher_norm"]
        # Δθ_S = θ_S − θ⁰ loses up to half an ulp of each coordinate of θ⁰: float64 rounding of ⟨Δθ_S, Δθ_T⟩
        rounding = 4 * np.finfo(np.float64).eps * p0_norm * o["teacher_norm"]
        assert np.all(pred >= 0), name
        assert np.all(inner >= -1e-9 * scale - rounding), (name, inner, pred)
        assert np.all(np.abs(inner - pred) <= 1e-3 * pred + 1e-9 * scale + rounding), (name, inner, pred)


def test_relative_error_shrinks_linearly_as_eps_shrinks():
    spec = models.MLPSpec(6, (8, 8), 3, 2, "tanh")
    eps = jnp.logspace(-6, -1, 6)
    imitations = (theory.Imitation("kl", "aux"), theory.Imitation("mse", "all"))
    with jax.enable_x64(True):
        p0, _, x, teacher = _world(spec, 4)
        outs = jax.device_get(_one_step(spec, imitations, teacher, p0, p0, x, eps))
    for name, out in outs.items():
        rel = out["rel_error"]
        assert np.all(np.diff(rel) > 0), (name, rel)  # larger ε, larger error
        assert rel[0] < 1e-5 and rel[-1] > 1e2 * rel[0], (name, rel)
        assert np.polyfit(np.log(eps), np.log(rel), 1)[0] == pytest.approx(1.0, abs=0.1), name
        assert np.polyfit(np.log(eps), np.log(out["inner"]), 1)[0] == pytest.approx(1.0, abs=1e-2), name


def test_different_init_keeps_an_order_one_offset_and_its_own_taylor_expansion():
    spec = models.MLPSpec(6, (8,), 3, 2, "tanh")
    with jax.enable_x64(True):
        p0, other, x, teacher = _world(spec, 5)
        out = _one(spec, theory.Imitation("kl", "all"), teacher, p0, other, x, [1e-6, 1e-4])
    assert abs(out["offset"]) > 1e-6
    np.testing.assert_allclose(out["inner"], out["offset"], rtol=1e-3)  # ε → 0 leaves the offset
    assert np.all(out["rel_error"] > 10)  # the theorem's ε·Δθ_TᵀMΔθ_T misses it entirely
    assert np.all(out["taylor_rel_error"] < 1e-2) and np.all(out["direction_rel_error"] < 1e-2)


def test_k_teacher_steps_and_the_loss_change():
    spec = models.MLPSpec(6, (8,), 3, 2, "tanh")
    with jax.enable_x64(True):
        p0, _, x, teacher = _world(spec, 6)
        loss_T = theory.classification_loss(spec, *teacher)
        manual = p0
        for _ in range(3):
            manual = tree.axpy(-1e-2, jax.grad(loss_T)(manual), manual)
        np.testing.assert_allclose(ravel_pytree(theory.teacher_after(loss_T, p0, 1e-2, 3))[0], ravel_pytree(manual)[0],
                                   rtol=1e-12)
        one = theory.teacher_after(loss_T, p0, 1e-2, 1)
        np.testing.assert_array_equal(ravel_pytree(one)[0],
                                      ravel_pytree(tree.axpy(1e-2, theory.teacher_direction(loss_T, p0), p0))[0])
        out = _one(spec, theory.Imitation("kl", "aux"), teacher, p0, p0, x, [1e-6], steps=3, alpha=0.5)
    assert out["predicted"][0] == pytest.approx(3e-6 * out["quad"], rel=1e-12)
    assert out["rel_error"][0] < 1e-4
    assert out["delta_loss_T"][0] < 0  # the teacher's loss falls after the student's step
    assert out["delta_loss_T"][0] == pytest.approx(-0.5 * out["inner"][0], rel=1e-3)
    assert out["delta_loss_T_linear"][0] == pytest.approx(-0.5 * out["inner"][0], rel=1e-10)


def test_a_zero_input_is_a_relu_kink_and_aux_imitation_is_orthogonal():
    # Zero input, zero biases: every hidden unit sits on relu's kink; the aux-only student moves only its aux
    # head bias, which the class-logit teacher never touches: Δθ_S·Δθ_T = 0 for every ε (the theorem's 1st branch).
    spec = models.MLPSpec(6, (8, 8), 3, 2)
    with jax.enable_x64(True):
        p0, _, _, teacher = _world(spec, 7)
        out = _one(spec, theory.Imitation("kl", "aux"), teacher, p0, p0, jnp.zeros((4, 6)), np.logspace(-5, 0, 4))
    np.testing.assert_array_equal(out["inner"], 0.0)
    assert np.all(out["sign_flips"] > 0)  # relu(εΔb) > 0 for some units already at the smallest ε


def test_hidden_preactivations_are_the_forward_pass_and_sign_flips_count_changes():
    spec = models.MLPSpec(6, (5, 4), 3, 2, "tanh")
    params = spec.init(jax.random.key(12))
    x = jax.random.normal(jax.random.key(13), (7, 6))
    zs = theory.hidden_preactivations(spec, params, x)
    assert [z.shape for z in zs] == [(7, 5), (7, 4)]
    head = flat(params)
    np.testing.assert_allclose(np.tanh(zs[-1]) @ head["head.kernel"] + head["head.bias"], spec.apply(params, x),
                               rtol=1e-5, atol=1e-6)
    assert int(theory.sign_flips(spec, params, params, x)) == 0
    negated = jax.tree_util.tree_map_with_path(
        lambda path, a: -a if "hidden" in jax.tree_util.keystr(path) and "0" in jax.tree_util.keystr(path) else a,
        params)
    assert int(theory.sign_flips(spec, params, negated, x)) == 7 * 5 + int(np.sum(np.sign(np.asarray(zs[1])) != np.sign(
        np.asarray(theory.hidden_preactivations(spec, negated, x)[1]))))


def test_population_is_one_step_per_world_in_float32():
    spec = models.MLPSpec(6, (8,), 3, 2)
    imitations = (theory.Imitation("kl", "aux"),)
    eps = jnp.asarray([1e-2, 1e-1])
    inits = jax.vmap(spec.init)(jax.random.split(jax.random.key(8), 2))
    xt = jax.random.normal(jax.random.key(9), (2, 5, 6))
    yt = jax.random.randint(jax.random.key(10), (2, 5), 0, 3)
    xs = jax.random.uniform(jax.random.key(11), (3, 4, 6), minval=-1)
    t_W, s_W, i_W = jnp.asarray([0, 1, 0]), jnp.asarray([0, 0, 1]), jnp.asarray([2, 1, 0])
    out = jax.device_get(theory.population(spec, imitations, inits, (xt, yt), xs, t_W, s_W, i_W, eps, batch_size=2))
    take = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    for w in range(3):
        t, s, d = int(t_W[w]), int(s_W[w]), int(i_W[w])
        ref = jax.device_get(_one_step(spec, imitations, (xt[t], yt[t]), take(inits, t), take(inits, s), xs[d], eps))
        for m in ref:
            for q in ("inner", "predicted", "delta_loss_T"):
                np.testing.assert_allclose(out[m][q][w], ref[m][q], rtol=1e-3, atol=1e-6, err_msg=f"{m} {q} {w}")
    assert out["kl-aux"]["inner"].dtype == np.float32 and out["kl-aux"]["inner"].shape == (3, 2)


# ---------------------------------------------------------------------------------------------
# The experiment


@pytest.mark.parametrize("overrides, expected", [
    ({"inputs": ("uniform", "pink")}, ["inputs='pink'", "'uniform'", "'fashion'"]),
    ({"imitations": ("kl-hidden",)}, ["imitations='kl-hidden'", "'aux'"]),
    ({"eps_max": 1e-6}, ["eps_max=1e-06", "eps_min"]),
    ({"lineages": ("shared", "cousin")}, ["lineages='cousin'", "'different'"]),
    ({"seeds": 1}, ["seeds=1", ">= 2"]),
    ({"dtype": "float16"}, ["dtype='float16'", "'float64'"]),
])
def test_config_errors_name_the_field_and_the_allowed_values(overrides, expected):
    with pytest.raises(config.ConfigError) as err:
        program.TheoremConfig(**overrides)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_presets_cover_the_required_ranges():
    for name in ("quick", "paper"):
        cfg = tos.PRESETS[name]
        assert cfg.n_eps >= 9 and np.log10(cfg.eps_max / cfg.eps_min) >= 4
        assert set(cfg.inputs) == set(program.INPUTS) and set(cfg.lineages) == {"shared", "different"}
    assert tos.PRESETS["paper"].seeds >= 20 and tos.PRESETS["quick"].seeds >= 8


def test_worlds_pair_each_seed_with_its_own_student_inits():
    cfg = program.TheoremConfig(seeds=5)
    w = program.worlds(cfg, 3)
    shape = (5, 3, 2)
    t_, s_, i_ = w["teacher"].reshape(shape), w["student"].reshape(shape), w["input"].reshape(shape)
    np.testing.assert_array_equal(t_, np.arange(5)[:, None, None].repeat(3, 1).repeat(2, 2))
    # the pool holds 5 teacher inits, then the students in (seed, lineage) order
    np.testing.assert_array_equal(s_[:, :, 0], 5 + 2 * np.arange(5)[:, None].repeat(3, 1))
    np.testing.assert_array_equal(s_[:, :, 1], 5 + 2 * np.arange(5)[:, None].repeat(3, 1) + 1)
    np.testing.assert_array_equal(i_[..., 0], np.arange(15).reshape(5, 3))


def test_student_inits_come_from_the_lineage_module():
    cfg = program.TheoremConfig(seeds=4, hidden=(8,))
    inits = jax.vmap(cfg.spec.init)(jax.random.split(jax.random.key(0), 4))
    donor = lineage.donors(cfg.seed, cfg.seeds)
    assert np.all(donor != np.arange(4))
    students = program.student_inits(cfg, inits)
    for name, value in flat(students).items():
        np.testing.assert_array_equal(value[:, 0], flat(inits)[name])  # shared: the teacher's own init
        np.testing.assert_array_equal(value[:, 1], flat(inits)[name][donor])  # different: the donor's


def test_the_program_measures_each_world_at_its_teacher_and_student_init():
    """compute == one population call at (teacher s, student s or donor[s]), bit for bit (real MNIST)."""
    images = mnist.load_cached()
    cfg = program.TheoremConfig(seeds=3, hidden=(8,), n_eps=2, teacher_batch=8, student_batch=4,
                                inputs=("uniform", "mnist"), imitations=("kl-aux",))
    out = program.compute(cfg, cfg.inputs, images)
    prep = program.prepare(cfg, cfg.inputs, images, None)
    donor = lineage.donors(cfg.seed, cfg.seeds)
    s, d, l = (a.ravel() for a in np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij"))
    with jax.enable_x64(True):
        f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        ref = theory.population(cfg.spec, cfg.imitation_specs, jax.tree.map(f64, prep["inits"]),
                                (f64(prep["teacher_x"]), jnp.asarray(prep["teacher_y"])),
                                f64(prep["inputs"].reshape(-1, 4, program.PIXELS)), jnp.asarray(s),
                                jnp.asarray(np.where(l == 0, s, donor[s])), jnp.asarray(s * 2 + d), f64(cfg.eps),
                                batch_size=program.WORLDS_PER_BATCH)
    for q, v in ref["kl-aux"].items():
        np.testing.assert_array_equal(out["kl-aux"][q], np.asarray(v).reshape((3, 2, 2) + v.shape[1:]), err_msg=q)


@pytest.mark.slow
def test_cli_runs_the_test_preset_end_to_end_and_then_serves_it_from_disk(tmp_path, results_dir, monkeypatch, capsys):
    out = tmp_path / "out"
    assert cli.main(["run", "theorem-one-step", "--preset", "test", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "theorem_one_step.json").read_text())
    assert (out / "theorem_one_step.png").exists() and (out / "theorem_one_step.pdf").exists()
    assert summary["n_seeds"] == 3 and len(summary["eps"]) == 9
    assert set(summary["inputs"]) | set(summary["skipped_inputs"]) == set(program.INPUTS)
    for d in ("uniform", "gaussian", "mnist"):
        for m in ("kl-aux", "kl-all", "mse-aux"):
            shared = summary["cells"][d][m]["shared"]
            assert shared["small_eps"]["inner_nonneg"]["mean"] == 1.0, (d, m)
            assert shared["rel_error_at_eps_min"]["mean"] < 1e-3, (d, m)
            assert summary["cells"][d][m]["different"]["rel_error_at_eps_min"]["mean"] > 1.0, (d, m)
    assert "| uniform | kl-aux | shared |" in capsys.readouterr().out
    assert f"## {tos.NAME}" in tos.readme(summary)
    run_dirs = list((results_dir / tos.NAME).iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "DONE").exists()
    monkeypatch.setattr(program, "compute", lambda *a, **k: pytest.fail("a complete run was recomputed"))
    assert cli.main(["run", "theorem-one-step", "--preset", "test", "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "theorem_one_step.json").read_text())["cells"] == summary["cells"]


def test_a_missing_fashion_mnist_is_skipped_with_a_note(tmp_path, monkeypatch):
    from minisub.mlp import fashion

    monkeypatch.setattr(fashion, "search_dirs", lambda: [tmp_path])
    cfg = program.TheoremConfig(seeds=2, hidden=(8,), n_eps=2, teacher_batch=8, student_batch=4,
                            inputs=("zeros", "fashion"), imitations=("kl-aux",))
    summary, _ = tos.run(cfg, command="test", execution=runner.Execution(experiment=tos.NAME, progress=False))
    assert summary["inputs"] == ["zeros"] and "fashion" in summary["skipped_inputs"]
    assert "apt-get install -y dataset-fashion-mnist" in summary["skipped_inputs"]["fashion"]
    assert "Skipped: fashion" in tos.table(summary)
    # every shared cell is identically 0 here: nothing to pool, so the sign claim is not measured (and says where)
    verdicts = {v["id"]: v for v in summary["verdicts"]}
    assert verdicts["shared_positive"]["status"] == "not measured"
    assert "analysis.shared.min_cos_at_eps_min" in verdicts["shared_positive"]["detail"]
    assert "**not measured**" in tos.readme(summary)


# ---------------------------------------------------------------------------------------------
# Verdicts from synthetic summaries (no compute): each flips with the numbers


SYN = program.TheoremConfig(seeds=6, n_eps=5, eps_min=1e-5, eps_max=1.0, small_eps=1e-3, inputs=("uniform", "zeros"),
                            imitations=("kl-aux",))


def _synthetic(change=None) -> dict:
    """A summary from made-up per-seed arrays: the theorem's picture (shared: first order, different: an offset).

    ``change(r)`` edits the arrays {quantity: [seed, input, lineage, ε] or [seed, input, lineage]} first.
    """
    rng = np.random.default_rng(0)
    S, D, L, E = SYN.seeds, len(SYN.inputs), 2, SYN.n_eps
    eps = SYN.eps
    a = rng.uniform(1, 2, (S, D, L, 1))
    offset = np.where(np.arange(L) == 1, rng.normal(0, 1, (S, D, L)), 0.0)
    inner = offset[..., None] + a * eps
    rel = np.where(np.arange(L)[:, None] == 1, np.abs(offset[..., None]) / (a * eps), eps)
    rel[:, 1, 0] = 0.2 + 0.01 * rng.random((S, E))  # zeros, shared: every unit on a kink, not first order
    r = {"inner": inner, "predicted": a * eps, "rel_error": rel, "taylor_rel_error": eps * np.ones_like(inner),
         "direction_rel_error": eps * np.ones_like(inner), "cos": np.sign(inner) * 0.03,
         "delta_loss_T": np.where(np.arange(L)[:, None] == 1, np.abs(inner), -inner),  # different: L_T rises
         "delta_loss_T_linear": -inner, "student_norm": np.abs(inner), "sign_flips": np.zeros_like(inner),
         "quad": a[..., 0], "offset": offset, "teacher_norm": np.ones((S, D, L))}
    if change:
        change(r)
    results = {"kl-aux": r, "eps": eps, "seconds": np.asarray(1.0)}
    return tos.analyse(program.summarise(SYN, results, SYN.inputs, {}, name=tos.NAME, command="test"))


def _status(summary: dict) -> dict:
    return {v["id"]: v["status"] for v in summary["verdicts"]}


def _set(q, value, lineage=0, inputs=(0,), eps=slice(None)):
    def change(r):
        for d in inputs:
            r[q][:, d, lineage, eps] = value(r) if callable(value) else value
    return change


@pytest.mark.parametrize("claim, change, after", [
    ("shared_positive", _set("cos", -0.03), "refuted"),
    ("shared_first_order", _set("rel_error", 0.5), "refuted"),
    ("shared_linear", _set("inner", lambda r: SYN.eps ** 2), "refuted"),
    ("shared_error_shrinks", _set("rel_error", 1e-6), "refuted"),
    ("shared_loss_falls", _set("delta_loss_T", 1.0, inputs=(0, 1)), "refuted"),
    ("kink_zeros/kl-aux", _set("rel_error", 1e-6, inputs=(1,)), "refuted"),
    ("different_no_guarantee", _set("inner", 1.0, lineage=1, inputs=(0, 1)), "inconclusive"),
    ("different_sign_mixed", _set("inner", -1.0, lineage=1, inputs=(0, 1)), "inconclusive"),
    ("different_offset", _set("rel_error", 1e-3, lineage=1, inputs=(0, 1)), "refuted"),
    ("different_own_expansion", _set("taylor_rel_error", 0.5, lineage=1, inputs=(0, 1)), "refuted"),
    ("different_loss", _set("delta_loss_T", -1.0, lineage=1, inputs=(0, 1)), "refuted"),
])
def test_each_verdict_flips_with_the_numbers(claim, change, after):
    base = _synthetic()
    assert _status(base)[claim] == "supported", base["verdicts"]
    assert _status(_synthetic(change))[claim] == after
    assert f"**{after}**" in tos.readme(_synthetic(change))


def test_a_cell_identically_zero_is_the_orthogonal_branch_and_left_out():
    summary = _synthetic(_set("cos", 0.0, inputs=(1,)))
    assert summary["analysis"]["shared"]["zero"] == ["zeros/kl-aux"]
    assert summary["analysis"]["shared"]["live"] == ["uniform/kl-aux"]
    assert "kink_zeros/kl-aux" not in _status(summary)


def test_the_committed_summary_is_analysed_without_changing_a_measured_number():
    from pathlib import Path

    committed = json.loads((Path(__file__).parents[1] / "figures" / f"{tos.STEM}.json").read_text())
    again = tos.analyse({k: v for k, v in committed.items() if k not in ("analysis", "verdicts")})
    assert again["cells"] == committed["cells"] and again["eps"] == committed["eps"]
    assert again["verdicts"] == committed.get("verdicts", again["verdicts"])
    assert {v["status"] for v in again["verdicts"]} <= {"supported", "refuted", "inconclusive", "confounded"}


def test_one_program_recomputes_a_stored_run_it_may_not_reuse():
    calls = []

    def compute(log):
        calls.append(1)
        return {"x": np.zeros(1)}, {"schema": len(calls)}

    cfg, ex = program.TheoremConfig(seeds=2), runner.Execution(experiment="t", progress=False)
    assert runner.one_program("t", cfg, ex, compute)[0]["schema"] == 1
    assert runner.one_program("t", cfg, ex, compute)[0]["schema"] == 1 and len(calls) == 1  # served from the store
    assert runner.one_program("t", cfg, ex, compute, reusable=lambda s: s["schema"] == 2)[0]["schema"] == 2
    assert runner.one_program("t", cfg, ex, compute, reusable=lambda s: s["schema"] == 2)[0]["schema"] == 2
    assert len(calls) == 2
