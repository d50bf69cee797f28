"""Sample-quality metrics between two point clouds: MMD, KID, sliced Wasserstein, energy distance.

All functions are pure and jit-able (sample sizes and counts are static). Inputs are
`x` `[n, d]` and `y` `[m, d]`; results are scalars unless stated. Statistics of samples of a
mixture with known components (mode weights, coverage, in-mode fraction) are in
`scorejax.mode_metrics`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

DEFAULT_BANDWIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)

__all__ = [
    "pairwise_sq_dists",
    "median_bandwidth",
    "mmd2_rbf",
    "mmd2_unbiased_from_kernels",
    "KIDResult",
    "kid",
    "wasserstein_1d",
    "sliced_wasserstein",
    "energy_distance",
    "DEFAULT_BANDWIDTH_MULTIPLIERS",
]


def _check_pair(x: Array, y: Array, min_n: int = 2) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be [n, d] and [m, d]; got {x.shape} and {y.shape}")
    if x.shape[0] < min_n or y.shape[0] < min_n:
        raise ValueError(
            f"need at least {min_n} points in each set; got {x.shape[0]}, {y.shape[0]}"
        )


def pairwise_sq_dists(x: Array, y: Array) -> Array:
    """`D_ij = ||x_i - y_j||^2` for `x` `[n, d]`, `y` `[m, d]`; `[n, m]`, clipped at 0.

    Examples:
      >>> print(pairwise_sq_dists(jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 4.0], [1.0, 0.0]])))
      [[25.  1.]]
    """
    d = jnp.sum(x**2, -1)[:, None] + jnp.sum(y**2, -1)[None, :] - 2.0 * x @ y.T
    return jnp.maximum(d, 0.0)


def _safe_sqrt(v: Array) -> Array:
    # sqrt with a finite gradient at 0 (distances of a point to itself).
    pos = v > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def _off_diagonal_sum(a: Array) -> Array:
    # The Gram-matrix distance trick leaves O(eps |x|^2) on the diagonal; drop it exactly.
    return jnp.sum(a) - jnp.trace(a)


def median_bandwidth(x: Array, y: Array, *, max_points: int = 500) -> Array:
    """Median heuristic: the median pairwise distance `||z_i - z_j||`, `i < j`, of the pooled set.

    Uses the first `max_points` points of each set (`x` `[n, d]`, `y` `[m, d]`) to bound the
    cost of the median. Returns a scalar.

    Examples:
      >>> x, y = jnp.array([[0.0], [1.0]]), jnp.array([[3.0]])  # pair distances 1, 2, 3
      >>> float(median_bandwidth(x, y))
      2.0
    """
    return _median_bandwidth(jnp.asarray(x), jnp.asarray(y), max_points)


@functools.partial(jax.jit, static_argnums=2)
def _median_bandwidth(x: Array, y: Array, max_points: int) -> Array:
    z = jnp.concatenate([x[:max_points], y[:max_points]], axis=0)
    n = z.shape[0]
    # Sorting the full symmetric matrix with a zeroed diagonal puts the n self-distances first and
    # every pair twice after them, so the two middle pair entries give the median of the pairs.
    d2 = jnp.where(jnp.eye(n, dtype=bool), 0.0, pairwise_sq_dists(z, z))
    ordered = jnp.sort(d2.ravel())
    half = n * (n - 1) // 2
    return 0.5 * (jnp.sqrt(ordered[n + half - 1]) + jnp.sqrt(ordered[n + half]))


def mmd2_unbiased_from_kernels(kxx: Array, kyy: Array, kxy: Array) -> Array:
    """Unbiased MMD^2 U-statistic from kernel matrices (Gretton et al. 2012, eq. 3).

    `1/(n(n-1)) sum_{i!=j} k(x_i,x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i,y_j) - 2/(nm) sum_ij k(x_i,y_j)`
    with `kxx` `[n, n]`, `kyy` `[m, m]`, `kxy` `[n, m]`. Can be negative.

    Examples:
      >>> ones = jnp.ones((3, 3))  # a constant kernel cannot tell any two sets apart
      >>> float(mmd2_unbiased_from_kernels(ones, ones, ones))
      0.0
    """
    n, m = kxx.shape[0], kyy.shape[0]
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return sxx + syy - 2.0 * jnp.mean(kxy)


def mmd2_rbf(
    x: Array,
    y: Array,
    *,
    bandwidths: Sequence[float] | Array | None = None,
    multipliers: Sequence[float] = DEFAULT_BANDWIDTH_MULTIPLIERS,
) -> Array:
    """Unbiased MMD^2 with a sum of Gaussian RBF kernels.

    `k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2))` over the bandwidths `h`: the given `bandwidths`,
    or, when `None`, `multipliers * median_bandwidth(x, y)` (median heuristic). `x` `[n, d]`,
    `y` `[m, d]`, `n, m >= 2`; returns a scalar (near 0, possibly negative, when `x` and `y` come
    from the same distribution).

    Examples:
      >>> x = jnp.array([[0.0], [1.0], [2.0]])
      >>> round(float(mmd2_rbf(x, x, bandwidths=[1.0])), 4)  # same points: a negative U-statistic
      -0.367
      >>> bool(mmd2_rbf(x, x + 5.0, bandwidths=[1.0]) > 0.5)
      True
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_pair(x, y)
    if bandwidths is None:
        hs = median_bandwidth(x, y) * jnp.asarray(multipliers, x.dtype)
    else:
        hs = jnp.asarray(bandwidths, x.dtype).reshape(-1)
    return _mmd2_rbf(x, y, hs)


@jax.jit
def _mmd2_rbf(x: Array, y: Array, hs: Array) -> Array:
    n, m = x.shape[0], y.shape[0]

    def kernel_sum(d2: Array, off_diagonal: bool) -> Array:
        # Accumulate sums per bandwidth instead of materialising one kernel matrix per bandwidth.
        def body(i, acc):
            k = jnp.exp(-d2 / (2.0 * hs[i] ** 2))
            return acc + jnp.sum(k) - (jnp.trace(k) if off_diagonal else 0.0)

        return jax.lax.fori_loop(0, hs.shape[0], body, jnp.zeros((), d2.dtype))

    sxx = kernel_sum(pairwise_sq_dists(x, x), True) / (n * (n - 1))
    syy = kernel_sum(pairwise_sq_dists(y, y), True) / (m * (m - 1))
    sxy = kernel_sum(pairwise_sq_dists(x, y), False) / (n * m)
    return sxx + syy - 2.0 * sxy


def _poly_mmd2(fx: Array, fy: Array) -> Array:
    dim = fx.shape[1]

    def kernel(a: Array, b: Array) -> Array:
        return (a @ b.T / dim + 1.0) ** 3

    return mmd2_unbiased_from_kernels(kernel(fx, fx), kernel(fy, fy), kernel(fx, fy))


class KIDResult(NamedTuple):
    """KID's `mean` and `std` over the random subsets (`kid`), scalars."""

    mean: Array
    std: Array


def kid(
    fx: Array,
    fy: Array,
    key: Array,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
) -> KIDResult:
    """Kernel Inception Distance (Binkowski et al. 2018) on given feature vectors.

    Unbiased MMD^2 with the cubic polynomial kernel `k(a, b) = (a.b / D + 1)^3` on features
    `fx` `[n, D]`, `fy` `[m, D]`, averaged over `num_subsets` random subsets of
    `min(subset_size, n, m)` points of each set, drawn without replacement within a subset.
    Returns `KIDResult(mean, std)` over subsets.

    Examples:
      >>> import jax
      >>> f = jax.random.normal(jax.random.key(0), (20, 4))
      >>> result = kid(f, f, jax.random.key(1), num_subsets=3, subset_size=20)
      >>> round(float(result.mean), 4), bool(result.std < 1e-5)  # whole sets: one value thrice
      (-0.7284, True)
    """
    fx, fy = jnp.asarray(fx), jnp.asarray(fy)
    _check_pair(fx, fy)
    return KIDResult(*_kid(key, fx, fy, num_subsets, min(subset_size, fx.shape[0], fy.shape[0])))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _kid(key: Array, fx: Array, fy: Array, num_subsets: int, size: int) -> tuple[Array, Array]:
    def one(k: Array) -> Array:
        kx, ky = jax.random.split(k)
        ix = jax.random.permutation(kx, fx.shape[0])[:size]
        iy = jax.random.permutation(ky, fy.shape[0])[:size]
        return _poly_mmd2(fx[ix], fy[iy])

    vals = jax.lax.map(one, jax.random.split(key, num_subsets))
    return jnp.mean(vals), jnp.std(vals)


def wasserstein_1d(a: Array, b: Array, *, p: float = 2.0) -> Array:
    """`W_p` between the empirical measures of `a` `[n]` and `b` `[m]` (uniform weights).

    `W_p^p = int_0^1 |F_a^{-1}(u) - F_b^{-1}(u)|^p du`, integrated exactly: both quantile functions
    are piecewise constant with breaks at `i/n` and `j/m` (for `n == m` this is
    `mean |sort(a) - sort(b)|^p`). Returns `W_p` (the p-th root).

    Examples:
      >>> float(wasserstein_1d(jnp.array([0.0, 1.0]), jnp.array([2.0, 3.0]), p=1.0))
      2.0
      >>> float(wasserstein_1d(jnp.array([0.0, 1.0]), jnp.array([0.5])))  # sqrt(0.25)
      0.5
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 1 or b.ndim != 1 or a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"a and b must be non-empty vectors, got shapes {a.shape} and {b.shape}")
    return _wasserstein_1d(a, b, float(p)) ** (1.0 / p)


@functools.partial(jax.jit, static_argnums=2)
def _wasserstein_1d(a: Array, b: Array, p: float) -> Array:
    """`W_p^p` of two empirical measures (see `wasserstein_1d`)."""
    n, m = a.shape[0], b.shape[0]
    a_s, b_s = jnp.sort(a), jnp.sort(b)
    if n == m:
        return jnp.mean(jnp.abs(a_s - b_s) ** p)
    qa = jnp.arange(1, n + 1, dtype=a.dtype) / n
    qb = jnp.arange(1, m + 1, dtype=a.dtype) / m
    breaks = jnp.sort(jnp.concatenate([qa, qb]))
    lower = jnp.concatenate([jnp.zeros((1,), breaks.dtype), breaks[:-1]])
    mid = 0.5 * (lower + breaks)
    ia = jnp.minimum(jnp.floor(mid * n).astype(jnp.int32), n - 1)
    ib = jnp.minimum(jnp.floor(mid * m).astype(jnp.int32), m - 1)
    return jnp.sum((breaks - lower) * jnp.abs(a_s[ia] - b_s[ib]) ** p)


def sliced_wasserstein(
    x: Array,
    y: Array,
    key: Array | None = None,
    *,
    num_projections: int = 256,
    p: float = 2.0,
    directions: Array | None = None,
) -> Array:
    """Sliced Wasserstein distance `SW_p = (mean_l W_p^p(theta_l . x, theta_l . y))^(1/p)`.

    `theta_l` are `num_projections` directions drawn uniformly on the unit sphere from `key`, or
    the rows of `directions` `[L, d]` (normalised here) when given, in which case `key` may be
    `None`. `W_p` of each 1-D projection is exact (`wasserstein_1d`). `x` `[n, d]`, `y` `[m, d]`.

    Examples:
      >>> x = jnp.zeros((4, 2))
      >>> shifted = x + jnp.array([3.0, 0.0])
      >>> float(sliced_wasserstein(x, shifted, directions=jnp.array([[1.0, 0.0]])))
      3.0
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_pair(x, y, min_n=1)
    if directions is None:
        if key is None:
            raise ValueError("sliced_wasserstein needs a key when no directions are given")
        theta = jax.random.normal(key, (num_projections, x.shape[1]), x.dtype)
    else:
        theta = jnp.asarray(directions, x.dtype)
        if theta.ndim != 2 or theta.shape[1] != x.shape[1]:
            raise ValueError(f"directions must be [L, d={x.shape[1]}], got {theta.shape}")
    return _sliced_wasserstein(x, y, theta, float(p))


@functools.partial(jax.jit, static_argnums=3)
def _sliced_wasserstein(x: Array, y: Array, theta: Array, p: float) -> Array:
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    wpp = jax.vmap(lambda th: _wasserstein_1d(x @ th, y @ th, p))(theta)
    return jnp.mean(wpp) ** (1.0 / p)


def energy_distance(x: Array, y: Array) -> Array:
    """Unbiased energy distance `2 E||X - Y|| - E||X - X'|| - E||Y - Y'||` (Szekely & Rizzo).

    Within-set means exclude `i = j`. `x` `[n, d]`, `y` `[m, d]`, `n, m >= 2`; returns a scalar.

    Examples:
      >>> x = jnp.array([[0.0], [1.0]])
      >>> float(energy_distance(x, x + 2.0))  # 2 * 2 - 1 - 1
      2.0
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_pair(x, y)
    return _energy_distance(x, y)


@jax.jit
def _energy_distance(x: Array, y: Array) -> Array:
    n, m = x.shape[0], y.shape[0]
    dxy = jnp.mean(_safe_sqrt(pairwise_sq_dists(x, y)))
    dxx = _off_diagonal_sum(_safe_sqrt(pairwise_sq_dists(x, x))) / (n * (n - 1))
    dyy = _off_diagonal_sum(_safe_sqrt(pairwise_sq_dists(y, y))) / (m * (m - 1))
    return 2.0 * dxy - dxx - dyy
