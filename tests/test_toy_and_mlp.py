"""2-D toy samplers (geometry, registry) and the time-conditioned ScoreMLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax import analytic
from scorejax.data import toy
from scorejax.mode_metrics import mode_weights
from scorejax.models.mlp import ScoreMLP, fourier_features, sinusoidal_features

N = 4000


@pytest.fixture(scope="module")
def samples():
    """One jitted draw of every toy (keeps compilation to one program)."""
    draw = jax.jit(lambda k: {name: toy.get_toy(name).sample(k, N) for name in toy.TOY_NAMES})
    return {name: np.asarray(x) for name, x in draw(jax.random.key(0)).items()}


def test_every_toy_is_a_finite_float32_point_cloud(samples):
    for name in toy.TOY_NAMES:
        x = samples[name]
        assert x.shape == (N, 2) and x.dtype == np.float32, name
        assert np.all(np.isfinite(x)), name


def test_samplers_are_deterministic_per_key():
    draw = jax.jit(toy.two_moons, static_argnums=1)
    a = draw(jax.random.key(1), 50)
    np.testing.assert_array_equal(a, draw(jax.random.key(1), 50))
    assert not np.allclose(a, draw(jax.random.key(2), 50))


def test_mixture_toys_match_their_oracles(samples):
    for name, ctor, k in (("ring8", analytic.ring8, 8), ("grid25", analytic.grid25, 25)):
        entry = toy.get_toy(name)
        assert entry.mixture is not None and entry.mixture.num_components == k
        np.testing.assert_allclose(entry.mixture.means, ctor().means)
        weights = np.asarray(mode_weights(samples[name], entry.mixture.means))
        se = np.sqrt((1 / k) * (1 - 1 / k) / N)
        np.testing.assert_allclose(weights, 1 / k, atol=5 * se)
        # Within-mode spread equals the component std (0.1).
        means = np.asarray(entry.mixture.means)
        nearest = means[np.argmin(((samples[name][:, None] - means[None]) ** 2).sum(-1), 1)]
        np.testing.assert_allclose((samples[name] - nearest).std(0), 0.1, rtol=0.05)
    for name in ("checkerboard", "two_moons", "swiss_roll"):
        assert toy.get_toy(name).mixture is None


def test_checkerboard_fills_the_dark_squares_uniformly(samples):
    x = samples["checkerboard"]
    assert np.all(np.abs(x) <= 4.0)
    col = np.floor((x[:, 0] + 4) / 2).astype(int)
    row = np.floor((x[:, 1] + 4) / 2).astype(int)
    assert np.all((row + col) % 2 == 0)
    counts = np.bincount(4 * row + col, minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]]
    np.testing.assert_allclose(counts / N, 1 / 8, atol=5 * np.sqrt(1 / 8 * 7 / 8 / N))


def test_two_moons_lie_on_two_circles_without_noise():
    x = np.asarray(jax.jit(lambda k: toy.two_moons(k, 500, noise=0.0))(jax.random.key(3)))
    r_upper = np.linalg.norm(x - np.array([-1.0, -0.5]), axis=1)
    r_lower = np.linalg.norm(x - np.array([1.0, 0.5]), axis=1)
    on_upper = np.isclose(r_upper, 2.0, atol=1e-5) & (x[:, 1] >= -0.5 - 1e-5)
    on_lower = np.isclose(r_lower, 2.0, atol=1e-5) & (x[:, 1] <= 0.5 + 1e-5)
    assert np.all(on_upper | on_lower)
    assert 0.4 < on_upper.mean() < 0.6


def test_swiss_roll_follows_the_spiral_without_noise():
    x = np.asarray(jax.jit(lambda k: toy.swiss_roll(k, 500, noise=0.0))(jax.random.key(4)))
    u = 5 * np.linalg.norm(x, axis=1)
    assert np.all((u > 1.5 * np.pi - 1e-4) & (u < 4.5 * np.pi + 1e-4))
    np.testing.assert_allclose(np.cos(u), 5 * x[:, 0] / u, atol=1e-4)
    np.testing.assert_allclose(np.sin(u), 5 * x[:, 1] / u, atol=1e-4)


def test_unknown_toy_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown toy distribution 'moons'.*two_moons"):
        toy.get_toy("moons")


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_score_mlp_shapes_time_broadcast_and_grads(embedding):
    model = ScoreMLP(data_dim=2, hidden_sizes=(32, 32), time_embedding=embedding, embed_dim=16)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    t = jnp.full((5,), 0.3)
    params = jax.jit(model.init)(jax.random.key(1), x, t)

    @jax.jit
    def run(params, x, t):
        grads = jax.grad(lambda p: jnp.sum(model.apply(p, x, t) ** 2))(params)
        return (
            model.apply(params, x, t),
            model.apply(params, x, 0.3),  # scalar t broadcasts
            model.apply(params, x, 0.9),
            model.apply(params, x[2:3], t[2:3]),
            grads,
        )

    out, out_scalar_t, out_later, single, grads = run(params, x, t)
    assert out.shape == (5, 2) and out.dtype == jnp.float32
    # Float32 rounding of high-frequency time features differs once t is a compile-time constant.
    np.testing.assert_allclose(out_scalar_t, out, rtol=1e-5, atol=1e-6)
    # The output depends on time, and each example only on its own (x_i, t_i).
    assert not np.allclose(out_later, out)
    np.testing.assert_allclose(single[0], out[2], rtol=1e-5, atol=1e-6)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_score_mlp_jit_equals_eager_and_any_dimension_without_data_dim():
    model = ScoreMLP(hidden_sizes=(8,), embed_dim=4)
    x = jnp.linspace(-1.0, 1.0, 15).reshape(3, 5)
    t = jnp.array([0.1, 0.5, 0.9])
    params = jax.jit(model.init)(jax.random.key(0), x, t)
    out = model.apply(params, x, t)
    assert out.shape == (3, 5)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x, t), out, rtol=1e-5, atol=1e-6)


def test_score_mlp_bad_inputs_raise():
    model = ScoreMLP(data_dim=2, hidden_sizes=(8,), embed_dim=4)
    with pytest.raises(ValueError, match="data_dim=2 but got inputs of dimension 3"):
        model.init(jax.random.key(0), jnp.ones((4, 3)), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"expects x of shape \[B, d\]"):
        model.init(jax.random.key(0), jnp.ones((4, 2, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match="t must be a scalar or"):
        model.init(jax.random.key(0), jnp.ones((4, 2)), jnp.zeros(3))
    with pytest.raises(ValueError, match="unknown time_embedding 'random'"):
        ScoreMLP(time_embedding="random").init(jax.random.key(0), jnp.ones((4, 2)), 0.1)
    with pytest.raises(ValueError, match="must be even"):
        ScoreMLP(embed_dim=5).init(jax.random.key(0), jnp.ones((4, 2)), 0.1)


def test_time_features():
    t = jnp.array([0.0, 0.25, 1.0])
    f = fourier_features(t, 8, scale=2.0)
    assert f.shape == (3, 8)
    np.testing.assert_allclose(f[0], np.r_[np.zeros(4), np.ones(4)], atol=1e-7)
    np.testing.assert_allclose(jnp.sum(f**2, axis=1), 4.0, rtol=1e-6)  # sin^2 + cos^2 per pair
    s = sinusoidal_features(t, 6)
    np.testing.assert_allclose(s[:, 0], np.sin(np.asarray(t)), rtol=1e-6)  # frequency 1
    np.testing.assert_allclose(s[:, 3], np.cos(np.asarray(t)), rtol=1e-6)
