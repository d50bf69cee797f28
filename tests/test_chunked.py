"""Tests for scorejax.chunked: chunked vmap equals plain vmap, and its padding rule."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax import chunked
from scorejax.chunked import chunked_vmap, pad_to_multiple


def _example_fn(ex):
    """A per-example function with a pytree input and output and a per-example gradient."""
    x, y = ex["x"], ex["y"]
    w = jnp.outer(jnp.arange(1.0, 4.0), jnp.arange(1.0, 3.0))  # [3, 2]
    loss = lambda w: jnp.sum(jnp.tanh(x @ w) * y)
    return {"loss": loss(w), "grad_norm": jnp.linalg.norm(jax.grad(loss)(w)), "h": jnp.tanh(x @ w)}


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 10, None])
def test_chunked_equals_vmap(chunk_size):
    # 7 examples: chunks of 3 and 4 do not divide it, 7 is one chunk, 10 and None exceed it.
    # float64, so that differently batched matmuls agree to rounding.
    with jax.enable_x64(True):
        k1, k2 = jax.random.split(jax.random.key(0))
        batch = {
            "x": jax.random.normal(k1, (7, 3), jnp.float64),
            "y": jax.random.normal(k2, (7, 2), jnp.float64),
        }
        want = jax.vmap(_example_fn)(batch)
        got = jax.jit(lambda b: chunked_vmap(_example_fn, b, chunk_size=chunk_size))(batch)
        for name in want:
            assert got[name].shape == want[name].shape
            # atol: a loss that cancels to ~1e-5 keeps the rounding (~1e-15) of its O(1) terms.
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14)


def test_chunked_under_grad_and_outer_vmap():
    x = jax.random.normal(jax.random.key(1), (2, 5, 3))
    # Elementwise maths only, so chunking cannot change the rounding.

    def total(scale, xs):
        return jnp.sum(chunked_vmap(lambda v: jnp.sum(jnp.sin(scale * v)), xs, chunk_size=2))

    def total_plain(scale, xs):
        return jnp.sum(jax.vmap(lambda v: jnp.sum(jnp.sin(scale * v)))(xs))

    got = jax.vmap(jax.grad(total), in_axes=(None, 0))(0.7, x)
    want = jax.vmap(jax.grad(total_plain), in_axes=(None, 0))(0.7, x)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pad_to_multiple_repeats_the_first_example():
    batch = {"a": jnp.arange(5), "b": jnp.arange(10.0).reshape(5, 2)}
    padded, pad = pad_to_multiple(batch, multiple=3)
    assert pad == 1
    np.testing.assert_array_equal(padded["a"], [0, 1, 2, 3, 4, 0])
    np.testing.assert_array_equal(padded["b"][-1], batch["b"][0])
    same, none = pad_to_multiple(batch, multiple=5)
    assert none == 0 and same is batch


def test_bad_input_raises():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_vmap(jnp.sum, jnp.ones((4, 2)), chunk_size=0)
    with pytest.raises(ValueError, match="disagree"):
        chunked_vmap(jnp.sum, (jnp.ones((4, 2)), jnp.ones((3, 2))), chunk_size=2)
    with pytest.raises(ValueError, match="empty"):
        chunked_vmap(jnp.sum, {}, chunk_size=2)
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(jnp.ones(3), multiple=0)


def test_docstring_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(chunked, "scorejax.chunked") if t.examples]
    assert tests
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    assert not runner.summarize(verbose=False).failed, "".join(report)
