"""Small image classifiers: an MLP and a small CNN (flax.linen).

Neither uses batch statistics, so every example's logits depend on that example alone. That is what
per-example scores (EL2N, GraNd, VoG in `scorejax.importance`) need, and it lets the same module
score generated samples.

Both take a batch of images `x` of shape [B, H, W, C] (NHWC, any value range the caller trains
with) and return logits [B, num_classes]; with `return_features=True` they also return the
penultimate activations [B, F] (for embedding-based sample metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

# He-normal initialisation, as in the data-diet digits protocol (ReLU networks).
_KERNEL_INIT = nn.initializers.he_normal()


class MLPClassifier(nn.Module):
    """ReLU MLP on flattened inputs: x -> Dense(f1) -> ReLU -> ... -> Dense(num_classes).

    Attributes:
      num_classes: number of output logits K.
      features: hidden widths (default 128-128: the 64-128-128-10 digits MLP of the notes).
    """

    num_classes: int
    features: Sequence[int] = (128, 128)

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, return_features: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        """Logits [B, K] for inputs [B, ...] (all trailing axes are flattened)."""
        if x.ndim < 2:
            raise ValueError(f"MLPClassifier expects a batch [B, ...], got shape {x.shape}")
        h = x.reshape(x.shape[0], -1)
        for width in self.features:
            h = nn.relu(nn.Dense(width, kernel_init=_KERNEL_INIT)(h))
        logits = nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT)(h)
        return (logits, h) if return_features else logits


class CNNClassifier(nn.Module):
    """Small CNN for NHWC images.

    3x3 convolutions with ReLU; the first keeps the resolution, each later one halves it
    (stride 2); then flatten -> Dense(hidden) -> ReLU -> Dense(num_classes). For 8x8 digits with
    the defaults: 8x8x16 -> 4x4x32 -> 64 -> 10 (about 42k parameters).

    Attributes:
      num_classes: number of output logits K.
      features: channel counts of the convolutions.
      hidden: width of the penultimate dense layer (the `return_features` embedding).
    """

    num_classes: int
    features: Sequence[int] = (16, 32)
    hidden: int = 64

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, return_features: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        """Logits [B, K] for images [B, H, W, C]."""
        if x.ndim != 4:
            raise ValueError(f"CNNClassifier expects NHWC images [B, H, W, C], got shape {x.shape}")
        h = x
        for i, channels in enumerate(self.features):
            stride = 1 if i == 0 else 2
            h = nn.Conv(
                channels, (3, 3), strides=(stride, stride), padding="SAME", kernel_init=_KERNEL_INIT
            )(h)
            h = nn.relu(h)
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(nn.Dense(self.hidden, kernel_init=_KERNEL_INIT)(h))
        logits = nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT)(h)
        return (logits, h) if return_features else logits
