"""Denoising score matching (DSM) losses for the linear SDEs of `scorejax.sde` (any `SDE`).

With `x_t = alpha_t x_0 + sigma_t z`, `z ~ N(0, I)`, the continuous-time DSM objective of score
SDEs (Song et al. 2021, eq. 7) is

    L(theta) = E_t E_{x_0, z} [ lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2 ],

with `t ~ U(t_min, T)`. The per-example loss is summed over data dimensions (no 1/2). Weightings
(`DSM_WEIGHTINGS`):

- `"sigma2"`: `lambda(t) = sigma_t^2`, i.e. `|| sigma_t s + z ||^2`, the epsilon-prediction MSE;
- `"likelihood"`: `lambda(t) = g(t)^2` (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood
  training of score-based diffusion models", Thm. 1), which makes `L` a bound on the KL/NLL.

A score model is any `score_fn(params, x, t) -> score` with `x` `[B, ...]` and `t` `[B]`;
`score_from_eps` / `score_from_x0` / `make_score_fn` build one from a network that predicts the
noise or the clean data instead. The losses follow the library contract: model function, params,
data, key, then keyword-only configuration; `reduction="mean" | "sum" | "none"`
(`scorejax._reduction`); a `(loss, DSMAux)` result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scorejax._reduction import Reduction, check_reduction, reduce
from scorejax.sde import SDE, batch_broadcast

Array = jax.Array
ScoreFn = Callable[[Any, Array, Array], Array]

DSM_WEIGHTINGS = ("sigma2", "likelihood")
PARAMETRIZATIONS = ("score", "eps", "x0")

__all__ = [
    "DSMAux",
    "dsm_loss",
    "dsm_loss_at_t",
    "score_from_eps",
    "score_from_x0",
    "make_score_fn",
    "DSM_WEIGHTINGS",
    "PARAMETRIZATIONS",
]


class DSMAux(NamedTuple):
    """What a DSM loss reports besides the loss: the diffusion times `t` `[B]` of its examples."""

    t: Array


def _check_weighting(weighting: str) -> None:
    if weighting not in DSM_WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {DSM_WEIGHTINGS}")


def _check_x0(x0: Array) -> None:
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, ...] with ndim >= 2, got {x0.shape}")


def dsm_loss_at_t(
    score_fn: ScoreFn,
    params: Any,
    x0: Array,
    key: Array,
    *,
    sde: SDE,
    t: Array | float,
    weighting: str = "sigma2",
    reduction: Reduction = "mean",) -> tuple[Array, DSMAux]:
    """DSM loss at given times: `lambda(t) || s(x_t, t) + z / sigma_t ||^2` summed over dims.

    Args:
      score_fn: `score_fn(params, x, t)`, `x` `[B, ...]`, `t` `[B]`, returns `[B, ...]`.
      params: the model parameters (any pytree).
      x0: clean data `[B, ...]`.
      key: PRNG key for the noise `z`.
      sde: the forward SDE.
      t: a scalar or `[B]` vector of times in `(0, T]`.
      weighting: `"sigma2"` (`lambda = sigma_t^2`) or `"likelihood"` (`lambda = g(t)^2`).
      reduction: `"mean"`, `"sum"` or `"none"` over the batch (`scorejax._reduction`).

    Returns:
      `(loss, DSMAux(t [B]))`: `loss` a scalar, or `[B]` per example for `reduction="none"`.

    At the exact score `s*` and fixed `t`, `E[loss] = d - sigma_t^2 E||s*(x_t)||^2` for
    `"sigma2"`, and any other `s` adds `sigma_t^2 E||s - s*||^2`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VESDE
      >>> sde = VESDE(sigma_min=0.01, sigma_max=1.0)
      >>> x0 = jnp.zeros((4, 2))  # data at 0: the exact score of p_t is -x / sigma_t^2
      >>> exact = lambda p, x, t: -x / sde.sigma(t)[:, None] ** 2
      >>> loss, aux = dsm_loss_at_t(exact, None, x0, jax.random.key(0), sde=sde, t=0.5)
      >>> round(float(loss), 6), aux.t.shape
      (0.0, (4,))
    """
    _check_weighting(weighting)
    check_reduction(reduction)
    x0 = jnp.asarray(x0)
    _check_x0(x0)
    t = jnp.broadcast_to(jnp.asarray(t, x0.dtype), (x0.shape[0],))
    z = jax.random.normal(key, x0.shape, x0.dtype)
    mean, std = sde.marginal_prob(x0, t)
    std_b = batch_broadcast(std, x0)
    xt = mean + std_b * z
    score = score_fn(params, xt, t)
    if score.shape != x0.shape:
        raise ValueError(f"score_fn returned shape {score.shape}, expected x0's shape {x0.shape}")
    sum_dims = tuple(range(1, x0.ndim))
    if weighting == "sigma2":
        per_example = jnp.sum((std_b * score + z) ** 2, axis=sum_dims)
    else:
        per_example = sde.diffusion(t) ** 2 * jnp.sum((score + z / std_b) ** 2, axis=sum_dims)
    return reduce(per_example, reduction), DSMAux(t=t)


def dsm_loss(
    score_fn: ScoreFn,
    params: Any,
    x0: Array,
    key: Array,
    *,
    sde: SDE,
    weighting: str = "sigma2",
    t_min: float = 1e-5,
    reduction: Reduction = "mean",) -> tuple[Array, DSMAux]:
    """Continuous-time DSM loss with `t ~ U(t_min, T)` per example (Song et al. 2021, eq. 7).

    `loss_i = lambda(t_i) || score_fn(params, x_t, t_i) + z_i / sigma(t_i) ||^2` (summed over the
    non-batch dims of `x0`), `x_t = alpha(t_i) x0_i + sigma(t_i) z_i`; `lambda = sigma^2` for
    `weighting="sigma2"`, `g(t)^2` for `"likelihood"`; the loss is `mean_i`, `sum_i` or the
    `[B]` values `loss_i` themselves (`reduction`).

    Args:
      score_fn: `score_fn(params, x, t) -> score`, `x` `[B, ...]`, `t` `[B]`.
      params: model parameters.
      x0: data batch `[B, ...]`.
      key: PRNG key (split into the time and the noise draws).
      sde: the forward SDE.
      weighting: `"sigma2"` or `"likelihood"` (`DSM_WEIGHTINGS`).
      t_min: smallest time, `0 < t_min < sde.T` (the loss is singular at `t = 0`).
      reduction: `"mean"`, `"sum"` or `"none"` over the batch.

    Returns:
      `(loss, DSMAux(t [B]))`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> x0 = jnp.zeros((8, 2))
      >>> zero = lambda p, x, t: jnp.zeros_like(x)  # sigma2 weighting: the loss is E||z||^2
      >>> loss, aux = dsm_loss(zero, None, x0, jax.random.key(0), sde=VPSDE(), reduction="none")
      >>> loss.shape, aux.t.shape
      ((8,), (8,))
    """
    _check_weighting(weighting)
    check_reduction(reduction)
    if not isinstance(t_min, jax.core.Tracer) and not (0 < t_min < sde.T):
        raise ValueError(f"t_min must satisfy 0 < t_min < T={sde.T}, got {t_min}")
    x0 = jnp.asarray(x0)
    _check_x0(x0)
    k_t, k_z = jax.random.split(key)
    t = jax.random.uniform(k_t, (x0.shape[0],), x0.dtype, minval=t_min, maxval=sde.T)
    return dsm_loss_at_t(
        score_fn, params, x0, k_z, sde=sde, t=t, weighting=weighting, reduction=reduction
    )


def score_from_eps(eps_fn: ScoreFn, *, sde: SDE) -> ScoreFn:
    """Score of a noise-predicting network: `s(x, t) = -eps_hat(x, t) / sigma_t`.

    `eps_fn(params, x, t)` with `x` `[B, ...]` and `t` `[B]`; returns `score_fn(params, x, t)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.score_sdes import VESDE
      >>> sde = VESDE(sigma_min=0.01, sigma_max=1.0)
      >>> score_fn = score_from_eps(lambda p, x, t: jnp.ones_like(x), sde=sde)
      >>> print(score_fn(None, jnp.zeros((1, 2)), jnp.array([1.0])))
      [[-1. -1.]]
    """

    def score_fn(params: Any, x: Array, t: Array) -> Array:
        return -eps_fn(params, x, t) / batch_broadcast(sde.sigma(t), x)

    return score_fn


def score_from_x0(x0_fn: ScoreFn, *, sde: SDE) -> ScoreFn:
    """Score of a data-predicting network via Tweedie: `s(x, t) = (alpha_t x0_hat - x) / sigma_t^2`.

    `x0_fn(params, x, t)` with `x` `[B, ...]` and `t` `[B]`; returns `score_fn(params, x, t)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.score_sdes import VESDE
      >>> sde = VESDE(sigma_min=0.01, sigma_max=2.0)
      >>> score_fn = score_from_x0(lambda p, x, t: jnp.zeros_like(x), sde=sde)
      >>> print(score_fn(None, jnp.ones((1, 2)), jnp.array([1.0])))  # -x / sigma^2, sigma = 2
      [[-0.25 -0.25]]
    """

    def score_fn(params: Any, x: Array, t: Array) -> Array:
        alpha = batch_broadcast(sde.alpha(t), x)
        var = batch_broadcast(sde.sigma(t) ** 2, x)
        return (alpha * x0_fn(params, x, t) - x) / var

    return score_fn


def make_score_fn(apply_fn: ScoreFn, *, sde: SDE, parametrization: str = "score") -> ScoreFn:
    """Turn `apply_fn(params, x, t)` into a score function by its output's meaning.

    `parametrization` is `"score"` (returned as is), `"eps"` (`score_from_eps`) or `"x0"`
    (`score_from_x0`).

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.score_sdes import VESDE
      >>> sde = VESDE(sigma_min=0.01, sigma_max=1.0)
      >>> eps_fn = lambda p, x, t: jnp.ones_like(x)
      >>> make_score_fn(eps_fn, sde=sde) is eps_fn
      True
      >>> print(make_score_fn(eps_fn, sde=sde, parametrization="eps")(None, jnp.zeros((1, 1)),
      ...                                                             jnp.array([1.0])))
      [[-1.]]
    """
    if parametrization == "score":
        return apply_fn
    if parametrization == "eps":
        return score_from_eps(apply_fn, sde=sde)
    if parametrization == "x0":
        return score_from_x0(apply_fn, sde=sde)
    raise ValueError(
        f"unknown parametrization {parametrization!r}; expected one of {PARAMETRIZATIONS}"
    )
