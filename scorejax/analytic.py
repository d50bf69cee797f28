"""Closed-form Gaussian-mixture oracle: density, score and denoiser of every diffusion marginal.

For `p_0 = sum_k pi_k N(mu_k, diag(s_k^2))` and a linear SDE with `x_t = alpha_t x_0 + sigma_t z`,
every marginal is again a Gaussian mixture,

    p_t(x) = sum_k pi_k N(x; alpha_t mu_k, diag(C_k(t))),   C_k(t) = alpha_t^2 s_k^2 + sigma_t^2,

so with responsibilities `w_k(x) = softmax_k(log pi_k + log N(x; alpha_t mu_k, C_k))`:

    grad_x log p_t(x) = -sum_k w_k(x) (x - alpha_t mu_k) / C_k(t)
    E[x_0 | x_t = x]  =  sum_k w_k(x) [mu_k + alpha_t s_k^2 (x - alpha_t mu_k) / C_k(t)]

(Tweedie: `E[x_0 | x_t] = (x + sigma_t^2 grad log p_t(x)) / alpha_t`). All sums over components go
through `logsumexp`/`softmax`, so far-away points keep finite scores.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from scorejax.sde import SDE

Array = jax.Array

__all__ = ["GaussianMixture", "ring8", "grid25"]


class GaussianMixture:
    """Mixture of `K` axis-aligned Gaussians in `d` dimensions; a JAX pytree of its three arrays.

    Args:
      weights: `[K]` nonnegative mixture weights (normalised internally; they need not sum to 1).
      means: `[K, d]` component means.
      stds: `[K, d]` per-coordinate standard deviations, or `[K]` for isotropic components.

    Shapes of methods: `x` is `[B, d]`; `t` is a scalar or `[B]`; per-example outputs are `[B]`.
    """

    weights: Array
    means: Array
    stds: Array

    def __init__(self, weights, means, stds):
        weights = jnp.asarray(weights)
        means = jnp.asarray(means)
        stds = jnp.asarray(stds)
        dtype = jnp.result_type(weights, means, stds, float)
        weights, means, stds = (a.astype(dtype) for a in (weights, means, stds))
        if means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {means.shape}")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"weights must be [K]=[{k}], got shape {weights.shape}")
        if stds.shape == (k,):
            stds = jnp.broadcast_to(stds[:, None], (k, d))
        if stds.shape != (k, d):
            raise ValueError(f"stds must be [K]=[{k}] or [K, d]=[{k}, {d}], got shape {stds.shape}")
        if not any(isinstance(a, jax.core.Tracer) for a in (weights, stds)):
            if bool(jnp.any(weights < 0)) or not bool(jnp.sum(weights) > 0):
                raise ValueError("weights must be nonnegative with a positive sum")
            if not bool(jnp.all(stds > 0)):
                raise ValueError("stds must be positive")
        self.weights, self.means, self.stds = weights, means, stds

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
        x = self._check_x(x)
        log_joint, _, _ = self._terms(x, jnp.ones((), x.dtype), jnp.zeros((), x.dtype))
        return logsumexp(log_joint, axis=-1)

    def score(self, x: Array) -> Array:
        """`grad_x log p_0(x)` for `x` `[B, d]`; returns `[B, d]`."""
        x = self._check_x(x)
        return self._score(x, jnp.ones((), x.dtype), jnp.zeros((), x.dtype))

    def _score(self, x: Array, alpha: Array, sigma: Array) -> Array:
        log_joint, resid, var = self._terms(x, alpha, sigma)
        w = jax.nn.softmax(log_joint, axis=-1)
        return -jnp.sum(w[..., None] * resid / var, axis=1)

    def sample(self, key: Array, n: int) -> Array:
        """Draw `n` samples; returns `[n, d]`."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self.log_weights, shape=(n,))
        z = jax.random.normal(k_noise, (n, self.dim), self.means.dtype)
        return self.means[comp] + self.stds[comp] * z

    def responsibilities(self, x: Array) -> Array:
        """Posterior component probabilities `w_k(x)` under `p_0`; `[B, K]`."""
        x = self._check_x(x)
        log_joint, _, _ = self._terms(x, jnp.ones((), x.dtype), jnp.zeros((), x.dtype))
        return jax.nn.softmax(log_joint, axis=-1)

    def marginal_log_prob(self, sde: SDE, x: Array, t: Array | float) -> Array:
        """`log p_t(x)` of the diffused mixture under `sde` (module docstring); returns `[B]`."""
        x = self._check_x(x)
        log_joint, _, _ = self._terms(x, sde.alpha(t), sde.sigma(t))
        return logsumexp(log_joint, axis=-1)

    def marginal_score(self, sde: SDE, x: Array, t: Array | float) -> Array:
        """Exact score `grad_x log p_t(x) = -sum_k w_k (x - alpha_t mu_k) / C_k(t)`; `[B, d]`."""
        x = self._check_x(x)
        return self._score(x, sde.alpha(t), sde.sigma(t))

    def denoiser(self, sde: SDE, x: Array, t: Array | float) -> Array:
        """Posterior mean `E[x_0 | x_t = x] = sum_k w_k [mu_k + alpha s_k^2 (x - alpha mu_k)/C_k]`.

        Returns `[B, d]`.
        """
        x = self._check_x(x)
        alpha = sde.alpha(t)
        log_joint, resid, var = self._terms(x, alpha, sde.sigma(t))
        w = jax.nn.softmax(log_joint, axis=-1)
        a = jnp.reshape(alpha, (-1, 1, 1))
        post_mean = self.means[None] + a * self.stds[None] ** 2 * resid / var
        return jnp.sum(w[..., None] * post_mean, axis=1)

    def marginal_sample(self, sde: SDE, key: Array, n: int, t: Array | float) -> Array:
        """Draw `x_t = alpha_t x_0 + sigma_t z` with `x_0 ~ p_0`; `t` scalar or `[n]`; `[n, d]`."""
        k0, kz = jax.random.split(key)
        x0 = self.sample(k0, n)
        mean, std = sde.marginal_prob(x0, t)
        z = jax.random.normal(kz, x0.shape, x0.dtype)
        return mean + jnp.reshape(std, (-1, 1)) * z

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


jax.tree_util.register_pytree_node(
    GaussianMixture, GaussianMixture.tree_flatten, GaussianMixture.tree_unflatten
)


def ring8(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equally weighted isotropic Gaussians at angles `2 pi k / 8` on a circle of `radius`."""
    angles = 2 * math.pi * jnp.arange(8) / 8
    means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    return GaussianMixture(jnp.full((8,), 1 / 8), means, jnp.full((8,), std))


def grid25(spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """A 5x5 grid of equally weighted isotropic Gaussians at `spacing * {-2, ..., 2}^2`."""
    ticks = spacing * (jnp.arange(5) - 2.0)
    gx, gy = jnp.meshgrid(ticks, ticks, indexing="ij")
    means = jnp.stack([gx.ravel(), gy.ravel()], axis=-1)
    return GaussianMixture(jnp.full((25,), 1 / 25), means, jnp.full((25,), std))
