"""The forward processes of score-based modelling: one interface, `SDE`, for a Gaussian path.

Every process is an SDE `dx = f(x, t) dt + g(t) dw` on `t in [0, T]` with the linear-Gaussian
transition `x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I)` and `f(x, t) = c(t) x`. A subclass gives
`log alpha(t)`, `sigma(t)`, `g(t)`, `c(t)`, the prior std and the one-step transition variance;
`SDE` derives the rest: the forward and reverse-time drifts (Song et al., ICLR 2021, eqs. 6 and
13), the exact one-step discretisation, the prior, and the Gaussian-path view of Kingma et al.
(2021, "Variational Diffusion Models"): the log-SNR `lambda(t) = log(alpha(t)^2 / sigma(t)^2)`
(`log_snr`), which decreases in `t`, its derivative (`dlog_snr_dt`), its inverse
(`t_from_log_snr`) and the time derivatives of `alpha` and `sigma` (`dalpha_dt`, `dsigma_dt`).
For any such path the SDE with the same marginals has `f(x, t) = (d log alpha / dt) x` and
`g(t)^2 = -sigma(t)^2 d lambda / dt`.

The processes: VP, sub-VP and VE in `scorejax.score_sdes`; the EDM and linear flow-matching
paths in `scorejax.paths`.

Shapes: `x` is `[B, ...]`; `t` is a scalar or a `[B]` vector (one time per example). Functions
returning per-time coefficients (`alpha`, `sigma`, the diffusion `g`) return arrays of `t`'s shape;
functions returning something shaped like `x` broadcast `t` over the trailing dimensions
(`batch_broadcast`).

The processes are frozen dataclasses registered as static pytrees (no leaves, `register`): they
are hashable, can be closed over or passed to `jax.jit` as ordinary or static arguments, and
equal instances never cause a retrace.
"""

from __future__ import annotations

import abc
import math

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.Array | float

__all__ = ["SDE", "batch_broadcast", "register"]


def batch_broadcast(c: Array, x: Array) -> Array:
    """Reshape a per-example coefficient `c` (shape `()` or `[B]`) so it broadcasts against `x`.

    Returns `c` with shape `()` or `[B, 1, ..., 1]` (`x.ndim` dims).

    Examples:
      >>> batch_broadcast(jnp.ones(4), jnp.zeros((4, 8, 8, 3))).shape
      (4, 1, 1, 1)
    """
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    if c.ndim != 1 or (x.ndim >= 1 and c.shape[0] != x.shape[0]):
        raise ValueError(
            f"t must be a scalar or a [B] vector matching x's batch size; got t shape {c.shape} "
            f"for x shape {x.shape}"
        )
    return c.reshape(c.shape + (1,) * (x.ndim - 1))


def _sum_non_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


class SDE(abc.ABC):
    """Shared behaviour of the linear SDEs; subclasses define the schedule.

    A subclass gives `log_alpha(t)`, `sigma(t)`, `diffusion(t)` (= g(t)), `drift_coeff(t)` (the
    scalar `c(t)` in `f(x, t) = c(t) x`), `prior_std`, `T`, and the one-step transition variance.
    The Gaussian-path methods (`log_snr`, `dlog_snr_dt`, `t_from_log_snr`, `dalpha_dt`,
    `dsigma_dt`) have generic defaults (automatic differentiation, bisection) that every class of
    this library overrides with closed forms.

    Examples:
      >>> from scorejax.score_sdes import VESDE
      >>> sde = VESDE(sigma_min=0.01, sigma_max=1.0)
      >>> mean, std = sde.marginal_prob(jnp.ones((2, 3)), jnp.array([0.0, 1.0]))
      >>> print(mean[:, 0], std)  # alpha = 1; sigma(0) = sigma_min, sigma(T) = sigma_max
      [1. 1.] [0.01 1.  ]
      >>> print(sde.prior_logp(jnp.zeros((1, 2))))  # log N(0; 0, sigma_max^2 I_2) = -log(2 pi)
      [-1.8379]
      >>> f, g = sde.discretize(jnp.ones((1, 2)), jnp.array([0.5]), 0.1)
      >>> f.shape, g.shape
      ((1, 2), (1,))
    """

    T: float

    @abc.abstractmethod
    def log_alpha(self, t: ArrayLike) -> Array:
        """`log alpha(t)`, shape of `t`."""

    @abc.abstractmethod
    def sigma(self, t: ArrayLike) -> Array:
        """Std `sigma(t)` of `x_t | x_0`, shape of `t`."""

    @abc.abstractmethod
    def diffusion(self, t: ArrayLike) -> Array:
        """Diffusion coefficient `g(t)`, shape of `t`."""

    @abc.abstractmethod
    def drift_coeff(self, t: ArrayLike) -> Array:
        """`c(t)` with `f(x, t) = c(t) x`, shape of `t`."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Std of the isotropic Gaussian prior `p_T`."""

    @abc.abstractmethod
    def _transition_var(self, t: Array, dt: Array) -> Array:
        """Variance of `x_t | x_{t - dt}`, shape of `t`."""

    # Derived quantities.
    def alpha(self, t: ArrayLike) -> Array:
        """Mean coefficient `alpha(t)` of `x_t | x_0`, shape of `t`."""
        return jnp.exp(self.log_alpha(t))

    def log_snr(self, t: ArrayLike) -> Array:
        """Log signal-to-noise ratio `lambda(t) = log(alpha(t)^2 / sigma(t)^2)`, shape of `t`.

        Kingma et al. 2021 (VDM), eq. (2). Decreasing in `t`; dimensionless (nats).

        Examples:
          >>> from scorejax.score_sdes import VPSDE
          >>> sde = VPSDE()
          >>> lam = sde.log_snr(jnp.array([0.1, 0.5]))
          >>> [round(float(t), 6) for t in sde.t_from_log_snr(lam)]
          [0.1, 0.5]
        """
        return 2.0 * (self.log_alpha(t) - jnp.log(self.sigma(t)))

    def dlog_snr_dt(self, t: ArrayLike) -> Array:
        """`d lambda / dt` (negative), shape of `t`; generic default by forward-mode autodiff."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, float))
        return jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))[1]

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Inverse of `log_snr`: the `t` with `lambda(t) = log_snr`, shape of `log_snr`.

        Generic default: 60 bisection halvings on `[0, T]` (results outside are clipped to the
        ends). The library's processes override it with a closed form.

        Examples:
          >>> from scorejax.score_sdes import VESDE
          >>> round(float(VESDE().t_from_log_snr(-2.0 * math.log(1.0))), 4)  # sigma(t) = 1
          0.5407
        """
        lam = jnp.asarray(log_snr, dtype=jnp.result_type(log_snr, float))
        lo = jnp.zeros_like(lam)
        hi = jnp.full_like(lam, self.T)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            # lambda decreases in t: a mid with lambda(mid) > target lies left of the root.
            left = self.log_snr(mid) > lam
            return jnp.where(left, mid, lo), jnp.where(left, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 60, body, (lo, hi))
        return 0.5 * (lo + hi)

    def dalpha_dt(self, t: ArrayLike) -> Array:
        """`d alpha / dt = c(t) alpha(t)`, shape of `t`."""
        return self.drift_coeff(t) * self.alpha(t)

    def dsigma_dt(self, t: ArrayLike) -> Array:
        """`d sigma / dt = c(t) sigma + g(t)^2 / (2 sigma)` (variance ODE), shape of `t`."""
        sigma = self.sigma(t)
        return self.drift_coeff(t) * sigma + self.diffusion(t) ** 2 / (2.0 * sigma)

    def _log_alpha_increment(self, t: Array, dt: Array) -> Array:
        """`log alpha(t) - log alpha(t - dt)`, shape of `t`; subclasses avoid the cancellation."""
        return self.log_alpha(t) - self.log_alpha(t - dt)

    def sde(self, x: Array, t: ArrayLike) -> tuple[Array, Array]:
        """Forward SDE coefficients: `(f(x, t), g(t))` with `f` shaped like `x`, `g` like `t`."""
        return batch_broadcast(self.drift_coeff(t), x) * x, self.diffusion(t)

    def marginal_prob(self, x: Array, t: ArrayLike) -> tuple[Array, Array]:
        """Transition kernel `x_t | x_0 = x ~ N(mean, std^2 I)`.

        Returns `(mean, std)`: `mean = alpha(t) x` shaped like `x`; `std = sigma(t)` shaped like
        `t`.
        """
        return batch_broadcast(self.alpha(t), x) * x, self.sigma(t)

    def prior_sample(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draw from the prior `p_T = N(0, prior_std^2 I)`; returns an array of `shape`."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z: Array) -> Array:
        """Log density of the prior `N(0, prior_std^2 I)` per example.

        `log p_T(z) = -D/2 log(2 pi s^2) - ||z||^2 / (2 s^2)`, summed over the non-batch dims of
        `z` (`[B, ...]`); returns `[B]`.
        """
        d = math.prod(z.shape[1:])
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * _sum_non_batch(z**2) / s2

    def reverse_sde_drift(self, score: Array, x: Array, t: ArrayLike) -> Array:
        """Drift of the reverse-time SDE (Song et al. 2021, eq. (6)).

        `dx = [f(x, t) - g(t)^2 score] dt + g(t) dw_bar`, run from `T` to `0`. `score` is the value
        of `grad_x log p_t(x)` at `(x, t)`, shaped like `x`. Returns the drift, shaped like `x`.
        """
        f, g = self.sde(x, t)
        return f - batch_broadcast(g**2, x) * score

    def probability_flow_drift(self, score: Array, x: Array, t: ArrayLike) -> Array:
        """Velocity of the probability-flow ODE (Song et al. 2021, eq. (13)).

        `dx/dt = f(x, t) - g(t)^2 score / 2`; shaped like `x`.
        """
        f, g = self.sde(x, t)
        return f - 0.5 * batch_broadcast(g**2, x) * score

    def discretize(self, x: Array, t: ArrayLike, dt: ArrayLike) -> tuple[Array, Array]:
        """Exact one-step forward transition from `t - dt` to `t`, as `(f_i, G_i)`.

        `x_t = x_{t-dt} + f_i + G_i z` with `f_i = (r - 1) x`, `r = alpha(t) / alpha(t - dt)` and
        `G_i^2 = sigma(t)^2 - r^2 sigma(t - dt)^2`. For VP this is DDPM's `f = (sqrt(1 - beta_i)
        - 1) x`, `G = sqrt(beta_i)` and for VE SMLD's `f = 0`, `G = sqrt(sigma_i^2 - sigma_{i-1}^2)`
        (Song et al. 2021, appendix E), with continuous rather than tabulated noise levels. The
        reverse-diffusion predictor uses it. Returns `f_i` shaped like `x` and `G_i` like `t`.
        """
        t = jnp.asarray(t)
        dt = jnp.asarray(dt)
        f = batch_broadcast(jnp.expm1(self._log_alpha_increment(t, dt)), x) * x
        return f, jnp.sqrt(jnp.maximum(self._transition_var(t, dt), 0.0))

    def alpha_ratio_sq(self, t: ArrayLike, dt: ArrayLike) -> Array:
        """`r^2 = (alpha(t) / alpha(t - dt))^2` of `discretize`; DDPM's `1 - beta_i` for VP.

        The Langevin corrector scales its step by it (score SDE code's `alpha_i`); 1 for VE.
        """
        t = jnp.asarray(t)
        return jnp.exp(2.0 * self._log_alpha_increment(t, jnp.asarray(dt)))


def register(cls: type) -> type:
    """Register a process class as a static pytree (no leaves; hashable, never retraces).

    Examples:
      >>> from scorejax.score_sdes import VPSDE
      >>> jax.tree.leaves(VPSDE())  # registered by `register`: no leaves
      []
    """
    jax.tree_util.register_static(cls)
    return cls
