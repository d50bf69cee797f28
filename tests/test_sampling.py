"""Reverse-SDE samplers: the exact mixture score reproduces the mixture; determinism, jit, NFE."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax import analytic, metrics, sampling
from scorejax.mode_metrics import mode_weights
from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE

WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
STDS = np.array([0.3, 0.2, 0.4])
N_SAMPLES = 8000  # mode-weight standard error <= sqrt(0.25 / 8000) = 0.0056
N_MMD = 1500
NUM_STEPS = 250
SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)]


def mixture() -> analytic.GaussianMixture:
    return analytic.GaussianMixture(WEIGHTS, MEANS, STDS)


def exact_score_fn(sde):
    gm = mixture()
    return lambda params, x, t: gm.marginal_score(x, t, sde=sde)


# Metrics are called outside `jit`: their compiled kernels are then shared by every test (same
# shapes), which keeps this file's compile time down.
@functools.cache
def null_mmd() -> tuple[float, float]:
    """Mean and std of MMD^2 between two independent true sample sets (6 pairs)."""
    gm = mixture()
    keys = jax.random.split(jax.random.key(100), 6)
    vals = [
        float(metrics.mmd2_rbf(gm.sample(k, N_MMD), gm.sample(jax.random.fold_in(k, 1), N_MMD)))
        for k in keys
    ]
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


def check_reproduces_mixture(x, *, atol_weights: float = 0.02) -> None:
    assert np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_allclose(mode_weights(x, MEANS), WEIGHTS, atol=atol_weights)
    mmd2 = float(metrics.mmd2_rbf(x[:N_MMD], mixture().sample(jax.random.key(7), N_MMD)))
    null_mean, null_std = null_mmd()
    assert mmd2 < null_mean + 5 * null_std, (mmd2, null_mean, null_std)


SAMPLERS = {
    "em": sampling.euler_maruyama,
    "pc": sampling.predictor_corrector,
}


@pytest.mark.parametrize("sampler", ["em", "pc"])
@pytest.mark.parametrize("sde", SDES, ids=["vp", "subvp", "ve"])
def test_exact_score_sampler_reproduces_the_mixture(sde, sampler):
    fn = SAMPLERS[sampler]
    x, _ = jax.jit(
        lambda k: fn(
            exact_score_fn(sde), None, k, sde=sde, shape=(N_SAMPLES, 2), num_steps=NUM_STEPS
        )
    )(jax.random.key(0))
    check_reproduces_mixture(x)


def test_a_wrong_score_is_detected():
    """Power check for the test above: a score for the wrong weights fails both criteria."""
    sde = VPSDE()
    wrong = analytic.GaussianMixture(np.array([0.2, 0.3, 0.5]), MEANS, STDS)
    x, _ = jax.jit(
        lambda k: sampling.euler_maruyama(
            lambda p, x, t: wrong.marginal_score(x, t, sde=sde),
            None,
            k,
            sde=sde,
            shape=(N_MMD, 2),
            num_steps=100,
        )
    )(jax.random.key(1))
    with pytest.raises(AssertionError):
        check_reproduces_mixture(x, atol_weights=0.2)
    mmd2 = float(metrics.mmd2_rbf(x, mixture().sample(jax.random.key(7), N_MMD)))
    null_mean, null_std = null_mmd()
    assert mmd2 > null_mean + 20 * null_std


def test_sampler_jit_equals_eager_and_is_deterministic():
    sde = VESDE(sigma_max=5.0)
    kwargs = {"num_steps": 6, "n_corrector": 2}
    key = jax.random.key(3)

    def gaussian_score(params, x, t):  # exact for data N(0, I)
        return -x / (1.0 + sde.sigma(t)[:, None] ** 2)

    x, nfe = sampling.predictor_corrector(
        gaussian_score, None, key, sde=sde, shape=(16, 2), **kwargs
    )
    assert nfe == 18
    jitted = jax.jit(
        lambda k: sampling.predictor_corrector(
            gaussian_score, None, k, sde=sde, shape=(16, 2), **kwargs
        ).samples
    )
    np.testing.assert_allclose(jitted(key), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(jitted(key), jitted(key))
    assert not np.allclose(jitted(jax.random.key(4)), x)


def test_nfe_is_counted_by_calls():
    """The returned NFE equals the number of score evaluations actually traced per step."""
    sde = VPSDE()
    calls = []

    def counting_score(params, x, t):
        calls.append(1)
        return -x

    nfe = []

    def sample(key):
        x, n = sampling.predictor_corrector(
            counting_score, None, key, sde=sde, shape=(4, 2), num_steps=5, n_corrector=3
        )
        nfe.append(n)
        return x

    jax.make_jaxpr(sample)(jax.random.key(0))  # trace only
    # lax.scan traces the step body once: 3 corrector calls + 1 predictor call per step.
    assert len(calls) == 4 and nfe == [5 * 4]
    calls.clear()
    nfe.clear()

    def sample_em(key):
        x, n = sampling.euler_maruyama(
            counting_score, None, key, sde=sde, shape=(4, 2), num_steps=7
        )
        nfe.append(n)
        return x

    jax.make_jaxpr(sample_em)(jax.random.key(0))
    assert len(calls) == 1 and nfe == [7]


def test_langevin_corrector_stationary_variance():
    """Langevin steps with the exact score of `N(0, I)` and no predictor.

    The corrector's step is `eps = 2 r^2 (snr mean||z|| / mean||s||)^2`; with `s = -x` and
    `Var x = v` this is `eps = 2 c / v`, `c = r^2 snr^2`, and the unadjusted Langevin chain
    `x <- (1 - eps) x + sqrt(2 eps) z` is stationary at `v = 1 / (1 - eps / 2)`, i.e. `v = 1 + c`
    (slightly inflated, as unadjusted Langevin is). Checked to 4 standard errors.
    """
    sde, t, dt, snr = VPSDE(), 0.5, 1e-3, 0.16
    n = 100_000

    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)

        def body(x, k):
            step = sampling.langevin_corrector_step(
                lambda p, x, t: -x,
                None,
                x,
                k,
                sde=sde,
                t=jnp.float32(t),
                dt=jnp.float32(dt),
                snr=snr,
            )
            return step, None

        x0 = jax.random.normal(k0, (n, 2))
        return jax.lax.scan(body, x0, jax.random.split(k1, 200))[0]

    x = np.asarray(run(jax.random.key(0)))
    c = float(sde.alpha_ratio_sq(t, dt)) * snr**2
    var = x.var()
    se = np.sqrt(2.0 / (2 * n)) * var
    assert abs(var - (1 + c)) < 4 * se, (var, 1 + c, se)
    assert abs(var - 1.0) > 4 * se  # the inflation is resolved, so the test has power
    np.testing.assert_allclose(x.mean(0), 0.0, atol=5 / np.sqrt(n))


def test_bad_sampler_arguments_raise():
    sde = VPSDE()
    sf = exact_score_fn(sde)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        sampling.euler_maruyama(sf, None, key, sde=sde, shape=(4, 2), num_steps=0)
    with pytest.raises(ValueError, match="t_eps must satisfy"):
        sampling.euler_maruyama(sf, None, key, sde=sde, shape=(4, 2), num_steps=3, t_eps=0.0)
    with pytest.raises(ValueError, match=r"shape must be \(B, ...\)"):
        sampling.predictor_corrector(sf, None, key, sde=sde, shape=(4,), num_steps=3)
    with pytest.raises(ValueError, match="n_corrector"):
        sampling.predictor_corrector(
            sf, None, key, sde=sde, shape=(4, 2), num_steps=3, n_corrector=-1
        )
    with pytest.raises(ValueError, match="score_fn returned shape"):
        sampling.euler_maruyama(
            lambda p, x, t: x[:, :1], None, key, sde=sde, shape=(4, 2), num_steps=3
        )
    with pytest.raises(ValueError, match="snr must be positive"):
        sampling.predictor_corrector(sf, None, key, sde=sde, shape=(4, 2), num_steps=3, snr=0.0)


def test_time_grid():
    ts = sampling.time_grid(4, sde=VPSDE(), t_eps=1e-3)
    np.testing.assert_allclose(ts, np.linspace(1.0, 1e-3, 5), rtol=1e-6)
