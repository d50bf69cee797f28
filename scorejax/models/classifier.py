"""Small image classifiers: an MLP and a small CNN (flax.linen).

Neither uses batch statistics, so every example's logits depend on that example alone. That is what
per-example scores (EL2N and GraNd in `scorejax.importance`, VoG in `scorejax.vog`)
need, and it lets the same module score generated samples.

Both take a batch of images `x` of shape [B, H, W, C] (NHWC, any value range the caller trains
with) and return logits [B, num_classes]; with `return_features=True` they also return the
penultimate activations [B, F] (for embedding-based sample metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# He-normal initialisation, as in the data-diet digits protocol (ReLU networks).
_KERNEL_INIT = nn.initializers.he_normal()


def _outputs(logits: jnp.ndarray, h: jnp.ndarray, dtype: Any, return_features: bool):
    """Logits (and features) in float32 when a compute dtype is set; unchanged otherwise."""
    if dtype is not None:
        logits, h = logits.astype(jnp.float32), h.astype(jnp.float32)
    return (logits, h) if return_features else logits


class MLPClassifier(nn.Module):
    """ReLU MLP on flattened inputs: x -> Dense(f1) -> ReLU -> ... -> Dense(num_classes).

    Attributes:
      num_classes: number of output logits K.
      features: hidden widths (default 128-128: the 64-128-128-10 digits MLP of the notes).
      dtype: compute dtype of the layers (None: inferred from the inputs, as flax does); when
        set, logits and features are returned in float32 (`scorejax.train.precision`).
      param_dtype: dtype of the parameters.

    Examples:
      `jax.eval_shape` runs `init` and `apply` on shapes only (`net.init(key, x)` gives arrays):

      >>> import functools, jax, jax.numpy as jnp
      >>> net = MLPClassifier(num_classes=10)
      >>> x = jnp.ones((4, 8, 8, 1))
      >>> params = jax.eval_shape(net.init, jax.random.key(0), x)
      >>> sum(p.size for p in jax.tree.leaves(params))  # the 64-128-128-10 MLP
      26122
      >>> apply = functools.partial(net.apply, return_features=True)  # static options: partial
      >>> logits, features = jax.eval_shape(apply, params, x)
      >>> logits.shape, features.shape
      ((4, 10), (4, 128))
    """

    num_classes: int
    features: Sequence[int] = (128, 128)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, return_features: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        """Logits [B, K] for inputs [B, ...] (all trailing axes are flattened)."""
        if x.ndim < 2:
            raise ValueError(f"MLPClassifier expects a batch [B, ...], got shape {x.shape}")
        kw = dict(kernel_init=_KERNEL_INIT, dtype=self.dtype, param_dtype=self.param_dtype)
        h = x.reshape(x.shape[0], -1)
        for width in self.features:
            h = nn.relu(nn.Dense(width, **kw)(h))
        logits = nn.Dense(self.num_classes, **kw)(h)
        return _outputs(logits, h, self.dtype, return_features)


class CNNClassifier(nn.Module):
    """Small CNN for NHWC images.

    3x3 convolutions with ReLU; the first keeps the resolution, each later one halves it
    (stride 2); then flatten -> Dense(hidden) -> ReLU -> Dense(num_classes). For 8x8 digits with
    the defaults: 8x8x16 -> 4x4x32 -> 64 -> 10 (about 38k parameters).

    Attributes:
      num_classes: number of output logits K.
      features: channel counts of the convolutions.
      hidden: width of the penultimate dense layer (the `return_features` embedding).
      dtype: compute dtype of the layers (None: inferred from the inputs, as flax does); when
        set, logits and features are returned in float32 (`scorejax.train.precision`).
      param_dtype: dtype of the parameters.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = CNNClassifier(num_classes=10)
      >>> x = jnp.ones((2, 8, 8, 1))
      >>> params = jax.eval_shape(net.init, jax.random.key(0), x)  # shapes only
      >>> sum(p.size for p in jax.tree.leaves(params))
      38282
      >>> jax.eval_shape(net.apply, params, x).shape  # 8x8x16 -> 4x4x32 -> 64 -> 10
      (2, 10)
    """

    num_classes: int
    features: Sequence[int] = (16, 32)
    hidden: int = 64
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, return_features: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        """Logits [B, K] for images [B, H, W, C]."""
        if x.ndim != 4:
            raise ValueError(f"CNNClassifier expects NHWC images [B, H, W, C], got shape {x.shape}")
        kw = dict(kernel_init=_KERNEL_INIT, dtype=self.dtype, param_dtype=self.param_dtype)
        h = x
        for i, channels in enumerate(self.features):
            stride = 1 if i == 0 else 2
            h = nn.Conv(channels, (3, 3), strides=(stride, stride), padding="SAME", **kw)(h)
            h = nn.relu(h)
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(nn.Dense(self.hidden, **kw)(h))
        logits = nn.Dense(self.num_classes, **kw)(h)
        return _outputs(logits, h, self.dtype, return_features)
