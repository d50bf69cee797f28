"""A tiny causal transformer language model and temperature sampling with `lax.scan`.

Sized for CPU experiments on short synthetic sequences (a few hundred thousand parameters at
most): pre-LayerNorm blocks, learned absolute positions, tied nothing, no dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t.

    Projections compute in `dtype` (None: inferred); the softmax is float32 when it is set.
    `h` `(..., T, D)` -> `(..., T, D)`, `D` divisible by `num_heads`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> attn = CausalSelfAttention(num_heads=2)
      >>> h = jax.random.normal(jax.random.key(1), (1, 4, 8))
      >>> params = jax.jit(attn.init)(jax.random.key(0), h)
      >>> apply = jax.jit(attn.apply)
      >>> out = apply(params, h)
      >>> changed = apply(params, h.at[:, -1].set(0.0))  # change the last position only
      >>> out.shape, bool(jnp.allclose(out[:, :-1], changed[:, :-1]))  # earlier ones unchanged
      ((1, 4, 8), True)
    """

    num_heads: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        """h: (..., T, D) -> (..., T, D)."""
        t, d = h.shape[-2:]
        if d % self.num_heads:
            raise ValueError(f"d_model={d} is not divisible by num_heads={self.num_heads}.")
        head = d // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = nn.DenseGeneral((3, self.num_heads, head), name="qkv", **kw)(h)  # (..., T, 3, H, dh)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(jnp.float32(head))
        if self.dtype is not None:
            scores = scores.astype(jnp.float32)
        causal = jnp.tril(jnp.ones((t, t), bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        attn = jax.nn.softmax(scores, axis=-1)
        if self.dtype is not None:
            attn = attn.astype(self.dtype)
        out = jnp.einsum("...hqk,...khd->...qhd", attn, v)
        return nn.DenseGeneral(d, axis=(-2, -1), name="out", **kw)(out)


class Block(nn.Module):
    """Pre-LN transformer block: h + Attn(LN(h)), then h + MLP(LN(h)).

    Dense layers compute in `dtype` (None: inferred); LayerNorms in float32 when it is set.
    `h` `(..., T, D)` -> `(..., T, D)`; the MLP is `D -> mlp_ratio D -> D` with GELU.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> block = Block(num_heads=2, mlp_ratio=4)
      >>> h = jnp.ones((2, 5, 8))
      >>> params = jax.eval_shape(block.init, jax.random.key(0), h)  # shapes only
      >>> params["params"]["fc1"]["kernel"].shape, jax.eval_shape(block.apply, params, h).shape
      ((8, 32), (2, 5, 8))
    """

    num_heads: int
    mlp_ratio: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _ln(self, name: str, h: Array) -> Array:
        ln_dtype = None if self.dtype is None else jnp.float32
        z = nn.LayerNorm(dtype=ln_dtype, param_dtype=self.param_dtype, name=name)(h)
        return z if self.dtype is None else z.astype(self.dtype)

    @nn.compact
    def __call__(self, h: Array) -> Array:
        d = h.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = h + CausalSelfAttention(self.num_heads, name="attn", **kw)(self._ln("ln1", h))
        z = self._ln("ln2", h)
        z = nn.Dense(self.mlp_ratio * d, name="fc1", **kw)(z)
        z = nn.Dense(d, name="fc2", **kw)(nn.gelu(z))
        return h + z


class TransformerLM(nn.Module):
    """Decoder-only LM: tokens (..., T) int -> next-token logits (..., T, vocab_size).

    ``logits[..., t, :]`` is the distribution of token t+1 given tokens[..., :t+1].

    Attributes:
      vocab_size: number of token ids.
      max_len: largest sequence length T (size of the position table).
      d_model, num_layers, num_heads, mlp_ratio: the usual widths; d_model % num_heads == 0.
      dtype: compute dtype of the dense layers and attention (None: inferred, as flax does);
        when set, LayerNorms and the softmax run in float32 and the logits are float32
        (`scorejax.train.precision`).
      param_dtype: dtype of the parameters.

    Examples:
      `jax.eval_shape` runs `init` and `apply` on shapes only (`lm.init` gives the arrays):

      >>> import jax, jax.numpy as jnp
      >>> lm = TransformerLM(vocab_size=11, max_len=8, d_model=16, num_layers=2, num_heads=2)
      >>> tokens = jnp.zeros((3, 5), jnp.int32)
      >>> params = jax.eval_shape(lm.init, jax.random.key(0), tokens)
      >>> sorted(params["params"])
      ['block0', 'block1', 'head', 'ln_f', 'pos', 'tok']
      >>> jax.eval_shape(lm.apply, params, tokens).shape  # next-token logits
      (3, 5, 11)
    """

    vocab_size: int
    max_len: int
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        t = tokens.shape[-1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len={self.max_len}.")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers; got {tokens.dtype}.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = nn.Embed(self.vocab_size, self.d_model, name="tok", **kw)(tokens)
        pos = self.param(
            "pos", nn.initializers.normal(0.02), (self.max_len, self.d_model), self.param_dtype
        )
        h = emb + pos[:t]
        for i in range(self.num_layers):
            h = Block(self.num_heads, self.mlp_ratio, name=f"block{i}", **kw)(h)
        ln_dtype = None if self.dtype is None else jnp.float32
        h = nn.LayerNorm(dtype=ln_dtype, param_dtype=self.param_dtype, name="ln_f")(h)
        logits = nn.Dense(self.vocab_size, name="head", **kw)(h)
        return logits if self.dtype is None else logits.astype(jnp.float32)


def sample(
    logits_fn: Callable[[Array], Array],
    prompt: Array,
    key: Array,
    num_tokens: int,
    temperature: float | Array = 1.0,
) -> Array:
    """Ancestral sampling of ``num_tokens`` tokens after ``prompt`` at a temperature.

    y_t ~ softmax(z_t / T), z_t = logits_fn(prefix)[..., t-1, :]. The model is re-run on a
    fixed-length buffer each step (no KV cache): causal attention makes the unfilled tail
    irrelevant, and fixed shapes let `lax.scan` compile the loop once.

    Args:
      logits_fn: tokens (B, L) -> logits (B, L, V), causal (e.g. ``partial(model.apply, params)``).
      prompt: (B, P) int tokens, P >= 1.
      key: PRNG key; step t uses ``fold_in(key, t)``.
      num_tokens: static number of tokens to generate.
      temperature: T > 0 (float or traced scalar), or the Python float 0.0 for greedy argmax.
    Returns:
      (B, num_tokens) int32 sampled tokens. With teacher forcing, the `scorejax.logprobs.
      sequence_logprob` of `token_logprobs` at the same temperature is the exact log-probability
      of any such continuation.

    Examples:
      A model that predicts `y + 1 mod 5` after token `y` (any `logits_fn`, e.g.
      ``functools.partial(TransformerLM(...).apply, params)``):

      >>> import jax, jax.numpy as jnp
      >>> logits_fn = lambda tokens: 4.0 * jax.nn.one_hot((tokens + 1) % 5, 5)
      >>> prompt = jnp.array([[1, 2], [3, 4]])
      >>> sample(logits_fn, prompt, jax.random.key(0), num_tokens=3, temperature=0.0)  # argmax
      Array([[3, 4, 0],
             [0, 1, 2]], dtype=int32)
      >>> tokens = sample(logits_fn, prompt, jax.random.key(0), num_tokens=3)  # temperature 1
      >>> tokens.shape, tokens.dtype
      ((2, 3), dtype('int32'))
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (B, P) with P >= 1; got shape {prompt.shape}.")
    greedy = isinstance(temperature, (int, float)) and temperature == 0
    if isinstance(temperature, (int, float)) and temperature < 0:
        raise ValueError(f"temperature must be > 0 (or 0 for greedy); got {temperature}.")
    b, p = prompt.shape
    buf = jnp.concatenate([prompt.astype(jnp.int32), jnp.zeros((b, num_tokens), jnp.int32)], 1)

    def step(buf: Array, t: Array) -> tuple[Array, Array]:
        logits = jax.lax.dynamic_index_in_dim(logits_fn(buf), p - 1 + t, axis=1, keepdims=False)
        if greedy:
            nxt = jnp.argmax(logits, axis=-1)
        else:
            nxt = jax.random.categorical(jax.random.fold_in(key, t), logits / temperature)
        nxt = nxt.astype(jnp.int32)
        return jax.lax.dynamic_update_index_in_dim(buf, nxt, p + t, axis=1), nxt

    _, out = jax.lax.scan(step, buf, jnp.arange(num_tokens))
    return out.T
