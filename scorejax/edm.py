"""EDM (Karras et al. 2022): preconditioning, conversions to and from any path, training loss.

EDM works in the coordinates of `scorejax.paths.EDMPath`: `x = x_0 + sigma n`, with the noise
level `sigma` in data units. A model of any path of the family, `x_t = alpha_t x_0 + sigma_t
eps`, is the same object in these coordinates: `sigma = sigma_t / alpha_t = e^(-lambda / 2)` and
`x = x_t / alpha_t` (EDM eq. 4 with `s(t) = alpha_t`). `to_edm_denoiser` and `from_edm_denoiser`
convert, through the closed-form inverse `path.t_from_log_snr`.

- Preconditioning (EDM eq. 7 and Table 1): `D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`,
  for the `"vp"`, `"ve"` and `"edm"` columns (`Preconditioning`, `precondition`).
- Training (EDM eq. 8 and Table 1): `ln sigma ~ N(P_mean, P_std^2)` and the weight
  `lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2` (`edm_loss`).

EDM's time steps and its Heun samplers are in `scorejax.edm_sampling`.

A denoiser is any `denoiser_fn(params, x, sigma) -> x0_hat` with `x` `[B, ...]` and `sigma`
`[B]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scorejax import weighting
from scorejax._reduction import Reduction, reduce
from scorejax.parametrisation import from_x0_eps, to_x0_eps
from scorejax.paths import GaussianPath
from scorejax.score_sdes import VPSDE
from scorejax.sde import batch_broadcast

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
    "EDMAux",
    "edm_loss",
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


def precondition(apply_fn: ModelFn, *, preconditioning: Preconditioning) -> DenoiserFn:
    """The EDM denoiser `D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)` (EDM eq. 7).

    `apply_fn(params, x_in, c_noise)` is the raw network `F`, with `x_in` `[B, ...]` and
    `c_noise` `[B]`. Returns `denoiser_fn(params, x, sigma)` (`sigma` scalar or `[B]`).

    Examples:
      >>> net = lambda params, x, c_noise: jnp.zeros_like(x)
      >>> d = precondition(net, preconditioning=Preconditioning("edm", sigma_data=0.5))
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


def to_edm_denoiser(
    model_fn: ModelFn, *, path: GaussianPath, source: str = "x0"
) -> DenoiserFn:
    """EDM denoiser `D(x; sigma)` of a model trained on another path of the family.

    `model_fn(params, x_t, t)` predicts `source` (a `scorejax.parametrisation` kind) on `path`.
    With `t = path.t_from_log_snr(-2 ln sigma)` and `x_t = alpha_t x` (EDM eq. 4 with
    `s = alpha_t`), `D(x; sigma) = x0_hat(x_t, t)`. Returns `denoiser_fn(params, x, sigma)`.

    Examples:
      >>> from scorejax.score_sdes import VPSDE
      >>> vp_eps = lambda params, x, t: jnp.zeros_like(x)
      >>> d = to_edm_denoiser(vp_eps, path=VPSDE(), source="eps")
      >>> float(d(None, jnp.ones((1, 1)), jnp.array([1.0]))[0, 0])  # eps = 0 means D = x
      1.0
    """

    def denoiser_fn(params: Any, x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        t = path.t_from_log_snr(-2.0 * jnp.log(sigma)).astype(x.dtype)
        x_t = batch_broadcast(path.alpha(t), x) * x
        x0, _ = to_x0_eps(x_t, t, model_fn(params, x_t, t), path=path, source=source)
        return x0

    return denoiser_fn


def from_edm_denoiser(
    denoiser_fn: DenoiserFn, *, path: GaussianPath, target: str = "score"
) -> ModelFn:
    """A model on `path` predicting `target` from an EDM denoiser (inverse of `to_edm_denoiser`).

    `fn(params, x_t, t) = target(x0_hat)` with `x0_hat = D(x_t / alpha_t; sigma_t / alpha_t)`;
    e.g. `target="score"` gives a score model for `scorejax.sampling` and `scorejax.likelihood`.

    Examples:
      >>> from scorejax.paths import EDMPath
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)
      >>> score_fn = from_edm_denoiser(d, path=EDMPath())
      >>> float(score_fn(None, jnp.ones((1, 1)), jnp.array([2.0]))[0, 0])  # (D - x) / sigma^2
      -0.25
    """

    def fn(params: Any, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        alpha = path.alpha(t)
        x0 = denoiser_fn(params, x / batch_broadcast(alpha, x), path.sigma(t) / alpha)
        eps = (x - batch_broadcast(alpha, x) * x0) / batch_broadcast(path.sigma(t), x)
        return from_x0_eps(x, t, x0, eps, path=path, target=target)

    return fn


class EDMAux(NamedTuple):
    """What the EDM loss reports besides the loss: the noise levels `sigma` `[B]` it drew."""

    sigma: Array


def edm_loss(
    denoiser_fn: DenoiserFn,
    params: Any,
    x0: Array,
    key: Array,
    *,
    sigma_data: float = 0.5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    reduction: Reduction = "mean",
) -> tuple[Array, EDMAux]:
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
      `(loss, EDMAux(sigma [B]))`; `loss` is `[B]` for `reduction="none"`.

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
    per_example = weighting.edm_sigma_weight(sigma, sigma_data=sigma_data) * sq
    return reduce(per_example, reduction), EDMAux(sigma=sigma)
