"""Tests for scorejax.importance and the classifiers it is used with."""

from __future__ import annotations

import functools

import flax.linen as nn
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


def _loop_grand(model, params, x, y, mask=None, state=None, kwargs=None):
    """Oracle: a Python loop of jax.grad, one example at a time, norm over the masked leaves."""
    state, kwargs = state or {}, kwargs or {}

    def loss(p, xi, yi):
        logits = model.apply({"params": p, **state}, xi[None], **kwargs)
        return imp.cross_entropy(logits, yi[None])[0]

    grad = jax.jit(jax.grad(loss))
    out = []
    for i in range(x.shape[0]):
        g = grad(params, x[i], y[i])
        if mask is not None:
            g = jax.tree.map(lambda a, m: a if m else jnp.zeros_like(a), g, mask)
        out.append(np.sqrt(sum(float(jnp.sum(a**2)) for a in jax.tree.leaves(g))))
    return np.array(out)


def _shapes(jaxpr) -> list[tuple[int, ...]]:
    """Shapes of every array produced in a jaxpr, sub-jaxprs (scan, map, pjit) included."""
    out = []
    for eqn in jaxpr.eqns:
        out += [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _shapes(inner)
    return out


def _holds_copies_of(shape: tuple[int, ...], k: tuple[int, ...]) -> bool:
    """Whether `shape` is kernel shape k with an example axis inserted or folded into one axis."""
    if len(shape) == len(k) + 1:
        return any(shape[i] > 1 and shape[:i] + shape[i + 1 :] == k for i in range(len(shape)))
    if len(shape) == len(k):
        diff = [i for i in range(len(k)) if shape[i] != k[i]]
        return len(diff) == 1 and shape[diff[0]] % k[diff[0]] == 0
    return False


def _per_example_kernel_grads(fn, params, *args) -> set[tuple[int, ...]]:
    """Kernel shapes of which fn's jaxpr holds several copies (per-example gradients).

    A kernel k of shape (..., p_in, d) counts as materialised per example when an array has
    shape k or (prod(k[:-1]), d) with an extra axis (the examples) inserted or folded in.
    """
    shapes = _shapes(jax.make_jaxpr(fn)(params, *args).jaxpr)
    found = set()
    for k in (tuple(a.shape) for a in jax.tree.leaves(params) if a.ndim >= 2):
        flat = (int(np.prod(k[:-1])), k[-1])
        if any(_holds_copies_of(s, k) or _holds_copies_of(s, flat) for s in shapes):
            found.add(k)
    return found


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


# ----------------------------------------------------------------------------- GraNd


def _mlp_case():
    model = MLPClassifier(10, features=(12, 9))
    x = _normal((7, 4, 4, 1))
    mask = {
        "Dense_0": {"kernel": False, "bias": True},
        "Dense_1": {"kernel": True, "bias": False},
        "Dense_2": {"kernel": True, "bias": True},
    }
    return model, x, mask


def _cnn_case():
    model = CNNClassifier(10, features=(3, 5), hidden=6)
    x = _normal((7, 6, 6, 2))
    mask = {
        "Conv_0": {"kernel": True, "bias": False},
        "Conv_1": {"kernel": False, "bias": True},
        "Dense_0": {"kernel": True, "bias": True},
        "Dense_1": {"kernel": False, "bias": False},
    }
    return model, x, mask


@pytest.mark.parametrize("case", [_mlp_case, _cnn_case], ids=["mlp", "cnn"])
def test_grand_methods_equal_per_example_loop(case):
    with jax.enable_x64(True):
        model, x, mask = case()
        x = _f64(x)
        params = _f64(_init(model, x)["params"])
        y = jnp.array([0, 3, 9, 1, 1, 4, 7])
        variants = {
            "ghost": (None, dict(method="ghost", chunk_size=3)),
            "ghost, mask": (mask, dict(method="ghost", chunk_size=None)),
            "ghost gram, mask": (mask, dict(method="ghost", chunk_size=4, rule="gram")),
            "vmap": (None, dict(method="vmap", chunk_size=None)),
            "vmap, mask": (mask, dict(method="vmap", chunk_size=3)),
        }

        @jax.jit
        def all_variants(p, x, y):
            return {k: imp.grand(model, p, x, y, mask=m, **kw) for k, (m, kw) in variants.items()}

        got = all_variants(params, x, y)
        full, masked = (_loop_grand(model, params, x, y, mask=m) for m in (None, mask))
        for name, (m, _) in variants.items():
            ref = full if m is None else masked
            np.testing.assert_allclose(got[name], ref, rtol=1e-10, err_msg=name)
        assert np.all(masked < full)


def test_grand_ghost_with_vmap_fallback_on_resnet_batchnorm():
    """BatchNorm scales/biases are not Dense/Conv: the ghost method differentiates them by vmap."""
    with jax.enable_x64(True):
        model = ResNet18(4, width=2, blocks=(1, 1))
        x = _normal((3, 4, 4, 3), dtype=np.float64)
        y = jnp.array([0, 3, 1])
        variables = _f64(_init(model, x, train=False))
        # Non-trivial running statistics, as after training.
        stats = jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])
        state, kwargs = {"batch_stats": stats}, {"train": False}
        ref = _loop_grand(model, variables["params"], x, y, state=state, kwargs=kwargs)

        @jax.jit
        def both(p, x, y):
            kw = dict(model_state=state, apply_kwargs=kwargs)
            return [imp.grand(model, p, x, y, method=m, **kw) for m in ("ghost", "vmap")]

        for got in both(variables["params"], x, y):
            np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_grand_ghost_never_builds_per_example_gradients():
    y = jnp.arange(6)
    for model, x in [
        (MLPClassifier(10, features=(48, 40)), _normal((6, 64))),
        (CNNClassifier(10, features=(8, 10), hidden=32), _normal((6, 8, 8, 1))),
    ]:
        params = jax.eval_shape(lambda m=model, x=x: m.init(KEY, x))["params"]
        kernels = {tuple(a.shape) for a in jax.tree.leaves(params) if a.ndim >= 2}
        vmapped = functools.partial(imp.grand, model, method="vmap", chunk_size=2)
        # The detector sees vmap's per-example gradients of every kernel...
        assert _per_example_kernel_grads(vmapped, params, x, y) == kernels
        # ...and none in the ghost norm.
        ghost = functools.partial(imp.grand, model, method="ghost", rule="gram")
        assert _per_example_kernel_grads(ghost, params, x, y) == set()
    # The mixed rule forms one layer's per-example gradient only where that costs less than the
    # Gram matrices, T (p + d) >= p d: both convs here (T=64, p=9, d=8; T=16, p=72, d=10), never
    # the dense layers (T=1).
    mixed = functools.partial(imp.grand, model, method="ghost", rule="mixed")
    assert _per_example_kernel_grads(mixed, params, x, y) == {(3, 3, 1, 8), (3, 3, 8, 10)}


def test_grand_last_layer_identity_and_jit_equals_eager():
    """GraNd over the last Dense (W, b) = EL2N * sqrt(||h||^2 + 1) (notes, section 1.2)."""
    model = MLPClassifier(10, features=(16,))
    x = _normal((5, 8))
    y = jnp.array([1, 2, 3, 4, 5])
    params = _init(model, x)["params"]
    mask = {"Dense_0": {"kernel": False, "bias": False}, "Dense_1": {"kernel": True, "bias": True}}
    logits, h = jax.jit(functools.partial(model.apply, return_features=True))({"params": params}, x)
    expected = imp.el2n(logits, y) * jnp.sqrt(jnp.sum(h**2, axis=1) + 1.0)
    eager = imp.grand(model, params, x, y, mask=mask)
    np.testing.assert_allclose(eager, expected, rtol=1e-5)
    jitted = jax.jit(functools.partial(imp.grand, model, mask=mask))(params, x, y)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_grand_rejects_bad_input():
    model, x, _ = _mlp_case()
    params = jax.eval_shape(lambda: model.init(KEY, x))["params"]
    y = jnp.zeros(7, jnp.int32)
    with pytest.raises(ValueError, match="method"):
        imp.grand(model, params, x, y, method="jacrev")
    with pytest.raises(ValueError, match="batch"):
        imp.grand(model, params, x, y[:3])
    with pytest.raises(ValueError, match="mask"):
        imp.grand(model, params, x, y, mask={"Dense_0": {"kernel": True}})
    with pytest.raises(ValueError, match="integer"):
        imp.grand(model, params, x, y.astype(jnp.float32))


def test_grand_labels_outside_the_classes_are_nan_and_rejected_when_checked():
    model, x, _ = _mlp_case()
    params = _init(model, x)["params"]
    y = jnp.asarray([0, 10, 2, -1, 4, 5, 9])  # 10 classes
    score = jax.jit(functools.partial(imp.grand, model, method="vmap"))
    out = np.asarray(score(params, x, y))
    np.testing.assert_array_equal(np.isnan(out), [False, True, False, True, False, False, False])
    with pytest.raises(scorejax.CheckError, match=r"labels must be class indices in \[0, 10\)"):
        scorejax.checked(score)(params, x, y)
    with pytest.raises(jax.errors.JaxRuntimeError, match="labels must be class indices"):
        jax.block_until_ready(jax.jit(scorejax.checked(score))(params, x, y))


def test_grand_shared_layer_falls_back_to_vmap():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            dense = nn.Dense(x.shape[-1])
            return nn.Dense(3)(dense(jnp.tanh(dense(x))))

    with jax.enable_x64(True):
        model = Shared()
        x = _normal((4, 5), dtype=np.float64)
        y = jnp.array([0, 1, 2, 0])
        params = _f64(_init(model, x)["params"])
        ref = _loop_grand(model, params, x, y)
        got = jax.jit(functools.partial(imp.grand, model))(params, x, y)
        np.testing.assert_allclose(got, ref, rtol=1e-10)


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


# ----------------------------------------------------------------------------- training-time scores


def test_vog_equals_numpy_reference():
    rng = np.random.default_rng(2)
    grads = rng.normal(size=(4, 6, 3, 3, 2))  # K checkpoints, B examples, H, W, C
    labels = np.array([0, 1, 0, 1, 1, 2])
    per_pixel = np.sqrt(((grads - grads.mean(0)) ** 2).mean(0))  # population std over K
    raw = per_pixel.reshape(6, -1).mean(1)
    np.testing.assert_allclose(imp.vog(grads, labels, normalize=None), raw, rtol=1e-5)
    classed = raw.copy()
    for c in range(3):
        sel = labels == c
        classed[sel] = (raw[sel] - raw[sel].mean()) / raw[sel].std()
    # Class 2 has one example: its z-score is 0 (the official numpy code divides 0 by 0: NaN).
    classed[5] = 0.0
    np.testing.assert_allclose(imp.vog(grads, labels), classed, atol=1e-5)
    np.testing.assert_allclose(
        imp.vog(grads, labels, normalize="dataset"), (raw - raw.mean()) / raw.std(), atol=1e-5
    )
    var = ((grads - grads.mean(0)) ** 2).mean(0).reshape(6, -1).mean(1)
    np.testing.assert_allclose(imp.vog(grads, labels, normalize=None, statistic="var"), var, 1e-5)
    chan = grads.mean(-1)
    chan_raw = np.sqrt(((chan - chan.mean(0)) ** 2).mean(0)).reshape(6, -1).mean(1)
    np.testing.assert_allclose(
        imp.vog(grads, labels, normalize=None, channel_axis=-1), chan_raw, rtol=1e-5
    )
    jitted = jax.jit(functools.partial(imp.vog, num_classes=3))(grads, labels)
    np.testing.assert_allclose(jitted, classed, atol=1e-5)


def test_vog_z_score_is_zero_where_the_std_is_zero():
    grads = np.random.default_rng(3).normal(size=(3, 4, 5))
    # A one-example class (label 2), and a dataset whose scores are all equal (one example).
    np.testing.assert_array_equal(imp.vog(grads, np.array([0, 1, 1, 2]))[3], 0.0)
    np.testing.assert_array_equal(imp.vog(grads[:, :1], np.array([0]), normalize="dataset"), [0])
    state = imp.VoGState.create((4, 5))
    for g in grads:
        state = state.update(jnp.asarray(g, jnp.float32))
    z = np.asarray(state.score(jnp.asarray([0, 1, 1, 2])))
    assert np.isfinite(z).all() and z[3] == 0.0


def test_logit_input_grads_of_a_linear_model():
    w = _normal((5, 4))
    apply_fn = lambda p, x: x @ p
    x = _normal((3, 5), seed=1)
    labels = jnp.array([2, 0, 3])
    np.testing.assert_allclose(imp.logit_input_grads(apply_fn, w, x, labels), w[:, labels].T)


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
    got = imp.forgetting_events(history)
    np.testing.assert_array_equal(got, [2, np.inf, 1, 1, 0])
    np.testing.assert_array_equal(imp.forgetting_events(history, never_learned=4.0)[1], 4.0)
    # Only presented steps count: hiding row 1 for example 0 leaves 1 -> 1 -> 0: one event.
    presented = np.ones_like(history)
    presented[1, 0] = False
    np.testing.assert_array_equal(imp.forgetting_events(history, presented=presented)[0], 1)
    # The minibatch form with padding (valid=False rows repeat ids) gives the same counts.
    state = imp.forgetting_init(5)
    for row in history:
        ids = jnp.array([4, 3, 2, 1, 0, 0, 3])
        correct = jnp.asarray(np.concatenate([row[::-1], [False, False]]))
        valid = jnp.array([True] * 5 + [False] * 2)
        state = imp.forgetting_update(state, ids, correct, valid)
    np.testing.assert_array_equal(imp.forgetting_scores(state), [2, np.inf, 1, 1, 0])


def test_area_under_margin_and_cartography_by_hand():
    logits = np.array(
        [
            [[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]],
            [[0.0, 1.0, 0.5], [1.0, 1.0, 4.0]],
        ]
    )  # [T=2, B=2, K=3]
    labels = np.array([0, 1])
    # ex0 margins: 2-1=1, 0-1=-1 -> 0; ex1: 3-1=2, 1-4=-3 -> -0.5
    np.testing.assert_allclose(imp.area_under_margin(logits, labels), [0.0, -0.5])
    p = softmax(logits, -1)[:, np.arange(2), labels]
    carto = imp.cartography(logits, labels)
    np.testing.assert_allclose(carto.confidence, p.mean(0), rtol=1e-6)
    np.testing.assert_allclose(carto.variability, p.std(0), rtol=1e-5)
    np.testing.assert_allclose(carto.correctness, [0.5, 0.5])


def test_streaming_vog_and_dynamics_equal_the_batch_forms():
    rng = np.random.default_rng(6)
    grads = jnp.asarray(rng.normal(size=(5, 8, 4, 4, 3)) + 3.0, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, size=8))
    state = imp.VoGState.create((8, 4, 4))
    for g in grads:
        state = state.update(g, channel_axis=-1)
    for kw in [dict(normalize=None), dict(normalize="class"), dict(statistic="var")]:
        np.testing.assert_allclose(
            state.score(labels, **kw), imp.vog(grads, labels, channel_axis=-1, **kw), atol=1e-5
        )
    logits = jnp.asarray(rng.normal(size=(6, 8, 5)) * 2, jnp.float32)
    dyn = imp.DynamicsState.create(8)
    for z in logits:
        dyn = dyn.update(z, labels)
    np.testing.assert_allclose(dyn.aum(), imp.area_under_margin(logits, labels), rtol=1e-5)
    for got, want in zip(dyn.cartography(), imp.cartography(logits, labels), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_flip_labels_changes_exactly_the_requested_count():
    labels = jnp.asarray(np.repeat(np.arange(10), 20))
    noisy, flipped = imp.flip_labels(KEY, labels, 0.1, 10)
    assert int(flipped.sum()) == 20
    np.testing.assert_array_equal(np.asarray(noisy != labels), np.asarray(flipped))
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9


def test_mean_over_models_is_one_vmapped_call_of_the_mean():
    model = MLPClassifier(4, features=(8,))
    x = _normal((5, 3))
    y = jnp.array([0, 1, 2, 3, 0])
    keys = jax.random.split(KEY, 3)
    stacked = jax.jit(jax.vmap(lambda k: model.init(k, x)["params"]))(keys)
    score = lambda p, x, y: imp.grand(model, p, x, y)
    one = jax.jit(score)
    separate = [one(jax.tree.map(lambda a, i=i: a[i], stacked), x, y) for i in range(3)]
    got = jax.jit(lambda s: imp.mean_over_models(score, s, x, y))(stacked)
    np.testing.assert_allclose(got, np.mean(separate, axis=0), rtol=1e-5)


# ----------------------------------------------------------------------------- ids and sharding


def test_scores_by_id_undoes_any_shuffle():
    scores = jnp.arange(10.0) * 1.5
    perm = np.random.default_rng(3).permutation(10)
    np.testing.assert_array_equal(imp.scores_by_id(jnp.asarray(perm), scores[perm], 10), scores)
    partial = imp.scores_by_id(jnp.array([3, 1]), jnp.array([7.0, 8.0]), 4)
    np.testing.assert_array_equal(np.isnan(partial), [True, False, True, False])
    with pytest.raises(ValueError, match="duplicates"):
        imp.scores_by_id(jnp.array([1, 1]), jnp.array([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="ids must lie"):
        imp.scores_by_id(jnp.array([5]), jnp.array([1.0]), 3)


def test_sharded_scores_equal_one_device_and_ids_survive_shuffling(run_python):
    out = run_python(
        """
        import functools, jax, jax.numpy as jnp, numpy as np
        from scorejax import importance as imp
        from scorejax.models.classifier import CNNClassifier
        from scorejax.train import make_mesh
        assert jax.device_count() == 8
        model = CNNClassifier(10, features=(4, 8), hidden=8)
        key = jax.random.key(0)
        x = jax.random.normal(key, (32, 8, 8, 1))
        y = jax.random.randint(key, (32,), 0, 10)
        params = model.init(key, x)["params"]
        mesh = make_mesh()
        def scores(p, x, y):
            logits = model.apply({"params": p}, x)
            return jnp.stack([
                imp.el2n(logits, y),
                imp.grand(model, p, x, y, method="ghost", chunk_size=2),
                imp.grand(model, p, x, y, method="vmap", chunk_size=3),
            ], axis=-1)
        one = np.asarray(jax.jit(scores)(params, x, y))
        # Score a shuffled copy sharded over 8 devices, then map back by example id.
        perm = np.random.default_rng(0).permutation(32)
        ids = jnp.asarray(perm)
        sharded = imp.data_parallel(scores, mesh)(params, x[perm], y[perm])
        assert len(sharded.sharding.device_set) == 8
        back = np.asarray(imp.scores_by_id(ids, sharded, 32))
        np.testing.assert_allclose(back, one, rtol=2e-5)
        print("ok", float(np.abs(back - one).max()))
        """
    )
    assert out.startswith("ok")


# ----------------------------------------------------------------------------- pruning


def test_prune_counts_order_and_determinism():
    rng = np.random.default_rng(4)
    scores = jnp.asarray(rng.normal(size=50))
    desc = np.argsort(-np.asarray(scores), kind="stable")
    for frac in (0.1, 0.33, 0.5, 0.999, 1.0):
        n_keep = int(np.floor(frac * 50 + 0.5))
        hard = np.asarray(imp.prune(scores, frac, "hardest"))
        assert hard.shape == (n_keep,) and np.all(np.diff(hard) > 0)
        np.testing.assert_array_equal(hard, np.sort(desc[:n_keep]))
        np.testing.assert_array_equal(
            imp.prune(scores, frac, "easiest"), np.sort(desc[::-1][:n_keep])
        )
    window = imp.prune(scores, 0.2, "offset", offset=7)
    np.testing.assert_array_equal(window, np.sort(desc[7:17]))
    r1 = imp.prune(scores, 0.3, "random", key=jax.random.key(5))
    r2 = imp.prune(scores, 0.3, "random", key=jax.random.key(5))
    r3 = imp.prune(scores, 0.3, "random", key=jax.random.key(6))
    np.testing.assert_array_equal(r1, r2)
    assert r1.shape == (15,) and len(set(np.asarray(r1))) == 15
    assert not np.array_equal(r1, r3)
    # Ties go to the lower index.
    np.testing.assert_array_equal(imp.prune(jnp.zeros(6), 0.5, "hardest"), [0, 1, 2])
    jitted = jax.jit(lambda s: imp.prune(s, 0.3, "offset", offset=4))(scores)
    np.testing.assert_array_equal(jitted, imp.prune(scores, 0.3, "offset", offset=4))
    with pytest.raises(ValueError, match="key"):
        imp.prune(scores, 0.5, "random")
    with pytest.raises(ValueError, match="offset"):
        imp.prune(scores, 0.9, "offset", offset=10)
    with pytest.raises(ValueError, match="NaN"):
        imp.prune(scores.at[0].set(jnp.nan), 0.5)


def test_prune_class_balanced_keeps_class_shares():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), [10, 20, 30, 41])  # N = 101
    scores = jnp.asarray(labels * 10.0 + rng.uniform(size=101))  # hardest = class 3 only
    unbalanced = np.asarray(imp.prune(scores, 0.3, "hardest"))
    assert set(labels[unbalanced]) == {3}
    for strategy, kw in [("hardest", {}), ("random", {"key": KEY}), ("offset", {"offset": 20})]:
        kept = np.asarray(
            imp.prune(scores, 0.3, strategy, labels=jnp.asarray(labels), class_balanced=True, **kw)
        )
        counts = np.bincount(labels[kept], minlength=4)
        assert counts.sum() == 30
        exact = 30 * np.bincount(labels) / 101
        assert np.all(np.abs(counts - exact) < 1.0), counts
    # Within a class, "hardest" keeps that class's highest scores.
    kept = np.asarray(imp.prune(scores, 0.3, labels=jnp.asarray(labels), class_balanced=True))
    for c in range(4):
        members = np.flatnonzero(labels == c)
        top = members[np.argsort(-np.asarray(scores)[members], kind="stable")]
        np.testing.assert_array_equal(
            np.sort(kept[labels[kept] == c]), np.sort(top[: (labels[kept] == c).sum()])
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
