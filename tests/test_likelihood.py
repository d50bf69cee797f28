"""Probability-flow ODE: diffrax integration and NFE, likelihoods, bits/dim, PF-ODE sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax.analytic import GaussianMixture
from scorejax.likelihood import bits_per_dim, dequantize, log_likelihood
from scorejax.metrics import mmd2_rbf
from scorejax.mode_metrics import mode_weights
from scorejax.ode import SOLVERS, integrate
from scorejax.sampling import probability_flow_ode
from scorejax.score_sdes import VESDE, VPSDE


def _mixture(dtype=jnp.float64) -> GaussianMixture:
    means = jnp.array([[-1.5, 0.0], [1.5, 0.5], [0.0, 1.8]], dtype)
    return GaussianMixture(jnp.array([0.5, 0.3, 0.2], dtype), means,
                           jnp.array([0.4, 0.3, 0.5], dtype))


def _exact_score(gm: GaussianMixture, sde):
    return lambda params, x, t: gm.marginal_score(x, t, sde=sde)


@pytest.mark.parametrize("solver,num_steps", [("euler", 7), ("tsit5", None), ("heun", None)])
def test_nfe_equals_executed_evaluations(solver, num_steps):
    calls = []

    def field(t, y):
        jax.debug.callback(lambda _: calls.append(1), t)
        return -y * (1.0 + jnp.sin(5.0 * t)) + jnp.cos(t)

    run = jax.jit(lambda y: integrate(field, y, t0=0.0, t1=2.0, solver=solver, num_steps=num_steps,
                                      rtol=1e-4, atol=1e-4))
    y1, stats = run(jnp.ones(3))
    jax.block_until_ready(y1)
    assert int(stats.nfe) == len(calls) > 0
    if num_steps is not None:
        assert int(stats.num_steps) == num_steps


def test_integrate_matches_closed_form_both_directions():
    with jax.enable_x64(True):
        field = lambda t, y: {"a": -2.0 * t * y["a"], "b": jnp.cos(t) * jnp.ones(2)}
        y0 = {"a": jnp.array([1.0, 3.0]), "b": jnp.zeros(2)}
        fwd, _ = integrate(field, y0, t0=0.0, t1=1.5, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(fwd["a"], np.array([1.0, 3.0]) * np.exp(-1.5**2), rtol=1e-8)
        np.testing.assert_allclose(fwd["b"], np.sin(1.5), rtol=1e-8)
        back, _ = integrate(field, fwd, t0=1.5, t1=0.0, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(back["a"], y0["a"], rtol=1e-7)
    with pytest.raises(ValueError, match="unknown solver"):
        integrate(field, y0, t0=0.0, t1=1.0, solver="rk4")
    with pytest.raises(ValueError, match="num_steps"):
        integrate(field, y0, t0=0.0, t1=1.0, solver="euler")
    assert set(SOLVERS) >= {"euler", "heun", "tsit5", "dopri5"}


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_exact_divergence_likelihood_matches_analytic_density(sde):
    with jax.enable_x64(True):
        gm = _mixture()
        x = jnp.concatenate([gm.sample(jax.random.key(0), 24),
                             jnp.array([[0.0, 0.0], [3.0, -2.0], [-2.5, 2.5]])])
        truth = np.asarray(gm.log_prob(x))
        logp, aux = log_likelihood(_exact_score(gm, sde), None, x, jax.random.key(1), sde=sde,
                                   divergence="exact", rtol=1e-7, atol=1e-7)
        # With the exact marginal p_T as the prior, the ODE model is p_{t_min} itself: what is
        # left is the solver's error.
        exact_prior = aux.delta_logp + gm.marginal_log_prob(aux.z, sde.T, sde=sde)
        truth_t_min = np.asarray(gm.marginal_log_prob(x, 1e-5, sde=sde))
        np.testing.assert_allclose(np.asarray(exact_prior), truth_t_min, atol=2e-3)
        assert int(aux.nfe) > 0 and aux.z.shape == x.shape
        if isinstance(sde, VPSDE):
            # With the SDE's own N(0, I) prior, whose mismatch with p_T is part of the error,
            # the VP model still matches within 0.05 nats. (For VE the N(0, sigma_max^2) prior
            # ignores the data mean: ~|mu| |z| / sigma_max^2 nats, up to 0.1 at these points.)
            assert np.max(np.abs(np.asarray(logp) - truth)) < 0.05


def test_hutchinson_is_unbiased():
    with jax.enable_x64(True):
        sde = VPSDE()
        gm = _mixture()
        points = jnp.array([[-1.2, 0.3], [1.0, 1.0], [0.2, -0.5]])
        reps = 256
        x = jnp.repeat(points, reps, axis=0)  # every copy gets its own probe
        est, aux = log_likelihood(_exact_score(gm, sde), None, x, jax.random.key(3), sde=sde,
                                  rtol=1e-7, atol=1e-7)
        # Swap in the exact p_T so that the only gap left to the truth is the probe noise.
        est = aux.delta_logp + gm.marginal_log_prob(aux.z, sde.T, sde=sde)
        est = np.asarray(est).reshape(len(points), reps)
        truth = np.asarray(gm.log_prob(points))
        mean, se = est.mean(axis=1), est.std(axis=1, ddof=1) / np.sqrt(reps)
        assert np.all(se > 1e-3)  # the estimator really is random...
        assert np.all(np.abs(mean - truth) < 4.0 * se + 2e-3)  # ...and unbiased


def test_exact_divergence_equals_jacobian_trace_and_bad_arguments():
    from scorejax.likelihood import _exact_divergence

    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(0), (6, 6))

        def f(z):  # per-example nonlinear map on [B, 2, 3]
            flat = z.reshape(z.shape[0], -1)
            return jnp.tanh(flat @ w).reshape(z.shape) * (1.0 + z**2)

        x = jax.random.normal(jax.random.key(1), (4, 2, 3))
        _, tangent = jax.linearize(f, x)
        div = _exact_divergence(tangent, x)
        per_example = lambda xi: f(xi[None])[0].reshape(-1)
        jac = jax.vmap(jax.jacfwd(per_example))(x).reshape(4, 6, 6)
        np.testing.assert_allclose(div, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-12)

    sde = VPSDE()
    gm = _mixture(jnp.float32)
    x = gm.sample(jax.random.key(2), 8)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(_exact_score(gm, sde), None, x, jax.random.key(0), sde=sde, divergence="x")
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(_exact_score(gm, sde), None, x, jax.random.key(0), sde=sde, t_min=0.0)


def test_bits_per_dim_and_dequantization():
    d = 64
    # A uniform density over the value range costs exactly log2(256) = 8 bits per dimension.
    uniform = bits_per_dim(jnp.asarray(-d * np.log(2.0)), num_dims=d, scale="[-1,1]")
    assert float(uniform) == pytest.approx(8)
    assert float(bits_per_dim(jnp.asarray(0.0), num_dims=d, scale="[0,1]")) == pytest.approx(8)
    assert float(bits_per_dim(jnp.asarray(0.0), num_dims=d, scale="[0,1]", num_levels=17)) == \
        pytest.approx(np.log2(17))
    levels = jnp.arange(256, dtype=jnp.float32)
    x = jnp.tile(levels / 127.5 - 1.0, (200, 1))
    y = dequantize(x, jax.random.key(0), scale="[-1,1]")
    bins = np.floor((np.asarray(y) + 1.0) / 2.0 * 256)
    np.testing.assert_array_equal(bins, np.tile(np.arange(256), (200, 1)))
    offset = (np.asarray(y) + 1.0) / 2.0 * 256 - bins
    assert abs(offset.mean() - 0.5) < 0.01 and offset.min() >= 0 and offset.max() < 1


def test_pf_ode_sampler_is_the_exact_affine_flow_for_a_gaussian():
    # For p_0 = N(mu, s^2 I) the PF-ODE map is affine: x_t = alpha_t mu + sqrt(C_t / C_T)
    # (x_T - alpha_T mu), C_t = alpha_t^2 s^2 + sigma_t^2 (the notes, Sec. 4.4).
    with jax.enable_x64(True):
        sde = VPSDE()
        mu, s = jnp.array([1.0, -2.0]), 0.5
        gm = GaussianMixture(jnp.ones(1), mu[None], jnp.array([s]))
        key, shape, t_eps = jax.random.key(7), (16, 2), 1e-3
        x, nfe = probability_flow_ode(_exact_score(gm, sde), None, key, sde=sde, shape=shape,
                                      t_eps=t_eps,
                                      rtol=1e-9, atol=1e-9, dtype=jnp.float64)
        x_T = sde.prior_sample(key, shape, jnp.float64)
        c = lambda t: sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2
        expected = sde.alpha(t_eps) * mu + jnp.sqrt(c(t_eps) / c(sde.T)) * (
            x_T - sde.alpha(sde.T) * mu)
        np.testing.assert_allclose(x, expected, atol=1e-6)
        assert int(nfe) > 0
        # The fixed-step Heun option: 2 evaluations per step, close at 40 steps.
        xn, nfe_n = probability_flow_ode(_exact_score(gm, sde), None, key, sde=sde, shape=shape,
                                         t_eps=t_eps, solver="heun", num_steps=40,
                                         dtype=jnp.float64)
        assert int(nfe_n) == 80
        np.testing.assert_allclose(xn, expected, atol=0.05)


def test_pf_ode_samples_reproduce_the_mixture():
    sde = VPSDE()
    gm = _mixture(jnp.float32)
    n = 1500
    sample = jax.jit(lambda key: probability_flow_ode(_exact_score(gm, sde), None, key, sde=sde,
                                                      shape=(n, 2), rtol=1e-4, atol=1e-4))
    x, nfe = sample(jax.random.key(0))
    weights = np.asarray(mode_weights(x, gm.means))
    np.testing.assert_allclose(weights, [0.5, 0.3, 0.2], atol=0.03)
    truth = gm.sample(jax.random.key(1), n)
    null = float(mmd2_rbf(gm.sample(jax.random.key(2), n), gm.sample(jax.random.key(3), n)))
    mmd = float(mmd2_rbf(x, truth))
    assert mmd < max(3.0 * abs(null), 2e-3), (mmd, null)
    assert 0 < int(nfe) < 1000
