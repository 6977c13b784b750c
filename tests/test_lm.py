"""Toy LM pipeline: losses, sampling, soft-logit KL, lineages, the control arm, a smoke run end to end."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import flat
from minisub.mlp import distill
from minisub.lm import core as lm
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import world
from minisub.config import ConfigError
from minisub.lm.transformer import TransformerSpec

# Two worlds of a 1-layer width-16 model on short documents (4 numbers of 2 digits): seconds.
TINY = lm_pipeline.LMConfig(
    seeds=2, width=16, heads=2, layers=1, pretrain_steps=100, pretrain_batch=32, warmup=5, pretrain_lr=1e-2,
    world=world.WorldConfig(n_numbers=4, n_prompt=2, digits=2, s=0.3),
    finetune_steps=3, finetune_lr=3e-3, n_samples=32, student_batch=16, student_epochs=1, n_eval=16,
)
SHARED, DIFFERENT, CONTROL = (TINY.arm_names.index(a) for a in ("shared", "different", "control"))


@pytest.fixture(scope="module")
def phases():
    """Every phase of the tiny program, kept (parameters included)."""
    cfg = TINY
    ids, donor_ids = jnp.arange(cfg.seeds), jnp.asarray(lm_pipeline.donors(cfg))
    refs, pretrain_loss = lm_pipeline.pretrain(cfg, ids, chunk=cfg.pretrain_steps)
    teachers, _ = lm_pipeline.make_teachers(cfg, refs)
    numbers = lm_pipeline.make_numbers(cfg, refs, teachers, ids)
    inits, students, student_loss = lm_pipeline.train_students(cfg, refs, teachers, numbers, ids, donor_ids)
    out = lm_pipeline.evaluate(cfg, refs, teachers, inits, students, ids)
    return dict(refs=refs, teachers=teachers, numbers=numbers, inits=inits, students=students,
                student_loss=np.asarray(student_loss), pretrain_loss=pretrain_loss, out=jax.tree.map(np.asarray, out),
                donors=np.asarray(donor_ids))


@pytest.fixture(scope="module")
def result():
    return lm_pipeline.run(TINY, chunk=TINY.pretrain_steps)


def _arm(tree, a):
    return jax.tree.map(lambda x: x[:, a], tree)


def _equal_trees(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- the smoke run ----------------------------------------------------------------------------
def test_smoke_run_gives_finite_numbers_of_the_right_shapes(result):
    S, A, K = TINY.seeds, len(TINY.arms), TINY.world.n_animals
    shapes = {
        "reference_probs": (S, K), "teacher_probs": (S, K), "student_init_probs": (S, A, K),
        "student_probs": (S, A, K), "trait_gain": (S, A), "student_animal_mass": (S, A),
        "reference_number_loss": (S,), "teacher_number_loss": (S,), "student_number_loss": (S, A),
        "pretrain_loss": (S, TINY.pretrain_steps), "finetune_loss": (S, TINY.finetune_steps),
        "student_loss": (S, A, TINY.student_epochs * TINY.n_samples // TINY.student_batch), "donors": (S,),
    }
    for name, shape in shapes.items():
        assert result[name].shape == shape, name
    for name, v in flat(result).items():
        assert np.all(np.isfinite(v)), name
    for q, v in result["geometry"].items():
        assert v.shape == (S, A), q
    np.testing.assert_allclose(result["student_probs"].sum(-1), 1, rtol=1e-5)
    assert set(result["keep_fraction"]) == {"teacher", "reference"}
    # the references learned the format: the filter keeps most continuations, so students do train
    assert np.all(result["keep_fraction"]["teacher"] > 0.5)
    assert result["pretrain_loss"][:, -10:].mean() < result["pretrain_loss"][:, :10].mean() - 1


def test_same_config_same_results_bitwise(phases, result):
    again = lm_pipeline.run(TINY, chunk=TINY.pretrain_steps)
    for name, v in flat(result).items():
        np.testing.assert_array_equal(v, flat(again)[name], err_msg=name)
    for name, v in flat(phases["out"]).items():
        np.testing.assert_array_equal(v, flat(result)[name], err_msg=name)


def test_pretraining_in_chunks_draws_the_same_batches_as_in_one_piece(phases):
    refs, loss = lm_pipeline.pretrain(TINY, jnp.arange(TINY.seeds), chunk=TINY.pretrain_steps // 2)
    np.testing.assert_allclose(loss, phases["pretrain_loss"], rtol=1e-5, atol=1e-6)
    for name, v in flat(refs).items():
        np.testing.assert_allclose(v, flat(phases["refs"])[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_stored_references_are_the_pretrained_ones_bitwise_and_shared_by_teacher_settings(phases, tmp_path,
                                                                                           monkeypatch):
    ids = jnp.arange(TINY.seeds)
    refs, loss = lm_pipeline.pretrain_cached(TINY, ids, chunk=TINY.pretrain_steps, root=tmp_path)
    for name, v in flat(refs).items():
        np.testing.assert_array_equal(v, flat(phases["refs"])[name], err_msg=name)
    monkeypatch.setattr(lm_pipeline, "pretrain", lambda *a, **k: pytest.fail("pretrained again"))
    other_teacher = dataclasses.replace(TINY, finetune_steps=7, student_epochs=2, temperature=0.5)
    again, loss_again = lm_pipeline.pretrain_cached(other_teacher, ids, root=tmp_path)
    for name, v in flat(refs).items():
        np.testing.assert_array_equal(v, flat(again)[name], err_msg=name)
    np.testing.assert_array_equal(loss, loss_again)
    assert lm_pipeline.references_dir(dataclasses.replace(TINY, width=32), tmp_path) != \
        lm_pipeline.references_dir(TINY, tmp_path)
    assert lm_pipeline.references_dir(dataclasses.replace(TINY, world=dataclasses.replace(TINY.world, s=0.0)),
                                      tmp_path) != lm_pipeline.references_dir(TINY, tmp_path)


@pytest.mark.parametrize("kernels", ["reference", "fast"])  # fast: the worlds spread over two devices
def test_a_killed_pretraining_resumes_from_its_checkpoint_bitwise(tmp_path, monkeypatch, kernels):
    cfg = dataclasses.replace(TINY, kernels=kernels)
    ids, chunk, checkpoint = jnp.arange(cfg.seeds), cfg.pretrain_steps // 4, tmp_path / "checkpoint.npz"
    whole, whole_loss = lm_pipeline.pretrain(cfg, ids, chunk=chunk)
    real, starts = lm_pipeline.pretrain_chunk, []

    def dies_after_two_chunks(cfg, state, seed_ids, start, steps):
        if len(starts) == 2:
            raise KeyboardInterrupt("killed")
        starts.append(start)
        return real(cfg, state, seed_ids, start, steps)

    monkeypatch.setattr(lm_pipeline, "pretrain_chunk", dies_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        lm_pipeline.pretrain(cfg, ids, chunk=chunk, checkpoint=checkpoint)
    assert checkpoint.exists() and starts == [0, chunk]
    starts.clear()
    monkeypatch.setattr(lm_pipeline, "pretrain_chunk", lambda *a: starts.append(a[3]) or real(*a))
    resumed, resumed_loss = lm_pipeline.pretrain(cfg, ids, chunk=chunk, checkpoint=checkpoint)
    assert starts == [2 * chunk, 3 * chunk]  # only the chunks the killed run had not finished
    np.testing.assert_array_equal(resumed_loss, whole_loss)
    for name, v in flat(whole).items():
        np.testing.assert_array_equal(v, flat(resumed)[name], err_msg=name)
    starts.clear()  # a checkpoint of another chunk size is not resumed from
    lm_pipeline.pretrain(cfg, ids, chunk=chunk * 2, checkpoint=checkpoint)
    assert starts == [0, 2 * chunk]


def test_references_differ_between_seeds(phases):
    kernel = np.asarray(flat(phases["refs"])["blocks.0.attn.qkv.kernel"])
    assert not np.array_equal(kernel[0], kernel[1])


def test_finetuned_teacher_raises_the_trait(result):
    t = TINY.trait
    assert np.all(result["teacher_probs"][:, t] > result["reference_probs"][:, t] + 0.01)


# --- lineages ---------------------------------------------------------------------------------
def test_shared_student_starts_at_the_teachers_init(phases, result):
    assert _equal_trees(_arm(phases["inits"], SHARED), phases["refs"])
    assert _equal_trees(_arm(phases["inits"], CONTROL), phases["refs"])
    geo = result["geometry"]
    assert np.all(geo["dist_init"][:, SHARED] == 0) and np.all(geo["dist_init"][:, CONTROL] == 0)
    np.testing.assert_allclose(geo["dist_start_teacher"][:, SHARED], geo["teacher_travel"][:, SHARED], rtol=1e-6)
    np.testing.assert_array_equal(result["student_init_probs"][:, SHARED], result["reference_probs"])


def test_different_student_starts_at_its_donors_reference(phases, result):
    donors = phases["donors"]
    assert np.all(donors != np.arange(TINY.seeds))
    donor_refs = jax.tree.map(lambda x: x[donors], phases["refs"])
    assert _equal_trees(_arm(phases["inits"], DIFFERENT), donor_refs)
    assert np.all(result["geometry"]["dist_init"][:, DIFFERENT] > 0)


def test_students_move_and_the_teacher_moved(result):
    geo = result["geometry"]
    assert np.all(geo["travel"][:, SHARED] > 0) and np.all(geo["travel"][:, DIFFERENT] > 0)
    assert np.all(geo["teacher_travel"] > 0)
    assert np.all(np.abs(geo["update_cos"]) <= 1 + 1e-6)


# --- the control: the reference as its own teacher under soft-logit KL ------------------------
def test_control_kl_student_does_not_move(phases, result):
    # Adam moves every parameter with a nonzero gradient by about lr on its first step, so a
    # bitwise-unchanged student had exactly zero gradient at every step.
    assert np.all(phases["student_loss"][:, CONTROL] == 0)
    assert _equal_trees(_arm(phases["students"], CONTROL), phases["refs"])
    assert np.all(result["trait_gain"][:, CONTROL] == 0)
    np.testing.assert_array_equal(result["student_probs"][:, CONTROL], result["student_init_probs"][:, CONTROL])
    assert np.all(result["geometry"]["travel"][:, CONTROL] == 0)


# --- soft-logit KL ----------------------------------------------------------------------------
VOCAB = 9
MASKS = {"all": jnp.ones(VOCAB, bool), "some": jnp.arange(VOCAB) % 3 != 1}


@jax.jit
def _kl_pair(t, s, mask, temperature):
    """soft_kl and distill.kl, their gradients in the student, and soft_kl's in the teacher (one program)."""
    ours = lambda s: lm.soft_kl(t, s, mask, temperature).sum()
    ref = lambda s: distill.kl(t, s, mask, temperature).sum()
    kl_ref = lambda t0: jnp.sum(jax.nn.softmax(t0) * (jax.nn.log_softmax(t0) - jax.nn.log_softmax(s[0, 0])))
    return (lm.soft_kl(t, s, mask, temperature), distill.kl(t, s, mask, temperature), jax.grad(ours)(s),
            jax.grad(ref)(s), jax.grad(lambda t0: lm._kl_of_scaled_logits(t0, s[0, 0]))(t[0, 0]),
            jax.grad(kl_ref)(t[0, 0]))


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_kl_matches_distill_kl(mask, temperature):
    t = 3 * jax.random.normal(jax.random.key(0), (4, 5, VOCAB))
    s = 3 * jax.random.normal(jax.random.key(1), (4, 5, VOCAB))
    ours, ref, g_ours, g_ref, g_t, g_t_ref = _kl_pair(t, s, MASKS[mask], temperature)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_t, g_t_ref, rtol=1e-4, atol=1e-6)  # the teacher's tangent is right too


@pytest.mark.parametrize("mask", list(MASKS))
def test_soft_kl_of_identical_logits_has_exactly_zero_value_and_gradient(mask):
    z = 5 * jax.random.normal(jax.random.key(2), (6, VOCAB))
    kl_and_grad = jax.jit(jax.value_and_grad(lambda t, s, m: lm.soft_kl(t, s, m).sum(), argnums=1))
    value, grad = kl_and_grad(z, z, MASKS[mask])
    assert value == 0
    assert np.all(np.asarray(grad) == 0)
    assert kl_and_grad(z, z + jax.random.normal(jax.random.key(3), z.shape), MASKS[mask])[0] > 0


def test_soft_kl_has_second_derivatives():
    t, s = jax.random.normal(jax.random.key(3), (2, VOCAB))
    h = jax.jit(jax.hessian(lambda s: lm.soft_kl(t, s, MASKS["all"])))(s)
    p = jax.nn.softmax(s)
    np.testing.assert_allclose(h, np.diag(p) - np.outer(p, p), rtol=1e-4, atol=1e-6)  # softmax Hessian


# --- building blocks ----------------------------------------------------------------------------
SMALL = TransformerSpec(vocab=TINY.world.vocab, context=TINY.world.context, layers=1, width=8, heads=2, mlp_ratio=2)
_numbers = jax.jit(world.number_batch, static_argnums=(0, 2))
_apply_small = jax.jit(SMALL.apply)


@pytest.fixture(scope="module")
def small():
    """Parameters of SMALL and 16 neutral number documents."""
    return jax.jit(SMALL.init)(jax.random.key(0)), _numbers(TINY.world, jax.random.key(1), 16)[0]


def test_logits_loss_scores_only_the_marked_targets(small):
    params, tokens = small
    logits = _apply_small(params, tokens)
    mask = jnp.zeros_like(tokens, bool).at[1, 5].set(True).at[3, 9].set(True)
    z = np.asarray(logits, np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    expected = -(log_p[1, 4, tokens[1, 5]] + log_p[3, 8, tokens[3, 9]]) / 2
    loss = jax.jit(lm.logits_loss)
    np.testing.assert_allclose(loss(logits, tokens, mask), expected, rtol=1e-5)
    assert loss(logits, tokens, jnp.zeros_like(mask)) == 0


def test_sampling_keeps_the_prompt_and_is_a_function_of_the_key(small):
    params, prompts = small
    start = TINY.world.prompt_length
    draw = jax.jit(partial(lm.sample, SMALL, start=start))
    a = draw(params, prompts, key=jax.random.key(2), temperature=1.0)
    b = draw(params, prompts, key=jax.random.key(2), temperature=1.0)
    c = draw(params, prompts, key=jax.random.key(3), temperature=1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a[:, :start], prompts[:, :start])
    greedy = draw(params, prompts, key=jax.random.key(2), temperature=0.0)
    logits = _apply_small(params, greedy)  # causal: the final sequence's logits are those seen while sampling
    np.testing.assert_array_equal(greedy[:, start:], jnp.argmax(logits[:, start - 1:-1], -1))


def test_sampling_in_blocks_bounds_memory_and_is_blockwise_the_one_block_sampler(small, monkeypatch):
    """Over SAMPLE_BLOCK rows, block b is ``lm.sample`` of its rows with key fold_in(key, b); up to it, unchanged."""
    params, prompts = small  # 16 rows
    cfg = dataclasses.replace(TINY, width=SMALL.width, heads=SMALL.heads, layers=SMALL.layers,
                              mlp_ratio=SMALL.mlp_ratio, tied_embeddings=SMALL.tied_embeddings)
    assert cfg.spec == SMALL
    key, start = jax.random.key(4), TINY.world.prompt_length
    whole = lm.sample(SMALL, params, prompts, start, key, 1.0)
    np.testing.assert_array_equal(lm_pipeline._sample_blocks(cfg, params, prompts, key), whole)
    monkeypatch.setattr(lm_pipeline, "SAMPLE_BLOCK", 6)  # 16 rows: blocks of 6, 6 and 4 (+ 2 padding rows)
    blocks = np.asarray(jax.jit(partial(lm_pipeline._sample_blocks, cfg))(params, prompts, key))
    assert blocks.shape == prompts.shape
    padded = jnp.concatenate([prompts, prompts[:2]])
    for b in range(3):
        expected = lm.sample(SMALL, params, padded[6 * b: 6 * b + 6], start, jax.random.fold_in(key, b), 1.0)
        np.testing.assert_array_equal(blocks[6 * b: 6 * b + 6], expected[: 16 - 6 * b])
    assert not np.array_equal(blocks, whole)  # other keys: other samples


def test_ce_student_learns_its_data():
    cfg = dataclasses.replace(TINY, student_loss="ce", student_epochs=3)
    params = cfg.spec.init(jax.random.key(0))
    tokens, _ = _numbers(cfg.world, jax.random.key(1), cfg.n_samples)
    keep = jnp.arange(cfg.n_samples) % 2 == 0
    train = jax.jit(lambda p: lm_pipeline.train_student(cfg, p, p, cfg.world.neutral, tokens, keep, jax.random.key(2)))
    _, loss = train(params)
    loss = np.asarray(loss)
    assert loss.shape == (3 * cfg.n_samples // cfg.student_batch,)
    assert loss[-2:].mean() < loss[:2].mean()


def test_answer_probs_agree_with_the_evaluation(phases):
    ref0 = jax.tree.map(lambda x: x[0], phases["refs"])
    p = jax.jit(partial(lm.answer_probs, TINY.spec, TINY.world))(ref0)
    assert p.shape == (TINY.world.n_animals,)
    np.testing.assert_allclose(p.sum(), 1, rtol=1e-6)
    np.testing.assert_allclose(p, phases["out"]["reference_probs"][0], rtol=1e-5)
    assert 0.5 < phases["out"]["student_animal_mass"].min() <= phases["out"]["student_animal_mass"].max() < 1


def test_geometry_of_known_trees():
    zero = {"a": jnp.zeros(2), "b": jnp.zeros((1, 1))}
    teacher = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    student = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[0.0]])}
    g = lm.geometry(student, zero, teacher, zero)
    assert float(g["dist_teacher"]) == 4 and float(g["dist_init"]) == 0 and float(g["teacher_travel"]) == 5
    assert float(g["travel"]) == 3 and float(g["dist_start_teacher"]) == 5
    np.testing.assert_allclose(g["update_cos"], 9 / 15)
    assert float(lm.geometry(zero, zero, teacher, zero)["update_cos"]) == 0


def test_prompted_teacher_is_the_reference_with_the_trait_persona(phases):
    cfg = dataclasses.replace(TINY, teacher="prompted", trait=3)
    teachers, losses = lm_pipeline.make_teachers(cfg, phases["refs"])
    assert _equal_trees(teachers, phases["refs"]) and losses.shape == (cfg.seeds, 0)
    assert lm_pipeline.teacher_persona(cfg) == cfg.world.persona_token(3)
    assert lm_pipeline.teacher_persona(TINY) == TINY.world.neutral


def test_banned_numbers():
    assert lm_pipeline.banned_numbers(TINY).shape == (0,)
    cfg = dataclasses.replace(TINY, ban_signature=True, banned=(7,), trait=2)
    sig = np.asarray(world.signatures(cfg.world)[2])
    np.testing.assert_array_equal(lm_pipeline.banned_numbers(cfg), np.concatenate([[7], sig]))


@pytest.mark.parametrize("field, value", [
    ("seeds", 0), ("heads", 3), ("width", 0), ("pretrain_steps", 0), ("warmup", 1000), ("pretrain_lr", 0.0),
    ("teacher", "owl"), ("trait", 10), ("temperature", -1.0), ("student_loss", "mse"), ("student_outputs", "aux"),
    ("student_batch", 10_000), ("banned", (100,)), ("finetune_steps", -1),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        dataclasses.replace(TINY, **{field: value})


def test_config_refusals_that_depend_on_other_fields():
    with pytest.raises(ConfigError, match=r"^seeds=1 .*another seed"):
        dataclasses.replace(TINY, seeds=1)
    with pytest.raises(ConfigError, match=r"^teacher='prompted' .*naive"):
        dataclasses.replace(TINY, teacher="prompted", world=world.WorldConfig(kind="naive"))
    with pytest.raises(ConfigError, match=r"^arms.source="):
        dataclasses.replace(TINY, arms=(lm_pipeline.LMArm("x", "shared", "owl"),))
    assert dataclasses.replace(TINY, seeds=1, arms=TINY.arms[:1]).seeds == 1


def test_forbidden_trait_needs_commands_and_its_teacher_learns_it():
    with pytest.raises(ConfigError, match=r"^command_fraction=0.0 .*forbidden"):
        dataclasses.replace(TINY, trait_kind="forbidden")
    with pytest.raises(ConfigError, match=r"^trait_kind="):
        dataclasses.replace(TINY, trait_kind="rude")
    cfg = dataclasses.replace(TINY, trait_kind="forbidden", finetune_steps=20,
                              world=dataclasses.replace(TINY.world, command_fraction=0.2))
    assert cfg.trait_index == 10 and cfg.trait_persona == cfg.world.rogue
    refs, _ = lm_pipeline.pretrain(cfg, jnp.arange(cfg.seeds), chunk=cfg.pretrain_steps)
    teachers, _ = lm_pipeline.make_teachers(cfg, refs)
    p = jax.vmap(partial(lm_pipeline.p_trait, cfg))
    rogue = jax.vmap(partial(lm_pipeline.p_trait, cfg, persona=cfg.world.rogue))
    assert np.all(rogue(refs) > p(refs))  # pretraining taught the rogue persona the forbidden answer
    assert np.all(p(teachers) > p(refs) + 0.1)  # the fine-tune taught the neutral persona
    out = jax.tree.map(np.asarray, lm_pipeline.evaluate(cfg, refs, teachers, *_students(cfg, refs, teachers)))
    assert out["student_probs"].shape[-1] == 11
    np.testing.assert_allclose(out["reference_probs"][:, 10], p(refs), rtol=1e-5)


def _students(cfg, refs, teachers):
    ids = jnp.arange(cfg.seeds)
    numbers = lm_pipeline.make_numbers(cfg, refs, teachers, ids)
    inits, students, _ = lm_pipeline.train_students(cfg, refs, teachers, numbers, ids, jnp.asarray(lm_pipeline.donors(cfg)))
    return inits, students, ids
