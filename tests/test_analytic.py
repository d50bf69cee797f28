"""Gaussian-mixture oracle: density vs scipy, score vs autodiff, Tweedie, Monte Carlo moments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from scipy.special import logsumexp

from scorejax import analytic
from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)]
IDS = ["vp", "subvp", "ve"]

WEIGHTS = np.array([0.5, 0.2, 0.3])
MEANS = np.array([[-1.0, 0.5, 2.0], [1.5, -1.0, 0.0], [0.0, 2.0, -1.0]])
STDS = np.array([[0.3, 0.5, 0.2], [0.8, 0.4, 0.6], [0.5, 0.5, 1.0]])


def mixture() -> analytic.GaussianMixture:
    return analytic.GaussianMixture(WEIGHTS, MEANS, STDS)


def scipy_log_prob(x: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """log of sum_k pi_k N(x; alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)) by scipy."""
    comps = [
        np.log(w)
        + scipy.stats.multivariate_normal(alpha * m, np.diag(alpha**2 * s**2 + sigma**2)).logpdf(x)
        for w, m, s in zip(WEIGHTS, MEANS, STDS, strict=True)
    ]
    return logsumexp(np.stack(comps, -1), axis=-1)


def test_log_prob_matches_scipy_at_t0_and_t():
    x = np.random.default_rng(0).normal(size=(7, 3)) * 2
    with jax.enable_x64(True):
        gm = mixture()
        np.testing.assert_allclose(gm.log_prob(jnp.asarray(x)), scipy_log_prob(x, 1, 0), rtol=1e-12)
        for sde in SDES:
            t = 0.37
            ref = scipy_log_prob(x, float(sde.alpha(t)), float(sde.sigma(t)))
            got = gm.marginal_log_prob(jnp.asarray(x), t, sde=sde)
            np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_score_is_grad_of_marginal_log_prob(sde):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        gm = mixture()
        x = jnp.asarray(rng.normal(size=(16, 3)) * 2)
        t = jnp.asarray(rng.uniform(1e-3, 1.0, size=16))
        auto = jax.grad(lambda x: jnp.sum(gm.marginal_log_prob(x, t, sde=sde)))(x)
        np.testing.assert_allclose(gm.marginal_score(x, t, sde=sde), auto, rtol=1e-10, atol=1e-12)
        # Far from the data the logsumexp form keeps the score finite and exact.
        far = jnp.full((1, 3), 60.0)
        s_far = gm.marginal_score(far, 0.01, sde=sde)
        auto_far = jax.grad(lambda x: jnp.sum(gm.marginal_log_prob(x, 0.01, sde=sde)))(far)
        assert np.all(np.isfinite(s_far))
        np.testing.assert_allclose(s_far, auto_far, rtol=1e-10)


def test_data_score_is_grad_of_log_prob():
    with jax.enable_x64(True):
        gm = mixture()
        x = jnp.asarray(np.random.default_rng(2).normal(size=(9, 3)))
        auto = jax.grad(lambda x: jnp.sum(gm.log_prob(x)))(x)
        np.testing.assert_allclose(gm.score(x), auto, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_denoiser_satisfies_tweedie(sde):
    """`E[x_0 | x_t] = (x + sigma_t^2 grad log p_t(x)) / alpha_t`."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        gm = mixture()
        x = jnp.asarray(rng.normal(size=(12, 3)) * 1.5)
        t = jnp.asarray(rng.uniform(0.01, 0.9, size=12))
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        tweedie = (x + sigma**2 * gm.marginal_score(x, t, sde=sde)) / alpha
        np.testing.assert_allclose(gm.denoiser(x, t, sde=sde), tweedie, rtol=1e-9, atol=1e-10)


def test_denoiser_matches_monte_carlo_posterior_mean():
    """Posterior mean by importance weighting prior samples with the Gaussian likelihood."""
    sde = VPSDE()
    t = 0.3

    @jax.jit
    def posterior_stats(x0, x_query):
        a, s = sde.alpha(t), sde.sigma(t)
        logw = -0.5 * jnp.sum((x_query[:, None] - a * x0[None]) ** 2, -1) / s**2
        w = jax.nn.softmax(logw, axis=1)
        mc = w @ x0
        ess = 1.0 / jnp.sum(w**2, axis=1)
        post_sd = jnp.sqrt(jnp.maximum(w @ x0**2 - mc**2, 0.0))
        return mc, 5 * post_sd / jnp.sqrt(ess[:, None])

    with jax.enable_x64(True):
        gm = mixture()
        x0 = gm.sample(jax.random.key(0), 200_000)
        x_query = jnp.array([[0.0, 0.5, 1.0], [1.0, -0.5, 0.2]])
        mc, tol = posterior_stats(x0, x_query)
        err = jnp.abs(gm.denoiser(x_query, t, sde=sde) - mc)
        assert np.all(np.asarray(err) < np.asarray(tol)), (err, tol)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_moments_match_monte_carlo(sde):
    n = 200_000
    t = 0.25
    with jax.enable_x64(True):
        gm = mixture()
        xt = np.asarray(gm.marginal_sample(jax.random.key(4), n, t, sde=sde))
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        mean = a * np.asarray(gm.mean())
        cov = a**2 * np.asarray(gm.covariance()) + s**2 * np.eye(3)
    centred = xt - mean
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(centred.mean(0) - 0) < 5 * se_mean)
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(prods.mean(0) - cov) < 5 * se_cov + 1e-12)


def test_mixture_moments_match_numpy():
    pi = WEIGHTS / WEIGHTS.sum()
    mean = pi @ MEANS
    parts = zip(pi, MEANS, STDS, strict=True)
    second = sum(p * (np.diag(s**2) + np.outer(m, m)) for p, m, s in parts)
    with jax.enable_x64(True):
        gm = mixture()
        np.testing.assert_allclose(gm.mean(), mean, rtol=1e-12)
        np.testing.assert_allclose(gm.covariance(), second - np.outer(mean, mean), atol=1e-12)


def test_sample_component_frequencies_and_isotropic_stds():
    gm = analytic.GaussianMixture(WEIGHTS, MEANS, np.array([0.1, 0.2, 0.3]))
    assert gm.stds.shape == (3, 3)
    np.testing.assert_allclose(gm.stds[:, 1], [0.1, 0.2, 0.3], rtol=1e-6)
    n = 50_000
    x = gm.sample(jax.random.key(5), n)
    assert x.shape == (n, 3)
    comp = np.argmax(np.asarray(gm.responsibilities(x)), axis=1)
    freq = np.bincount(comp, minlength=3) / n
    np.testing.assert_allclose(freq, WEIGHTS, atol=5 * np.sqrt(0.25 / n))


def test_weights_are_normalised_internally():
    gm_scaled = analytic.GaussianMixture(3 * WEIGHTS, MEANS, STDS)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 3)), jnp.float32)
    np.testing.assert_allclose(gm_scaled.log_prob(x), mixture().log_prob(x), rtol=1e-6)


def test_mixture_is_a_pytree_usable_under_jit_and_vmap():
    gm = mixture()
    leaves, treedef = jax.tree_util.tree_flatten(gm)
    assert len(leaves) == 3
    x = jnp.ones((5, 3), jnp.float32)
    f = jax.jit(lambda gm, x: gm.marginal_score(x, 0.5, sde=VPSDE()))
    np.testing.assert_allclose(f(gm, x), gm.marginal_score(x, 0.5, sde=VPSDE()), rtol=1e-5)
    # vmap over a batch of mixtures that differ in their means.
    shifted = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), gm)
    shifted.means = shifted.means.at[1].add(1.0)
    lp = jax.vmap(lambda g: g.log_prob(x))(shifted)
    assert lp.shape == (2, 5)
    np.testing.assert_allclose(lp[0], gm.log_prob(x), rtol=1e-5)


def test_named_constructors():
    ring = analytic.ring8()
    assert (ring.num_components, ring.dim) == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 2.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(ring.log_weights), 1 / 8, rtol=1e-6)
    grid = analytic.grid25()
    assert (grid.num_components, grid.dim) == (25, 2)
    assert len({tuple(np.round(m, 6)) for m in np.asarray(grid.means)}) == 25
    np.testing.assert_allclose(np.sort(np.unique(grid.means[:, 0])), [-2, -1, 0, 1, 2])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="means must be"):
        analytic.GaussianMixture(WEIGHTS, MEANS[0], STDS)
    with pytest.raises(ValueError, match="weights must be"):
        analytic.GaussianMixture(WEIGHTS[:2], MEANS, STDS)
    with pytest.raises(ValueError, match="stds must be"):
        analytic.GaussianMixture(WEIGHTS, MEANS, STDS[:, :2])
    with pytest.raises(ValueError, match="stds must be positive"):
        analytic.GaussianMixture(WEIGHTS, MEANS, -STDS)
    with pytest.raises(ValueError, match="nonnegative"):
        analytic.GaussianMixture(-WEIGHTS, MEANS, STDS)
    with pytest.raises(ValueError, match=r"x must be \[B, d\] with d=3"):
        mixture().marginal_score(jnp.ones((4, 2)), 0.5, sde=VPSDE())


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_exact_loss_floor_is_the_dsm_loss_of_the_exact_score(weighting):
    # The floor is the DSM loss of the exact score; computed another way it is
    # E_t lambda(t) E_{x_t ~ p_t} [d / sigma_t^2 - ||grad log p_t(x_t)||^2], with x_t drawn from
    # the marginal directly and no noise target. The two agree within Monte-Carlo error.
    from scorejax.score_matching import dsm_loss

    with jax.enable_x64(True):
        gm = analytic.ring8()
        assert gm.means.dtype == jnp.float64
        sde, t_min, n = VPSDE(), 1e-2, 1 << 15
        exact = lambda _, x, t: gm.marginal_score(x, t, sde=sde)
        loss_fn = lambda p, x0, k, reduction="mean": dsm_loss(
            exact, p, x0, k, sde=sde, weighting=weighting, t_min=t_min, reduction=reduction
        )
        key = jax.random.key(7)
        floor = jax.jit(lambda k: analytic.exact_loss_floor(loss_fn, gm, k, num_samples=n))(key)
        # Its standard error, from the same per-example losses.
        x0 = gm.sample(jax.random.fold_in(key, 0), n)
        per_example = loss_fn(None, x0, jax.random.fold_in(key, 1), reduction="none")[0]
        np.testing.assert_allclose(floor, jnp.mean(per_example), rtol=1e-12)
        se_floor = float(jnp.std(per_example)) / np.sqrt(n)

        k_t, k_x = jax.random.split(jax.random.key(8))
        t = jax.random.uniform(k_t, (n,), jnp.float64, t_min, sde.T)
        x_t = gm.marginal_sample(k_x, n, t, sde=sde)
        lam = sde.sigma(t) ** 2 if weighting == "sigma2" else sde.diffusion(t) ** 2
        other = lam * (gm.dim / sde.sigma(t) ** 2 - jnp.sum(exact(None, x_t, t) ** 2, -1))
        se_other = float(jnp.std(other)) / np.sqrt(n)
        gap = abs(float(floor) - float(jnp.mean(other)))
        assert gap < 4.0 * np.hypot(se_floor, se_other), (float(floor), float(jnp.mean(other)))
        # A wrong score pays its squared error on top: the floor is below it.
        zero = lambda p, x0, k: dsm_loss(
            lambda _, x, t: jnp.zeros_like(x), p, x0, k, sde=sde, weighting=weighting, t_min=t_min
        )
        assert float(floor) < float(analytic.exact_loss_floor(zero, gm, key, num_samples=n))
