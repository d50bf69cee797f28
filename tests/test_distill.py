"""Tests of scorejax.distill and the one-step generators against closed forms and invariances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scorejax import analytic, backtracking, distill
from scorejax.models.generator import DenoiserGenerator, MLPGenerator, denoiser_generator
from scorejax.models.mlp import ScoreMLP
from scorejax.score_matching import make_score_fn
from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)]


def _two_mixtures():
    target = analytic.ring8(radius=2.0, std=0.2)
    fake = analytic.GaussianMixture(
        jnp.array([0.3, 0.7]), jnp.array([[0.5, -0.2], [-1.0, 1.0]]), jnp.array([0.4, 0.8])
    )
    return target, fake


def _mmd(x, y, bandwidths=(0.1, 0.5, 1.0, 2.0)):
    """Unbiased multi-bandwidth RBF MMD^2 (a small reference for the distillation test)."""

    def k(a, b):
        d2 = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        return sum(jnp.exp(-d2 / (2 * h**2)) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - jnp.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - jnp.trace(kyy)) / (m * (m - 1))
        - 2 * k(x, y).mean()
    )


def _init(module, key, *args):
    """`module.init` under one jit: a single compilation instead of one per eager op."""
    return jax.jit(module.init)(key, *args)


# --------------------------------------------------------------------------------------------
# The surrogate loss and the weightings.


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_surrogate_gradient_is_g_over_pixels(dtype):
    """d/dx0 of 1/2 mean_pixels (x0 - sg(x0 - g))^2 is (x0 - (x0 - g)) / D: g / D up to one
    rounding of x0 - g (D = 6 pixels per example)."""
    with jax.enable_x64(dtype == "float64"):
        x0 = jax.random.normal(jax.random.key(0), (5, 3, 2), dtype)
        g = jax.random.normal(jax.random.key(1), (5, 3, 2), dtype)
        grad = jax.grad(lambda x: distill.surrogate_loss(x, g).sum())(x0)
        assert grad.dtype == x0.dtype
        ulp = jnp.finfo(x0.dtype).eps * (jnp.abs(x0) + jnp.abs(g))
        assert bool(jnp.all(jnp.abs(6 * grad - g) <= 6 * ulp))
        np.testing.assert_allclose(
            distill.surrogate_loss(x0, g),
            0.5 * jnp.mean(g**2, (1, 2)),
            rtol=10 * float(jnp.finfo(x0.dtype).eps),
        )


@pytest.mark.parametrize("weighting", distill.DISTILL_WEIGHTINGS)
def test_generator_loss_gradient_equals_g(weighting):
    """With x0 = params `[B, D]`, d loss / d params = g / D (reduction='sum') and g / (B D)
    (reduction='mean')."""
    sde = VPSDE()
    target, fake = _two_mixtures()
    x0 = jax.random.normal(jax.random.key(0), (16, 2))
    key = jax.random.key(3)
    target_score = lambda x, t: target.marginal_score(x, t, sde=sde)
    fake_score = lambda x, t: fake.marginal_score(x, t, sde=sde)

    def loss(params, reduction):
        return distill.generator_loss(
            lambda p, z: p,
            params,
            jnp.zeros((16, 2)),
            key,
            sde=sde,
            target_score_fn=lambda _, x, t: target_score(x, t),
            target_params=None,
            fake_score_fn=lambda _, x, t: fake_score(x, t),
            fake_params=None,
            weighting=weighting,
            reduction=reduction,
        )[0]

    @jax.jit
    def run(x0):
        g, _ = distill.score_distillation_grad(
            target_score, fake_score, x0, key, sde=sde, weighting=weighting
        )
        return jax.grad(loss)(x0, "sum"), jax.grad(loss)(x0, "mean"), g

    grad_sum, grad_mean, g = run(x0)
    np.testing.assert_allclose(grad_sum, g / 2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_mean, g / 32, rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(g).max()) > 0


def test_distill_loss_reductions_agree():
    """sum == B * mean, and "none" holds the per-example values both reduce, for the generator
    loss (per-example surrogate 1/2 mean_pixels g^2 at the fixed point) and the fake score loss."""
    sde = VPSDE()
    target, fake = _two_mixtures()
    z = jax.random.normal(jax.random.key(0), (16, 2))
    key = jax.random.key(3)

    def gen(reduction):
        return distill.generator_loss(
            lambda p, z: p * z,
            1.5,
            z,
            key,
            sde=sde,
            target_score_fn=lambda _, x, t: target.marginal_score(x, t, sde=sde),
            target_params=None,
            fake_score_fn=lambda _, x, t: fake.marginal_score(x, t, sde=sde),
            fake_params=None,
            reduction=reduction,
        )

    per, aux = gen("none")
    g, _ = distill.score_distillation_grad(
        lambda x, t: target.marginal_score(x, t, sde=sde),
        lambda x, t: fake.marginal_score(x, t, sde=sde),
        1.5 * z,
        key,
        sde=sde,
    )
    assert per.shape == (16,) and aux.score_gap.shape == (16,)
    np.testing.assert_allclose(per, 0.5 * jnp.mean(g**2, -1), rtol=1e-6)
    np.testing.assert_allclose(gen("mean")[0], jnp.mean(per), rtol=1e-6)
    np.testing.assert_allclose(gen("sum")[0], 16 * gen("mean")[0], rtol=1e-6)

    def fake_loss(reduction):
        score = lambda _, x, t: fake.marginal_score(x, t, sde=sde)
        return distill.fake_score_loss(score, None, z, key, sde=sde, reduction=reduction)[0]

    per_fake = fake_loss("none")
    assert per_fake.shape == (16,)
    np.testing.assert_allclose(fake_loss("mean"), jnp.mean(per_fake), rtol=1e-6)
    np.testing.assert_allclose(fake_loss("sum"), 16 * fake_loss("mean"), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of"):
        gen("avg")


@pytest.mark.parametrize("weighting", distill.DISTILL_WEIGHTINGS)
def test_equal_scores_give_zero_generator_gradient(weighting):
    sde = VPSDE()
    target, _ = _two_mixtures()
    gen = MLPGenerator(data_dim=2, hidden_sizes=(16,))
    params = _init(gen, jax.random.key(0), jnp.zeros((1, 2)))
    score = lambda p, x, t: target.marginal_score(x, t, sde=sde)
    grads = jax.jit(
        jax.grad(
            lambda gp: distill.generator_loss(
                gen.apply,
                gp,
                jax.random.normal(jax.random.key(1), (32, 2)),
                jax.random.key(2),
                sde=sde,
                target_score_fn=score,
                target_params=None,
                fake_score_fn=score,
                fake_params=None,
                weighting=weighting,
            )[0]
        )
    )(params)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf, 0.0)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_weightings_match_their_formulas(sde):
    """g of every weighting against closed forms from the analytic denoisers and scores (f64)."""
    with jax.enable_x64(True):
        target, fake = _two_mixtures()
        target = jax.tree.map(lambda a: a.astype(jnp.float64), target)
        fake = jax.tree.map(lambda a: a.astype(jnp.float64), fake)
        x0 = jax.random.normal(jax.random.key(0), (64, 2), jnp.float64)

        @jax.jit
        def run(x0):
            out = {}
            for weighting in distill.DISTILL_WEIGHTINGS:
                g, aux = distill.score_distillation_grad(
                    lambda x, t: target.marginal_score(x, t, sde=sde),
                    lambda x, t: fake.marginal_score(x, t, sde=sde),
                    x0,
                    jax.random.key(1),
                    sde=sde,
                    weighting=weighting,
                    time_dist=distill.TimeDistribution("uniform", 0.05, 0.95),
                )
                t, x_t = aux.t, aux.x_t
                sigma = sde.sigma(t)[:, None]
                d_fake = fake.denoiser(x_t, t, sde=sde)
                d_target = target.denoiser(x_t, t, sde=sde)
                delta = fake.marginal_score(x_t, t, sde=sde) - target.marginal_score(
                    x_t, t, sde=sde
                )
                want = {
                    "diff_instruct": d_fake - d_target,
                    "vsd": sigma**3 * delta,
                    "dmd": (d_fake - d_target)
                    / jnp.mean(jnp.abs(x0 - d_target), -1, keepdims=True),
                }[weighting]
                gap = jnp.sum(sigma**2 * delta**2, -1)
                out[weighting] = (g, want, aux.score_gap, gap, t)
            return out

        for weighting, (g, want, gap, want_gap, t) in run(x0).items():
            np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-12, err_msg=weighting)
            np.testing.assert_allclose(gap, want_gap, rtol=1e-9, err_msg=weighting)
            assert float(jnp.min(t)) >= 0.05 and float(jnp.max(t)) <= 0.95


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_log_nsr_time_distribution(sde):
    """log(sigma_t / alpha_t) of the drawn t equals the log-normal draw, clipped to the range."""
    td = distill.TimeDistribution("log_nsr_normal", 0.02, 0.98, log_nsr_mean=-0.5, log_nsr_std=1.5)
    key = jax.random.key(0)
    t = jax.jit(lambda k: td.sample(k, 2000, sde=sde))(key)
    want = td.log_nsr_mean + td.log_nsr_std * np.asarray(jax.random.normal(key, (2000,)))
    t64 = np.asarray(t, np.float64)
    with jax.enable_x64(True):
        got = np.asarray(jnp.log(sde.sigma(t64)) - sde.log_alpha(t64))
        lo, hi = (float(jnp.log(sde.sigma(u)) - sde.log_alpha(u)) for u in (0.02, 0.98))
    np.testing.assert_allclose(got, np.clip(want, lo, hi), atol=2e-4)
    assert float(t.min()) >= np.float32(0.02) and float(t.max()) <= np.float32(0.98)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="weighting"):
        distill.score_distillation_grad(
            None, None, jnp.zeros((2, 2)), jax.random.key(0), sde=VPSDE(), weighting="sds"
        )
    with pytest.raises(ValueError, match="t_min"):
        distill.TimeDistribution("uniform", 0.5, 0.1)
    with pytest.raises(ValueError, match="time distribution"):
        distill.TimeDistribution("beta")
    with pytest.raises(ValueError, match="same shape"):
        distill.surrogate_loss(jnp.zeros((2, 2)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="schedule"):
        backtracking.BacktrackSchedule("cosine")


def test_generator_loss_jit_equals_eager():
    sde = VPSDE()
    target, fake = _two_mixtures()
    gen = MLPGenerator(data_dim=2, hidden_sizes=(16,))
    params = _init(gen, jax.random.key(0), jnp.zeros((1, 2)))
    z = jax.random.normal(jax.random.key(1), (32, 2))

    def f(p):
        return distill.generator_loss(
            gen.apply,
            p,
            z,
            jax.random.key(2),
            sde=sde,
            target_score_fn=lambda _, x, t: target.marginal_score(x, t, sde=sde),
            target_params=None,
            fake_score_fn=lambda _, x, t: fake.marginal_score(x, t, sde=sde),
            fake_params=None,
            weighting="dmd",
        )[0]

    np.testing.assert_allclose(jax.jit(f)(params), f(params), rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(jax.jit(jax.grad(f))(params)),
        jax.tree.leaves(jax.grad(f)(params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Generators.


@pytest.mark.parametrize("parametrization", ["score", "eps", "x0"])
def test_denoiser_generator_is_tweedie_at_t_init(parametrization):
    sde = VPSDE()
    net = ScoreMLP(hidden_sizes=(16,))
    teacher = _init(net, jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    gen = DenoiserGenerator(net, sde, t_init=0.7, parametrization=parametrization)
    gparams = DenoiserGenerator.params_from_teacher(teacher)
    fresh = _init(gen, jax.random.key(5), jnp.zeros((1, 2)))
    assert jax.tree.structure(fresh) == jax.tree.structure(gparams)
    z = jax.random.normal(jax.random.key(1), (8, 2))
    score_fn = make_score_fn(net.apply, sde=sde, parametrization=parametrization)
    functional = denoiser_generator(score_fn, sde, 0.7)

    @jax.jit
    def run(teacher, gparams, z):
        t = jnp.full((8,), 0.7)
        alpha, sigma = sde.alpha(0.7), sde.sigma(0.7)
        x = sigma * z
        want = (x + sigma**2 * score_fn(teacher, x, t)) / alpha
        return want, net.apply(teacher, x, t), gen.apply(gparams, z), functional(teacher, z)

    want, out, got, got_functional = run(teacher, gparams, z)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if parametrization == "x0":
        np.testing.assert_allclose(got, out, rtol=1e-6)
    np.testing.assert_allclose(got_functional, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Distillation into the exact mixture score.


@pytest.mark.slow
def test_distilling_into_exact_score_moves_generator_to_the_mixture():
    """Target = analytic ring score, fake = a small DSM-trained MLP; MMD falls by >= 4x."""
    sde = VPSDE()
    gmm = analytic.ring8(radius=2.0, std=0.1)
    gen = MLPGenerator(data_dim=2, hidden_sizes=(64, 64), output_scale=0.1)
    fake = ScoreMLP(hidden_sizes=(64, 64))
    fake_fn = make_score_fn(fake.apply, sde=sde, parametrization="eps")
    key = jax.random.key(0)
    gp = _init(gen, key, jnp.zeros((1, 2)))
    fp = _init(fake, key, jnp.zeros((1, 2)), jnp.zeros((1,)))
    tx = optax.adam(1e-3)
    gos, fos = tx.init(gp), tx.init(fp)
    batch = 256

    def target(_, x, t):
        return gmm.marginal_score(x, t, sde=sde)

    @jax.jit
    def step(gp, gos, fp, fos, k, train_gen):
        x0 = gen.apply(gp, jax.random.normal(jax.random.fold_in(k, 1), (batch, 2)))
        fgrad = jax.grad(lambda p: distill.fake_score_loss(fake_fn, p, x0, k, sde=sde)[0])(fp)
        fu, fos = tx.update(fgrad, fos, fp)
        fp = optax.apply_updates(fp, fu)
        ggrad = jax.grad(
            lambda p: distill.generator_loss(
                gen.apply,
                p,
                jax.random.normal(jax.random.fold_in(k, 2), (batch, 2)),
                k,
                sde=sde,
                target_score_fn=target,
                target_params=None,
                fake_score_fn=fake_fn,
                fake_params=fp,
            )[0]
        )(gp)
        gu, gos_new = tx.update(ggrad, gos, gp)
        gp_new = optax.apply_updates(gp, gu)
        gp = jax.tree.map(lambda a, b: jnp.where(train_gen, a, b), gp_new, gp)
        gos = jax.tree.map(lambda a, b: jnp.where(train_gen, a, b), gos_new, gos)
        return gp, gos, fp, fos

    def mmd(gp):
        x = gen.apply(gp, jax.random.normal(jax.random.key(9), (1000, 2)))
        return float(_mmd(x, gmm.sample(jax.random.key(8), 1000)))

    before = mmd(gp)
    for s in range(500):
        gp, gos, fp, fos = step(gp, gos, fp, fos, jax.random.fold_in(key, s), s >= 100)
    after = mmd(gp)
    assert after * 4 < before, (before, after)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_vsd_weighting_is_sigma_cubed_score_difference_at_fixed_t(t):
    """ProlificDreamer's omega(t) = sigma_t^2 on eps_fake - eps_target is sigma_t^3 (s_fake -
    s_target) in score space, checked at fixed t against two closed-form Gaussian scores
    s(x) = -(x - alpha m) / (alpha^2 v + sigma^2) (data N(m, v I))."""
    sde = VPSDE()
    (m_f, v_f), (m_t, v_t) = (jnp.array([0.5, -1.0]), 0.3), (jnp.array([-1.0, 2.0]), 1.5)

    def gaussian_score(m, v):
        def score(x, tt):
            a, s = sde.alpha(tt)[:, None], sde.sigma(tt)[:, None]
            return -(x - a * m) / (a**2 * v + s**2)

        return score

    x0 = jax.random.normal(jax.random.key(0), (32, 2))
    td = distill.TimeDistribution("uniform", t, t + 1e-6)
    g, aux = distill.score_distillation_grad(
        gaussian_score(m_t, v_t),
        gaussian_score(m_f, v_f),
        x0,
        jax.random.key(1),
        sde=sde,
        weighting="vsd",
        time_dist=td,
    )
    x_t, tt = aux.x_t, aux.t
    sigma = float(sde.sigma(jnp.float32(t)))
    a = float(sde.alpha(jnp.float32(t)))
    s_fake = -(x_t - a * m_f) / (a**2 * v_f + sigma**2)
    s_target = -(x_t - a * m_t) / (a**2 * v_t + sigma**2)
    np.testing.assert_allclose(g, sigma**3 * (s_fake - s_target), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tt, t, atol=1e-6)


def test_score_distance_is_the_mismatch_against_closed_forms():
    """score_distance of a mixture's exact score against itself is 0, and against a shifted
    score s + c it is E sigma_t^2 ||c||^2 exactly (same t draws)."""
    sde = VPSDE()
    target, _ = _two_mixtures()
    x0 = target.sample(jax.random.key(0), 512)
    exact = lambda x, t: target.marginal_score(x, t, sde=sde)
    c = jnp.array([0.3, -0.4])
    td = distill.TimeDistribution("uniform", 0.1, 0.9)
    key = jax.random.key(5)
    assert float(distill.score_distance(exact, exact, x0, key, sde=sde, time_dist=td)) == 0.0
    shifted = lambda x, t: exact(x, t) + c
    got = distill.score_distance(shifted, exact, x0, key, sde=sde, time_dist=td)
    t = td.sample(jax.random.split(key)[0], 512, sde=sde)
    np.testing.assert_allclose(got, jnp.mean(sde.sigma(t) ** 2) * 0.25, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Stage 2: the backtracking schedule.


def _walk(schedule, num_nodes, gaps, segment_gaps=None):
    update = jax.jit(backtracking.schedule_update, static_argnames="schedule")
    state = backtracking.schedule_init(num_nodes)
    seg = jnp.ones((max(num_nodes, 1),)) if segment_gaps is None else jnp.asarray(segment_gaps)
    nodes, switches, seen = [], [], []
    for gap in gaps:
        nodes.append(int(state.node))
        state, switched, ema = update(state, gap, schedule=schedule, segment_gaps=seg)
        switches.append(bool(switched))
        seen.append(float(ema))
    return nodes, switches, state, seen


def test_fixed_schedule_visits_every_node():
    sched = backtracking.BacktrackSchedule("fixed", interval=3, min_interval=0)
    nodes, switches, state, _ = _walk(sched, 4, [1.0] * 14)
    assert nodes == [3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0, 0, 0]
    assert [i for i, s in enumerate(switches) if s] == [2, 5, 8]
    assert int(state.num_switches) == 3 and int(state.node) == 0


def test_adaptive_schedule_follows_the_recorded_gaps():
    """A scripted path: the generator closes each node's recorded gap Delta_j at a known update.

    Path of 3 nodes with segment gaps Delta = (0.2, 1.0, 4.0) (node 0 -> 1 -> 2 -> 3); the target
    starts at node 2, whose gap is Delta_2 = 4.0, so the rule (ratio 0.5, no smoothing) waits for
    a score gap <= 2.0, then <= 0.5 on node 1, then <= 0.1 on node 0... which it never needs:
    node 0 is the teacher, the walk ends there.
    """
    sched = backtracking.BacktrackSchedule(
        "adaptive", interval=100, min_interval=2, ratio=0.5, ema_decay=0.0
    )
    seg = [0.2, 1.0, 4.0]
    # Node 2: 4.0, 3.0, 2.5, then 1.9 (<= 2.0) at update 4 -> switch after update index 3.
    # Node 1: 1.0 (a fresh gap), 0.8, 0.6, 0.45 (<= 0.5) -> switch after index 7.
    gaps = [4.0, 3.0, 2.5, 1.9, 1.0, 0.8, 0.6, 0.45, 0.3, 0.05, 0.01]
    nodes, switches, state, seen = _walk(sched, 3, gaps, seg)
    assert [i for i, s in enumerate(switches) if s] == [3, 7]
    assert nodes == [2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0]
    assert seen[3] == pytest.approx(1.9) and seen[7] == pytest.approx(0.45)

    # Never early: a gap already below the threshold waits for min_interval updates.
    sched = backtracking.BacktrackSchedule("adaptive", interval=100, min_interval=3, ratio=0.5)
    _, switches, _, _ = _walk(sched, 2, [0.01] * 5, [1.0, 1.0])
    assert [i for i, s in enumerate(switches) if s] == [2]
    # The threshold is absolute: a gap that halves but stays above ratio x Delta never fires
    # (the old relative rule would have), until the interval cap.
    sched = backtracking.BacktrackSchedule(
        "adaptive", interval=6, min_interval=1, ratio=0.5, ema_decay=0.0
    )
    _, switches, _, _ = _walk(sched, 2, [8.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0], [1.0, 2.0])
    assert [i for i, s in enumerate(switches) if s] == [5]
    # With smoothing, one lucky small gap does not trigger a switch.
    sched = backtracking.BacktrackSchedule(
        "adaptive", interval=100, min_interval=1, ratio=0.5, ema_decay=0.9
    )
    _, switches, _, _ = _walk(sched, 2, [2.0, 2.0, 0.0, 2.0, 2.0], [1.0, 2.0])
    assert not any(switches)
    # Plain score distillation: no path, the teacher from the start, no switch.
    nodes, switches, _, _ = _walk(sched, 0, [1.0] * 12)
    assert set(nodes) == {0} and not any(switches)
    with pytest.raises(ValueError, match="segment_gaps"):
        backtracking.schedule_update(backtracking.schedule_init(2), 1.0, schedule=sched)
