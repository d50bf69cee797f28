"""VP / sub-VP / VE SDEs: coefficients, self-consistency of the marginals with the SDE, priors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE
from scorejax.sde import batch_broadcast

SDES = [VPSDE(), SubVPSDE(), VESDE()]
IDS = ["vp", "subvp", "ve"]


def test_vp_coefficients_match_reference_table():
    # Reference values of alpha_t, sigma_t for beta 0.1 -> 20 (score SDE convention).
    sde = VPSDE()
    with jax.enable_x64(True):
        t = jnp.array([1e-3, 0.1, 1.0])
        tn = np.array([1e-3, 0.1, 1.0])
        alpha_ref = np.exp(-0.25 * tn**2 * 19.9 - 0.5 * tn * 0.1)
        np.testing.assert_allclose(sde.alpha(t), alpha_ref, rtol=1e-12)
        np.testing.assert_allclose(sde.sigma(t), np.sqrt(1 - alpha_ref**2), rtol=1e-12)
        np.testing.assert_allclose(sde.alpha(t), [0.99995, 0.9467, 0.00657], rtol=1e-3)
        np.testing.assert_allclose(sde.sigma(t), [0.0105, 0.322, 1.0], rtol=5e-3)
        # The expm1 form keeps relative precision where 1 - alpha^2 cancels.
        t_small = jnp.array(1e-7)
        exact = np.sqrt(-np.expm1(2 * (-0.25 * 1e-14 * 19.9 - 0.5 * 1e-7 * 0.1)))
        np.testing.assert_allclose(sde.sigma(t_small), exact, rtol=1e-12)
    np.testing.assert_allclose(VPSDE().sigma(jnp.float32(1e-7)), exact, rtol=1e-5)  # float32 too


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginals_solve_the_moment_odes(sde):
    """`d log alpha/dt = c(t)` and `d sigma^2/dt = 2 c(t) sigma^2 + g(t)^2` for `f = c(t) x`.

    These are the mean and variance equations of the linear SDE, so they tie `sde()` to
    `marginal_prob()` exactly.
    """

    @jax.jit
    def both_sides(ts):
        dla = jax.vmap(jax.grad(sde.log_alpha))(ts)
        dvar = jax.vmap(jax.grad(lambda t: sde.sigma(t) ** 2))(ts)
        rhs = 2 * sde.drift_coeff(ts) * sde.sigma(ts) ** 2 + sde.diffusion(ts) ** 2
        return dla, sde.drift_coeff(ts), dvar, rhs

    with jax.enable_x64(True):
        ts = jnp.linspace(0.01, 0.99, 17)
        dla, c, dvar, rhs = both_sides(ts)
        np.testing.assert_allclose(dla, c, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dvar, rhs, rtol=1e-10)
        drift, g = sde.sde(jnp.ones((17, 3)), ts)
        np.testing.assert_allclose(drift, jnp.broadcast_to(sde.drift_coeff(ts)[:, None], (17, 3)))
        np.testing.assert_allclose(g, sde.diffusion(ts))


def test_terminal_marginals_reach_the_prior():
    for sde in (VPSDE(), SubVPSDE()):
        assert float(sde.alpha(1.0)) < 0.007
        assert abs(float(sde.sigma(1.0)) - 1.0) < 1e-4
        assert sde.prior_std == 1.0
    ve = VESDE()
    np.testing.assert_allclose(ve.sigma(1.0), 50.0, rtol=1e-6)
    np.testing.assert_allclose(ve.sigma(0.0), 0.01, rtol=1e-6)
    assert float(ve.alpha(0.7)) == 1.0 and ve.prior_std == 50.0


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior_logp_and_sample(sde):
    z = np.random.default_rng(0).normal(size=(4, 3, 2)) * sde.prior_std
    ref = scipy.stats.norm.logpdf(z, scale=sde.prior_std).sum(axis=(1, 2))
    with jax.enable_x64(True):
        np.testing.assert_allclose(sde.prior_logp(jnp.asarray(z)), ref, rtol=1e-12)
    samples = sde.prior_sample(jax.random.key(0), (20000, 2))
    assert samples.shape == (20000, 2) and samples.dtype == jnp.float32
    # Sample std within 5 standard errors (se of a sample std ~ s / sqrt(2 n)).
    np.testing.assert_allclose(np.std(samples), sde.prior_std, rtol=5 / np.sqrt(2 * 40000))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_prob_broadcasts_per_example_time(sde):
    x = jnp.arange(24.0).reshape(2, 3, 4)
    t = jnp.array([0.2, 0.8])
    mean, std = sde.marginal_prob(x, t)
    assert mean.shape == x.shape and std.shape == (2,)
    for i in range(2):
        m_i, s_i = sde.marginal_prob(x[i : i + 1], t[i])
        np.testing.assert_allclose(mean[i], m_i[0], rtol=1e-6)
        np.testing.assert_allclose(std[i], s_i, rtol=1e-6)
    with pytest.raises(ValueError, match="t must be a scalar or a \\[B\\] vector"):
        sde.marginal_prob(x, jnp.array([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_discretize_is_the_exact_transition(sde):
    """`(f, G)` compose: `sigma_t^2 = r^2 sigma_s^2 + G^2`, and `f ~ f(x,t) dt`, `G^2 ~ g^2 dt`."""
    with jax.enable_x64(True):
        x = jnp.ones((3, 2))
        t = jnp.array([0.1, 0.5, 0.9])
        dt = 0.05
        f, g = sde.discretize(x, t, dt)
        r = sde.alpha(t) / sde.alpha(t - dt)
        np.testing.assert_allclose(f, (r - 1)[:, None] * x, rtol=1e-12)
        np.testing.assert_allclose(
            sde.sigma(t) ** 2, r**2 * sde.sigma(t - dt) ** 2 + g**2, rtol=1e-10
        )
        np.testing.assert_allclose(sde.alpha_ratio_sq(t, dt), r**2, rtol=1e-12)
        small = 1e-5
        f, g = sde.discretize(x, t, small)
        drift, diff = sde.sde(x, t)
        np.testing.assert_allclose(f / small, drift, rtol=1e-3, atol=1e-9)
        np.testing.assert_allclose(g**2 / small, diff**2, rtol=1e-3)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
def test_transition_variance_is_accurate_for_tiny_steps_in_float32(sde):
    """`G^2 = sigma_t^2 - r^2 sigma_s^2` cancels for tiny `dt`; the expm1 form must not.

    The float64 reference is the plain difference formula evaluated at the same float32 inputs
    (where cancellation costs only ~1e-16 / dt of relative precision).
    """
    t = np.array([0.05, 0.5, 0.95], np.float32)
    dt = np.array([1e-6, 1e-5, 1e-7], np.float32)
    _, g = sde.discretize(jnp.ones((3, 1), jnp.float32), jnp.asarray(t), jnp.asarray(dt))
    assert g.dtype == jnp.float32
    tn, dtn = t.astype(np.float64), dt.astype(np.float64)

    def la(s):
        return -0.25 * s**2 * (sde.beta_max - sde.beta_min) - 0.5 * s * sde.beta_min

    a2_t, a2_s = np.exp(2 * la(tn)), np.exp(2 * la(tn - dtn))
    var_t = 1 - a2_t if isinstance(sde, VPSDE) else (1 - a2_t) ** 2
    var_s = 1 - a2_s if isinstance(sde, VPSDE) else (1 - a2_s) ** 2
    ref = var_t - a2_t / a2_s * var_s
    np.testing.assert_allclose(np.asarray(g, np.float64) ** 2, ref, rtol=1e-5)
    with jax.enable_x64(True):
        np.testing.assert_allclose(
            sde._transition_var(jnp.asarray(tn), jnp.asarray(dtn)), ref, rtol=1e-9
        )


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_probability_flow_transports_a_gaussian(sde):
    """For `p_0 = N(0, s0^2 I)`, `p_t = N(0, v(t) I)` with `v = alpha^2 s0^2 + sigma^2`, the exact
    score is `-x / v`, and the PF-ODE velocity must be `x v'(t) / (2 v)` (the flow that maps
    `N(0, v(t))` to `N(0, v(t + dt))`). The reverse-SDE drift is `2 * pf - f`."""
    s0 = 0.7
    with jax.enable_x64(True):

        def v(t):
            return sde.alpha(t) ** 2 * s0**2 + sde.sigma(t) ** 2

        x = jnp.array([[0.3, -1.2], [2.0, 0.5], [-0.4, 0.1]])
        t = jnp.array([0.05, 0.4, 0.95])
        score = -x / v(t)[:, None]
        vel = sde.probability_flow_drift(score, x, t)
        dv = jax.vmap(jax.grad(v))(t)
        np.testing.assert_allclose(vel, x * (dv / (2 * v(t)))[:, None], rtol=1e-10)
        f, _ = sde.sde(x, t)
        np.testing.assert_allclose(sde.reverse_sde_drift(score, x, t), 2 * vel - f, rtol=1e-10)


def test_sdes_are_static_hashable_and_do_not_retrace():
    assert VPSDE() == VPSDE() and hash(VPSDE()) == hash(VPSDE())
    assert VPSDE() != SubVPSDE()
    assert jax.tree_util.tree_leaves(VESDE()) == []

    @jax.jit
    def f(sde, x):
        return sde.marginal_prob(x, 0.5)[0]

    x = jnp.ones((2, 2))
    f(VPSDE(), x)
    f(VPSDE(), x)
    assert f._cache_size() == 1
    f(VPSDE(beta_max=10.0), x)
    assert f._cache_size() == 2
    g = jax.jit(lambda x, sde: sde.sigma(x), static_argnums=1)
    np.testing.assert_allclose(g(jnp.float32(0.3), VESDE()), VESDE().sigma(0.3), rtol=1e-6)


def test_bad_sde_parameters_raise():
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-0.1)
    with pytest.raises(ValueError, match="beta_min"):
        SubVPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=0.0)
    with pytest.raises(ValueError, match="T must be positive"):
        VESDE(T=0.0)


def test_batch_broadcast():
    x = jnp.zeros((3, 4, 5))
    assert batch_broadcast(jnp.ones(3), x).shape == (3, 1, 1)
    assert batch_broadcast(jnp.float32(2.0), x).shape == ()
