"""Score estimation as kernel regression: the two-layer ReLU network of Han, Razaviyayn & Xu.

Han, Razaviyayn & Xu (ICLR 2024, "Neural network-based score estimation in diffusion models:
optimization and generalization") read denoising score matching as regression with noisy labels:
the input is `u = (x_t, t)`, the label is the clean sample `x_0`, and the regression function is
the posterior-mean denoiser `f*(t, x) = E[x_0 | x_t = x]`; the score follows by Tweedie,
`s(t, x) = (alpha_t f(t, x) - x) / sigma_t^2` (`scorejax.score_matching.score_from_x0`), so

    || s - s* ||^2 = (alpha_t^2 / sigma_t^4) || f - f* ||^2   (`error_weights`).

They fit `f` with a wide two-layer ReLU network whose hidden layer alone is trained by full-batch
gradient descent (GD), track GD by kernel regression with the neural tangent kernel (NTK), and stop
early because the labels are noisy. This module holds the pieces (the exact parametrisation and
stopping rule of the paper are reconstructed, see the notes):

- `TwoLayerReLU`: `f(u) = m^{-1/2} sum_r a_r relu(w_r . u)` with fixed `a_r in {+-1}^d` and
  trained `W`; neurons come in groups sharing `w` whose output weights cancel (`f_0 = 0`, the
  antisymmetric initialisation) and are orthogonal across outputs (the finite-width tangent
  kernel is exactly block-diagonal, so the kernel correspondence holds output by output).
- `relu_ntk`: its infinite-width NTK `K(u, u') = u.u' (pi - theta) / (2 pi) I_d`, `theta` the
  angle between `u` and `u'`; `empirical_ntk`: the finite-width kernel at given weights.
- `scorejax.ntk_gd`: GD itself, on the kernel model in closed form (`KernelGDPath`), with the
  early-stopping rule of Raskutti, Wainwright & Yu (`rwy_stopping_step`), and on the network
  (`gd_train`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from scorejax.sde import SDE

Array = jax.Array

__all__ = [
    "regression_inputs",
    "ErrorWeights",
    "error_weights",
    "TwoLayerReLU",
    "relu_ntk",
    "empirical_ntk",
]


def regression_inputs(x: Array, t: Array, *, x_scale: float = 1.0) -> Array:
    """Network input `u = (x / x_scale, t, 1)` for `x` `[B, d]`, `t` `[B]`; returns `[B, d + 2]`.

    The constant coordinate acts as a bias, so the bias-free ReLU NTK is not degenerate at the
    origin; `x_scale` brings `x` to the scale of `t in [0, 1]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(regression_inputs(jnp.array([[2.0, 4.0]]), jnp.array([0.5]), x_scale=2.0))
      [[1.  2.  0.5 1. ]]
    """
    x = jnp.asarray(x)
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    return jnp.concatenate([x / x_scale, t[:, None], jnp.ones_like(t)[:, None]], axis=1)


class ErrorWeights(NamedTuple):
    """Per-example factors `[B]` from the squared denoiser error to three error scales
    (`error_weights`): `denoiser` (1), `score_w` (`alpha_t^2 / sigma_t^2`) and `score`
    (`alpha_t^2 / sigma_t^4`)."""

    denoiser: Array
    score_w: Array
    score: Array


def error_weights(t: Array, *, sde: SDE) -> ErrorWeights:
    """Per-example factors turning the squared denoiser error `||f - f*||^2` into score errors.

    With the score of a denoiser `s = (alpha_t f - x) / sigma_t^2` (Tweedie) and `f`, `f*` read at
    the same `(t, x_t)`, `s - s* = (alpha_t / sigma_t^2) (f - f*)`, so

        ||s - s*||^2            = alpha_t^2 / sigma_t^4 ||f - f*||^2    ("score")
        sigma_t^2 ||s - s*||^2  = alpha_t^2 / sigma_t^2 ||f - f*||^2    ("score_w", the
                                                                          eps-prediction scale)
        ||f - f*||^2            = 1 * ||f - f*||^2                      ("denoiser").

    Args:
      t: times `[B]`.
      sde: the forward process (any `SDE` of the Gaussian-path family: `alpha(t)`, `sigma(t)`).

    Returns:
      `ErrorWeights(denoiser, score_w, score)`, each `[B]` in `t`'s dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> w = error_weights(jnp.array([0.5]), sde=VPSDE())
      >>> bool(jnp.allclose(w.score, w.score_w / VPSDE().sigma(0.5) ** 2))
      True
    """
    a2, s2 = jnp.square(sde.alpha(t)), jnp.square(sde.sigma(t))
    return ErrorWeights(denoiser=jnp.ones_like(a2), score_w=a2 / s2, score=a2 / jnp.square(s2))


@flax.struct.dataclass
class TwoLayerReLU:
    """`f(u) = m^{-1/2} sum_r a_r relu(w_r . u)`: `w` `[m, p]` trained, `a` `[m, d]` fixed.

    Build with `TwoLayerReLU.init(key, width=m, in_dim=p, out_dim=d)`; call `net(u)` with `u`
    `[B, p]` for `[B, d]`. `apply(w, u)` evaluates the same network at other hidden weights `w`.
    `compute_dtype` (static; None: the inputs' dtypes) is the dtype of the two matmuls (e.g.
    bfloat16 under a mixed-precision policy); the output is then returned in `w`'s dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = TwoLayerReLU.init(jax.random.key(0), width=8, in_dim=3, out_dim=2)
      >>> net.width, net(jnp.ones((5, 3))).shape
      (8, (5, 2))
      >>> float(jnp.abs(net(jnp.ones((5, 3)))).max())  # antisymmetric start: f_0 = 0
      0.0
    """

    w: Array
    a: Array
    compute_dtype: Any = flax.struct.field(pytree_node=False, default=None)

    @classmethod
    def init(cls, key: Array, *, width: int, in_dim: int, out_dim: int,
             dtype=jnp.float32, compute_dtype: Any = None) -> TwoLayerReLU:
        """`w ~ N(0, I)` shared within groups of `C` neurons whose `a` are `C` Hadamard columns.

        `C = 2^ceil(log2(d + 1))`; the neurons of a group share one `w` and take as output weights
        `a^(c)_i = H[i + 1, c]`, rows `1..d` of the Sylvester-Hadamard matrix `H` of order `C`
        (entries +-1). Rows `1..d` are orthogonal to each other and to the all-ones row 0, so in
        every group `sum_c a^(c) = 0` (the network starts at `f_0 = 0`, the antisymmetric
        initialisation) and `sum_c a^(c)_i a^(c)_j = C delta_ij` (the tangent kernel is exactly
        `K_m(u, v) I_d` at every width, `empirical_ntk`). With `C = 2` (`d = 1`) this is the usual
        pairing of neurons `(w, a)`, `(w, -a)`. `width` must be a multiple of `C`.
        """
        group = 1 << math.ceil(math.log2(out_dim + 1))
        if width < group or width % group:
            raise ValueError(f"width must be a positive multiple of {group} for out_dim="
                             f"{out_dim}, got {width}")
        hadamard = np.ones((1, 1))
        while hadamard.shape[0] < group:
            hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
        w = jax.random.normal(key, (width // group, in_dim), dtype)
        a = np.tile(hadamard[1 : out_dim + 1].T, (width // group, 1))
        return cls(w=jnp.repeat(w, group, axis=0), a=jnp.asarray(a, dtype),
                   compute_dtype=compute_dtype)

    @property
    def width(self) -> int:
        return self.w.shape[0]

    def apply(self, w: Array, u: Array) -> Array:
        """Network output `[B, d]` at hidden weights `w` `[m, p]` for inputs `u` `[B, p]`."""
        if self.compute_dtype is None:
            return jax.nn.relu(u @ w.T) @ self.a / math.sqrt(self.width)
        dtype = self.compute_dtype
        h = jax.nn.relu(u.astype(dtype) @ w.astype(dtype).T)
        return (h @ self.a.astype(dtype)).astype(w.dtype) / math.sqrt(self.width)

    def __call__(self, u: Array) -> Array:
        return self.apply(self.w, u)


def relu_ntk(u: Array, v: Array) -> Array:
    """Infinite-width NTK of `TwoLayerReLU` (hidden layer trained), per output coordinate.

    `K(u, v) = E_w[relu'(w.u) relu'(w.v)] u.v = u.v (pi - theta(u, v)) / (2 pi)` with `w ~ N(0,
    I)`; the full kernel is `K(u, v) I_d`. `u` `[n, p]`, `v` `[m, p]` -> `[n, m]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> u = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> print(relu_ntk(u, u))  # u.u / 2 on the diagonal; orthogonal inputs give 0
      [[0.5 0. ]
       [0.  0.5]]
    """
    dots = u @ v.T
    norms = jnp.linalg.norm(u, axis=1)[:, None] * jnp.linalg.norm(v, axis=1)[None, :]
    cos = jnp.clip(dots / jnp.maximum(norms, jnp.finfo(u.dtype).tiny), -1.0, 1.0)
    return dots * (math.pi - jnp.arccos(cos)) / (2.0 * math.pi)


def empirical_ntk(net: TwoLayerReLU, u: Array, v: Array) -> Array:
    """Finite-width NTK at the network's weights, per output coordinate: `[n, m]`.

    `K_m(u, v) = (1/m) sum_r 1[w_r.u > 0] 1[w_r.v > 0] u.v`. The tangent kernel's `(i, j)` output
    block is `(1/m) sum_r a_ri a_rj 1[.] 1[.] u.v`, which the Hadamard groups of
    `TwoLayerReLU.init` make `K_m delta_ij` exactly at the initial weights.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = TwoLayerReLU.init(jax.random.key(0), width=4096, in_dim=2, out_dim=1)
      >>> u = jnp.array([[1.0, 0.0]])
      >>> round(float(empirical_ntk(net, u, u)[0, 0]), 1)  # close to relu_ntk's 0.5
      0.5
    """
    on_u = (u @ net.w.T > 0).astype(u.dtype)
    on_v = (v @ net.w.T > 0).astype(u.dtype)
    return (on_u @ on_v.T) * (u @ v.T) / net.width
