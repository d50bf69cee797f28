"""Exact conversions between the output parametrisations of a Gaussian-path model.

On a path `x_t = alpha_t x_0 + sigma_t eps` (any `scorejax.paths.GaussianPath`), a network's
output at `(x, t)` is one of five equivalent descriptions of the posterior means
`x0_hat = E[x_0 | x_t = x]` and `eps_hat = E[eps | x_t = x]`, tied by `x = alpha x0_hat +
sigma eps_hat`:

| name         | meaning                                       | reference                        |
| ------------ | --------------------------------------------- | -------------------------------- |
| `"x0"`       | `x0_hat` (the denoiser `D`)                    | Karras et al. 2022, eq. 3        |
| `"eps"`      | `eps_hat`                                     | Ho et al. 2020, eq. 11           |
| `"score"`    | `grad log p_t(x) = -eps_hat / sigma`          | Tweedie; Song et al. 2021        |
| `"velocity"` | `v = dx_t/dt = alpha' x0_hat + sigma' eps_hat` | Lipman et al. 2023; Liu et al.   |
| `"v"`        | v-prediction `alpha eps_hat - sigma x0_hat`    | Salimans & Ho 2022, Sec. 4       |

Every conversion goes through the pair `(x0_hat, eps_hat)`, each member computed from the source
with its own closed form (no chain of divisions):

- from `x0`: `eps = (x - alpha x0) / sigma`;
- from `eps`: `x0 = (x - sigma eps) / alpha`;
- from `score`: `eps = -sigma s`, `x0 = (x + sigma^2 s) / alpha`;
- from `velocity`: with the Wronskian `W = alpha sigma' - alpha' sigma = -alpha sigma
  lambda' / 2`, `x0 = (sigma' x - sigma v) / W` and `eps = (alpha v - alpha' x) / W`. On the linear
  path `W = 1`: `x0 = x - t v`, `eps = x + (1 - t) v`, and `s = -(x + (1 - t) v) / t`.
- from `v`: `[x; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps]`, so
  `x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)`, `eps = (sigma x + alpha v) / (alpha^2 +
  sigma^2)`. On variance-preserving paths the denominator is 1 (Salimans & Ho's angle form);
  elsewhere this is the same definition, inverted exactly.

Shapes: `x` and every prediction are `[B, ...]`; `t` is a scalar or `[B]`.

Examples:
  >>> import jax.numpy as jnp
  >>> from scorejax.paths import LinearPath
  >>> x, v = jnp.ones((1, 2)), jnp.full((1, 2), 0.5)
  >>> convert(x, 0.5, v, path=LinearPath(), source="velocity", target="x0")
  Array([[0.75, 0.75]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from scorejax.paths import GaussianPath
from scorejax.sde import batch_broadcast

Array = jax.Array
ModelFn = Callable[[Any, Array, Array], Array]

PARAMETRISATIONS = ("x0", "eps", "score", "velocity", "v")

__all__ = [
    "PARAMETRISATIONS",
    "to_x0_eps",
    "from_x0_eps",
    "convert",
    "wrap",
]


def _check(name: str, kind: str) -> None:
    if kind not in PARAMETRISATIONS:
        raise ValueError(f"unknown {name} {kind!r}; expected one of {PARAMETRISATIONS}")


def to_x0_eps(
    x: Array, t: Array | float, value: Array, *, path: GaussianPath, source: str
) -> tuple[Array, Array]:
    """`(x0_hat, eps_hat)` from a prediction `value` of kind `source` at `(x, t)`.

    Formulas in the module docstring. `x`, `value` `[B, ...]`; `t` `()` or `[B]`; returns two
    arrays shaped like `x`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.paths import EDMPath
      >>> x, score = jnp.ones((1, 1)), -jnp.ones((1, 1))
      >>> x0, eps = to_x0_eps(x, 2.0, score, path=EDMPath(), source="score")
      >>> float(x0[0, 0]), float(eps[0, 0])
      (-3.0, 2.0)
    """
    _check("source", source)
    if value.shape != x.shape:
        raise ValueError(f"prediction shape {value.shape} must equal x's shape {x.shape}")
    a = batch_broadcast(path.alpha(t), x)
    s = batch_broadcast(path.sigma(t), x)
    if source == "x0":
        return value, (x - a * value) / s
    if source == "eps":
        return (x - s * value) / a, value
    if source == "score":
        return (x + s**2 * value) / a, -s * value
    if source == "velocity":
        da = batch_broadcast(path.dalpha_dt(t), x)
        ds = batch_broadcast(path.dsigma_dt(t), x)
        w = a * ds - da * s
        return (ds * x - s * value) / w, (a * value - da * x) / w
    norm = a**2 + s**2
    return (a * x - s * value) / norm, (s * x + a * value) / norm


def from_x0_eps(
    x: Array, t: Array | float, x0: Array, eps: Array, *, path: GaussianPath, target: str
) -> Array:
    """The prediction of kind `target` from the pair `(x0_hat, eps_hat)` at `(x, t)`.

    `x0`: `x0`; `eps`: `eps`; `score`: `-eps / sigma`; `velocity`: `alpha' x0 + sigma' eps`;
    `v`: `alpha eps - sigma x0`. Shapes as in `to_x0_eps`; returns an array shaped like `x`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.paths import LinearPath
      >>> x0, eps = jnp.zeros((1, 1)), jnp.ones((1, 1))
      >>> float(from_x0_eps(eps, 1.0, x0, eps, path=LinearPath(), target="velocity")[0, 0])
      1.0
    """
    _check("target", target)
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    s = batch_broadcast(path.sigma(t), x)
    if target == "score":
        return -eps / s
    if target == "velocity":
        da = batch_broadcast(path.dalpha_dt(t), x)
        ds = batch_broadcast(path.dsigma_dt(t), x)
        return da * x0 + ds * eps
    a = batch_broadcast(path.alpha(t), x)
    return a * eps - s * x0


def convert(
    x: Array,
    t: Array | float,
    value: Array,
    *,
    path: GaussianPath,
    source: str,
    target: str,
) -> Array:
    """Convert a prediction `value` of kind `source` into kind `target` on `path`.

    `target(source(value))` through `(x0_hat, eps_hat)` (module docstring); the identity when
    `source == target`. `x`, `value` `[B, ...]`, `t` `()` or `[B]`; returns `[B, ...]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> x, eps = jnp.ones((2, 3)), jnp.zeros((2, 3))
      >>> convert(x, 0.5, eps, path=VPSDE(), source="eps", target="score").shape
      (2, 3)
    """
    _check("source", source)
    _check("target", target)
    if source == target:
        return value
    x0, eps = to_x0_eps(x, t, value, path=path, source=source)
    return from_x0_eps(x, t, x0, eps, path=path, target=target)


def wrap(apply_fn: ModelFn, *, path: GaussianPath, source: str, target: str) -> ModelFn:
    """Turn `apply_fn(params, x, t)` predicting `source` into a function predicting `target`.

    E.g. `wrap(velocity_net, path=LinearPath(), source="velocity", target="score")` is a score
    model for `scorejax.sampling` and `scorejax.likelihood`. Returns `fn(params, x, t) -> [B, ...]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.paths import EDMPath
      >>> denoiser = lambda params, x, t: jnp.zeros_like(x)
      >>> score_fn = wrap(denoiser, path=EDMPath(), source="x0", target="score")
      >>> float(score_fn(None, jnp.ones((1, 1)), jnp.array([2.0]))[0, 0])
      -0.25
    """
    _check("source", source)
    _check("target", target)

    def fn(params: Any, x: Array, t: Array) -> Array:
        return convert(x, t, apply_fn(params, x, t), path=path, source=source, target=target)

    return fn
