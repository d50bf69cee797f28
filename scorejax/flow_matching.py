"""Flow matching / rectified flow on the linear path `x_t = (1 - t) x_0 + t eps`.

Lipman et al. 2023 (conditional flow matching with the optimal-transport path, `sigma_min = 0`)
and Liu et al. 2023 (rectified flow) train a velocity field `v_theta(x, t)` on the linear path
(`scorejax.paths.LinearPath`) by regressing the conditional velocity:

    L(theta) = E_{t, x_0, eps} || v_theta(x_t, t) - (eps - x_0) ||^2      (Lipman et al., eq. 23)

with `t` uniform on `(0, 1)` or logit-normal, `t = sigmoid(m + s u)`, `u ~ N(0, 1)` (Esser et al.
2024, Sec. 3.1). Samples solve `dx/dt = v(x, t)` from `t = 1` (`x_1 ~ N(0, I)`) to `t = 0`,
with Euler or Heun steps. The same ODE is the probability-flow ODE of the path, so the marginal
velocity is `v = eps_hat - x0_hat = (x - x0_hat) / t` and the score of the path is
`s = -(x + (1 - t) v) / t` (`score_from_velocity`), which lets a velocity model use
`scorejax.sampling`, `scorejax.likelihood` and `scorejax.distill` through a `LinearPath(T=1 -
delta)`.

A velocity model is any `velocity_fn(params, x, t) -> v` with `x` `[B, ...]`, `t` `[B]`.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> v = lambda params, x, t: x / t[:, None]  # exact velocity when the data is x_0 = 0
  >>> x, nfe = euler_sampler(v, None, jax.random.key(0), shape=(4, 2), num_steps=10)
  >>> bool(jnp.abs(x).max() < 1e-6), nfe
  (True, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scorejax._reduction import Reduction, reduce
from scorejax.parametrisation import convert, wrap
from scorejax.paths import LinearPath
from scorejax.sampling import SampleResult
from scorejax.sde import batch_broadcast

Array = jax.Array
VelocityFn = Callable[[Any, Array, Array], Array]
ScoreFn = Callable[[Any, Array, Array], Array]
DenoiserFn = Callable[[Any, Array, Array], Array]

TIME_DISTRIBUTIONS = ("logit_normal", "uniform")
LINEAR_PATH = LinearPath()
METHODS = ("euler", "heun")

__all__ = [
    "TIME_DISTRIBUTIONS",
    "LINEAR_PATH",
    "METHODS",
    "sample_time",
    "FMAux",
    "fm_loss",
    "integrate",
    "euler_sampler",
    "heun_sampler",
    "score_from_velocity",
    "velocity_from_score",
    "velocity_from_denoiser",
]


def sample_time(
    key: Array,
    n: int,
    *,
    kind: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    dtype=jnp.float32,
) -> Array:
    """Training times `[n]` in `(0, 1)`: `sigmoid(logit_mean + logit_std u)`, `u ~ N(0, 1)`, or
    `U(0, 1)` for `kind="uniform"`.

    Examples:
      >>> t = sample_time(jax.random.key(0), 5)
      >>> t.shape, bool(((t > 0) & (t < 1)).all())
      ((5,), True)
    """
    if kind == "logit_normal":
        return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (n,), dtype))
    if kind == "uniform":
        return jax.random.uniform(key, (n,), dtype)
    raise ValueError(f"unknown time distribution {kind!r}; expected one of {TIME_DISTRIBUTIONS}")


class FMAux(NamedTuple):
    """What the flow-matching loss reports besides the loss: the times `t` `[B]` it drew."""

    t: Array


def fm_loss(
    velocity_fn: VelocityFn,
    params: Any,
    x0: Array,
    key: Array,
    *,
    time_dist: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    reduction: Reduction = "mean",
) -> tuple[Array, FMAux]:
    """Conditional flow-matching loss on the linear path (Lipman et al. 2023, eq. 23).

    `t ~ time_dist` (`sample_time`), `eps ~ N(0, I)`, `x_t = (1 - t) x0 + t eps` and

        loss_i = || velocity_fn(params, x_t, t)_i - (eps_i - x0_i) ||^2,

    summed over the non-batch dims. In eps space this is the weight
    `1 / sigmoid(lambda / 2)^2 = 1 / (1 - t)^2` (`scorejax.weighting.target_scale`).

    Args:
      velocity_fn: `velocity_fn(params, x, t)`, `x` `[B, ...]`, `t` `[B]`.
      params: model parameters.
      x0: data `[B, ...]`.
      key: PRNG key (split into the times and the noise).
      time_dist, logit_mean, logit_std: see `sample_time`.
      reduction: `"mean"`, `"sum"` over the batch, or `"none"` (per example).

    Returns:
      `(loss, FMAux(t [B]))`; `loss` is `[B]` for `reduction="none"`.

    Examples:
      >>> v = lambda params, x, t: jnp.zeros_like(x)
      >>> loss, aux = fm_loss(v, None, jnp.zeros((16, 2)), jax.random.key(0), reduction="none")
      >>> loss.shape, aux.t.shape
      ((16,), (16,))
    """
    x0 = jnp.asarray(x0)
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, ...] with ndim >= 2, got {x0.shape}")
    k_t, k_eps = jax.random.split(key)
    t = sample_time(
        k_t,
        x0.shape[0],
        kind=time_dist,
        logit_mean=logit_mean,
        logit_std=logit_std,
        dtype=x0.dtype,
    )
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    tb = batch_broadcast(t, x0)
    v = velocity_fn(params, (1.0 - tb) * x0 + tb * eps, t)
    if v.shape != x0.shape:
        raise ValueError(f"velocity_fn returned shape {v.shape}, expected {x0.shape}")
    per_example = jnp.sum((v - (eps - x0)) ** 2, axis=tuple(range(1, x0.ndim)))
    return reduce(per_example, reduction), FMAux(t=t)


def _velocity(velocity_fn: VelocityFn, params: Any, x: Array, t: Array) -> Array:
    v = velocity_fn(params, x, jnp.full((x.shape[0],), t, x.dtype))
    if v.shape != x.shape:  # static shapes: checked while tracing
        raise ValueError(f"velocity_fn returned shape {v.shape} for x of shape {x.shape}")
    return v


def integrate(
    velocity_fn: VelocityFn,
    params: Any,
    x: Array,
    *,
    ts: Array,
    method: str = "heun",
) -> SampleResult:
    """Solve `dx/dt = v(x, t)` along the grid `ts` `[K]` (any order) with fixed steps.

    `euler`: `x += h v(x, t)`; `heun` (trapezoidal predictor-corrector): `x_e = x + h v(x, t)`,
    `x += h (v(x, t) + v(x_e, t + h)) / 2`, which evaluates `v` at every grid point, the last
    included. `x` `[B, ...]` at `ts[0]`. Returns `SampleResult(x at ts[-1], nfe)` with
    `nfe = K - 1` (Euler) or `2 (K - 1)` (Heun).

    Examples:
      >>> v = lambda params, x, t: -x
      >>> x, nfe = integrate(v, None, jnp.ones((1, 1)), ts=jnp.linspace(0.0, 1.0, 101))
      >>> round(float(x[0, 0]), 4), nfe  # exp(-1) = 0.3679
      (0.3679, 200)
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if ts.ndim != 1:
        raise ValueError(f"ts must be a vector, got shape {ts.shape}")
    ts = ts.astype(x.dtype)

    def step(x, t_pair):
        t_cur, t_next = t_pair
        h = t_next - t_cur
        v = _velocity(velocity_fn, params, x, t_cur)
        if method == "euler":
            return x + h * v, None
        v_next = _velocity(velocity_fn, params, x + h * v, t_next)
        return x + 0.5 * h * (v + v_next), None

    x, _ = jax.lax.scan(step, x, (ts[:-1], ts[1:]))
    return SampleResult(x, (1 if method == "euler" else 2) * (ts.shape[0] - 1))


def _check_sampler(shape: tuple[int, ...], num_steps: int) -> None:
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, ...) with at least one data dim, got {shape}")
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")


def euler_sampler(
    velocity_fn: VelocityFn,
    params: Any,
    key: Array,
    *,
    shape: tuple[int, ...],
    num_steps: int = 100,
    dtype=jnp.float32,
) -> SampleResult:
    """Euler sampling of the flow: `x_1 ~ N(0, I)`, then `num_steps` equal steps to `t = 0`.

    `t_i = 1 - i / N`; the velocity is never evaluated at `t = 0`. Returns
    `SampleResult(samples [B, ...], nfe = num_steps)`.

    Examples:
      >>> v = lambda params, x, t: jnp.zeros_like(x)
      >>> euler_sampler(v, None, jax.random.key(0), shape=(3, 2), num_steps=4).nfe
      4
    """
    _check_sampler(shape, num_steps)
    x = jax.random.normal(key, shape, dtype)
    ts = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)
    return integrate(velocity_fn, params, x, ts=ts, method="euler")


def heun_sampler(
    velocity_fn: VelocityFn,
    params: Any,
    key: Array,
    *,
    shape: tuple[int, ...],
    num_steps: int = 50,
    dtype=jnp.float32,
) -> SampleResult:
    """Heun sampling of the flow on `t_i = 1 - i / N`, with EDM's final Euler step.

    `x_1 ~ N(0, I)`; Heun steps from `t = 1` to `t = 1 / N`, then one Euler step to `t = 0`
    (as EDM Algorithm 1 does; `v` at `t = 0` needs `x0_hat` there, which velocities converted
    from eps or score predictions do not have). Returns `SampleResult(samples, nfe = 2 num_steps -
    1)`.

    Examples:
      >>> v = lambda params, x, t: jnp.zeros_like(x)
      >>> heun_sampler(v, None, jax.random.key(0), shape=(3, 2), num_steps=4).nfe
      7
    """
    _check_sampler(shape, num_steps)
    ts = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)
    x = jax.random.normal(key, shape, dtype)
    x, nfe = integrate(velocity_fn, params, x, ts=ts[:-1], method="heun")
    x, nfe_last = integrate(velocity_fn, params, x, ts=ts[-2:], method="euler")
    return SampleResult(x, nfe + nfe_last)


def score_from_velocity(velocity_fn: VelocityFn, *, path: LinearPath = LINEAR_PATH) -> ScoreFn:
    """Score model of the linear path from a velocity model: `s = -(x + (1 - t) v) / t`.

    `scorejax.parametrisation.wrap(velocity_fn, path=path, source="velocity", target="score")`.
    Pass the result with `LinearPath(T=1 - delta)` to `scorejax.likelihood.log_likelihood` or
    `scorejax.sampling` (their drift is singular at `t = 1`).

    Examples:
      >>> v = lambda params, x, t: jnp.zeros_like(x)
      >>> s = score_from_velocity(v)
      >>> float(s(None, jnp.ones((1, 1)), jnp.array([0.5]))[0, 0])
      -2.0
    """
    return wrap(velocity_fn, path=path, source="velocity", target="score")


def velocity_from_score(score_fn: ScoreFn, *, path: LinearPath = LINEAR_PATH) -> VelocityFn:
    """Velocity of the linear path from a score model: `v = -(x + t s) / (1 - t)`.

    `scorejax.parametrisation.wrap(score_fn, path=path, source="score", target="velocity")`;
    singular at `t = 1`.

    Examples:
      >>> s = lambda params, x, t: -x
      >>> v = velocity_from_score(s)
      >>> float(v(None, jnp.ones((1, 1)), jnp.array([0.5]))[0, 0])
      -1.0
    """
    return wrap(score_fn, path=path, source="score", target="velocity")


def velocity_from_denoiser(denoiser_fn: DenoiserFn, *, sigma_max: float = 80.0) -> VelocityFn:
    """Linear-path velocity `v = eps_hat - x0_hat` of an EDM denoiser, defined up to `t = 1`.

    The linear path's `(x, t)` is `(x / (1 - t), t / (1 - t))` in EDM coordinates
    (`scorejax.edm`), which is infinite at `t = 1`, where the FM samplers start. Above
    `t_c = sigma_max / (1 + sigma_max)` (EDM noise level `sigma_max`) the denoiser is read at
    `t_c`: `x0_hat = D(x / (1 - t_c); sigma_max)`, then `v = (x - x0_hat) / t` at the true `t`
    (`scorejax.parametrisation.convert`, x0 -> velocity). Exact up to `t_c`; above it, where
    the posterior mean is `E x_0 + Cov(x_0) x (1 - t) / t^2` to first order, `x0_hat` is off by
    at most `Cov(x_0) x (1 - t_c) / t_c^2 ~ Var(x_0) / sigma_max` of `|x|` (2.5% for a ring of
    radius 2 at 80), and `v` by that over `t`. `denoiser_fn(params, x, sigma)` with `x`
    `[B, ...]`, `sigma` `[B]`; returns `velocity_fn(params, x, t)` (`t` scalar or `[B]`).

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)  # the data is a point mass at 0
      >>> v = velocity_from_denoiser(d)
      >>> float(v(None, jnp.ones((1, 1)), jnp.array([0.5]))[0, 0])  # (x - 0) / t
      2.0
    """
    t_cap = sigma_max / (1.0 + sigma_max)

    def velocity_fn(params: Any, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        t_eval = jnp.minimum(t, t_cap)
        scale = batch_broadcast(1.0 - t_eval, x)
        x0 = denoiser_fn(params, x / scale, t_eval / (1.0 - t_eval))
        return convert(x, t, x0, path=LINEAR_PATH, source="x0", target="velocity")

    return velocity_fn
