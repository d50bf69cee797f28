"""Flow matching on the linear path: loss, samplers and likelihood against the exact mixture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from scorejax import flow_matching as fm
from scorejax import metrics
from scorejax import parametrisation as par
from scorejax.analytic import ring8
from scorejax.likelihood import log_likelihood
from scorejax.mode_metrics import mode_weights
from scorejax.paths import LinearPath

N_SAMPLES = 2000
MULTIPLIERS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
LINEAR = LinearPath()


def _exact_velocity(gm, path=LINEAR):
    def velocity_fn(params, x, t):
        x0 = gm.denoiser(x, t, sde=path)
        return par.convert(x, t, x0, path=path, source="x0", target="velocity")

    return velocity_fn


@pytest.fixture(scope="module")
def ring_reference():
    """True ring8 samples, RBF bandwidths from two true sets and the two-true-sets MMD^2 level."""
    gm = ring8()
    ref = gm.sample(jax.random.key(77), N_SAMPLES)
    other = gm.sample(jax.random.key(78), N_SAMPLES)
    bandwidths = metrics.median_bandwidth(ref, other) * jnp.asarray(MULTIPLIERS)
    nulls = [
        float(metrics.mmd2_rbf(gm.sample(jax.random.key(1000 + i), N_SAMPLES), ref,
                               bandwidths=bandwidths))
        for i in range(6)
    ]
    return ref, bandwidths, float(np.mean(nulls)), float(np.std(nulls))


def test_fm_loss_matches_the_gaussian_residual_variance_and_differentiates():
    """For `x0 ~ N(0, s^2 I_d)`, `x_t = (1 - t) x0 + t eps` and `u = eps - x0`, the exact velocity
    is `(C / V) x` with `V = (1 - t)^2 s^2 + t^2`, `C = t - (1 - t) s^2`, and the loss at it is
    `d ((1 + s^2) - C^2 / V)` in expectation given `t` (a scaled chi^2_d)."""
    s, d, b = 0.6, 4, 4096
    x0 = s * jax.random.normal(jax.random.key(0), (b, d))

    def coeffs(t):
        var = (1 - t) ** 2 * s**2 + t**2
        cov = t - (1 - t) * s**2
        return var, cov

    def exact(params, x, t):
        var, cov = coeffs(t)
        return (cov / var)[:, None] * x

    times = {}
    for kind in fm.TIME_DISTRIBUTIONS:
        per_example, aux = jax.jit(
            lambda key, kind=kind: fm.fm_loss(
                exact, None, x0, key, time_dist=kind, reduction="none"
            )
        )(jax.random.key(1))
        var, cov = coeffs(aux.t)
        ratio = per_example / (d * ((1 + s**2) - cov**2 / var))
        assert abs(float(jnp.mean(ratio)) - 1.0) < 4 * np.sqrt(2 / d / b), kind
        times[kind] = np.asarray(aux.t, np.float64)
        assert times[kind].min() > 0 and times[kind].max() < 1
    assert abs(times["uniform"].mean() - 0.5) < 4 / np.sqrt(12 * b)
    logits = np.log(times["logit_normal"] / (1 - times["logit_normal"]))
    assert abs(logits.mean()) < 4 / np.sqrt(b) and abs(logits.std() - 1) < 4 / np.sqrt(2 * b)
    # jit == eager; gradients of a linear velocity model.
    eager = fm.fm_loss(exact, None, x0[:8], jax.random.key(2))[0]
    jitted = jax.jit(lambda: fm.fm_loss(exact, None, x0[:8], jax.random.key(2))[0])()
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    net = lambda w, x, t: x @ w[:-1] + t[:, None] * w[-1]
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(3), (d + 1, d))
        x64 = jnp.asarray(x0[:8], jnp.float64)
        check_grads(jax.jit(lambda w: fm.fm_loss(net, w, x64, jax.random.key(4))[0]), (w,), order=1)
    with pytest.raises(ValueError, match="unknown time distribution"):
        fm.fm_loss(exact, None, x0, jax.random.key(5), time_dist="beta")


@pytest.mark.parametrize(("method", "num_steps", "nfe"), [("euler", 100, 100), ("heun", 25, 49)])
def test_exact_mixture_velocity_gives_the_mixture(ring_reference, method, num_steps, nfe):
    gm = ring8()
    sampler = fm.euler_sampler if method == "euler" else fm.heun_sampler
    velocity_fn = _exact_velocity(gm)
    x, got_nfe = jax.jit(
        lambda key: sampler(velocity_fn, None, key, shape=(N_SAMPLES, 2), num_steps=num_steps)
    )(jax.random.key(6))
    assert int(got_nfe) == nfe
    ref, bandwidths, null_mean, null_std = ring_reference
    mmd = float(metrics.mmd2_rbf(x, ref, bandwidths=bandwidths))
    assert mmd < null_mean + 4 * null_std, (mmd, null_mean, null_std)
    weights = np.asarray(mode_weights(x, gm.means))
    np.testing.assert_allclose(weights, 1 / 8, atol=4 * np.sqrt(7 / 64 / N_SAMPLES))
    eager, _ = sampler(velocity_fn, None, jax.random.key(6), shape=(4, 2), num_steps=5)
    jitted = jax.jit(lambda key: sampler(velocity_fn, None, key, shape=(4, 2), num_steps=5).samples)
    np.testing.assert_allclose(eager, jitted(jax.random.key(6)), rtol=1e-5, atol=1e-6)


def test_pf_ode_likelihood_of_the_velocity_equals_the_analytic_density():
    """The velocity, turned into the path's score, plugs into `scorejax.likelihood`: the PF-ODE
    log density at `t_min` equals the exact mixture marginal there."""
    gm = ring8()
    path = LinearPath(T=1.0 - 1e-3)
    t_min = 1e-3
    score_fn = fm.score_from_velocity(_exact_velocity(gm, path), path=path)
    with jax.enable_x64(True):
        x = gm.marginal_sample(jax.random.key(7), 6, t_min, sde=path)

        @jax.jit
        def run(x):
            return log_likelihood(
                score_fn,
                None,
                x,
                jax.random.key(8),
                sde=path,
                divergence="exact",
                t_min=t_min,
                rtol=1e-7,
                atol=1e-7,
                prior_logp=lambda z: gm.marginal_log_prob(z, path.T, sde=path),
            )[0]

        logp = run(x)
        want = gm.marginal_log_prob(x, t_min, sde=path)
        np.testing.assert_allclose(logp, want, rtol=1e-5, atol=1e-5)


def test_score_and_velocity_conversions_and_integrator():
    gm = ring8()
    path = LinearPath()
    with jax.enable_x64(True):
        t = jnp.array([0.2, 0.5, 0.8])
        x = gm.marginal_sample(jax.random.key(9), 3, t, sde=path)

        @jax.jit
        def both(x, t):
            v = _exact_velocity(gm)(None, x, t)
            score = fm.score_from_velocity(_exact_velocity(gm))(None, x, t)
            v_back = fm.velocity_from_score(lambda p, x, t: gm.marginal_score(x, t, sde=path))(
                None, x, t
            )
            return v, score, v_back

        v, score, v_back = both(x, t)
        np.testing.assert_allclose(score, gm.marginal_score(x, t, sde=path), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(v_back, v, rtol=1e-8, atol=1e-8)
        # Heun is 2nd order on dx/dt = -x (the integrator the samplers share).
        run = jax.jit(
            lambda ts: fm.integrate(lambda p, x, t: -x, None, jnp.ones((1, 1)), ts=ts)[0][0, 0],
        )
        errs = [abs(float(run(jnp.linspace(0.0, 1.0, n + 1))) - np.exp(-1)) for n in (10, 20, 40)]
        np.testing.assert_allclose(np.log2(np.array(errs[:-1]) / errs[1:]), 2.0, atol=0.1)
    with pytest.raises(ValueError, match="unknown method"):
        fm.integrate(lambda p, x, t: x, None, jnp.ones((1, 1)), ts=jnp.ones(2), method="rk4")


def test_velocity_from_denoiser_is_the_exact_velocity_and_finite_at_t_one():
    """The exact mixture denoiser on EDM's path, read in linear-path coordinates, gives the exact
    linear-path velocity below the cap `t_c = 80 / 81`; above it (up to `t = 1`, where the EDM
    noise level is infinite) the velocity is off by minus the first-order posterior-mean shift
    over `t`, `Var (x / t) ((1 - t_c) / t_c^2 - (1 - t) / t^2)` (the ring's covariance is
    `Var I`)."""
    from scorejax.paths import EDMPath

    gm = ring8()
    edm_denoiser = lambda params, x, sigma: gm.denoiser(x, sigma, sde=EDMPath())
    velocity = fm.velocity_from_denoiser(edm_denoiser, sigma_max=80.0)
    exact = _exact_velocity(gm)
    with jax.enable_x64(True):
        x = 2.0 * jax.random.normal(jax.random.key(0), (256, 2), jnp.float64)
        t = jax.random.uniform(jax.random.key(1), (256,), jnp.float64, 0.01, 0.98)
        np.testing.assert_allclose(velocity(None, x, t), exact(None, x, t), rtol=1e-9, atol=1e-9)
        t_high = jnp.full((256,), 0.999, jnp.float64)
        err = np.asarray(velocity(None, x, t_high) - exact(None, x, t_high))
        pi, means = np.exp(np.asarray(gm.log_weights))[:, None], np.asarray(gm.means)
        var = np.sum(pi * (means**2 + np.asarray(gm.stds) ** 2), 0)  # the mixture mean is 0
        t_c = 80.0 / 81.0
        shift = var * np.asarray(x) / 0.999 * ((1 - t_c) / t_c**2 - 0.001 / 0.999**2)
        np.testing.assert_allclose(err, -shift, rtol=0.02, atol=1e-4)  # v = (x - x0_hat) / t
        at_one = velocity(None, x, jnp.ones((256,), jnp.float64))
        assert np.all(np.isfinite(np.asarray(at_one)))


def test_fm_loss_reductions_agree():
    """sum == B * mean, and "none" holds the per-example ||v - (eps - x0)||^2 both reduce."""
    x0 = jax.random.normal(jax.random.key(0), (8, 3))
    zero = lambda params, x, t: jnp.zeros_like(x)
    key = jax.random.key(1)
    per, aux = fm.fm_loss(zero, None, x0, key, reduction="none")
    mean, _ = fm.fm_loss(zero, None, x0, key)
    total, _ = fm.fm_loss(zero, None, x0, key, reduction="sum")
    assert isinstance(aux, fm.FMAux) and per.shape == (8,) and aux.t.shape == (8,)
    eps = jax.random.normal(jax.random.split(key)[1], x0.shape)
    np.testing.assert_allclose(per, jnp.sum((eps - x0) ** 2, -1), rtol=1e-5)
    np.testing.assert_allclose(mean, jnp.mean(per), rtol=1e-6)
    np.testing.assert_allclose(total, 8 * mean, rtol=1e-6)
