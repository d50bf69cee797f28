"""Tests for scorejax.importance and the classifiers it is used with."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

import scorejax
from scorejax import importance as imp
from scorejax.models.classifier import CNNClassifier, MLPClassifier
from scorejax.models.resnet import ResNet18

KEY = jax.random.key(0)


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _normal(shape, seed=0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


def _init(model, x, **kwargs):
    """Variables from one jitted init (eager init compiles every op separately)."""
    return jax.jit(functools.partial(model.init, **kwargs))(KEY, x)


# ----------------------------------------------------------------------------- forward scores


def test_el2n_cross_entropy_margin_equal_their_formulas():
    logits = np.random.default_rng(0).normal(size=(7, 5)) * 3
    labels = np.array([0, 1, 2, 3, 4, 0, 2])
    p = softmax(logits, axis=-1)
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(imp.el2n(logits, labels), np.linalg.norm(p - onehot, axis=1), 1e-5)
    np.testing.assert_allclose(
        imp.cross_entropy(logits, labels), -np.log(p[np.arange(7), labels]), rtol=1e-5
    )
    others = np.where(onehot > 0, -np.inf, logits).max(1)
    np.testing.assert_allclose(
        imp.margin(logits, labels), logits[np.arange(7), labels] - others, rtol=1e-5
    )
    # EL2N is the norm of the cross-entropy gradient w.r.t. the logits.
    g = jax.vmap(jax.grad(lambda z, y: imp.cross_entropy(z[None], y[None])[0]))(
        jnp.asarray(logits, jnp.float32), labels
    )
    np.testing.assert_allclose(imp.el2n(logits, labels), np.linalg.norm(g, axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="integer"):
        imp.el2n(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        imp.el2n(logits, labels[:3])


LABEL_SCORES = {"el2n": imp.el2n, "margin": imp.margin, "cross_entropy": imp.cross_entropy}


@pytest.mark.parametrize("name", list(LABEL_SCORES))
def test_labels_outside_the_classes_are_nan_and_rejected_when_checked(name):
    score = LABEL_SCORES[name]
    logits = jnp.asarray([[1.0, 2.0, 3.0]] * 3)
    bad = jnp.asarray([0, 3, -1])
    # Unchecked (no host copy): NaN for the bad rows, eagerly and under jit alike.
    for run in (lambda f: f, jax.jit):
        out = np.asarray(run(score)(logits, bad))
        assert np.isfinite(out[0]) and np.isnan(out[1:]).all()
    for fn in (scorejax.checked(score), scorejax.checked(jax.jit(score))):
        with pytest.raises(scorejax.CheckError, match=r"labels must be class indices in \[0, 3\)"):
            fn(logits, bad)
    with pytest.raises(jax.errors.JaxRuntimeError, match="labels must be class indices"):
        jax.block_until_ready(jax.jit(scorejax.checked(score))(logits, bad))
    ok = jnp.asarray([0, 2, 1])
    np.testing.assert_array_equal(jax.jit(scorejax.checked(score))(logits, ok), score(logits, ok))


# -------------------------------------------------------- per-example gradients


def test_per_example_grad_norms_closed_form_with_chunk_padding():
    """Squared error of a linear model: grad_w = (w.x - t) x, so the norm is |w.x - t| ||x||."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=3), jnp.float32)
    batch = {"x": jnp.asarray(rng.normal(size=(10, 3)), jnp.float32), "t": jnp.arange(10.0)}
    loss = lambda p, ex: 0.5 * (jnp.dot(p, ex["x"]) - ex["t"]) ** 2
    expected = jnp.abs(batch["x"] @ w - batch["t"]) * jnp.linalg.norm(batch["x"], axis=1)
    for chunk in (None, 3, 4, 10, 64):
        got = imp.per_example_grad_norms(loss, w, batch, chunk_size=chunk)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_grand_of_a_softmax_regression_in_closed_form():
    """z = W^T x + b: grad_W l = x (p - e_y)^T, grad_b l = p - e_y, GraNd = EL2N sqrt(|x|^2 + 1)."""
    params = {"w": _normal((6, 4), seed=2), "b": _normal((4,), seed=3)}
    apply_fn = lambda p, x: x @ p["w"] + p["b"]
    x = _normal((9, 6), seed=4)
    y = jnp.asarray([0, 1, 2, 3, 0, 1, 2, 3, 0])
    e2 = imp.el2n(apply_fn(params, x), y)
    x_sq = jnp.sum(x**2, axis=1)
    for chunk in (None, 4):
        got = imp.grand(apply_fn, params, x, y, chunk_size=chunk)
        np.testing.assert_allclose(got, e2 * jnp.sqrt(x_sq + 1.0), rtol=1e-5)
    only_w = jax.jit(functools.partial(imp.grand, apply_fn, mask={"w": True, "b": False}))
    np.testing.assert_allclose(only_w(params, x, y), e2 * jnp.sqrt(x_sq), rtol=1e-5)
    bad = y.at[2].set(4)
    np.testing.assert_array_equal(np.isnan(imp.grand(apply_fn, params, x, bad)), np.arange(9) == 2)
    with pytest.raises(ValueError, match="mask"):
        imp.grand(apply_fn, params, x, y, mask={"w": True})
    with pytest.raises(ValueError, match="batch"):
        imp.grand(apply_fn, params, x, y[:3])


def test_logit_input_grads_of_a_linear_model():
    w = _normal((5, 4))
    apply_fn = lambda p, x: x @ p
    x = _normal((3, 5), seed=1)
    labels = jnp.array([2, 0, 3])
    np.testing.assert_allclose(imp.logit_input_grads(apply_fn, w, x, labels), w[:, labels].T)


def test_mean_over_models_is_one_vmapped_call_of_the_mean():
    model = MLPClassifier(4, features=(8,))
    x = _normal((5, 3))
    y = jnp.array([0, 1, 2, 3, 0])
    keys = jax.random.split(KEY, 3)
    stacked = jax.jit(jax.vmap(lambda k: model.init(k, x)["params"]))(keys)
    score = lambda p, x, y: imp.grand(lambda q, xb: model.apply({"params": q}, xb), p, x, y)
    one = jax.jit(score)
    separate = [one(jax.tree.map(lambda a, i=i: a[i], stacked), x, y) for i in range(3)]
    got = jax.jit(lambda s: imp.mean_over_models(score, s, x, y))(stacked)
    np.testing.assert_allclose(got, np.mean(separate, axis=0), rtol=1e-5)


# -------------------------------------------------------------------------- ids


def test_scores_by_id_undoes_any_shuffle():
    scores = jnp.arange(10.0) * 1.5
    perm = np.random.default_rng(3).permutation(10)
    np.testing.assert_array_equal(imp.scores_by_id(jnp.asarray(perm), scores[perm], 10), scores)
    partial = imp.scores_by_id(jnp.array([3, 1]), jnp.array([7.0, 8.0]), 4)
    np.testing.assert_array_equal(np.isnan(partial), [True, False, True, False])
    checked = scorejax.checked(imp.scores_by_id)
    with pytest.raises(ValueError, match="duplicates"):
        checked(jnp.array([1, 1]), jnp.array([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="ids must lie"):
        scorejax.checked(jax.jit(imp.scores_by_id, static_argnums=2))(
            jnp.array([5]), jnp.array([1.0]), 3
        )


# ----------------------------------------------------------------------------- models


def test_classifier_shapes_and_parameter_counts():
    x = jnp.zeros((2, 8, 8, 1))
    for model, n_params, feat in [
        (CNNClassifier(10), 38_282, 64),
        (MLPClassifier(10), 26_122, 128),
    ]:
        variables = _init(model, x)
        assert sum(a.size for a in jax.tree.leaves(variables)) == n_params
        logits, features = jax.jit(functools.partial(model.apply, return_features=True))(
            variables, x
        )
        assert logits.shape == (2, 10) and features.shape == (2, feat)
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: CNNClassifier(10).init(KEY, jnp.zeros((2, 8, 8))))
    resnet = jax.eval_shape(lambda: ResNet18(10).init(KEY, jnp.zeros((1, 32, 32, 3)), train=False))
    assert sum(a.size for a in jax.tree.leaves(resnet["params"])) == 11_173_962
