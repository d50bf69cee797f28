"""Likelihood displacement in DPO: CHES similarity and the normalised edit distance.

Razin et al., *Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization* (arXiv 2410.08847): CHES and length-normalised CHES (code `ches/ches.py`), and the
normalised edit distance baseline. Shapes raise `ValueError` while tracing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

__all__ = ["ches_score", "normalized_edit_distance", "response_prediction_mask"]


def response_prediction_mask(
    response_mask: jax.Array, *, include_final_token: bool = False
) -> jax.Array:
    r"""Positions whose hidden state predicts a response token, from a token-level mask.

    The hidden state at position t predicts token t + 1, so the predicting positions are
    `response_mask` shifted left by one: the last prompt token up to the second-to-last response
    token (|y| positions). This is the convention of `ches/ches.py`, for any padding side.
    `include_final_token=True` also includes the last response token's own position (|y| + 1
    positions), the convention of the authors' per-example script
    `compute_preference_similarity_per_example.py`.

    Args:
      response_mask: (..., L) 1 on response tokens of the (prompt, response) sequence.

    Returns:
      (..., L) bool mask.

    Examples:
      >>> import jax.numpy as jnp
      >>> m = jnp.asarray([0, 0, 1, 1, 0])
      >>> print(response_prediction_mask(m).astype(int))
      [0 1 1 0 0]
      >>> print(response_prediction_mask(m, include_final_token=True).astype(int))
      [0 1 1 1 0]
    """
    m = jnp.asarray(response_mask).astype(bool)
    shifted = jnp.concatenate([m[..., 1:], jnp.zeros_like(m[..., :1])], axis=-1)
    return shifted | m if include_final_token else shifted


def ches_score(
    hidden_chosen: jax.Array,
    mask_chosen: jax.Array,
    hidden_rejected: jax.Array,
    mask_rejected: jax.Array,
    *,
    length_normalized: bool = False,
) -> jax.Array:
    r"""Centered hidden embedding similarity (Razin et al., Definition 2; `ches/ches.py`).

        H^+ = \sum_{k=1}^{|y^+|} h_{x, y^+_{<k}},   H^- = \sum_{k=1}^{|y^-|} h_{x, y^-_{<k}}
        CHES(y^+, y^-)    = <H^+, H^-> - ||H^+||^2 = <H^+, H^- - H^+>
        LN-CHES(y^+, y^-) = <H^+/|y^+|, H^-/|y^-|> - ||H^+/|y^+|||^2

    h are last-layer hidden states (the vectors multiplied by the unembedding). Higher CHES means
    more similar responses and a larger risk of likelihood displacement; CHES(y, y) = 0 and the
    score is asymmetric. The masks select the summed positions, normally
    `response_prediction_mask(response_token_mask)`; any padding side works. |y| is the mask
    count, so LN-CHES is NaN for an empty response.

    Args:
      hidden_chosen: (..., L, D) hidden states of (x, y^+). mask_chosen: (..., L).
      hidden_rejected: (..., L', D) hidden states of (x, y^-). mask_rejected: (..., L').

    Returns:
      (...) scores. Differentiable in the hidden states.

    Examples:
      >>> import jax.numpy as jnp
      >>> h_pos = jnp.asarray([[1.0, 0.0], [1.0, 0.0]])
      >>> h_neg = jnp.asarray([[1.0, 1.0], [0.0, 1.0]])
      >>> mask = jnp.asarray([True, True])
      >>> print(ches_score(h_pos, mask, h_neg, mask), ches_score(h_pos, mask, h_pos, mask))
      -2.0 0.0
      >>> print(ches_score(h_pos, mask, h_neg, mask, length_normalized=True))
      -0.5
    """
    hc, hr = chk.as_float(hidden_chosen), chk.as_float(hidden_rejected)
    mc = chk.check_mask("mask_chosen", mask_chosen, "hidden_chosen[..., 0]", hc[..., 0])
    mr = chk.check_mask("mask_rejected", mask_rejected, "hidden_rejected[..., 0]", hr[..., 0])
    if hc.shape[:-2] != hr.shape[:-2] or hc.shape[-1] != hr.shape[-1]:
        raise ValueError(
            f"shape mismatch: hidden_chosen{hc.shape} and hidden_rejected{hr.shape} need the same "
            "batch shape and hidden size"
        )
    h_pos = jnp.sum(jnp.where(mc[..., None], hc, 0), axis=-2)
    h_neg = jnp.sum(jnp.where(mr[..., None], hr, 0), axis=-2)
    if length_normalized:
        h_pos = h_pos / jnp.sum(mc, axis=-1)[..., None]
        h_neg = h_neg / jnp.sum(mr, axis=-1)[..., None]
    return jnp.sum(h_pos * (h_neg - h_pos), axis=-1)


def normalized_edit_distance(
    tokens_a: jax.Array,
    tokens_b: jax.Array,
    *,
    mask_a: jax.Array | None = None,
    mask_b: jax.Array | None = None,
) -> jax.Array:
    r"""Levenshtein distance between two token sequences divided by the longer length.

        NED(a, b) = Lev(a, b) / max(|a|, |b|)       (0 when both are empty)

    A similarity baseline of the likelihood-displacement paper (it reports -NED). Computed with a
    row-by-row dynamic programme (`lax.scan`); within a row the insertion chain is a running
    minimum, d[i, j] = j + min_{k <= j}(t_k - k).

    Args:
      tokens_a: (La,) int ids. tokens_b: (Lb,) int ids. mask_a, mask_b: optional validity masks
        (any padding side). Batch with `jax.vmap`.

    Returns:
      Scalar in [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> print(normalized_edit_distance(jnp.asarray([1, 2, 3, 4]), jnp.asarray([1, 3, 4, 0]),
      ...                                mask_b=jnp.asarray([True, True, True, False])))
      0.25
    """
    ta, tb = jnp.asarray(tokens_a), jnp.asarray(tokens_b)
    chk.check_ndim("tokens_a", ta, (1,))
    chk.check_ndim("tokens_b", tb, (1,))
    ta, n = chk.compact(ta, chk.check_mask("mask_a", mask_a, "tokens_a", ta))
    tb, m = chk.compact(tb, chk.check_mask("mask_b", mask_b, "tokens_b", tb))
    cols = jnp.arange(tb.shape[0] + 1)

    def row(prev, inputs):
        i, token = inputs
        sub = prev[:-1] + (token != tb)
        t = jnp.concatenate([jnp.array([i]), jnp.minimum(prev[1:] + 1, sub)])
        cur = cols + jax.lax.cummin(t - cols)
        return cur, cur

    first = cols
    _, rows = jax.lax.scan(row, first, (jnp.arange(1, ta.shape[0] + 1), ta))
    table = jnp.concatenate([first[None], rows], axis=0)
    dist = table[n, m]
    longest = jnp.maximum(n, m)
    return chk.safe_divide(dist.astype(jnp.result_type(float)), longest, 0.0)
