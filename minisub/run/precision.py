"""The float32 matmul precision: an execution setting, recorded in every run's provenance.

On GPUs JAX's default float32 matmul may run on reduced-precision tensor cores (TF32, bf16
passes); on CPUs it is plain float32. ``highest`` (the default here) asks for full float32
everywhere, so results from a GPU are comparable with the committed CPU figures. Set
``MINISUB_MATMUL_PRECISION`` (one of ``CHOICES``) to trade that for speed. It changes how a run
computes, not what it computes: it never enters a run id (``config.digest``), and it is written
beside the package versions in ``config.json`` / the summary's provenance.
"""

from __future__ import annotations

import contextlib
import os

import jax

ENV = "MINISUB_MATMUL_PRECISION"
DEFAULT = "highest"
# jax.default_matmul_precision's names: 'default' is the backend's own choice (TF32 on recent GPUs).
CHOICES = ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16")


def setting() -> str:
    """The precision runs use: ``$MINISUB_MATMUL_PRECISION``, else ``highest``."""
    from minisub.config import require_choice

    value = os.environ.get(ENV, DEFAULT).strip().lower() or DEFAULT
    require_choice(ENV, value, CHOICES)
    return value


@contextlib.contextmanager
def applied(value: str | None = None):
    """Trace and run the programs inside this block at ``value`` (default: ``setting()``)."""
    with jax.default_matmul_precision(value or setting()):
        yield

