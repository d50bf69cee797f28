"""Rater agreement: quadratic weighted kappa, exact and within-one agreement.

Source: automated essay scoring (AR-AES, Ghazawi & Simpson, arXiv 2407.11212; *AES Systems Are
Both Overstable and Oversensitive*). Works under `jit` and `vmap`; an undefined kappa (constant
ratings) gives NaN rather than an error, so jitted and eager results agree.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk


def round_ratings(predictions: jax.Array, *, min_rating: int, max_rating: int) -> jax.Array:
    """Round real-valued predictions to the nearest integer rating and clip to the range.

    The usual step before QWK for regression models (round half to even, as `numpy.round`).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(round_ratings(jnp.asarray([0.4, 2.5, 3.6, 7.0]), min_rating=1, max_rating=5))
      [1 2 4 5]
    """
    return jnp.clip(jnp.round(chk.as_float(predictions)), min_rating, max_rating).astype(jnp.int32)


def quadratic_weighted_kappa(
    rater_a: jax.Array,
    rater_b: jax.Array,
    *,
    min_rating: int,
    max_rating: int,
    if_undefined: float = float("nan"),
) -> jax.Array:
    r"""Quadratic weighted kappa over the fixed rating range [min_rating, max_rating].

        O = K x K confusion matrix of (a, b),  E = outer(rowsum O, colsum O) / N,
        W_ij = (i - j)^2 / (K - 1)^2,          kappa = 1 - \sum W O / \sum W E

    The range is fixed (the Kaggle ASAP convention), so a rating absent from the data still
    occupies its row and column and weights use rating values: this is
    `sklearn.metrics.cohen_kappa_score(a, b, weights="quadratic",
    labels=range(min_rating, max_rating + 1))`; without `labels` sklearn uses only the observed
    labels and weights by their index, which differs when a rating is missing.
    When \sum W E = 0 (e.g. both raters constant on the same value) kappa is undefined and
    `if_undefined` is returned (NaN by default, as sklearn).

    Args:
      rater_a, rater_b: (N,) integer ratings in the range (use `round_ratings` for regression
        outputs).

    Returns:
      Scalar in [-1, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> a, b = jnp.asarray([1, 2, 3, 4, 5]), jnp.asarray([1, 2, 3, 5, 4])
      >>> print(f"{quadratic_weighted_kappa(a, b, min_rating=1, max_rating=5):.4f}")
      0.9000
    """
    a, b = jnp.asarray(rater_a), jnp.asarray(rater_b)
    chk.check_ndim("rater_a", a, (1,))
    chk.check_same_shape(rater_a=a, rater_b=b)
    chk.check_int_range("rater_a", a, min_rating, max_rating)
    chk.check_int_range("rater_b", b, min_rating, max_rating)
    k = max_rating - min_rating + 1
    if k < 2:
        raise ValueError("the rating range must hold at least two ratings")
    fdt = jnp.result_type(float)
    oa = jax.nn.one_hot((a - min_rating).astype(jnp.int32), k, dtype=fdt)
    ob = jax.nn.one_hot((b - min_rating).astype(jnp.int32), k, dtype=fdt)
    observed = oa.T @ ob
    expected = jnp.outer(oa.sum(0), ob.sum(0)) / a.shape[0]
    idx = jnp.arange(k, dtype=fdt)
    weights = (idx[:, None] - idx[None, :]) ** 2 / (k - 1) ** 2
    den = jnp.sum(weights * expected)
    return chk.safe_divide(den - jnp.sum(weights * observed), den, if_undefined)


def exact_agreement(rater_a: jax.Array, rater_b: jax.Array) -> jax.Array:
    r"""Exact agreement rate (1/N) \sum_i 1[a_i = b_i] (AR-AES reports 79.49%).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(exact_agreement(jnp.asarray([1, 2, 3, 4]), jnp.asarray([1, 2, 4, 2])))
      0.5
    """
    a, b = jnp.asarray(rater_a), jnp.asarray(rater_b)
    chk.check_same_shape(rater_a=a, rater_b=b)
    chk.check_nonempty("rater_a", a)
    return jnp.mean(a == b)


def adjacent_agreement(
    rater_a: jax.Array,
    rater_b: jax.Array,
    *,
    tolerance: float = 1,
    denominator: Literal["all", "errors"] = "all",
) -> jax.Array:
    r"""Within-one (adjacent) agreement rate.

        'all' (default):  (1/N) \sum_i 1[|a_i - b_i| <= tol]            (exact matches included)
        'errors':          #{0 < |a_i - b_i| <= tol} / #{|a_i - b_i| > 0}

    AR-AES's "96.15% ... within one point" is read as a share of all predictions; whether it is
    a share of the erroneous predictions is not confirmed, hence `denominator='errors'`
    (NaN when there is no error).

    Returns:
      Scalar in [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> a, b = jnp.asarray([1, 2, 3, 4]), jnp.asarray([1, 2, 4, 2])
      >>> print(adjacent_agreement(a, b), adjacent_agreement(a, b, denominator="errors"))
      0.75 0.5
    """
    a, b = chk.as_float(rater_a), chk.as_float(rater_b)
    chk.check_same_shape(rater_a=a, rater_b=b)
    chk.check_nonempty("rater_a", a)
    d = jnp.abs(a - b)
    if denominator == "all":
        return jnp.mean(d <= tolerance)
    if denominator == "errors":
        wrong = d > 0
        return chk.safe_divide(
            jnp.sum(wrong & (d <= tolerance)).astype(a.dtype),
            jnp.sum(wrong).astype(a.dtype),
            jnp.nan,
        )
    raise ValueError(f"denominator must be 'all' or 'errors', got {denominator!r}")
