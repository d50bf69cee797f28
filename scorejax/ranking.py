"""Ranking and evaluation metrics of the seed papers.

Sources:
- RecSys Challenge 2018 (Zamani, Schedl, Lamere, Chen, ACM TIST 2019; the challenge's evaluation
  page and the organisers' metric module): R-precision (with artist credit), NDCG, Recommended
  Songs clicks.
- TADPOLE Challenge (Marinescu et al.; `evalOneSubmission.py`): Hand & Till multiclass AUC, BCA,
  MAE, WES, CPA.
- MAD-Bench (Cao et al., arXiv 2411.14515; `get_performance.py`): per-level ROC-AUC, Kendall
  tau-b and C-index between severity and anomaly score.
- Automated essay scoring (AR-AES, Ghazawi & Simpson, arXiv 2407.11212; *AES Systems Are Both
  Overstable and Oversensitive*): quadratic weighted kappa, exact and within-one agreement.
- FIB (Tam et al. 2022, r-three/fib): length-normalised PMI summary score, binary-choice
  accuracy, the FIB aggregate.
- TS-Guessing (Deng et al., NAACL 2024): exact-match rate and ROUGE-L F1.

Metrics are not differentiable (they count); all work under `jit` and `vmap` except the string
helpers of TS-Guessing (`normalize_answer`, `exact_match_rate`, `rouge_tokenize`,
`rouge_l_text`), which are plain Python. Degenerate inputs (a single class, no comparable pairs,
constant ratings) give NaN rather than an error, so jitted and eager results agree.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk


def _float_dtype():
    return jnp.result_type(float)


# --------------------------------------------------------------------------------------------
# ROC-AUC family
# --------------------------------------------------------------------------------------------


def _auc(scores: jax.Array, positive: jax.Array, negative: jax.Array) -> jax.Array:
    """Mann-Whitney AUC of positives against negatives, ties counting 1/2; NaN if a set is empty."""
    n_pos = jnp.sum(positive)
    n_neg = jnp.sum(negative)
    # Non-negatives are pushed to +inf so they never count as "below" a positive score; the
    # count of "at or below" is capped at n_neg so they cannot count as ties with +inf either.
    neg_sorted = jnp.sort(jnp.where(negative, scores, jnp.inf))
    below = jnp.searchsorted(neg_sorted, scores, side="left")
    at_or_below = jnp.minimum(jnp.searchsorted(neg_sorted, scores, side="right"), n_neg)
    wins = jnp.where(positive, below + 0.5 * (at_or_below - below), 0.0)
    return chk.safe_divide(jnp.sum(wins), (n_pos * n_neg).astype(_float_dtype()), jnp.nan)


def roc_auc(scores: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    r"""Binary ROC-AUC with ties counting 1/2 (the mid-rank Mann-Whitney statistic).

        AUC = \sum_{i: y=1} \sum_{j: y=0} [1(s_i > s_j) + 1/2 1(s_i = s_j)] / (n_1 n_0)

    Equals `sklearn.metrics.roc_auc_score(labels, scores)`. O(N log N).

    Args:
      scores: (N,) scores, higher = more positive. labels: (N,) 0/1.
      mask: optional (N,) bool; only entries with mask = True count.

    Returns:
      Scalar in [0, 1]; NaN when a class is absent (sklearn raises instead).
    """
    s = chk.as_float(scores)
    chk.check_ndim("scores", s, (1,))
    chk.check_same_shape(scores=s, labels=labels)
    chk.check_binary("labels", labels)
    m = chk.check_mask("mask", mask, "scores", s)
    y = jnp.asarray(labels) > 0
    return _auc(s, y & m, ~y & m)


def multiclass_roc_auc(
    probs: jax.Array, labels: jax.Array, *, normalize_rows: bool = True
) -> jax.Array:
    r"""Hand & Till (2001) multiclass AUC M, as TADPOLE's mAUC.

        A(i|j) = AUC of class i against class j, scored by p(i|x), on samples of classes i, j
        A(i, j) = (A(i|j) + A(j|i)) / 2,     mAUC = 2 / (c(c-1)) \sum_{i<j} A(i, j)

    TADPOLE renormalises each subject's probabilities before scoring (`normalize_rows=True`;
    this changes the ranking of p(i|x) across subjects unless rows already sum to 1, and in
    floating point it can split or merge exact ties; pass `normalize_rows=False` for rows that
    are already normalised). Ties count
    1/2; the TADPOLE script ranks with a stable sort and no mid-ranks, so with tied scores its
    value depends on the input order, whereas this one equals
    `sklearn.metrics.roc_auc_score(labels, probs, multi_class="ovo", average="macro")`.

    Args:
      probs: (N, C) nonnegative class scores. labels: (N,) class indices in [0, C).

    Returns:
      Scalar; NaN if a class is absent.
    """
    p = chk.as_float(probs)
    chk.check_ndim("probs", p, (2,))
    if chk.shape_of(labels) != p.shape[:1]:
        raise ValueError(f"shape mismatch: probs{p.shape} needs labels of shape {p.shape[:1]}")
    chk.check_nonnegative("probs", p)
    num_classes = p.shape[1]
    chk.check_int_range("labels", labels, 0, num_classes - 1)
    if normalize_rows:
        p = p / jnp.sum(p, axis=1, keepdims=True)
    y = jnp.asarray(labels)
    total = 0.0
    for i in range(num_classes):
        for j in range(i + 1, num_classes):
            a_ij = _auc(p[:, i], y == i, y == j)
            a_ji = _auc(p[:, j], y == j, y == i)
            total = total + (a_ij + a_ji) / 2
    return total * 2 / (num_classes * (num_classes - 1))


def per_level_roc_auc(scores: jax.Array, severity: jax.Array, *, num_levels: int) -> jax.Array:
    r"""MAD-Bench per-level ROC-AUC: level l against normal (severity 0) only.

        AUC_l = roc_auc(score[s in {0, l}], 1[s = l]),   l = 1..L

    Binary "0 vs whole" is `roc_auc(scores, severity > 0)`. MAD-Bench takes s = ceil(Severity)
    first; pass integer severities.

    Args:
      scores: (N,) anomaly scores. severity: (N,) integers in [0, L].
      num_levels: L, a static int.

    Returns:
      (L,) AUCs; NaN for a level with no samples.
    """
    s = chk.as_float(scores)
    chk.check_ndim("scores", s, (1,))
    chk.check_same_shape(scores=s, severity=severity)
    chk.check_int_range("severity", severity, 0, num_levels)
    sev = jnp.asarray(severity)
    levels = jnp.arange(1, num_levels + 1)
    return jax.vmap(lambda lvl: _auc(s, sev == lvl, sev == 0))(levels)


# --------------------------------------------------------------------------------------------
# Pairwise rank statistics (MAD-Bench)
# --------------------------------------------------------------------------------------------


_PAIR_BLOCK = 256
_LOW_BITS = 16


def _pair_counts(
    row_fn, n: int, num_counts: int, block: int = _PAIR_BLOCK
) -> tuple[jax.Array, ...]:
    r"""Exact totals \sum_{i<n} row_fn(i) of integer pair counts, returned as floats.

    `row_fn(i)` returns a tuple of `num_counts` integer scalars, each |count| <= 2n (the pairs
    of item i). Rows are evaluated `block` at a time (O(block * n) memory). Totals reach ~n^2,
    which overflows int32 from n ~ 46k, so no total is formed in one int32: each block's sum
    (|.| <= 2 block n) is split as hi * 2^16 + lo with 0 <= lo < 2^16, the hi and lo parts are
    summed over blocks separately, and the total is hi * 2^16 + lo in the default float dtype.
    Every integer step is exact for n < 4 million (with block = 256). The float conversion adds
    an absolute error of at most a few eps * n^2 (float32: ~1e-7 of the number of pairs, so
    ratios of counts such as tau or C are exact to float32 rounding; float64: exact).
    n = 0 gives zeros.
    """
    fdt = _float_dtype()
    if n == 0:
        return tuple(jnp.zeros((), fdt) for _ in range(num_counts))
    block = min(block, n)
    num_blocks = -(-n // block)
    rows = jnp.arange(num_blocks * block).reshape(num_blocks, block)

    def block_sums(idx):
        counts = jax.vmap(row_fn)(jnp.minimum(idx, n - 1))
        return tuple(jnp.sum(jnp.where(idx < n, c, 0)) for c in counts)

    sums = jax.lax.map(block_sums, rows)
    low = (1 << _LOW_BITS) - 1
    return tuple(
        jnp.sum(s >> _LOW_BITS).astype(fdt) * (low + 1) + jnp.sum(s & low).astype(fdt) for s in sums
    )


def kendall_tau_b(x: jax.Array, y: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    r"""Kendall's tau-b (`scipy.stats.kendalltau`'s default variant).

        tau_b = (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))

    n_0 = n(n-1)/2, n_1 and n_2 the pairs tied in x and in y, n_c - n_d = \sum_{i<j}
    sign(x_i - x_j) sign(y_i - y_j). Exact O(N^2) pair counting, computed in row blocks; the
    counts do not overflow (see `_pair_counts`: exact for N up to ~4 million), and n_0 - n_1,
    n_0 - n_2 are counted directly (pairs not tied in x, in y), so ties do not cancel.

    Args:
      x, y: (N,) values (e.g. severity and anomaly score). mask: optional (N,) bool.

    Returns:
      Scalar in [-1, 1]; NaN when x or y is constant (as scipy), including N < 2.
    """
    x, y = chk.as_float(x), chk.as_float(y)
    chk.check_ndim("x", x, (1,))
    chk.check_same_shape(x=x, y=y)
    m = chk.check_mask("mask", mask, "x", x)

    def row(i):
        valid = m & m[i] & (jnp.arange(x.shape[0]) != i)
        sx = jnp.sign(x[i] - x)
        sy = jnp.sign(y[i] - y)
        concordance = jnp.where(valid, sx * sy, 0).astype(jnp.int32)
        return jnp.sum(concordance), jnp.sum(valid & (sx != 0)), jnp.sum(valid & (sy != 0))

    # Every unordered pair is visited twice; the factors 2 cancel in the ratio.
    s, untied_x, untied_y = _pair_counts(row, x.shape[0], 3)
    return s / jnp.sqrt(untied_x * untied_y)


def concordance_index(
    severity: jax.Array, scores: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    r"""Harrell's C-index of MAD-Bench: do higher scores go with higher severity?

        C = \sum_{(i,j): s_i < s_j} [1(a_i < a_j) + 1/2 1(a_i = a_j)] / #{(i,j): s_i < s_j}

    Only pairs with different severities are comparable; tied scores count 1/2. This is
    `lifelines.utils.concordance_index(event_times=severity, predicted_scores=scores)` with all
    events observed; with binary severity it equals the ROC-AUC.

    Args:
      severity: (N,) severities. scores: (N,) anomaly scores. mask: optional (N,) bool.

    Returns:
      Scalar in [0, 1]; NaN when all severities are equal, including N < 2. Pair counts are
      exact for N up to ~4 million (see `_pair_counts`).
    """
    sev, a = chk.as_float(severity), chk.as_float(scores)
    chk.check_ndim("severity", sev, (1,))
    chk.check_same_shape(severity=sev, scores=a)
    m = chk.check_mask("mask", mask, "severity", sev)

    def row(i):
        comparable = m & m[i] & (sev[i] < sev)
        # Twice the numerator, so integer counts stay exact.
        twice = 2 * (comparable & (a[i] < a)) + (comparable & (a[i] == a))
        return jnp.sum(twice.astype(jnp.int32)), jnp.sum(comparable)

    twice_num, den = _pair_counts(row, sev.shape[0], 2)
    return chk.safe_divide(twice_num / 2, den, jnp.nan)


# --------------------------------------------------------------------------------------------
# TADPOLE: BCA, MAE, WES, CPA
# --------------------------------------------------------------------------------------------


def balanced_classification_accuracy(
    predictions: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    variant: Literal["one_vs_rest", "pairwise"] = "one_vs_rest",
) -> jax.Array:
    r"""TADPOLE's balanced classification accuracy (BCA).

    'one_vs_rest' (later TADPOLE scripts; the paper's description):

        BCA = (1/L) \sum_i 1/2 [TP_i/(TP_i + FN_i) + TN_i/(TN_i + FP_i)],   class i vs the rest

    'pairwise' (the original `evalOneSubmission.py`): the same average over class pairs
    c0 < c1, with TP = #(pred c0, true c0), TN = #(pred c1, true c1), FP = #(pred c1, true c0),
    FN = #(pred c0, true c1), sensitivity TP/(TP+FN), specificity TN/(TN+FP).
    A zero denominator makes that sensitivity or specificity 0.5 (the scripts' convention). Which
    version produced the published leaderboard is not confirmed. Neither equals
    `sklearn.metrics.balanced_accuracy_score` (mean recall) for L > 2.

    Args:
      predictions: (N, L) class probabilities (the hard label is the argmax, first on ties) or
        (N,) predicted labels. labels: (N,) true labels in [0, L).
      num_classes: L, a static int.

    Returns:
      Scalar in [0, 1].
    """
    chk.check_choice("variant", variant, ("one_vs_rest", "pairwise"))
    pred = jnp.asarray(predictions)
    if pred.ndim == 2:
        if pred.shape[1] != num_classes:
            raise ValueError(f"predictions{pred.shape} must have {num_classes} columns")
        pred = jnp.argmax(pred, axis=1)
    chk.check_ndim("predictions", pred, (1,))
    chk.check_same_shape(predictions=pred, labels=labels)
    chk.check_int_range("predictions", pred, 0, num_classes - 1)
    chk.check_int_range("labels", labels, 0, num_classes - 1)
    y = jnp.asarray(labels)
    fdt = _float_dtype()

    def half_sum(tp, fn, tn, fp):
        sens = chk.safe_divide(tp.astype(fdt), (tp + fn).astype(fdt), 0.5)
        spec = chk.safe_divide(tn.astype(fdt), (tn + fp).astype(fdt), 0.5)
        return 0.5 * (sens + spec)

    terms = []
    if variant == "one_vs_rest":
        for c in range(num_classes):
            p, t = pred == c, y == c
            terms.append(
                half_sum(jnp.sum(p & t), jnp.sum(~p & t), jnp.sum(~p & ~t), jnp.sum(p & ~t))
            )
    elif variant == "pairwise":
        for c0 in range(num_classes):
            for c1 in range(c0 + 1, num_classes):
                tp = jnp.sum((pred == c0) & (y == c0))
                tn = jnp.sum((pred == c1) & (y == c1))
                fp = jnp.sum((pred == c1) & (y == c0))
                fn = jnp.sum((pred == c0) & (y == c1))
                terms.append(half_sum(tp, fn, tn, fp))
    else:
        raise ValueError(f"variant must be 'one_vs_rest' or 'pairwise', got {variant!r}")
    return jnp.mean(jnp.stack(terms))


def _observed(target: jax.Array) -> jax.Array:
    return ~jnp.isnan(target)


def mean_absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    r"""MAE = (1/N) \sum_i |M~_i - M_i| over subjects with a known target (NaN targets dropped).

    Args:
      predictions, targets: (N,) forecasts and ground truth (NaN = missing).

    Returns:
      Scalar; NaN if no target is known.
    """
    p, t = chk.as_float(predictions), chk.as_float(targets)
    chk.check_same_shape(predictions=p, targets=t)
    ok = _observed(t)
    err = jnp.where(ok, jnp.abs(p - jnp.where(ok, t, 0)), 0)
    return chk.safe_divide(jnp.sum(err), jnp.sum(ok).astype(p.dtype), jnp.nan)


def weighted_error_score(
    predictions: jax.Array,
    targets: jax.Array,
    ci_lower: jax.Array,
    ci_upper: jax.Array,
    *,
    min_width: float = 0.0,
) -> jax.Array:
    r"""TADPOLE's weighted error score: MAE weighted by the inverse 50% confidence-interval width.

        WES = \sum_i C~_i |M~_i - M_i| / \sum_i C~_i,     C~_i = 1 / (C+_i - C-_i)

    NaN targets are dropped. A zero-width interval gives an infinite weight and a NaN/inf result
    as in the TADPOLE script; `min_width > 0` guards it with C~ = 1 / max(width, min_width).

    Args:
      predictions, targets, ci_lower, ci_upper: (N,).

    Returns:
      Scalar.
    """
    p, t, lo, hi = (chk.as_float(v) for v in (predictions, targets, ci_lower, ci_upper))
    chk.check_same_shape(predictions=p, targets=t, ci_lower=lo, ci_upper=hi)
    ok = _observed(t)
    weight = jnp.where(ok, 1 / jnp.maximum(hi - lo, min_width), 0)
    err = jnp.where(ok, jnp.abs(p - jnp.where(ok, t, 0)), 0)
    return jnp.sum(weight * err) / jnp.sum(weight)


def coverage_probability_accuracy(
    targets: jax.Array, ci_lower: jax.Array, ci_upper: jax.Array, *, nominal: float = 0.5
) -> jax.Array:
    r"""TADPOLE's coverage probability accuracy of 50% intervals.

        ACP = (1/N) \sum_i 1[C-_i < M_i < C+_i]   (strict),     CPA = |ACP - 0.5|

    NaN targets are dropped.

    Args:
      targets, ci_lower, ci_upper: (N,). nominal: the intervals' nominal coverage.

    Returns:
      Scalar in [0, max(nominal, 1 - nominal)]; NaN if no target is known.
    """
    t, lo, hi = (chk.as_float(v) for v in (targets, ci_lower, ci_upper))
    chk.check_same_shape(targets=t, ci_lower=lo, ci_upper=hi)
    ok = _observed(t)
    inside = ok & (lo < t) & (t < hi)
    acp = chk.safe_divide(jnp.sum(inside).astype(t.dtype), jnp.sum(ok).astype(t.dtype), jnp.nan)
    return jnp.abs(acp - nominal)


# --------------------------------------------------------------------------------------------
# Essay scoring: QWK and agreement
# --------------------------------------------------------------------------------------------


def round_ratings(predictions: jax.Array, *, min_rating: int, max_rating: int) -> jax.Array:
    """Round real-valued predictions to the nearest integer rating and clip to the range.

    The usual step before QWK for regression models (round half to even, as `numpy.round`).
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
    """
    a, b = jnp.asarray(rater_a), jnp.asarray(rater_b)
    chk.check_ndim("rater_a", a, (1,))
    chk.check_same_shape(rater_a=a, rater_b=b)
    chk.check_int_range("rater_a", a, min_rating, max_rating)
    chk.check_int_range("rater_b", b, min_rating, max_rating)
    k = max_rating - min_rating + 1
    if k < 2:
        raise ValueError("the rating range must hold at least two ratings")
    fdt = _float_dtype()
    oa = jax.nn.one_hot((a - min_rating).astype(jnp.int32), k, dtype=fdt)
    ob = jax.nn.one_hot((b - min_rating).astype(jnp.int32), k, dtype=fdt)
    observed = oa.T @ ob
    expected = jnp.outer(oa.sum(0), ob.sum(0)) / a.shape[0]
    idx = jnp.arange(k, dtype=fdt)
    weights = (idx[:, None] - idx[None, :]) ** 2 / (k - 1) ** 2
    den = jnp.sum(weights * expected)
    return chk.safe_divide(den - jnp.sum(weights * observed), den, if_undefined)


def exact_agreement(rater_a: jax.Array, rater_b: jax.Array) -> jax.Array:
    r"""Exact agreement rate (1/N) \sum_i 1[a_i = b_i] (AR-AES reports 79.49%)."""
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


# --------------------------------------------------------------------------------------------
# RecSys Challenge 2018
# --------------------------------------------------------------------------------------------


def _first_occurrence(ids: jax.Array, valid: jax.Array) -> jax.Array:
    """valid[i] and no valid j < i has ids[j] == ids[i]."""
    n = ids.shape[0]
    earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)
    dup = jnp.any(earlier & valid[None, :] & (ids[:, None] == ids[None, :]), axis=1)
    return valid & ~dup


def _member(ids: jax.Array, pool: jax.Array, pool_valid: jax.Array) -> jax.Array:
    return jnp.any((ids[:, None] == pool[None, :]) & pool_valid[None, :], axis=1)


def _recsys_inputs(recommended, ground_truth, recommended_mask, ground_truth_mask, max_n):
    rec = jnp.asarray(recommended)
    gt = jnp.asarray(ground_truth)
    chk.check_ndim("recommended", rec, (1,))
    chk.check_ndim("ground_truth", gt, (1,))
    rec_valid = chk.check_mask("recommended_mask", recommended_mask, "recommended", rec)
    gt_valid = chk.check_mask("ground_truth_mask", ground_truth_mask, "ground_truth", gt)
    rec, n_rec = chk.compact(rec, rec_valid)
    rec_valid = jnp.arange(rec.shape[0]) < jnp.minimum(n_rec, max_n)
    gt_unique = _first_occurrence(gt, gt_valid)
    return rec, rec_valid, gt, gt_unique


def r_precision(
    recommended: jax.Array,
    ground_truth: jax.Array,
    *,
    recommended_mask: jax.Array | None = None,
    ground_truth_mask: jax.Array | None = None,
    recommended_artists: jax.Array | None = None,
    ground_truth_artists: jax.Array | None = None,
    artist_credit: float = 0.25,
    exclude_track_matches: bool = False,
    max_n: int = 500,
) -> jax.Array:
    r"""R-precision of the RecSys Challenge 2018, optionally with artist credit.

        R-prec = |S_T \cap G_T| / |G_T|
        with artists: (|S_T \cap G_T| + 0.25 |S_A \cap G_A|) / |G_T|

    G_T, G_A are the unique ground-truth tracks and their artists; S_T, S_A the unique tracks and
    artists among the first |G_T| recommendations (after capping the list at `max_n` = 500, as
    the organisers' code). The artist-credit formula is from a third-party source attributed to
    the challenge paper and can exceed 1. Whether artists already matched through a track match
    are counted again is not confirmed: by default they are (the formula as written);
    `exclude_track_matches=True` forms S_A only from recommendations that are not track matches
    and G_A only from ground-truth tracks that were not retrieved.

    Args:
      recommended: (R,) int track ids, best first. ground_truth: (G,) int track ids.
      recommended_mask, ground_truth_mask: optional validity masks (padding; any side).
      recommended_artists, ground_truth_artists: optional (R,), (G,) artist ids, both or neither.

    Returns:
      Scalar; NaN for an empty ground truth.
    """
    if (recommended_artists is None) != (ground_truth_artists is None):
        raise ValueError("pass both recommended_artists and ground_truth_artists, or neither")
    rec_ids = jnp.asarray(recommended)
    rec, rec_valid, gt, gt_unique = _recsys_inputs(
        recommended, ground_truth, recommended_mask, ground_truth_mask, max_n
    )
    n_gt = jnp.sum(gt_unique)
    head = rec_valid & (jnp.arange(rec.shape[0]) < n_gt)
    track_hit = head & _member(rec, gt, gt_unique)
    track_hits = jnp.sum(_first_occurrence(rec, head) & track_hit)
    fdt = _float_dtype()
    score = track_hits.astype(fdt)
    if recommended_artists is not None:
        ra = jnp.asarray(recommended_artists)
        ga = jnp.asarray(ground_truth_artists)
        chk.check_same_shape(recommended=rec_ids, recommended_artists=ra)
        chk.check_same_shape(ground_truth=gt, ground_truth_artists=ga)
        rec_valid_in = chk.check_mask(
            "recommended_mask", recommended_mask, "recommended", rec_ids
        )
        ra, _ = chk.compact(ra, rec_valid_in)
        rec_side = head & ~track_hit if exclude_track_matches else head
        gt_side = gt_unique & ~_member(gt, rec, head) if exclude_track_matches else gt_unique
        gt_artists = _first_occurrence(ga, gt_side)
        artist_hits = jnp.sum(_first_occurrence(ra, rec_side) & _member(ra, ga, gt_artists))
        score = score + artist_credit * artist_hits.astype(fdt)
    return chk.safe_divide(score, n_gt.astype(fdt), jnp.nan)


def recsys_ndcg(
    recommended: jax.Array,
    ground_truth: jax.Array,
    *,
    recommended_mask: jax.Array | None = None,
    ground_truth_mask: jax.Array | None = None,
    k: int = 500,
    discount: Literal["challenge_text", "standard"] = "challenge_text",
    idcg_over: Literal["intersection", "ground_truth"] = "intersection",
) -> jax.Array:
    r"""NDCG of the RecSys Challenge 2018.

    The list is cut at k first, then de-duplicated keeping first occurrences (later items move
    up). With rel_i = 1[R_i in G]:

        'challenge_text':  DCG = rel_1 + \sum_{i>=2} rel_i / log2(i)    (positions 1 and 2 both 1)
        'standard':        DCG = \sum_{i>=1} rel_i / log2(i + 1)        (sklearn's `ndcg_score`)
        IDCG = the same sum with rel = 1 over the first n positions,
               n = |G \cap R| ('intersection') or min(|G|, k) ('ground_truth')
        NDCG = DCG / IDCG, and 0 when IDCG = 0 (nothing retrieved).

    The defaults follow the challenge's evaluation page. The organisers' metric module (Spotify,
    2017) computes 'standard' with 'ground_truth', which gives different numbers; pick those to
    reproduce it.

    Args:
      recommended: (R,) int ids, best first. ground_truth: (G,) int ids.
      recommended_mask, ground_truth_mask: optional validity masks.
      k: static cut-off.

    Returns:
      Scalar in [0, 1].
    """
    chk.check_choice("discount", discount, ("challenge_text", "standard"))
    chk.check_choice("idcg_over", idcg_over, ("intersection", "ground_truth"))
    rec, rec_valid, gt, gt_unique = _recsys_inputs(
        recommended, ground_truth, recommended_mask, ground_truth_mask, k
    )
    keep = _first_occurrence(rec, rec_valid)
    position = jnp.cumsum(keep)  # 1-based rank after de-duplication
    rel = keep & _member(rec, gt, gt_unique)
    fdt = _float_dtype()

    def inv_discount(pos):
        pos = pos.astype(fdt)
        if discount == "challenge_text":
            return 1 / jnp.log2(jnp.maximum(pos, 2))
        if discount == "standard":
            return 1 / jnp.log2(pos + 1)
        raise ValueError(f"discount must be 'challenge_text' or 'standard', got {discount!r}")

    dcg = jnp.sum(jnp.where(rel, inv_discount(position), 0))
    if idcg_over == "intersection":
        n_ideal = jnp.sum(rel)
    elif idcg_over == "ground_truth":
        n_ideal = jnp.minimum(jnp.sum(gt_unique), k)
    else:
        raise ValueError(f"idcg_over must be 'intersection' or 'ground_truth', got {idcg_over!r}")
    ranks = jnp.arange(1, max(gt.shape[0], rec.shape[0]) + 1)
    idcg = jnp.sum(jnp.where(ranks <= n_ideal, inv_discount(ranks), 0))
    return chk.safe_divide(dcg, idcg, 0.0)


def recsys_clicks(
    recommended: jax.Array,
    ground_truth: jax.Array,
    *,
    recommended_mask: jax.Array | None = None,
    ground_truth_mask: jax.Array | None = None,
    max_n: int = 500,
) -> jax.Array:
    r"""Recommended Songs clicks of the RecSys Challenge 2018.

        clicks = floor((min{i : R_i in G} - 1) / 10)     (1-based i, R capped at 500)
               = 51 when no recommended track is relevant (max_n / 10 + 1)

    Positions are those of the capped list (no de-duplication), as in the organisers' code. An
    empty list (R = 0, or every entry masked) has no relevant track: 51.

    Returns:
      Scalar (float, to average over playlists).
    """
    rec, rec_valid, gt, gt_unique = _recsys_inputs(
        recommended, ground_truth, recommended_mask, ground_truth_mask, max_n
    )
    fdt = _float_dtype()
    miss = jnp.asarray(max_n / 10 + 1, fdt)
    if rec.shape[0] == 0:
        return miss
    hit = rec_valid & _member(rec, gt, gt_unique)
    first = jnp.argmax(hit)
    return jnp.where(jnp.any(hit), (first // 10).astype(fdt), miss)


# --------------------------------------------------------------------------------------------
# FIB
# --------------------------------------------------------------------------------------------


def fib_summary_score(
    conditional_logps: jax.Array,
    conditional_mask: jax.Array,
    null_logps: jax.Array | None = None,
    null_mask: jax.Array | None = None,
    *,
    length_normalize: bool = True,
    skip_first_token: bool = False,
) -> jax.Array:
    r"""FIB's score of a candidate summary y: length-normalised pointwise mutual information.

        s(y) = (1/T) \sum_t log p(y_t | x, y_<t) - (1/T) \sum_t log p(y_t | null, y_<t)

    x is the prompted document, "null" the prompt with the document removed (for template 0 just
    BOS). Without `null_logps` the PMI term is dropped (`--ignore_pointwise_mutual_information`);
    `length_normalize=False` uses sums (`--ignore_length_normalization`); T counts each term's
    own scored tokens. The authors' decoder-only code scores tokens *within* the choice by
    shifting, so the first summary token is never scored: `skip_first_token=True` drops each
    mask's first valid token to reproduce that; the default scores all |y| tokens.

    Args:
      conditional_logps, conditional_mask: (..., T) per-token log-probs given the document.
      null_logps, null_mask: optional (..., T') per-token log-probs given the null prompt.

    Returns:
      (...) scores (higher = preferred).
    """

    def term(lp, mask, name):
        lp = chk.as_float(lp)
        m = chk.check_mask(name, mask, "logps", lp)
        if skip_first_token:
            m = m & (jnp.cumsum(m, axis=-1) > 1)
        total = jnp.sum(jnp.where(m, lp, 0), axis=-1)
        return total / jnp.sum(m, axis=-1) if length_normalize else total

    score = term(conditional_logps, conditional_mask, "conditional_mask")
    if null_logps is not None:
        score = score - term(null_logps, null_mask, "null_mask")
    return score


def binary_choice_accuracy(scores: jax.Array, correct_index: jax.Array) -> jax.Array:
    r"""Accuracy of choosing the factually consistent summary: mean 1[argmax_j s_j = correct].

    Ties go to the first index (torch.max and jnp.argmax agree).

    Args:
      scores: (N, C) summary scores (`fib_summary_score`). correct_index: (N,) in [0, C).

    Returns:
      Scalar in [0, 1].
    """
    s = chk.as_float(scores)
    chk.check_ndim("scores", s, (2,))
    if chk.shape_of(correct_index) != s.shape[:1]:
        raise ValueError(
            f"shape mismatch: scores{s.shape}, correct_index{chk.shape_of(correct_index)}"
        )
    chk.check_int_range("correct_index", correct_index, 0, s.shape[1] - 1)
    return jnp.mean(jnp.argmax(s, axis=1) == jnp.asarray(correct_index))


def fib_score(accuracies: jax.Array, subset_sizes: jax.Array) -> jax.Array:
    r"""FIB aggregate: median accuracy over prompt templates, averaged over distractor subsets.

        FIB = \sum_s n_s median_p(acc_{s,p}) / \sum_s n_s

    Args:
      accuracies: (S, P) binary-choice accuracy per distractor-model subset and template (P = 3).
      subset_sizes: (S,) number of examples per subset (the weights).

    Returns:
      Scalar.
    """
    acc = chk.as_float(accuracies)
    chk.check_ndim("accuracies", acc, (2,))
    w = chk.as_float(subset_sizes)
    if w.shape != acc.shape[:1]:
        raise ValueError(f"shape mismatch: accuracies{acc.shape}, subset_sizes{w.shape}")
    chk.check_nonnegative("subset_sizes", w)
    return jnp.sum(w * jnp.median(acc, axis=1)) / jnp.sum(w)


# --------------------------------------------------------------------------------------------
# TS-Guessing: exact match and ROUGE-L
# --------------------------------------------------------------------------------------------


def normalize_answer(
    text: str,
    *,
    lowercase: bool = True,
    strip: bool = False,
    remove_punctuation: bool = False,
    squeeze_whitespace: bool = False,
) -> str:
    """Normalise an answer string before exact matching (plain Python, not traced).

    The defaults reproduce LLMSanitize's TS-Guessing (`lower()` only); the paper's normalisation
    is not confirmed, so stripping, punctuation removal (ASCII punctuation) and whitespace
    squeezing can be switched on.
    """
    if lowercase:
        text = text.lower()
    if remove_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if squeeze_whitespace:
        text = " ".join(text.split())
    if strip:
        text = text.strip()
    return text


def exact_match_rate(
    predictions: Sequence[str],
    targets: Sequence[str],
    *,
    lowercase: bool = True,
    strip: bool = False,
    remove_punctuation: bool = False,
    squeeze_whitespace: bool = False,
) -> float:
    r"""TS-Guessing exact-match rate EM = (1/N) \sum_i 1[norm(pred_i) = norm(target_i)].

    Plain Python over strings (not jittable; `token_exact_match` is the array version). The
    target is the masked word (question-based) or the masked wrong option (multichoice);
    LLMSanitize compares the multichoice response with the correct answer instead, which looks
    like a bug. Normalisation options as `normalize_answer`.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if not predictions:
        raise ValueError("exact_match_rate needs at least one prediction")
    opts = dict(
        lowercase=lowercase,
        strip=strip,
        remove_punctuation=remove_punctuation,
        squeeze_whitespace=squeeze_whitespace,
    )
    hits = sum(
        normalize_answer(p, **opts) == normalize_answer(t, **opts)
        for p, t in zip(predictions, targets, strict=True)
    )
    return hits / len(predictions)


def token_exact_match(
    tokens_a: jax.Array,
    tokens_b: jax.Array,
    *,
    mask_a: jax.Array | None = None,
    mask_b: jax.Array | None = None,
) -> jax.Array:
    """1.0 if two padded token sequences hold the same valid tokens in the same order, else 0.0.

    Args:
      tokens_a: (La,) ids. tokens_b: (Lb,) ids. mask_a, mask_b: optional validity masks (any
        padding side). `jax.vmap` and a mean give the exact-match rate of a batch.
    """
    ta, tb = jnp.asarray(tokens_a), jnp.asarray(tokens_b)
    chk.check_ndim("tokens_a", ta, (1,))
    chk.check_ndim("tokens_b", tb, (1,))
    ta, n = chk.compact(ta, chk.check_mask("mask_a", mask_a, "tokens_a", ta))
    tb, m = chk.compact(tb, chk.check_mask("mask_b", mask_b, "tokens_b", tb))
    width = max(ta.shape[0], tb.shape[0])
    ta = jnp.pad(ta, (0, width - ta.shape[0]))
    tb = jnp.pad(tb, (0, width - tb.shape[0]))
    pos = jnp.arange(width)
    same = jnp.all((ta == tb) | (pos >= n))
    return (same & (n == m)).astype(_float_dtype())


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """The `rouge_score` default tokenizer without stemming (plain Python).

    Lower-case, replace every run of characters other than a-z and 0-9 by a space, split.
    Porter stemming (`use_stemmer=True`, LLMSanitize's setting) is not reproduced.
    """
    return _NON_ALNUM.sub(" ", text.lower()).split()


class RougeScore(NamedTuple):
    """Precision, recall and F-measure of a ROUGE score."""

    precision: jax.Array
    recall: jax.Array
    fmeasure: jax.Array


def rouge_l(
    candidate: jax.Array,
    reference: jax.Array,
    *,
    candidate_mask: jax.Array | None = None,
    reference_mask: jax.Array | None = None,
    beta: float = 1.0,
) -> RougeScore:
    r"""ROUGE-L between token sequences from their longest common subsequence.

        P = LCS / |C|,  R = LCS / |X|,  F_beta = (1 + beta^2) P R / (R + beta^2 P)
        (all 0 when LCS = 0, or either sequence is empty)

    F_1 is `rouge_score`'s `fmeasure` for 'rougeL' (and 'rougeLsum' on single-line text). The
    LCS is a `lax.scan` over candidate tokens; within a row, L[i, j] = max_{k <= j} u_k with
    u_k = L[i-1, k-1] + 1 on a match, else L[i-1, k].

    Args:
      candidate: (Lc,) int ids of the prediction. reference: (Lr,) int ids of the target.
      candidate_mask, reference_mask: optional validity masks (any padding side).

    Returns:
      `RougeScore` of scalars. Batch with `jax.vmap`.
    """
    c, r = jnp.asarray(candidate), jnp.asarray(reference)
    chk.check_ndim("candidate", c, (1,))
    chk.check_ndim("reference", r, (1,))
    c, n = chk.compact(c, chk.check_mask("candidate_mask", candidate_mask, "candidate", c))
    r, m = chk.compact(r, chk.check_mask("reference_mask", reference_mask, "reference", r))
    valid_ref = jnp.arange(r.shape[0]) < m

    def row(prev, inputs):
        i, token = inputs
        match = (token == r) & valid_ref & (i < n)
        u = jnp.where(match, prev[:-1] + 1, prev[1:])
        cur = jnp.concatenate([jnp.zeros((1,), prev.dtype), jax.lax.cummax(u)])
        return cur, None

    last, _ = jax.lax.scan(row, jnp.zeros(r.shape[0] + 1, jnp.int32), (jnp.arange(c.shape[0]), c))
    fdt = _float_dtype()
    lcs = last[m].astype(fdt)
    precision = chk.safe_divide(lcs, n.astype(fdt), 0.0)
    recall = chk.safe_divide(lcs, m.astype(fdt), 0.0)
    b2 = beta**2
    f = chk.safe_divide((1 + b2) * precision * recall, recall + b2 * precision, 0.0)
    return RougeScore(precision, recall, f)


_rouge_l_jit = jax.jit(rouge_l)


def rouge_l_text(candidate: str, reference: str) -> RougeScore:
    """ROUGE-L of two strings with `rouge_tokenize`, mapped to shared ids (plain Python wrapper).

    Argument order follows the prediction first; `rouge_score.RougeScorer.score` takes
    (target, prediction). Token arrays are padded to a power-of-two length so that many strings
    share a few compiled programs.
    """
    cand, ref = rouge_tokenize(candidate), rouge_tokenize(reference)
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in seq] for seq in (cand, ref)]
    arrays, masks = [], []
    for seq in ids:
        width = 1 << max(len(seq) - 1, 0).bit_length()
        arrays.append(jnp.asarray(seq + [0] * (width - len(seq)), jnp.int32))
        masks.append(jnp.arange(width) < len(seq))
    return _rouge_l_jit(arrays[0], arrays[1], candidate_mask=masks[0], reference_mask=masks[1])
