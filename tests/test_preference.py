"""Tests of the preference modules (dpo, likelihood_displacement, reward_models,
preference_regression) against numpy formulas, explicit loops and scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy.stats import norm, rankdata
from sklearn.linear_model import LogisticRegression

import scorejax
from scorejax import dpo, logprobs
from scorejax import likelihood_displacement as ld
from scorejax import preference_regression as preg
from scorejax import reward_models as rm

FAST = settings(max_examples=25, deadline=None)


def neg_log_sigmoid(z):
    return np.logaddexp(0.0, -z)


# ----------------------------------------------------------------------------------------------
# Sequence log-probs, DPO, ranking accuracy


def test_sequence_logprob_any_padding_side():
    rng = np.random.default_rng(0)
    lp = -rng.uniform(0, 3, (4, 9))
    lengths = np.array([3, 9, 1, 5])
    right = np.arange(9)[None] < lengths[:, None]
    left = right[:, ::-1]
    want = np.array([lp[i, : lengths[i]].sum() for i in range(4)])
    np.testing.assert_allclose(logprobs.sequence_logprob(lp, right), want, rtol=1e-6)
    lp_left = np.stack([np.roll(lp[i], 9 - lengths[i]) for i in range(4)])
    np.testing.assert_allclose(logprobs.sequence_logprob(lp_left, left), want, rtol=1e-6)
    np.testing.assert_allclose(
        logprobs.sequence_logprob(lp, right, length_normalize=True), want / lengths, rtol=1e-6
    )


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.75])
def test_dpo_loss_matches_formula(gamma):
    rng = np.random.default_rng(1)
    pw, pl, rw, rl = -rng.uniform(1, 80, (4, 32))
    beta = 0.3
    with jax.enable_x64(True):
        got = dpo.dpo_loss(pw, pl, rw, rl, beta=beta, gamma=gamma, reduction="none")[0]
        z = beta * (np.log(np.exp(pw - pl)) + gamma * (rl - rw))
        np.testing.assert_allclose(got, neg_log_sigmoid(z), rtol=1e-12)
        np.testing.assert_allclose(
            dpo.dpo_loss(pw, pl, rw, rl, beta=beta, gamma=gamma)[0], neg_log_sigmoid(z).mean()
        )
        np.testing.assert_allclose(
            dpo.dpo_loss(pw, pl, rw, rl, beta=beta, gamma=gamma, reduction="sum")[0],
            neg_log_sigmoid(z).sum(),
        )
    if gamma == 0.0:  # the reference model drops out
        np.testing.assert_allclose(
            dpo.dpo_loss(pw, pl, rw + 5, rl - 3, beta=beta, gamma=0.0)[0],
            dpo.dpo_loss(pw, pl, rw, rl, beta=beta, gamma=0.0)[0],
        )


def test_dpo_gradients_and_extremes():
    rng = np.random.default_rng(2)
    args = tuple(jnp.asarray(-rng.uniform(1, 20, 8)) for _ in range(4))
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda *a: dpo.dpo_loss(*a, beta=0.5, gamma=1.5)[0]), args, order=2,
                    modes=["rev"])
    # log-sigmoid stays finite for huge margins.
    big = dpo.dpo_loss(jnp.asarray([-1.0]), jnp.asarray([-5e4]), jnp.zeros(1), jnp.zeros(1),
                      beta=1.0)[0]
    small = dpo.dpo_loss(jnp.asarray([-5e4]), jnp.asarray([-1.0]), jnp.zeros(1), jnp.zeros(1),
                        beta=1.0)[0]
    assert float(big) == 0.0
    np.testing.assert_allclose(small, 5e4 - 1, rtol=1e-6)


@FAST
@given(
    m=st.floats(-30, 30),
    c=st.floats(-30, 30),
    beta=st.floats(0.01, 10),
    gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
def test_flip_threshold_theorem(m, c, beta, gamma):
    """Thm 4.1: the ranking is correct (m >= 0) iff the DPO loss is below the threshold."""
    with jax.enable_x64(True):
        # m = log pi(y_w)/pi(y_l); c = log pi_ref(y_l)/pi_ref(y_w).
        loss = float(dpo.dpo_loss(jnp.asarray(m), jnp.asarray(0.0), jnp.asarray(0.0),
                                 jnp.asarray(c), beta=beta, gamma=gamma)[0])
        tau = float(dpo.dpo_flip_threshold(0.0, c, beta=beta, gamma=gamma))
    np.testing.assert_allclose(tau, neg_log_sigmoid(beta * gamma * c), rtol=1e-12)
    margin = beta * abs(m)
    if margin > 1e-6 and loss > 1e-300:  # away from the boundary and from underflow
        assert (m >= 0) == (loss <= tau)
    if m == 0:
        assert loss == tau


def test_ranking_accuracy():
    rng = np.random.default_rng(3)
    w = -rng.integers(5, 15, 40).astype(float)
    lo = -rng.integers(5, 15, 40).astype(float)  # many exact ties
    nw, nl = rng.integers(1, 9, (2, 40))
    np.testing.assert_allclose(dpo.ranking_accuracy(w, lo), np.mean(w >= lo))
    np.testing.assert_allclose(dpo.ranking_accuracy(w, lo, strict=True), np.mean(w > lo))
    np.testing.assert_allclose(
        dpo.ranking_accuracy(w, lo, chosen_lengths=nw, rejected_lengths=nl),
        np.mean(w / nw >= lo / nl),
    )
    assert float(dpo.ranking_accuracy(w, w)) == 1.0


def test_ranking_exact_match_matches_authors_convention():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, (60, 4)).astype(float)  # ties are common
    human = np.stack([4 + 1 - rankdata(s, method="max") for s in rng.integers(0, 4, (60, 4))])
    human[:20] = np.stack([4 + 1 - rankdata(s, method="max") for s in scores[:20]])
    model = np.stack([4 + 1 - rankdata(s, method="max") for s in scores])
    want = np.mean(np.all(model == human, axis=1))
    np.testing.assert_allclose(dpo.ranking_exact_match(scores, human.astype(int)), want)
    assert want >= 20 / 60


def test_idealized_ranking_accuracy_log_form_equals_ratio_form():
    rng = np.random.default_rng(5)
    n = 400
    rw, rl = -rng.uniform(5, 12, (2, n))
    alpha = rng.choice([0.0, 0.25, 0.5, 0.6, 0.75, 1.0], n)
    betas = np.array([0.01, 0.1, 1.0, 5.0, 10.0])
    eps = 1e-3
    with jax.enable_x64(True):
        got = jax.vmap(lambda b: dpo.idealized_ranking_accuracy(rw, rl, alpha, beta=b, eps=eps))(
            jnp.asarray(betas)
        )
    for b, g in zip(betas, np.asarray(got), strict=True):
        # The authors' ratio form (rlhf_minimizer_client.py): a zero loser proportion -> eps.
        a1 = np.where(alpha > 0, alpha, eps)
        a2 = np.where(1 - alpha > 0, 1 - alpha, eps)
        with np.errstate(over="ignore"):
            ratio = np.exp(rw - rl) * (a1 / a2) ** (1 / b)
        np.testing.assert_allclose(g, np.mean(ratio > 1))
    assert len(set(np.round(np.asarray(got), 6))) > 1  # beta matters


# ----------------------------------------------------------------------------------------------
# CHES


def ches_loop(hidden_pos, last_prompt_pos, hidden_neg, last_prompt_neg, length_normalized):
    """ches/ches.py for left-padded batches: sum positions idx .. L-2, LN divides by L-1-idx."""
    out = []
    for b in range(hidden_pos.shape[0]):
        hp = hidden_pos[b, last_prompt_pos[b] : hidden_pos.shape[1] - 1].sum(0)
        hn = hidden_neg[b, last_prompt_neg[b] : hidden_neg.shape[1] - 1].sum(0)
        if length_normalized:
            hp = hp / (hidden_pos.shape[1] - 1 - last_prompt_pos[b])
            hn = hn / (hidden_neg.shape[1] - 1 - last_prompt_neg[b])
        out.append(hp @ hn - hp @ hp)
    return np.array(out)


def _left_padded_batch(rng, batch, length, dim, prompt_lens, response_lens):
    """Hidden states and token masks for left-padded (prompt, response) sequences."""
    hidden = rng.normal(size=(batch, length, dim))
    response_mask = np.zeros((batch, length), bool)
    last_prompt = np.zeros(batch, int)
    for b in range(batch):
        response_mask[b, length - response_lens[b] :] = True
        last_prompt[b] = length - response_lens[b] - 1
        assert prompt_lens[b] + response_lens[b] <= length
    return hidden, response_mask, last_prompt


@pytest.mark.parametrize("length_normalized", [False, True])
def test_ches_matches_authors_loop(length_normalized):
    rng = np.random.default_rng(6)
    hp, mp, ip = _left_padded_batch(rng, 3, 12, 5, [3, 4, 2], [6, 2, 9])
    hn, mn, in_ = _left_padded_batch(rng, 3, 10, 5, [3, 4, 2], [4, 5, 1])
    with jax.enable_x64(True):
        got = ld.ches_score(hp, ld.response_prediction_mask(mp), hn,
                            ld.response_prediction_mask(mn), length_normalized=length_normalized)
        want = ches_loop(hp, ip, hn, in_, length_normalized)
        np.testing.assert_allclose(got, want, rtol=1e-10)
        # Right padding: move each sequence to the front (pad = L - prompt - response); the masks
        # follow and the score does not change.
        pads = 12 - np.array([3, 4, 2]) - np.array([6, 2, 9])
        hp_r = np.stack([np.roll(hp[b], -pads[b], axis=0) for b in range(3)])
        mp_r = np.stack([np.roll(mp[b], -pads[b]) for b in range(3)])
        assert not mp_r[:, -1].all()
        got_r = ld.ches_score(hp_r, ld.response_prediction_mask(mp_r), hn,
                              ld.response_prediction_mask(mn), length_normalized=length_normalized)
    np.testing.assert_allclose(got_r, want, rtol=1e-10)


def test_ches_properties_and_gradient():
    rng = np.random.default_rng(7)
    h, m, _ = _left_padded_batch(rng, 2, 8, 4, [2, 2], [5, 3])
    mask = ld.response_prediction_mask(m)
    with jax.enable_x64(True):
        np.testing.assert_allclose(ld.ches_score(h, mask, h, mask), 0.0, atol=1e-12)
        # LN-CHES does not change when every position is duplicated.
        other = rng.normal(size=h.shape)
        ln = ld.ches_score(h, mask, other, mask, length_normalized=True)
        ln_dup = ld.ches_score(np.repeat(h, 2, axis=1), np.repeat(mask, 2, axis=1),
                               other, mask, length_normalized=True)
        np.testing.assert_allclose(ln, ln_dup, rtol=1e-12)
        assert np.all(np.abs(np.asarray(ln)) > 1e-3)
        # The per-example script's convention adds the final response token's own position.
        h1 = rng.normal(size=(1, 7, 4))
        tok = np.array([[0, 0, 0, 1, 1, 1, 1]], bool)
        script = ld.ches_score(h1, ld.response_prediction_mask(tok, include_final_token=True),
                               h1[:, ::-1], ld.response_prediction_mask(tok,
                                                                        include_final_token=True))
        hp_s, hn_s = h1[0, 2:].sum(0), h1[0, ::-1][2:].sum(0)
        np.testing.assert_allclose(script, [hp_s @ hn_s - hp_s @ hp_s], rtol=1e-12)
        check_grads(jax.jit(lambda a, b: ld.ches_score(a, mask, b, mask).sum()),
                    (jnp.asarray(h), jnp.asarray(h[:, ::-1])), order=1, modes=["rev"])
    empty = np.zeros((1, 8), bool)
    assert np.isnan(ld.ches_score(h[:1], empty, h[:1], mask[:1], length_normalized=True)[0])


# ----------------------------------------------------------------------------------------------
# Edit distance


def levenshtein(a, b):
    d = np.zeros((len(a) + 1, len(b) + 1), int)
    d[:, 0] = np.arange(len(a) + 1)
    d[0, :] = np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            substitute = d[i - 1, j - 1] + (a[i - 1] != b[j - 1])
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, substitute)
    return d[-1, -1]


_ned = jax.jit(ld.normalized_edit_distance)


@FAST
@given(
    a=st.lists(st.integers(0, 3), min_size=8, max_size=8),
    b=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    mask_a=st.lists(st.booleans(), min_size=8, max_size=8),
    mask_b=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_normalized_edit_distance_matches_dp(a, b, mask_a, mask_b):
    a, b = np.array(a), np.array(b)
    ma, mb = np.array(mask_a), np.array(mask_b)
    va, vb = a[ma], b[mb]
    longest = max(len(va), len(vb))
    want = levenshtein(va, vb) / longest if longest else 0.0
    np.testing.assert_allclose(_ned(a, b, mask_a=ma, mask_b=mb), want, rtol=1e-6)


def test_edit_distance_vmap():
    a = np.array([[1, 2, 3, 4], [1, 1, 1, 1]])
    b = np.array([[1, 3, 4, 0], [2, 2, 2, 2]])
    got = jax.jit(jax.vmap(ld.normalized_edit_distance))(a, b)
    np.testing.assert_allclose(got, [0.5, 1.0])


# ----------------------------------------------------------------------------------------------
# LSC rewards


def test_lsc_transform_and_aggregate():
    rng = np.random.default_rng(8)
    r = rng.normal(0, 5, (10, 3))
    ref = rng.normal(0, 5, (10, 3))
    with jax.enable_x64(True):
        np.testing.assert_allclose(rm.lsc_transform(r, ref), -neg_log_sigmoid(r - ref),
                                   rtol=1e-12)
        np.testing.assert_allclose(rm.lsc_aggregate(r, ref), -neg_log_sigmoid(r - ref).sum(1),
                                   rtol=1e-12)
        extreme = rm.lsc_transform(np.array([-1e4, 1e4]), 0.0)
        grads = jax.vmap(jax.grad(rm.lsc_transform))(jnp.linspace(-20, 20, 9), jnp.zeros(9))
    np.testing.assert_allclose(extreme, [-1e4, 0.0], atol=1e-12)
    # Increasing and concave: gradient sigma(-(r - ref)) positive and decreasing.
    assert np.all(np.asarray(grads) > 0) and np.all(np.diff(np.asarray(grads)) < 0)


@pytest.mark.parametrize("q", [0.5, 0.85])
def test_lsc_reference_reward(q):
    rng = np.random.default_rng(9)
    sft = rng.normal(1.0, 2.0, (6, 17))
    with jax.enable_x64(True):
        emp = rm.lsc_reference_reward(sft, quantile=q)
        nor = rm.lsc_reference_reward(sft, quantile=q, method="normal", ddof=1)
    np.testing.assert_allclose(emp, np.quantile(sft, q, axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        nor, sft.mean(1) + norm.ppf(q) * sft.std(1, ddof=1), rtol=1e-12
    )


# ----------------------------------------------------------------------------------------------
# Reward-model losses


def scaled_sum_and_magnitude(rc, rr, m):
    """The scaled BT loss summed over pairs, and the sum of the magnitudes."""
    total, aux = rm.scaled_bradley_terry_loss(rc, rr, m, reduction="sum")
    return total, aux.magnitude_sum


def test_bradley_terry_family():
    rng = np.random.default_rng(10)
    rc, rr = rng.normal(0, 3, (2, 24))
    m = rng.integers(1, 4, 24).astype(float)
    with jax.enable_x64(True):
        bt = rm.bradley_terry_loss(rc, rr, reduction="none")[0]
        np.testing.assert_allclose(bt, neg_log_sigmoid(rc - rr), rtol=1e-12)
        np.testing.assert_allclose(
            rm.margin_bradley_terry_loss(rc, rr, m, reduction="none")[0],
            neg_log_sigmoid(rc - rr - m), rtol=1e-12,
        )
        np.testing.assert_allclose(
            rm.margin_bradley_terry_loss(rc, rr, 0 * m)[0], rm.bradley_terry_loss(rc, rr)[0]
        )
        np.testing.assert_allclose(
            rm.scaled_bradley_terry_loss(rc, rr, m, reduction="none")[0], m * bt
        )
        np.testing.assert_allclose(rm.scaled_bradley_terry_loss(rc, rr, m)[0], np.mean(m * bt))
        np.testing.assert_allclose(
            np.divide(*scaled_sum_and_magnitude(rc, rr, m)),
            np.sum(m * bt) / m.sum(),
        )

        def all_three(a, b):
            return (rm.bradley_terry_loss(a, b)[0] + 2 * rm.margin_bradley_terry_loss(a, b, m)[0]
                    + 3 * rm.scaled_bradley_terry_loss(a, b, m)[0])

        check_grads(jax.jit(all_three), (jnp.asarray(rc), jnp.asarray(rr)), order=2,
                    modes=["rev"])
    ties = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(rm.reward_accuracy(ties, np.array([1.0, 1.0, 4.0])), 1 / 3)


def test_masked_regression_loss():
    rng = np.random.default_rng(11)
    pred = rng.normal(2, 1, (8, 5))
    target = rng.integers(0, 5, (8, 5)).astype(float)
    target[rng.uniform(size=(8, 5)) < 0.4] = -100.0
    keep = target != -100
    with jax.enable_x64(True):
        np.testing.assert_allclose(
            rm.masked_regression_loss(pred, target)[0],
            np.sum(((pred - target) ** 2)[keep]) / keep.sum(), rtol=1e-12,
        )
        all_masked = np.full((2, 5), -100.0)
        loss_and_grad = jax.value_and_grad(rm.masked_regression_loss, has_aux=True)
        (value, _), grad = jax.jit(loss_and_grad)(
            jnp.ones((2, 5)), all_masked
        )
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)


# ----------------------------------------------------------------------------------------------
# Preference composition (Laplace-prior logistic regression)


def test_comparison_features():
    a = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    b = np.array([[1.0, 1.0, 5.0], [2.0, 1.0, 0.0]])
    np.testing.assert_array_equal(preg.comparison_features(a, b), [[1, 0, -1], [-1, 0, 0]])
    np.testing.assert_array_equal(
        preg.comparison_features(a, b, higher_is_better=[True, True, False]),
        [[1, 0, 1], [-1, 0, 0]],
    )


def _preference_data(seed, n=300, k=8):
    rng = np.random.default_rng(seed)
    phi = rng.integers(-1, 2, (n, k)).astype(float)
    w = rng.normal(0, 1, k) * (rng.uniform(size=k) < 0.7)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-phi @ w))).astype(np.int32)
    return phi, y


@pytest.mark.parametrize("scale", [0.02, 0.1, 1.0])
def test_map_fit_matches_sklearn_l1_logistic_regression(scale):
    phi, y = _preference_data(12)
    with jax.enable_x64(True):
        w = np.asarray(jax.jit(preg.fit_laplace_logistic_map, static_argnames=(
            "scale", "max_steps", "tol"))(phi, y, scale=scale))
        logpost = jax.jit(lambda v: preg.laplace_logistic_log_posterior(v, phi, y, scale=scale))
        best = float(logpost(w))
        rng = np.random.default_rng(0)
        for _ in range(5):  # a local maximum of the (concave) log posterior
            assert float(logpost(w + rng.normal(0, 1e-3, w.shape))) <= best + 1e-9
    sk = LogisticRegression(l1_ratio=1.0, C=scale, fit_intercept=False, solver="liblinear",
                            tol=1e-12, max_iter=100_000).fit(phi, y)
    np.testing.assert_allclose(w, sk.coef_[0], atol=2e-5)
    # KKT conditions of the L1 problem.
    z = phi @ w
    grad = phi.T @ (y - 1 / (1 + np.exp(-z)))
    active = w != 0
    np.testing.assert_allclose(grad[active], np.sign(w[active]) / scale, rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(grad[~active]) <= 1 / scale + 1e-6)


def test_log_posterior_formula_and_vmap_over_groups():
    phi, y = _preference_data(13, n=50, k=4)
    w = np.array([0.5, -0.2, 0.0, 1.0])
    with jax.enable_x64(True):
        got = preg.laplace_logistic_log_posterior(w, phi, y, scale=0.1)
        z = phi @ w
        want = (np.sum(-y * neg_log_sigmoid(z) - (1 - y) * neg_log_sigmoid(-z))
                - np.abs(w).sum() / 0.1 - 4 * np.log(0.2))
        np.testing.assert_allclose(got, want, rtol=1e-12)
        phi2, y2 = _preference_data(14, n=50, k=4)
        both = jax.jit(jax.vmap(preg.fit_laplace_logistic_map))(np.stack([phi, phi2]),
                                                                np.stack([y, y2]))
        one = jax.jit(preg.fit_laplace_logistic_map)(phi2, y2)
    np.testing.assert_allclose(both[1], one, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# jit, vmap, bad input


def test_jit_matches_eager():
    rng = np.random.default_rng(15)
    args = -rng.uniform(1, 10, (4, 6))
    eager = dpo.dpo_loss(*args, beta=0.2, reduction="none")[0]
    jitted = jax.jit(lambda *a: dpo.dpo_loss(*a, beta=0.2, reduction="none")[0])(*args)
    batched = jax.vmap(lambda *a: dpo.dpo_loss(*a, beta=0.2)[0])(*args)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(batched, eager, rtol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: dpo.dpo_loss(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(2))[0],
        lambda: dpo.dpo_loss(*np.zeros((4, 3)), reduction="max")[0],
        lambda: dpo.ranking_accuracy(np.zeros(3), np.zeros(3), chosen_lengths=np.ones(3)),
        lambda: dpo.ranking_exact_match(np.zeros((2, 3)), np.full((2, 3), 4)),
        lambda: dpo.idealized_ranking_accuracy(np.zeros(2), np.zeros(2), [0.5, 1.5], beta=1.0),
        lambda: ld.ches_score(np.zeros((2, 5, 3)), np.ones((2, 4)), np.zeros((2, 5, 3)),
                              np.ones((2, 5))),
        lambda: ld.ches_score(np.zeros((2, 5, 3)), np.ones((2, 5)), np.zeros((2, 5, 4)),
                              np.ones((2, 5))),
        lambda: logprobs.sequence_logprob(np.zeros((2, 5)), np.ones((2, 4))),
        lambda: rm.lsc_reference_reward(np.zeros((2, 5)), method="median"),
        lambda: rm.scaled_bradley_terry_loss(np.zeros(2), np.zeros(2), np.array([1.0, -1.0]))[0],
        lambda: rm.masked_regression_loss(np.zeros((2, 5)), np.zeros((2, 4)))[0],
        lambda: preg.comparison_features(np.zeros((2, 3)), np.zeros((2, 3)),
                                       higher_is_better=[True]),
        lambda: preg.fit_laplace_logistic_map(np.zeros((4, 2)), np.array([0, 1, 2, 1])),
        lambda: preg.laplace_logistic_log_posterior(np.zeros(3), np.zeros((4, 2)), np.zeros(4)),
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


def test_reductions_agree_and_aux_holds_the_rewards():
    rng = np.random.default_rng(16)
    a, b, c, d = (jnp.asarray(-rng.uniform(1, 10, (3, 4))) for _ in range(4))
    m = jnp.asarray(rng.integers(0, 4, (3, 4)).astype(float))
    losses = {
        "dpo": lambda r: dpo.dpo_loss(a, b, c, d, beta=0.3, gamma=0.5, reduction=r),
        "bt": lambda r: rm.bradley_terry_loss(a, b, reduction=r),
        "margin_bt": lambda r: rm.margin_bradley_terry_loss(a, b, m, reduction=r),
        "scaled_bt": lambda r: rm.scaled_bradley_terry_loss(a, b, m, reduction=r),
    }
    for name, fn in losses.items():
        (mean, aux), (total, _), (per, _) = fn("mean"), fn("sum"), fn("none")
        assert per.shape == a.shape, name
        np.testing.assert_allclose(float(total), float(mean) * a.size, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(float(total), float(np.sum(per)), rtol=1e-6, err_msg=name)
        assert isinstance(aux, tuple) and hasattr(aux, "_fields"), name
    _, aux = dpo.dpo_loss(a, b, c, d, beta=0.3, gamma=0.5)
    np.testing.assert_allclose(aux.chosen_reward, 0.3 * (a - 0.5 * c), rtol=1e-6)
    np.testing.assert_allclose(aux.rejected_reward, 0.3 * (b - 0.5 * d), rtol=1e-6)
    np.testing.assert_allclose(rm.bradley_terry_loss(a, b)[1].reward_margin, a - b)
    assert float(rm.scaled_bradley_terry_loss(a, b, m)[1].magnitude_sum) == float(m.sum())
    # Masked regression reduces over the entries that count: sum == mean * count.
    target = jnp.where(m > 1, -100.0, c)
    (mean, aux), (total, _), (per, _) = (
        rm.masked_regression_loss(a, target, reduction=r) for r in ("mean", "sum", "none")
    )
    assert int(aux.count) == int(np.sum(np.asarray(m) <= 1))
    np.testing.assert_allclose(float(total), float(mean) * int(aux.count), rtol=1e-6)
    np.testing.assert_allclose(float(total), float(np.sum(per)), rtol=1e-6)
    assert np.all(np.asarray(per)[np.asarray(m) > 1] == 0)
