"""Tests for scorejax.rank_stats (ROC-AUC, Kendall tau-b, C-index) against sklearn and scipy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import kendalltau
from sklearn.metrics import (
    roc_auc_score,
)

import scorejax
from scorejax import rank_stats as rs

FAST = settings(max_examples=20, deadline=None)
N = 40


# ----------------------------------------------------------------------------------------------
# ROC-AUC family


_auc = jax.jit(rs.roc_auc)


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
    np.testing.assert_allclose(
        _auc(s, y, mask=m),
        roc_auc_score(y[m], np.nan_to_num(s[m], posinf=1e9, neginf=-1e9)),
        rtol=1e-6,
    )


def test_multiclass_auc_matches_sklearn_ovo():
    num_classes = 3
    rng = np.random.default_rng(num_classes)
    raw = rng.uniform(size=(80, num_classes))
    raw[:10] = np.round(raw[:10], 1)  # ties
    labels = rng.integers(0, num_classes, 80)
    probs = raw / raw.sum(1, keepdims=True)
    want = roc_auc_score(labels, probs, multi_class="ovo", average="macro")
    mauc = jax.jit(rs.multiclass_roc_auc, static_argnames="normalize_rows")
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
    got = jax.jit(rs.per_level_roc_auc, static_argnames="num_levels")(
        scores, severity, num_levels=4
    )
    for level in range(1, 4):
        keep = (severity == 0) | (severity == level)
        np.testing.assert_allclose(
            got[level - 1], roc_auc_score(severity[keep] == level, scores[keep]), rtol=1e-6
        )
    assert np.isnan(got[3])  # no sample of level 4
    binary = severity > 0
    np.testing.assert_allclose(
        _auc(scores, binary.astype(np.int32)), roc_auc_score(binary, scores), rtol=1e-6
    )
    # With binary severity, the C-index is the ROC-AUC.
    np.testing.assert_allclose(
        _cindex(binary.astype(float), scores), roc_auc_score(binary, scores), rtol=1e-6
    )


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


_tau = jax.jit(rs.kendall_tau_b)
_cindex = jax.jit(rs.concordance_index)


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
    np.testing.assert_allclose(_cindex(x[:120], y[:120]), c_index_loop(x[:120], y[:120]), rtol=1e-6)
    assert math.isnan(float(_cindex(np.ones(N), rng.normal(size=N))))


def test_rank_statistics_of_fewer_than_two_items_are_nan():
    for n in (0, 1):
        for run in (lambda f: f, jax.jit):
            assert math.isnan(float(run(rs.kendall_tau_b)(np.zeros(n), np.zeros(n))))
            assert math.isnan(float(run(rs.concordance_index)(np.zeros(n), np.zeros(n))))


def test_pair_counts_are_exact_beyond_int32():
    n = 70_000  # totals ~n^2 = 4.9e9 > 2^31
    totals = rs._pair_counts(lambda i: (jnp.int32(n), -jnp.int32(n)), n, 2)
    assert [float(t) for t in totals] == pytest.approx([n * n, -n * n], rel=1e-7)
    with jax.enable_x64(True):
        # int32 rows as under the default config, float64 totals: exact, both signs.
        def row(i):
            return ((i * 7919) % (2 * n) - n).astype(jnp.int32), (2 * n - i).astype(jnp.int32)

        got = rs._pair_counts(row, n, 2)
        i = np.arange(n, dtype=np.int64)
        want = [((i * 7919) % (2 * n) - n).sum(), (2 * n - i).sum()]
        assert [int(g) for g in got] == [int(w) for w in want]


def test_rank_statistics_do_not_overflow_above_46k_items():
    n = 46_400  # n (n - 1) ordered pairs > 2^31: the int32 counts wrapped round (tau = -1)
    x = np.random.default_rng(0).permutation(n).astype(np.float32)
    assert float(_tau(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(_cindex(x, x)) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# jit, vmap, bad input


def test_vmap_over_datasets_matches_loop():
    rng = np.random.default_rng(10)
    scores = rng.normal(size=(3, N))
    labels = rng.integers(0, 2, (3, N))
    got = jax.jit(jax.vmap(rs.roc_auc))(scores, labels)
    np.testing.assert_allclose(
        got, [roc_auc_score(y, s) for s, y in zip(scores, labels, strict=True)], rtol=1e-6
    )
    noisy = scores + rng.normal(size=(3, N))
    got_tau = jax.jit(jax.vmap(rs.kendall_tau_b))(scores, noisy)
    np.testing.assert_allclose(
        got_tau, [kendalltau(a, b).statistic for a, b in zip(scores, noisy, strict=True)], rtol=1e-5
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: rs.roc_auc(np.zeros(3), np.array([0, 1, 2])),
        lambda: rs.roc_auc(np.zeros(3), np.array([0, 1])),
        lambda: rs.multiclass_roc_auc(np.ones((3, 2)), np.array([0, 1, 2])),
        lambda: rs.multiclass_roc_auc(-np.ones((3, 2)), np.array([0, 1, 1])),
        lambda: rs.per_level_roc_auc(np.zeros(3), np.array([0, 1, 3]), num_levels=2),
        lambda: rs.kendall_tau_b(np.zeros(3), np.zeros(4)),
    ],
)
def test_bad_input_raises(call):
    # Shapes and options raise while tracing; values under `scorejax.checked` (eagerly and jitted).
    with pytest.raises(ValueError):
        scorejax.checked(call)()
    with pytest.raises(ValueError):
        scorejax.checked(jax.jit(call))()
