"""Tests of scorejax.distill and the one-step generators against closed forms and invariances."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scorejax import analytic, distill
from scorejax.models.generator import DenoiserGenerator, MLPGenerator, denoiser_generator
from scorejax.models.mlp import ScoreMLP
from scorejax.score_matching import make_score_fn
from scorejax.sde import VESDE, VPSDE, SubVPSDE

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
def test_surrogate_gradient_is_g_exactly(dtype):
    """d/dx0 of 1/2 ||x0 - sg(x0 - g)||^2 is x0 - (x0 - g): g up to one rounding of x0 - g."""
    with jax.enable_x64(dtype == "float64"):
        x0 = jax.random.normal(jax.random.key(0), (5, 3, 2), dtype)
        g = jax.random.normal(jax.random.key(1), (5, 3, 2), dtype)
        grad = jax.grad(lambda x: distill.surrogate_loss(x, g).sum())(x0)
        assert grad.dtype == x0.dtype
        ulp = jnp.finfo(x0.dtype).eps * (jnp.abs(x0) + jnp.abs(g))
        assert bool(jnp.all(jnp.abs(grad - g) <= ulp))
        np.testing.assert_allclose(
            distill.surrogate_loss(x0, g),
            0.5 * jnp.sum(g**2, (1, 2)),
            rtol=10 * float(jnp.finfo(x0.dtype).eps),
        )


@pytest.mark.parametrize("weighting", distill.WEIGHTINGS)
def test_generator_loss_gradient_equals_g(weighting):
    """With x0 = params, d loss / d params = g (reduce='sum') and g / B (reduce='mean')."""
    sde = VPSDE()
    target, fake = _two_mixtures()
    x0 = jax.random.normal(jax.random.key(0), (16, 2))
    key = jax.random.key(3)
    target_score = lambda x, t: target.marginal_score(sde, x, t)
    fake_score = lambda x, t: fake.marginal_score(sde, x, t)

    def loss(params, reduce):
        return distill.generator_loss(
            lambda p, z: p,
            params,
            jnp.zeros((16, 2)),
            key,
            sde,
            lambda _, x, t: target_score(x, t),
            None,
            lambda _, x, t: fake_score(x, t),
            None,
            weighting=weighting,
            reduce=reduce,
        )[0]

    @jax.jit
    def run(x0):
        g, _ = distill.score_distillation_grad(
            x0, key, sde, target_score, fake_score, weighting=weighting
        )
        return jax.grad(loss)(x0, "sum"), jax.grad(loss)(x0, "mean"), g

    grad_sum, grad_mean, g = run(x0)
    np.testing.assert_allclose(grad_sum, g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_mean, g / 16, rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(g).max()) > 0


@pytest.mark.parametrize("weighting", distill.WEIGHTINGS)
def test_equal_scores_give_zero_generator_gradient(weighting):
    sde = VPSDE()
    target, _ = _two_mixtures()
    gen = MLPGenerator(data_dim=2, hidden_sizes=(16,))
    params = _init(gen, jax.random.key(0), jnp.zeros((1, 2)))
    score = lambda p, x, t: target.marginal_score(sde, x, t)
    grads = jax.jit(
        jax.grad(
            lambda gp: distill.generator_loss(
                gen.apply,
                gp,
                jax.random.normal(jax.random.key(1), (32, 2)),
                jax.random.key(2),
                sde,
                score,
                None,
                score,
                None,
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
            for weighting in distill.WEIGHTINGS:
                g, aux = distill.score_distillation_grad(
                    x0,
                    jax.random.key(1),
                    sde,
                    lambda x, t: target.marginal_score(sde, x, t),
                    lambda x, t: fake.marginal_score(sde, x, t),
                    weighting=weighting,
                    time_dist=distill.TimeDistribution("uniform", 0.05, 0.95),
                )
                t, x_t = aux["t"], aux["x_t"]
                alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
                d_fake = fake.denoiser(sde, x_t, t)
                d_target = target.denoiser(sde, x_t, t)
                delta = fake.marginal_score(sde, x_t, t) - target.marginal_score(sde, x_t, t)
                want = {
                    "diff_instruct": d_fake - d_target,
                    "vsd": alpha * sigma**2 * delta,
                    "dmd": (d_fake - d_target)
                    / jnp.mean(jnp.abs(x0 - d_target), -1, keepdims=True),
                }[weighting]
                gap = jnp.sum(sigma**2 * delta**2, -1)
                out[weighting] = (g, want, aux["score_gap"], gap, t)
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
    t = jax.jit(lambda k: td.sample(k, 2000, sde))(key)
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
            jnp.zeros((2, 2)), jax.random.key(0), VPSDE(), None, None, weighting="sds"
        )
    with pytest.raises(ValueError, match="t_min"):
        distill.TimeDistribution("uniform", 0.5, 0.1)
    with pytest.raises(ValueError, match="time distribution"):
        distill.TimeDistribution("beta")
    with pytest.raises(ValueError, match="same shape"):
        distill.surrogate_loss(jnp.zeros((2, 2)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="schedule"):
        distill.BacktrackSchedule("cosine")


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
            sde,
            lambda _, x, t: target.marginal_score(sde, x, t),
            None,
            lambda _, x, t: fake.marginal_score(sde, x, t),
            None,
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
    score_fn = make_score_fn(net.apply, sde, parametrization)
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
    fake_fn = make_score_fn(fake.apply, sde, "eps")
    key = jax.random.key(0)
    gp = _init(gen, key, jnp.zeros((1, 2)))
    fp = _init(fake, key, jnp.zeros((1, 2)), jnp.zeros((1,)))
    tx = optax.adam(1e-3)
    gos, fos = tx.init(gp), tx.init(fp)
    batch = 256

    def target(_, x, t):
        return gmm.marginal_score(sde, x, t)

    @jax.jit
    def step(gp, gos, fp, fos, k, train_gen):
        x0 = gen.apply(gp, jax.random.normal(jax.random.fold_in(k, 1), (batch, 2)))
        fgrad = jax.grad(lambda p: distill.fake_score_loss(fake_fn, p, x0, k, sde)[0])(fp)
        fu, fos = tx.update(fgrad, fos, fp)
        fp = optax.apply_updates(fp, fu)
        ggrad = jax.grad(
            lambda p: distill.generator_loss(
                gen.apply,
                p,
                jax.random.normal(jax.random.fold_in(k, 2), (batch, 2)),
                k,
                sde,
                target,
                None,
                fake_fn,
                fp,
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


# --------------------------------------------------------------------------------------------
# Stage 1: the degradation path.


@functools.cache
def _tiny_setup(hidden=(8,), seed=0):
    # Cached: the same functions across recordings let them share one compiled stage-1 step.
    sde = VPSDE()
    net = ScoreMLP(hidden_sizes=hidden, embed_dim=8)
    teacher = _init(net, jax.random.key(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))
    score_fn = make_score_fn(net.apply, sde, "eps")
    gen = MLPGenerator(data_dim=2, hidden_sizes=(8,), output_scale=0.1)
    gparams = _init(gen, jax.random.key(1), jnp.zeros((1, 2)))
    return sde, net, teacher, score_fn, gen, gparams


_STAGE1_OPTIMIZER = optax.adam(1e-2)


def _record(directory, num_nodes, steps_per_node, callback=None, hidden=(8,), seed=0):
    sde, _, teacher, score_fn, gen, gparams = _tiny_setup(hidden, seed)
    return distill.record_degradation(
        directory,
        score_fn=score_fn,
        teacher_params=teacher,
        generator_fn=gen.apply,
        generator_params=gparams,
        sde=sde,
        latent_shape=(2,),
        key=jax.random.key(7),
        num_nodes=num_nodes,
        steps_per_node=steps_per_node,
        batch_size=16,
        optimizer=_STAGE1_OPTIMIZER,
        callback=callback,
    )


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _tree_dist(a, b):
    return float(
        sum(
            np.sum((np.asarray(x) - np.asarray(y)) ** 2)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )
    )


def test_path_nodes_load_in_order_and_resume_exactly(tmp_path):
    _, _, teacher, *_ = _tiny_setup()
    path = _record(tmp_path / "p3", num_nodes=3, steps_per_node=4)
    assert len(path) == 4 and path.num_nodes == 3
    assert path.order == (3, 2, 1, 0)
    assert path.meta["steps"] == 12 and path.meta["seconds"] > 0
    _assert_trees_equal(path.load(0, teacher), teacher)
    nodes = [path.load(i, teacher) for i in range(4)]
    dists = [_tree_dist(n, teacher) for n in nodes]
    assert dists[0] == 0 and dists[1] < dists[2] < dists[3], dists

    # Node 2 of a 3x4-step path is the state after 8 updates: node 1 of a 1x8-step path.
    other = _record(tmp_path / "p1", num_nodes=1, steps_per_node=8)
    np.testing.assert_allclose(
        jax.tree.leaves(other.load(1, teacher))[0], jax.tree.leaves(nodes[2])[0], rtol=1e-6
    )

    stacked = path.stacked(teacher)
    for i in range(4):
        _assert_trees_equal(distill.select_node(stacked, jnp.int32(i)), nodes[i])

    # Interrupt the recording in the middle of node 3, then finish it.
    def crash(step, loss):
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _record(tmp_path / "p3b", num_nodes=3, steps_per_node=4, callback=crash)
    with pytest.raises(ValueError, match="incomplete"):
        distill.DegradationPath(tmp_path / "p3b")
    resumed = _record(tmp_path / "p3b", num_nodes=3, steps_per_node=4)
    for i in range(4):
        _assert_trees_equal(resumed.load(i, teacher), nodes[i])
    # A complete path with the same settings is returned without retraining.
    again = _record(tmp_path / "p3b", num_nodes=3, steps_per_node=4, callback=crash)
    assert again.meta["seconds"] == resumed.meta["seconds"]


def test_path_bad_input_errors(tmp_path):
    _, _, teacher, *_ = _tiny_setup()
    with pytest.raises(FileNotFoundError, match="no degradation path"):
        distill.DegradationPath(tmp_path / "nothing")
    with pytest.raises(ValueError, match="empty"):
        _record(tmp_path / "empty", num_nodes=0, steps_per_node=4)
    # A recording that holds only the teacher (no node) is refused as empty.
    os.makedirs(tmp_path / "empty2")
    with open(tmp_path / "empty2" / "path.json", "w") as f:
        json.dump({"complete": True, "num_nodes": 0, "fingerprint": []}, f)
    with pytest.raises(ValueError, match="empty"):
        distill.DegradationPath(tmp_path / "empty2")

    path = _record(tmp_path / "p", num_nodes=1, steps_per_node=2)
    _, _, wide, *_ = _tiny_setup(hidden=(12,))
    with pytest.raises(ValueError, match="different score-model architecture"):
        path.load(1, wide)
    with pytest.raises(ValueError, match="different score-model architecture"):
        _record(tmp_path / "p", num_nodes=1, steps_per_node=2, hidden=(12,))
    with pytest.raises(ValueError, match="other settings"):
        _record(tmp_path / "p", num_nodes=2, steps_per_node=2)
    with pytest.raises(ValueError, match="teacher_digest"):
        _record(tmp_path / "p", num_nodes=1, steps_per_node=2, seed=1)
    with pytest.raises(IndexError):
        path.load(2, teacher)


# --------------------------------------------------------------------------------------------
# Stage 2: the backtracking schedule.


def _walk(schedule, num_nodes, gaps):
    update = jax.jit(distill.schedule_update, static_argnums=0)
    state = distill.schedule_init(num_nodes)
    nodes, switches = [], []
    for gap in gaps:
        nodes.append(int(state.node))
        state, switched = update(schedule, state, gap)
        switches.append(bool(switched))
    return nodes, switches, state


def test_fixed_schedule_visits_every_node():
    nodes, switches, state = _walk(distill.BacktrackSchedule("fixed", interval=3), 4, [1.0] * 14)
    assert nodes == [3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0, 0, 0]
    assert [i for i, s in enumerate(switches) if s] == [2, 5, 8]
    assert int(state.num_switches) == 3 and int(state.node) == 0


def test_adaptive_schedule_switches_when_the_gap_has_fallen():
    sched = distill.BacktrackSchedule(
        "adaptive", interval=100, min_interval=2, ratio=0.5, ema_decay=0.5
    )
    # Gap 4 for 3 updates, then 1: EMA 4, 4, 4, 2.5, 1.75 -> 1.75 <= 0.5 * 4 at the 5th update.
    nodes, switches, _ = _walk(sched, 2, [4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    assert [i for i, s in enumerate(switches) if s] == [4]
    assert nodes == [1, 1, 1, 1, 1, 0, 0]
    # A gap that never falls still moves on after `interval` updates.
    sched = distill.BacktrackSchedule("adaptive", interval=5, min_interval=1)
    nodes, switches, _ = _walk(sched, 3, [1.0] * 12)
    assert [i for i, s in enumerate(switches) if s] == [4, 9]
    # Plain score distillation: no path, the teacher from the start, no switch.
    nodes, switches, _ = _walk(sched, 0, [1.0] * 12)
    assert set(nodes) == {0} and not any(switches)
