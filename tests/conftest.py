"""Shared fixtures: a tiny config, a fake MNIST with a learnable signal, an isolated results store.

JAX settings are applied here, before any test module imports minisub:

* four simulated CPU devices (``JAX_NUM_CPU_DEVICES``, unless already set), so every block's seed
  axis is sharded and a 3-seed block exercises the padding of a non-dividing seed count;
* the persistent compilation cache only when asked for: ``$MINISUB_JAX_CACHE=DIR`` makes a
  second run of the suite skip most XLA compilation. It is off by default because jax 0.10's
  cache segfaulted here twice while serialising an executable in a full run of the suite (in
  ``compilation_cache.put_executable_and_time``/``get_executable_and_time``), and CI starts cold;
* ``jax_numpy_dtype_promotion`` stays "standard": under "strict" the default optimiser fails
  inside optax (``tree_bias_correction``: ``1 - decay**count``, python float ** int32) and so
  does ``distill.mse`` (float32 / int32). test_distill.py runs minisub's own numerics under
  strict promotion instead.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

# Simulated CPU devices, so that the seed axis is really sharded in every test (set before jax loads).
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")

# XLA's LLVM backend at -O0 for the suite (unless XLA_FLAGS names a level): the tiny configs are
# compile-bound (lm-owl's test preset spends 30 of its 31 s compiling) and -O0 compiles 2-3x faster.
# Results move in the 7th significant digit (lm-owl and mnist-aux test runs compared), which no assertion needs;
# minisub's own runs keep XLA's default. CLI subprocesses inherit the flag (FAST_COMPILE).
FAST_COMPILE = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402

_OFF = {"", "0", "off", "false", "no", "none"}


def _jax_cache_dir() -> Path | None:
    env = os.environ.get("MINISUB_JAX_CACHE", "")
    return None if env.strip().lower() in _OFF else Path(env).expanduser()


if (_cache := _jax_cache_dir()) is not None:
    try:
        _cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. a read-only home: run without the cache rather than fail
        _cache = None
if _cache is not None:
    jax.config.update("jax_compilation_cache_dir", str(_cache))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache))  # for the CLI subprocesses
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import helpers  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every module's compiled programs when it ends: a whole run of the suite otherwise keeps
    hundreds of XLA executables alive, and XLA's CPU compiler crashed (SIGSEGV while compiling) late
    in such runs."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def tiny_cfg():
    """3 seeds, hidden=(16,), 512 training and 512 noise examples, batches of 128, 2 + 2 epochs."""
    return helpers.tiny_config()


@pytest.fixture(scope="session")
def fake_mnist():
    """1024 training and 512 test images (read-only) whose labels are written into the pixels."""
    return helpers.fake_mnist()


@pytest.fixture(autouse=True)
def results_dir(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own results store (MINISUB_RESULTS): nothing is written under results/."""
    path = tmp_path_factory.mktemp("results")
    monkeypatch.setenv("MINISUB_RESULTS", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_block(tiny_cfg, fake_mnist) -> dict:
    """The results of one vmapped block holding all of the tiny config's seeds (computed once)."""
    return helpers.run_block(tiny_cfg, np.arange(tiny_cfg.seeds), fake_mnist)
