"""Tests for scorejax.ghost_norm: GraNd of flax modules by the ghost norm and by vmap."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorejax
from scorejax import importance as imp
from scorejax.ghost_norm import flax_grand
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
            return {k: flax_grand(model, p, x, y, mask=m, **kw) for k, (m, kw) in variants.items()}

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
            return [flax_grand(model, p, x, y, method=m, **kw) for m in ("ghost", "vmap")]

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
        vmapped = functools.partial(flax_grand, model, method="vmap", chunk_size=2)
        # The detector sees vmap's per-example gradients of every kernel...
        assert _per_example_kernel_grads(vmapped, params, x, y) == kernels
        # ...and none in the ghost norm.
        ghost = functools.partial(flax_grand, model, method="ghost", rule="gram")
        assert _per_example_kernel_grads(ghost, params, x, y) == set()
    # The mixed rule forms one layer's per-example gradient only where that costs less than the
    # Gram matrices, T (p + d) >= p d: both convs here (T=64, p=9, d=8; T=16, p=72, d=10), never
    # the dense layers (T=1).
    mixed = functools.partial(flax_grand, model, method="ghost", rule="mixed")
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
    eager = flax_grand(model, params, x, y, mask=mask)
    np.testing.assert_allclose(eager, expected, rtol=1e-5)
    jitted = jax.jit(functools.partial(flax_grand, model, mask=mask))(params, x, y)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_grand_rejects_bad_input():
    model, x, _ = _mlp_case()
    params = jax.eval_shape(lambda: model.init(KEY, x))["params"]
    y = jnp.zeros(7, jnp.int32)
    with pytest.raises(ValueError, match="method"):
        flax_grand(model, params, x, y, method="jacrev")
    with pytest.raises(ValueError, match="batch"):
        flax_grand(model, params, x, y[:3])
    with pytest.raises(ValueError, match="mask"):
        flax_grand(model, params, x, y, mask={"Dense_0": {"kernel": True}})
    with pytest.raises(ValueError, match="integer"):
        flax_grand(model, params, x, y.astype(jnp.float32))


def test_grand_labels_outside_the_classes_are_nan_and_rejected_when_checked():
    model, x, _ = _mlp_case()
    params = _init(model, x)["params"]
    y = jnp.asarray([0, 10, 2, -1, 4, 5, 9])  # 10 classes
    score = jax.jit(functools.partial(flax_grand, model, method="vmap"))
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
        got = jax.jit(functools.partial(flax_grand, model))(params, x, y)
        np.testing.assert_allclose(got, ref, rtol=1e-10)
