"""Closed-form Gaussian-mixture oracle: density, score and denoiser of every diffusion marginal.

For `p_0 = sum_k pi_k N(mu_k, diag(s_k^2))` and a linear SDE with `x_t = alpha_t x_0 + sigma_t z`,
every marginal is again a Gaussian mixture,

    p_t(x) = sum_k pi_k N(x; alpha_t mu_k, diag(C_k(t))),   C_k(t) = alpha_t^2 s_k^2 + sigma_t^2,

so with responsibilities `w_k(x) = softmax_k(log pi_k + log N(x; alpha_t mu_k, C_k))`:

    grad_x log p_t(x) = -sum_k w_k(x) (x - alpha_t mu_k) / C_k(t)
    E[x_0 | x_t = x]  =  sum_k w_k(x) [mu_k + alpha_t s_k^2 (x - alpha_t mu_k) / C_k(t)]

(Tweedie: `E[x_0 | x_t] = (x + sigma_t^2 grad log p_t(x)) / alpha_t`). All sums over components go
through `logsumexp`/`softmax`, so far-away points keep finite scores.

Because the exact score, denoiser and velocity are known, so is the lowest value a training loss
can reach on the mixture (`exact_loss_floor`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from scorejax.sde import SDE

Array = jax.Array

__all__ = ["GaussianMixture", "exact_loss_floor", "ring8", "grid25"]


class GaussianMixture:
    """Mixture of `K` axis-aligned Gaussians in `d` dimensions; a JAX pytree of its three arrays.

    Args:
      weights: `[K]` nonnegative mixture weights (normalised internally; they need not sum to 1).
      means: `[K, d]` component means.
      stds: `[K, d]` per-coordinate standard deviations, or `[K]` for isotropic components.

    Shapes of methods: `x` is `[B, d]`; `t` is a scalar or `[B]`; per-example outputs are `[B]`.
    The diffusion marginals take the forward process keyword-only: `marginal_score(x, t, sde=...)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.score_sdes import VESDE
      >>> gm = GaussianMixture([1.0], [[0.0, 0.0]], [1.0])  # N(0, I)
      >>> sde = VESDE(sigma_min=0.01, sigma_max=1.0)
      >>> print(gm.marginal_score(jnp.ones((1, 2)), 1.0, sde=sde))  # -x / (1 + sigma^2)
      [[-0.5 -0.5]]
      >>> print(gm.denoiser(jnp.ones((1, 2)), 1.0, sde=sde))  # x / (1 + sigma^2)
      [[0.5 0.5]]
      >>> print(gm.marginal_log_prob(jnp.zeros((1, 2)), 1.0, sde=sde))  # -log(2 pi 2)
      [-2.531]
      >>> gm.marginal_sample(jax.random.key(0), 3, 0.5, sde=sde).shape
      (3, 2)
    """

    weights: Array
    means: Array
    stds: Array

    def __init__(self, weights, means, stds):
        traced = any(isinstance(a, jax.core.Tracer) for a in (weights, means, stds))
        # Concrete inputs are checked and converted with numpy: no device round trips or
        # per-primitive compilations just to build the object.
        xp = jnp if traced else np
        weights, means, stds = xp.asarray(weights), xp.asarray(means), xp.asarray(stds)
        dtype = jax.dtypes.canonicalize_dtype(
            np.result_type(weights.dtype, means.dtype, stds.dtype, np.float32)
        )
        weights, means, stds = (a.astype(dtype) for a in (weights, means, stds))
        if means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {means.shape}")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"weights must be [K]=[{k}], got shape {weights.shape}")
        if stds.shape == (k,):
            stds = xp.broadcast_to(stds[:, None], (k, d))
        if stds.shape != (k, d):
            raise ValueError(f"stds must be [K]=[{k}] or [K, d]=[{k}, {d}], got shape {stds.shape}")
        if not traced:
            if np.any(weights < 0) or not np.sum(weights) > 0:
                raise ValueError("weights must be nonnegative with a positive sum")
            if not np.all(stds > 0):
                raise ValueError("stds must be positive")
        self.weights, self.means, self.stds = (jnp.asarray(a) for a in (weights, means, stds))

    def tree_flatten(self):
        return (self.weights, self.means, self.stds), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        # Bypass __init__: leaves may be tracers or placeholders during transformations.
        obj = object.__new__(cls)
        obj.weights, obj.means, obj.stds = children
        return obj

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, d={self.dim})"

    @property
    def num_components(self) -> int:
        """Number of components `K`."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """Data dimension `d`."""
        return self.means.shape[1]

    @property
    def log_weights(self) -> Array:
        """Normalised log mixture weights `log pi_k`, `[K]`."""
        return jnp.log(self.weights) - jnp.log(jnp.sum(self.weights))

    def _check_x(self, x: Array) -> Array:
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [B, d] with d={self.dim}, got shape {x.shape}")
        return x

    def _terms(self, x: Array, alpha: Array, sigma: Array) -> tuple[Array, Array, Array]:
        """Per-component log joint `log pi_k + log N(x; alpha mu_k, C_k)` and helpers.

        `alpha`, `sigma` are `()` or `[B]`. Returns `(log_joint [B, K], resid [B, K, d],
        var [B|1, K, d])` with `resid = x - alpha mu_k`, `var = C_k`.
        """
        a = jnp.reshape(alpha, (-1, 1, 1))
        s = jnp.reshape(sigma, (-1, 1, 1))
        var = a**2 * self.stds[None] ** 2 + s**2
        resid = x[:, None, :] - a * self.means[None]
        log_norm = -0.5 * jnp.sum(jnp.log(2 * math.pi * var) + resid**2 / var, axis=-1)
        return self.log_weights[None] + log_norm, resid, var

    def log_prob(self, x: Array) -> Array:
        """`log p_0(x)` for `x` `[B, d]`; returns `[B]`."""
        return _log_prob(self, None, self._check_x(x), None)

    def score(self, x: Array) -> Array:
        """`grad_x log p_0(x)` for `x` `[B, d]`; returns `[B, d]`."""
        return _score(self, None, self._check_x(x), None)

    def sample(self, key: Array, n: int) -> Array:
        """Draw `n` samples; returns `[n, d]`."""
        return _sample(self, key, n)

    def responsibilities(self, x: Array) -> Array:
        """Posterior component probabilities `w_k(x)` under `p_0`; `[B, K]`."""
        return _responsibilities(self, None, self._check_x(x), None)

    def marginal_log_prob(self, x: Array, t: Array | float, *, sde: SDE) -> Array:
        """`log p_t(x)` of the diffused mixture under `sde` (module docstring); returns `[B]`."""
        return _log_prob(self, sde, self._check_x(x), t)

    def marginal_score(self, x: Array, t: Array | float, *, sde: SDE) -> Array:
        """Exact score `grad_x log p_t(x) = -sum_k w_k (x - alpha_t mu_k) / C_k(t)`; `[B, d]`."""
        return _score(self, sde, self._check_x(x), t)

    def denoiser(self, x: Array, t: Array | float, *, sde: SDE) -> Array:
        """Posterior mean `E[x_0 | x_t = x] = sum_k w_k [mu_k + alpha s_k^2 (x - alpha mu_k)/C_k]`.

        Returns `[B, d]`.
        """
        return _denoiser(self, sde, self._check_x(x), t)

    def marginal_sample(self, key: Array, n: int, t: Array | float, *, sde: SDE) -> Array:
        """Draw `x_t = alpha_t x_0 + sigma_t z` with `x_0 ~ p_0`; `t` scalar or `[n]`; `[n, d]`."""
        return _marginal_sample(self, sde, key, n, t)

    def mean(self) -> Array:
        """Mixture mean `sum_k pi_k mu_k`; `[d]`."""
        return jnp.exp(self.log_weights) @ self.means

    def covariance(self) -> Array:
        """Mixture covariance `sum_k pi_k (diag(s_k^2) + mu_k mu_k^T) - m m^T`; `[d, d]`."""
        pi = jnp.exp(self.log_weights)
        m = pi @ self.means
        second = jnp.einsum("k,ki,kj->ij", pi, self.means, self.means)
        second = second + jnp.diag(pi @ self.stds**2)
        return second - jnp.outer(m, m)


def _coefficients(sde: SDE | None, t, dtype) -> tuple[Array, Array]:
    if sde is None:  # the data distribution itself: alpha = 1, sigma = 0
        return jnp.ones((), dtype), jnp.zeros((), dtype)
    return sde.alpha(t), sde.sigma(t)


# One compiled kernel per (sde, shapes) instead of one per primitive when called eagerly; under an
# outer transformation these inline.
@functools.partial(jax.jit, static_argnums=1)
def _log_prob(gm: GaussianMixture, sde: SDE | None, x: Array, t) -> Array:
    log_joint, _, _ = gm._terms(x, *_coefficients(sde, t, x.dtype))
    return logsumexp(log_joint, axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def _responsibilities(gm: GaussianMixture, sde: SDE | None, x: Array, t) -> Array:
    log_joint, _, _ = gm._terms(x, *_coefficients(sde, t, x.dtype))
    return jax.nn.softmax(log_joint, axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def _score(gm: GaussianMixture, sde: SDE | None, x: Array, t) -> Array:
    log_joint, resid, var = gm._terms(x, *_coefficients(sde, t, x.dtype))
    w = jax.nn.softmax(log_joint, axis=-1)
    return -jnp.sum(w[..., None] * resid / var, axis=1)


@functools.partial(jax.jit, static_argnums=1)
def _denoiser(gm: GaussianMixture, sde: SDE, x: Array, t) -> Array:
    alpha, sigma = _coefficients(sde, t, x.dtype)
    log_joint, resid, var = gm._terms(x, alpha, sigma)
    w = jax.nn.softmax(log_joint, axis=-1)
    a = jnp.reshape(alpha, (-1, 1, 1))
    post_mean = gm.means[None] + a * gm.stds[None] ** 2 * resid / var
    return jnp.sum(w[..., None] * post_mean, axis=1)


@functools.partial(jax.jit, static_argnums=2)
def _sample(gm: GaussianMixture, key: Array, n: int) -> Array:
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, gm.log_weights, shape=(n,))
    z = jax.random.normal(k_noise, (n, gm.dim), gm.means.dtype)
    return gm.means[comp] + gm.stds[comp] * z


@functools.partial(jax.jit, static_argnums=(1, 3))
def _marginal_sample(gm: GaussianMixture, sde: SDE, key: Array, n: int, t) -> Array:
    k0, kz = jax.random.split(key)
    x0 = _sample(gm, k0, n)
    mean, std = sde.marginal_prob(x0, t)
    z = jax.random.normal(kz, x0.shape, x0.dtype)
    return mean + jnp.reshape(std, (-1, 1)) * z


jax.tree_util.register_pytree_node(
    GaussianMixture, GaussianMixture.tree_flatten, GaussianMixture.tree_unflatten
)


def exact_loss_floor(
    loss_fn: Callable[[Any, Array, Array], tuple[Array, Any]],
    mixture: GaussianMixture,
    key: Array,
    *,
    num_samples: int = 65536,
) -> Array:
    """Monte-Carlo value of a training loss at the exact model: the floor no network goes below.

    A denoising loss regresses the model onto a target whose conditional mean given the noisy
    input is the exact model (score, denoiser or velocity), so at the exact model only the
    target's conditional variance remains, and any other model adds its squared error to it. For
    DSM (`scorejax.score_matching.dsm_loss`, `t ~ U(t_min, T)`, `d` data dimensions):

        L* = E_t lambda(t) E_{x_t ~ p_t} [ d / sigma_t^2 - ||grad log p_t(x_t)||^2 ],

        L(s) = L* + E_t lambda(t) E ||s(x_t, t) - grad log p_t(x_t)||^2.

    Estimated as `loss_fn(None, x0, fold_in(key, 1))[0]` on `num_samples` draws
    `x0 ~ p_0` (`mixture.sample(fold_in(key, 0), num_samples)`); its standard error is
    `std(per-example loss) / sqrt(num_samples)`. Works under `jit` (with `num_samples` static).

    Args:
      loss_fn: `loss_fn(params, x0, key) -> (loss, aux)` with the mixture's exact model in place
        of a network (e.g. `dsm_loss` of `lambda _, x, t: mixture.marginal_score(x, t, sde=sde)`);
        `params` is passed as `None`. `loss` is the batch mean.
      mixture: the data distribution `p_0`.
      key: PRNG key.
      num_samples: Monte-Carlo sample size.

    Returns:
      the scalar floor, in the mixture's dtype.

    Examples:
      >>> import jax
      >>> from scorejax.score_matching import dsm_loss
      >>> from scorejax.score_sdes import VPSDE
      >>> gm, sde = ring8(), VPSDE()
      >>> exact = lambda _, x, t: gm.marginal_score(x, t, sde=sde)
      >>> loss = lambda p, x0, k: dsm_loss(exact, p, x0, k, sde=sde, t_min=1e-3)
      >>> floor = exact_loss_floor(loss, gm, jax.random.key(0), num_samples=4096)
      >>> bool(0.0 < floor < 2.0)  # below d = 2, the loss of the zero score
      True
    """
    x0 = mixture.sample(jax.random.fold_in(key, 0), num_samples)
    return loss_fn(None, x0, jax.random.fold_in(key, 1))[0]


def ring8(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equally weighted isotropic Gaussians at angles `2 pi k / 8` on a circle of `radius`.

    Examples:
      >>> gm = ring8(radius=2.0)
      >>> gm.num_components, gm.dim, [round(float(v), 4) for v in gm.means[2]]
      (8, 2, [0.0, 2.0])
    """
    angles = 2 * math.pi * np.arange(8) / 8
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return GaussianMixture(np.full((8,), 1 / 8), means, np.full((8,), std))


def grid25(spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """A 5x5 grid of equally weighted isotropic Gaussians at `spacing * {-2, ..., 2}^2`.

    Examples:
      >>> gm = grid25(spacing=1.0)
      >>> gm.num_components, [float(v) for v in gm.means[0]]
      (25, [-2.0, -2.0])
    """
    ticks = spacing * (np.arange(5) - 2.0)
    gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
    means = np.stack([gx.ravel(), gy.ravel()], axis=-1)
    return GaussianMixture(np.full((25,), 1 / 25), means, np.full((25,), std))
