"""Samplers for the reverse-time SDE (Song et al. 2021, Sec. 4), written with `lax.scan`.

Every sampler takes a score model `score_fn(params, x, t)` (`x` `[B, ...]`, `t` `[B]`), its
params and a PRNG key, then keyword-only the SDE, the static sample `shape = (B, ...)` and its
options, and returns a `SampleResult(samples, nfe)`: the samples `[B, ...]` and the number of
score evaluations (a Python int, known before running, for the fixed-step samplers). It unpacks as
the pair `samples, nfe = ...`. All are pure, and jit-able with `score_fn`, `sde`, `shape` and the
step counts static.

The time grid is `t_i = T - i (T - t_eps) / N`, `i = 0..N`; step `i` moves the state from `t_i`
to `t_{i+1}` using the score at `t_i`, so the last sample sits at `t_eps`. With `denoise=True` the
last step adds no noise (the score SDE code's "noise removal"), which removes the final
`O(sqrt(dt))` jitter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scorejax.ode import integrate
from scorejax.sde import SDE, batch_broadcast

Array = jax.Array
ScoreFn = Callable[[Any, Array, Array], Array]

__all__ = [
    "SampleResult",
    "euler_maruyama",
    "predictor_corrector",
    "langevin_corrector_step",
    "probability_flow_ode",
    "time_grid",
]


class SampleResult(NamedTuple):
    """A sampler's result: `samples` `[B, ...]` and `nfe`, the number of model evaluations.

    `nfe` is a Python int for fixed-step samplers and an int32 scalar array for adaptive ones.
    """

    samples: Array
    nfe: int | Array


def _check(shape: tuple[int, ...], num_steps: int, t_eps: float, sde: SDE) -> None:
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, ...) with at least one data dim, got {shape}")
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not (0 < t_eps < sde.T):
        raise ValueError(f"t_eps must satisfy 0 < t_eps < T={sde.T}, got {t_eps}")


def _score(score_fn: ScoreFn, params: Any, x: Array, t: Array) -> Array:
    score = score_fn(params, x, t)
    if score.shape != x.shape:  # static shapes: checked while tracing
        raise ValueError(f"score_fn returned shape {score.shape} for x of shape {x.shape}")
    return score


def time_grid(num_steps: int, *, sde: SDE, t_eps: float, dtype=jnp.float32) -> Array:
    """The decreasing grid `t_i = T - i (T - t_eps) / num_steps`, `i = 0..num_steps`; `[N + 1]`.

    Examples:
      >>> from scorejax.score_sdes import VPSDE
      >>> print(time_grid(4, sde=VPSDE(), t_eps=0.2))
      [1.  0.8 0.6 0.4 0.2]
    """
    return jnp.linspace(sde.T, t_eps, num_steps + 1, dtype=dtype)


def _step_keys(key: Array, num_steps: int) -> Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_steps))


def _reverse_scan(
    update: Callable[[Array, Array, Array, Array], tuple[Array, Array]],
    key: Array,
    *,
    sde: SDE,
    shape: tuple[int, ...],
    num_steps: int,
    t_eps: float,
    denoise: bool,
    dtype,
) -> Array:
    """Run `update(x, t_i, h, key_i) -> (x_mean, noise)` down `time_grid` from `x_T ~ p_T`.

    Each step sets `x <- x_mean + noise`, except the last with `denoise`, which keeps `x_mean`.
    """
    k_prior, k_steps = jax.random.split(key)
    ts = time_grid(num_steps, sde=sde, t_eps=t_eps, dtype=dtype)

    def step(x, inputs):
        t, t_next, k, is_last = inputs
        x_mean, noise = update(x, t, t - t_next, k)
        return jnp.where(jnp.logical_and(is_last, denoise), x_mean, x_mean + noise), None

    is_last = jnp.arange(num_steps) == num_steps - 1
    steps = (ts[:-1], ts[1:], _step_keys(k_steps, num_steps), is_last)
    x, _ = jax.lax.scan(step, sde.prior_sample(k_prior, shape, dtype), steps)
    return x


def euler_maruyama(
    score_fn: ScoreFn,
    params: Any,
    key: Array,
    *,
    sde: SDE,
    shape: tuple[int, ...],
    num_steps: int,
    t_eps: float = 1e-3,
    denoise: bool = True,
    dtype=jnp.float32,
) -> SampleResult:
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6).

    From `x_T ~ p_T`, for `i = 0..N-1` with `h = t_i - t_{i+1}`:
    `x <- x - [f(x, t_i) - g(t_i)^2 s(x, t_i)] h + g(t_i) sqrt(h) z`, `z ~ N(0, I)`.

    Returns `SampleResult(samples [B, ...], nfe = num_steps)`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> standard_normal = lambda p, x, t: -x  # the score of N(0, I), the VP SDE's stationary law
      >>> samples, nfe = euler_maruyama(standard_normal, None, jax.random.key(0), sde=VPSDE(),
      ...                               shape=(4, 2), num_steps=5)
      >>> samples.shape, nfe
      ((4, 2), 5)
    """
    _check(shape, num_steps, t_eps, sde)

    def update(x, t, h, k):
        tb = jnp.full((shape[0],), t, dtype)
        x_mean = x - sde.reverse_sde_drift(_score(score_fn, params, x, tb), x, tb) * h
        return x_mean, sde.diffusion(t) * jnp.sqrt(h) * jax.random.normal(k, shape, dtype)

    x = _reverse_scan(update, key, sde=sde, shape=shape, num_steps=num_steps, t_eps=t_eps,
                      denoise=denoise, dtype=dtype)
    return SampleResult(x, num_steps)


def langevin_corrector_step(
    score_fn: ScoreFn,
    params: Any,
    x: Array,
    key: Array,
    *,
    sde: SDE,
    t: Array,
    dt: Array,
    snr: float,
) -> Array:
    """One Langevin MCMC step targeting `p_t` with step size set by a signal-to-noise ratio.

    Song et al. 2021, Algorithm 4 (VE) / 5 (VP): with `s = s(x, t)`, `z ~ N(0, I)`,
    `eps = 2 r^2 (snr ||z|| / ||s||)^2`, `x <- x + eps s + sqrt(2 eps) z`, where the norms are
    batch means of per-example L2 norms and `r^2 = (alpha(t) / alpha(t - dt))^2` (DDPM's
    `1 - beta_i` for VP/sub-VP, 1 for VE). The batch mean is global under `jit` on sharded
    inputs. `x` `[B, ...]`, `t` scalar; returns the new `x`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VESDE
      >>> x = jnp.ones((2, 3))
      >>> step = langevin_corrector_step(lambda p, x, t: -x, None, x, jax.random.key(0),
      ...                                sde=VESDE(), t=0.5, dt=0.1, snr=0.16)
      >>> step.shape
      (2, 3)
    """
    batch = x.shape[0]
    tb = jnp.full((batch,), t, x.dtype)
    score = _score(score_fn, params, x, tb)
    z = jax.random.normal(key, x.shape, x.dtype)
    axes = tuple(range(1, x.ndim))
    score_norm = jnp.mean(jnp.sqrt(jnp.sum(score**2, axis=axes)))
    noise_norm = jnp.mean(jnp.sqrt(jnp.sum(z**2, axis=axes)))
    # Guard the all-zero score (e.g. a freshly zero-initialised head) against 0/0.
    ratio = snr * noise_norm / jnp.maximum(score_norm, jnp.finfo(x.dtype).tiny)
    eps = 2.0 * sde.alpha_ratio_sq(t, dt) * ratio**2
    return x + eps * score + jnp.sqrt(2.0 * eps) * z


def predictor_corrector(
    score_fn: ScoreFn,
    params: Any,
    key: Array,
    *,
    sde: SDE,
    shape: tuple[int, ...],
    num_steps: int,
    snr: float = 0.16,
    n_corrector: int = 1,
    t_eps: float = 1e-3,
    denoise: bool = True,
    dtype=jnp.float32,
) -> SampleResult:
    """Predictor-corrector sampler: Langevin corrector, then reverse-diffusion predictor.

    Song et al. 2021, Algorithms 2 and 3 (Sec. 4.2). At each grid time `t_i`, with `h = t_i -
    t_{i+1}`: `n_corrector` Langevin steps (`langevin_corrector_step`, signal-to-noise ratio
    `snr`), then the reverse-diffusion predictor built from the forward transition
    `(f_i, G_i) = sde.discretize(x, t_i, h)`: `x <- x - f_i + G_i^2 s(x, t_i) + G_i z`.

    Returns `SampleResult(samples [B, ...], nfe = num_steps * (n_corrector + 1))`.

    Examples:
      >>> import jax
      >>> from scorejax.score_sdes import VPSDE
      >>> result = predictor_corrector(lambda p, x, t: -x, None, jax.random.key(0), sde=VPSDE(),
      ...                              shape=(4, 2), num_steps=3, n_corrector=1)
      >>> result.samples.shape, result.nfe
      ((4, 2), 6)
    """
    _check(shape, num_steps, t_eps, sde)
    if not (isinstance(n_corrector, int) and n_corrector >= 0):
        raise ValueError(f"n_corrector must be a nonnegative int, got {n_corrector!r}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")

    def update(x, t, h, k):
        k_corr, k_pred = jax.random.split(k)
        for j in range(n_corrector):
            x = langevin_corrector_step(
                score_fn, params, x, jax.random.fold_in(k_corr, j), sde=sde, t=t, dt=h, snr=snr
            )
        tb = jnp.full((shape[0],), t, dtype)
        score = _score(score_fn, params, x, tb)
        f, g = sde.discretize(x, tb, h)
        g = batch_broadcast(g, x)
        return x - f + g**2 * score, g * jax.random.normal(k_pred, shape, dtype)

    x = _reverse_scan(update, key, sde=sde, shape=shape, num_steps=num_steps, t_eps=t_eps,
                      denoise=denoise, dtype=dtype)
    return SampleResult(x, num_steps * (n_corrector + 1))


def probability_flow_ode(
    score_fn: ScoreFn,
    params: Any,
    key: Array,
    *,
    sde: SDE,
    shape: tuple[int, ...],
    t_eps: float = 1e-3,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
    max_steps: int = 4096,
    dtype=jnp.float32,
) -> SampleResult:
    """Deterministic sampler: the probability-flow ODE from `T` to `t_eps` with diffrax.

    Song et al. 2021, eq. 13: `dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`, started at
    `x_T = sde.prior_sample(key, shape)` and integrated backwards in time by
    `scorejax.ode.integrate`: adaptive (`solver` with PI control at `rtol`, `atol`) by default,
    or `num_steps` equal steps of `solver` (e.g. `"heun"`, `"euler"`).

    Returns `SampleResult(samples [B, ...], nfe)`; `nfe` is an int32 scalar array, because an
    adaptive solve's cost is only known after it runs.

    Examples:
      >>> import jax
      >>> from scorejax.score_sdes import VPSDE
      >>> samples, nfe = probability_flow_ode(lambda p, x, t: -x, None, jax.random.key(0),
      ...                                     sde=VPSDE(), shape=(3, 2), solver="euler",
      ...                                     num_steps=4)
      >>> samples.shape, int(nfe)
      ((3, 2), 4)
    """
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, ...) with at least one data dim, got {shape}")
    if not (0 < t_eps < sde.T):
        raise ValueError(f"t_eps must satisfy 0 < t_eps < T={sde.T}, got {t_eps}")
    batch = shape[0]

    def velocity(t: Array, x: Array) -> Array:
        tb = jnp.full((batch,), t, dtype)
        return sde.probability_flow_drift(score_fn(params, x, tb), x, tb)

    x_T = sde.prior_sample(key, shape, dtype)
    x, stats = integrate(
        velocity,
        x_T,
        t0=sde.T,
        t1=t_eps,
        solver=solver,
        rtol=rtol,
        atol=atol,
        num_steps=num_steps,
        max_steps=max_steps,
    )
    return SampleResult(x, stats.nfe)
