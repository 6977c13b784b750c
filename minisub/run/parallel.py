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
import os

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def local_mesh(count: int | None = None):
    """A one-dimensional ``seed`` mesh over this process's devices (the first ``count`` of them)."""
    devices = jax.local_devices()[:count]
    return jax.make_mesh((len(devices),), ("seed",), axis_types=(AxisType.Auto,), devices=devices)


def by_seed(mesh) -> NamedSharding:
    """Leading (seed) axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec("seed"))


def one_device_per_core() -> None:
    """Give a CPU host one JAX device per core (unless the user set a count).

    For programs that ``spread`` independent worlds over devices: on CPU each device then runs its
    share on one core, instead of one device splitting every small op over all cores. It has to
    happen before JAX's first computation; afterwards the devices stay as they are.
    """
    from jax._src import xla_bridge  # no public way to ask whether the backends exist yet

    chosen = os.environ.get("JAX_NUM_CPU_DEVICES") or "device_count" in os.environ.get("XLA_FLAGS", "")
    if not chosen and not xla_bridge.backends_are_initialized():
        jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))


def dividing_sharding(n: int) -> NamedSharding | None:
    """A leading axis of length ``n`` split over the most local devices that divide it (None: one device)."""
    count = max(k for k in range(1, jax.local_device_count() + 1) if n % k == 0)
    return None if count == 1 else by_seed(local_mesh(count))


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
