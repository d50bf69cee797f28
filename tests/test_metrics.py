"""Sample-quality metrics against explicit numpy loops and scipy."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scorejax import analytic, metrics
from scorejax.mode_metrics import in_mode_fraction, mode_coverage, mode_tv, mode_weights, near_modes

RNG = np.random.default_rng(0)
X = RNG.normal(size=(13, 3))
Y = RNG.normal(size=(9, 3)) * 1.3 + 0.4


def np_mmd2(x, y, kernel):
    """Unbiased MMD^2 by explicit loops."""
    n, m = len(x), len(y)
    sxx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(kernel(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def rbf_sum(bandwidths):
    return lambda a, b: sum(np.exp(-np.sum((a - b) ** 2) / (2 * h**2)) for h in bandwidths)


def test_mmd2_rbf_matches_numpy_loops():
    bws = (0.5, 1.0, 3.0)
    with jax.enable_x64(True):
        got = metrics.mmd2_rbf(jnp.asarray(X), jnp.asarray(Y), bandwidths=bws)
        np.testing.assert_allclose(got, np_mmd2(X, Y, rbf_sum(bws)), rtol=1e-10)
        # Median heuristic: bandwidths are multipliers times the median pooled pair distance.
        z = np.concatenate([X, Y])
        med = np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(z, 2)])
        np.testing.assert_allclose(metrics.median_bandwidth(X, Y), med, rtol=1e-12)
        ref = np_mmd2(X, Y, rbf_sum([med * c for c in metrics.DEFAULT_BANDWIDTH_MULTIPLIERS]))
        got = metrics.mmd2_rbf(jnp.asarray(X), jnp.asarray(Y))
        np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_median_bandwidth_with_odd_pair_count_and_subsampling():
    x, y = RNG.normal(size=(4, 2)), RNG.normal(size=(3, 2))  # 7 points, 21 pairs
    z = np.concatenate([x, y])
    med = np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(z, 2)])
    with jax.enable_x64(True):
        np.testing.assert_allclose(metrics.median_bandwidth(x, y), med, rtol=1e-12)
        z2 = np.concatenate([x[:2], y[:2]])
        med2 = np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(z2, 2)])
        np.testing.assert_allclose(metrics.median_bandwidth(x, y, max_points=2), med2, rtol=1e-12)


def test_mmd2_is_unbiased_and_detects_a_shift():
    """Same-distribution MMD^2 averages to ~0 (unbiased), a 0.5 shift is far above."""
    n = 400

    @jax.jit
    def stats(key):
        k1, k2, k3 = jax.random.split(key, 3)
        x = jax.random.normal(k1, (n, 2))
        bws = (0.5, 1.0, 2.0)
        same = metrics.mmd2_rbf(x, jax.random.normal(k2, (n, 2)), bandwidths=bws)
        shifted = metrics.mmd2_rbf(x, jax.random.normal(k3, (n, 2)) + 0.5, bandwidths=bws)
        return same, shifted

    same, shifted = jax.vmap(stats)(jax.random.split(jax.random.key(0), 16))
    same, shifted = np.asarray(same), np.asarray(shifted)
    assert abs(same.mean()) < 4 * same.std(ddof=1) / np.sqrt(len(same))
    assert shifted.min() > same.max() + 10 * same.std(ddof=1)


def test_kid_matches_numpy_when_subsets_are_the_whole_sets():
    cubic = lambda a, b: (a @ b / 3 + 1.0) ** 3  # noqa: E731
    with jax.enable_x64(True):
        mean, std = metrics.kid(
            jnp.asarray(X[:9]), jnp.asarray(Y), jax.random.key(0), num_subsets=4, subset_size=50
        )
        # subset_size >= both sizes: every subset is a permutation of the full sets.
        np.testing.assert_allclose(mean, np_mmd2(X[:9], Y, cubic), rtol=1e-10)
        assert float(std) < 1e-10


def test_kid_subsets_average_subset_statistics():
    """Subsets drawn without replacement make each subset's U-statistic unbiased for the
    full-set U-statistic, so the subset mean lands within 4 standard errors of it."""
    fx = RNG.normal(size=(40, 5))
    fy = RNG.normal(size=(30, 5)) + 0.3
    full = np_mmd2(fx, fy, lambda a, b: (a @ b / 5 + 1.0) ** 3)
    with jax.enable_x64(True):
        mean, std = metrics.kid(fx, fy, jax.random.key(1), num_subsets=200, subset_size=10)
    assert float(std) > 0
    assert abs(float(mean) - full) < 4 * float(std) / np.sqrt(200)


def test_wasserstein_1d_matches_scipy():
    a, b = RNG.normal(size=37), RNG.normal(size=53) * 2 + 1
    with jax.enable_x64(True):
        np.testing.assert_allclose(
            metrics.wasserstein_1d(jnp.asarray(a), jnp.asarray(b), p=1.0),
            scipy.stats.wasserstein_distance(a, b),
            rtol=1e-10,
        )
        # Equal sizes, p = 2: the sorted-matching formula.
        c = RNG.normal(size=37)
        ref = np.sqrt(np.mean((np.sort(a) - np.sort(c)) ** 2))
        np.testing.assert_allclose(metrics.wasserstein_1d(jnp.asarray(a), jnp.asarray(c)), ref)


def test_sliced_wasserstein_matches_scipy_on_projections():
    dirs = RNG.normal(size=(7, 3))
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    ref = np.mean([scipy.stats.wasserstein_distance(X @ u, Y @ u) for u in unit])
    with jax.enable_x64(True):
        got = metrics.sliced_wasserstein(X, Y, p=1.0, directions=dirs)
        np.testing.assert_allclose(got, ref, rtol=1e-10)
        # In 1-D every direction is +-1: SW_1 is W_1.
        a, b = X[:, :1], Y[:, :1]
        sw = metrics.sliced_wasserstein(a, b, jax.random.key(0), p=1.0, num_projections=3)
        np.testing.assert_allclose(sw, scipy.stats.wasserstein_distance(a[:, 0], b[:, 0]))


def test_sliced_wasserstein_of_shifted_gaussians():
    """N(0, I) vs N(delta, I): each projection's population W_2^2 is `(theta . delta)^2`."""
    d, n = 4, 2000
    delta = jnp.array([1.0, -0.5, 0.0, 0.5])
    x = jax.random.normal(jax.random.key(0), (n, d))
    y = jax.random.normal(jax.random.key(1), (n, d)) + delta
    dirs = jax.random.normal(jax.random.key(2), (64, d))
    unit = dirs / jnp.linalg.norm(dirs, axis=1, keepdims=True)
    population = float(jnp.mean((unit @ delta) ** 2))
    sw = metrics.sliced_wasserstein(x, y, directions=dirs)
    # Two-sample W_2^2 of n = 2000 unit Gaussians is ~3e-3 (bias and noise); allow 0.02.
    np.testing.assert_allclose(float(sw) ** 2, population, atol=0.02)


def test_energy_distance_matches_numpy_loops():
    n, m = len(X), len(Y)
    dxy = np.mean([np.linalg.norm(a - b) for a in X for b in Y])
    dxx = sum(np.linalg.norm(X[i] - X[j]) for i in range(n) for j in range(n) if i != j)
    dyy = sum(np.linalg.norm(Y[i] - Y[j]) for i in range(m) for j in range(m) if i != j)
    ref = 2 * dxy - dxx / (n * (n - 1)) - dyy / (m * (m - 1))
    with jax.enable_x64(True):
        np.testing.assert_allclose(metrics.energy_distance(X, Y), ref, rtol=1e-10)


def test_mode_weights_matches_numpy_argmin():
    means = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-2.0, 0.0, 1.0], [9.0, 9.0, 9.0]])
    pts = np.concatenate([X, Y])
    nearest = np.argmin(((pts[:, None] - means[None]) ** 2).sum(-1), axis=1)
    ref = np.bincount(nearest, minlength=4) / len(pts)
    got = mode_weights(jnp.asarray(pts, jnp.float32), means)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert float(got[3]) == 0.0


def test_metrics_trace_under_jit():
    """Every metric traces under `jit` (abstract evaluation, no compile); MMD also compared."""
    x, y = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)
    key = jax.random.key(3)

    def all_metrics(x, y):
        return (
            metrics.mmd2_rbf(x, y),
            metrics.energy_distance(x, y),
            metrics.sliced_wasserstein(x, y, key),
            metrics.kid(x, y, key, num_subsets=5, subset_size=5),
            mode_weights(x, y[:3]),
        )

    shapes = jax.eval_shape(all_metrics, x, y)
    assert [s.shape for s in jax.tree_util.tree_leaves(shapes)] == [(), (), (), (), (), (3,)]
    np.testing.assert_allclose(jax.jit(metrics.mmd2_rbf)(x, y), metrics.mmd2_rbf(x, y), rtol=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="x and y must be"):
        metrics.mmd2_rbf(X, Y[:, :2])
    with pytest.raises(ValueError, match="at least 2 points"):
        metrics.energy_distance(X[:1], Y)
    with pytest.raises(ValueError, match="directions must be"):
        metrics.sliced_wasserstein(X, Y, directions=np.ones((4, 2)))
    with pytest.raises(ValueError, match="needs a key"):
        metrics.sliced_wasserstein(X, Y)
    with pytest.raises(ValueError, match="means"):
        mode_weights(X, np.ones((3, 2)))


def test_mode_membership_coverage_and_tv_match_numpy_loops():
    rng = np.random.default_rng(4)
    means = rng.normal(size=(5, 2)) * 3.0
    stds = rng.uniform(0.2, 1.0, size=(5, 2))  # anisotropic: the per-coordinate scaling matters
    x = rng.normal(size=(300, 2)) * 3.0
    weights = rng.uniform(0.5, 2.0, size=5)
    pi = weights / weights.sum()
    near = np.array(
        [
            [np.sum(((xi - m) / s) ** 2) <= 2.5**2 for m, s in zip(means, stds, strict=True)]
            for xi in x
        ]
    )
    got = jax.jit(lambda x: near_modes(x, means, stds, num_stds=2.5))(x)
    np.testing.assert_array_equal(got, near)
    frac = in_mode_fraction(x, means, stds, num_stds=2.5)
    np.testing.assert_allclose(frac, np.mean([row.any() for row in near]), rtol=1e-6)
    shares = near.mean(axis=0)
    want = np.mean([shares[k] >= 0.25 * pi[k] for k in range(5)])
    np.testing.assert_allclose(mode_coverage(shares, weights), want, rtol=1e-6)
    w = np.asarray(mode_weights(x, means))
    want_tv = 0.5 * sum(abs(w[k] - pi[k]) for k in range(5))
    np.testing.assert_allclose(mode_tv(w, weights), want_tv, rtol=1e-6)
    # Isotropic stds `[K]` mean a ball of that radius.
    iso = near_modes(x, means, stds[:, 0], num_stds=2.0)
    ball = np.sum((x[:, None] - means[None]) ** 2, -1) <= (2.0 * stds[None, :, 0]) ** 2
    np.testing.assert_array_equal(iso, ball)


def test_mode_summaries_of_exact_and_collapsed_samples():
    gm = analytic.ring8()
    x = gm.sample(jax.random.key(0), 20000)
    pi = jnp.exp(gm.log_weights)
    near = near_modes(x, gm.means, gm.stds)
    assert float(mode_coverage(jnp.mean(near, 0), pi)) == 1.0
    # A 2-D Gaussian sample lies beyond 3 standard deviations with probability exp(-4.5).
    frac = float(in_mode_fraction(x, gm.means, gm.stds))
    assert abs(frac - (1 - np.exp(-4.5))) < 4 * np.sqrt(np.exp(-4.5) / 20000)
    assert float(mode_tv(mode_weights(x, gm.means), pi)) < 0.02
    # Collapse onto two modes: a quarter covered, TV 3/4; a blob at the centre covers none.
    two = x[(jnp.argmin(metrics.pairwise_sq_dists(x, gm.means), 1) < 2)]
    assert (
        float(mode_coverage(jnp.mean(near_modes(two, gm.means, gm.stds), 0), pi))
        == 0.25
    )
    np.testing.assert_allclose(
        mode_tv(mode_weights(two, gm.means), pi), 0.75, atol=0.02
    )
    centre = 0.1 * jax.random.normal(jax.random.key(1), (500, 2))
    assert float(in_mode_fraction(centre, gm.means, gm.stds)) == 0.0
    with pytest.raises(ValueError, match=r"\[K\]"):
        mode_tv(jnp.ones(3), jnp.ones(4))
