"""Two-layer ReLU NTK, the closed-form kernel GD path, and the early-stopping rule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax.ntk import TwoLayerReLU, empirical_ntk, regression_inputs, relu_ntk
from scorejax.ntk_gd import KernelGDPath, gd_train, kernel_complexity, rwy_stopping_step


def _problem(key, n, n_test=7, d=2):
    kx, kt, ky, kxt, ktt = jax.random.split(key, 5)
    u = regression_inputs(jax.random.normal(kx, (n, d)), jax.random.uniform(kt, (n,)))
    u_test = regression_inputs(jax.random.normal(kxt, (n_test, d)),
                               jax.random.uniform(ktt, (n_test,)))
    y = jnp.sin(u[:, :d] * 2.0) + 0.3 * jax.random.normal(ky, (n, d))
    return u, y, u_test


def test_antisymmetric_init_and_empirical_ntk_is_the_jacobian_gram():
    with jax.enable_x64(True):
        u, _, u_test = _problem(jax.random.key(0), 5)
        net = TwoLayerReLU.init(jax.random.key(1), width=32, in_dim=u.shape[1], out_dim=2,
                                dtype=jnp.float64)
        assert float(jnp.abs(net(u)).max()) < 1e-12  # the Hadamard groups cancel at init
        jac = lambda v: jax.jacobian(lambda w: net.apply(w, v))(net.w).reshape(len(v), 2, -1)
        ju, jv = jac(u), jac(u_test)
        full = jnp.einsum("aip,bjp->abij", ju, jv)  # [n, n_test, d, d]
        k = empirical_ntk(net, u, u_test)
        np.testing.assert_allclose(full[..., 0, 0], k, atol=1e-12)
        np.testing.assert_allclose(full[..., 1, 1], k, atol=1e-12)
        np.testing.assert_allclose(full[..., 0, 1], 0.0, atol=1e-12)


def test_empirical_ntk_converges_to_closed_form():
    with jax.enable_x64(True):
        u, _, u_test = _problem(jax.random.key(2), 6)
        width = 2**16
        net = TwoLayerReLU.init(jax.random.key(3), width=width, in_dim=u.shape[1], out_dim=1,
                                dtype=jnp.float64)
        with pytest.raises(ValueError, match="multiple of 2"):
            TwoLayerReLU.init(jax.random.key(3), width=7, in_dim=u.shape[1], out_dim=1)
        emp, exact = empirical_ntk(net, u, u_test), relu_ntk(u, u_test)
        scale = jnp.linalg.norm(u, axis=1)[:, None] * jnp.linalg.norm(u_test, axis=1)[None]
        # Each entry is a mean of `width` bounded terms: error O(scale / sqrt(width)).
        assert float(jnp.max(jnp.abs(emp - exact) / scale)) < 5.0 / math.sqrt(width)
        # On the diagonal theta = 0: K(u, u) = |u|^2 / 2.
        # (arccos near 1 costs ~sqrt(machine eps) of relative accuracy.)
        np.testing.assert_allclose(jnp.diag(relu_ntk(u, u)), jnp.sum(u**2, 1) / 2, rtol=1e-7)


def test_kernel_path_equals_gd_on_the_linearised_network():
    with jax.enable_x64(True):
        n, d = 24, 2
        u, y, u_test = _problem(jax.random.key(4), n)
        net = TwoLayerReLU.init(jax.random.key(5), width=256, in_dim=u.shape[1], out_dim=d,
                                dtype=jnp.float64)
        path = KernelGDPath.fit(empirical_ntk(net, u, u), y)
        # GD on f_lin(W) = f(W0) + J(W0) (W - W0), with f(W0) = 0.
        _, lin_train = jax.linearize(lambda w: net.apply(w, u), net.w)
        _, lin_test = jax.linearize(lambda w: net.apply(w, u_test), net.w)
        grad = jax.grad(lambda dw: 0.5 * jnp.sum((lin_train(dw) - y) ** 2) / n)
        dw = jnp.zeros_like(net.w)
        cross = empirical_ntk(net, u_test, u)
        for k in range(1, 41):
            dw = dw - path.eta * grad(dw)
            if k in (1, 7, 40):
                np.testing.assert_allclose(lin_test(dw), path.predict(cross, k), rtol=1e-9,
                                           atol=1e-11)
                np.testing.assert_allclose(
                    jnp.mean(jnp.sum((lin_train(dw) - y) ** 2, 1)),
                    path.train_residual_path(jnp.array([k]))[0], rtol=1e-9)
        # One step is eta/n K Y; the k -> infinity limit interpolates the training labels.
        np.testing.assert_allclose(path.filter(1.0), path.eta / n, rtol=1e-9)
        assert float(path.train_residual_path(jnp.array([1e12]))[0]) < 1e-10
        with pytest.raises(ValueError, match="too large"):
            KernelGDPath.fit(empirical_ntk(net, u, u), y, eta=3 * path.eta)


def test_wide_network_gd_tracks_the_kernel_path():
    n, d, steps = 32, 2, 300
    u, y, u_test = _problem(jax.random.key(6), n, n_test=64)
    path = KernelGDPath.fit(relu_ntk(u, u), y)
    target = path.predict(relu_ntk(u_test, u), steps)
    gaps, moves = [], []
    for width in (256, 16384):
        net = TwoLayerReLU.init(jax.random.key(7), width=width, in_dim=u.shape[1], out_dim=d)
        rec = gd_train(net, u, y, u_test, eta=path.eta, record_steps=[0, steps])
        gaps.append(float(jnp.sqrt(jnp.mean((rec.predictions[-1] - target) ** 2))))
        moves.append(rec.weight_change[-1])
        assert rec.train_mse[-1] < rec.train_mse[0]
    # Both the function gap and the relative weight movement shrink like width^{-1/2}
    # (a factor 8 from 256 to 16384); allow slack for the random initialisation.
    assert gaps[1] < gaps[0] / 3.0 and moves[1] < moves[0] / 4.0


def test_rwy_rule_returns_the_crossing_and_stops_earlier_under_more_noise():
    lam = 100.0 * np.arange(1, 201, dtype=np.float64) ** -2.0
    eta = 200 / lam[0]
    stops = [rwy_stopping_step(lam, noise_std=s, eta=eta) for s in (0.05, 0.2, 0.8)]
    assert stops[0] > stops[1] > stops[2] > 0

    def crossed(k, s):
        return kernel_complexity(lam / len(lam), 1 / math.sqrt(k * eta)) > 1 / (
            2 * math.e * s * k * eta)

    for k, s in zip(stops, (0.05, 0.2, 0.8), strict=True):
        assert not crossed(k, s) and crossed(k * 1.001, s)


def test_error_weights_turn_denoiser_errors_into_score_errors():
    # Truth: the scores of two denoisers through Tweedie (`score_from_x0`), compared directly.
    from scorejax.ntk import error_weights
    from scorejax.score_matching import score_from_x0
    from scorejax.score_sdes import VPSDE

    with jax.enable_x64(True):
        sde = VPSDE()
        k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
        t = jax.random.uniform(k1, (9,), jnp.float64, 1e-3, 1.0)
        x = jax.random.normal(k2, (9, 2), jnp.float64)
        f = jax.random.normal(k3, (9, 2), jnp.float64)
        f_star = jax.random.normal(k4, (9, 2), jnp.float64)
        s = score_from_x0(lambda p, x, t: p, sde=sde)
        score_sq = jnp.sum((s(f, x, t) - s(f_star, x, t)) ** 2, -1)
        den_sq = jnp.sum((f - f_star) ** 2, -1)
        w = jax.jit(error_weights, static_argnames="sde")(t, sde=sde)
        assert w._fields == ("denoiser", "score_w", "score")
        np.testing.assert_allclose(w.denoiser * den_sq, den_sq, rtol=1e-14)
        np.testing.assert_allclose(w.score * den_sq, score_sq, rtol=1e-12)
        np.testing.assert_allclose(w.score_w * den_sq, sde.sigma(t) ** 2 * score_sq,
                                   rtol=1e-12)
