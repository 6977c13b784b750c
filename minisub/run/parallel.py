"""The seed axis over devices and hosts, with JAX's own machinery.

- Devices: a one-axis ``seed`` mesh (Auto mode) over this process's devices; blocks are placed
  with ``NamedSharding(mesh, P('seed'))`` and the jitted, vmapped programs run SPMD over it.
- Hosts: ``jax.distributed.initialize`` (flags, or the cluster's environment: Slurm, Open MPI,
  Kubernetes, TPU pods), after which every process takes every ``process_count``-th block of
  seeds on its local devices, writes its pieces to the shared store, and waits at a barrier.
- Independent processes (``--shard i/n``, e.g. a Slurm array): the same dealing of blocks,
  without a coordinator; ``minisub merge`` assembles the pieces when all have finished.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def local_mesh():
    """A one-dimensional ``seed`` mesh over this process's devices."""
    devices = jax.local_devices()
    return jax.make_mesh((len(devices),), ("seed",), axis_types=(AxisType.Auto,), devices=devices)


def by_seed(mesh) -> NamedSharding:
    """Leading (seed) axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec("seed"))


@functools.cache
def seed_sharded(fn, mesh, donate_argnums: tuple[int, ...] = ()):
    """``fn`` (a population program whose arg 0 is its static config) with every output split by seed.

    XLA's propagation alone can leave key-derived outputs replicated; pinning the outputs keeps
    each device's share of the seeds on that device from the first program to the last.
    """
    return jax.jit(fn, static_argnums=0, donate_argnums=donate_argnums, out_shardings=by_seed(mesh))


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None):
    """Join a multi-process run: explicit flags, or auto-detection from the cluster's environment."""
    # CPU processes need a collectives backend for the barrier between hosts (GPU/TPU ignore it).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def shard_of_process(shard: tuple[int, int]) -> tuple[int, int]:
    """(index, count) of this process: the host's rank in a distributed run, else ``shard``."""
    if jax.process_count() > 1:
        return jax.process_index(), jax.process_count()
    return shard


def is_writer() -> bool:
    """Only process 0 writes merged results in a distributed run."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op for a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
