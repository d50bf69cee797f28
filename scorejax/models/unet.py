"""A small time-conditioned U-Net for image score models (DDPM / DDPM++ layout, flax.linen).

Layout (Ho et al. 2020, App. B; Song et al. 2021's DDPM++ with `skip_rescale`):

    conv3x3 -> [levels: num_res_blocks x (ResBlock [+ Attention]) then 2x downsample]
            -> middle (ResBlock, Attention, ResBlock)
            -> [levels reversed: (num_res_blocks + 1) x (concat skip, ResBlock [+ Attention])
                then 2x upsample] -> GroupNorm -> SiLU -> conv3x3 (zero-initialised)

Level `i` has `channels * channel_mult[i]` channels and resolution `H / 2^i`; self-attention runs
at the resolutions listed in `attn_resolutions` (and in the middle block when `mid_attention`).
Time enters through Gaussian random Fourier features of `t` (`fourier_features`, as in NCSN++)
followed by a two-layer MLP, added per channel inside every residual block.

The output has the input's shape; its meaning (noise, score, clean image) is the caller's choice
(`scorejax.score_matching.make_score_fn`). The last convolution of every residual branch and of
the output is zero-initialised, so a fresh network outputs exactly 0 and every residual block
starts as its skip path scaled by 1/sqrt(2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorejax.models.mlp import fourier_features

Array = jax.Array

__all__ = ["UNet", "ResBlock", "AttentionBlock"]

_ZERO = nn.initializers.zeros
# DDPM's `default_init`: uniform with variance 1 / fan_avg.
_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_SKIP_SCALE = 1.0 / math.sqrt(2.0)


def _groups(channels: int, num_groups: int) -> int:
    return math.gcd(channels, num_groups)


def _group_norm(x: Array, num_groups: int, dtype: jnp.dtype, param_dtype: jnp.dtype) -> Array:
    """GroupNorm computed in float32 whatever the compute dtype, returned in `dtype`."""
    groups = _groups(x.shape[-1], num_groups)
    return nn.GroupNorm(groups, dtype=jnp.float32, param_dtype=param_dtype)(x).astype(dtype)


class ResBlock(nn.Module):
    """Residual block `(skip(x) + F(x, temb)) / sqrt(2)`.

    `F = conv(drop(silu(gn(conv(silu(gn(x))) + Dense(silu(temb))))))`, 3x3 convolutions.

    `x` `[B, H, W, Cin]`, `temb` `[B, E]` -> `[B, H, W, out_channels]`; the skip is a 1x1 conv
    when `Cin != out_channels`. Convolutions compute in `dtype`, group norms in float32;
    parameters are `param_dtype`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x, temb = jnp.ones((2, 4, 4, 8)), jnp.ones((2, 32))
      >>> block = ResBlock(out_channels=16)  # 8 -> 16 channels: a 1x1 conv skip
      >>> params = jax.eval_shape(block.init, jax.random.key(0), x, temb)  # shapes only
      >>> jax.eval_shape(block.apply, params, x, temb).shape
      (2, 4, 4, 16)
    """

    out_channels: int
    num_groups: int = 8
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool = False) -> Array:
        c = self.out_channels
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(_group_norm(x, self.num_groups, self.dtype, self.param_dtype))
        h = nn.Conv(c, (3, 3), kernel_init=_INIT, **kw)(h)
        h = h + nn.Dense(c, kernel_init=_INIT, **kw)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(_group_norm(h, self.num_groups, self.dtype, self.param_dtype))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(c, (3, 3), kernel_init=_ZERO, **kw)(h)
        if x.shape[-1] == c:
            skip = x.astype(self.dtype)
        else:
            skip = nn.Conv(c, (1, 1), kernel_init=_INIT, name="skip", **kw)(x)
        return (skip + h) * _SKIP_SCALE


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over the `H*W` positions: `(x + Attn(gn(x))) / sqrt(2)`.

    `x` `[B, H, W, C]` -> same shape. The output projection is zero-initialised. Projections
    compute in `dtype`; the group norm and the softmax in float32.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.ones((2, 4, 4, 8))
      >>> block = AttentionBlock(num_heads=2)
      >>> params = jax.eval_shape(block.init, jax.random.key(0), x)  # shapes only
      >>> jax.eval_shape(block.apply, params, x).shape
      (2, 4, 4, 8)
    """

    num_heads: int = 1
    num_groups: int = 8
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        h = _group_norm(x, self.num_groups, self.dtype, self.param_dtype)
        h = h.reshape(b, hgt * wid, c)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=c,
            out_features=c,
            kernel_init=_INIT,
            out_kernel_init=_ZERO,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            force_fp32_for_softmax=True,
        )(h)
        return (x + h.reshape(b, hgt, wid, c)) * _SKIP_SCALE


class UNet(nn.Module):
    """Time-conditioned U-Net `(x [B,H,W,C], t [B] or scalar) -> [B,H,W,C]`.

    Attributes:
      channels: width of the first level (every level width must be divisible by `num_groups`
        for full group norm; otherwise the largest common divisor is used).
      channel_mult: per-level width multipliers; `len(channel_mult) - 1` downsamplings, so `H`
        and `W` must be divisible by `2^(len(channel_mult) - 1)`.
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      attn_resolutions: spatial sizes (of `H`) at which self-attention follows each ResBlock.
      mid_attention: self-attention in the middle block.
      num_heads: attention heads.
      num_groups: GroupNorm groups.
      dropout: dropout rate inside residual blocks (active when `train=True`; needs a `dropout`
        PRNG stream).
      fourier_scale: std of the random Fourier frequencies of `t`.
      dtype: compute dtype of convolutions, dense layers and attention projections (group
        norms, the attention softmax and the output are float32; see
        `scorejax.train.precision`).
      param_dtype: dtype of the parameters.
      remat: rematerialise every residual and attention block (`nn.remat`): their activations
        are recomputed in the backward pass instead of stored, lowering peak memory for about
        one more forward pass. Same parameters and gradients.

    Examples:
      `jax.eval_shape` runs `init` and `apply` on shapes only (`net.init` gives the arrays):

      >>> import jax, jax.numpy as jnp
      >>> net = UNet(channels=16, channel_mult=(1, 2), dtype=jnp.bfloat16, remat=True)
      >>> x, t = jnp.zeros((4, 8, 8, 1)), jnp.full((4,), 0.5)
      >>> params = jax.eval_shape(net.init, jax.random.key(0), x, t)
      >>> {p.dtype.name for p in jax.tree.leaves(params)}  # bfloat16 compute, float32 params
      {'float32'}
      >>> out = jax.eval_shape(net.apply, params, x, t)
      >>> out.shape, out.dtype
      ((4, 8, 8, 1), dtype('float32'))
    """

    channels: int = 32
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (4,)
    mid_attention: bool = True
    num_heads: int = 1
    num_groups: int = 8
    dropout: float = 0.0
    fourier_scale: float = 16.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def _check(self, x: Array, t: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC images [B, H, W, C], got shape {x.shape}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"UNet with {len(self.channel_mult)} levels needs H and W divisible by {factor}, "
                f"got image shape {x.shape[1:3]}"
            )
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (x.shape[0],))
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or [B]=[{x.shape[0]}], got shape {t.shape}")
        return t

    @nn.compact
    def __call__(self, x: Array, t: Array | float, train: bool = False) -> Array:
        t = self._check(x, t)
        embed = 4 * self.channels
        temb = fourier_features(t, self.channels, self.fourier_scale)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = functools.partial(nn.Dense, embed, kernel_init=_INIT, **kw)
        temb = dense(name="time_dense_0")(temb)
        temb = dense(name="time_dense_1")(nn.silu(temb))
        conv = functools.partial(nn.Conv, kernel_size=(3, 3), kernel_init=_INIT, **kw)
        # Rematerialised blocks get the names automatic naming gives the plain ones, so the
        # parameter tree does not depend on `remat`.
        res_block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        attn_block = nn.remat(AttentionBlock) if self.remat else AttentionBlock
        count = {"res": 0, "attn": 0}

        def res(c: int) -> ResBlock:
            name = f"ResBlock_{count['res']}"
            count["res"] += 1
            return res_block(c, self.num_groups, self.dropout, name=name, **kw)

        def attn() -> AttentionBlock:
            name = f"AttentionBlock_{count['attn']}"
            count["attn"] += 1
            return attn_block(self.num_heads, self.num_groups, name=name, **kw)

        h = conv(self.channels, name="conv_in")(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res(self.channels * mult)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                skips.append(h)
            if level < len(self.channel_mult) - 1:
                h = conv(h.shape[-1], strides=(2, 2))(h)
                skips.append(h)

        h = res(h.shape[-1])(h, temb, train)
        if self.mid_attention:
            h = attn()(h)
        h = res(h.shape[-1])(h, temb, train)

        for level in reversed(range(len(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(self.channels * self.channel_mult[level])(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
            if level > 0:
                b, hgt, wid, c = h.shape
                h = jax.image.resize(h, (b, 2 * hgt, 2 * wid, c), method="nearest")
                h = conv(c)(h)

        h = nn.silu(_group_norm(h, self.num_groups, self.dtype, self.param_dtype))
        out = nn.Conv(x.shape[-1], (3, 3), kernel_init=_ZERO, name="conv_out", **kw)(h)
        return out.astype(x.dtype)
