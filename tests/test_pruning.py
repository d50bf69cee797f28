"""Tests for scorejax.pruning: selection rules and label noise."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorejax
from scorejax import pruning as pr

KEY = jax.random.key(0)


def test_prune_counts_order_and_determinism():
    rng = np.random.default_rng(4)
    scores = jnp.asarray(rng.normal(size=50))
    desc = np.argsort(-np.asarray(scores), kind="stable")
    for frac in (0.1, 0.33, 0.5, 0.999, 1.0):
        n_keep = int(np.floor(frac * 50 + 0.5))
        hard = np.asarray(pr.prune(scores, keep_fraction=frac, strategy="hardest"))
        assert hard.shape == (n_keep,) and np.all(np.diff(hard) > 0)
        np.testing.assert_array_equal(hard, np.sort(desc[:n_keep]))
        np.testing.assert_array_equal(
            pr.prune(scores, keep_fraction=frac, strategy="easiest"), np.sort(desc[::-1][:n_keep])
        )
    window = pr.prune(scores, keep_fraction=0.2, strategy="offset", offset=7)
    np.testing.assert_array_equal(window, np.sort(desc[7:17]))
    r1 = pr.prune(scores, keep_fraction=0.3, strategy="random", key=jax.random.key(5))
    r2 = pr.prune(scores, keep_fraction=0.3, strategy="random", key=jax.random.key(5))
    r3 = pr.prune(scores, keep_fraction=0.3, strategy="random", key=jax.random.key(6))
    np.testing.assert_array_equal(r1, r2)
    assert r1.shape == (15,) and len(set(np.asarray(r1))) == 15
    assert not np.array_equal(r1, r3)
    # Ties go to the lower index.
    np.testing.assert_array_equal(pr.prune(jnp.zeros(6), keep_fraction=0.5), [0, 1, 2])
    window_of = functools.partial(pr.prune, keep_fraction=0.3, strategy="offset", offset=4)
    np.testing.assert_array_equal(jax.jit(window_of)(scores), window_of(scores))
    with pytest.raises(ValueError, match="key"):
        pr.prune(scores, keep_fraction=0.5, strategy="random")
    with pytest.raises(ValueError, match="offset"):
        pr.prune(scores, keep_fraction=0.9, strategy="offset", offset=10)
    with pytest.raises(ValueError, match="NaN"):
        scorejax.checked(lambda s: pr.prune(s, keep_fraction=0.5))(scores.at[0].set(jnp.nan))
    with pytest.raises(ValueError, match="num_classes"):
        pr.prune(scores, keep_fraction=0.5, labels=jnp.zeros(50, jnp.int32), class_balanced=True)


def test_prune_class_balanced_keeps_class_shares():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), [10, 20, 30, 41])  # N = 101
    scores = jnp.asarray(labels * 10.0 + rng.uniform(size=101))  # hardest = class 3 only
    unbalanced = np.asarray(pr.prune(scores, keep_fraction=0.3, strategy="hardest"))
    assert set(labels[unbalanced]) == {3}
    for strategy, kw in [("hardest", {}), ("random", {"key": KEY}), ("offset", {"offset": 20})]:
        kept = np.asarray(
            pr.prune(scores, keep_fraction=0.3, strategy=strategy, labels=jnp.asarray(labels),
                     num_classes=4, class_balanced=True, **kw)
        )
        counts = np.bincount(labels[kept], minlength=4)
        assert counts.sum() == 30
        exact = 30 * np.bincount(labels) / 101
        assert np.all(np.abs(counts - exact) < 1.0), counts
    # Within a class, "hardest" keeps that class's highest scores.
    kept = np.asarray(pr.prune(scores, keep_fraction=0.3, labels=jnp.asarray(labels), num_classes=4,
                              class_balanced=True))
    for c in range(4):
        members = np.flatnonzero(labels == c)
        top = members[np.argsort(-np.asarray(scores)[members], kind="stable")]
        np.testing.assert_array_equal(
            np.sort(kept[labels[kept] == c]), np.sort(top[: (labels[kept] == c).sum()])
        )


def test_flip_labels_changes_exactly_the_requested_count():
    labels = jnp.asarray(np.repeat(np.arange(10), 20))
    noisy, flipped = pr.flip_labels(labels, KEY, fraction=0.1, num_classes=10)
    assert int(flipped.sum()) == 20
    np.testing.assert_array_equal(np.asarray(noisy != labels), np.asarray(flipped))
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9
