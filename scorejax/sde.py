"""Forward diffusion SDEs of score-based generative modelling (Song et al., ICLR 2021).

Three processes, each `dx = f(x, t) dt + g(t) dw` on `t in [0, T]`, with the linear-Gaussian
transition `x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I)`:

| class      | f(x, t)        | g(t)^2             | alpha(t)   | sigma(t)                 |
| ---------- | -------------- | ------------------ | ---------- | ------------------------ |
| `VPSDE`    | -beta(t) x / 2 | beta(t)            | exp(la(t)) | sqrt(1 - alpha^2)        |
| `SubVPSDE` | -beta(t) x / 2 | beta(t)(1 - alpha^4) | exp(la(t)) | 1 - alpha^2            |
| `VESDE`    | 0              | d sigma(t)^2 / dt  | 1          | s_min (s_max / s_min)^t  |

with `beta(t) = beta_min + t (beta_max - beta_min)` and
`la(t) = log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2` (Song et al. 2021,
Sec. 3.4 and App. B). As in the reference code, the VE std is `sigma(t)` itself rather than the
exact `sqrt(sigma(t)^2 - sigma_min^2)`; training, sampling and the analytic oracle all use the same
convention, so they stay consistent with each other.

Shapes: `x` is `[B, ...]`; `t` is a scalar or a `[B]` vector (one time per example). Functions
returning per-time coefficients (`alpha`, `sigma`, the diffusion `g`) return arrays of `t`'s shape;
functions returning something shaped like `x` broadcast `t` over the trailing dimensions.

The SDE objects are frozen dataclasses registered as static pytrees (no leaves): they are hashable,
can be closed over or passed to `jax.jit` as ordinary or static arguments, and equal instances
never cause a retrace.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.Array | float

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "batch_broadcast"]


def batch_broadcast(c: Array, x: Array) -> Array:
    """Reshape a per-example coefficient `c` (shape `()` or `[B]`) so it broadcasts against `x`.

    Returns `c` with shape `()` or `[B, 1, ..., 1]` (`x.ndim` dims).
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
        r = jnp.exp(self.log_alpha(t) - self.log_alpha(t - dt))
        f = batch_broadcast(r - 1.0, x) * x
        return f, jnp.sqrt(jnp.maximum(self._transition_var(t, dt), 0.0))

    def alpha_ratio_sq(self, t: ArrayLike, dt: ArrayLike) -> Array:
        """`r^2 = (alpha(t) / alpha(t - dt))^2` of `discretize`; DDPM's `1 - beta_i` for VP.

        The Langevin corrector scales its step by it (score SDE code's `alpha_i`); 1 for VE.
        """
        t = jnp.asarray(t)
        return jnp.exp(2.0 * (self.log_alpha(t) - self.log_alpha(t - jnp.asarray(dt))))


def _register(cls):
    jax.tree_util.register_static(cls)
    return cls


class _LinearBetaSchedule:
    """`beta(t)` and `log alpha(t)` shared by VP and sub-VP."""

    beta_min: float
    beta_max: float
    T: float

    def __post_init__(self):
        if not (0 <= self.beta_min <= self.beta_max):
            raise ValueError(
                f"need 0 <= beta_min <= beta_max, got {self.beta_min}, {self.beta_max}"
            )
        if not self.T > 0:
            raise ValueError(f"T must be positive, got {self.T}")

    def beta(self, t: ArrayLike) -> Array:
        """`beta(t) = beta_min + t (beta_max - beta_min)`, shape of `t`."""
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: ArrayLike) -> Array:
        """`la(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2`, shape of `t`."""
        t = jnp.asarray(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coeff(self, t: ArrayLike) -> Array:
        """`c(t) = -beta(t) / 2`."""
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        """The prior is `N(0, I)`."""
        return 1.0


@_register
@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearBetaSchedule, SDE):
    """Variance-preserving SDE (Song et al. 2021, eq. 11): `dx = -beta x / 2 dt + sqrt(beta) dw`.

    `beta(t) = beta_min + t (beta_max - beta_min)`; `alpha(t) = exp(la(t))` with
    `la(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2`; `sigma(t) = sqrt(1 - alpha(t)^2)`,
    computed as `sqrt(-expm1(2 la(t)))` so small `t` keeps full relative precision. Prior
    `N(0, I)`.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def sigma(self, t: ArrayLike) -> Array:
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(self.beta(t))

    def _transition_var(self, t: Array, dt: Array) -> Array:
        # sigma_t^2 - r^2 sigma_s^2 = 1 - r^2 for VP; expm1 avoids cancellation at small dt.
        return -jnp.expm1(2.0 * (self.log_alpha(t) - self.log_alpha(t - dt)))


@_register
@dataclasses.dataclass(frozen=True)
class SubVPSDE(_LinearBetaSchedule, SDE):
    """Sub-VP SDE (Song et al. 2021, Sec. 3.4): `dx = -beta x / 2 dt + sqrt(beta (1 - alpha^4)) dw`.

    Same `beta(t)` and `alpha(t)` as `VPSDE`; the marginal std is `sigma(t) = 1 - alpha(t)^2 =
    -expm1(2 la(t))` (the variance is its square, always below the VP variance). Prior `N(0, I)`.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def sigma(self, t: ArrayLike) -> Array:
        return -jnp.expm1(2.0 * self.log_alpha(t))

    def diffusion(self, t: ArrayLike) -> Array:
        # g^2 = beta (1 - exp(-2 beta_min t - (beta_max - beta_min) t^2)) = beta (1 - alpha^4).
        return jnp.sqrt(-self.beta(t) * jnp.expm1(4.0 * self.log_alpha(t)))

    def _transition_var(self, t: Array, dt: Array) -> Array:
        log_r = self.log_alpha(t) - self.log_alpha(t - dt)
        return self.sigma(t) ** 2 - jnp.exp(2.0 * log_r) * self.sigma(t - dt) ** 2


@_register
@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE (Song et al. 2021, eq. 9): `dx = sqrt(d sigma(t)^2 / dt) dw`.

    `sigma(t) = sigma_min (sigma_max / sigma_min)^t`, `g(t) = sigma(t) sqrt(2 log(sigma_max /
    sigma_min))`, `alpha(t) = 1`. Prior `N(0, sigma_max^2 I)`.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if not self.T > 0:
            raise ValueError(f"T must be positive, got {self.T}")

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t: ArrayLike) -> Array:
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t: ArrayLike) -> Array:
        return self.sigma_min * jnp.exp(jnp.asarray(t) * self._log_ratio)

    def diffusion(self, t: ArrayLike) -> Array:
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def drift_coeff(self, t: ArrayLike) -> Array:
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _transition_var(self, t: Array, dt: Array) -> Array:
        # sigma_t^2 - sigma_{t-dt}^2 = sigma_t^2 (1 - exp(-2 dt log ratio)).
        return -(self.sigma(t) ** 2) * jnp.expm1(-2.0 * dt * self._log_ratio)
