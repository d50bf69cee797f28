"""Tests for scorejax.text_metrics (FIB, exact match, ROUGE-L) against explicit loops."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scorejax
from scorejax import text_metrics as tm

FAST = settings(max_examples=20, deadline=None)


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
    np.testing.assert_allclose(tm.fib_summary_score(cond, cm, null, nm), want, rtol=1e-6)
    np.testing.assert_allclose(tm.fib_summary_score(cond_left, cm_left, null, nm), want, rtol=1e-6)
    np.testing.assert_allclose(
        tm.fib_summary_score(cond, cm, length_normalize=False),
        np.where(cm, cond, 0).sum(1),
        rtol=1e-6,
    )
    lengths = cm.sum(1)
    skipped = np.array([cond[i, 1 : lengths[i]].mean() for i in range(3)])
    np.testing.assert_allclose(
        tm.fib_summary_score(cond, cm, skip_first_token=True), skipped, rtol=1e-6
    )


def test_binary_choice_accuracy_and_fib_score():
    scores = np.array([[0.1, 0.3], [0.5, 0.5], [0.2, -1.0], [1.0, 2.0]])
    correct = np.array([1, 0, 0, 0])  # row 2 is a tie: the first index is chosen
    np.testing.assert_allclose(tm.binary_choice_accuracy(scores, correct), 0.75)
    acc = np.array([[0.6, 0.8, 0.7], [0.4, 0.5, 0.9]])
    sizes = np.array([100, 300])
    np.testing.assert_allclose(tm.fib_score(acc, sizes), (100 * 0.7 + 300 * 0.5) / 400, rtol=1e-6)


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


_rouge = jax.jit(tm.rouge_l)


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
    got = _rouge(
        np.array(cand), np.array(ref), candidate_mask=np.array(cm), reference_mask=np.array(rm)
    )
    lcs = lcs_loop(c, r)
    p = lcs / len(c) if len(c) else 0.0
    rec = lcs / len(r) if len(r) else 0.0
    f = 2 * p * rec / (p + rec) if lcs else 0.0
    np.testing.assert_allclose(
        [got.precision, got.recall, got.fmeasure], [p, rec, f], rtol=1e-6, atol=1e-7
    )


def test_rouge_text_and_tokenizer():
    # The rouge_score tokenizer: lower-case, non-alphanumerics are separators.
    assert tm.rouge_tokenize("The cat's X-ray, Über!") == ["the", "cat", "s", "x", "ray", "ber"]
    score = tm.rouge_l_text("the cat sat on the mat", "a cat was on a mat")
    np.testing.assert_allclose([score.precision, score.recall, score.fmeasure], [0.5, 0.5, 0.5])
    assert float(tm.rouge_l_text("", "a b").fmeasure) == 0.0
    beta2 = tm.rouge_l(np.array([1, 2, 3, 4]), np.array([1, 2]), beta=2.0)
    np.testing.assert_allclose(beta2.fmeasure, 5 * 0.5 * 1.0 / (1.0 + 4 * 0.5), rtol=1e-6)


def test_exact_match():
    preds = ["Paris", " paris", "Paris.", "London"]
    targets = ["paris", "paris", "paris", "paris"]
    assert tm.exact_match_rate(preds, targets) == 0.25  # LLMSanitize: lower() only
    assert tm.exact_match_rate(preds, targets, strip=True) == 0.5
    assert tm.exact_match_rate(preds, targets, strip=True, remove_punctuation=True) == 0.75
    assert tm.normalize_answer("  A  b ", squeeze_whitespace=True) == "a b"
    a = np.array([[3, 4, 0, 0], [3, 4, 5, 0]])
    am = a > 0
    b = np.array([[0, 3, 4], [3, 4, 6]])
    bm = b > 0
    got = jax.jit(jax.vmap(lambda x, mx, y, my: tm.token_exact_match(x, y, mask_a=mx, mask_b=my)))(
        a, am, b, bm
    )
    np.testing.assert_array_equal(got, [1.0, 0.0])


@pytest.mark.parametrize(
    "call",
    [
        lambda: tm.binary_choice_accuracy(np.zeros((3, 2)), np.array([0, 2, 1])),
        lambda: tm.fib_score(np.zeros((2, 3)), np.ones(3)),
        lambda: tm.exact_match_rate(["a"], ["a", "b"]),
        lambda: tm.rouge_l(np.zeros((2, 3), int), np.zeros(3, int)),
    ],
)
def test_bad_input_raises(call):
    # Shapes and options raise while tracing; values under `scorejax.checked` (eagerly and jitted).
    with pytest.raises(ValueError):
        scorejax.checked(call)()
    with pytest.raises(ValueError):
        scorejax.checked(jax.jit(call))()
