"""Rank statistics: ROC-AUC (binary, multiclass, per level), Kendall tau-b and the C-index.

Sources:
- TADPOLE Challenge (Marinescu et al.; `evalOneSubmission.py`): Hand & Till multiclass AUC.
- MAD-Bench (Cao et al., arXiv 2411.14515; `get_performance.py`): per-level ROC-AUC, Kendall
  tau-b and C-index between severity and anomaly score.

The statistics count (they are not differentiable) and work under `jit` and `vmap`. Degenerate
inputs (a single class, no comparable pairs, constant values) give NaN rather than an error, so
jitted and eager results agree. Pair counts are exact for N up to ~4 million items.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

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
    return chk.safe_divide(jnp.sum(wins), (n_pos * n_neg).astype(jnp.result_type(float)), jnp.nan)


def roc_auc(scores: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    r"""Binary ROC-AUC with ties counting 1/2 (the mid-rank Mann-Whitney statistic).

        AUC = \sum_{i: y=1} \sum_{j: y=0} [1(s_i > s_j) + 1/2 1(s_i = s_j)] / (n_1 n_0)

    Equals `sklearn.metrics.roc_auc_score(labels, scores)`. O(N log N).

    Args:
      scores: (N,) scores, higher = more positive. labels: (N,) 0/1.
      mask: optional (N,) bool; only entries with mask = True count.

    Returns:
      Scalar in [0, 1]; NaN when a class is absent (sklearn raises instead).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(roc_auc(jnp.asarray([0.1, 0.4, 0.35, 0.8]), jnp.asarray([0, 0, 1, 1])))
      0.75
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

    Examples:
      >>> import jax.numpy as jnp
      >>> probs = jnp.asarray([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]])
      >>> print(f"{multiclass_roc_auc(probs, jnp.asarray([0, 1, 2, 1])):.4f}")
      1.0000
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

    Examples:
      >>> import jax.numpy as jnp
      >>> scores = jnp.asarray([0.1, 0.2, 0.5, 0.15, 0.9])
      >>> print(per_level_roc_auc(scores, jnp.asarray([0, 0, 1, 1, 2]), num_levels=2))
      [0.75 1.  ]
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
    fdt = jnp.result_type(float)
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

    Examples:
      >>> import jax.numpy as jnp
      >>> x, y = jnp.asarray([1.0, 2.0, 3.0, 4.0]), jnp.asarray([1.0, 3.0, 2.0, 4.0])
      >>> print(f"{kendall_tau_b(x, y):.4f}")
      0.6667
      >>> print(kendall_tau_b(jnp.zeros(0), jnp.zeros(0)))
      nan
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

    Examples:
      >>> import jax.numpy as jnp
      >>> severity, scores = jnp.asarray([0.0, 1.0, 2.0]), jnp.asarray([0.2, 0.1, 0.9])
      >>> print(f"{concordance_index(severity, scores):.4f}")
      0.6667
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
