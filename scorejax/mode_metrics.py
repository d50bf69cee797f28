"""Mode statistics of samples from a mixture with known components.

For samples `x` `[n, d]` of a sampler and a mixture of `K` components with means `[K, d]`,
per-coordinate standard deviations and weights `[K]`: the share of samples nearest each mean
(`mode_weights`), membership within a number of standard deviations (`near_modes`,
`in_mode_fraction`), the share of modes a sampler covers (`mode_coverage`) and the total
variation between mode shares and weights (`mode_tv`). The distances between two sample sets
(MMD, KID, sliced Wasserstein, energy) are in `scorejax.metrics`. All functions are pure and
jit-able; results are scalars unless stated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scorejax.metrics import pairwise_sq_dists

Array = jax.Array

__all__ = ["mode_weights", "near_modes", "in_mode_fraction", "mode_coverage", "mode_tv"]


def mode_weights(x: Array, means: Array) -> Array:
    """Fraction of the samples `x` `[n, d]` whose nearest (Euclidean) mean is each of `means`.

    `means` `[K, d]`; returns `[K]`, summing to 1.

    Examples:
      >>> x = jnp.array([[0.1, 0.0], [0.9, 1.0], [1.1, 1.0], [1.0, 0.9]])
      >>> print(mode_weights(x, jnp.array([[0.0, 0.0], [1.0, 1.0]])))
      [0.25 0.75]
    """
    x, means = jnp.asarray(x), jnp.asarray(means)
    if x.ndim != 2 or means.ndim != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"x must be [n, d] and means [K, d]; got {x.shape} and {means.shape}")
    return _mode_weights(x, means)


@jax.jit
def _mode_weights(x: Array, means: Array) -> Array:
    nearest = jnp.argmin(pairwise_sq_dists(x, means), axis=1)
    return jnp.mean(jax.nn.one_hot(nearest, means.shape[0], dtype=x.dtype), axis=0)


def near_modes(x: Array, means: Array, stds: Array, *, num_stds: float = 3.0) -> Array:
    """Whether each sample lies within `num_stds` standard deviations of each component.

    `near_ik = sum_j ((x_ij - mu_kj) / s_kj)^2 <= num_stds^2` (the Mahalanobis distance of an
    axis-aligned Gaussian; a ball of radius `num_stds s_k` for an isotropic one).

    Args:
      x: samples `[n, d]`.
      means: component means `[K, d]`.
      stds: per-coordinate standard deviations `[K, d]` (or `[K, 1]` / `[K]` for isotropic ones).
      num_stds: the radius in standard deviations.

    Returns:
      `[n, K]` booleans.

    Examples:
      >>> import jax.numpy as jnp
      >>> near_modes(jnp.array([[0.0, 0.5], [2.0, 0.0]]), jnp.zeros((1, 2)), jnp.ones(1)).tolist()
      [[True], [True]]
    """
    x, means, stds = jnp.asarray(x), jnp.asarray(means), jnp.asarray(stds)
    if x.ndim != 2 or means.ndim != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"x must be [n, d] and means [K, d]; got {x.shape} and {means.shape}")
    stds = stds.reshape(means.shape[0], -1)
    z2 = jnp.sum(jnp.square((x[:, None, :] - means[None]) / stds[None]), axis=-1)
    return z2 <= num_stds**2


def in_mode_fraction(x: Array, means: Array, stds: Array, *, num_stds: float = 3.0) -> Array:
    """Share of the samples within `num_stds` standard deviations of some component.

    `(1/n) sum_i [exists k: near_ik]` (`near_modes`); samples off every mode are bridges between
    modes or outliers (a true 2-D Gaussian sample lies beyond 3 standard deviations with
    probability `exp(-9/2) = 1.1%`, beyond 4 with `3.4e-4`). Scalar in `[0, 1]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0, 0.0], [10.0, 0.0]])
      >>> float(in_mode_fraction(x, jnp.zeros((1, 2)), jnp.ones(1)))
      0.5
    """
    return jnp.mean(jnp.any(near_modes(x, means, stds, num_stds=num_stds), axis=1))


def _check_shares(shares: Array, weights: Array) -> tuple[Array, Array]:
    shares, weights = jnp.asarray(shares), jnp.asarray(weights)
    if shares.ndim != 1 or shares.shape != weights.shape:
        raise ValueError(
            f"shares and weights must both be [K]; got {shares.shape}, {weights.shape}"
        )
    return shares, weights


def mode_coverage(shares: Array, weights: Array, *, min_share: float = 0.25) -> Array:
    """Share of the modes that hold at least `min_share` of their true weight.

    `(1/K) sum_k [shares_k >= min_share pi_k]`, `pi = weights / sum(weights)`. `shares` `[K]` are
    the fractions of the samples assigned to each mode: those within a few standard deviations
    of its mean (`mean(near_modes(x, ...), axis=0)`; nearest-mean assignment alone would call a
    blob at the centre of a ring "all modes covered"), or a classifier's predicted-class
    frequencies for images. Scalar in `[0, 1]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> float(mode_coverage(jnp.array([0.5, 0.5, 0.0, 0.0]), jnp.ones(4)))
      0.5
    """
    shares, weights = _check_shares(shares, weights)
    pi = weights / jnp.sum(weights)
    return jnp.mean(shares >= min_share * pi)


def mode_tv(shares: Array, weights: Array) -> Array:
    """Total variation between the sample's mode shares and the true mode weights.

    `TV = (1/2) sum_k |shares_k - pi_k|`, `pi = weights / sum(weights)`, with `shares` `[K]` for
    example `mode_weights(x, means)` or predicted-class frequencies. Scalar in `[0, 1]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> float(mode_tv(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])))
      0.5
    """
    shares, weights = _check_shares(shares, weights)
    return 0.5 * jnp.sum(jnp.abs(shares - weights / jnp.sum(weights)))
