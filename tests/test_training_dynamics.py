"""Tests for scorejax.vog and scorejax.training_dynamics: VoG, forgetting, AUM, cartography."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from scorejax import training_dynamics as td
from scorejax import vog as vg


def test_vog_equals_numpy_reference():
    rng = np.random.default_rng(2)
    grads = rng.normal(size=(4, 6, 3, 3, 2))  # K checkpoints, B examples, H, W, C
    labels = np.array([0, 1, 0, 1, 1, 2])
    per_pixel = np.sqrt(((grads - grads.mean(0)) ** 2).mean(0))  # population std over K
    raw = per_pixel.reshape(6, -1).mean(1)
    np.testing.assert_allclose(vg.vog(grads, labels, normalize=None), raw, rtol=1e-5)
    classed = raw.copy()
    for c in range(3):
        sel = labels == c
        classed[sel] = (raw[sel] - raw[sel].mean()) / raw[sel].std()
    # Class 2 has one example: its z-score is 0 (the official numpy code divides 0 by 0: NaN).
    classed[5] = 0.0
    np.testing.assert_allclose(vg.vog(grads, labels, num_classes=3), classed, atol=1e-5)
    np.testing.assert_allclose(
        vg.vog(grads, labels, normalize="dataset"), (raw - raw.mean()) / raw.std(), atol=1e-5
    )
    var = ((grads - grads.mean(0)) ** 2).mean(0).reshape(6, -1).mean(1)
    np.testing.assert_allclose(vg.vog(grads, labels, normalize=None, statistic="var"), var, 1e-5)
    chan = grads.mean(-1)
    chan_raw = np.sqrt(((chan - chan.mean(0)) ** 2).mean(0)).reshape(6, -1).mean(1)
    np.testing.assert_allclose(
        vg.vog(grads, labels, normalize=None, channel_axis=-1), chan_raw, rtol=1e-5
    )
    jitted = jax.jit(functools.partial(vg.vog, num_classes=3))(grads, labels)
    np.testing.assert_allclose(jitted, classed, atol=1e-5)
    with pytest.raises(ValueError, match="num_classes"):
        vg.vog(grads, labels)


def test_vog_z_score_is_zero_where_the_std_is_zero():
    grads = np.random.default_rng(3).normal(size=(3, 4, 5))
    # A one-example class (label 2), and a dataset whose scores are all equal (one example).
    np.testing.assert_array_equal(vg.vog(grads, np.array([0, 1, 1, 2]), num_classes=3)[3], 0.0)
    np.testing.assert_array_equal(vg.vog(grads[:, :1], np.array([0]), normalize="dataset"), [0])
    state = vg.VoGState.create((4, 5))
    for g in grads:
        state = state.update(jnp.asarray(g, jnp.float32))
    z = np.asarray(state.score(jnp.asarray([0, 1, 1, 2]), num_classes=3))
    assert np.isfinite(z).all() and z[3] == 0.0


def test_forgetting_events_by_hand():
    # Rows are presentations; columns examples.
    history = np.array(
        [
            [1, 0, 1, 0, 1],
            [0, 0, 1, 1, 1],
            [1, 0, 0, 0, 1],
            [0, 0, 1, 1, 1],
        ],
        bool,
    )
    # ex0: 1->0 twice; ex1 never learned; ex2: one; ex3: one (1->0 at row 2); ex4: none.
    got = td.forgetting_events(history)
    np.testing.assert_array_equal(got, [2, np.inf, 1, 1, 0])
    np.testing.assert_array_equal(td.forgetting_events(history, never_learned=4.0)[1], 4.0)
    # Only presented steps count: hiding row 1 for example 0 leaves 1 -> 1 -> 0: one event.
    presented = np.ones_like(history)
    presented[1, 0] = False
    np.testing.assert_array_equal(td.forgetting_events(history, presented=presented)[0], 1)
    # The minibatch form with padding (valid=False rows repeat ids) gives the same counts.
    state = td.forgetting_init(5)
    for row in history:
        ids = jnp.array([4, 3, 2, 1, 0, 0, 3])
        correct = jnp.asarray(np.concatenate([row[::-1], [False, False]]))
        valid = jnp.array([True] * 5 + [False] * 2)
        state = td.forgetting_update(state, ids, correct, valid)
    np.testing.assert_array_equal(td.forgetting_scores(state), [2, np.inf, 1, 1, 0])


def test_area_under_margin_and_cartography_by_hand():
    logits = np.array(
        [
            [[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]],
            [[0.0, 1.0, 0.5], [1.0, 1.0, 4.0]],
        ]
    )  # [T=2, B=2, K=3]
    labels = np.array([0, 1])
    # ex0 margins: 2-1=1, 0-1=-1 -> 0; ex1: 3-1=2, 1-4=-3 -> -0.5
    np.testing.assert_allclose(td.area_under_margin(logits, labels), [0.0, -0.5])
    p = softmax(logits, -1)[:, np.arange(2), labels]
    carto = td.cartography(logits, labels)
    np.testing.assert_allclose(carto.confidence, p.mean(0), rtol=1e-6)
    np.testing.assert_allclose(carto.variability, p.std(0), rtol=1e-5)
    np.testing.assert_allclose(carto.correctness, [0.5, 0.5])


def test_streaming_vog_and_dynamics_equal_the_batch_forms():
    rng = np.random.default_rng(6)
    grads = jnp.asarray(rng.normal(size=(5, 8, 4, 4, 3)) + 3.0, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, size=8))
    state = vg.VoGState.create((8, 4, 4))
    for g in grads:
        state = state.update(g, channel_axis=-1)
    for kw in [dict(normalize=None), dict(num_classes=2), dict(statistic="var", num_classes=2)]:
        np.testing.assert_allclose(
            state.score(labels, **kw), vg.vog(grads, labels, channel_axis=-1, **kw), atol=1e-5
        )
    logits = jnp.asarray(rng.normal(size=(6, 8, 5)) * 2, jnp.float32)
    dyn = td.DynamicsState.create(8)
    for z in logits:
        dyn = dyn.update(z, labels)
    np.testing.assert_allclose(dyn.aum(), td.area_under_margin(logits, labels), rtol=1e-5)
    for got, want in zip(dyn.cartography(), td.cartography(logits, labels), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
