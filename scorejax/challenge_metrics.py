"""Challenge leaderboard metrics: TADPOLE forecasts and RecSys Challenge 2018 playlists.

Sources:
- TADPOLE Challenge (Marinescu et al.; `evalOneSubmission.py`): BCA, MAE, WES, CPA. Its
  multiclass AUC is `scorejax.rank_stats.multiclass_roc_auc`.
- RecSys Challenge 2018 (Zamani, Schedl, Lamere, Chen, ACM TIST 2019; the challenge's evaluation
  page and the organisers' metric module): R-precision (with artist credit), NDCG, Recommended
  Songs clicks.

The metrics count (they are not differentiable) and work under `jit` and `vmap`. Degenerate
inputs (no known target, an empty ground truth) give NaN rather than an error, so jitted and
eager results agree.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

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

    Examples:
      >>> import jax.numpy as jnp
      >>> pred, true = jnp.asarray([0, 1, 1, 2]), jnp.asarray([0, 1, 2, 2])
      >>> print(f"{balanced_classification_accuracy(pred, true, num_classes=3):.4f}")
      0.8611
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
    fdt = jnp.result_type(float)

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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(mean_absolute_error(jnp.asarray([1.0, 2.0, 5.0]), jnp.asarray([2.0, jnp.nan, 4.0])))
      1.0
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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(weighted_error_score(jnp.asarray([1.0, 5.0]), jnp.asarray([2.0, 4.0]),
      ...                            jnp.asarray([0.0, 4.0]), jnp.asarray([2.0, 8.0])))
      1.0
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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(coverage_probability_accuracy(jnp.asarray([1.0, 5.0, 3.0, 9.0]), jnp.zeros(4),
      ...                                     jnp.full(4, 4.0)))
      0.0
    """
    t, lo, hi = (chk.as_float(v) for v in (targets, ci_lower, ci_upper))
    chk.check_same_shape(targets=t, ci_lower=lo, ci_upper=hi)
    ok = _observed(t)
    inside = ok & (lo < t) & (t < hi)
    acp = chk.safe_divide(jnp.sum(inside).astype(t.dtype), jnp.sum(ok).astype(t.dtype), jnp.nan)
    return jnp.abs(acp - nominal)


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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(r_precision(jnp.asarray([7, 3, 9, 1]), jnp.asarray([3, 1, 5])))
      0.33333334
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
    fdt = jnp.result_type(float)
    score = track_hits.astype(fdt)
    if recommended_artists is not None:
        ra = jnp.asarray(recommended_artists)
        ga = jnp.asarray(ground_truth_artists)
        chk.check_same_shape(recommended=rec_ids, recommended_artists=ra)
        chk.check_same_shape(ground_truth=gt, ground_truth_artists=ga)
        rec_valid_in = chk.check_mask("recommended_mask", recommended_mask, "recommended", rec_ids)
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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(f"{recsys_ndcg(jnp.asarray([7, 3, 9, 1]), jnp.asarray([3, 1, 5])):.4f}")
      0.7500
    """
    chk.check_choice("discount", discount, ("challenge_text", "standard"))
    chk.check_choice("idcg_over", idcg_over, ("intersection", "ground_truth"))
    rec, rec_valid, gt, gt_unique = _recsys_inputs(
        recommended, ground_truth, recommended_mask, ground_truth_mask, k
    )
    keep = _first_occurrence(rec, rec_valid)
    position = jnp.cumsum(keep)  # 1-based rank after de-duplication
    rel = keep & _member(rec, gt, gt_unique)
    fdt = jnp.result_type(float)

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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(recsys_clicks(jnp.arange(30), jnp.asarray([25])))
      2.0
      >>> print(recsys_clicks(jnp.arange(3), jnp.asarray([99])))
      51.0
    """
    rec, rec_valid, gt, gt_unique = _recsys_inputs(
        recommended, ground_truth, recommended_mask, ground_truth_mask, max_n
    )
    fdt = jnp.result_type(float)
    miss = jnp.asarray(max_n / 10 + 1, fdt)
    if rec.shape[0] == 0:
        return miss
    hit = rec_valid & _member(rec, gt, gt_unique)
    first = jnp.argmax(hit)
    return jnp.where(jnp.any(hit), (first // 10).astype(fdt), miss)
