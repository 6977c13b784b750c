"""Item 6's diagnostic: the CG row-space projection against closed forms, and its transformer outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minisub.lm import diagnostic as lm_diagnostic
from minisub.lm import world
from minisub.lm.transformer import TransformerSpec


# --- a linear-in-parameters toy: f(θ) = A θ_a + B θ_b, whose row space is that of [A B] -----------
def _toy(key, m=6, n_a=10, n_b=14):
    k = jax.random.split(key, 3)
    A, B = jax.random.normal(k[0], (m, n_a)), jax.random.normal(k[1], (m, n_b))
    x = jax.random.normal(k[2], (n_a + n_b,))
    return A, B, x


def _tree(x, n_a):
    return {"a": x[:n_a], "b": x[n_a:]}


def _fraction(A, B, x, iters=12):
    """(fraction, residual) of x through f(θ) = A θ_a + B θ_b."""
    f = lambda p: A @ p["a"] + B @ p["b"]  # noqa: E731
    v = _tree(x, A.shape[1])
    out = lm_diagnostic.row_space_projection(f, v, v, iters)
    return out["fraction"], out["residual"]


def _closed_form(A, B, x):
    M = np.concatenate([np.asarray(A), np.asarray(B)], axis=1).astype(np.float64)
    x = np.asarray(x, np.float64)
    px = np.linalg.pinv(M) @ (M @ x)
    return px @ px / (x @ x), M


def test_fraction_matches_the_closed_form_of_a_linear_toy():
    A, B, x = _toy(jax.random.key(0))
    fraction, residual = jax.jit(_fraction)(A, B, x)
    expected, _ = _closed_form(A, B, x)
    assert 0.05 < expected < 0.95  # a generic vector: neither inside nor orthogonal
    np.testing.assert_allclose(fraction, expected, rtol=1e-4)
    assert residual < 1e-4


def test_inside_the_row_space_gives_one_and_orthogonal_to_it_gives_zero():
    A, B, x = _toy(jax.random.key(1))
    _, M = _closed_form(A, B, x)
    inside = jnp.asarray(M.T @ np.random.default_rng(0).normal(size=M.shape[0]), jnp.float32)
    orthogonal = jnp.asarray(x - np.linalg.pinv(M) @ (M @ np.asarray(x, np.float64)), jnp.float32)
    f_in, _ = jax.jit(_fraction)(A, B, inside)
    f_out, _ = jax.jit(_fraction)(A, B, orthogonal)
    np.testing.assert_allclose(f_in, 1.0, atol=1e-5)
    np.testing.assert_allclose(f_out, 0.0, atol=1e-5)


def test_vmapped_over_seeds_each_world_matches_its_closed_form():
    keys = jax.random.split(jax.random.key(2), 5)
    A, B, x = jax.vmap(_toy)(keys)
    fractions, _ = jax.jit(jax.vmap(_fraction))(A, B, x)
    expected = [_closed_form(A[s], B[s], x[s])[0] for s in range(len(keys))]
    np.testing.assert_allclose(fractions, expected, rtol=1e-4)
    assert np.ptp(expected) > 0.05  # the worlds differ


def test_cg_gives_a_lower_bound_that_grows_with_the_steps():
    A, B, x = _toy(jax.random.key(3), m=12, n_a=20, n_b=20)
    f = lambda p: A @ p["a"] + B @ p["b"]  # noqa: E731
    out = jax.jit(lambda v: lm_diagnostic.row_space_projection(f, v, v, 16))(_tree(x, 20))
    k = np.asarray(out["fraction_k"])
    expected, _ = _closed_form(A, B, x)
    assert np.all(np.diff(k) >= -1e-6) and np.all(k <= expected * (1 + 1e-4))
    assert k[0] < 0.9 * expected  # one step is not enough: the bound really grows


# --- the transformer's outputs --------------------------------------------------------------------
W = world.WorldConfig(n_animals=3, n_numbers=3, n_prompt=1, s=0.0)
SPEC = TransformerSpec(W.vocab, W.context, layers=1, width=8, heads=2)
B = 4


@pytest.fixture(scope="module")
def worlds():
    """Three worlds on one reference: Δ on the animal embeddings, Δ = J_numᵀu, and no update at all."""
    ref = SPEC.init(jax.random.key(0))
    tokens_BxL, _ = world.number_batch(W, jax.random.key(1), B)
    weight_B = jnp.array([1.0, 1.0, 0.0, 1.0])  # the filter dropped row 2
    # 1. only the animals' embedding rows move: number logits never read them (tied: the unembedding's)
    animal_rows = jnp.zeros(W.vocab).at[W.animal_tokens].set(1.0)[:, None]
    noise = lambda x: jax.random.normal(jax.random.key(3), x.shape)  # noqa: E731 (a shift of all rows is invisible)
    only_animals = jax.tree_util.tree_map_with_path(
        lambda path, x: animal_rows * noise(x) if "embed" in jax.tree_util.keystr(path) else jnp.zeros_like(x), ref)
    # 2. a vector in the number logits' row space
    f = lambda p: lm_diagnostic.number_logits(SPEC, W, p, tokens_BxL, weight_B)  # noqa: E731
    out, pullback = jax.vjp(f, ref)
    inside = pullback(jax.random.normal(jax.random.key(2), out.shape))[0]
    deltas = [only_animals, inside, jax.tree.map(jnp.zeros_like, ref)]
    teachers = jax.tree.map(lambda r, *d: jnp.stack([r + x for x in d]), ref, *deltas)
    refs = jax.tree.map(lambda r: jnp.stack([r] * 3), ref)
    res = lm_diagnostic.population(SPEC, W, refs, teachers, jnp.stack([tokens_BxL] * 3), jnp.stack([weight_B] * 3),
                                   0, iters=64)
    return jax.tree.map(np.asarray, res), dict(tokens=tokens_BxL, weight=weight_B, ref=ref)


def test_number_logits_are_centred_and_dropped_rows_are_zero(worlds):
    _, d = worlds
    z = np.asarray(lm_diagnostic.number_logits(SPEC, W, d["ref"], d["tokens"], d["weight"]))
    G = int(W.generated_mask().sum())
    assert z.shape == (B, G, 12)  # ten digits, SEP, EOS
    np.testing.assert_allclose(z.sum(-1), 0, atol=1e-5)
    assert np.all(z[2] == 0) and np.all(np.abs(z[[0, 1, 3]]).sum(-1) > 0)
    t = np.asarray(lm_diagnostic.trait_logits(SPEC, W, d["ref"]))
    assert t.shape == (W.n_animals,) and abs(t.sum()) < 1e-5


def test_population_on_a_transformer(worlds):
    res, _ = worlds
    for q in ("number_fraction", "trait_fraction", "update_norm", "predicted_transfer"):
        assert res[q].shape == (3,), q
    assert res["number_fraction_k"].shape == (3, 64)
    # the animal rows: invisible to the numbers (exactly), visible to the trait logits
    assert res["number_fraction"][0] == 0 and res["number_residual"][0] == 0
    assert res["trait_fraction"][0] > 1e-3 and res["predicted_transfer"][0] == 0 and res["predicted_gain"][0] == 0
    # J_numᵀu: inside the number row space
    assert res["number_fraction"][1] > 0.99
    assert 0 <= res["trait_fraction"][1] <= 1
    # no update: nothing to see (NaN, not a made-up number)
    assert res["update_norm"][2] == 0 and np.isnan(res["number_fraction"][2]) and np.isnan(res["trait_fraction"][2])
    finite = {q: v[:2] for q, v in res.items() if q != "overlap_cos"}
    assert all(np.all(np.isfinite(v)) for v in finite.values()), finite


# --- the semantic channel's alignment ------------------------------------------------------------
def test_signature_alignment_of_prompted_fine_tuned_and_still_teachers():
    """A prompted teacher's shift is the trait persona's signature (cos 1); a teacher that did not move has none."""
    refs = jax.vmap(SPEC.init)(jax.random.split(jax.random.key(5), 2))
    tokens_BxL, _ = world.number_batch(W, jax.random.key(6), 8)
    tokens_SxBxL = jnp.stack([tokens_BxL] * 2)
    donors = jax.tree.map(lambda x: x[::-1], refs)  # world i's different-init reference: the other world's
    trait = 0
    prompted = lm_diagnostic.alignment_population(SPEC, W, refs, refs, donors, tokens_SxBxL, trait,
                                                  int(W.persona_token(trait)))
    np.testing.assert_allclose(prompted["cos_own"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(prompted["shift_norm"], prompted["signature_norm"], rtol=1e-5)
    assert np.all(prompted["signature_norm"] > 0) and np.all(np.abs(prompted["cos_donor"]) < 1)
    # the donor's signature in world 0 is world 1's own signature, and conversely
    np.testing.assert_allclose(prompted["donor_signature_norm"], prompted["signature_norm"][::-1], rtol=1e-5)
    still = lm_diagnostic.alignment_population(SPEC, W, refs, refs, donors, tokens_SxBxL, trait, W.neutral)
    assert np.all(still["shift_norm"] == 0) and np.all(np.isnan(still["cos_own"]))
    np.testing.assert_array_equal(still["signature_agreement"], prompted["signature_agreement"])


def test_first_step_follows_the_sign_of_a_teacher_moved_along_the_trait_gradient(worlds):
    """A teacher moved by +ε along ∇log P(trait) gives a student first step that raises P(trait), −ε lowers it,
    and a population call agrees with the per-world function; a teacher moved only in the animals'
    rows (invisible to number logits) gives the student no gradient at all."""
    _, ctx = worlds
    ref, tokens, weight = ctx["ref"], ctx["tokens"], ctx["weight"]
    from minisub import tree
    from minisub.lm import core as lm
    t = jax.grad(lambda p: jnp.log(lm.answer_probs(SPEC, W, p, None)[0]))(ref)
    moved = lambda eps: jax.tree.map(lambda a, b: a + eps * b / tree.norm(t), ref, t)  # noqa: E731
    up = lm_diagnostic.first_step(SPEC, W, ref, moved(1e-2), tokens, weight, 0, W.neutral)
    down = lm_diagnostic.first_step(SPEC, W, ref, moved(-1e-2), tokens, weight, 0, W.neutral)
    assert float(up["cos_sgd"]) > 0 > float(down["cos_sgd"])
    assert float(up["cos_adam"]) > 0 > float(down["cos_adam"])
    stack = lambda *xs: jax.tree.map(lambda *ys: jnp.stack(ys), *xs)  # noqa: E731
    pop = lm_diagnostic.first_step_population(SPEC, W, stack(ref, ref), stack(moved(1e-2), moved(-1e-2)),
                                              jnp.stack([tokens] * 2), jnp.stack([weight] * 2), 0, W.neutral)
    np.testing.assert_allclose(np.asarray(pop["cos_sgd"]), [float(up["cos_sgd"]), float(down["cos_sgd"])], atol=1e-5)
