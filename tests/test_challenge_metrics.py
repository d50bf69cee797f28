"""Tests for scorejax.challenge_metrics (TADPOLE, RecSys) against sklearn and the loops."""

from __future__ import annotations

import math
from collections import OrderedDict

import jax
import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    mean_absolute_error,
    multilabel_confusion_matrix,
    ndcg_score,
)

import scorejax
from scorejax import challenge_metrics as cm

# ----------------------------------------------------------------------------------------------
# TADPOLE


def bca_pairwise_loop(pred, true, num_classes):
    """The original evalOneSubmission.py calcBCA."""
    values = []
    for c0 in range(num_classes):
        for c1 in range(c0 + 1, num_classes):
            tp = np.sum((pred == c0) & (true == c0))
            tn = np.sum((pred == c1) & (true == c1))
            fp = np.sum((pred == c1) & (true == c0))
            fn = np.sum((pred == c0) & (true == c1))
            sens = 0.5 if tp + fn == 0 else tp / (tp + fn)
            spec = 0.5 if tn + fp == 0 else tn / (tn + fp)
            values.append(0.5 * (sens + spec))
    return np.mean(values)


def bca_one_vs_rest_sklearn(pred, true, num_classes):
    values = []
    for (tn, fp), (fn, tp) in multilabel_confusion_matrix(true, pred, labels=range(num_classes)):
        sens = 0.5 if tp + fn == 0 else tp / (tp + fn)
        spec = 0.5 if tn + fp == 0 else tn / (tn + fp)
        values.append(0.5 * (sens + spec))
    return np.mean(values)


@pytest.mark.parametrize("seed", [0, 1])
def test_bca_matches_loops(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=70)
    true = rng.integers(0, 3, 70)
    pred = probs.argmax(1)
    np.testing.assert_allclose(
        cm.balanced_classification_accuracy(probs, true, num_classes=3),
        bca_one_vs_rest_sklearn(pred, true, 3),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        cm.balanced_classification_accuracy(pred, true, num_classes=3, variant="pairwise"),
        bca_pairwise_loop(pred, true, 3),
        rtol=1e-6,
    )
    # Not sklearn's balanced accuracy for three classes; the same for two.
    assert not np.isclose(
        float(cm.balanced_classification_accuracy(pred, true, num_classes=3)),
        balanced_accuracy_score(true, pred),
    )
    p2, t2 = rng.integers(0, 2, (2, 50))
    np.testing.assert_allclose(
        cm.balanced_classification_accuracy(p2, t2, num_classes=2),
        balanced_accuracy_score(t2, p2),
        rtol=1e-6,
    )


def test_bca_absent_class_uses_half():
    pred = np.array([0, 0, 1, 1])
    true = np.array([0, 1, 1, 1])  # class 2 is neither predicted nor present
    got = cm.balanced_classification_accuracy(pred, true, num_classes=3)
    np.testing.assert_allclose(got, bca_one_vs_rest_sklearn(pred, true, 3), rtol=1e-6)


def test_mae_wes_cpa():
    rng = np.random.default_rng(3)
    target = rng.normal(size=30)
    pred = target + rng.normal(0, 0.5, 30)
    lo, hi = pred - rng.uniform(0.1, 1, 30), pred + rng.uniform(0.1, 1, 30)
    target[[2, 7]] = np.nan
    ok = ~np.isnan(target)
    hi[5] = target[5]  # on the edge: not covered (strict)
    np.testing.assert_allclose(
        cm.mean_absolute_error(pred, target), mean_absolute_error(target[ok], pred[ok]), rtol=1e-6
    )
    w = 1 / (hi - lo)
    err = np.abs(pred - target)
    np.testing.assert_allclose(
        cm.weighted_error_score(pred, target, lo, hi),
        np.sum((w * err)[ok]) / np.sum(w[ok]),
        rtol=1e-5,
    )
    acp = np.mean(((lo < target) & (target < hi))[ok])
    np.testing.assert_allclose(
        cm.coverage_probability_accuracy(target, lo, hi), abs(acp - 0.5), rtol=1e-6
    )
    lo[0] = hi[0]  # zero-width interval
    assert not np.isfinite(float(cm.weighted_error_score(pred, target, lo, hi)))
    assert np.isfinite(float(cm.weighted_error_score(pred, target, lo, hi, min_width=1e-3)))


# ----------------------------------------------------------------------------------------------
# RecSys Challenge 2018


def _unique(xs):
    return list(OrderedDict.fromkeys(xs))


def r_precision_loop(targets, predictions, max_n=500):
    """The organisers' r_precision (Spotify, 2017)."""
    predictions = predictions[:max_n]
    target_set = set(targets)
    return len(set(predictions[: len(target_set)]) & target_set) / len(target_set)


def r_precision_artist_loop(
    targets, predictions, target_artists, pred_artists, exclude=False, max_n=500
):
    gt_t = _unique(targets)
    n = len(gt_t)
    head = list(zip(predictions[:max_n][:n], pred_artists[:max_n][:n], strict=True))
    s_t = {t for t, _ in head}
    tracks = len(s_t & set(gt_t))
    if exclude:
        s_a = {a for t, a in head if t not in set(gt_t)}
        g_a = {a for t, a in zip(targets, target_artists, strict=True) if t not in s_t}
    else:
        s_a = {a for _, a in head}
        g_a = set(target_artists)
    return (tracks + 0.25 * len(s_a & g_a)) / n


def ndcg_text_loop(targets, predictions, k=500, idcg_over="intersection"):
    """The challenge page's NDCG: positions 1 and 2 weigh 1; list cut at k, then de-duplicated."""
    recs = _unique(predictions[:k])
    gt = set(targets)
    rel = [1.0 if r in gt else 0.0 for r in recs]

    def dcg(values):
        return sum(v if i == 1 else v / math.log2(i) for i, v in enumerate(values, start=1))

    n_ideal = int(sum(rel)) if idcg_over == "intersection" else min(len(gt), k)
    idcg = dcg([1.0] * n_ideal)
    return dcg(rel) / idcg if idcg > 0 else 0.0


def ndcg_organisers_loop(targets, predictions, k=500):
    """The organisers' metric module: sum rel_i / log2(i + 1), IDCG over min(|G|, k)."""

    def dcg(relevant, retrieved, kk):
        retrieved = _unique(retrieved[:kk])
        relevant = _unique(relevant)
        score = np.array([float(el in relevant) for el in retrieved])
        return np.sum(score / np.log2(1 + np.arange(1, len(score) + 1)))

    return dcg(targets, predictions, k) / dcg(targets, targets, min(k, len(targets)))


def clicks_loop(targets, predictions, max_n=500):
    predictions = predictions[:max_n]
    for index, t in enumerate(predictions):
        if t in set(targets):
            return float(index // 10)
    return max_n / 10 + 1


_rprec = jax.jit(cm.r_precision, static_argnames=("exclude_track_matches", "max_n"))
_ndcg = jax.jit(cm.recsys_ndcg, static_argnames=("k", "discount", "idcg_over"))
_clicks = jax.jit(cm.recsys_clicks, static_argnames="max_n")


def _playlists(seed, count=6, num_rec=60, num_gt=12, vocab=80):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        g = int(rng.integers(1, num_gt + 1))
        gt = rng.choice(vocab, g, replace=False)
        rec = rng.integers(0, vocab, num_rec)  # duplicates on purpose
        rec[: g // 2] = rng.choice(gt, g // 2)
        out.append((gt, rec))
    return out


def _padded(gt, width):
    pad = np.full(width, -1)
    pad[: len(gt)] = gt
    return pad, np.arange(width) < len(gt)


def test_r_precision_and_clicks_match_organisers_code():
    for gt, rec in _playlists(4):
        gt_p, gt_m = _padded(gt, 12)
        np.testing.assert_allclose(
            _rprec(rec, gt_p, ground_truth_mask=gt_m),
            r_precision_loop(list(gt), list(rec)),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            _clicks(rec, gt_p, ground_truth_mask=gt_m), clicks_loop(list(gt), list(rec))
        )
    assert float(cm.recsys_clicks(np.arange(10), np.array([99]))) == 51.0


def test_clicks_of_an_empty_recommendation_list():
    empty = np.zeros(0, np.int64)
    assert float(cm.recsys_clicks(empty, np.array([3, 4]))) == 51.0
    assert float(_clicks(empty, np.array([3, 4]), max_n=100)) == 11.0
    assert float(_clicks(np.array([3]), np.array([3]), recommended_mask=np.array([False]))) == 51.0


@pytest.mark.parametrize("exclude", [False, True])
def test_r_precision_artist_credit(exclude):
    rng = np.random.default_rng(5)
    for gt, rec in _playlists(6):
        artist_of = rng.integers(0, 15, 80)
        gt_p, gt_m = _padded(gt, 12)
        got = _rprec(
            rec,
            gt_p,
            ground_truth_mask=gt_m,
            recommended_artists=artist_of[rec],
            ground_truth_artists=artist_of[np.maximum(gt_p, 0)],
            exclude_track_matches=exclude,
        )
        want = r_precision_artist_loop(
            list(gt), list(rec), list(artist_of[gt]), list(artist_of[rec]), exclude=exclude
        )
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("idcg_over", ["intersection", "ground_truth"])
def test_ndcg_challenge_text(idcg_over):
    for gt, rec in _playlists(7):
        gt_p, gt_m = _padded(gt, 12)
        for k in (500, 20):
            got = _ndcg(rec, gt_p, ground_truth_mask=gt_m, k=k, idcg_over=idcg_over)
            np.testing.assert_allclose(
                got, ndcg_text_loop(list(gt), list(rec), k, idcg_over), rtol=1e-6
            )


def test_ndcg_organisers_code_and_sklearn():
    for gt, rec in _playlists(8):
        gt_p, gt_m = _padded(gt, 12)
        got = _ndcg(
            rec, gt_p, ground_truth_mask=gt_m, discount="standard", idcg_over="ground_truth"
        )
        np.testing.assert_allclose(got, ndcg_organisers_loop(list(gt), list(rec)), rtol=1e-6)
        # Without duplicates, standard discount and IDCG over |G n R| is sklearn's ndcg_score.
        uniq = np.array(_unique(list(rec)))
        rel = np.isin(uniq, gt).astype(float)
        if rel.sum() > 0:
            want = ndcg_score(rel[None], -np.arange(len(uniq), dtype=float)[None])
            padded = np.pad(uniq, (0, len(rec) - len(uniq)), constant_values=-1)
            got = _ndcg(
                padded,
                gt_p,
                recommended_mask=padded >= 0,
                ground_truth_mask=gt_m,
                discount="standard",
            )
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_recsys_padding_and_vmap():
    gt = np.array([[5, 7, -1], [1, 2, 3]])
    gt_mask = gt >= 0
    rec = np.array([[0, 7, 0, 5, 9], [-1, -1, 3, 2, 8]])
    rec_mask = rec >= 0
    got = jax.jit(
        jax.vmap(
            lambda r, rm, g, gm: cm.recsys_ndcg(r, g, recommended_mask=rm, ground_truth_mask=gm)
        )
    )(rec, rec_mask, gt, gt_mask)
    want = [ndcg_text_loop([5, 7], [0, 7, 0, 5, 9]), ndcg_text_loop([1, 2, 3], [3, 2, 8])]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(
        _rprec(rec[1], gt[1], recommended_mask=rec_mask[1]), 2 / 3, rtol=1e-6
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: cm.balanced_classification_accuracy(
            np.array([0, 3]), np.array([0, 1]), num_classes=3
        ),
        lambda: cm.balanced_classification_accuracy(
            np.array([0, 1]), np.array([0, 1]), num_classes=2, variant="macro"
        ),
        lambda: cm.recsys_ndcg(np.arange(5), np.arange(3), ground_truth_mask=np.ones(2, bool)),
        lambda: cm.recsys_ndcg(np.arange(5), np.arange(3), discount="log"),
        lambda: cm.r_precision(np.arange(5), np.arange(3), recommended_artists=np.arange(5)),
        lambda: cm.mean_absolute_error(np.zeros(3), np.zeros(2)),
    ],
)
def test_bad_input_raises(call):
    # Shapes and options raise while tracing; values under `scorejax.checked` (eagerly and jitted).
    with pytest.raises(ValueError):
        scorejax.checked(call)()
    with pytest.raises(ValueError):
        scorejax.checked(jax.jit(call))()
