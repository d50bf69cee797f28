"""Log-probabilities of token sequences: per-token values from logits, and their masked sum.

One `sequence_logprob` serves every research line that scores whole answers or responses: the
pass@N estimators and DCO losses (`scorejax.pass_at`, `scorejax.dco`) take its sum, DPO and the
ranking accuracies (`scorejax.dpo`) its sum or its length-normalised mean. Logits of any model
become per-token values with `token_logprobs`:

    log pi(y_t | x, y_<t) = log softmax(z_t / T)[y_t]                         (token_logprobs)
    log pi(y | x) = sum_t m_t log pi(y_t | x, y_<t)                           (sequence_logprob)

Values are natural logs (nats), computed in at least float32: a sum over many bfloat16 tokens
loses the answer's probability. Shapes and dtypes are checked while tracing (`ValueError`,
eagerly and under `jit` alike).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

__all__ = ["sequence_logprob", "token_logprobs"]


def _float_dtype(x: jax.Array) -> jnp.dtype:
    """At least float32: log-space sums in bfloat16/float16 lose the answer probability."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(dtype, jnp.float32)


def token_logprobs(
    logits: jax.Array, tokens: jax.Array, *, temperature: float | jax.Array = 1.0
) -> jax.Array:
    r"""Log-probability of each target token under temperature-T sampling.

        l_t = log softmax(z_t / T)[y_t]

    With teacher forcing, exp(sum_t l_t) is exactly the probability that temperature-T
    ancestral sampling produces the sequence.

    Args:
      logits: (..., T, V) next-token logits; ``logits[..., t, :]`` predicts ``tokens[..., t]``.
      tokens: (..., T) integer targets.
      temperature: sampling temperature T > 0 (a float or a traced scalar).

    Returns:
      (..., T) log-probabilities in nats, float32 or wider. Differentiable in logits.

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
      >>> print(jnp.exp(token_logprobs(logits, jnp.asarray([[0, 1]]))))
      [[0.5 0.8]]
    """
    logits = jnp.asarray(logits)
    tokens = jnp.asarray(tokens)
    if logits.ndim < 2:
        raise ValueError(f"logits must be (..., T, V); got shape {logits.shape}.")
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"tokens shape {tokens.shape} must equal logits.shape[:-1] = {logits.shape[:-1]}."
        )
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers; got dtype {tokens.dtype}.")
    dtype = _float_dtype(logits)
    logp = jax.nn.log_softmax(logits.astype(dtype) / jnp.asarray(temperature, dtype), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sequence_logprob(
    token_logps: jax.Array, mask: jax.Array | None = None, *, length_normalize: bool = False
) -> jax.Array:
    r"""Log-probability of a sequence from its per-token log-probabilities.

        log pi(y|x) = sum_t m_t l_t
        length-normalised: log pi~(y|x) = sum_t m_t l_t / sum_t m_t      (= -log perplexity)

    Use the sum for pass@N and DCO (`scorejax.dco`): a mean over T tokens would divide DCO's
    confidence factor by T per example.

    Args:
      token_logps: (..., T) per-token log-probabilities (e.g. `token_logprobs`).
      mask: optional (..., T) bool or 0/1, True on the scored tokens (the answer or response;
        prompt and padding False, any padding side). None scores every token.
      length_normalize: divide by the number of scored tokens.

    Returns:
      (...) log-probabilities in nats, float32 or wider; length-normalised values are NaN for
      an empty sequence. Differentiable in token_logps.

    Examples:
      >>> import jax.numpy as jnp
      >>> lp = jnp.log(jnp.asarray([[0.9, 0.5, 0.2]]))
      >>> mask = jnp.asarray([[False, True, True]])
      >>> print(jnp.exp(sequence_logprob(lp, mask)))
      [0.1]
      >>> print(sequence_logprob(lp, mask, length_normalize=True))
      [-1.1513]
    """
    lp = jnp.asarray(token_logps)
    lp = lp.astype(_float_dtype(lp))
    if lp.ndim < 1:
        raise ValueError(f"token_logps must be (..., T); got shape {lp.shape}.")
    m = chk.check_mask("mask", mask, "token_logps", lp)
    total = jnp.sum(jnp.where(m, lp, 0.0), axis=-1)
    if length_normalize:
        return total / jnp.sum(m, axis=-1)
    return total
