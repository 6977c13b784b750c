"""TransformerSpec: causality, populations by vmap, tied and untied heads, validation, FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import flat
from minisub.config import ConfigError
from minisub.lm.transformer import TransformerSpec

SPEC = TransformerSpec(vocab=11, context=7, layers=2, width=8, heads=2, mlp_ratio=2)


def _tokens(seed, batch=3, spec=SPEC):
    return jax.random.randint(jax.random.key(seed), (batch, spec.context), 0, spec.vocab)


@pytest.mark.parametrize("tied", [True, False])
def test_gradient_of_position_t_ignores_later_inputs(tied):
    spec = TransformerSpec(vocab=11, context=7, layers=2, width=8, heads=2, mlp_ratio=2, tied_embeddings=tied)
    params = spec.init(jax.random.key(0))
    x_1xLxD = spec.embed(params, _tokens(1, batch=1, spec=spec))
    targets = _tokens(2, batch=1, spec=spec)[0]

    def loss_at(t, x):
        log_p = jax.nn.log_softmax(spec.apply_embedded(params, x)[0, t])
        return -log_p[targets[t]]

    # d loss_t / d x: one row per t, [L, L, D]
    grads_LxLxD = jax.jit(jax.vmap(lambda t: jax.grad(loss_at, argnums=1)(t, x_1xLxD)[0]))(jnp.arange(spec.context))
    g = np.asarray(grads_LxLxD)
    for t in range(spec.context):
        assert np.all(g[t, t + 1:] == 0), f"position {t} sees a later position"
        assert np.any(g[t, : t + 1] != 0), f"position {t} sees nothing"


def test_changing_later_tokens_leaves_earlier_logits_bitwise_unchanged():
    params = SPEC.init(jax.random.key(0))
    a = _tokens(3)
    b = a.at[:, 4:].set((a[:, 4:] + 1) % SPEC.vocab)
    apply = jax.jit(SPEC.apply)
    la, lb = np.asarray(apply(params, a)), np.asarray(apply(params, b))
    np.testing.assert_array_equal(la[:, :4], lb[:, :4])
    assert not np.array_equal(la[:, 4:], lb[:, 4:])


def test_apply_shape_and_embed_path_agree():
    params = SPEC.init(jax.random.key(0))
    tokens = _tokens(4)
    logits = SPEC.apply(params, tokens)
    assert logits.shape == (3, SPEC.context, SPEC.vocab)
    np.testing.assert_allclose(SPEC.apply_embedded(params, SPEC.embed(params, tokens)), logits, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(logits)))


def test_shorter_inputs_use_the_first_positions():
    params = SPEC.init(jax.random.key(0))
    tokens = _tokens(5)
    short, full = SPEC.apply(params, tokens[:, :4]), SPEC.apply(params, tokens)
    np.testing.assert_allclose(short, full[:, :4], rtol=1e-6, atol=1e-6)


def test_tied_and_untied_parameters():
    tied = flat(SPEC.init(jax.random.key(0)))
    untied = flat(TransformerSpec(vocab=11, context=7, layers=2, width=8, heads=2, mlp_ratio=2,
                                  tied_embeddings=False).init(jax.random.key(0)))
    assert not any(k.startswith("unembed") for k in tied)
    assert untied["unembed.kernel"].shape == (8, 11)
    assert tied["embed.embedding"].shape == (11, 8) and tied["pos"].shape == (7, 8)
    assert tied["blocks.1.attn.qkv.kernel"].shape == (8, 24)
    assert tied["blocks.0.up.kernel"].shape == (8, 16) and tied["blocks.0.down.kernel"].shape == (16, 8)


def test_init_is_a_pure_function_of_the_key():
    a, b, c = (flat(SPEC.init(jax.random.key(k))) for k in (7, 7, 8))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["blocks.0.attn.qkv.kernel"], c["blocks.0.attn.qkv.kernel"])


def test_vmap_over_keys_gives_a_population():
    ks = jax.random.split(jax.random.key(9), 3)
    pop = jax.vmap(SPEC.init)(ks)
    flat_pop = flat(pop)
    for m in range(3):
        alone = flat(SPEC.init(ks[m]))
        for name in alone:
            np.testing.assert_array_equal(flat_pop[name][m], alone[name], err_msg=f"{name} member {m}")
    tokens = _tokens(10)
    out = jax.vmap(SPEC.apply, in_axes=(0, None))(pop, tokens)
    assert out.shape == (3, 3, SPEC.context, SPEC.vocab)
    for m in range(3):
        np.testing.assert_allclose(out[m], SPEC.apply(SPEC.init(ks[m]), tokens), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field, value", [("heads", 3), ("width", 0), ("layers", 0), ("vocab", 0), ("mlp_ratio", 0)])
def test_validation_names_the_field(field, value):
    kw = dict(vocab=11, context=7, layers=2, width=8, heads=2, mlp_ratio=2)
    with pytest.raises(ConfigError, match=rf"^{field}="):
        TransformerSpec(**{**kw, field: value})


def test_spec_is_hashable_and_a_jit_static():
    assert hash(SPEC) == hash(TransformerSpec(vocab=11, context=7, layers=2, width=8, heads=2, mlp_ratio=2))
    f = jax.jit(lambda spec, p, x: spec.apply(p, x), static_argnums=0)
    assert f(SPEC, SPEC.init(jax.random.key(0)), _tokens(0)).shape == (3, 7, 11)


def test_flops_per_token():
    spec = TransformerSpec(vocab=40, context=30, layers=2, width=32, heads=4, mlp_ratio=4)
    per_layer = 4 * 32 * 32 + 2 * 32 * 128
    assert spec.flops_per_token() == 2 * (2 * per_layer + 32 * 40) + 2 * 2 * 30 * 32
