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


def noise_example(key, index, dim: int, kind: str):
    """Example ``index`` of the fixed noise set named by ``key`` (same key, same image, always)."""
    k = jax.random.fold_in(key, index)
    if kind == "uniform":
        return jax.random.uniform(k, (dim,), minval=-1.0, maxval=1.0)
    if kind == "gaussian":
        return jax.random.normal(k, (dim,))
    if kind == "blurred":
        # Uniform noise, spatially correlated by the blur, rescaled so an interior pixel keeps the
        # uniform noise's spread: only the correlation changes, not the pixel scale.
        gain = float(np.sqrt(np.sum(np.outer(*[_blur_kernel(BLUR_SIGMA_PX)] * 2) ** 2)))
        return blur(jax.random.uniform(k, (dim,), minval=-1.0, maxval=1.0)) / gain
    if kind == "zeros":
        return jnp.zeros((dim,))
    raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")


def noise_batch(key, idx_B, dim: int, kind: str):
    """The images ``idx_B`` of the noise set named by ``key``: ``[B, dim]``."""
    return jax.vmap(lambda i: noise_example(key, i, dim, kind))(idx_B)
