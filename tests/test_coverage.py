"""Tests for scorejax.dco and scorejax.pass_at: DCO loss/weight against a 60-digit oracle,
gradients, reductions, pass@N and pass@k."""

from __future__ import annotations

import decimal
import itertools
import math
from decimal import Decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import scorejax
from scorejax import dco, pass_at
from scorejax.logprobs import sequence_logprob, token_logprobs

S_GRID = [-1e4, -300.0, -50.0, -20.0, -5.0, -1.0, -0.7, -0.3, -1e-3, -1e-6, -1e-12]
N_GRID = [1, 2, 4, 7.5, 16, 256, 4096]


def dco_none(s, n):
    """Per-example DCO loss, positional (for vmap's in_axes)."""
    return dco.dco_loss(s, n=n, reduction="none")[0]


def dco_f(s, n):
    """The confidence factor F, positional (for vmap's in_axes)."""
    return dco.dco_weight(s, n=n)

# ----------------------------------------------------------------------------------------------
# 60-digit oracle (series where a direct evaluation would cancel)

_CTX = decimal.Context(prec=60, Emin=-10**9, Emax=10**9)


def _log1m(p: Decimal) -> Decimal:
    """log(1 - p)."""
    if p < Decimal("1e-12"):
        return -sum((p**k / k for k in range(1, 8)), Decimal(0))
    return _CTX.ln(1 - p)


def _expm1(z: Decimal) -> Decimal:
    if abs(z) < Decimal("1e-12"):
        return sum((z**k / math.factorial(k) for k in range(1, 8)), Decimal(0))
    return _CTX.exp(z) - 1


def oracle(s: float, n: float) -> tuple[float, float]:
    """(loss, F) = (-log(1-(1-p)^n), n p (1-p)^(n-1) / (1-(1-p)^n)) with p = e^s."""
    with decimal.localcontext(_CTX):
        p = _CTX.exp(Decimal(s))
        n_d = Decimal(n)
        l1 = _log1m(p)
        fail = _CTX.exp(n_d * l1)  # (1-p)^n
        cover = -_expm1(n_d * l1)  # 1 - (1-p)^n
        if fail < Decimal("1e-12"):
            loss = sum((fail**k / k for k in range(1, 8)), Decimal(0))  # -log(1 - fail)
        else:
            loss = -_CTX.ln(cover)
        weight = n_d * p * _CTX.exp((n_d - 1) * l1) / cover
        return float(loss), float(weight)


# ----------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("n", N_GRID)
def test_float64_matches_oracle(n):
    with jax.enable_x64(True):
        s = jnp.asarray(S_GRID, jnp.float64)
        loss = np.asarray(dco_none(s, n))
        weight = np.asarray(dco_f(s, n))
        assert loss.dtype == np.float64
    ref = np.array([oracle(x, n) for x in S_GRID])
    np.testing.assert_allclose(loss, ref[:, 0], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(weight, ref[:, 1], rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("n", N_GRID)
def test_float32_matches_oracle(n):
    s = jnp.asarray(S_GRID, jnp.float32)
    loss = np.asarray(dco_none(s, n))
    weight = np.asarray(dco_f(s, n))
    assert loss.dtype == np.float32
    ref = np.array([oracle(float(x), n) for x in np.asarray(s)])
    # Relative accuracy wherever the exact value is a normal float32; below e^-27 (p -> 1) the
    # error grows like eps * x with x = -N log(1-p) <= N * 27.6.
    np.testing.assert_allclose(loss, ref[:, 0], rtol=2e-5, atol=1e-37)
    np.testing.assert_allclose(weight, ref[:, 1], rtol=2e-5, atol=1e-37)


def test_n1_is_cross_entropy_exactly():
    s = jnp.asarray(S_GRID + [0.0], jnp.float32)
    assert np.array_equal(np.asarray(dco_none(s, 1)), np.asarray(-s))
    assert np.array_equal(np.asarray(dco_f(s, 1)), np.ones(len(S_GRID) + 1, np.float32))
    grad = jax.grad(lambda x: dco_none(x, 1).sum())(s)
    assert np.array_equal(np.asarray(grad), -np.ones(len(S_GRID) + 1, np.float32))


def test_weight_limits_and_monotone():
    s = jnp.linspace(-40.0, -1e-6, 2001)
    for n in [2, 4, 64, 1024]:
        f = np.asarray(dco_f(s, n))
        assert np.all((f >= 0) & (f <= 1))
        assert np.all(np.diff(f) <= 2e-7), n  # decreasing in p (to float32 rounding)
        assert f[0] == pytest.approx(1.0, abs=1e-6)
        assert f[-1] < 1e-3
    # Large-N universal curve F ~ c / (e^c - 1), c = N p.
    n = 1e6
    c = np.array([0.1, 1.26, 3.6, 6.5])
    f = np.asarray(dco_f(jnp.log(jnp.asarray(c / n)), n))
    np.testing.assert_allclose(f, c / np.expm1(c), rtol=1e-4)
    np.testing.assert_allclose(f[1:], [0.5, 0.1, 0.01], atol=0.01)


def test_pass_at_n_forms_agree():
    p = np.array([0.0, 1e-9, 1e-3, 0.2, 0.5, 0.999, 1.0])
    for n in [1, 4, 64]:
        exact = 1 - (1 - p) ** n
        from_prob = pass_at.pass_at_n_from_prob(p, n=n)
        np.testing.assert_allclose(np.asarray(from_prob), exact, rtol=1e-5)
        with np.errstate(divide="ignore"):
            logp = np.log(p[1:])
        np.testing.assert_allclose(
            np.asarray(pass_at.pass_at_n(jnp.asarray(logp, jnp.float32), n=n)), exact[1:], rtol=1e-5
        )


# ----------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_nan_or_inf_anywhere(dtype):
    rng = np.random.default_rng(0)
    s_np = -np.concatenate([10 ** rng.uniform(-12, 4, 2000), [1e-12, 1e4, 0.0]])
    n_np = np.concatenate([10 ** rng.uniform(0, 6, 2000), [1.0, 1e6, 3.0]])
    with jax.enable_x64(dtype == jnp.float64):
        s, n = jnp.asarray(s_np, dtype), jnp.asarray(n_np, dtype)

        def total(s, n):
            return jnp.sum(dco_none(s, n))

        vals = [dco_none(s, n), dco_f(s, n)]
        vals += list(jax.jit(jax.grad(total, argnums=(0, 1)))(s, n))
        vals += [jax.jit(jax.vmap(jax.grad(jax.grad(lambda a, b: dco_none(a, b)))))(s, n)]
        for v in vals:
            assert v.dtype == dtype
            assert np.all(np.isfinite(np.asarray(v)))
        # dloss/ds = -F exactly, F computed independently of autodiff.
        np.testing.assert_array_equal(np.asarray(vals[2]), -np.asarray(vals[1]))


@pytest.mark.parametrize("n", [1.5, 16.0, 300.0])
def test_check_grads_float64(n):
    with jax.enable_x64(True):
        s = jnp.asarray([-40.0, -8.0, -2.5, -0.9, -0.2, -1e-2], jnp.float64)
        # Finite differences of the loss itself validate the custom JVP (both arguments) and,
        # at order 2, the differentiability of the weight.
        check_grads(
            lambda a, b: dco_none(a, b),
            (s, jnp.full(s.shape, n, jnp.float64)),
            order=2,
            modes=["rev"],
            eps=1e-4,
        )


def test_gradient_against_oracle_weight():
    with jax.enable_x64(True):
        s = jnp.asarray(S_GRID, jnp.float64)
        for n in N_GRID:
            grad = np.asarray(jax.grad(lambda x, n=n: dco_none(x, n).sum())(s))
            ref = np.array([oracle(x, n)[1] for x in S_GRID])
            np.testing.assert_allclose(-grad, ref, rtol=1e-11, atol=1e-300)


def test_gradient_equals_weighted_cross_entropy_through_a_model():
    """grad mean l_DCO(theta) == grad mean(stop_grad(F) * CE(theta)) for a softmax model."""
    key = jax.random.key(0)
    w = jax.random.normal(key, (5, 7)) * 2.0
    x = jax.random.normal(jax.random.fold_in(key, 1), (32, 5))
    tokens = jax.random.randint(jax.random.fold_in(key, 2), (32, 3), 0, 7)
    mask = jnp.ones((32, 3), bool).at[:, 0].set(False)

    def seq_logp(w):
        logits = jnp.einsum("bd,dv->bv", x, w)[:, None, :] * jnp.arange(1.0, 4.0)[:, None]
        return sequence_logprob(token_logprobs(logits, tokens), mask)

    @jax.jit
    def both_grads(w, n):
        g_dco = jax.grad(lambda w: dco.dco_loss(seq_logp(w), n=n)[0])(w)
        f = dco_f(seq_logp(w), n)
        g_ce = jax.grad(lambda w: (f * -seq_logp(w)).mean())(w)
        return g_dco, g_ce

    for n in [1.0, 4.0, 64.0]:
        g_dco, g_ce = both_grads(w, n)
        np.testing.assert_allclose(np.asarray(g_dco), np.asarray(g_ce), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Transformations and errors


def test_jit_vmap_and_traced_n():
    s = jnp.asarray(S_GRID, jnp.float32)
    ns = jnp.asarray([1.0, 4.0, 256.0])
    eager = np.stack([np.asarray(dco_none(s, float(n))) for n in ns])
    jitted = jax.jit(dco_none)(s, 4.0)
    np.testing.assert_array_equal(np.asarray(jitted), eager[1])
    vm = jax.jit(jax.vmap(dco_none, in_axes=(None, 0)))(s, ns)
    np.testing.assert_allclose(np.asarray(vm), eager, rtol=1e-6)
    vw = jax.vmap(dco_f, in_axes=(0, None))(s[:, None], 16)
    np.testing.assert_array_equal(np.asarray(vw)[:, 0], np.asarray(dco_f(s, 16)))


def test_shape_errors_raise_at_trace_time():
    for run in (lambda f: f, jax.jit):
        with pytest.raises(ValueError, match="logits.shape"):
            run(token_logprobs)(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32))
        with pytest.raises(ValueError, match="integers"):
            run(token_logprobs)(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3)))
        with pytest.raises(ValueError, match="shape mismatch"):
            run(sequence_logprob)(jnp.zeros((2, 3)), jnp.ones((2,)))
        with pytest.raises(ValueError, match="reduction"):
            run(lambda s: dco.dco_loss(s, n=4, reduction="avg"))(jnp.zeros(3) - 1.0)
    with pytest.raises(ValueError, match="static int"):
        pass_at.pass_at_k(0, jnp.asarray([1]), 1)


# (function of arrays, its bad arguments, expected message): every value check of the module.
BAD_VALUES = [
    (lambda s: dco_none(s, 4), ([-1.0, 0.5],), "log-probability"),
    (lambda s: dco_none(s, 4), ([np.nan],), "NaN"),
    (dco_none, (math.log(0.5), 0.0), ">= 1"),
    (dco_f, ([-1.0], 0.5), ">= 1"),
    (lambda s: dco.dco_step_loss(s, n_eff=4.0), ([[-1.0, 0.2]],), "log-probability"),
    (lambda s: dco.select_live(s, n=4, batch_size=1), ([0.3, -1.0],), "log-probability"),
    (lambda c: dco.mc_dco_weight(c, num_samples=64, n=16), ([65],), "num_correct"),
    (lambda s, c: dco.dco_mc_loss(s, c, num_samples=64, n=16), ([0.5], [3]), "log-probability"),
    (lambda k: pass_at.pass_at_k(4, jnp.asarray([1]), k), (5,), "k must"),
    (lambda c: pass_at.pass_at_k(4, c, 1), ([5],), "num_correct"),
    (lambda p: pass_at.pass_at_n_from_prob(p, n=2), ([1.5],), "probability"),
    (lambda p, n: pass_at.pass_at_n_from_prob(p, n=n), ([0.5], 0.5), ">= 1"),
]


@pytest.mark.parametrize("fn, args, match", BAD_VALUES)
def test_value_checks_raise_eagerly_and_under_jit_when_checked(fn, args, match):
    args = tuple(jnp.asarray(a) for a in args)
    with pytest.raises(scorejax.CheckError, match=match):
        scorejax.checked(fn)(*args)
    with pytest.raises(scorejax.CheckError, match=match):
        scorejax.checked(jax.jit(fn))(*args)
    with pytest.raises(jax.errors.JaxRuntimeError, match=match):
        jax.block_until_ready(jax.jit(scorejax.checked(fn))(*args))


def test_default_path_is_unchecked_and_the_same_eagerly_and_under_jit():
    # No value check, no host copy: positive log-probs act as p = 1, n < 1 as 1, p is clipped.
    for run in (lambda f: f, jax.jit):
        out = run(dco_none)(jnp.asarray([0.5, -1.0]), 0.5)
        np.testing.assert_allclose(np.asarray(out), [-0.0, 1.0], atol=1e-6)
        half = jnp.log(0.5)
        np.testing.assert_array_equal(run(dco_none)(half, 0.0), dco_none(half, 1))
        from_prob = run(lambda p: pass_at.pass_at_n_from_prob(p, n=2))
        assert float(from_prob(jnp.asarray(1.5))) == 1.0


def test_checked_accepts_valid_input_and_composes_with_transforms():
    s = jnp.asarray(S_GRID, jnp.float32)
    safe = jax.jit(scorejax.checked(dco_none))
    np.testing.assert_array_equal(np.asarray(safe(s, 16.0)), np.asarray(dco_none(s, 16.0)))
    grad = jax.grad(lambda x: scorejax.checked(dco_none)(x, 16.0).sum())(s)
    np.testing.assert_allclose(np.asarray(grad), -np.asarray(dco_f(s, 16.0)), rtol=1e-6)
    per_row = jax.vmap(scorejax.checked(lambda x: dco_none(x, 4.0)))
    with pytest.raises(scorejax.CheckError, match="log-probability"):
        per_row(jnp.asarray([[-1.0], [0.5]]))


# ----------------------------------------------------------------------------------------------
# Sequence log-probabilities


def test_sequence_logprob_matches_loop():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 5, 6)).astype(np.float32) * 3
    tokens = rng.integers(0, 6, size=(4, 5))
    mask = rng.random((4, 5)) > 0.3
    for temp in [1.0, 0.5, 2.5]:
        ref = np.zeros(4)
        for b in range(4):
            for t in range(5):
                if mask[b, t]:
                    z = logits[b, t] / temp
                    ref[b] += z[tokens[b, t]] - np.log(np.exp(z - z.max()).sum()) - z.max()
        per_token = token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), temperature=temp)
        out = sequence_logprob(per_token, mask)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5)
        mean = sequence_logprob(per_token, mask, length_normalize=True)
        np.testing.assert_allclose(np.asarray(mean), ref / mask.sum(-1), rtol=1e-5)
    bf16 = token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(tokens))
    assert sequence_logprob(bf16, mask).dtype == jnp.float32
    everything = sequence_logprob(jnp.asarray(logits[..., 0]))
    np.testing.assert_allclose(np.asarray(everything), logits[..., 0].sum(-1), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# pass@k


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in sub) for sub in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration():
    for n in (1, 2, 5, 8):
        cs, ks, ref = [], [], []
        for c in range(n + 1):
            for k in range(1, n + 1):
                cs.append(c)
                ks.append(k)
                ref.append(_brute_pass_at_k(n, c, k))
        out = pass_at.pass_at_k(n, jnp.asarray(cs), jnp.asarray(ks))
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-7)


def test_pass_at_k_large_n_and_jit():
    from scipy.special import comb

    n = 256
    c = np.array([0, 1, 3, 40, 200, 256])
    for k in [1, 16, 64, 256]:
        ref = 1 - np.array([comb(n - ci, k, exact=True) / comb(n, k, exact=True) for ci in c])
        out = jax.jit(pass_at.pass_at_k, static_argnums=0)(n, jnp.asarray(c), k)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-5, atol=1e-7)
    pass1 = pass_at.pass_at_k(n, jnp.asarray(c), 1)
    np.testing.assert_allclose(np.asarray(pass1), c / n, rtol=1e-6)


def test_exact_pass_at_n_matches_monte_carlo():
    """Draw N answers from a categorical 'model' many times; coverage matches 1-(1-p)^N."""
    key = jax.random.key(3)
    logits = jax.random.normal(key, (6, 20)) * 2
    ref_answer = jnp.arange(6) * 3
    logp = jax.nn.log_softmax(logits)[jnp.arange(6), ref_answer]
    n, trials = 8, 4000
    draws = jax.random.categorical(jax.random.fold_in(key, 1), logits, shape=(trials, n, 6))
    hit = jnp.any(draws == ref_answer, axis=1).mean(0)
    exact = pass_at.pass_at_n(logp, n=n)
    np.testing.assert_allclose(np.asarray(hit), np.asarray(exact), atol=4 * 0.5 / trials**0.5)


# ----------------------------------------------------------------------------------------------
# Variants


def test_step_loss_reduces_to_sequence_loss():
    s = jnp.asarray([-7.0, -2.0, -0.3, -1e-4])
    for n in [1, 4, 64.0]:
        np.testing.assert_array_equal(
            np.asarray(dco.dco_step_loss(s[:, None], n_eff=n, reduction="none")[0]),
            np.asarray(dco_none(s, n)),
        )
    steps = jnp.asarray([[-1.0, -0.2, -3.0], [-0.5, -4.0, -9.0]])
    mask = jnp.asarray([[True, True, False], [True, True, True]])
    np.testing.assert_allclose(
        np.asarray(dco.dco_step_loss(steps, mask, n_eff=1, reduction="none")[0]),
        [1.2, 13.5],
        rtol=1e-6,
    )
    grad = jax.grad(lambda x: dco.dco_step_loss(x, mask, n_eff=8.0, reduction="sum")[0])(steps)
    ref = -np.where(np.asarray(mask), np.asarray(dco_f(steps, 8.0)), 0.0)
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-6)
    per_problem_n, _ = dco.dco_step_loss(
        steps, mask, n_eff=jnp.asarray([2.0, 16.0]), reduction="none"
    )
    np.testing.assert_allclose(
        np.asarray(per_problem_n[1]), np.asarray(dco_none(steps[1], 16.0).sum()), rtol=1e-6
    )


def test_monte_carlo_weight():
    c = jnp.asarray([0, 1, 5, 32, 64])
    f = dco.mc_dco_weight(c, num_samples=64, n=16)
    ref = dco_f(jnp.log(jnp.asarray([1.0, 1, 5, 32, 64]) / 64), 16)
    np.testing.assert_allclose(np.asarray(f), [1.0, *np.asarray(ref)[1:]], rtol=1e-6)
    seq = jnp.asarray([-3.0, -10.0, -2.0, -1.0, -5.0])
    g = jax.grad(lambda x: dco.dco_mc_loss(x, c, num_samples=64, n=16, reduction="sum")[0])(seq)
    np.testing.assert_allclose(np.asarray(g), -np.asarray(f), rtol=1e-6)


def test_select_live_in_jit():
    rng = np.random.default_rng(2)
    logp = -rng.exponential(3.0, size=64).astype(np.float32)
    n = 16

    @jax.jit
    def pick(x):
        return dco.select_live(x, n=n, batch_size=20)

    idx, valid = pick(jnp.asarray(logp))
    live = np.asarray(dco_f(jnp.asarray(logp), n)) > 0.1
    ref = np.flatnonzero(live)[:20]
    assert int(valid.sum()) == min(20, live.sum())
    np.testing.assert_array_equal(np.asarray(idx)[: len(ref)], ref)
    # Fewer live than requested: the tail is marked invalid.
    pool = jnp.asarray(np.full(8, -1e-3, np.float32)).at[2].set(-30.0)
    idx, valid = dco.select_live(pool, n=n, batch_size=4)
    np.testing.assert_array_equal(np.asarray(valid), [True, False, False, False])
    assert int(idx[0]) == 2
    stats = dco.weight_stats(jnp.asarray(logp), n=n)
    assert float(stats.live_fraction) == pytest.approx(live.mean())
    np.testing.assert_array_equal(dco.live_mask(jnp.asarray(logp), n=n), live)


# ----------------------------------------------------------------------------------------------
# The reduction keyword and the typed aux


def test_reductions_agree_and_aux_is_the_confidence_factor():
    s = jnp.asarray([[-7.0, -2.0, -0.3], [-1e-4, -30.0, -1.0]])
    steps = jnp.stack([s, s - 1.0], -1)
    c = jnp.asarray([[0, 3, 8], [1, 2, 8]])
    losses = {
        "dco_loss": lambda r: dco.dco_loss(s, n=16, reduction=r),
        "dco_step_loss": lambda r: dco.dco_step_loss(steps, n_eff=4.0, reduction=r),
        "dco_mc_loss": lambda r: dco.dco_mc_loss(s, c, num_samples=8, n=16, reduction=r),
    }
    for name, fn in losses.items():
        (mean, aux), (total, _), (per, _) = fn("mean"), fn("sum"), fn("none")
        assert per.shape == s.shape, name
        np.testing.assert_allclose(float(total), float(mean) * s.size, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(float(total), float(np.sum(per)), rtol=1e-6, err_msg=name)
        assert isinstance(aux, dco.DCOAux), name
    np.testing.assert_array_equal(dco.dco_loss(s, n=16)[1].weight, dco_f(s, 16))
    np.testing.assert_array_equal(dco.dco_step_loss(steps, n_eff=4.0)[1].weight, dco_f(steps, 4.0))
    np.testing.assert_array_equal(
        dco.dco_mc_loss(s, c, num_samples=8, n=16)[1].weight,
        dco.mc_dco_weight(c, num_samples=8, n=16),
    )
    # The mean's gradient is the mean of F * grad(-s).
    g = jax.grad(lambda x: dco.dco_loss(x, n=16)[0])(s)
    np.testing.assert_allclose(np.asarray(g), -np.asarray(dco_f(s, 16)) / s.size, rtol=1e-6)
