"""EDM (Karras et al. 2022): preconditioning, training loss, time steps and Heun samplers.

EDM works in the coordinates of `scorejax.paths.EDMPath`: `x = x_0 + sigma n`, with the noise
level `sigma` in data units. A model of any path of the family, `x_t = alpha_t x_0 + sigma_t
eps`, is the same object in these coordinates: `sigma = sigma_t / alpha_t = e^(-lambda / 2)` and
`x = x_t / alpha_t` (EDM eq. 4 with `s(t) = alpha_t`). `to_edm_denoiser` and `from_edm_denoiser`
convert, through the closed-form inverse `path.t_from_log_snr`.

- Preconditioning (EDM eq. 7 and Table 1): `D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`,
  for the `"vp"`, `"ve"` and `"edm"` columns (`Preconditioning`, `precondition`).
- Training (EDM eq. 8 and Table 1): `ln sigma ~ N(P_mean, P_std^2)` and the weight
  `lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2` (`edm_loss`).
- Time steps (EDM eq. 5): `sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho`, `i < N`, and `sigma_N = 0` (`time_steps`).
- The deterministic 2nd-order Heun sampler (Algorithm 1, `heun_sampler`) and the stochastic one
  with `S_churn`, `S_tmin`, `S_tmax`, `S_noise` (Algorithm 2, `stochastic_sampler`). Both run as
  one `lax.scan` and return the number of denoiser evaluations, `NFE = 2 N - 1` (the last step, to
  `sigma = 0`, is an Euler step).

A denoiser is any `denoiser_fn(params, x, sigma) -> x0_hat` with `x` `[B, ...]` and `sigma`
`[B]`. The samplers are pure and jit-able with `denoiser_fn`, `shape` and the step settings
static.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> denoiser = lambda params, x, sigma: jnp.zeros_like(x)  # the data is a point mass at 0
  >>> x, nfe = heun_sampler(denoiser, None, jax.random.key(0), (4, 2), num_steps=18)
  >>> nfe, float(jnp.abs(x).max())
  (35, 0.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorejax import weighting
from scorejax._score_utils import reduce
from scorejax.parametrisation import from_x0_eps, to_x0_eps
from scorejax.paths import GaussianPath
from scorejax.sde import VPSDE, batch_broadcast

Array = jax.Array
DenoiserFn = Callable[[Any, Array, Array], Array]
ModelFn = Callable[[Any, Array, Array], Array]

PRECONDITIONINGS = ("edm", "vp", "ve")

__all__ = [
    "PRECONDITIONINGS",
    "Preconditioning",
    "precondition",
    "to_edm_denoiser",
    "from_edm_denoiser",
    "edm_loss",
    "time_steps",
    "heun_integrate",
    "heun_sampler",
    "stochastic_sampler",
]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Preconditioning:
    """The preconditioning coefficients of EDM Table 1, for one column.

    | kind  | c_skip                    | c_out              | c_in       | c_noise          |
    | ----- | ------------------------- | ------------------ | ---------- | ---------------- |
    | `edm` | s_d^2 / (sigma^2 + s_d^2) | sigma s_d / r(s_d) | 1 / r(s_d) | ln(sigma) / 4    |
    | `vp`  | 1                         | -sigma             | 1 / r(1)   | (M - 1) t(sigma) |
    | `ve`  | 1                         | sigma              | 1          | ln(sigma / 2)    |

    with `r(c) = sqrt(sigma^2 + c^2)`.
    `s_d = sigma_data`; for `vp`, `t(sigma)` is the VP time with `sigma(t) = sqrt(exp(b_d t^2 / 2 +
    b_min t) - 1)`, i.e. `VPSDE(beta_min, beta_min + beta_d).t_from_log_snr(-2 ln sigma)` in
    closed form. With the `vp` column `F` is the noise prediction of a VP model fed the VP input
    `x / sqrt(1 + sigma^2)` and the DDPM step index; with `ve`, `F = sigma * score`.

    Attributes:
      kind: one of `PRECONDITIONINGS`.
      sigma_data: data std `s_d` (EDM: 0.5), used by `edm`.
      vp_num_steps: `M` (EDM: 1000), used by `vp`.
      vp_beta_min, vp_beta_d: `b_min` (0.1) and `b_d` (19.9), used by `vp`.

    Examples:
      >>> c_skip, c_out, c_in, c_noise = Preconditioning("edm").coefficients(jnp.array(0.5))
      >>> float(c_skip), round(float(c_out), 4)
      (0.5, 0.3536)
    """

    kind: str = "edm"
    sigma_data: float = 0.5
    vp_num_steps: int = 1000
    vp_beta_min: float = 0.1
    vp_beta_d: float = 19.9

    def __post_init__(self):
        if self.kind not in PRECONDITIONINGS:
            raise ValueError(f"unknown preconditioning {self.kind!r}; expected {PRECONDITIONINGS}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")

    def coefficients(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        """`(c_skip, c_out, c_in, c_noise)` at noise level `sigma` (any shape, each the same)."""
        sigma = jnp.asarray(sigma, dtype=jnp.result_type(sigma, float))
        if self.kind == "edm":
            sd2 = self.sigma_data**2
            norm = jax.lax.rsqrt(sigma**2 + sd2)
            return sd2 / (sigma**2 + sd2), sigma * self.sigma_data * norm, norm, jnp.log(sigma) / 4
        one = jnp.ones_like(sigma)
        if self.kind == "vp":
            vp = VPSDE(beta_min=self.vp_beta_min, beta_max=self.vp_beta_min + self.vp_beta_d)
            t = vp.t_from_log_snr(-2.0 * jnp.log(sigma))
            c_noise = (self.vp_num_steps - 1) * t
            return one, -sigma, jax.lax.rsqrt(sigma**2 + 1.0), c_noise
        return one, sigma, one, jnp.log(0.5 * sigma)


def precondition(apply_fn: ModelFn, preconditioning: Preconditioning) -> DenoiserFn:
    """The EDM denoiser `D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)` (EDM eq. 7).

    `apply_fn(params, x_in, c_noise)` is the raw network `F`, with `x_in` `[B, ...]` and
    `c_noise` `[B]`. Returns `denoiser_fn(params, x, sigma)` (`sigma` scalar or `[B]`).

    Examples:
      >>> net = lambda params, x, c_noise: jnp.zeros_like(x)
      >>> d = precondition(net, Preconditioning("edm", sigma_data=0.5))
      >>> float(d(None, jnp.ones((1, 1)), jnp.array([0.5]))[0, 0])  # c_skip * x
      0.5
    """

    def denoiser_fn(params: Any, x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = preconditioning.coefficients(sigma)
        out = apply_fn(params, batch_broadcast(c_in, x) * x, c_noise)
        if out.shape != x.shape:
            raise ValueError(f"apply_fn returned shape {out.shape} for x of shape {x.shape}")
        return batch_broadcast(c_skip, x) * x + batch_broadcast(c_out, x) * out

    return denoiser_fn


def to_edm_denoiser(model_fn: ModelFn, path: GaussianPath, source: str = "x0") -> DenoiserFn:
    """EDM denoiser `D(x; sigma)` of a model trained on another path of the family.

    `model_fn(params, x_t, t)` predicts `source` (a `scorejax.parametrisation` kind) on `path`.
    With `t = path.t_from_log_snr(-2 ln sigma)` and `x_t = alpha_t x` (EDM eq. 4 with
    `s = alpha_t`), `D(x; sigma) = x0_hat(x_t, t)`. Returns `denoiser_fn(params, x, sigma)`.

    Examples:
      >>> from scorejax.sde import VPSDE
      >>> vp_eps = lambda params, x, t: jnp.zeros_like(x)
      >>> d = to_edm_denoiser(vp_eps, VPSDE(), "eps")
      >>> float(d(None, jnp.ones((1, 1)), jnp.array([1.0]))[0, 0])  # eps = 0 means D = x
      1.0
    """

    def denoiser_fn(params: Any, x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        t = path.t_from_log_snr(-2.0 * jnp.log(sigma)).astype(x.dtype)
        x_t = batch_broadcast(path.alpha(t), x) * x
        x0, _ = to_x0_eps(path, x_t, t, model_fn(params, x_t, t), source)
        return x0

    return denoiser_fn


def from_edm_denoiser(denoiser_fn: DenoiserFn, path: GaussianPath, target: str = "score"):
    """A model on `path` predicting `target` from an EDM denoiser (inverse of `to_edm_denoiser`).

    `fn(params, x_t, t) = target(x0_hat)` with `x0_hat = D(x_t / alpha_t; sigma_t / alpha_t)`;
    e.g. `target="score"` gives a score model for `scorejax.sampling` and `scorejax.likelihood`.

    Examples:
      >>> from scorejax.paths import EDMPath
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> score_fn = from_edm_denoiser(d, EDMPath())
      >>> float(score_fn(None, jnp.ones((1, 1)), jnp.array([2.0]))[0, 0])  # (D - x) / sigma^2
      -0.25
    """

    def fn(params: Any, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        alpha = path.alpha(t)
        x0 = denoiser_fn(params, x / batch_broadcast(alpha, x), path.sigma(t) / alpha)
        eps = (x - batch_broadcast(alpha, x) * x0) / batch_broadcast(path.sigma(t), x)
        return from_x0_eps(path, x, t, x0, eps, target)

    return fn


def edm_loss(
    denoiser_fn: DenoiserFn,
    params: Any,
    x0: Array,
    key: Array,
    *,
    sigma_data: float = 0.5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    reduction: str = "mean",
) -> tuple[Array, dict[str, Array]]:
    """EDM training loss (Karras et al. 2022, eq. 8 with Table 1's "training" rows).

    `ln sigma ~ N(p_mean, p_std^2)` per example, `n ~ N(0, I)`, and

        loss_i = lambda(sigma_i) || D(x0_i + sigma_i n_i; sigma_i) - x0_i ||^2,
        lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,

    summed over the non-batch dims (`weighting.edm_sigma_weight`). With the `edm`
    preconditioning this is `||F - F_target||^2` with a unit-variance target at every sigma.

    Args:
      denoiser_fn: `denoiser_fn(params, x, sigma)`, `x` `[B, ...]`, `sigma` `[B]`.
      params: model parameters.
      x0: data `[B, ...]`.
      key: PRNG key (split into the noise level and the noise).
      sigma_data, p_mean, p_std: EDM's 0.5, -1.2 and 1.2.
      reduction: `"mean"`, `"sum"` over the batch, or `"none"` (per example).

    Returns:
      `(loss, aux)` with `aux = {"per_example": [B], "sigma": [B]}`.

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> loss, aux = edm_loss(d, None, jnp.zeros((8, 2)), jax.random.key(0))
      >>> float(loss)
      0.0
    """
    x0 = jnp.asarray(x0)
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, ...] with ndim >= 2, got {x0.shape}")
    k_sigma, k_noise = jax.random.split(key)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, (x0.shape[0],), x0.dtype))
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    denoised = denoiser_fn(params, x0 + batch_broadcast(sigma, x0) * noise, sigma)
    if denoised.shape != x0.shape:
        raise ValueError(f"denoiser returned shape {denoised.shape}, expected {x0.shape}")
    sq = jnp.sum((denoised - x0) ** 2, axis=tuple(range(1, x0.ndim)))
    per_example = weighting.edm_sigma_weight(sigma, sigma_data) * sq
    return reduce(per_example, reduction), {"per_example": per_example, "sigma": sigma}


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


def _heun_step(
    denoiser_fn: DenoiserFn, params: Any, x: Array, t_cur: Array, t_next: Array
) -> Array:
    # Algorithm 1, lines 4-8: Euler step, then the trapezoidal correction (t_next > 0).
    d = (x - _denoise(denoiser_fn, params, x, t_cur)) / t_cur
    x_euler = x + (t_next - t_cur) * d
    d_next = (x_euler - _denoise(denoiser_fn, params, x_euler, t_next)) / t_next
    return x + (t_next - t_cur) * 0.5 * (d + d_next)


def heun_integrate(
    denoiser_fn: DenoiserFn, params: Any, x: Array, sigmas: Array
) -> tuple[Array, int]:
    """Heun's method for the PF-ODE `dx/dsigma = (x - D(x; sigma)) / sigma` along `sigmas`.

    EDM Algorithm 1 without its final Euler step: every step, from `sigmas[i]` to
    `sigmas[i + 1]`, is a full 2nd-order step, so all `sigmas` must be positive. `x` `[B, ...]`
    at `sigmas[0]`; `sigmas` `[K]` (any order). Returns `(x at sigmas[-1], nfe = 2 (K - 1))`.

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> x, nfe = heun_integrate(d, None, jnp.ones((1, 1)), jnp.array([2.0, 1.0]))
      >>> float(x[0, 0]), nfe  # x is proportional to sigma here
      (0.5, 2)
    """
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a vector, got shape {sigmas.shape}")

    def step(x, ts):
        return _heun_step(denoiser_fn, params, x, ts[0], ts[1]), None

    x, _ = jax.lax.scan(step, x, (sigmas[:-1].astype(x.dtype), sigmas[1:].astype(x.dtype)))
    return x, 2 * (sigmas.shape[0] - 1)


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, ...) with at least one data dim, got {shape}")


def heun_sampler(
    denoiser_fn: DenoiserFn,
    params: Any,
    key: Array,
    shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype=jnp.float32,
) -> tuple[Array, int]:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1).

    `x_0 = sigma_max * jax.random.normal(split(key)[0], shape)`; Heun steps along
    `time_steps(num_steps)` down to `sigma_min` (`heun_integrate`), then one Euler step to
    `sigma = 0`, which returns `D(x; sigma_min)`. Returns `(samples [B, ...], nfe = 2 num_steps -
    1)` (35 for N = 18).

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> heun_sampler(d, None, jax.random.key(0), (2, 3), num_steps=5)[1]
      9
    """
    _check_shape(shape)
    sigmas = time_steps(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, dtype=dtype)
    x = sigmas[0] * jax.random.normal(jax.random.split(key)[0], shape, dtype)
    x, nfe = heun_integrate(denoiser_fn, params, x, sigmas[:-1])
    return _denoise(denoiser_fn, params, x, sigmas[-2]), nfe + 1


def stochastic_sampler(
    denoiser_fn: DenoiserFn,
    params: Any,
    key: Array,
    shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    dtype=jnp.float32,
) -> tuple[Array, int]:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2).

    Before step `i` (from `t_i` to `t_{i+1}` of `time_steps`), noise is added to move up to
    `t_hat = t_i (1 + gamma_i)`: `x_hat = x_i + sqrt(t_hat^2 - t_i^2) eps`, `eps ~ N(0,
    s_noise^2 I)`, with `gamma_i = min(s_churn / N, sqrt(2) - 1)` if `s_tmin <= t_i <= s_tmax`,
    else 0; then a Heun step from `t_hat` to `t_{i+1}` (Euler on the last step, to 0). With
    `s_churn = 0` it is `heun_sampler` exactly (same key, same samples). `x_0 = sigma_max *
    jax.random.normal(k0, shape)`, `k0 = split(key)[0]`, step keys `fold_in(split(key)[1], i)`.

    Returns `(samples [B, ...], nfe = 2 num_steps - 1)`.

    Examples:
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> x, nfe = stochastic_sampler(d, None, jax.random.key(0), (2, 3), s_churn=40.0)
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
            shape,
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
        return _heun_step(denoiser_fn, params, x_hat, t_hat, t_next), None

    x = sigmas[0] * jax.random.normal(k_init, shape, dtype)
    idx = jnp.arange(num_steps - 1)
    x, _ = jax.lax.scan(step, x, (sigmas[:-2], sigmas[1:-1], idx))
    x_hat, t_hat = churn(x, sigmas[-2], jnp.asarray(num_steps - 1))
    # Euler from t_hat to 0: x_hat + (0 - t_hat) (x_hat - D) / t_hat = D(x_hat; t_hat).
    return _denoise(denoiser_fn, params, x_hat, t_hat), 2 * num_steps - 1
