"""Metrics of generated text: FIB summary scores, exact match and ROUGE-L (TS-Guessing).

Sources:
- FIB (Tam et al. 2022, r-three/fib): length-normalised PMI summary score, binary-choice
  accuracy, the FIB aggregate.
- TS-Guessing (Deng et al., NAACL 2024): exact-match rate and ROUGE-L F1.

The array functions work under `jit` and `vmap`; the string helpers of TS-Guessing
(`normalize_answer`, `exact_match_rate`, `rouge_tokenize`, `rouge_l_text`) are plain Python.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

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

    Examples:
      >>> import jax.numpy as jnp
      >>> lp = jnp.log(jnp.asarray([[0.5, 0.5, 0.1]]))
      >>> null = jnp.log(jnp.asarray([[0.25, 0.25, 0.1]]))
      >>> mask = jnp.asarray([[True, True, False]])
      >>> print(fib_summary_score(lp, mask, null, mask))
      [0.6931]
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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(binary_choice_accuracy(jnp.asarray([[0.1, 0.9], [0.7, 0.2]]), jnp.asarray([1, 1])))
      0.5
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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(fib_score(jnp.asarray([[0.6, 0.8, 0.7], [0.4, 0.5, 0.9]]), jnp.asarray([1.0, 3.0])))
      0.55
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

    Examples:
      >>> print(repr(normalize_answer("  The Cat, sat! ", strip=True, remove_punctuation=True)))
      'the cat sat'
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

    Examples:
      >>> print(exact_match_rate(["Paris", "rome "], ["paris", "Rome"]))
      0.5
      >>> print(exact_match_rate(["Paris", "rome "], ["paris", "Rome"], strip=True))
      1.0
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

    Examples:
      >>> import jax.numpy as jnp
      >>> mask_a = jnp.asarray([False, True, True])
      >>> print(token_exact_match(jnp.asarray([0, 4, 5]), jnp.asarray([4, 5]), mask_a=mask_a))
      1.0
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
    return (same & (n == m)).astype(jnp.result_type(float))


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """The `rouge_score` default tokenizer without stemming (plain Python).

    Lower-case, replace every run of characters other than a-z and 0-9 by a space, split.
    Porter stemming (`use_stemmer=True`, LLMSanitize's setting) is not reproduced.

    Examples:
      >>> print(rouge_tokenize("The cat's hat, 2x!"))
      ['the', 'cat', 's', 'hat', '2x']
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

    Examples:
      >>> import jax.numpy as jnp
      >>> score = rouge_l(jnp.asarray([1, 2, 3, 4]), jnp.asarray([1, 3, 4, 5, 6]))
      >>> print(score.precision, score.recall, f"{score.fmeasure:.4f}")
      0.75 0.6 0.6667
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
    fdt = jnp.result_type(float)
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

    Examples:
      >>> print(f"{rouge_l_text('the cat sat on the mat', 'the cat lay on the mat').fmeasure:.4f}")
      0.8333
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
