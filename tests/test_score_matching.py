"""DSM loss: exact-score identities, weightings, parametrisations, jit/grad, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.test_util import check_grads

from scorejax import analytic
from scorejax import score_matching as sm
from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)]
IDS = ["vp", "subvp", "ve"]
TIMES = (0.05, 0.3, 0.8)


def mixture() -> analytic.GaussianMixture:
    means = np.array([[-1.0, 0.5], [1.5, -0.5]])
    return analytic.GaussianMixture(np.array([0.6, 0.4]), means, np.array([[0.4, 0.3], [0.5, 0.6]]))


def exact_score_fn(gm, sde):
    return lambda params, x, t: gm.marginal_score(x, t, sde=sde)


def blocked_times(n: int) -> jnp.ndarray:
    """`n` copies of each time in TIMES, so one call evaluates every fixed-t identity."""
    return jnp.repeat(jnp.asarray(TIMES), n)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_dsm_identities_at_the_exact_score(sde):
    """At fixed t (loss summed over the d dims, lambda = sigma^2):

    E[loss(s*)] = d - sigma^2 E||s*(x_t)||^2,
    E[loss(s* + delta) - loss(s*)] = sigma^2 E||delta(x_t)||^2,

    the second with `delta = (c + B x) / sigma_t`, whose expectation is closed-form.

    Tolerances are 5 Monte Carlo standard errors, estimated from the samples themselves.
    """
    n, d = 60_000, 2
    c = jnp.array([0.3, -0.2])
    bmat = jnp.array([[0.2, 0.1], [-0.1, 0.3]])

    @jax.jit
    def run(key):
        gm = mixture()
        k_data, k_loss, k_ref = jax.random.split(key, 3)
        x0 = gm.sample(k_data, n * len(TIMES))
        t = blocked_times(n)
        s_star = exact_score_fn(gm, sde)

        def s_pert(params, x, t):
            # delta = (c + B x) / sigma_t keeps sigma_t^2 E||delta||^2 resolvable at every t.
            return s_star(params, x, t) + (c + x @ bmat.T) / sde.sigma(t)[:, None]

        per, _ = sm.dsm_loss_at_t(s_star, None, x0, k_loss, sde=sde, t=t, reduction="none")
        per_p, _ = sm.dsm_loss_at_t(s_pert, None, x0, k_loss, sde=sde, t=t, reduction="none")
        # Independent draws of x_t for E||s*||^2.
        xt_ref = gm.marginal_sample(k_ref, n * len(TIMES), t, sde=sde)
        sq_ref = jnp.sum(gm.marginal_score(xt_ref, t, sde=sde) ** 2, axis=-1)
        return per, per_p - per, sq_ref

    with jax.enable_x64(True):
        loss, diff, sq_ref = (np.asarray(a).reshape(len(TIMES), n) for a in run(jax.random.key(0)))
        gm = mixture()
        for i, t in enumerate(TIMES):
            a, s = float(sde.alpha(t)), float(sde.sigma(t))
            target = d - s**2 * sq_ref[i].mean()
            se = np.sqrt(loss[i].var() / n + s**4 * sq_ref[i].var() / n)
            assert abs(loss[i].mean() - target) < 5 * se, (t, loss[i].mean(), target, se)
            # E||c + B x_t||^2 in closed form from the marginal's mean and covariance.
            mu = a * np.asarray(gm.mean())
            cov = a**2 * np.asarray(gm.covariance()) + s**2 * np.eye(d)
            shift = np.asarray(c) + np.asarray(bmat) @ mu
            e_delta2 = shift @ shift + np.trace(np.asarray(bmat) @ cov @ np.asarray(bmat).T)
            se_diff = diff[i].std() / np.sqrt(n)
            assert abs(diff[i].mean() - e_delta2) < 5 * se_diff, (t, diff[i].mean(), e_delta2)
            assert e_delta2 > 10 * se_diff  # the perturbation is resolvable


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_likelihood_weighting_is_g2_over_sigma2_times_sigma2_weighting(sde):
    with jax.enable_x64(True):
        gm = mixture()
        x0 = gm.sample(jax.random.key(1), 64)
        t = jnp.linspace(0.01, 1.0, 64)
        sf = exact_score_fn(gm, sde)

        def tilted(params, x, t):
            return sf(params, x, t) + 0.5  # away from s*, where both losses vanish differently

        @jax.jit
        def both(x0, t):
            key = jax.random.key(2)
            sig, _ = sm.dsm_loss_at_t(tilted, None, x0, key, sde=sde, t=t, reduction="none")
            lik, _ = sm.dsm_loss_at_t(
                tilted, None, x0, key, sde=sde, t=t, weighting="likelihood", reduction="none"
            )
            return sig, lik

        sig, lik = both(x0, t)
        ratio = sde.diffusion(t) ** 2 / sde.sigma(t) ** 2
        np.testing.assert_allclose(lik, ratio * sig, rtol=1e-10)


def test_dsm_loss_jit_equals_eager_and_reductions():
    sde = VPSDE()
    x0 = mixture().sample(jax.random.key(3), 128)
    params = jnp.array([[-1.0, 0.1], [0.2, -0.9]])

    def sf(p, x, t):
        return x @ p

    key = jax.random.key(4)
    loss, aux = sm.dsm_loss(sf, params, x0, key, sde=sde)
    assert isinstance(aux, sm.DSMAux)
    jitted = jax.jit(sm.dsm_loss, static_argnums=0, static_argnames=("sde", "reduction"))
    loss_j, aux_j = jitted(sf, params, x0, key, sde=sde)
    np.testing.assert_allclose(loss_j, loss, rtol=1e-5)
    np.testing.assert_allclose(aux_j.t, aux.t, rtol=1e-6)
    per, aux_none = sm.dsm_loss(sf, params, x0, key, sde=sde, reduction="none")
    per_j, _ = jitted(sf, params, x0, key, sde=sde, reduction="none")
    # Per-example losses near 0 come from cancellation in sigma s + z: compare on their scale.
    np.testing.assert_allclose(per_j, per, rtol=1e-5, atol=1e-6)
    assert per.shape == (128,) and aux.t.shape == (128,)
    np.testing.assert_allclose(aux_none.t, aux.t)
    # The reductions agree: mean of the per-example values, and sum == B * mean.
    np.testing.assert_allclose(loss, jnp.mean(per), rtol=1e-6)
    loss_sum, _ = sm.dsm_loss(sf, params, x0, key, sde=sde, reduction="sum")
    np.testing.assert_allclose(loss_sum, 128 * loss, rtol=1e-5)
    np.testing.assert_allclose(loss_sum, jnp.sum(per), rtol=1e-5)


def test_sampled_times_are_uniform_on_t_min_T():
    sde = VESDE()
    x0 = jnp.zeros((4000, 1))
    _, aux = sm.dsm_loss(lambda p, x, t: -x, None, x0, jax.random.key(5), sde=sde, t_min=0.2)
    t = np.asarray(aux.t)
    assert t.min() >= 0.2 and t.max() <= 1.0
    assert scipy.stats.kstest(t, scipy.stats.uniform(0.2, 0.8).cdf).pvalue > 1e-4


def test_dsm_loss_gradients():
    """`check_grads` through the loss w.r.t. the parameters of an affine score model."""
    sde = SubVPSDE()
    with jax.enable_x64(True):
        x0 = mixture().sample(jax.random.key(6), 16)
        params = {"w": jnp.array([[-1.0, 0.2], [0.1, -0.8]]), "b": jnp.array([0.3, -0.1])}

        def score_fn(p, x, t):
            return x @ p["w"] + p["b"] * t[:, None]

        # The "likelihood" weighting differs by a per-example factor (tested exactly above).
        @jax.jit
        def f(p):
            return sm.dsm_loss(score_fn, p, x0, jax.random.key(7), sde=sde)[0]

        check_grads(f, (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_eps_and_x0_parametrisations_give_the_exact_score(sde):
    with jax.enable_x64(True):
        gm = mixture()
        x = jnp.asarray(np.random.default_rng(8).normal(size=(10, 2)))
        t = jnp.linspace(0.02, 0.95, 10)
        s_star = gm.marginal_score(x, t, sde=sde)

        def eps_fn(params, x, t):
            return -sde.sigma(t)[:, None] * gm.marginal_score(x, t, sde=sde)

        def x0_fn(params, x, t):
            return gm.denoiser(x, t, sde=sde)

        from_eps = sm.score_from_eps(eps_fn, sde=sde)
        np.testing.assert_allclose(from_eps(None, x, t), s_star, rtol=1e-10)
        np.testing.assert_allclose(
            sm.score_from_x0(x0_fn, sde=sde)(None, x, t), s_star, rtol=1e-8, atol=1e-10
        )
        np.testing.assert_allclose(
            sm.make_score_fn(x0_fn, sde=sde, parametrization="x0")(None, x, t),
            s_star,
            rtol=1e-8,
            atol=1e-10,
        )
        assert sm.make_score_fn(eps_fn, sde=sde, parametrization="score") is eps_fn


def test_bad_inputs_raise():
    sde = VPSDE()
    x0 = jnp.ones((8, 2))
    key = jax.random.key(0)

    def sf(p, x, t):
        return -x

    for t_min in (0.0, -1e-3, 1.0):
        with pytest.raises(ValueError, match="t_min must satisfy 0 < t_min < T"):
            sm.dsm_loss(sf, None, x0, key, sde=sde, t_min=t_min)
    with pytest.raises(ValueError, match="unknown weighting 'sigma'"):
        sm.dsm_loss(sf, None, x0, key, sde=sde, weighting="sigma")
    with pytest.raises(ValueError, match="reduction must be one of"):
        sm.dsm_loss(sf, None, x0, key, sde=sde, reduction="avg")
    with pytest.raises(ValueError, match=r"x0 must be a non-empty batch \[B, ...\]"):
        sm.dsm_loss(sf, None, jnp.ones(8), key, sde=sde)
    with pytest.raises(ValueError, match="score_fn returned shape"):
        sm.dsm_loss(lambda p, x, t: x[:, :1], None, x0, key, sde=sde)
    with pytest.raises(ValueError, match="unknown parametrization 'v'"):
        sm.make_score_fn(sf, sde=sde, parametrization="v")
