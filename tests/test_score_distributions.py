"""Tests of the DeQA-Score modules (quality_labels, quality_losses, gaussian_divergences) against
scipy and the authors' algorithm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy import integrate
from scipy.special import erf, log_softmax, softmax
from scipy.stats import norm

import scorejax
from scorejax import gaussian_divergences as gd
from scorejax import quality_labels as ql
from scorejax import quality_losses as qloss

FAST = settings(max_examples=25, deadline=None)
LABEL_STATIC = ("num_levels", "density", "thre_std", "thre_diff", "center", "center_tol")
_soft_label_jit = jax.jit(ql.gaussian_soft_label, static_argnames=LABEL_STATIC)
WIDTH = 160


def soft_label(mu, sigma, **kw):
    """Jitted soft label on inputs padded to one fixed width, so every test reuses one compile
    per (density, center, dtype)."""
    mu, sigma = np.broadcast_arrays(np.asarray(mu, float), np.asarray(sigma, float))
    pad = WIDTH - mu.size
    out = _soft_label_jit(np.pad(mu.ravel(), (0, pad), constant_values=3.0),
                          np.pad(sigma.ravel(), (0, pad), constant_values=1.0), **kw)
    return np.asarray(out)[: mu.size].reshape(mu.shape + (5,))


# ----------------------------------------------------------------------------------------------
# The authors' algorithm (build_soft_labels/gen_soft_label.py), written out in numpy, in their
# token order (excellent .. bad) and reversed at the end to ascending order.


def authors_soft_label(mu: float, sigma: float, density: str, guard: float = 1e-9) -> np.ndarray:
    values = np.array([5, 4, 3, 2, 1], dtype=float)
    if density == "cdf":
        probs = norm.cdf(values + 0.5, mu, sigma) - norm.cdf(values - 0.5, mu, sigma)
    else:
        probs = norm.pdf(values, loc=mu, scale=sigma)
    a_sum, b_sum = probs.sum(), np.inner(probs, values)
    alpha = (mu - 3) / (b_sum - 3.0 * a_sum + guard)
    beta = (1.0 - alpha * a_sum) / 5.0
    q = np.maximum(probs * alpha + beta, 0)
    if sigma < 0.2 or abs(np.inner(q, values) - mu) > 0.1:
        q = authors_binary_label(mu)[::-1]
    return q[::-1]


def authors_binary_label(mu: float) -> np.ndarray:
    """get_binary_probs, ascending order."""
    eps = 1e-8
    probs = np.zeros(5)
    for idx in range(1, 5):
        left = 1.0 + (idx - 1) - eps
        right = 1.0 + idx + eps
        if left < mu <= right:
            probs[idx - 1] = (right - mu) / (right - left)
            probs[idx] = (mu - left) / (right - left)
            break
    return probs


def authors_level(mos: float, mos_min: float, mos_max: float) -> int:
    eps = 1e-8
    for idx in range(1, 6):
        left = mos_min + (idx - 1) / 5 * (mos_max - mos_min) - eps
        right = mos_min + idx / 5 * (mos_max - mos_min) + eps
        if left < mos <= right:
            return idx
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# Level masses, labels


def test_level_masses_match_scipy():
    rng = np.random.default_rng(0)
    mu = rng.uniform(1, 5, 20)
    sigma = rng.uniform(0.05, 2, 20)
    levels = np.arange(1, 6)
    with jax.enable_x64(True):
        cdf = ql.gaussian_level_masses(mu, sigma, density="cdf")
        pdf = ql.gaussian_level_masses(mu, sigma, density="pdf")
        # Far in the upper tail the difference of two cdfs would cancel; the mass must not.
        tail = ql.gaussian_level_masses(-10.0, 0.5, density="cdf")
    want_cdf = norm.cdf(levels + 0.5, mu[:, None], sigma[:, None]) - norm.cdf(
        levels - 0.5, mu[:, None], sigma[:, None]
    )
    np.testing.assert_allclose(cdf, want_cdf, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(pdf, norm.pdf(levels, mu[:, None], sigma[:, None]), rtol=1e-12)
    want_tail = norm.sf(levels - 0.5, -10, 0.5) - norm.sf(levels + 0.5, -10, 0.5)
    np.testing.assert_allclose(tail, want_tail, rtol=1e-8)


@pytest.mark.parametrize("density", ["cdf", "pdf"])
def test_soft_label_matches_authors_code(density):
    rng = np.random.default_rng(1 if density == "cdf" else 2)
    mu = np.concatenate([rng.uniform(1, 5, 150), [1.0, 2.0, 3.3, 5.0, 1.2]])
    sigma = np.concatenate([rng.uniform(0.05, 1.5, 150), [0.5, 0.1, 0.6, 0.4, 0.9]])
    with jax.enable_x64(True):
        got = np.asarray(soft_label(mu, sigma, density=density, center="authors"))
        limit = np.asarray(soft_label(mu, sigma, density=density))
    want = np.stack([authors_soft_label(m, s, density) for m, s in zip(mu, sigma, strict=True)])
    # The authors widen the two-level intervals by 1e-8, which moves weights by <= 2e-8.
    np.testing.assert_allclose(got, want, atol=3e-8)
    # Without the authors' 1e-9 in B - 3A, alpha moves by a relative ~1e-9 / |mu - 3|.
    far = np.abs(mu - 3) > 0.05
    np.testing.assert_allclose(limit[far], want[far], atol=3e-8)
    outside = np.abs(mu - 3) > 1e-3
    np.testing.assert_allclose(limit[outside], want[outside], atol=2e-6)


def test_soft_label_documented_examples():
    with jax.enable_x64(True):
        # mu = 3.3, sigma = 0.6, pdf: the clamp bites and there is no renormalisation.
        q = np.asarray(soft_label(3.3, 0.6, density="pdf"))
        np.testing.assert_allclose(q.sum(), 1.0020, atol=1e-4)
        np.testing.assert_allclose(np.dot(np.arange(1, 6), q), 3.3020, atol=1e-4)
        # mu = 1.2, sigma = 0.9, pdf: the mean misses by 0.40, so the two-level label is used.
        np.testing.assert_allclose(
            soft_label(1.2, 0.9, density="pdf"), [0.8, 0.2, 0, 0, 0], atol=1e-12
        )


@pytest.mark.parametrize("density", ["cdf", "pdf"])
def test_center_artefact_fixed_and_options(density):
    with jax.enable_x64(True):
        authors = np.asarray(soft_label(3.0, 0.6, density=density, center="authors"))
        fixed = np.asarray(soft_label(3.0, 0.6, density=density))
        just_inside = np.asarray(soft_label(3.0 + 9e-4, 0.6, density=density))
        normalized = np.asarray(soft_label(3.0, 0.6, density=density, center="normalize"))
        masses = np.asarray(ql.gaussian_level_masses(3.0, 0.6, density=density))
    np.testing.assert_allclose(authors, 0.2)  # the code's uniform label (variance 2)
    # The fix is the limit of the authors' label: continuous in mu and peaked. Next to mu = 3 the
    # authors' 1e-9 guard dominates, so the reference leaves it out (float64 numpy).
    near = authors_soft_label(3.0 + 1e-6, 0.6, density, guard=0.0)
    np.testing.assert_allclose(fixed, near, atol=2e-6)
    # Inside the centre window the limit's slope stands in for the ratio: O(tol^2) error.
    np.testing.assert_allclose(
        just_inside, authors_soft_label(3.0 + 9e-4, 0.6, density, guard=0.0), atol=2e-6
    )
    # Symmetric about 3 (the clamp may leave the sum slightly above 1, as in the authors' code).
    np.testing.assert_allclose(fixed, fixed[::-1], atol=1e-12)
    np.testing.assert_allclose(normalized, masses / masses.sum(), rtol=1e-12)


@FAST
@given(
    mu=st.floats(1.0, 5.0),
    sigma=st.one_of(st.just(0.0), st.floats(0.0, 3.0)),
    density=st.sampled_from(["cdf", "pdf"]),
)
def test_soft_label_properties(mu, sigma, density):
    with jax.enable_x64(True):
        q = np.asarray(soft_label(mu, sigma, density=density))
    assert np.all(q >= 0) and np.all(np.isfinite(q))
    mean = np.dot(np.arange(1, 6), q)
    if sigma < 0.2:  # zero and tiny variance: the two-level label, mean exactly mu
        np.testing.assert_allclose(q, authors_binary_label(mu), atol=3e-8)
    assert abs(mean - mu) <= 0.1 + 1e-12


@FAST
@given(mu=st.floats(1.0, 5.0))
def test_two_level_label(mu):
    with jax.enable_x64(True):
        q = np.asarray(ql.two_level_label(mu))
    np.testing.assert_allclose(q, authors_binary_label(mu), atol=3e-8)
    np.testing.assert_allclose(q.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.dot(np.arange(1, 6), q), mu, atol=1e-12)
    k = np.clip(np.ceil(mu) - 1, 1, 4)
    var = np.dot((np.arange(1, 6) - mu) ** 2, q)
    np.testing.assert_allclose(var, (mu - k) * (k + 1 - mu), atol=1e-12)


def test_mos_to_level_and_normalize_mos():
    rng = np.random.default_rng(3)
    lo, hi = 12.5, 87.0
    edges = lo + np.arange(6) / 5 * (hi - lo)
    mos = np.concatenate([rng.uniform(lo, hi, 50), edges, edges[1:-1] + 2e-8])
    with jax.enable_x64(True):
        got = ql.mos_to_level(mos, mos_min=lo, mos_max=hi)
        mu, sigma = ql.normalize_mos(mos, np.full_like(mos, 3.0), mos_min=lo, mos_max=hi)
    np.testing.assert_array_equal(got, [authors_level(m, lo, hi) for m in mos])
    np.testing.assert_allclose(mu, 4 * (mos - lo) / (hi - lo) + 1)
    np.testing.assert_allclose(sigma, 12 / (hi - lo))
    assert ql.LEVEL_NAMES[int(got[0]) - 1] in ("bad", "poor", "fair", "good", "excellent")


# ----------------------------------------------------------------------------------------------
# Moments, Thurstone, fidelity


def test_score_moments_match_softmax():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(7, 5)) * 2
    with jax.enable_x64(True):
        mean, var = qloss.score_moments(z)
        mean_rev, var_rev = qloss.score_moments(z[:, ::-1], level_values=[5, 4, 3, 2, 1])
        check_grads(jax.jit(lambda x: qloss.score_moments(x).variance.sum()), (jnp.asarray(z),),
                    order=1, modes=["rev"])
    p = softmax(z, axis=1)
    want_mean = p @ np.arange(1, 6)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(var, (p * (np.arange(1, 6) - want_mean[:, None]) ** 2).sum(1))
    np.testing.assert_allclose(mean_rev, mean, rtol=1e-12)
    np.testing.assert_allclose(var_rev, var, rtol=1e-12)


def test_thurstone_probability_matches_scipy_and_erf_identity():
    rng = np.random.default_rng(5)
    ma, mb = rng.uniform(1, 5, (2, 30))
    va, vb = rng.uniform(0, 1, (2, 30))
    with jax.enable_x64(True):
        got = qloss.thurstone_probability(ma, mb, va, vb)
        fixed = qloss.thurstone_probability(ma, mb, eps=0.0)
        zero_var = qloss.thurstone_probability(np.array([3.0, 3.0, 3.1]), 3.0, 0.0, 0.0)
    np.testing.assert_allclose(got, norm.cdf(ma - mb, scale=np.sqrt(va + vb + 1e-8)), rtol=1e-12)
    # DeQA's fixed-std prediction: 0.5 (1 + erf(d / 2)).
    np.testing.assert_allclose(fixed, 0.5 * (1 + erf((ma - mb) / 2)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(zero_var, [0.5, 0.5, 1.0])


def test_fidelity_losses():
    rng = np.random.default_rng(6)
    p, q = rng.uniform(0, 1, (2, 40))
    with jax.enable_x64(True):
        got = qloss.fidelity_loss(p, q, reduction="none")[0]
        np.testing.assert_allclose(
            got, 1 - np.sqrt(p * q + 1e-8) - np.sqrt((1 - p) * (1 - q) + 1e-8), rtol=1e-12
        )
        # Minimum at p = q, slightly negative because of eps (values from the authors' notes).
        np.testing.assert_allclose(qloss.fidelity_loss(np.array([0.0, 1.0]), np.array([0.0, 1.0]),
                                                    reduction="none")[0], -1e-4, rtol=1e-3)
        np.testing.assert_allclose(qloss.fidelity_loss(0.5, 0.5)[0], -2e-8, rtol=1e-3)
        a_better = q > 0.5
        binary = qloss.binary_fidelity_loss(p, a_better, reduction="sum")[0] / p.size
        np.testing.assert_allclose(
            binary, np.mean(np.where(a_better, 1 - np.sqrt(p), 1 - np.sqrt(1 - p))), rtol=1e-12
        )
        inner = jnp.asarray(np.clip(p, 0.05, 0.95))
        check_grads(jax.jit(lambda x: qloss.fidelity_loss(x, q)[0]), (inner,), order=2,
                    modes=["rev"])
        check_grads(jax.jit(lambda x: qloss.binary_fidelity_loss(x, a_better)[0]), (inner,),
                    order=1,
                    modes=["rev"])


def test_thurstone_fidelity_loss_composition_and_stop_gradient():
    rng = np.random.default_rng(7)
    pa, pb, ma, mb = rng.uniform(1, 5, (4, 16))
    sa, sb = rng.uniform(0.1, 1, (2, 16))
    va, vb = rng.uniform(0.1, 1, (2, 16))
    with jax.enable_x64(True):
        q = norm.cdf((ma - mb) / np.sqrt(sa**2 + sb**2 + 1e-8))
        p_fix = norm.cdf((pa - pb) / np.sqrt(2))
        fixed = jax.jit(lambda *a: qloss.thurstone_fidelity_loss(*a)[0])
        fidelity = 1 - np.sqrt(p_fix * q + 1e-8) - np.sqrt((1 - p_fix) * (1 - q) + 1e-8)
        np.testing.assert_allclose(fixed(pa, pb, ma, mb, sa, sb), fidelity.mean(), rtol=1e-12)
        p_var = norm.cdf((pa - pb) / np.sqrt(va + vb + 1e-8))
        fidelity_var = 1 - np.sqrt(p_var * q + 1e-8) - np.sqrt((1 - p_var) * (1 - q) + 1e-8)

        def loss(args, detach=True):
            return qloss.thurstone_fidelity_loss(*args[:6], pred_var_a=args[6], pred_var_b=args[7],
                                              detach_pred_var=detach)[0]

        args = (pa, pb, ma, mb, sa, sb, va, vb)
        np.testing.assert_allclose(jax.jit(loss)(args), fidelity_var.mean(), rtol=1e-12)
        grads = jax.jit(jax.grad(loss))(args)
        # The ground truth is data; the predicted variances are detached by default.
        assert all(np.all(np.asarray(grads[i]) == 0) for i in (2, 3, 4, 5, 6, 7))
        assert np.any(np.asarray(grads[0]) != 0)
        g_var = jax.jit(jax.grad(lambda a: loss(a, detach=False)))(args)[6]
        assert np.any(np.asarray(g_var) != 0)
        check_grads(jax.jit(lambda x: qloss.thurstone_fidelity_loss(x, pb, ma, mb, sa, sb)[0]),
                    (jnp.asarray(pa),), order=1, modes=["rev"])


# ----------------------------------------------------------------------------------------------
# Soft-label KL and in-level loss


def test_soft_label_kl_matches_numpy():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(6, 50))
    ids = np.array([40, 3, 17, 8, 22])
    target = rng.dirichlet(np.ones(5), size=6)
    target[0, [0, 4]] = 0.0  # 0 log 0 = 0
    target[0] /= target[0].sum()
    with jax.enable_x64(True):
        kl = jax.jit(
            lambda *a, **k: qloss.soft_label_kl(*a, **k)[0],
            static_argnames=("closed_set", "reduction"),
        )
        got = kl(logits, ids, target)
        closed = kl(logits, ids, target, closed_set=True, reduction="none")
        check_grads(lambda z: kl(z, ids, target), (jnp.asarray(logits),), order=1, modes=["rev"])
    logp = log_softmax(logits, axis=1)[:, ids]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(target > 0, target * (np.log(target) - logp), 0.0)
    np.testing.assert_allclose(got, terms.sum(1).mean(), rtol=1e-12)
    logp_c = log_softmax(logits[:, ids], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms_c = np.where(target > 0, target * (np.log(target) - logp_c), 0.0)
    np.testing.assert_allclose(closed, terms_c.sum(1), rtol=1e-12)
    # A closed-set model that predicts the (fully supported) label exactly has zero KL.
    q = np.array([[0.1, 0.2, 0.4, 0.2, 0.1]])
    np.testing.assert_allclose(qloss.soft_label_kl(np.log(q), np.arange(5), q, closed_set=True)[0],
                               0.0, atol=1e-7)


def test_in_level_loss():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(4, 30))
    ids = np.arange(5)
    p = softmax(logits, axis=1)
    with jax.enable_x64(True):
        got = qloss.in_level_loss(logits, ids)[0]
        confident = logits.copy()
        confident[:, ids] += 50
        floor = qloss.in_level_loss(confident, ids)[0]
    np.testing.assert_allclose(got, max(0.01, np.mean(1 - p[:, ids].sum(1))), rtol=1e-12)
    np.testing.assert_allclose(floor, 0.01)


# ----------------------------------------------------------------------------------------------
# Distribution gaps


def _kl_quad(m1, s1, m2, s2):
    f = lambda x: norm.pdf(x, m1, s1) * (norm.logpdf(x, m1, s1) - norm.logpdf(x, m2, s2))
    return integrate.quad(f, m1 - 12 * s1, m1 + 12 * s1, limit=200)[0]


def _quantile_gap(u, m1, s1, m2, s2):
    return (norm.ppf(u, m1, s1) - norm.ppf(u, m2, s2)) ** 2


def test_gaussian_gaps():
    cases = [(3.0, 0.5, 3.4, 0.8), (1.5, 1.2, 4.0, 0.3), (2.0, 0.7, 2.0, 0.7)]
    with jax.enable_x64(True):
        for m1, s1, m2, s2 in cases:
            np.testing.assert_allclose(gd.gaussian_kl(m1, s1, m2, s2, eps=0.0),
                                       _kl_quad(m1, s1, m2, s2), atol=1e-9)
            authors = (np.log(s2 / (s1 + 1e-8)) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2 + 1e-8)
                       - 0.5)
            np.testing.assert_allclose(gd.gaussian_kl(m1, s1, m2, s2), authors, rtol=1e-12,
                                       atol=1e-15)
            mm, sm = (m1 + m2) / 2, np.sqrt((s1**2 + s2**2) / 2)
            np.testing.assert_allclose(
                gd.gaussian_midpoint_divergence(m1, s1, m2, s2, eps=0.0),
                0.5 * _kl_quad(m1, s1, mm, sm) + 0.5 * _kl_quad(m2, s2, mm, sm), atol=1e-9,
            )
            w2 = integrate.quad(_quantile_gap, 0, 1, args=(m1, s1, m2, s2), limit=200)[0]
            np.testing.assert_allclose(gd.gaussian_w2(m1, s1, m2, s2) ** 2, w2, atol=1e-7)
        # The "JS" is not the Jensen-Shannon divergence of the mixture.
        m1, s1, m2, s2 = cases[1]

        def mix(x):
            return 0.5 * norm.pdf(x, m1, s1) + 0.5 * norm.pdf(x, m2, s2)

        def half_kl(m, s):
            return integrate.quad(
                lambda x: norm.pdf(x, m, s) * (norm.logpdf(x, m, s) - np.log(mix(x))),
                m - 12 * s, m + 12 * s, limit=200,
            )[0]

        true_js = 0.5 * half_kl(m1, s1) + 0.5 * half_kl(m2, s2)
        assert true_js <= np.log(2) + 1e-9
        assert float(gd.gaussian_midpoint_divergence(m1, s1, m2, s2)) > true_js + 0.1


# ----------------------------------------------------------------------------------------------
# jit, vmap, bad input


def test_vmap_and_jit_match_eager():
    rng = np.random.default_rng(10)
    mu = np.array([1.3, 3.0, 4.2, 2.5])
    sigma = np.array([0.5, 0.6, 0.1, 0.9])
    reference = np.stack([authors_soft_label(m, s, "cdf", guard=0.0) for m, s in zip(
        mu + np.array([0, 1e-6, 0, 0]), sigma, strict=True)])
    batched = jax.jit(jax.vmap(ql.gaussian_soft_label))(mu, sigma)  # float32
    np.testing.assert_allclose(batched, reference, atol=2e-5)
    z = rng.normal(size=(3, 4, 5))
    np.testing.assert_allclose(jax.vmap(lambda x: qloss.score_moments(x).mean)(z),
                               qloss.score_moments(z).mean, rtol=1e-6)


def test_soft_label_gradient_is_finite_in_both_regimes():
    g = jax.jit(jax.grad(lambda m, s: ql.gaussian_soft_label(m, s)[2], argnums=(0, 1)))
    for mu, sigma in [(2.7, 0.6), (3.0, 0.6), (2.4, 0.1), (3.0, 0.0)]:
        assert all(np.isfinite(float(x)) for x in g(mu, sigma))


@pytest.mark.parametrize(
    "call",
    [
        lambda: ql.gaussian_soft_label(3.0, -0.1),
        lambda: ql.two_level_label(5.5),
        lambda: ql.gaussian_level_masses(3.0, 1.0, density="box"),
        lambda: ql.gaussian_soft_label(3.0, 1.0, center="middle"),
        lambda: ql.normalize_mos([1.0], [0.1], mos_min=2.0, mos_max=2.0),
        lambda: ql.normalize_mos([1.0, 2.0], [0.1], mos_min=0.0, mos_max=2.0),
        lambda: qloss.fidelity_loss([0.2, 1.1], [0.5, 0.5])[0],
        lambda: qloss.fidelity_loss([0.2], [0.5, 0.5])[0],
        lambda: qloss.binary_fidelity_loss([0.2], [2])[0],
        lambda: qloss.soft_label_kl(np.zeros((2, 10)), [1, 2, 3], np.full((2, 4), 0.25))[0],
        lambda: qloss.soft_label_kl(np.zeros((2, 10)), [1, 2, 30], np.full((2, 3), 1 / 3))[0],
        lambda: qloss.score_moments(np.zeros((2, 5)), level_values=[1, 2, 3]),
        lambda: qloss.thurstone_probability(1.0, 2.0, -1.0, 1.0),
        lambda: qloss.thurstone_fidelity_loss(1.0, 2.0, 1.0, 2.0, 0.5, 0.5, pred_var_a=1.0)[0],
    ],
)
def test_bad_input_raises(call):
    # Shapes and options raise while tracing; values under `scorejax.checked` (eagerly and jitted).
    with pytest.raises(ValueError):
        scorejax.checked(call)()
    with pytest.raises(ValueError):
        scorejax.checked(jax.jit(call))()


# ----------------------------------------------------------------------------------------------
# The reduction keyword and the typed aux


def test_reductions_agree_and_aux_holds_the_probabilities():
    rng = np.random.default_rng(21)
    p, q = (jnp.asarray(rng.uniform(0.05, 0.95, (3, 4))) for _ in range(2))
    better = jnp.asarray(rng.integers(0, 2, (3, 4)))
    pa, pb, ma, mb = (jnp.asarray(rng.uniform(1, 5, (3, 4))) for _ in range(4))
    sa, sb = (jnp.asarray(rng.uniform(0.1, 1, (3, 4))) for _ in range(2))
    logits = jnp.asarray(rng.normal(size=(3, 4, 12)))
    ids = jnp.asarray([2, 5, 7])
    target = jnp.asarray(rng.dirichlet(np.ones(3), size=(3, 4)))
    losses = {
        "fidelity": lambda r: qloss.fidelity_loss(p, q, reduction=r),
        "binary": lambda r: qloss.binary_fidelity_loss(p, better, reduction=r),
        "thurstone": lambda r: qloss.thurstone_fidelity_loss(pa, pb, ma, mb, sa, sb, reduction=r),
        "soft_kl": lambda r: qloss.soft_label_kl(logits, ids, target, reduction=r),
    }
    for name, fn in losses.items():
        (mean, _), (total, _), (per, _) = fn("mean"), fn("sum"), fn("none")
        assert per.shape == p.shape, name
        np.testing.assert_allclose(float(total), float(mean) * p.size, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(float(total), float(np.sum(per)), rtol=1e-5, err_msg=name)
    aux = qloss.thurstone_fidelity_loss(pa, pb, ma, mb, sa, sb)[1]
    np.testing.assert_allclose(aux.probability, norm.cdf((pa - pb) / np.sqrt(2)), rtol=1e-5)
    np.testing.assert_allclose(
        aux.target, norm.cdf((ma - mb) / np.sqrt(sa**2 + sb**2 + 1e-8)), rtol=1e-5
    )
    np.testing.assert_array_equal(qloss.binary_fidelity_loss(p, better)[1].target, better)
    probs = softmax(np.asarray(logits), axis=-1)[..., np.asarray(ids)]
    np.testing.assert_allclose(qloss.soft_label_kl(logits, ids, target)[1].level_probs, probs,
                               rtol=1e-5)
    # The in-level loss floors the batch: "sum" is B times "mean", "none" the unfloored masses.
    flat = logits.reshape(12, 12)
    (mean, aux), (total, _), (per, _) = (
        qloss.in_level_loss(flat, ids, floor=0.9, reduction=r) for r in ("mean", "sum", "none")
    )
    np.testing.assert_allclose(per, 1 - probs.reshape(12, 3).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(aux.out_of_level_mass, per)
    np.testing.assert_allclose(float(total), 12 * float(mean), rtol=1e-6)
    assert float(mean) == pytest.approx(max(0.9, float(np.mean(per))), rel=1e-6)
