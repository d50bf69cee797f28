"""Calibration scores for probability forecasts.

Sources:
- Choi, Kim, Lee, *Rethinking Evaluation Metric for Probability Estimation Models Using Esports
  Data* (arXiv 2309.06248): Brier score, ECE and the binning-free Balance score.
- Cruz et al., *Evaluating Language Models as Risk Scores* (folktexts, NeurIPS 2024 D&B): ECE
  with 10 equal-width bins (netcal) and its equal-mass variant; Brier score; log loss. Its risk
  scores read from multiple-choice answer-token probabilities are in `scorejax.risk_scores`.

Conventions: `probs` holds predicted probabilities of the positive outcome, shape (N,), or of
each class, shape (N, K); `labels` holds 0/1 outcomes, shape (N,), or class indices in [0, K).
Every function is pure and works under `jit` and `vmap` (vmap over a leading batch of datasets).
A shape mismatch raises ValueError while tracing; value checks (probabilities in [0, 1], labels
in range) run under `scorejax.checked`, eagerly and under `jit` alike.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk
from scorejax._reduction import Reduction, reduce

Binning = Literal["equal_width", "equal_mass"]
EceVariant = Literal["probability", "top_label"]
Closed = Literal["right", "left"]


def _binary_inputs(probs, labels) -> tuple[jax.Array, jax.Array]:
    probs = chk.as_float(probs)
    chk.check_ndim("probs", probs, (1,))
    chk.check_same_shape(probs=probs, labels=labels)
    chk.check_nonempty("probs", probs)
    chk.check_probabilities("probs", probs)
    chk.check_binary("labels", labels)
    return probs, jnp.asarray(labels).astype(probs.dtype)


def _class_inputs(probs, labels) -> tuple[jax.Array, jax.Array]:
    """Validate (N,) binary or (N, K) class probabilities; return (N, K) probs, (N, K) one-hot."""
    probs = chk.as_float(probs)
    chk.check_ndim("probs", probs, (1, 2))
    if probs.ndim == 1:
        probs, y = _binary_inputs(probs, labels)
        return jnp.stack([1 - probs, probs], axis=-1), jnp.stack([1 - y, y], axis=-1)
    labels = jnp.asarray(labels)
    if labels.shape != probs.shape[:1]:
        raise ValueError(
            f"shape mismatch: probs{probs.shape} needs labels of shape {probs.shape[:1]}, "
            f"got labels{labels.shape}"
        )
    chk.check_nonempty("probs", probs, axis=0)
    chk.check_probabilities("probs", probs)
    chk.check_int_range("labels", labels, 0, probs.shape[1] - 1)
    return probs, jax.nn.one_hot(labels.astype(jnp.int32), probs.shape[1], dtype=probs.dtype)


def brier_score(
    probs: jax.Array,
    labels: jax.Array,
    *,
    variant: Literal["binary", "sum_over_classes"] = "binary",
    reduction: Reduction = "mean",
) -> jax.Array:
    r"""Brier score, the mean squared error of probability forecasts.

    Binary probs (N,):  BS = (1/N) \sum_i b_i,  b_i = (p_i - y_i)^2.
    Class probs (N, K): BS = (1/N) \sum_i b_i,  b_i = \sum_k (p_{ik} - 1[y_i = k])^2.

    The esports Balance-score paper does not say which binary form it reports; the usual one is
    the default (`sklearn.metrics.brier_score_loss` on binary input). `variant="sum_over_classes"`
    gives the two-class sum for binary input, which is exactly twice that. For (N, K) input both
    variants are the sum over classes (sklearn's multiclass convention).

    Args:
      probs: (N,) positive-class probabilities or (N, K) class probabilities.
      labels: (N,) 0/1 outcomes, or class indices in [0, K).
      variant: 'binary' or 'sum_over_classes' (matters only for (N,) input).
      reduction: "mean" (the Brier score), "sum" (N times it) or "none" (the (N,) values b_i).

    Returns:
      Scalar Brier score in [0, 1] (binary) or [0, 2] (sum over classes), or (N,) per-forecast
      values for reduction="none". Differentiable in probs.

    Examples:
      >>> import jax.numpy as jnp
      >>> probs, labels = jnp.asarray([0.9, 0.2, 0.6]), jnp.asarray([1, 0, 0])
      >>> both = brier_score(probs, labels, variant="sum_over_classes")
      >>> print(f"{brier_score(probs, labels):.4f}", f"{both:.4f}")
      0.1367 0.2733
      >>> print(brier_score(probs, labels, reduction="none"))
      [0.01 0.04 0.36]
    """
    chk.check_choice("variant", variant, ("binary", "sum_over_classes"))
    if len(chk.shape_of(probs)) == 1 and variant == "binary":
        p, y = _binary_inputs(probs, labels)
        return reduce((p - y) ** 2, reduction)
    p, onehot = _class_inputs(probs, labels)
    return reduce(jnp.sum((p - onehot) ** 2, axis=-1), reduction)


def log_loss(
    probs: jax.Array,
    labels: jax.Array,
    *,
    eps: float | None = None,
    reduction: Reduction = "mean",
) -> jax.Array:
    r"""Mean negative log-likelihood of the labels (cross-entropy).

    Binary probs (N,):  LL = (1/N) \sum_i l_i,  l_i = -[y_i log p_i + (1 - y_i) log(1 - p_i)].
    Class probs (N, K): LL = (1/N) \sum_i l_i,  l_i = -log p_{i, y_i}.

    Probabilities are clipped to [eps, 1 - eps] first, as `sklearn.metrics.log_loss` does, with
    eps the machine epsilon of the dtype by default; `eps=0` disables clipping (an exact 0 or 1
    on the wrong side then gives inf). folktexts reports `log_loss(y, s, labels=[0, 1])`.

    Args:
      probs: (N,) positive-class probabilities or (N, K) class probabilities (rows summing to 1).
      labels: (N,) 0/1 outcomes or class indices in [0, K).
      eps: clipping margin; None means `jnp.finfo(probs.dtype).eps`.
      reduction: "mean" (the log loss), "sum" (N times it) or "none" (the (N,) values l_i).

    Returns:
      Scalar, in nats, or (N,) per-forecast values for reduction="none". Differentiable in probs
      inside the clip range.

    Examples:
      >>> import jax.numpy as jnp
      >>> probs, labels = jnp.asarray([0.9, 0.2, 0.6]), jnp.asarray([1, 0, 0])
      >>> print(f"{log_loss(probs, labels):.4f}")
      0.4149
      >>> print(log_loss(probs, labels, reduction="none"))
      [0.1054 0.2231 0.9163]
    """
    p, onehot = _class_inputs(probs, labels)
    e = jnp.finfo(p.dtype).eps if eps is None else eps
    p_true = jnp.sum(onehot * jnp.clip(p, e, 1 - e), axis=-1)
    return reduce(-jnp.log(p_true), reduction)


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of a reliability diagram; every field has shape (M,).

    Empty bins have count 0 and NaN confidence and accuracy.
    """

    edges: jax.Array  # (M + 1,) bin edges on the confidence axis
    confidence: jax.Array  # mean confidence in the bin
    accuracy: jax.Array  # mean outcome (probability ECE) or mean correctness (top-label ECE)
    count: jax.Array  # number of forecasts in the bin


def _quantile_edges(conf: jax.Array, num_bins: int) -> jax.Array:
    """The j / M sample quantiles of `conf` (N,), j = 1..M-1, by numpy's linear rule: `[M - 1]`.

    The position `h = j (N - 1) / M` in the sorted values is split exactly in integers (floor and
    remainder), and the interpolation is numpy's two-sided `lerp`, so an edge that falls on a
    data value is that value bit for bit, whatever the compiler's rounding; bin membership at
    such edges then follows `closed` exactly.
    """
    n = conf.shape[0]
    ordered = jnp.sort(conf)
    pos = [j * (n - 1) for j in range(1, num_bins)]
    lo = jnp.asarray([p // num_bins for p in pos])
    hi = jnp.minimum(lo + 1, n - 1)
    frac = jnp.asarray([(p % num_bins) / num_bins for p in pos], conf.dtype)
    a, b = ordered[lo], ordered[hi]
    return jnp.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)


def _confidence_and_outcome(
    probs: jax.Array, labels: jax.Array, variant: EceVariant
) -> tuple[jax.Array, jax.Array]:
    if variant == "probability":
        return probs, labels
    pred = (probs >= 0.5).astype(probs.dtype)
    return jnp.maximum(probs, 1 - probs), (pred == labels).astype(probs.dtype)


def _binned(
    probs, labels, num_bins: int, binning: Binning, variant: EceVariant, closed: Closed
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Validate the options and the (N,) inputs; return (N,) conf, outcome, bin index, edges."""
    chk.check_choice("binning", binning, ("equal_width", "equal_mass"))
    chk.check_choice("variant", variant, ("probability", "top_label"))
    chk.check_choice("closed", closed, ("right", "left"))
    probs, y = _binary_inputs(probs, labels)
    conf, outcome = _confidence_and_outcome(probs, y, variant)
    if binning == "equal_width":
        edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=conf.dtype)
    else:
        # folktexts' `ece_quantile`: sample quantiles (numpy's linear rule), outer edges 0 and 1.
        inner = _quantile_edges(conf, num_bins)
        one = jnp.ones((1,), conf.dtype)
        edges = jnp.concatenate([0 * one, jax.lax.stop_gradient(inner), one])
    # 'right': bins [e0, e1], (e1, e2], ... (sklearn calibration_curve, Guo et al.);
    # 'left':  bins [e0, e1), [e1, e2), ..., [e_{M-1}, e_M] (numpy histogram, netcal).
    side = "left" if closed == "right" else "right"
    return conf, outcome, jnp.searchsorted(edges[1:-1], conf, side=side), edges


def reliability_bins(
    probs: jax.Array,
    labels: jax.Array,
    *,
    num_bins: int = 10,
    binning: Binning = "equal_width",
    variant: EceVariant = "probability",
    closed: Closed = "right",
) -> ReliabilityBins:
    """Bin forecasts by confidence: the data of a reliability diagram (and of the ECE).

    See `expected_calibration_error` for the binning, variant and edge conventions.

    Args:
      probs: (N,) positive-class probabilities.
      labels: (N,) 0/1 outcomes.
      num_bins: M, a static int.

    Returns:
      `ReliabilityBins` with (M + 1,) edges and (M,) confidence, accuracy and count.

    Examples:
      >>> import jax.numpy as jnp
      >>> probs, labels = jnp.asarray([0.1, 0.15, 0.8, 0.9]), jnp.asarray([0, 1, 1, 1])
      >>> bins = reliability_bins(probs, labels, num_bins=2)
      >>> print(bins.confidence, bins.accuracy, bins.count)
      [0.125 0.85 ] [0.5 1. ] [2. 2.]
    """
    conf, outcome, idx, edges = _binned(probs, labels, num_bins, binning, variant, closed)
    count = jax.ops.segment_sum(jnp.ones_like(conf), idx, num_segments=num_bins)
    sum_conf = jax.ops.segment_sum(conf, idx, num_segments=num_bins)
    sum_out = jax.ops.segment_sum(outcome, idx, num_segments=num_bins)
    mean_conf = chk.safe_divide(sum_conf, count, jnp.nan)
    mean_out = chk.safe_divide(sum_out, count, jnp.nan)
    return ReliabilityBins(edges, mean_conf, mean_out, count)


def expected_calibration_error(
    probs: jax.Array,
    labels: jax.Array,
    *,
    num_bins: int = 10,
    binning: Binning = "equal_width",
    variant: EceVariant = "probability",
    closed: Closed = "right",
) -> jax.Array:
    r"""Expected calibration error with M bins.

        ECE = \sum_{m=1}^{M} (|B_m| / N) |acc(B_m) - conf(B_m)|
            = (1/N) \sum_m |\sum_{i \in B_m} (a_i - c_i)|

    Empty bins contribute 0.

    variant:
      - 'probability' (default; folktexts and netcal on binary input): c_i = p_i, a_i = y_i.
      - 'top_label' (Guo et al. 2017): c_i = max(p_i, 1 - p_i), a_i = 1[1(p_i >= 0.5) = y_i];
        in the binary case only bins in [0.5, 1] are populated.
    binning:
      - 'equal_width': edges 0, 1/M, ..., 1.
      - 'equal_mass': inner edges are the j/M sample quantiles of c (linear interpolation, as
        `numpy.quantile`), outer edges 0 and 1 (folktexts' `ece_quantile`). The edges are treated
        as constants for differentiation.
    closed: which side of a bin holds a value that falls exactly on an edge.
      - 'right' (default): [e0, e1], (e1, e2], ...: Guo et al. and
        `sklearn.calibration.calibration_curve`.
      - 'left': [e0, e1), ..., [e_{M-1}, e_M]: `numpy.histogram` and netcal (folktexts).
      Away from exact edges the two agree; netcal additionally clips p to (1e-14, 1 - 1e-14),
      which moves the result by at most that much.

    The Balance-score paper's bin count and variant are not confirmed; M = 10 with probability
    binning is the folktexts setting.

    Args:
      probs: (N,) positive-class probabilities.
      labels: (N,) 0/1 outcomes.
      num_bins: M, a static int.

    Returns:
      Scalar in [0, 1]. Differentiable in probs almost everywhere (bin membership is constant
      between edges).

    Examples:
      >>> import jax.numpy as jnp
      >>> probs, labels = jnp.asarray([0.1, 0.15, 0.8, 0.9]), jnp.asarray([0, 1, 1, 1])
      >>> print(f"{expected_calibration_error(probs, labels, num_bins=2):.4f}")
      0.2625
    """
    conf, outcome, idx, _ = _binned(probs, labels, num_bins, binning, variant, closed)
    gap = jax.ops.segment_sum(outcome - conf, idx, num_segments=num_bins)
    return jnp.sum(jnp.abs(gap)) / conf.shape[0]


def balance_score(probs: jax.Array, labels: jax.Array, *, absolute: bool = False) -> jax.Array:
    r"""Balance score of the esports calibration paper: accuracy minus mean confidence.

    Per forecast, with \hat y = 1[p >= 0.5] and q = max(p, 1 - p):

        f(p, y) =  1 - p   if p >= 0.5, y = 1        (correct: gain)
                   p       if p <  0.5, y = 0
                  -p       if p >= 0.5, y = 0        (wrong: loss)
                  -(1 - p) if p <  0.5, y = 1
                = 1[\hat y = y] - q

        Balance = (1/N) \sum_i f(p_i, y_i)   in [-1, 0.5]

    0 is ideal, > 0 means under-confident, < 0 over-confident. If the true probability of the
    chosen class is p*, E f = p* - q, so |E f| = |q - p*| with no binning.

    The definition is from a third-party summary (no author text or code was available); it
    satisfies the paper's stated properties. Whether the paper reports the signed value or its
    absolute value is not confirmed: the signed value is the default, `absolute=True` returns
    |Balance|. At p = 0.5 the forecast counts as predicting 1 (f = y - 0.5); the expectation is
    the same under either tie rule.

    Args:
      probs: (N,) positive-class probabilities.
      labels: (N,) 0/1 outcomes.

    Returns:
      Scalar. Differentiable in probs except at p = 0.5 (d f / d p = -sign(p - 0.5)).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(f"{balance_score(jnp.asarray([0.9, 0.2, 0.6]), jnp.asarray([1, 0, 0])):.4f}")
      -0.1000
    """
    probs, y = _binary_inputs(probs, labels)
    conf, correct = _confidence_and_outcome(probs, y, "top_label")
    value = jnp.mean(correct - conf)
    return jnp.abs(value) if absolute else value
