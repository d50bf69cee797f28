"""ResNet-18 for 32x32 images ("low-resolution" variant of the data-diet code), flax.linen.

He et al. 2016 basic-block ResNet-18 with the CIFAR stem of Paul et al. 2021 (`ResNet18` in
mansheej/data_diet): a 3x3 stride-1 stem and no max-pool, four stages of two basic blocks with
64/128/256/512 channels (strides 1, 2, 2, 2), global average pooling and a dense head.
BatchNorm uses momentum 0.9 and epsilon 1e-5 as there. Per-example scores must call it with
`train=False` (running statistics), so that examples do not interact.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    channels: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        norm = lambda name: nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name
        )
        y = nn.Conv(self.channels, (3, 3), strides=self.stride, padding=1, use_bias=False)(x)
        y = nn.relu(norm("bn1")(y))
        y = nn.Conv(self.channels, (3, 3), strides=1, padding=1, use_bias=False)(y)
        y = norm("bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), strides=self.stride, use_bias=False, name="proj")(x)
            x = norm("proj_bn")(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 (low-resolution stem) mapping images [B, H, W, C] to logits [B, num_classes].

    Attributes:
      num_classes: number of output logits.
      width: channels of the first stage (64 in the paper; smaller for smoke tests).
      blocks: basic blocks per stage.
    """

    num_classes: int = 10
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        if x.ndim != 4:
            raise ValueError(f"ResNet18 expects NHWC images [B, H, W, C], got shape {x.shape}")
        h = nn.Conv(self.width, (3, 3), strides=1, padding=1, use_bias=False, name="stem")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="stem_bn")(
            h
        )
        h = nn.relu(h)
        for stage, num_blocks in enumerate(self.blocks):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                h = BasicBlock(self.width * 2**stage, stride, name=f"stage{stage}_block{block}")(
                    h, train=train
                )
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(h)
