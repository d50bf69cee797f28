"""The three forward SDEs of score-based generative modelling (Song et al., ICLR 2021).

Each is `dx = f(x, t) dt + g(t) dw` on `t in [0, T]`, with the linear-Gaussian transition
`x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I)`:

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

All three implement `scorejax.sde.SDE` (drifts, discretisation, prior, log-SNR) with closed forms
for the log-SNR, its derivative and its inverse, and keep full relative precision at small `t`
and small steps (`expm1`, `log1p`). They are frozen dataclasses registered as static pytrees.

Examples:
  >>> sde = VPSDE()
  >>> round(float(sde.sigma(1.0)), 4), float(VESDE().prior_std)
  (1.0, 50.0)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from scorejax.sde import SDE, register

Array = jax.Array
ArrayLike = jax.Array | float

__all__ = ["VPSDE", "SubVPSDE", "VESDE"]


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


@register
@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearBetaSchedule, SDE):
    """Variance-preserving SDE (Song et al. 2021, eq. 11): `dx = -beta x / 2 dt + sqrt(beta) dw`.

    `beta(t) = beta_min + t (beta_max - beta_min)`; `alpha(t) = exp(la(t))` with
    `la(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2`; `sigma(t) = sqrt(1 - alpha(t)^2)`,
    computed as `sqrt(-expm1(2 la(t)))` so small `t` keeps full relative precision. Prior
    `N(0, I)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> sde = VPSDE()
      >>> t = jnp.array([0.5])
      >>> print(sde.alpha(t) ** 2 + sde.sigma(t) ** 2)  # variance preserving
      [1.]
      >>> print(sde.t_from_log_snr(sde.log_snr(t)))
      [0.5]
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


@register
@dataclasses.dataclass(frozen=True)
class SubVPSDE(_LinearBetaSchedule, SDE):
    """Sub-VP SDE (Song et al. 2021, Sec. 3.4): `dx = -beta x / 2 dt + sqrt(beta (1 - alpha^4)) dw`.

    Same `beta(t)` and `alpha(t)` as `VPSDE`; the marginal std is `sigma(t) = 1 - alpha(t)^2 =
    -expm1(2 la(t))` (the variance is its square, always below the VP variance). Prior `N(0, I)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> t = jnp.array([0.5])
      >>> bool(SubVPSDE().sigma(t) ** 2 < VPSDE().sigma(t) ** 2)
      True
      >>> print(SubVPSDE().t_from_log_snr(SubVPSDE().log_snr(t)))
      [0.5]
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


@register
@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE (Song et al. 2021, eq. 9): `dx = sqrt(d sigma(t)^2 / dt) dw`.

    `sigma(t) = sigma_min (sigma_max / sigma_min)^t`, `g(t) = sigma(t) sqrt(2 log(sigma_max /
    sigma_min))`, `alpha(t) = 1`. Prior `N(0, sigma_max^2 I)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> sde = VESDE(sigma_min=0.01, sigma_max=1.0)
      >>> print(sde.sigma(jnp.array([0.0, 0.5, 1.0])))  # geometric from sigma_min to sigma_max
      [0.01 0.1  1.  ]
      >>> print(sde.alpha(jnp.array([0.5])))
      [1.]
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
