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

Every process is also a Gaussian path in the sense of Kingma et al. (2021, "Variational
Diffusion Models"): it exposes the log-SNR `lambda(t) = log(alpha(t)^2 / sigma(t)^2)`
(`log_snr`), which decreases in `t`, its derivative (`dlog_snr_dt`), its inverse
(`t_from_log_snr`, in closed form for all three) and the time derivatives of `alpha` and `sigma`
(`dalpha_dt`, `dsigma_dt`). For any such path the SDE with the same marginals has
`f(x, t) = (d log alpha / dt) x` and `g(t)^2 = -sigma(t)^2 d lambda / dt`, which is how the EDM and
flow-matching paths of `scorejax.paths` join this family.

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
    The Gaussian-path methods (`log_snr`, `dlog_snr_dt`, `t_from_log_snr`, `dalpha_dt`,
    `dsigma_dt`) have generic defaults (automatic differentiation, bisection) that every class of
    this library overrides with closed forms.
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

    def dalpha_dt(self, t: ArrayLike) -> Array:
        """`d alpha / dt = -beta(t) alpha(t) / 2`, shape of `t`."""
        return -0.5 * self.beta(t) * self.alpha(t)

    def _log_alpha_increment(self, t: Array, dt: Array) -> Array:
        # la(t) - la(t - dt) = -dt [(beta_max - beta_min)(2 t - dt) / 4 + beta_min / 2], exactly:
        # no difference of two nearly equal numbers, so tiny dt keeps full relative precision.
        return -dt * (0.25 * (self.beta_max - self.beta_min) * (2.0 * t - dt) + 0.5 * self.beta_min)

    def _t_from_log_alpha(self, log_alpha: Array) -> Array:
        # Root t >= 0 of (b_d / 4) t^2 + (b_min / 2) t + la = 0, written as
        # t = -2 la / (b_min / 2 + sqrt(b_min^2 / 4 - b_d la)) so that small t does not cancel.
        b_d = self.beta_max - self.beta_min
        half_b_min = 0.5 * self.beta_min
        return -2.0 * log_alpha / (half_b_min + jnp.sqrt(half_b_min**2 - b_d * log_alpha))

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

    def log_snr(self, t: ArrayLike) -> Array:
        """`lambda(t) = 2 la(t) - log(1 - exp(2 la(t)))`, with `expm1` for small `t`."""
        la = self.log_alpha(t)
        return 2.0 * la - jnp.log(-jnp.expm1(2.0 * la))

    def dlog_snr_dt(self, t: ArrayLike) -> Array:
        """`d lambda / dt = -beta(t) / sigma(t)^2 = beta(t) / expm1(2 la(t))`."""
        return self.beta(t) / jnp.expm1(2.0 * self.log_alpha(t))

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Closed form: `alpha^2 = sigmoid(lambda)`, so `la = -softplus(-lambda) / 2`, and `t`
        is the nonnegative root of the quadratic `la(t) = la`."""
        lam = jnp.asarray(log_snr, dtype=jnp.result_type(log_snr, float))
        return self._t_from_log_alpha(-0.5 * jax.nn.softplus(-lam))

    def dsigma_dt(self, t: ArrayLike) -> Array:
        """`d sigma / dt = beta(t) alpha(t)^2 / (2 sigma(t))`."""
        return 0.5 * self.beta(t) * jnp.exp(2.0 * self.log_alpha(t)) / self.sigma(t)

    def _transition_var(self, t: Array, dt: Array) -> Array:
        # sigma_t^2 - r^2 sigma_s^2 = 1 - r^2 for VP; expm1 avoids cancellation at small dt.
        return -jnp.expm1(2.0 * self._log_alpha_increment(t, dt))


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

    def log_snr(self, t: ArrayLike) -> Array:
        """`lambda(t) = 2 la(t) - 2 log(1 - exp(2 la(t)))`, with `expm1` for small `t`."""
        la = self.log_alpha(t)
        return 2.0 * la - 2.0 * jnp.log(-jnp.expm1(2.0 * la))

    def dlog_snr_dt(self, t: ArrayLike) -> Array:
        """`d lambda / dt = -beta (1 + alpha^2) / (1 - alpha^2)`."""
        la = self.log_alpha(t)
        return self.beta(t) * (1.0 + jnp.exp(2.0 * la)) / jnp.expm1(2.0 * la)

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Closed form. With `u = alpha^2`, `e^lambda = u / (1 - u)^2` is a quadratic in `u`;
        its root in `(0, 1)` is `u = 2 e^lambda / (2 e^lambda + 1 + sqrt(4 e^lambda + 1))`.

        For `lambda < 0` this is used as written (`log u`); for `lambda >= 0` the complement
        `1 - u = (q^2 + q r) / (2 + q^2 + q r)`, `q = e^(-lambda / 2)`, `r = sqrt(4 + q^2)`, goes
        through `log1p(-(1 - u))`, so both tails keep full precision. Then `la = log(u) / 2`
        and `t` is the root of the same quadratic in `t` as for VP.
        """
        lam = jnp.asarray(log_snr, dtype=jnp.result_type(log_snr, float))
        neg = jnp.minimum(lam, 0.0)
        e = jnp.exp(neg)
        log_u_neg = math.log(2.0) + neg - jnp.log(2.0 * e + 1.0 + jnp.sqrt(4.0 * e + 1.0))
        q = jnp.exp(-0.5 * jnp.maximum(lam, 0.0))
        qr = q * jnp.sqrt(4.0 + q**2)
        log_u_pos = jnp.log1p(-(q**2 + qr) / (2.0 + q**2 + qr))
        log_u = jnp.where(lam < 0.0, log_u_neg, log_u_pos)
        return self._t_from_log_alpha(0.5 * log_u)

    def dsigma_dt(self, t: ArrayLike) -> Array:
        """`d sigma / dt = -2 alpha alpha' = beta(t) alpha(t)^2`."""
        return self.beta(t) * jnp.exp(2.0 * self.log_alpha(t))

    def _transition_var(self, t: Array, dt: Array) -> Array:
        # With A = alpha_t^2, B = alpha_s^2 (s = t - dt): (1 - A)^2 - (A / B)(1 - B)^2
        # = (1 - A / B)(1 - A B). Both factors are expm1's of exact exponents, so the variance
        # keeps full relative precision however small dt is (the difference form cancels).
        inc = self._log_alpha_increment(t, dt)
        la_t = self.log_alpha(t)
        return jnp.expm1(2.0 * inc) * jnp.expm1(4.0 * la_t - 2.0 * inc)


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

    def log_snr(self, t: ArrayLike) -> Array:
        """`lambda(t) = -2 log sigma(t) = -2 (log sigma_min + t log(sigma_max / sigma_min))`."""
        return -2.0 * (math.log(self.sigma_min) + jnp.asarray(t) * self._log_ratio)

    def dlog_snr_dt(self, t: ArrayLike) -> Array:
        """`d lambda / dt = -2 log(sigma_max / sigma_min)`, constant."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, float))
        return jnp.full_like(t, -2.0 * self._log_ratio)

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Closed form `t = (-lambda / 2 - log sigma_min) / log(sigma_max / sigma_min)`."""
        lam = jnp.asarray(log_snr, dtype=jnp.result_type(log_snr, float))
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    def dalpha_dt(self, t: ArrayLike) -> Array:
        """`0`: the VE path does not scale the data."""
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(t, float)))

    def dsigma_dt(self, t: ArrayLike) -> Array:
        """`d sigma / dt = sigma(t) log(sigma_max / sigma_min)`."""
        return self.sigma(t) * self._log_ratio

    def _transition_var(self, t: Array, dt: Array) -> Array:
        # sigma_t^2 - sigma_{t-dt}^2 = sigma_t^2 (1 - exp(-2 dt log ratio)).
        return -(self.sigma(t) ** 2) * jnp.expm1(-2.0 * dt * self._log_ratio)
