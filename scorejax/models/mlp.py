"""Time-conditioned MLP for score models on low-dimensional data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

TIME_EMBEDDINGS = ("fourier", "sinusoidal")

__all__ = ["ScoreMLP", "fourier_features", "sinusoidal_features", "TIME_EMBEDDINGS"]


def fourier_features(t: Array, dim: int, scale: float = 16.0, seed: int = 0) -> Array:
    """Gaussian random Fourier features of time (Tancik et al. 2020; score SDEs' NCSN++).

    `[sin(2 pi t w_j), cos(2 pi t w_j)]_j` with fixed `w_j ~ N(0, scale^2)`, `j < dim / 2`, drawn
    from `seed` (constants, not parameters). `t` `[B]` -> `[B, dim]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> fourier_features(jnp.array([0.0, 0.5, 1.0]), 8).shape
      (3, 8)
      >>> print(fourier_features(jnp.zeros(1), 4))  # t = 0: sines 0, cosines 1
      [[0. 0. 1. 1.]]
    """
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    w = scale * jax.random.normal(jax.random.key(seed), (dim // 2,), jnp.float32)
    arg = 2 * math.pi * t[:, None] * w[None].astype(t.dtype)
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def sinusoidal_features(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """Transformer-style sinusoidal features (DDPM's time embedding).

    `[sin(t f_j), cos(t f_j)]` with `f_j = max_period^{-j / (dim/2)}`, `j < dim / 2`. Callers scale
    `t` first (`ScoreMLP` uses `1000 t`). `t` `[B]` -> `[B, dim]`.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(sinusoidal_features(jnp.array([0.0, 2.0]), 4))  # f = (1, 1/100)
      [[ 0.      0.      1.      1.    ]
       [ 0.9093  0.02   -0.4161  0.9998]]
    """
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=t.dtype) / half)
    arg = t[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class ScoreMLP(nn.Module):
    """MLP `(x, t) -> output` with `output.shape == x.shape`, conditioned on time features.

    The input layer sees `concat(x, phi(t))`, where `phi` is `time_embedding` (`"fourier"`:
    Gaussian random Fourier features of `t` with std `fourier_scale`; `"sinusoidal"`: sinusoidal
    features of `1000 t`) passed through a Dense + SiLU; then `hidden_sizes` Dense + SiLU layers
    and a linear head of width `d`. The output's meaning (score, noise, clean data) is decided by
    the caller (`scorejax.score_matching.make_score_fn`).

    Attributes:
      data_dim: if set, inputs must have this last dimension (checked at trace time).
      hidden_sizes: widths of the hidden layers.
      time_embedding: `"fourier"` or `"sinusoidal"`.
      embed_dim: width of the time features (even).
      fourier_scale: std of the random Fourier frequencies.
      dtype: computation dtype of the dense layers (see `scorejax.train.precision`).
      param_dtype: dtype of the parameters.

    Call: `x` `[B, d]`, `t` scalar or `[B]`; returns `[B, d]`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = ScoreMLP(data_dim=2, hidden_sizes=(16,), embed_dim=8)
      >>> x, t = jnp.ones((4, 2)), jnp.full((4,), 0.5)
      >>> params = net.init(jax.random.key(0), x, t)
      >>> score_fn = net.apply  # score_fn(params, x, t), as the losses take it
      >>> score_fn(params, x, t).shape
      (4, 2)
      >>> bool(jnp.allclose(score_fn(params, x, 0.5), score_fn(params, x, t)))  # a scalar t
      True
    """

    data_dim: int | None = None
    hidden_sizes: Sequence[int] = (256, 256, 256)
    time_embedding: str = "fourier"
    embed_dim: int = 64
    fourier_scale: float = 16.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, t: Array | float) -> Array:
        if x.ndim != 2:
            raise ValueError(f"ScoreMLP expects x of shape [B, d], got {x.shape}")
        if self.data_dim is not None and x.shape[-1] != self.data_dim:
            raise ValueError(
                f"ScoreMLP was configured with data_dim={self.data_dim} but got inputs of "
                f"dimension {x.shape[-1]} (x shape {x.shape})"
            )
        t = jnp.asarray(t, x.dtype)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (x.shape[0],))
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or [B]=[{x.shape[0]}], got shape {t.shape}")
        if self.time_embedding == "fourier":
            temb = fourier_features(t, self.embed_dim, self.fourier_scale)
        elif self.time_embedding == "sinusoidal":
            temb = sinusoidal_features(1000.0 * t, self.embed_dim)
        else:
            raise ValueError(
                f"unknown time_embedding {self.time_embedding!r}; expected one of {TIME_EMBEDDINGS}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        temb = nn.silu(nn.Dense(self.embed_dim, name="time_proj", **kw)(temb))
        h = jnp.concatenate([x.astype(self.dtype), temb.astype(self.dtype)], axis=-1)
        for i, width in enumerate(self.hidden_sizes):
            h = nn.silu(nn.Dense(width, name=f"hidden_{i}", **kw)(h))
        out = nn.Dense(x.shape[-1], name="out", **kw)(h)
        return out.astype(x.dtype)
