"""The Gaussian-path family: log-SNR, its inverse, parametrisations and weightings vs the oracle."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax import parametrisation as par
from scorejax import weighting
from scorejax.analytic import GaussianMixture, ring8
from scorejax.paths import PATHS, EDMPath, GaussianPath, LinearPath, make_path
from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE
from scorejax.sde import SDE

ALL = [VPSDE(), SubVPSDE(), VESDE(), EDMPath(), LinearPath()]
IDS = ["vp", "subvp", "ve", "edm", "linear"]


def _times(path, n=9):
    """Interior times of each path's horizon, avoiding the singular ends."""
    return jnp.linspace(0.02, 0.98, n) * path.T


def _mixture():
    return GaussianMixture(
        np.array([0.3, 0.5, 0.2]),
        np.array([[-1.0, 0.5], [1.5, 0.0], [0.0, -2.0]]),
        np.array([[0.3, 0.5], [0.4, 0.2], [0.6, 0.6]]),
    )


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_paths_satisfy_the_protocol_and_the_sde_interface(path):
    assert isinstance(path, GaussianPath) and isinstance(path, SDE)
    assert jax.tree_util.tree_leaves(path) == [] and hash(path) == hash(type(path)())


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_log_snr_inverse_round_trips_and_derivatives_match_autodiff(path):
    @jax.jit
    def quantities(t):
        lam = path.log_snr(t)
        auto = {n: jax.vmap(jax.grad(getattr(path, n)))(t) for n in ("log_snr", "alpha", "sigma")}
        return {
            "lam": lam,
            "t_back": path.t_from_log_snr(lam),
            "lam_back": path.log_snr(path.t_from_log_snr(lam)),
            # Closed form against the generic bisection of the base class.
            "t_bisect": SDE.t_from_log_snr(path, lam),
            "dlog_snr_dt": (path.dlog_snr_dt(t), auto["log_snr"]),
            "dalpha_dt": (path.dalpha_dt(t), auto["alpha"]),
            "dsigma_dt": (path.dsigma_dt(t), auto["sigma"]),
            # The SDE of the path: g^2 = -sigma^2 dlambda/dt and f = dlog alpha/dt.
            "g2": (path.diffusion(t) ** 2, -(path.sigma(t) ** 2) * path.dlog_snr_dt(t)),
            "f": (path.drift_coeff(t), jax.vmap(jax.grad(path.log_alpha))(t)),
        }

    with jax.enable_x64(True):
        t = _times(path, 33)
        q = quantities(t)
        assert np.all(np.diff(q["lam"]) < 0)  # decreasing in t
        np.testing.assert_allclose(q["t_back"], t, rtol=1e-12)
        np.testing.assert_allclose(q["lam_back"], q["lam"], rtol=1e-11)
        np.testing.assert_allclose(q["t_bisect"], t, rtol=1e-10)
        for name in ("dlog_snr_dt", "dalpha_dt", "dsigma_dt", "g2", "f"):
            got, want = q[name]
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14, err_msg=name)


def test_closed_form_inverses_cover_extreme_log_snr_and_small_t_in_float32():
    lam = np.array([-18.0, -6.0, -0.5, 0.0, 0.5, 6.0, 18.0])
    small_t = np.array([1e-6, 1e-4, 1e-2])
    paths = (VPSDE(beta_max=40.0), SubVPSDE(beta_max=40.0), VESDE(), EDMPath(), LinearPath())

    @jax.jit
    def f(lam, small_t):
        return [
            (p.t_from_log_snr(lam), p.log_snr(small_t), p.t_from_log_snr(p.log_snr(small_t)))
            for p in paths
        ]

    got = f(jnp.asarray(lam, jnp.float32), jnp.asarray(small_t, jnp.float32))
    with jax.enable_x64(True):
        want = f(jnp.asarray(lam), jnp.asarray(small_t))
        back = jax.jit(lambda ts: [p.log_snr(t) for p, t in zip(paths, ts, strict=True)])(
            [w[0] for w in want]
        )
    for p, (t32, lam32, t_back32), (t64, lam64, _), lam_back in zip(
        paths, got, want, back, strict=True
    ):
        assert t32.dtype == jnp.float32
        np.testing.assert_allclose(t32, t64, rtol=2e-6, err_msg=repr(p))
        np.testing.assert_allclose(lam_back, lam, rtol=1e-9, atol=1e-9, err_msg=repr(p))
        # lambda at small t keeps float32 precision (log / expm1 forms), and inverts back.
        np.testing.assert_allclose(lam32, lam64, rtol=1e-6, err_msg=repr(p))
        np.testing.assert_allclose(t_back32, small_t, rtol=1e-5, err_msg=repr(p))


@pytest.mark.parametrize("path", [EDMPath(), LinearPath()], ids=["edm", "linear"])
def test_new_paths_discretize_exactly_and_their_marginals_solve_the_moment_odes(path):
    with jax.enable_x64(True):
        x = jnp.ones((3, 2))
        t = jnp.array([0.1, 0.5, 0.9]) * path.T
        dt = 0.05 * path.T
        f, g = path.discretize(x, t, dt)
        r = path.alpha(t) / path.alpha(t - dt)
        np.testing.assert_allclose(f, (r - 1)[:, None] * x, rtol=1e-12)
        np.testing.assert_allclose(
            path.sigma(t) ** 2, r**2 * path.sigma(t - dt) ** 2 + g**2, rtol=1e-10
        )
        dvar = jax.vmap(jax.grad(lambda s: path.sigma(s) ** 2))(t)
        rhs = 2 * path.drift_coeff(t) * path.sigma(t) ** 2 + path.diffusion(t) ** 2
        np.testing.assert_allclose(dvar, rhs, rtol=1e-10)


def test_make_path_and_bad_parameters():
    assert make_path("edm", T=10.0) == EDMPath(T=10.0)
    assert isinstance(make_path("vp"), VPSDE) and set(PATHS) >= {"vp", "subvp", "ve"}
    with pytest.raises(ValueError, match="unknown path"):
        make_path("cosine")
    with pytest.raises(ValueError, match="0 < T <= 1"):
        LinearPath(T=1.5)
    with pytest.raises(ValueError, match="T must be positive"):
        EDMPath(T=0.0)


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_conversions_round_trip_between_every_pair(path):
    with jax.enable_x64(True):
        key = jax.random.key(0)
        x = jax.random.normal(key, (6, 3))
        value = jax.random.normal(jax.random.fold_in(key, 1), (6, 3))
        t = _times(path, 6)
        pairs = list(itertools.permutations(par.PARAMETRISATIONS, 2))

        @jax.jit
        def round_trips(x, t, value):
            backs = []
            for source, target in pairs:
                there = par.convert(x, t, value, path=path, source=source, target=target)
                backs.append(par.convert(x, t, there, path=path, source=target, target=source))
            # The pair (x0, eps) always reconstructs x.
            recon = []
            for source in par.PARAMETRISATIONS:
                x0, eps = par.to_x0_eps(x, t, value, path=path, source=source)
                recon.append(path.alpha(t)[:, None] * x0 + path.sigma(t)[:, None] * eps)
            return jnp.stack(backs), jnp.stack(recon)

        backs, recon = round_trips(x, t, value)
        for (source, target), back in zip(pairs, backs, strict=True):
            np.testing.assert_allclose(
                back, value, rtol=1e-9, atol=1e-11, err_msg=f"{source}->{target}"
            )
        np.testing.assert_allclose(recon, jnp.broadcast_to(x, recon.shape), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_oracle_denoiser_gives_every_parametrisation_consistent_with_its_score(path):
    gm = _mixture()
    with jax.enable_x64(True):
        t = _times(path, 7)
        x = gm.marginal_sample(jax.random.key(1), 7, t, sde=path)

        @jax.jit
        def quantities(x, t):
            x0 = gm.denoiser(x, t, sde=path)
            score = gm.marginal_score(x, t, sde=path)
            eps = par.convert(x, t, score, path=path, source="score", target="eps")
            a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
            return {
                "tweedie": (par.convert(x, t, x0, path=path, source="x0", target="score"), score),
                "velocity": (
                    par.convert(x, t, x0, path=path, source="x0", target="velocity"),
                    path.probability_flow_drift(score, x, t),
                ),
                "v": (
                    par.convert(x, t, eps, path=path, source="eps", target="v"),
                    a * eps - s * x0,
                ),
            }

        # Tweedie (the exact denoiser and score agree); the velocity is the PF-ODE drift
        # f x - g^2 s / 2; v-prediction is alpha eps - sigma x0.
        for name, (got, want) in quantities(x, t).items():
            np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("path", [VPSDE(), EDMPath(), LinearPath()], ids=["vp", "edm", "linear"])
def test_oracle_velocity_satisfies_the_continuity_equation(path):
    """`d_t log p_t + div v + v . grad log p_t = 0` with `v` from the oracle's denoiser.

    An independent check of the velocity conversion (`alpha' x0 + sigma' eps`): it uses only
    the exact log density, differentiated in `t` and `x`.
    """
    gm = _mixture()
    with jax.enable_x64(True):
        t = _times(path, 5)
        x = gm.marginal_sample(jax.random.key(2), 5, t, sde=path)

        def velocity(xi, ti):
            xb, tb = xi[None], ti[None]
            x0 = gm.denoiser(xb, tb, sde=path)
            return par.convert(xb, tb, x0, path=path, source="x0", target="velocity")[0]

        def log_p(xi, ti):
            return gm.marginal_log_prob(xi[None], ti[None], sde=path)[0]

        def residual(xi, ti):
            dlogp_dt = jax.grad(log_p, argnums=1)(xi, ti)
            div = jnp.trace(jax.jacfwd(velocity)(xi, ti))
            return dlogp_dt + div + velocity(xi, ti) @ jax.grad(log_p)(xi, ti)

        res, scale = jax.jit(
            jax.vmap(lambda xi, ti: (residual(xi, ti), jax.grad(log_p, argnums=1)(xi, ti)))
        )(x, t)
        scale = jnp.abs(scale)
        np.testing.assert_allclose(res, 0.0, atol=1e-8 * (1.0 + float(scale.max())))


def test_linear_path_identities_of_the_formula_sheet():
    gm = ring8()
    path = LinearPath()

    @jax.jit
    def identities(x, t):
        x0 = gm.denoiser(x, t, sde=path)
        tb = t[:, None]
        eps = (x - (1 - tb) * x0) / tb
        v = par.convert(x, t, x0, path=path, source="x0", target="velocity")
        score = par.convert(x, t, v, path=path, source="velocity", target="score")
        return {
            "v = eps - x0": (v, eps - x0),
            "v = (x - x0) / t": (v, (x - x0) / tb),
            "s = -(x + (1 - t) v) / t": (score, -(x + (1 - tb) * v) / tb),
            "s = oracle score": (score, gm.marginal_score(x, t, sde=path)),
            "x0 = x - t v": (
                par.convert(x, t, v, path=path, source="velocity", target="x0"),
                x - tb * v,
            ),
        }

    with jax.enable_x64(True):
        t = jnp.array([0.1, 0.4, 0.7, 0.95])
        x = gm.marginal_sample(jax.random.key(3), 4, t, sde=path)
        for name, (got, want) in identities(x, t).items():
            np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8, err_msg=name)


def test_wrap_builds_models_and_rejects_unknown_kinds():
    gm = ring8()
    path = VPSDE()
    denoiser = lambda params, x, t: gm.denoiser(x, t, sde=path)
    score_fn = jax.jit(par.wrap(denoiser, path=path, source="x0", target="score"))
    x = gm.marginal_sample(jax.random.key(4), 5, 0.3, sde=path)
    t = jnp.full((5,), 0.3)
    np.testing.assert_allclose(
        score_fn(None, x, t), gm.marginal_score(x, t, sde=path), rtol=2e-4, atol=2e-4
    )
    with pytest.raises(ValueError, match="unknown source"):
        par.wrap(denoiser, path=path, source="noise", target="score")
    with pytest.raises(ValueError, match="prediction shape"):
        par.convert(x, t, x[:, :1], path=path, source="x0", target="eps")


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_weightings_as_functions_of_log_snr_match_their_definitions(path):
    @jax.jit
    def pairs(x, t, eps_true, eps_hat):
        lam, dlam = path.log_snr(t), path.dlog_snr_dt(t)
        a, s = path.alpha(t), path.sigma(t)

        def conv(value, kind):
            return par.convert(x, t, value, path=path, source="eps", target=kind)

        def err(kind):
            return jnp.sum((conv(eps_true, kind) - conv(eps_hat, kind)) ** 2, axis=1)

        e_eps, e_x0, e_score = err("eps"), err("x0"), err("score")
        omega = weighting.loss_weight(lam, dlam, weighting="likelihood")
        sig = s / a  # EDM's noise level
        lam_edm = (sig**2 + 0.5**2) / (sig * 0.5) ** 2
        # Distillation: g = w(lambda) sigma (s_fake - s_target); Diff-Instruct's is D_fake - D_t.
        w_di = weighting.distill_weight(lam, weighting="diff_instruct")
        g = (w_di * s)[:, None] * (conv(eps_hat, "score") - conv(eps_true, "score"))
        return {
            "sigma2": (weighting.sigma2(lam) * e_eps, s**2 * e_score),
            "likelihood": (omega * e_eps, path.diffusion(t) ** 2 * e_score),
            "kingma_gao": (weighting.kingma_gao_weight(omega, dlam), jnp.ones_like(t)),
            "edm_sigma": (weighting.edm_sigma_weight(sig), lam_edm),
            "edm": (weighting.edm(lam) * e_eps, lam_edm * e_x0),
            "x0_scale": (e_eps, weighting.target_scale(lam, target="x0") * e_x0),
            "diff_instruct": (g, conv(eps_hat, "x0") - conv(eps_true, "x0")),
            "dmd": (weighting.dmd(lam), w_di),
        }

    with jax.enable_x64(True):
        key = jax.random.key(5)
        args = [jax.random.normal(jax.random.fold_in(key, i), (6, 3)) for i in range(3)]
        got = pairs(args[0], _times(path, 6), args[1], args[2])
        for name, (lhs, rhs) in got.items():
            np.testing.assert_allclose(lhs, rhs, rtol=1e-8, atol=1e-10, err_msg=name)


def test_target_scales_of_v_prediction_and_velocity():
    @jax.jit
    def scales(x, e1, e2):
        out = {}
        for path, kind in ((VPSDE(), "v"), (LinearPath(), "velocity")):
            t = _times(path, 5)
            lam = path.log_snr(t)
            y1 = par.convert(x, t, e1, path=path, source="eps", target=kind)
            y2 = par.convert(x, t, e2, path=path, source="eps", target=kind)
            e_y = jnp.sum((y1 - y2) ** 2, 1)
            out[kind] = (jnp.sum((e1 - e2) ** 2, 1), weighting.target_scale(lam, target=kind) * e_y)
        # VSD's weight is the VP sigma^2 at the same log-SNR: g = sigma^3 delta on VP.
        vp = VPSDE()
        t = _times(vp, 5)
        out["vsd"] = (weighting.vsd(vp.log_snr(t)) * vp.sigma(t), vp.sigma(t) ** 3)
        return out

    with jax.enable_x64(True):
        key = jax.random.key(6)
        args = [jax.random.normal(jax.random.fold_in(key, i), (5, 2)) for i in range(3)]
        for name, (lhs, rhs) in scales(*args).items():
            np.testing.assert_allclose(lhs, rhs, rtol=1e-10, err_msg=name)
    with pytest.raises(ValueError, match="unknown weighting"):
        weighting.loss_weight(jnp.zeros(2), weighting="snr")
    with pytest.raises(ValueError, match="needs dlog_snr_dt"):
        weighting.loss_weight(jnp.zeros(2), weighting="likelihood")


def test_path_methods_jit_without_retracing():
    @jax.jit
    def f(path, t):
        return path.log_snr(t), path.t_from_log_snr(path.log_snr(t))

    t = jnp.array([0.3, 0.6])
    f(LinearPath(), t)
    f(LinearPath(), t)
    assert f._cache_size() == 1
    f(EDMPath(), t)
    assert f._cache_size() == 2
    np.testing.assert_allclose(f(LinearPath(), t)[1], t, rtol=1e-6)
