"""The seed axis sharded over (simulated CPU) devices agrees with the single-device run."""

import jax
import numpy as np
import pytest

from minisub.run import parallel
from minisub.mlp import pipeline
from minisub.run import runner

pytestmark = pytest.mark.skipif(jax.device_count() < 2, reason="needs JAX_NUM_CPU_DEVICES >= 2 (set by conftest)")


def _mesh(n):
    return jax.make_mesh((n,), ("seed",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


@pytest.mark.parametrize("n_seeds", [4, 3])  # 3 does not divide the device count: the seed axis is padded
def test_sharded_block_matches_single_device(tiny_cfg, fake_mnist, n_seeds):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, seeds=n_seeds)
    ids, donors = np.arange(n_seeds), pipeline.donors(cfg)
    noop = lambda n=1, description=None: None
    one = runner.run_block(cfg, ids, donors, fake_mnist, noop, mesh=_mesh(1))
    many = runner.run_block(cfg, ids, donors, fake_mnist, noop, mesh=_mesh(jax.device_count()))
    for key in ("teacher_loss", "student_loss"):
        np.testing.assert_allclose(many[key], one[key], rtol=2e-5, atol=1e-6)
    for arm in one["accuracy"]:
        np.testing.assert_allclose(many["accuracy"][arm], one["accuracy"][arm], atol=2e-4)
    np.testing.assert_allclose(many["geometry"]["dist_teacher"]["total"], one["geometry"]["dist_teacher"]["total"], rtol=1e-4)
    assert many["seed"].tolist() == list(range(n_seeds))


def test_block_state_is_sharded_over_the_seed_axis(tiny_cfg, fake_mnist):
    mesh = parallel.local_mesh()
    n = 2 * mesh.size
    ids = jax.device_put(np.arange(n, dtype=np.int32), parallel.by_seed(mesh))
    state = parallel.seed_sharded(pipeline.init_population, mesh)(tiny_cfg, ids, ids[::-1])
    x, y = fake_mnist.train_images[:512], fake_mnist.train_labels[:512]
    state, loss = parallel.seed_sharded(pipeline.teacher_epoch, mesh, (1,))(tiny_cfg, state, ids, 0, x, y)
    for leaf in (*jax.tree.leaves(state), loss):
        assert leaf.sharding.spec[0] == "seed"
        shards = leaf.addressable_shards
        assert len({s.device for s in shards}) == mesh.size
        assert all(s.data.shape[0] == 2 for s in shards)  # each device holds (and computes) its 2 seeds


def test_memory_budget_picks_a_bounded_block(tiny_cfg):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, seeds=1000)
    per_seed = runner.bytes_per_seed(cfg)
    budget_gb = (50 * per_seed + 2 * 70_000 * 785) / 2**30
    block = runner.block_size(cfg, runner.Execution(memory_budget_gb=budget_gb))
    assert 1 <= block <= 50 and block % jax.local_device_count() == 0
    with pytest.raises(Exception, match="memory_budget_gb"):
        runner.block_size(cfg, runner.Execution(memory_budget_gb=1e-6))
