"""EDM: preconditioning against the oracle, the training loss, time steps and the Heun samplers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from scorejax import edm, edm_sampling, metrics
from scorejax.analytic import ring8
from scorejax.mode_metrics import mode_weights
from scorejax.paths import EDMPath
from scorejax.score_sdes import VESDE, VPSDE

N_SAMPLES = 2000
MULTIPLIERS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)


def _ring_denoiser():
    gm = ring8()
    return gm, lambda params, x, sigma: gm.denoiser(x, sigma, sde=EDMPath())


@pytest.fixture(scope="module")
def ring_reference():
    """A true ring8 sample set, RBF bandwidths (median heuristic on true sets) and the level of
    MMD^2 between two true sets of `N_SAMPLES` points (mean and std over 6 pairs)."""
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


def _assert_reproduces_mixture(gm, x, reference):
    ref, bandwidths, null_mean, null_std = reference
    mmd = float(metrics.mmd2_rbf(x, ref, bandwidths=bandwidths))
    assert mmd < null_mean + 4 * null_std, (mmd, null_mean, null_std)
    weights = np.asarray(mode_weights(x, gm.means))
    se = np.sqrt(1 / 8 * 7 / 8 / x.shape[0])
    np.testing.assert_allclose(weights, 1 / 8, atol=4 * se)
    return mmd


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
def test_preconditioned_exact_network_gives_the_oracle_denoiser(kind):
    """`c_skip x + c_out F(c_in x; c_noise)` with the exact `F` of each column equals `D*`.

    `vp`: `F` is the exact noise prediction of the VP SDE (b_min 0.1, b_d 19.9) at the VP input
    `c_in x` and time `c_noise / (M - 1)`; `ve`: `F = sigma * score`, with `sigma = 2 e^c_noise`;
    `edm`: `F = (D* - c_skip x) / c_out`, evaluated from `(c_in x, c_noise)` alone.
    """
    gm = ring8()
    path = EDMPath()
    pre = edm.Preconditioning(kind)
    vp = VPSDE(beta_min=0.1, beta_max=20.0)

    def exact_net(params, x_in, c_noise):
        if kind == "vp":
            t = c_noise / (pre.vp_num_steps - 1)
            return -vp.sigma(t)[:, None] * gm.marginal_score(x_in, t, sde=vp)
        if kind == "ve":
            sigma = 2.0 * jnp.exp(c_noise)
            return sigma[:, None] * gm.marginal_score(x_in, sigma, sde=path)
        sigma = jnp.exp(4.0 * c_noise)
        c_skip, c_out, c_in, _ = pre.coefficients(sigma)
        x = x_in / c_in[:, None]
        return (gm.denoiser(x, sigma, sde=path) - c_skip[:, None] * x) / c_out[:, None]

    with jax.enable_x64(True):
        sigma = jnp.array([0.003, 0.05, 0.4, 1.0, 3.0, 20.0, 79.0])
        x = gm.marginal_sample(jax.random.key(0), 7, sigma, sde=path)
        got = jax.jit(edm.precondition(exact_net, preconditioning=pre))(None, x, sigma)
        np.testing.assert_allclose(got, gm.denoiser(x, sigma, sde=path), rtol=1e-8, atol=1e-8)


def test_edm_column_gives_the_network_a_unit_variance_target():
    """EDM App. B.6: for data of std sigma_data, `F_target = (x0 - c_skip x) / c_out` and the
    input `c_in x` have unit variance at every sigma."""
    sd = 0.5
    pre = edm.Preconditioning("edm", sigma_data=sd)
    with jax.enable_x64(True):
        sigma = jnp.logspace(-3, 2, 11)
        c_skip, c_out, c_in, _ = pre.coefficients(sigma)
        var_target = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
        np.testing.assert_allclose(var_target, 1.0, rtol=1e-12)
        np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown preconditioning"):
        edm.Preconditioning("iddpm")


@pytest.mark.parametrize("path", [VPSDE(), VESDE(), EDMPath()], ids=["vp", "ve", "edm"])
def test_models_of_any_path_convert_to_and_from_the_edm_denoiser(path):
    gm = ring8()
    with jax.enable_x64(True):
        sigma = jnp.array([0.02, 0.3, 1.5, 9.0])
        x = gm.marginal_sample(jax.random.key(1), 4, sigma, sde=EDMPath())
        score_fn = lambda params, x, t: gm.marginal_score(x, t, sde=path)
        d = jax.jit(edm.to_edm_denoiser(score_fn, path=path, source="score"))
        np.testing.assert_allclose(
            d(None, x, sigma), gm.denoiser(x, sigma, sde=EDMPath()), rtol=1e-8, atol=1e-8
        )
        t = jnp.array([0.1, 0.4, 0.7, 0.9]) * path.T
        xt = gm.marginal_sample(jax.random.key(2), 4, t, sde=path)
        exact_d = lambda params, x, s: gm.denoiser(x, s, sde=EDMPath())
        back = jax.jit(edm.from_edm_denoiser(exact_d, path=path, target="score"))(None, xt, t)
        np.testing.assert_allclose(back, gm.marginal_score(xt, t, sde=path), rtol=1e-7, atol=1e-7)


def test_time_steps_follow_eq_5():
    s = np.asarray(edm_sampling.time_steps(18), np.float64)
    assert s.shape == (19,) and s[-1] == 0.0 and np.all(np.diff(s) < 0)
    np.testing.assert_allclose([s[0], s[-2]], [80.0, 0.002], rtol=1e-6)
    i = np.arange(18)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1], ref, rtol=1e-6)
    with pytest.raises(ValueError, match="num_steps"):
        edm_sampling.time_steps(1)


def test_edm_loss_matches_the_gaussian_posterior_variance_and_differentiates():
    """For `x0 ~ N(0, s^2 I_d)` and the exact denoiser, `E[||D - x0||^2 | sigma] = d s^2 sigma^2 /
    (s^2 + sigma^2)`, so `per_example / (lambda(sigma) d s^2 sigma^2 / (s^2 + sigma^2))` has mean
    1 (chi^2_d / d, std sqrt(2 / d) per example)."""
    s, d, b = 0.7, 4, 4096
    x0 = s * jax.random.normal(jax.random.key(3), (b, d))

    def exact(params, x, sigma):
        return (s**2 / (s**2 + sigma**2))[:, None] * x

    loss_fn = jax.jit(lambda key: edm.edm_loss(exact, None, x0, key, reduction="none"))
    per_example, aux = loss_fn(jax.random.key(4))
    sigma = aux.sigma
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    ratio = per_example / (weight * d * s**2 * sigma**2 / (s**2 + sigma**2))
    assert abs(float(jnp.mean(ratio)) - 1.0) < 4 * np.sqrt(2 / d / b)
    log_sigma = np.log(np.asarray(sigma))
    assert abs(log_sigma.mean() + 1.2) < 4 * 1.2 / np.sqrt(b)
    assert abs(log_sigma.std() - 1.2) < 4 * 1.2 / np.sqrt(2 * b)
    # jit == eager, and the gradient of a preconditioned linear model is right.
    eager, _ = edm.edm_loss(exact, None, x0[:8], jax.random.key(5))
    jitted, _ = jax.jit(lambda: edm.edm_loss(exact, None, x0[:8], jax.random.key(5)))()
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    net = lambda w, x_in, c_noise: x_in @ w[:-1] + c_noise[:, None] * w[-1]
    denoiser = edm.precondition(net, preconditioning=edm.Preconditioning("edm"))
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(6), (d + 1, d))
        x64 = jnp.asarray(x0[:8], jnp.float64)
        check_grads(lambda w: edm.edm_loss(denoiser, w, x64, jax.random.key(7))[0], (w,), order=1)


def test_heun_at_18_steps_reproduces_the_mixture(ring_reference):
    gm, denoiser = _ring_denoiser()
    sample = jax.jit(
        lambda key: edm_sampling.heun_sampler(
            denoiser, None, key, shape=(N_SAMPLES, 2), num_steps=18
        )
    )
    x, nfe = sample(jax.random.key(8))
    assert int(nfe) == 35
    _assert_reproduces_mixture(gm, x, ring_reference)
    # jit == eager on a few samples.
    eager, nfe = edm_sampling.heun_sampler(
        denoiser, None, jax.random.key(8), shape=(4, 2), num_steps=6
    )
    jitted = jax.jit(
        lambda key: edm_sampling.heun_sampler(denoiser, None, key, shape=(4, 2), num_steps=6)[0]
    )
    np.testing.assert_allclose(eager, jitted(jax.random.key(8)), rtol=1e-5, atol=1e-6)
    assert nfe == 11


def test_stochastic_sampler_reproduces_the_mixture_and_reduces_to_heun(ring_reference):
    gm, denoiser = _ring_denoiser()
    kwargs = dict(num_steps=18, s_churn=10.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    sample = jax.jit(
        lambda key: edm_sampling.stochastic_sampler(
            denoiser, None, key, shape=(N_SAMPLES, 2), **kwargs
        )
    )
    x, nfe = sample(jax.random.key(9))
    assert int(nfe) == 35
    _assert_reproduces_mixture(gm, x, ring_reference)

    @jax.jit
    def small(key):
        heun, _ = edm_sampling.heun_sampler(denoiser, None, key, shape=(16, 2), num_steps=8)
        plain, _ = edm_sampling.stochastic_sampler(denoiser, None, key, shape=(16, 2), num_steps=8)
        churned, _ = edm_sampling.stochastic_sampler(
            denoiser, None, key, shape=(16, 2), num_steps=8, s_churn=5.0
        )
        return heun, plain, churned

    heun, plain, churned = small(jax.random.key(9))
    np.testing.assert_array_equal(heun, plain)
    assert not np.allclose(churned, heun)


def test_heun_converges_with_order_two_on_a_gaussian():
    """Data `N(m, s^2 I)`: `D(x; sigma) = m + s^2 / (s^2 + sigma^2) (x - m)`, and the PF-ODE
    `dx/dsigma = (x - D) / sigma` has the solution `x(sigma) - m ∝ sqrt(s^2 + sigma^2)`."""
    m, s = 0.3, 0.5

    def denoiser(params, x, sigma):
        return m + (s**2 / (s**2 + sigma**2))[:, None] * (x - m)

    errors = []
    with jax.enable_x64(True):
        x_start = 80.0 * jax.random.normal(jax.random.key(10), (64, 2))
        run = jax.jit(lambda x, sig: edm_sampling.heun_integrate(denoiser, None, x, sigmas=sig)[0])
        for n in (16, 32, 64, 128):
            sigmas = edm_sampling.time_steps(n, dtype=jnp.float64)[:-1]
            exact = m + (x_start - m) * np.sqrt((s**2 + 0.002**2) / (s**2 + 80.0**2))
            errors.append(float(jnp.max(jnp.abs(run(x_start, sigmas) - exact))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # The error falls about 4x per doubling: 2.20, 2.10, 2.05 measured.
    assert np.all((orders > 1.9) & (orders < 2.3)), (errors, orders)


def test_edm_loss_reductions_agree():
    """sum == B * mean, and "none" holds the per-example values both reduce (same key)."""
    x0 = jax.random.normal(jax.random.key(0), (8, 3))
    shrink = lambda params, x, sigma: params * x
    key = jax.random.key(1)
    per, aux = edm.edm_loss(shrink, 0.5, x0, key, reduction="none")
    mean, aux_mean = edm.edm_loss(shrink, 0.5, x0, key)
    total, _ = edm.edm_loss(shrink, 0.5, x0, key, reduction="sum")
    assert isinstance(aux, edm.EDMAux) and per.shape == (8,) and aux.sigma.shape == (8,)
    np.testing.assert_allclose(aux_mean.sigma, aux.sigma)
    # Each per-example value is lambda(sigma) ||D(x0 + sigma n) - x0||^2, recomputed here.
    noise = jax.random.normal(jax.random.split(key)[1], x0.shape)
    sigma = aux.sigma[:, None]
    want = (aux.sigma**2 + 0.25) / (aux.sigma * 0.5) ** 2 * jnp.sum(
        (0.5 * (x0 + sigma * noise) - x0) ** 2, -1
    )
    np.testing.assert_allclose(per, want, rtol=1e-5)
    np.testing.assert_allclose(mean, jnp.mean(per), rtol=1e-6)
    np.testing.assert_allclose(total, 8 * mean, rtol=1e-6)
