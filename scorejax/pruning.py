"""Dataset pruning by per-example score, and the label noise of the noisy-label protocol.

`prune` implements the selection rules of data_diet's `subset_train_idxs` (keep the hardest,
easiest, a random subset, or a window below the hardest), optionally class-balanced; the scores
come from `scorejax.importance`, `scorejax.vog` or `scorejax.training_dynamics`. `flip_labels`
corrupts a known fraction of labels, so that a pruning rule can be judged by the noisy examples
it keeps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

PRUNE_STRATEGIES = ("hardest", "easiest", "random", "offset")


def _allocate(total: int | jnp.ndarray, sizes: jnp.ndarray) -> jnp.ndarray:
    """Split `total` over groups proportionally to `sizes` (largest remainder, ties by index)."""
    n = jnp.sum(sizes)
    base = (total * sizes) // n
    remainder = (total * sizes) % n
    extra = total - jnp.sum(base)
    order = jnp.argsort(-remainder, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size))
    return base + (rank < extra).astype(base.dtype)


def prune(
    scores: jnp.ndarray,
    *,
    keep_fraction: float,
    strategy: str = "hardest",
    offset: int = 0,
    key: jax.Array | None = None,
    labels: jnp.ndarray | None = None,
    num_classes: int | None = None,
    class_balanced: bool = False,
) -> jnp.ndarray:
    """Indices of the examples to keep, n_keep = round(keep_fraction * N) of them, ascending.

    Strategies (data_diet `subset_train_idxs`): "hardest" keeps the highest scores (the paper's
    keep_max_scores: prune the easy examples), "easiest" the lowest, "random" a uniformly random
    subset drawn with `key`, and "offset" the highest scores after skipping the `offset` highest
    (a sliding window for noisy labels; data_diet's `offset` argument is N - n_keep - this one).
    Ties are broken by the lower index, so the result is deterministic.

    class_balanced=True keeps each class's share of the dataset: class c (n_c examples) gets
    n_keep * n_c / N slots (largest-remainder rounding, so the total is exact) filled by the same
    rule within the class; with "offset", each class skips its proportional share of `offset`.

    Args:
      scores: [N] scores. keep_fraction: in (0, 1], a static float.
      strategy: one of PRUNE_STRATEGIES.
      offset: number of highest scores skipped by "offset".
      key: PRNG key for "random".
      labels: [N] integers in [0, num_classes), needed for class_balanced.
      num_classes: the number of classes, a static int, needed for class_balanced.
      class_balanced: keep class proportions.
    Returns:
      [n_keep] int32 indices into `scores`, ascending.

    Value check (no NaN score) under `scorejax.checked`; unchecked, NaN ranks above every score.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> scores = jnp.asarray([0.1, 0.9, 0.5, 0.7, 0.3])
      >>> print(prune(scores, keep_fraction=0.4),
      ...       prune(scores, keep_fraction=0.4, strategy="easiest"))
      [1 3] [0 4]
      >>> print(prune(scores, keep_fraction=0.4, strategy="offset", offset=1))
      [2 3]
      >>> labels = jnp.asarray([0, 0, 0, 1, 1])
      >>> print(prune(scores, keep_fraction=0.4, labels=labels, num_classes=2, class_balanced=True))
      [1 3]
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be [N], got shape {scores.shape}")
    if strategy not in PRUNE_STRATEGIES:
        raise ValueError(f"strategy must be one of {PRUNE_STRATEGIES}, got {strategy!r}")
    n = scores.shape[0]
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    n_keep = max(1, int(math.floor(keep_fraction * n + 0.5)))
    skip = offset if strategy == "offset" else 0
    if skip < 0 or skip + n_keep > n:
        raise ValueError(f"offset {offset} + kept {n_keep} exceeds the {n} examples")
    checkify.debug_check(~jnp.any(jnp.isnan(scores)), "scores contain NaN")
    if strategy == "random":
        if key is None:
            raise ValueError("strategy='random' needs a PRNG key")
        priority = jax.random.uniform(key, (n,))
    elif strategy == "easiest":
        priority = -scores
    else:
        priority = scores
    # Rank by priority, highest first; ties go to the lower index (stable sort).
    order = jnp.argsort(-priority, stable=True)
    if class_balanced:
        if labels is None or labels.shape != (n,):
            raise ValueError("class_balanced needs labels of shape [N]")
        if num_classes is None:
            raise ValueError("class_balanced needs num_classes (a static int)")
        k = num_classes
        sizes = jnp.zeros(k, jnp.int32).at[labels].add(1)
        quota = _allocate(n_keep, sizes)
        skips = jnp.minimum(_allocate(skip, sizes), sizes - quota)
        sorted_labels = labels[order]
        onehot = jax.nn.one_hot(sorted_labels, k, dtype=jnp.int32)
        rank_in_class = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=1)
        lo, hi = skips[sorted_labels], (skips + quota)[sorted_labels]
        keep_sorted = (rank_in_class >= lo) & (rank_in_class < hi)
    else:
        pos = jnp.arange(n)
        keep_sorted = (pos >= skip) & (pos < skip + n_keep)
    keep = jnp.zeros(n, bool).at[order].set(keep_sorted)
    return jnp.nonzero(keep, size=n_keep)[0].astype(jnp.int32)


class FlippedLabels(NamedTuple):
    """Labels after `flip_labels`, and which of them were changed."""

    labels: jnp.ndarray  # [N] noisy labels, the dtype of the input
    flipped: jnp.ndarray  # [N] bool, True where the label was moved to another class


def flip_labels(
    labels: jnp.ndarray, key: jax.Array, *, fraction: float, num_classes: int
) -> FlippedLabels:
    """Label noise: exactly round(fraction * N) labels, chosen uniformly, moved to another class.

    Each chosen label y becomes (y + u) mod K with u uniform in {1, ..., K-1}, so every chosen
    label really changes (unlike data_diet's permutation among the chosen examples).

    Args:
      labels: [N] integer labels in [0, num_classes).
      key: PRNG key.
      fraction: the fraction of labels to change, a static float in [0, 1].
      num_classes: K >= 2, a static int.

    Returns:
      `FlippedLabels(labels, flipped)`: noisy labels [N] and the flipped mask [N] bool.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> labels = jnp.zeros(10, jnp.int32)
      >>> noisy = flip_labels(labels, jax.random.key(0), fraction=0.3, num_classes=3)
      >>> print(int(noisy.flipped.sum()), bool(jnp.all((noisy.labels != 0) == noisy.flipped)))
      3 True
    """
    n = labels.shape[0]
    n_flip = int(math.floor(fraction * n + 0.5))
    k_choose, k_shift = jax.random.split(key)
    flipped = jnp.zeros(n, bool).at[jax.random.permutation(k_choose, n)[:n_flip]].set(True)
    shift = jax.random.randint(k_shift, (n,), 1, num_classes)
    noisy = jnp.where(flipped, (labels + shift) % num_classes, labels).astype(labels.dtype)
    return FlippedLabels(noisy, flipped)
