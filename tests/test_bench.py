"""The benchmark's FLOP counts, and the toy-LM benchmark end to end (printed figures, no timing asserted)."""

from __future__ import annotations

import jax

from minisub_experiments import lm_owl
from minisub import cli
from minisub.run import bench
from minisub.lm import transformer


def _matmul_weights(spec: transformer.TransformerSpec) -> int:
    """Parameters of every matmul kernel (and the tied unembedding), read from an initialised tree."""
    params = spec.init(jax.random.key(0))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = lambda path: [k.key for k in path if hasattr(k, "key")]  # noqa: E731
    kernels = sum(x.size for path, x in flat if keys(path)[-1] == "kernel")
    embed = sum(x.size for path, x in flat if keys(path) == ["embed", "embedding"])
    return kernels + (embed if spec.tied_embeddings else 0)


def test_flops_per_token_counts_every_matmul_weight_twice():
    for tied in (True, False):
        spec = transformer.TransformerSpec(vocab=37, context=27, layers=3, width=16, heads=2, tied_embeddings=tied)
        attention = 2 * spec.layers * spec.context * spec.width
        assert spec.flops_per_token() == 2 * _matmul_weights(spec) + attention


def test_pretraining_step_counts_forward_and_backward_over_every_token():
    cfg = lm_owl.PRESETS["test"].lm_config
    per_token = cfg.spec.flops_per_token()
    assert bench.lm_pretrain_flops_per_step(cfg) == 3 * per_token * cfg.world.context * cfg.pretrain_batch


def test_bench_lm_prints_the_rate_against_a_matmul(capsys, monkeypatch):
    real = bench.matmul_rate
    monkeypatch.setattr(bench, "matmul_rate", lambda: real(256, 2))  # the ceiling's shape is not under test
    assert cli.main(["bench", "lm-owl", "--preset", "test", "--seeds", "2", "--steps", "2", "--pretraining-only"]) == 0
    out = capsys.readouterr().out
    for row in ("achieved FLOP rate", "matmul FLOP rate", "% of the matmul rate", "references (seeds)"):
        assert row in out
