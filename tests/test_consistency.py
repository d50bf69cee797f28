"""Consistency distillation: boundary condition, loss at the exact consistency function, and a
short distillation of the exact ring8 teacher into a one-step sampler."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from scorejax import consistency as cm
from scorejax import edm, edm_sampling, metrics
from scorejax.analytic import ring8
from scorejax.mode_metrics import mode_weights
from scorejax.models.mlp import ScoreMLP
from scorejax.paths import EDMPath

M, S, EPS = 0.3, 0.5, 0.002  # Gaussian data N(M, S^2 I) for the closed-form checks


def _gaussian_teacher(params, x, sigma):
    return M + (S**2 / (S**2 + sigma**2))[:, None] * (x - M)


def _exact_net(config, s=S):
    """The network `F` whose consistency function is the exact one of N(M, s^2 I):
    `f(x, t) = M + (x - M) sqrt((s^2 + eps^2) / (s^2 + t^2))` (the PF-ODE flow from t to eps)."""

    def net(params, x_in, c_noise):
        t = jnp.exp(4.0 * c_noise)
        c_skip, c_out, c_in, _ = config.coefficients(t)
        x = x_in / c_in[:, None]
        f = M + (x - M) * jnp.sqrt((s**2 + EPS**2) / (s**2 + t**2))[:, None]
        safe = jnp.where(c_out == 0, 1.0, c_out)[:, None]
        return jnp.where(c_out[:, None] == 0, 0.0, (f - c_skip[:, None] * x) / safe)

    return net


def test_boundary_condition_and_discretisation():
    config = cm.ConsistencyConfig()
    ts = np.asarray(config.time_steps(), np.float64)
    np.testing.assert_allclose(ts, np.asarray(edm_sampling.time_steps(18))[-2::-1], rtol=1e-6)
    np.testing.assert_allclose([ts[0], ts[-1]], [EPS, 80.0], rtol=1e-6)
    c_skip, c_out, _, _ = config.coefficients(jnp.asarray(EPS))
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    net = lambda params, x, c: 100.0 * jnp.ones_like(x)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    np.testing.assert_array_equal(cm.consistency_fn(net, None, x, EPS, config=config), x)
    with pytest.raises(ValueError, match="unknown metric"):
        cm.ConsistencyConfig(metric="lpips")
    with pytest.raises(ValueError, match="num_scales"):
        cm.ConsistencyConfig(num_scales=1)


def test_distances_and_ema():
    a = jnp.ones((2, 4))
    b = jnp.zeros((2, 4))
    np.testing.assert_allclose(cm.distance(a, b), [4.0, 4.0])
    c = 0.00054 * math.sqrt(4)
    np.testing.assert_allclose(
        cm.distance(a, b, metric="pseudo_huber"), math.sqrt(4 + c**2) - c, rtol=1e-6
    )
    grad = jax.grad(lambda a: cm.distance(a, a, metric="pseudo_huber").sum())(a)
    assert np.all(np.isfinite(grad))
    target = cm.ema_update({"w": jnp.zeros(3)}, {"w": jnp.ones(3)}, decay=0.95)
    np.testing.assert_allclose(target["w"], 0.05, rtol=1e-6)


def test_cd_loss_vanishes_at_the_exact_consistency_function():
    """With the exact `f` of a Gaussian and its exact teacher, only the Heun step's local error
    remains: `O(h^3)` per step, so the squared-L2 loss falls about 2^6 = 64x when N doubles
    (measured 2.9e-5, 3.9e-7, 4.9e-9 at N = 18, 36, 72), whereas the exact `f` of the wrong
    Gaussian (std 1 instead of 0.5) costs 200x more at N = 18."""
    with jax.enable_x64(True):
        x0 = M + S * jax.random.normal(jax.random.key(1), (512, 2))

        def loss(config, s, key):
            net = _exact_net(config, s)
            return cm.cd_loss(
                net,
                None,
                x0,
                key,
                target_params=None,
                teacher_fn=_gaussian_teacher,
                teacher_params=None,
                config=config,
            )[0]

        run = jax.jit(loss, static_argnums=(0, 1))
        key = jax.random.key(2)
        coarse = float(run(cm.ConsistencyConfig(num_scales=18), S, key))
        fine = float(run(cm.ConsistencyConfig(num_scales=36), S, key))
        wrong = float(run(cm.ConsistencyConfig(num_scales=18), 1.0, key))
        wrong_fine = float(run(cm.ConsistencyConfig(num_scales=36), 1.0, key))
    assert coarse / fine > 40, (coarse, fine)
    # A wrong f is inconsistent at O(h) per step: its loss falls only ~4x per doubling.
    assert coarse < wrong / 50 and wrong / wrong_fine < 8, (coarse, wrong, wrong_fine)


def test_cd_loss_gradients_flow_only_to_the_online_network():
    config = cm.ConsistencyConfig(num_scales=10, metric="pseudo_huber", weighting="ict")
    net = lambda w, x_in, c: jnp.tanh(x_in @ w[:-1] + c[:, None] * w[-1])
    with jax.enable_x64(True):
        x0 = M + S * jax.random.normal(jax.random.key(3), (8, 2))
        w = 0.5 * jax.random.normal(jax.random.key(4), (3, 2))
        w_target = 0.5 * jax.random.normal(jax.random.key(5), (3, 2))

        def loss(w, w_target):
            key = jax.random.key(6)
            return cm.cd_loss(
                net,
                w,
                x0,
                key,
                target_params=w_target,
                teacher_fn=_gaussian_teacher,
                teacher_params=None,
                config=config,
            )[0]

        check_grads(jax.jit(lambda w: loss(w, w_target)), (w,), order=1)
        g_target = jax.jit(jax.grad(loss, argnums=1))(w, w_target)
        np.testing.assert_array_equal(g_target, 0.0)
        eager = loss(w, w_target)
        np.testing.assert_allclose(jax.jit(loss)(w, w_target), eager, rtol=1e-12)


def test_distilling_the_exact_ring_teacher_gives_one_step_samples_of_the_mixture():
    """800 Adam steps (batch 256, N = 18, EMA 0.95) of CD from the exact EDM-path mixture
    denoiser: one-step MMD^2 to the mixture falls by more than 50x (measured ~100-250x)."""
    gm = ring8()
    teacher = lambda params, x, sigma: gm.denoiser(x, sigma, sde=EDMPath())
    config = cm.ConsistencyConfig()
    model = ScoreMLP(hidden_sizes=(64, 64), embed_dim=16, fourier_scale=1.0)
    apply_fn = lambda params, x_in, c_noise: model.apply(params, x_in, c_noise)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    tx = optax.adam(1e-3)

    @jax.jit
    def train(params, key):
        def step(carry, k):
            params, target, opt = carry
            k_data, k_loss = jax.random.split(k)
            grads = jax.grad(
                lambda p: cm.cd_loss(
                    apply_fn,
                    p,
                    gm.sample(k_data, 256),
                    k_loss,
                    target_params=target,
                    teacher_fn=teacher,
                    teacher_params=None,
                    config=config,
                )[0]
            )(params)
            updates, opt = tx.update(grads, opt, params)
            params = optax.apply_updates(params, updates)
            return (params, cm.ema_update(target, params, decay=0.95), opt), None

        carry = (params, params, tx.init(params))
        (params, _, _), _ = jax.lax.scan(step, carry, jax.random.split(key, 800))
        return params

    n = 2000
    ref = gm.sample(jax.random.key(9), n)
    bandwidths = metrics.median_bandwidth(ref, gm.sample(jax.random.key(10), n)) * jnp.asarray(
        (0.25, 0.5, 1.0, 2.0, 4.0)
    )
    sample = jax.jit(
        lambda p: cm.one_step_sample(apply_fn, p, jax.random.key(11), shape=(n, 2), config=config)
    )
    before, nfe = sample(params)
    trained = train(params, jax.random.key(12))
    after, _ = sample(trained)
    assert int(nfe) == 1
    mmd_before = float(metrics.mmd2_rbf(before, ref, bandwidths=bandwidths))
    mmd_after = float(metrics.mmd2_rbf(after, ref, bandwidths=bandwidths))
    assert mmd_after < mmd_before / 50, (mmd_before, mmd_after)
    weights = np.asarray(mode_weights(after, gm.means))
    np.testing.assert_allclose(weights, 1 / 8, atol=0.04)
    x2, nfe2 = cm.multistep_sample(
        apply_fn, trained, jax.random.key(13), shape=(8, 2), times=(0.8,), config=config
    )
    assert x2.shape == (8, 2) and nfe2 == 2 and np.all(np.isfinite(x2))


def test_network_from_denoiser_starts_the_student_as_the_teacher():
    """Read off an EDM-preconditioned denoiser, the network is that denoiser's own `F`; the
    consistency function built on it is `[c_skip - (1 - eps/t) c_skip^E] x + (1 - eps/t) D`,
    so it equals `D` up to `O(eps / t)` and `x` at `t = eps`; the one-step generator of the
    exact ring denoiser returns its posterior mean at T = 80, `mean + (Cov / T) z` to first
    order in `1 / T`."""
    config = cm.ConsistencyConfig()
    pre = edm.Preconditioning("edm", sigma_data=config.sigma_data)
    raw = lambda w, x_in, c_noise: jnp.tanh(x_in @ w + c_noise[:, None])
    denoiser = edm.precondition(raw, preconditioning=pre)
    net = cm.network_from_denoiser(denoiser, config=config)
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(0), (2, 2), jnp.float64)
        x = 3.0 * jax.random.normal(jax.random.key(1), (64, 2), jnp.float64)
        t = jnp.exp(jax.random.uniform(jax.random.key(2), (64,), jnp.float64, -6.0, 4.38))
        _, _, c_in, c_noise = config.coefficients(t)
        x_in = c_in[:, None] * x
        np.testing.assert_allclose(net(w, x_in, c_noise), raw(w, x_in, c_noise), rtol=1e-10)
        f = cm.consistency_fn(net, w, x, t, config=config)
        c_skip, _, _, _ = config.coefficients(t)
        c_skip_edm, _, _, _ = pre.coefficients(t)
        shrink = (1.0 - EPS / t)[:, None]
        want = (c_skip - shrink[:, 0] * c_skip_edm)[:, None] * x + shrink * denoiser(w, x, t)
        np.testing.assert_allclose(f, want, rtol=1e-10, atol=1e-12)
        at_eps = cm.consistency_fn(net, w, x, jnp.full((64,), EPS), config=config)
        np.testing.assert_allclose(at_eps, x, rtol=1e-12)
    gm = ring8()
    exact = cm.network_from_denoiser(
        lambda p, x, s: gm.denoiser(x, s, sde=EDMPath()), config=config
    )
    generate = cm.one_step_generator(exact, config=config)
    z = jax.random.normal(jax.random.key(3), (512, 2))
    x0 = generate(None, z)
    pi = np.exp(np.asarray(gm.log_weights))[:, None]
    means = np.asarray(gm.means)
    mean = np.sum(pi * means, 0)
    var = np.sum(pi * (means**2 + np.asarray(gm.stds) ** 2), 0) - mean**2  # diagonal for ring8
    np.testing.assert_allclose(np.asarray(x0), mean + var / config.sigma_max * z, atol=2e-3)


def test_cd_loss_reductions_agree():
    """sum == B * mean, and "none" holds the per-example values both reduce (same key)."""
    config = cm.ConsistencyConfig(num_scales=10)
    net = lambda params, x_in, c_noise: params * x_in
    x0 = jax.random.normal(jax.random.key(0), (8, 2))
    key = jax.random.key(1)

    def loss(reduction):
        return cm.cd_loss(
            net,
            0.3,
            x0,
            key,
            target_params=0.1,
            teacher_fn=_gaussian_teacher,
            teacher_params=None,
            config=config,
            reduction=reduction,
        )

    per, aux = loss("none")
    assert isinstance(aux, cm.CDAux) and per.shape == (8,) and aux.t_cur.shape == (8,)
    assert bool(jnp.all(aux.t_next > aux.t_cur)) and float(jnp.min(per)) > 0
    np.testing.assert_allclose(loss("mean")[0], jnp.mean(per), rtol=1e-6)
    np.testing.assert_allclose(loss("sum")[0], 8 * loss("mean")[0], rtol=1e-6)
