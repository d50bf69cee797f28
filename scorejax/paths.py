"""Gaussian paths: the EDM and linear flow-matching forward processes, in the SDE family.

Every forward process of scorejax is a Gaussian path `x_t = alpha(t) x_0 + sigma(t) eps`,
`eps ~ N(0, I)`, summarised by its log-SNR `lambda(t) = log(alpha(t)^2 / sigma(t)^2)` (Kingma et
al. 2021, eq. 2; Kingma & Gao 2023). The `GaussianPath` protocol lists what every path exposes;
`scorejax.score_sdes.VPSDE`, `SubVPSDE` and `VESDE` satisfy it, and so do the two paths defined
here:

| class        | alpha(t) | sigma(t) | lambda(t)          | t(lambda)            | T (default) |
| ------------ | -------- | -------- | ------------------ | -------------------- | ----------- |
| `EDMPath`    | 1        | t        | -2 log t           | exp(-lambda / 2)     | 80          |
| `LinearPath` | 1 - t    | t        | 2 log((1 - t) / t) | sigmoid(-lambda / 2) | 1           |

`EDMPath` is Karras et al. 2022 (EDM) with `s(t) = 1`, `sigma(t) = t` (their eq. 4 and Table 1);
`LinearPath` is the conditional optimal-transport path of flow matching (Lipman et al. 2023,
eq. 22 with `sigma_min = 0`) and rectified flow (Liu et al. 2023), with `x_1` pure noise.

Both are `scorejax.sde.SDE` subclasses. For any Gaussian path the SDE `dx = f(t) x dt + g(t) dw`
with `f = d log alpha / dt` and `g^2 = d sigma^2 / dt - 2 f sigma^2 = -sigma^2 d lambda / dt` has
the same marginals, so these paths plug into everything written for SDEs: the Gaussian-mixture
oracle (`scorejax.analytic`), the samplers (`scorejax.sampling`), the likelihood
(`scorejax.likelihood`) and the distillation code. For the linear path `f = -1 / (1 - t)` and
`g^2 = 2 t / (1 - t)` blow up at `t = 1`; a score-based solver there needs `LinearPath(T=1 -
delta)`, whereas the velocity samplers of `scorejax.flow_matching` run to `t = 1` directly.

Shapes follow `scorejax.sde`: per-time coefficients have the shape of `t`.

Examples:
  >>> from scorejax.paths import EDMPath, LinearPath
  >>> path = LinearPath()
  >>> float(path.t_from_log_snr(path.log_snr(0.3)))  # doctest: +ELLIPSIS
  0.3...
  >>> float(EDMPath().sigma(2.5))
  2.5
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE
from scorejax.sde import SDE

Array = jax.Array
ArrayLike = jax.Array | float

__all__ = ["GaussianPath", "EDMPath", "LinearPath", "PATHS", "make_path"]


@runtime_checkable
class GaussianPath(Protocol):
    """What every forward process of the family exposes (all per-time, shape of `t`).

    `alpha(t)`, `log_alpha(t)`, `sigma(t)`; `log_snr(t) = log(alpha^2 / sigma^2)`; its inverse
    `t_from_log_snr(lambda)`; `dlog_snr_dt(t)`; `dalpha_dt(t)`, `dsigma_dt(t)`; the horizon `T`.

    Examples:
      >>> import jax.numpy as jnp
      >>> path: GaussianPath = LinearPath()  # alpha = 1 - t, sigma = t
      >>> float(path.log_snr(jnp.array(0.5)))  # log(alpha^2 / sigma^2)
      0.0
    """

    T: float

    def alpha(self, t: ArrayLike) -> Array: ...

    def log_alpha(self, t: ArrayLike) -> Array: ...

    def sigma(self, t: ArrayLike) -> Array: ...

    def log_snr(self, t: ArrayLike) -> Array: ...

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array: ...

    def dlog_snr_dt(self, t: ArrayLike) -> Array: ...

    def dalpha_dt(self, t: ArrayLike) -> Array: ...

    def dsigma_dt(self, t: ArrayLike) -> Array: ...


def _float(t: ArrayLike) -> Array:
    return jnp.asarray(t, dtype=jnp.result_type(t, float))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class EDMPath(SDE):
    """EDM's path (Karras et al. 2022, Sec. 2 and Table 1): `x_t = x_0 + t eps`, `t = sigma`.

    `alpha = 1`, `sigma(t) = t`, `lambda(t) = -2 log t`, `t(lambda) = exp(-lambda / 2)`,
    `d lambda / dt = -2 / t`. As an SDE: `f = 0`, `g(t) = sqrt(2 t)` (EDM eq. 6 with
    `sigma(t) = t`). Prior `N(0, T^2 I)`, `T = sigma_max` (80 in EDM). Units: `t` is the noise
    std in data units.

    Examples:
      >>> path = EDMPath(T=80.0)
      >>> float(path.log_snr(1.0)), float(path.diffusion(2.0))
      (-0.0, 2.0)
    """

    T: float = 80.0

    def __post_init__(self):
        if not self.T > 0:
            raise ValueError(f"T must be positive, got {self.T}")

    def log_alpha(self, t: ArrayLike) -> Array:
        return jnp.zeros_like(_float(t))

    def alpha(self, t: ArrayLike) -> Array:
        return jnp.ones_like(_float(t))

    def sigma(self, t: ArrayLike) -> Array:
        return _float(t)

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(2.0 * _float(t))

    def drift_coeff(self, t: ArrayLike) -> Array:
        return jnp.zeros_like(_float(t))

    @property
    def prior_std(self) -> float:
        return self.T

    def log_snr(self, t: ArrayLike) -> Array:
        return -2.0 * jnp.log(_float(t))

    def dlog_snr_dt(self, t: ArrayLike) -> Array:
        return -2.0 / _float(t)

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        return jnp.exp(-0.5 * _float(log_snr))

    def dalpha_dt(self, t: ArrayLike) -> Array:
        return jnp.zeros_like(_float(t))

    def dsigma_dt(self, t: ArrayLike) -> Array:
        return jnp.ones_like(_float(t))

    def _transition_var(self, t: Array, dt: Array) -> Array:
        # t^2 - (t - dt)^2 without the cancellation.
        return dt * (2.0 * t - dt)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LinearPath(SDE):
    """Linear flow-matching / rectified-flow path: `x_t = (1 - t) x_0 + t eps`, `t in [0, 1]`.

    `alpha = 1 - t`, `sigma = t`, `lambda(t) = 2 log((1 - t) / t)`, `t(lambda) = sigmoid(-lambda /
    2)`, `d lambda / dt = -2 / (t (1 - t))`. The conditional velocity is `eps - x_0` (Lipman et
    al. 2023, eq. 23; Liu et al. 2023, eq. 1). As an SDE: `f(t) = -1 / (1 - t)`,
    `g(t)^2 = 2 t / (1 - t)`. Prior `N(0, T^2 I)` (exact at `T = 1`, the default).

    `T` below 1 (e.g. `1 - 1e-3`) makes the score-based samplers and the likelihood usable: their
    drift `f x - g^2 s / 2` is singular at `t = 1`, where `alpha = 0`.

    Examples:
      >>> path = LinearPath()
      >>> float(path.alpha(0.25)), float(path.sigma(0.25)), float(path.log_snr(0.5))
      (0.75, 0.25, 0.0)
    """

    T: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.T <= 1.0:
            raise ValueError(f"need 0 < T <= 1 for the linear path, got {self.T}")

    def log_alpha(self, t: ArrayLike) -> Array:
        return jnp.log1p(-_float(t))

    def alpha(self, t: ArrayLike) -> Array:
        return 1.0 - _float(t)

    def sigma(self, t: ArrayLike) -> Array:
        return _float(t)

    def diffusion(self, t: ArrayLike) -> Array:
        t = _float(t)
        return jnp.sqrt(2.0 * t / (1.0 - t))

    def drift_coeff(self, t: ArrayLike) -> Array:
        return -1.0 / (1.0 - _float(t))

    @property
    def prior_std(self) -> float:
        return self.T

    def log_snr(self, t: ArrayLike) -> Array:
        t = _float(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def dlog_snr_dt(self, t: ArrayLike) -> Array:
        t = _float(t)
        return -2.0 / (t * (1.0 - t))

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        return jax.nn.sigmoid(-0.5 * _float(log_snr))

    def dalpha_dt(self, t: ArrayLike) -> Array:
        return jnp.full_like(_float(t), -1.0)

    def dsigma_dt(self, t: ArrayLike) -> Array:
        return jnp.ones_like(_float(t))

    def _log_alpha_increment(self, t: Array, dt: Array) -> Array:
        # log((1 - t) / (1 - t + dt)) = log1p(-dt / (1 - t + dt)), exact for tiny dt.
        return jnp.log1p(-dt / (1.0 - t + dt))

    def _transition_var(self, t: Array, dt: Array) -> Array:
        # t^2 - ((1 - t) / (1 - s))^2 s^2 = dt (t + s - 2 t s) / (1 - s)^2 with s = t - dt.
        s = t - dt
        return dt * (t + s - 2.0 * t * s) / (1.0 - s) ** 2


PATHS = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "edm": EDMPath,
    "linear": LinearPath,
}


def make_path(name: str, **kwargs) -> SDE:
    """Build a path of the family by name (`PATHS`: vp, subvp, ve, edm, linear).

    Keyword arguments go to the class (e.g. `beta_max`, `sigma_max`, `T`).

    Examples:
      >>> make_path("edm", T=80.0)
      EDMPath(T=80.0)
    """
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; expected one of {tuple(PATHS)}")
    return PATHS[name](**kwargs)
