"""Tests for scorejax.ranking against scikit-learn, scipy and explicit loops."""

from __future__ import annotations

import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import kendalltau
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    mean_absolute_error,
    multilabel_confusion_matrix,
    ndcg_score,
    roc_auc_score,
)

from scorejax import ranking as rk

FAST = settings(max_examples=20, deadline=None)
N = 40


# ----------------------------------------------------------------------------------------------
# ROC-AUC family


_auc = jax.jit(rk.roc_auc)


@FAST
@given(
    scores=hnp.arrays(np.float64, N, elements=st.integers(0, 4).map(float)),
    labels=hnp.arrays(np.int32, N, elements=st.integers(0, 1)),
)
def test_roc_auc_matches_sklearn_with_ties(scores, labels):
    got = float(_auc(scores, labels))
    if labels.min() == labels.max():  # a single class
        assert math.isnan(got)
    else:
        np.testing.assert_allclose(got, roc_auc_score(labels, scores), rtol=1e-6)


def test_roc_auc_mask_and_infinities():
    rng = np.random.default_rng(0)
    s = rng.normal(size=N)
    s[:3] = [np.inf, -np.inf, np.inf]
    y = rng.integers(0, 2, N)
    y[:3] = [0, 1, 1]
    m = rng.uniform(size=N) < 0.7
    m[:3] = True
    np.testing.assert_allclose(_auc(s, y, mask=m),
                               roc_auc_score(y[m], np.nan_to_num(s[m], posinf=1e9, neginf=-1e9)),
                               rtol=1e-6)


def test_multiclass_auc_matches_sklearn_ovo():
    num_classes = 3
    rng = np.random.default_rng(num_classes)
    raw = rng.uniform(size=(80, num_classes))
    raw[:10] = np.round(raw[:10], 1)  # ties
    labels = rng.integers(0, num_classes, 80)
    probs = raw / raw.sum(1, keepdims=True)
    want = roc_auc_score(labels, probs, multi_class="ovo", average="macro")
    mauc = jax.jit(rk.multiclass_roc_auc, static_argnames="normalize_rows")
    with jax.enable_x64(True):
        # Renormalising rows in floating point can split or merge exact ties, so tied data is
        # compared without it.
        np.testing.assert_allclose(mauc(probs, labels, normalize_rows=False), want, rtol=1e-12)
        # TADPOLE renormalises rows before scoring: on tie-free data, unnormalised input gives
        # sklearn's value on the normalised probabilities.
        cont = rng.uniform(size=(80, num_classes))
        want_cont = roc_auc_score(labels, cont / cont.sum(1, keepdims=True), multi_class="ovo")
        np.testing.assert_allclose(mauc(3 * cont, labels), want_cont, rtol=1e-12)
        assert not np.isclose(float(mauc(cont, labels, normalize_rows=False)), want_cont)


def test_per_level_auc_and_c_index_relation():
    rng = np.random.default_rng(1)
    severity = rng.integers(0, 4, N)
    scores = severity + rng.normal(0, 1.5, N)
    scores[:10] = np.round(scores[:10])
    got = jax.jit(rk.per_level_roc_auc, static_argnames="num_levels")(scores, severity,
                                                                      num_levels=4)
    for level in range(1, 4):
        keep = (severity == 0) | (severity == level)
        np.testing.assert_allclose(
            got[level - 1], roc_auc_score(severity[keep] == level, scores[keep]), rtol=1e-6
        )
    assert np.isnan(got[3])  # no sample of level 4
    binary = severity > 0
    np.testing.assert_allclose(_auc(scores, binary.astype(np.int32)), roc_auc_score(binary, scores),
                               rtol=1e-6)
    # With binary severity, the C-index is the ROC-AUC.
    np.testing.assert_allclose(_cindex(binary.astype(float), scores),
                               roc_auc_score(binary, scores), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Kendall tau-b and C-index


def c_index_loop(severity, scores):
    num = den = 0.0
    for i in range(len(severity)):
        for j in range(len(severity)):
            if severity[i] < severity[j]:
                den += 1
                num += 1.0 if scores[i] < scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return num / den if den else math.nan


_tau = jax.jit(rk.kendall_tau_b)
_cindex = jax.jit(rk.concordance_index)


@FAST
@given(
    x=hnp.arrays(np.float64, N, elements=st.integers(0, 3).map(float)),
    y=hnp.arrays(np.float64, N, elements=st.integers(0, 5).map(float)),
)
def test_kendall_tau_b_and_c_index_with_ties(x, y):
    tau = float(_tau(x, y))
    want = kendalltau(x, y).statistic
    if np.isnan(want):  # a constant input
        assert math.isnan(tau)
    else:
        np.testing.assert_allclose(tau, want, rtol=1e-5, atol=1e-7)
    c = float(_cindex(x, y))
    want_c = c_index_loop(x, y)
    if math.isnan(want_c):
        assert math.isnan(c)
    else:
        np.testing.assert_allclose(c, want_c, rtol=1e-6)


def test_rank_statistics_continuous_mask_and_blocks():
    rng = np.random.default_rng(2)
    n = 700  # more than one row block
    x = rng.integers(0, 4, n).astype(float)
    y = x + rng.normal(0, 2, n)
    m = rng.uniform(size=n) < 0.8
    np.testing.assert_allclose(_tau(x, y, mask=m), kendalltau(x[m], y[m]).statistic, rtol=1e-5)
    np.testing.assert_allclose(_cindex(x[:120], y[:120]), c_index_loop(x[:120], y[:120]),
                               rtol=1e-6)
    assert math.isnan(float(_cindex(np.ones(N), rng.normal(size=N))))


def test_rank_statistics_of_fewer_than_two_items_are_nan():
    for n in (0, 1):
        for run in (lambda f: f, jax.jit):
            assert math.isnan(float(run(rk.kendall_tau_b)(np.zeros(n), np.zeros(n))))
            assert math.isnan(float(run(rk.concordance_index)(np.zeros(n), np.zeros(n))))


def test_pair_counts_are_exact_beyond_int32():
    n = 70_000  # totals ~n^2 = 4.9e9 > 2^31
    totals = rk._pair_counts(lambda i: (jnp.int32(n), -jnp.int32(n)), n, 2)
    assert [float(t) for t in totals] == pytest.approx([n * n, -n * n], rel=1e-7)
    with jax.enable_x64(True):
        # int32 rows as under the default config, float64 totals: exact, both signs.
        def row(i):
            return ((i * 7919) % (2 * n) - n).astype(jnp.int32), (2 * n - i).astype(jnp.int32)

        got = rk._pair_counts(row, n, 2)
        i = np.arange(n, dtype=np.int64)
        want = [((i * 7919) % (2 * n) - n).sum(), (2 * n - i).sum()]
        assert [int(g) for g in got] == [int(w) for w in want]


def test_rank_statistics_do_not_overflow_above_46k_items():
    n = 46_400  # n (n - 1) ordered pairs > 2^31: the int32 counts wrapped round (tau = -1)
    x = np.random.default_rng(0).permutation(n).astype(np.float32)
    assert float(_tau(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(_cindex(x, x)) == pytest.approx(1.0, abs=1e-6)


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
    np.testing.assert_allclose(rk.balanced_classification_accuracy(probs, true, num_classes=3),
                               bca_one_vs_rest_sklearn(pred, true, 3), rtol=1e-6)
    np.testing.assert_allclose(
        rk.balanced_classification_accuracy(pred, true, num_classes=3, variant="pairwise"),
        bca_pairwise_loop(pred, true, 3), rtol=1e-6,
    )
    # Not sklearn's balanced accuracy for three classes; the same for two.
    assert not np.isclose(float(rk.balanced_classification_accuracy(pred, true, num_classes=3)),
                          balanced_accuracy_score(true, pred))
    p2, t2 = rng.integers(0, 2, (2, 50))
    np.testing.assert_allclose(rk.balanced_classification_accuracy(p2, t2, num_classes=2),
                               balanced_accuracy_score(t2, p2), rtol=1e-6)


def test_bca_absent_class_uses_half():
    pred = np.array([0, 0, 1, 1])
    true = np.array([0, 1, 1, 1])  # class 2 is neither predicted nor present
    got = rk.balanced_classification_accuracy(pred, true, num_classes=3)
    np.testing.assert_allclose(got, bca_one_vs_rest_sklearn(pred, true, 3), rtol=1e-6)


def test_mae_wes_cpa():
    rng = np.random.default_rng(3)
    target = rng.normal(size=30)
    pred = target + rng.normal(0, 0.5, 30)
    lo, hi = pred - rng.uniform(0.1, 1, 30), pred + rng.uniform(0.1, 1, 30)
    target[[2, 7]] = np.nan
    ok = ~np.isnan(target)
    hi[5] = target[5]  # on the edge: not covered (strict)
    np.testing.assert_allclose(rk.mean_absolute_error(pred, target),
                               mean_absolute_error(target[ok], pred[ok]), rtol=1e-6)
    w = 1 / (hi - lo)
    err = np.abs(pred - target)
    np.testing.assert_allclose(rk.weighted_error_score(pred, target, lo, hi),
                               np.sum((w * err)[ok]) / np.sum(w[ok]), rtol=1e-5)
    acp = np.mean(((lo < target) & (target < hi))[ok])
    np.testing.assert_allclose(rk.coverage_probability_accuracy(target, lo, hi), abs(acp - 0.5),
                               rtol=1e-6)
    lo[0] = hi[0]  # zero-width interval
    assert not np.isfinite(float(rk.weighted_error_score(pred, target, lo, hi)))
    assert np.isfinite(float(rk.weighted_error_score(pred, target, lo, hi, min_width=1e-3)))


# ----------------------------------------------------------------------------------------------
# Essay scoring


_qwk = jax.jit(rk.quadratic_weighted_kappa, static_argnames=("min_rating", "max_rating"))


@FAST
@given(
    a=hnp.arrays(np.int32, 30, elements=st.integers(1, 5)),
    b=hnp.arrays(np.int32, 30, elements=st.integers(1, 5)),
)
def test_qwk_matches_sklearn_with_fixed_labels(a, b):
    got = float(_qwk(a, b, min_rating=1, max_rating=5))
    with np.errstate(all="ignore"):
        want = cohen_kappa_score(a, b, weights="quadratic", labels=np.arange(1, 6))
    if np.isnan(want):
        assert math.isnan(got)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_qwk_range_convention_and_undefined():
    a = np.array([1, 2, 4, 4, 2, 1])
    b = np.array([1, 4, 4, 2, 2, 1])
    fixed = float(rk.quadratic_weighted_kappa(a, b, min_rating=1, max_rating=4))
    np.testing.assert_allclose(fixed, cohen_kappa_score(a, b, weights="quadratic",
                                                        labels=np.arange(1, 5)), rtol=1e-6)
    # Without labels sklearn weights by index over the observed {1, 2, 4}: a different number.
    assert not np.isclose(fixed, cohen_kappa_score(a, b, weights="quadratic"))
    const = np.full(5, 3)
    assert math.isnan(float(rk.quadratic_weighted_kappa(const, const, min_rating=1,
                                                        max_rating=5)))
    assert float(rk.quadratic_weighted_kappa(const, const, min_rating=1, max_rating=5,
                                             if_undefined=1.0)) == 1.0
    np.testing.assert_array_equal(
        rk.round_ratings(np.array([0.2, 1.5, 2.5, 3.49, 7.0]), min_rating=1, max_rating=5),
        [1, 2, 2, 3, 5],
    )


def test_agreement_rates():
    a = np.array([1, 2, 3, 4, 5, 3, 2])
    b = np.array([1, 3, 5, 4, 4, 3, 1])
    np.testing.assert_allclose(rk.exact_agreement(a, b), 3 / 7)
    np.testing.assert_allclose(rk.adjacent_agreement(a, b), 6 / 7)
    np.testing.assert_allclose(rk.adjacent_agreement(a, b, denominator="errors"), 3 / 4)
    assert math.isnan(float(rk.adjacent_agreement(a, a, denominator="errors")))


# ----------------------------------------------------------------------------------------------
# RecSys Challenge 2018


def _unique(xs):
    return list(OrderedDict.fromkeys(xs))


def r_precision_loop(targets, predictions, max_n=500):
    """The organisers' r_precision (Spotify, 2017)."""
    predictions = predictions[:max_n]
    target_set = set(targets)
    return len(set(predictions[: len(target_set)]) & target_set) / len(target_set)


def r_precision_artist_loop(targets, predictions, target_artists, pred_artists,
                            exclude=False, max_n=500):
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


_rprec = jax.jit(rk.r_precision, static_argnames=("exclude_track_matches", "max_n"))
_ndcg = jax.jit(rk.recsys_ndcg, static_argnames=("k", "discount", "idcg_over"))
_clicks = jax.jit(rk.recsys_clicks, static_argnames="max_n")


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
        np.testing.assert_allclose(_rprec(rec, gt_p, ground_truth_mask=gt_m),
                                   r_precision_loop(list(gt), list(rec)), rtol=1e-6)
        np.testing.assert_allclose(_clicks(rec, gt_p, ground_truth_mask=gt_m),
                                   clicks_loop(list(gt), list(rec)))
    assert float(rk.recsys_clicks(np.arange(10), np.array([99]))) == 51.0


def test_clicks_of_an_empty_recommendation_list():
    empty = np.zeros(0, np.int64)
    assert float(rk.recsys_clicks(empty, np.array([3, 4]))) == 51.0
    assert float(_clicks(empty, np.array([3, 4]), max_n=100)) == 11.0
    assert float(_clicks(np.array([3]), np.array([3]), recommended_mask=np.array([False]))) == 51.0


@pytest.mark.parametrize("exclude", [False, True])
def test_r_precision_artist_credit(exclude):
    rng = np.random.default_rng(5)
    for gt, rec in _playlists(6):
        artist_of = rng.integers(0, 15, 80)
        gt_p, gt_m = _padded(gt, 12)
        got = _rprec(rec, gt_p, ground_truth_mask=gt_m,
                             recommended_artists=artist_of[rec],
                             ground_truth_artists=artist_of[np.maximum(gt_p, 0)],
                             exclude_track_matches=exclude)
        want = r_precision_artist_loop(list(gt), list(rec), list(artist_of[gt]),
                                       list(artist_of[rec]), exclude=exclude)
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("idcg_over", ["intersection", "ground_truth"])
def test_ndcg_challenge_text(idcg_over):
    for gt, rec in _playlists(7):
        gt_p, gt_m = _padded(gt, 12)
        for k in (500, 20):
            got = _ndcg(rec, gt_p, ground_truth_mask=gt_m, k=k, idcg_over=idcg_over)
            np.testing.assert_allclose(got, ndcg_text_loop(list(gt), list(rec), k, idcg_over),
                                       rtol=1e-6)


def test_ndcg_organisers_code_and_sklearn():
    for gt, rec in _playlists(8):
        gt_p, gt_m = _padded(gt, 12)
        got = _ndcg(rec, gt_p, ground_truth_mask=gt_m, discount="standard",
                             idcg_over="ground_truth")
        np.testing.assert_allclose(got, ndcg_organisers_loop(list(gt), list(rec)), rtol=1e-6)
        # Without duplicates, standard discount and IDCG over |G n R| is sklearn's ndcg_score.
        uniq = np.array(_unique(list(rec)))
        rel = np.isin(uniq, gt).astype(float)
        if rel.sum() > 0:
            want = ndcg_score(rel[None], -np.arange(len(uniq), dtype=float)[None])
            padded = np.pad(uniq, (0, len(rec) - len(uniq)), constant_values=-1)
            got = _ndcg(padded, gt_p, recommended_mask=padded >= 0, ground_truth_mask=gt_m,
                        discount="standard")
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_recsys_padding_and_vmap():
    gt = np.array([[5, 7, -1], [1, 2, 3]])
    gt_mask = gt >= 0
    rec = np.array([[0, 7, 0, 5, 9], [-1, -1, 3, 2, 8]])
    rec_mask = rec >= 0
    got = jax.jit(jax.vmap(
        lambda r, rm, g, gm: rk.recsys_ndcg(r, g, recommended_mask=rm, ground_truth_mask=gm)
    ))(rec, rec_mask, gt, gt_mask)
    want = [ndcg_text_loop([5, 7], [0, 7, 0, 5, 9]), ndcg_text_loop([1, 2, 3], [3, 2, 8])]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(
        _rprec(rec[1], gt[1], recommended_mask=rec_mask[1]), 2 / 3, rtol=1e-6
    )


# ----------------------------------------------------------------------------------------------
# FIB


def test_fib_summary_score():
    rng = np.random.default_rng(9)
    cond = -rng.uniform(0, 4, (3, 7))
    null = -rng.uniform(0, 4, (3, 5))
    cm = np.arange(7)[None] < np.array([[7], [3], [5]])
    nm = np.arange(5)[None] < np.array([[5], [4], [2]])
    cm_left, cond_left = cm[:, ::-1], cond[:, ::-1]
    want = (np.where(cm, cond, 0).sum(1) / cm.sum(1)) - (np.where(nm, null, 0).sum(1) / nm.sum(1))
    np.testing.assert_allclose(rk.fib_summary_score(cond, cm, null, nm), want, rtol=1e-6)
    np.testing.assert_allclose(rk.fib_summary_score(cond_left, cm_left, null, nm), want,
                               rtol=1e-6)
    np.testing.assert_allclose(rk.fib_summary_score(cond, cm, length_normalize=False),
                               np.where(cm, cond, 0).sum(1), rtol=1e-6)
    lengths = cm.sum(1)
    skipped = np.array([cond[i, 1 : lengths[i]].mean() for i in range(3)])
    np.testing.assert_allclose(rk.fib_summary_score(cond, cm, skip_first_token=True), skipped,
                               rtol=1e-6)


def test_binary_choice_accuracy_and_fib_score():
    scores = np.array([[0.1, 0.3], [0.5, 0.5], [0.2, -1.0], [1.0, 2.0]])
    correct = np.array([1, 0, 0, 0])  # row 2 is a tie: the first index is chosen
    np.testing.assert_allclose(rk.binary_choice_accuracy(scores, correct), 0.75)
    acc = np.array([[0.6, 0.8, 0.7], [0.4, 0.5, 0.9]])
    sizes = np.array([100, 300])
    np.testing.assert_allclose(rk.fib_score(acc, sizes), (100 * 0.7 + 300 * 0.5) / 400,
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# TS-Guessing


def lcs_loop(a, b):
    table = np.zeros((len(a) + 1, len(b) + 1), int)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i, j] = table[i - 1, j - 1] + 1
            else:
                table[i, j] = max(table[i - 1, j], table[i, j - 1])
    return table[-1, -1]


_rouge = jax.jit(rk.rouge_l)


@FAST
@given(
    cand=st.lists(st.integers(0, 4), min_size=9, max_size=9),
    ref=st.lists(st.integers(0, 4), min_size=7, max_size=7),
    cm=st.lists(st.booleans(), min_size=9, max_size=9),
    rm=st.lists(st.booleans(), min_size=7, max_size=7),
)
def test_rouge_l_matches_lcs_dp(cand, ref, cm, rm):
    c = np.array(cand)[np.array(cm)]
    r = np.array(ref)[np.array(rm)]
    got = _rouge(np.array(cand), np.array(ref), candidate_mask=np.array(cm),
                 reference_mask=np.array(rm))
    lcs = lcs_loop(c, r)
    p = lcs / len(c) if len(c) else 0.0
    rec = lcs / len(r) if len(r) else 0.0
    f = 2 * p * rec / (p + rec) if lcs else 0.0
    np.testing.assert_allclose([got.precision, got.recall, got.fmeasure], [p, rec, f],
                               rtol=1e-6, atol=1e-7)


def test_rouge_text_and_tokenizer():
    # The rouge_score tokenizer: lower-case, non-alphanumerics are separators.
    assert rk.rouge_tokenize("The cat's X-ray, Über!") == ["the", "cat", "s", "x", "ray", "ber"]
    score = rk.rouge_l_text("the cat sat on the mat", "a cat was on a mat")
    np.testing.assert_allclose([score.precision, score.recall, score.fmeasure], [0.5, 0.5, 0.5])
    assert float(rk.rouge_l_text("", "a b").fmeasure) == 0.0
    beta2 = rk.rouge_l(np.array([1, 2, 3, 4]), np.array([1, 2]), beta=2.0)
    np.testing.assert_allclose(beta2.fmeasure, 5 * 0.5 * 1.0 / (1.0 + 4 * 0.5), rtol=1e-6)


def test_exact_match():
    preds = ["Paris", " paris", "Paris.", "London"]
    targets = ["paris", "paris", "paris", "paris"]
    assert rk.exact_match_rate(preds, targets) == 0.25  # LLMSanitize: lower() only
    assert rk.exact_match_rate(preds, targets, strip=True) == 0.5
    assert rk.exact_match_rate(preds, targets, strip=True, remove_punctuation=True) == 0.75
    assert rk.normalize_answer("  A  b ", squeeze_whitespace=True) == "a b"
    a = np.array([[3, 4, 0, 0], [3, 4, 5, 0]])
    am = a > 0
    b = np.array([[0, 3, 4], [3, 4, 6]])
    bm = b > 0
    got = jax.jit(jax.vmap(
        lambda x, mx, y, my: rk.token_exact_match(x, y, mask_a=mx, mask_b=my)
    ))(a, am, b, bm)
    np.testing.assert_array_equal(got, [1.0, 0.0])


# ----------------------------------------------------------------------------------------------
# jit, vmap, bad input


def test_vmap_over_datasets_matches_loop():
    rng = np.random.default_rng(10)
    scores = rng.normal(size=(3, N))
    labels = rng.integers(0, 2, (3, N))
    got = jax.jit(jax.vmap(rk.roc_auc))(scores, labels)
    np.testing.assert_allclose(got, [roc_auc_score(y, s) for s, y in zip(scores, labels,
                                                                         strict=True)],
                               rtol=1e-6)
    noisy = scores + rng.normal(size=(3, N))
    got_tau = jax.jit(jax.vmap(rk.kendall_tau_b))(scores, noisy)
    np.testing.assert_allclose(got_tau, [kendalltau(a, b).statistic for a, b in zip(
        scores, noisy, strict=True)], rtol=1e-5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: rk.roc_auc(np.zeros(3), np.array([0, 1, 2])),
        lambda: rk.roc_auc(np.zeros(3), np.array([0, 1])),
        lambda: rk.multiclass_roc_auc(np.ones((3, 2)), np.array([0, 1, 2])),
        lambda: rk.multiclass_roc_auc(-np.ones((3, 2)), np.array([0, 1, 1])),
        lambda: rk.per_level_roc_auc(np.zeros(3), np.array([0, 1, 3]), num_levels=2),
        lambda: rk.kendall_tau_b(np.zeros(3), np.zeros(4)),
        lambda: rk.balanced_classification_accuracy(np.array([0, 3]), np.array([0, 1]),
                                                    num_classes=3),
        lambda: rk.balanced_classification_accuracy(np.array([0, 1]), np.array([0, 1]),
                                                    num_classes=2, variant="macro"),
        lambda: rk.quadratic_weighted_kappa(np.array([1, 6]), np.array([1, 2]), min_rating=1,
                                            max_rating=5),
        lambda: rk.quadratic_weighted_kappa(np.array([1.5, 2]), np.array([1, 2]), min_rating=1,
                                            max_rating=5),
        lambda: rk.adjacent_agreement(np.array([1, 2]), np.array([1, 2]), denominator="some"),
        lambda: rk.recsys_ndcg(np.arange(5), np.arange(3), ground_truth_mask=np.ones(2, bool)),
        lambda: rk.recsys_ndcg(np.arange(5), np.arange(3), discount="log"),
        lambda: rk.r_precision(np.arange(5), np.arange(3), recommended_artists=np.arange(5)),
        lambda: rk.binary_choice_accuracy(np.zeros((3, 2)), np.array([0, 2, 1])),
        lambda: rk.fib_score(np.zeros((2, 3)), np.ones(3)),
        lambda: rk.exact_match_rate(["a"], ["a", "b"]),
        lambda: rk.rouge_l(np.zeros((2, 3), int), np.zeros(3, int)),
        lambda: rk.mean_absolute_error(np.zeros(3), np.zeros(2)),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()
