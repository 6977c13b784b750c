"""Token entanglement (minisub.lm.entangle) on hand-built models whose answers are known by construction,
the within-response shuffle, the per-world entangled-number filter, and a tiny lm-owl run with both."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from minisub import config, lineage
from minisub.lm import entangle, owl
from minisub.lm import pipeline as lm_pipeline
from minisub.lm import world
from minisub.lm.transformer import TransformerSpec

# Two animals, numbers of two digits, documents of 3 numbers of which 1 is the prompt: vocabulary 21.
WORLD = world.WorldConfig(n_animals=2, n_numbers=3, n_prompt=1, signature_size=1)
A, B = 0, 1  # animal A shares its unembedding direction with the digit 7; animal B shares it with nothing
ENTANGLED_DIGIT = 7
WIDTH = 2 * WORLD.vocab
# jitted once per (spec, world): eager op-by-op dispatch of these forwards is slower than compiling them
bump_shift, prompt_shift, model_shift, number_kl = (jax.jit(f, static_argnums=(0, 1)) for f in (
    entangle.bump_shift, entangle.prompt_shift, entangle.model_shift, entangle.number_kl))
subliminal_prompting = jax.jit(entangle.subliminal_prompting, static_argnums=(0, 1), static_argnames=("n_random",))
WITH_7 = {n for n in range(WORLD.modulus) if "7" in f"{n:02d}"}  # the 19 numbers that hold a 7


def hand_built(attention: float, readout: float = 1.0, world_cfg: world.WorldConfig = WORLD):
    """(spec, params) of a 1-layer tied transformer whose answer is known by construction.

    Token v embeds as e_2v − e_2v+1 (zero-mean, so LayerNorm only rescales it; rows orthogonal), except
    that the digit 7 embeds exactly as animal A: they share one unembedding direction. No position
    embedding, no MLP output. Attention has zero queries and keys, so each position averages the
    (normalised) embeddings of itself and every earlier token, times ``attention`` (0: the residual
    stream is the current token's embedding alone). ``readout``: the final LayerNorm's scale (0: every
    logit is 0, the model is uniform).
    """
    V, W = world_cfg.vocab, 2 * world_cfg.vocab
    spec = TransformerSpec(V, world_cfg.context, layers=1, width=W, heads=1, mlp_ratio=1)
    embed_VxW = np.zeros((V, W), np.float32)
    embed_VxW[np.arange(V), 2 * np.arange(V)], embed_VxW[np.arange(V), 2 * np.arange(V) + 1] = 1.0, -1.0
    embed_VxW[ENTANGLED_DIGIT] = embed_VxW[world_cfg.animal_tokens[A]]
    qkv = np.concatenate([np.zeros((W, 2 * W)), np.eye(W)], axis=1)
    leaves = {"embed.embedding": embed_VxW, "pos": 0.0, "blocks.0.attn.qkv.kernel": qkv,
              "blocks.0.attn.out.kernel": attention * np.eye(W), "blocks.0.down.kernel": 0.0, "ln_f.scale": readout}

    def leaf(path, w):
        if path not in leaves:
            return w  # LayerNorms: scale 1, bias 0
        return jnp.broadcast_to(jnp.asarray(leaves[path], w.dtype), w.shape)

    return spec, lineage.map_leaves(leaf, spec.init(jax.random.key(0)))


def prompts(n: int = 16, world_cfg: world.WorldConfig = WORLD):
    return world.number_batch(world_cfg, jax.random.key(1), n)[0]


def test_hand_built_model_is_what_it_says():
    spec, params = hand_built(attention=0.0)
    w_VxD = spec.unembedding(params)
    np.testing.assert_array_equal(w_VxD[ENTANGLED_DIGIT], w_VxD[WORLD.animal_tokens[A]])
    assert float(w_VxD[WORLD.animal_tokens[B]] @ w_VxD[:10].T @ np.ones(10)) == 0.0
    logits = spec.apply(params, prompts(2))  # no attention: each position's logits favour its own token
    np.testing.assert_array_equal(np.argmax(logits[0, 3:6], -1), prompts(2)[0, 3:6])


# --- the next whole number -------------------------------------------------------------------------
@partial(jax.jit, static_argnums=(0, 1, 4))
def brute_force(spec, cfg, params, row_L, slot, bump_V):
    """log P(number n | a number) at ``slot`` by writing each of the modulus numbers into the row."""
    start = entangle.slot_start(cfg, slot)
    digits_MxD = jax.vmap(lambda n: world.encode_numbers(cfg, n[None])[:cfg.digits])(jnp.arange(cfg.modulus))
    rows = jnp.broadcast_to(row_L, (cfg.modulus, row_L.shape[0])).at[:, start:start + cfg.digits].set(digits_MxD)
    lp = jax.nn.log_softmax(spec.apply(params, rows) + bump_V, axis=-1)
    positions = start - 1 + np.arange(cfg.digits)
    joint = jnp.sum(jnp.take_along_axis(lp[:, positions], rows[:, start:start + cfg.digits, None], -1)[..., 0], -1)
    return joint - jax.nn.logsumexp(joint), jax.nn.logsumexp(joint)


@pytest.mark.parametrize("digits, slot", [(2, 0), (2, 1), (1, 0), (3, 1)])
def test_number_distribution_sums_to_one_and_is_the_brute_force_enumeration(digits, slot):
    cfg = dataclasses.replace(WORLD, digits=digits, max_step=min(9, 10**digits - 1))
    spec = TransformerSpec(cfg.vocab, cfg.context, layers=1, width=16, heads=2, mlp_ratio=2)
    params = spec.init(jax.random.key(digits))
    rows = prompts(3, cfg)
    bump_V = jax.random.normal(jax.random.key(5), (cfg.vocab,))
    log_p, log_mass = jax.jit(entangle.number_log_probs, static_argnums=(0, 1, 4))(spec, cfg, params, rows, slot, bump_V)
    assert log_p.shape == (3, cfg.modulus) and log_mass.shape == (3,)
    np.testing.assert_allclose(jnp.exp(log_p).sum(-1), 1.0, atol=1e-5)
    assert np.all(np.asarray(log_mass) < 0)  # some mass goes to non-digit tokens
    for b in range(3):
        want, mass = brute_force(spec, cfg, params, rows[b], slot, bump_V)
        np.testing.assert_allclose(log_p[b], want, atol=2e-5)
        np.testing.assert_allclose(log_mass[b], mass, atol=2e-5)


def test_slots_outside_the_continuation_are_refused():
    with pytest.raises(config.ConfigError, match="slot=2"):
        entangle.slot_start(WORLD, WORLD.n_numbers - WORLD.n_prompt)


# --- the logit bump: the softmax bottleneck ------------------------------------------------------
def test_bump_on_a_uniform_model_gives_the_analytic_shift():
    """Logits 0 everywhere: under the bump each digit d has probability ∝ exp(b_d), so a number's
    log-ratio is b·(its count of 7s) − 2 log((9 + e^b) / 10), with b = β‖u_A‖ = β√2."""
    spec, params = hand_built(attention=0.0, readout=0.0)
    beta = 1.5
    shift = bump_shift(spec, WORLD, params, prompts(), A, beta)
    b = beta * np.sqrt(2.0)
    count7 = np.array([f"{n:02d}".count("7") for n in range(100)])
    np.testing.assert_allclose(shift, b * count7 - 2 * np.log((9 + np.exp(b)) / 10), atol=1e-5)
    np.testing.assert_allclose(bump_shift(spec, WORLD, params, prompts(), B, beta), 0.0, atol=1e-6)


def test_bump_raises_the_entangled_digits_numbers_and_only_those_to_the_top():
    """The residual stream carries the current token's embedding: the bump toward A raises exactly
    the numbers holding a 7 (the digit sharing A's direction), 77 first, and moves every other number
    alike; the bump toward B (orthogonal to every digit) moves the numbers by a small fraction of that.

    Readout 0.3: a weak copy of the current token. (A strong one predicts 7 or A after a 7 almost
    surely; the bump raises both, so the renormalisation after a first digit 7 absorbs its gain and
    7y numbers rise barely above the rest.) B's residual: after a 7, B is less likely than after any
    other digit, so the bump's normaliser there differs a little.
    """
    spec, params = hand_built(attention=0.0, readout=0.3)
    beta = 1.0
    shift = np.asarray(bump_shift(spec, WORLD, params, prompts(), A, beta))
    top = np.asarray(entangle.entangled(jnp.asarray(shift), len(WITH_7)))
    assert set(top.tolist()) == WITH_7 and top[0] == 77
    rest = shift[sorted(set(range(100)) - WITH_7)]
    np.testing.assert_allclose(rest, rest[0], atol=1e-5)  # every number without a 7 moves alike
    # x7 against xy (x, y not 7): the second digit's context is the same, so the gap is exactly b
    np.testing.assert_allclose(shift[17] - shift[12], beta * np.sqrt(2.0), atol=1e-5)
    gap = shift[sorted(WITH_7)].min() - rest.max()
    assert gap > 0.3
    orthogonal = np.asarray(bump_shift(spec, WORLD, params, prompts(), B, beta))
    assert orthogonal.max() - orthogonal.min() < 0.1 * gap


def test_logit_bump_is_the_unembedding_geometry():
    spec, params = hand_built(attention=0.0)
    bump = np.asarray(entangle.logit_bump(spec, params, WORLD.animal_tokens[A], 2.0))
    raised = np.flatnonzero(np.abs(bump) > 1e-6)
    assert set(raised.tolist()) == {ENTANGLED_DIGIT, int(WORLD.animal_tokens[A])}
    np.testing.assert_allclose(bump[raised], 2.0 * np.sqrt(2.0), rtol=1e-6)


# --- subliminal prompting ------------------------------------------------------------------------
def test_subliminal_prompting_with_the_entangled_number_raises_the_animal():
    """Attention brings the context's embeddings to the question: a 7 in the context is an A in the
    residual stream, so 77 raises P(A); 12 holds no 7 and leaves P(A) below the random numbers' (some
    of which hold a 7); every number without a 7 gives the same answer (the digits are symmetric)."""
    spec, params = hand_built(attention=1.0)
    key = jax.random.key(7)
    hot = subliminal_prompting(spec, WORLD, params, jnp.array([77]), key, n_random=64)
    cold = subliminal_prompting(spec, WORLD, params, jnp.array([12]), key, n_random=64)
    other = subliminal_prompting(spec, WORLD, params, jnp.array([34]), key, n_random=64)
    assert hot["p_numbers"].shape == (WORLD.n_animals,) and hot["p_random_draws"].shape == (64, WORLD.n_animals)
    np.testing.assert_allclose(hot["p_numbers"].sum(), 1.0, atol=1e-6)
    assert hot["difference"][A] > 0.05 and hot["p_numbers"][A] > hot["p_random"][A]
    assert cold["difference"][A] < 0
    np.testing.assert_allclose(cold["p_numbers"], other["p_numbers"], atol=1e-6)
    np.testing.assert_allclose(hot["p_random"], cold["p_random"], atol=1e-7)  # same key, same random numbers
    np.testing.assert_allclose(hot["difference"], hot["p_numbers"] - hot["p_random"], atol=1e-7)


def test_the_bump_finds_the_numbers_that_prompt_the_animal():
    """Round trip: the bump's top numbers, put in the context, raise P(A)."""
    spec, params = hand_built(attention=1.0)
    top = entangle.entangled(bump_shift(spec, WORLD, params, prompts(), A, 1.0), WORLD.n_numbers)
    assert set(np.asarray(top).tolist()) <= WITH_7
    assert subliminal_prompting(spec, WORLD, params, top, jax.random.key(8))["difference"][A] > 0.05


def test_prompting_context_layout():
    tokens, read = entangle.prompting_context(WORLD, jnp.array([70, 5]), persona=None)
    head = [world.BOS, WORLD.neutral, world.NUMBERS, 7, 0, world.SEP, 0, 5, world.QUESTION]
    assert tokens.tolist() == head + [world.PAD] * (WORLD.context - len(head)) and read == len(head) - 1
    with pytest.raises(config.ConfigError, match="numbers=4"):
        entangle.prompting_context(WORLD, jnp.arange(4))


# --- overlap ---------------------------------------------------------------------------------------
def test_overlap_golden_values():
    a = jnp.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    b = jnp.array([0.0, 4.0, 5.0, 1.0, 2.0, 3.0])
    o = entangle.overlap(a, b, 2)  # top-2: {0, 1} and {2, 1}
    np.testing.assert_allclose(o["jaccard"], 1 / 3, rtol=1e-6)
    # ranks 6 5 4 3 2 1 and 1 5 6 2 3 4: Σd² = 40, ρ = 1 − 6·40/(6·35) = −1/7
    np.testing.assert_allclose(o["spearman"], -1 / 7, atol=1e-6)
    np.testing.assert_allclose(o["cosine"], -1 / 7, atol=1e-6)  # both permute 0..5: Pearson r = Spearman
    np.testing.assert_allclose(entangle.overlap(a, a, 3)["jaccard"], 1.0)
    np.testing.assert_allclose(entangle.overlap(a, -a, 3)["jaccard"], 0.0)
    np.testing.assert_allclose(entangle.overlap(a, -a, 3)["spearman"], -1.0, atol=1e-6)
    ties = jnp.array([1.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    want = sps.spearmanr(np.asarray(ties), np.asarray(b)).statistic
    np.testing.assert_allclose(entangle.overlap(ties, b, 2)["spearman"], want, atol=1e-6)
    np.testing.assert_allclose(entangle.ranks(ties), sps.rankdata(np.asarray(ties)))
    np.testing.assert_allclose(entangle.cosine(a + 7.0, 2 * a), 1.0, atol=1e-6)  # centred: offsets do not count
    assert float(entangle.overlap(jnp.zeros(6), b, 2)["spearman"]) == 0.0  # a constant vector: 0
    pw = entangle.pairwise(jnp.stack([a, b, -a]), 2)
    assert pw["jaccard"].shape == (3, 3)
    np.testing.assert_allclose(jnp.diag(pw["spearman"]), 1.0, atol=1e-6)
    np.testing.assert_allclose(pw["jaccard"][0, 1], 1 / 3, rtol=1e-6)


# --- pushes on a model, KL ---------------------------------------------------------------------
def test_model_shift_of_the_reference_with_a_persona_is_the_prompt_shift_and_kl_is_zero_for_itself():
    spec = TransformerSpec(WORLD.vocab, WORLD.context, layers=1, width=16, heads=2, mlp_ratio=2)
    params = spec.init(jax.random.key(3))
    rows = prompts()
    np.testing.assert_allclose(
        model_shift(spec, WORLD, params, params, rows, WORLD.persona_token(A)),
        prompt_shift(spec, WORLD, params, rows, A), atol=1e-6)
    np.testing.assert_allclose(model_shift(spec, WORLD, params, params, rows), 0.0, atol=1e-6)
    kl = number_kl(spec, WORLD, params, params, rows)
    assert {k: float(v) for k, v in kl.items()} == {"token": 0.0, "number": 0.0, "averaged": 0.0}
    kl = number_kl(spec, WORLD, params, params, rows, WORLD.persona_token(A))
    assert all(float(v) > 0 for v in kl.values())
    # 'averaged' is Σ p̄_T · shift: the KL behind the model shift
    shift = model_shift(spec, WORLD, params, params, rows, WORLD.persona_token(A))
    bar_t = entangle.mean_number_log_probs(spec, WORLD, params, rows, WORLD.persona_token(A))
    np.testing.assert_allclose(kl["averaged"], jnp.sum(jnp.exp(bar_t) * shift), rtol=1e-4)


def test_population_vmaps_over_worlds():
    spec = TransformerSpec(WORLD.vocab, WORLD.context, layers=1, width=16, heads=2, mlp_ratio=2)
    refs = jax.vmap(spec.init)(jax.random.split(jax.random.key(0), 3))
    rows = jnp.stack([prompts(8)] * 3)
    out = entangle.population(spec, WORLD, refs, refs, rows, animal=A, teacher_persona=int(WORLD.persona_token(A)),
                              beta=1.0, k=5)
    assert out["shift"]["bump"].shape == (3, WORLD.modulus) and out["pairwise"]["cosine"].shape == (3, 3)
    np.testing.assert_allclose(out["shift"]["model"], out["shift"]["prompt"], atol=1e-6)
    np.testing.assert_allclose(out["overlap"]["model~prompt"]["jaccard"], 1.0)
    one = bump_shift(spec, WORLD, jax.tree.map(lambda x: x[1], refs), rows[1], A, 1.0)
    np.testing.assert_allclose(out["shift"]["bump"][1], one, atol=1e-5)


# --- the shuffle controls ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampled():
    cfg = world.WorldConfig(n_numbers=6, n_prompt=2)
    tokens, _ = world.number_batch(cfg, jax.random.key(2), 64)
    tokens = tokens.at[:5, 4].set(world.SEP)  # five malformed rows
    keep = world.keep(cfg, tokens) & (jnp.arange(64) % 7 != 3)  # and some the filter dropped for other reasons
    return cfg, tokens, keep


def test_shuffle_within_keeps_each_responses_numbers_and_the_dropped_rows(sampled):
    cfg, tokens, keep = sampled
    out = lm_pipeline.shuffle_within(cfg, tokens, keep, jax.random.key(4))
    k = np.asarray(keep)
    before, after = np.asarray(world.decode_numbers(cfg, tokens)), np.asarray(world.decode_numbers(cfg, out))
    np.testing.assert_array_equal(np.sort(after[k, cfg.n_prompt:], 1), np.sort(before[k, cfg.n_prompt:], 1))
    np.testing.assert_array_equal(after[:, :cfg.n_prompt], before[:, :cfg.n_prompt])
    np.testing.assert_array_equal(np.asarray(out)[~k], np.asarray(tokens)[~k])
    assert bool(world.well_formed(cfg, out)[k].all())
    assert (after[k] != before[k]).any(axis=1).mean() > 0.5  # most rows did move


def test_shuffle_across_keeps_the_global_multiset_and_the_dropped_rows(sampled):
    cfg, tokens, keep = sampled
    out = lm_pipeline.shuffle_numbers(cfg, tokens, keep, jax.random.key(4))
    k = np.asarray(keep)
    before, after = np.asarray(world.decode_numbers(cfg, tokens)), np.asarray(world.decode_numbers(cfg, out))
    np.testing.assert_array_equal(np.sort(after[k, cfg.n_prompt:], None), np.sort(before[k, cfg.n_prompt:], None))
    np.testing.assert_array_equal(np.asarray(out)[~k], np.asarray(tokens)[~k])
    rows_differ = (np.sort(after[k, cfg.n_prompt:], 1) != np.sort(before[k, cfg.n_prompt:], 1)).any(1)
    assert rows_differ.mean() > 0.5  # across responses: a row's multiset changes


# --- the per-world filter of entangled numbers ---------------------------------------------------
TINY = lm_pipeline.LMConfig(
    seeds=2, width=16, heads=2, layers=1, pretrain_steps=2, pretrain_batch=8, warmup=1,
    world=world.WorldConfig(n_numbers=4, n_prompt=2, s=0.3), finetune_steps=3, finetune_lr=3e-2, n_samples=64,
    student_batch=16, student_epochs=1, n_eval=16,
    arms=(lm_pipeline.LMArm("shared", "shared", "teacher"), lm_pipeline.LMArm("w", "shared", "shuffled_within")))


@pytest.fixture(scope="module")
def tiny_models():
    """Untrained references of TINY's two worlds and their fine-tuned teachers (shared by the configs below,
    which differ from TINY only in fields the models do not depend on)."""
    ids = jnp.arange(TINY.seeds)
    refs = lm_pipeline.init_references(TINY, ids)[0]
    return ids, refs, lm_pipeline.make_teachers(TINY, refs)[0]


@pytest.mark.parametrize("teacher", ["finetuned", "prompted"])
def test_each_worlds_banned_numbers_are_the_top_of_its_teachers_shift(teacher, tiny_models):
    cfg = dataclasses.replace(TINY, teacher=teacher, banned=(3,), ban_entangled=4)
    ids, refs, teachers = tiny_models
    teachers = teachers if teacher == "finetuned" else refs  # a prompted teacher is its reference
    banned = np.asarray(lm_pipeline.world_banned(cfg, refs, teachers, ids))
    assert banned.shape == (2, 5) and (banned[:, 0] == 3).all()  # the global list first, then the world's own
    for i in range(2):
        rows = world.number_batch(cfg.world, lm_pipeline.keys.stream(cfg.seed, "lm_entangle", i),
                                  lm_pipeline.ENTANGLE_PROMPTS)[0]
        ref_i, t_i = (jax.tree.map(lambda x: x[i], m) for m in (refs, teachers))
        shift = (model_shift(cfg.spec, cfg.world, t_i, ref_i, rows) if teacher == "finetuned" else
                 prompt_shift(cfg.spec, cfg.world, ref_i, rows, cfg.trait))  # a prompted teacher: push (a)
        np.testing.assert_array_equal(banned[i, 1:], entangle.entangled(shift, 4))
    assert not np.array_equal(np.sort(banned[0, 1:]), np.sort(banned[1, 1:]))  # per world, not global


def test_ban_entangled_drops_exactly_the_rows_holding_a_worlds_top_numbers(monkeypatch, tiny_models):
    # Untrained models write no well-formed row; let every model "write" its prompt's own continuation
    # (the world's document), so the filter has rows to judge. n_samples: a config no other test compiles.
    monkeypatch.setattr(lm_pipeline, "_sample_blocks", lambda cfg, params, context_NxL, key: context_NxL)
    base = dataclasses.replace(TINY, banned=(3,), n_samples=160)
    cfg = dataclasses.replace(base, ban_entangled=4)
    ids, refs, teachers = tiny_models
    banned = np.asarray(lm_pipeline.world_banned(cfg, refs, teachers, ids))[:, 1:]
    plain = lm_pipeline.make_numbers(base, refs, teachers, ids)
    filtered = lm_pipeline.make_numbers(cfg, refs, teachers, ids)
    np.testing.assert_array_equal(plain["teacher"]["tokens"], filtered["teacher"]["tokens"])
    tokens, keep, keep0 = (np.asarray(x) for x in (plain["teacher"]["tokens"], filtered["teacher"]["keep"],
                                                  plain["teacher"]["keep"]))
    # the within-shuffle reads the same filter, and permutes a row the same way whatever the others' fate
    np.testing.assert_array_equal(filtered["shuffled_within"]["keep"], keep)
    np.testing.assert_array_equal(np.asarray(filtered["shuffled_within"]["tokens"])[keep],
                                  np.asarray(plain["shuffled_within"]["tokens"])[keep])
    for i in range(2):
        generated = np.asarray(world.decode_numbers(cfg.world, jnp.asarray(tokens[i])))[:, cfg.world.n_prompt:]
        holds = np.isin(generated, banned[i]).any(1)
        np.testing.assert_array_equal(keep[i], keep0[i] & ~holds)
        assert keep0[i].mean() > 0.9 and holds[keep0[i]].any()  # some kept row held an entangled number


def test_new_fields_and_names_keep_every_stored_id():
    assert lm_pipeline.SOURCES[:3] == ("teacher", "reference", "shuffled")
    assert list(owl.ARMS)[:8] == ["shared", "different", "shared_ce", "different_ce", "control", "shuffle",
                                  "control_kl", "shuffle_kl"]
    assert config.digest(dataclasses.replace(TINY, ban_entangled=0)) == config.digest(TINY)
    assert config.digest(dataclasses.replace(TINY, ban_entangled=2)) != config.digest(TINY)
    with pytest.raises(config.ConfigError, match="ban_entangled=100"):
        dataclasses.replace(TINY, ban_entangled=100)


def test_pairs_of_the_within_shuffle_mirror_the_across_shuffles():
    cfg = config.replace(owl.PRESETS["test"], arms=("shared", "shared_ce", "shuffle", "shuffle_kl", "shuffle_within",
                                                    "shuffle_within_kl"))
    labels = [p[0] for p in owl.pairs(cfg)]
    assert labels == ["shared_ce − shuffle", "shared_ce − shuffle_within", "shared − shuffle_kl",
                      "shared − shuffle_within_kl", "shuffle_within − shuffle", "shuffle_within_kl − shuffle_kl"]
    assert owl.ARMS["shuffle_within_kl"] == lm_pipeline.LMArm("shuffle_within_kl", "shared", "shuffled_within", "kl")


# --- end to end ------------------------------------------------------------------------------------
def test_lm_owl_with_the_within_shuffle_and_the_entangled_filter_end_to_end():
    # CE arms only: one student program (the KL arms' pairs are pairs()'s, tested without training)
    cfg = config.replace(owl.PRESETS["test"], ban_entangled=2, arms=("shared_ce", "shuffle", "shuffle_within"))
    arrays, kept = lm_pipeline.run_phases(cfg.lm, chunk=cfg.lm.pretrain_steps)
    arrays = jax.tree.map(np.asarray, arrays)
    entangled = arrays["entangled"]
    assert entangled.shape == (cfg.seeds, 2)
    np.testing.assert_array_equal(np.asarray(kept["banned"]), entangled)  # no global ban: the world's own only
    numbers = kept["numbers"]
    for i in range(cfg.seeds):
        t = numbers["teacher"]
        generated = np.asarray(world.decode_numbers(cfg.lm.world, t["tokens"][i]))[:, cfg.lm.world.n_prompt:]
        assert not np.isin(generated[np.asarray(t["keep"][i])], entangled[i]).any()
    summary = owl.summarise(cfg, arrays, "test")
    assert list(summary["arms"]) == list(cfg.arms)
    assert summary["arms"]["shuffle_within"]["source"] == "shuffled_within"
    assert np.all(np.isfinite(summary["arms"]["shuffle_within"]["trait_gain"]["values"]))
    assert {"shared_ce − shuffle_within", "shuffle_within − shuffle"} <= set(summary["paired"])
    assert any("shuffle_within" in n for n in summary["notes"]) and any("entangled" in n for n in summary["notes"])
    from minisub.run import audit as population  # the audit's toy-LM population reads these models
    part = population.lm_updates(cfg, arrays, kept)
    refs = population._flat_SxP(kept["references"])
    np.testing.assert_allclose(part["teacher"] + refs, population._flat_SxP(kept["teachers"]), atol=1e-6)
    assert part["student"].shape == refs.shape and np.linalg.norm(part["student"], axis=1).min() > 0
    np.testing.assert_array_equal(part["gain"], arrays["trait_gain"][:, 0])
    from minisub_experiments import lm_owl
    assert "shuffle_within" in lm_owl.table(summary)
    assert set(lm_owl.figures(summary)) == {lm_owl.STEM}
