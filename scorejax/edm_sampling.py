"""EDM's sampling (Karras et al. 2022): noise-level steps and the Heun samplers.

EDM works in the coordinates of `scorejax.paths.EDMPath`, `x = x_0 + sigma n`; a denoiser
`D(x; sigma)` of any path comes to them through `scorejax.edm.to_edm_denoiser`.

- Time steps (EDM eq. 5): `sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho`, `i < N`, and `sigma_N = 0` (`time_steps`).
- The deterministic 2nd-order Heun sampler (Algorithm 1, `heun_sampler`, with `heun_integrate`
  its ODE steps, each a `heun_step`) and the stochastic one with `S_churn`, `S_tmin`, `S_tmax`,
  `S_noise` (Algorithm 2, `stochastic_sampler`). Both run as one `lax.scan` and return the number of
  denoiser evaluations, `NFE = 2 N - 1` (the last step, to `sigma = 0`, is an Euler step).

A denoiser is any `denoiser_fn(params, x, sigma) -> x0_hat` with `x` `[B, ...]` and `sigma`
`[B]`. The samplers are pure and jit-able with `denoiser_fn`, `shape` and the step settings
static.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> denoiser = lambda params, x, sigma: jnp.zeros_like(x)  # the data is a point mass at 0
  >>> x, nfe = heun_sampler(denoiser, None, jax.random.key(0), shape=(4, 2), num_steps=18)
  >>> nfe, float(jnp.abs(x).max())
  (35, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorejax.sampling import SampleResult
from scorejax.sde import batch_broadcast

Array = jax.Array
DenoiserFn = Callable[[Any, Array, Array], Array]

__all__ = ["time_steps", "heun_step", "heun_integrate", "heun_sampler", "stochastic_sampler"]


def time_steps(
    num_steps: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype=jnp.float32,
) -> Array:
    """EDM's noise levels (Karras et al. 2022, eq. 5), decreasing, with a final 0; `[N + 1]`.

    `sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`
    for `i = 0..N-1` (so `sigma_0 = sigma_max`, `sigma_{N-1} = sigma_min`), and `sigma_N = 0`.

    Examples:
      >>> s = time_steps(18)
      >>> s.shape, float(s[0]), round(float(s[-2]), 6), float(s[-1])
      ((19,), 80.0, 0.002, 0.0)
    """
    if not (isinstance(num_steps, int) and num_steps >= 2):
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    # Static in the step settings: computed in float64 on the host so the ends are exact.
    frac = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + frac * (lo - hi)) ** rho
    return jnp.asarray(np.append(sigmas, 0.0), dtype=dtype)


def _denoise(denoiser_fn: DenoiserFn, params: Any, x: Array, sigma: Array) -> Array:
    out = denoiser_fn(params, x, jnp.full((x.shape[0],), sigma, x.dtype))
    if out.shape != x.shape:  # static shapes: checked while tracing
        raise ValueError(f"denoiser_fn returned shape {out.shape} for x of shape {x.shape}")
    return out


def heun_step(
    denoiser_fn: DenoiserFn, params: Any, x: Array, t_cur: Array, t_next: Array
) -> Array:
    """One Heun step of the PF-ODE `dx/dsigma = (x - D(x; sigma)) / sigma` from `t_cur` to `t_next`.

    EDM Algorithm 1, lines 4-8: with `d(x, t) = (x - D(x; t)) / t`, the Euler step
    `x' = x + (t_next - t_cur) d(x, t_cur)`, then the trapezoidal correction

        x_next = x + (t_next - t_cur) (d(x, t_cur) + d(x', t_next)) / 2.

    `x` `[B, ...]`; `t_cur`, `t_next` positive noise levels, scalars or `[B]` (one per example, as
    in the solver `Phi` of consistency distillation). Returns `x` at `t_next`, shaped like `x`.

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> float(heun_step(d, None, jnp.ones((1, 1)), jnp.ones(1), jnp.full(1, 0.5))[0, 0])
      0.5
    """
    tc, tn = batch_broadcast(t_cur, x), batch_broadcast(t_next, x)
    d = (x - _denoise(denoiser_fn, params, x, t_cur)) / tc
    x_euler = x + (tn - tc) * d
    d_next = (x_euler - _denoise(denoiser_fn, params, x_euler, t_next)) / tn
    return x + (tn - tc) * 0.5 * (d + d_next)


def heun_integrate(
    denoiser_fn: DenoiserFn, params: Any, x: Array, *, sigmas: Array
) -> SampleResult:
    """Heun's method for the PF-ODE `dx/dsigma = (x - D(x; sigma)) / sigma` along `sigmas`.

    EDM Algorithm 1 without its final Euler step: every step, from `sigmas[i]` to
    `sigmas[i + 1]`, is a full 2nd-order step, so all `sigmas` must be positive. `x` `[B, ...]`
    at `sigmas[0]`; `sigmas` `[K]` (any order). Returns `SampleResult(x at sigmas[-1],
    nfe = 2 (K - 1))`.

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> x, nfe = heun_integrate(d, None, jnp.ones((1, 1)), sigmas=jnp.array([2.0, 1.0]))
      >>> float(x[0, 0]), nfe  # x is proportional to sigma here
      (0.5, 2)
    """
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a vector, got shape {sigmas.shape}")

    def step(x, ts):
        return heun_step(denoiser_fn, params, x, ts[0], ts[1]), None

    x, _ = jax.lax.scan(step, x, (sigmas[:-1].astype(x.dtype), sigmas[1:].astype(x.dtype)))
    return SampleResult(x, 2 * (sigmas.shape[0] - 1))


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, ...) with at least one data dim, got {shape}")


def heun_sampler(
    denoiser_fn: DenoiserFn,
    params: Any,
    key: Array,
    *,
    shape: tuple[int, ...],
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype=jnp.float32,
) -> SampleResult:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1).

    `x_0 = sigma_max * jax.random.normal(split(key)[0], shape)`; Heun steps along
    `time_steps(num_steps)` down to `sigma_min` (`heun_integrate`), then one Euler step to
    `sigma = 0`, which returns `D(x; sigma_min)`. Returns `SampleResult(samples [B, ...],
    nfe = 2 num_steps - 1)` (35 for N = 18).

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> heun_sampler(d, None, jax.random.key(0), shape=(2, 3), num_steps=5).nfe
      9
    """
    _check_shape(shape)
    sigmas = time_steps(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, dtype=dtype)
    x = sigmas[0] * jax.random.normal(jax.random.split(key)[0], shape, dtype)
    x, nfe = heun_integrate(denoiser_fn, params, x, sigmas=sigmas[:-1])
    return SampleResult(_denoise(denoiser_fn, params, x, sigmas[-2]), nfe + 1)


def stochastic_sampler(
    denoiser_fn: DenoiserFn,
    params: Any,
    key: Array,
    *,
    shape: tuple[int, ...],
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    dtype=jnp.float32,
) -> SampleResult:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2).

    Before step `i` (from `t_i` to `t_{i+1}` of `time_steps`), noise is added to move up to
    `t_hat = t_i (1 + gamma_i)`: `x_hat = x_i + sqrt(t_hat^2 - t_i^2) eps`, `eps ~ N(0,
    s_noise^2 I)`, with `gamma_i = min(s_churn / N, sqrt(2) - 1)` if `s_tmin <= t_i <= s_tmax`,
    else 0; then a Heun step from `t_hat` to `t_{i+1}` (Euler on the last step, to 0). With
    `s_churn = 0` it is `heun_sampler` exactly (same key, same samples). `x_0 = sigma_max *
    jax.random.normal(k0, shape)`, `k0 = split(key)[0]`, step keys `fold_in(split(key)[1], i)`.

    Returns `SampleResult(samples [B, ...], nfe = 2 num_steps - 1)`.

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> x, nfe = stochastic_sampler(d, None, jax.random.key(0), shape=(2, 3), s_churn=40.0)
      >>> nfe, float(jnp.abs(x).max())
      (35, 0.0)
    """
    _check_shape(shape)
    sigmas = time_steps(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, dtype=dtype)
    k_init, k_steps = jax.random.split(key)
    if s_churn == 0.0:
        return heun_sampler(
            denoiser_fn,
            params,
            key,
            shape=shape,
            num_steps=num_steps,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            rho=rho,
            dtype=dtype,
        )
    gamma_max = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)

    def churn(x: Array, t_cur: Array, i: Array) -> tuple[Array, Array]:
        gamma = jnp.where((t_cur >= s_tmin) & (t_cur <= s_tmax), gamma_max, 0.0)
        t_hat = t_cur * (1.0 + gamma)
        eps = s_noise * jax.random.normal(jax.random.fold_in(k_steps, i), x.shape, x.dtype)
        # sqrt(t_hat^2 - t_cur^2) = t_cur sqrt(gamma (2 + gamma)): never the square root of a
        # rounding error below zero when gamma = 0.
        return x + t_cur * jnp.sqrt(gamma * (2.0 + gamma)) * eps, t_hat

    def step(x, inputs):
        t_cur, t_next, i = inputs
        x_hat, t_hat = churn(x, t_cur, i)
        return heun_step(denoiser_fn, params, x_hat, t_hat, t_next), None

    x = sigmas[0] * jax.random.normal(k_init, shape, dtype)
    idx = jnp.arange(num_steps - 1)
    x, _ = jax.lax.scan(step, x, (sigmas[:-2], sigmas[1:-1], idx))
    x_hat, t_hat = churn(x, sigmas[-2], jnp.asarray(num_steps - 1))
    # Euler from t_hat to 0: x_hat + (0 - t_hat) (x_hat - D) / t_hat = D(x_hat; t_hat).
    return SampleResult(_denoise(denoiser_fn, params, x_hat, t_hat), 2 * num_steps - 1)
