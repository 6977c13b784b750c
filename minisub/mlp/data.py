"""Inputs derived from keys: the per-seed fixed noise set is never materialised."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

NOISE_KINDS = ("uniform", "gaussian", "blurred", "zeros")
BLUR_SIGMA_PX = 1.5  # the blur's Gaussian width in pixels


def _blur_kernel(sigma: float) -> np.ndarray:
    radius = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur(image_I, sigma: float = BLUR_SIGMA_PX):
    """A square image (flattened) convolved with a separable Gaussian; edges zero-padded."""
    side = math.isqrt(image_I.shape[-1])
    k = jnp.asarray(_blur_kernel(sigma))
    img = image_I.reshape(side, side)
    img = jax.vmap(lambda row: jnp.convolve(row, k, mode="same"))(img)
    img = jax.vmap(lambda col: jnp.convolve(col, k, mode="same"), in_axes=1, out_axes=1)(img)
    return img.reshape(-1)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 hash (20 rounds), unrolled in plain integer ops.

    jax's own CPU lowering rolls it into a 5-step while loop over whole arrays, which XLA
    cannot fuse with what follows: generating the student's noise then costs about a fifth of
    a student step. Unrolled, it is one elementwise fusion. Integer arithmetic is exact, so the
    bits are jax's bits (``tests/test_data.py`` checks them against ``jax.random``).
    """
    rotl = lambda x, d: (x << np.uint32(d)) | (x >> np.uint32(32 - d))  # noqa: E731
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ rotl(x2, r)
        x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def fast_uniform_supported(key) -> bool:
    """Whether ``uniform`` reproduces ``jax.random.uniform`` for ``key``: a threefry key, partitionable bits."""
    return bool(getattr(jax.config, "jax_threefry_partitionable", False)) and str(jax.random.key_impl(key)) == "threefry2x32"


def uniform(key, n: int, minval: float, maxval: float):
    """``jax.random.uniform(key, (n,), float32, minval, maxval)``, bit for bit, as one fusable expression.

    Falls back to ``jax.random.uniform`` when the key or the configuration is one this does not reproduce.
    """
    if not fast_uniform_supported(key):
        return jax.random.uniform(key, (n,), minval=minval, maxval=maxval)
    kd = jax.random.key_data(key)
    lo = jax.lax.iota(jnp.uint32, n)  # the counter of element i is the 64-bit i: (hi 0, lo i)
    b1, b2 = _threefry2x32(kd[..., 0], kd[..., 1], jnp.zeros_like(lo), lo)
    bits = b1 ^ b2
    one = jnp.asarray(np.array(1.0, np.float32).view(np.uint32), jnp.uint32)
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(32 - 23)) | one, jnp.float32) - jnp.float32(1.0)
    lo_f, hi_f = jnp.float32(minval), jnp.float32(maxval)
    return jax.lax.max(lo_f, floats * (hi_f - lo_f) + lo_f)


def noise_example(key, index, dim: int, kind: str):
    """Example ``index`` of the fixed noise set named by ``key`` (same key, same image, always)."""
    k = jax.random.fold_in(key, index)
    if kind == "uniform":
        return uniform(k, dim, -1.0, 1.0)
    if kind == "gaussian":
        return jax.random.normal(k, (dim,))
    if kind == "blurred":
        # Uniform noise, spatially correlated by the blur, rescaled so an interior pixel keeps the
        # uniform noise's spread: only the correlation changes, not the pixel scale.
        gain = float(np.sqrt(np.sum(np.outer(*[_blur_kernel(BLUR_SIGMA_PX)] * 2) ** 2)))
        return blur(uniform(k, dim, -1.0, 1.0)) / gain
    if kind == "zeros":
        return jnp.zeros((dim,))
    raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")


def noise_batch(key, idx_B, dim: int, kind: str):
    """The images ``idx_B`` of the noise set named by ``key``: ``[B, dim]``."""
    return jax.vmap(lambda i: noise_example(key, i, dim, kind))(idx_B)
