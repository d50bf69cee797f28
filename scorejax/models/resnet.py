"""ResNet-18 for 32x32 images ("low-resolution" variant of the data-diet code), flax.linen.

He et al. 2016 basic-block ResNet-18 with the CIFAR stem of Paul et al. 2021 (`ResNet18` in
mansheej/data_diet): a 3x3 stride-1 stem and no max-pool, four stages of two basic blocks with
64/128/256/512 channels (strides 1, 2, 2, 2), global average pooling and a dense head.
BatchNorm uses momentum 0.9 and epsilon 1e-5 as there. Per-example scores must call it with
`train=False` (running statistics), so that examples do not interact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def _norm_dtype(dtype: Any) -> Any:
    """BatchNorm computes in float32 when a compute dtype is set (None: flax's inference)."""
    return None if dtype is None else jnp.float32


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut.

    `relu(shortcut(x) + bn(conv(relu(bn(conv(x))))))`: `x` `[B, H, W, Cin]` ->
    `[B, H / stride, W / stride, channels]`.

    Examples:
      >>> import functools, jax, jax.numpy as jnp
      >>> block = BasicBlock(channels=16, stride=2)  # with a 1x1 projection shortcut
      >>> x = jnp.ones((1, 8, 8, 8))
      >>> init, apply = (functools.partial(f, train=False) for f in (block.init, block.apply))
      >>> variables = jax.eval_shape(init, jax.random.key(0), x)  # shapes only
      >>> jax.eval_shape(apply, variables, x).shape
      (1, 4, 4, 16)
    """

    channels: int
    stride: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(name: str, h: jnp.ndarray) -> jnp.ndarray:
            h = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=_norm_dtype(self.dtype),
                param_dtype=self.param_dtype,
                name=name,
            )(h)
            return h if self.dtype is None else h.astype(self.dtype)

        y = nn.Conv(self.channels, (3, 3), strides=self.stride, padding=1, **kw)(x)
        y = nn.relu(norm("bn1", y))
        y = nn.Conv(self.channels, (3, 3), strides=1, padding=1, **kw)(y)
        y = norm("bn2", y)
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), strides=self.stride, name="proj", **kw)(x)
            x = norm("proj_bn", x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 (low-resolution stem) mapping images [B, H, W, C] to logits [B, num_classes].

    Attributes:
      num_classes: number of output logits.
      width: channels of the first stage (64 in the paper; smaller for smoke tests).
      blocks: basic blocks per stage.
      dtype: compute dtype of convolutions and the head (None: inferred, as flax does); when
        set, batch norms run in float32 and the logits are float32 (`scorejax.train.precision`).
      param_dtype: dtype of the parameters.

    Examples:
      `jax.eval_shape` runs `init` and `apply` on shapes only (`net.init` gives the arrays):

      >>> import functools, jax, jax.numpy as jnp
      >>> net = ResNet18(num_classes=10)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> init = functools.partial(net.init, train=False)  # static options go in a partial
      >>> variables = jax.eval_shape(init, jax.random.key(0), x)
      >>> sorted(variables), sum(p.size for p in jax.tree.leaves(variables["params"]))
      (['batch_stats', 'params'], 11173962)
      >>> train_apply = functools.partial(net.apply, train=True, mutable=["batch_stats"])
      >>> logits, updates = jax.eval_shape(train_apply, variables, x)  # BN statistics update
      >>> logits.shape, sorted(updates)
      ((2, 10), ['batch_stats'])
    """

    num_classes: int = 10
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        if x.ndim != 4:
            raise ValueError(f"ResNet18 expects NHWC images [B, H, W, C], got shape {x.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Conv(self.width, (3, 3), strides=1, padding=1, use_bias=False, name="stem", **kw)(x)
        h = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=_norm_dtype(self.dtype),
            param_dtype=self.param_dtype,
            name="stem_bn",
        )(h)
        h = nn.relu(h)
        for stage, num_blocks in enumerate(self.blocks):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage}_block{block}"
                h = BasicBlock(self.width * 2**stage, stride, name=name, **kw)(h, train=train)
        h = jnp.mean(h, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="head", **kw)(h)
        return logits if self.dtype is None else logits.astype(jnp.float32)
