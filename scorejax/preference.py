"""Preference and reward scores and losses.

Sources:
- Chen et al., *Preference Learning Algorithms Do Not Learn Preference Rankings* (NeurIPS 2024):
  ranking accuracy (Def. 2.3), DPO and its gamma variant (Def. 2.2, Eq. 4), idealised ranking
  accuracy (Thm 3.1, Cor. 3.3), the per-datapoint flip threshold (Thm 4.1).
- Razin et al., *Unintentional Unalignment: Likelihood Displacement in Direct Preference
  Optimization* (arXiv 2410.08847): CHES and length-normalised CHES (code `ches/ches.py`), and the
  normalised edit distance baseline.
- Wang et al., *Transforming and Combining Rewards for Aligning Large Language Models* (ICML 2024):
  the log-sigmoid-centred (LSC) reward transform and its sum over properties.
- Wang et al., *HelpSteer2-Preference: Complementing Ratings with Preferences* (arXiv 2410.01257):
  Bradley-Terry, margin BT, scaled BT and masked regression (SteerLM) reward-model losses.
- Li et al., *Dissecting Human and LLM Preferences* (ACL 2024): Laplace-prior logistic regression
  of preferences on property-comparison features, fitted here by its MAP.

Log-probabilities are natural-log sums over response tokens unless a function says otherwise
(`sequence_logprob` builds them from per-token values and a mask). Losses take `reduction`
('mean', the default, 'sum' or 'none'); accuracies return the dataset mean.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from scorejax import _score_utils as chk


def _same_shape_floats(**named) -> list[jax.Array]:
    arrays = {k: chk.as_float(v) for k, v in named.items()}
    chk.check_same_shape(**arrays)
    return list(arrays.values())


def sequence_logprob(
    token_logps: jax.Array, mask: jax.Array, *, length_normalize: bool = False
) -> jax.Array:
    r"""Log-probability of a response from its per-token log-probs.

        log pi(y|x) = \sum_t m_t log pi(y_t | x, y_<t)
        length-normalised: log pi~(y|x) = log pi(y|x) / \sum_t m_t   (= -log perplexity)

    Args:
      token_logps: (..., T) per-token log-probs. mask: (..., T) 1 on response tokens (any
        padding side).

    Returns:
      (...). Length-normalised values are NaN for an empty response. Differentiable.
    """
    lp = chk.as_float(token_logps)
    mask = chk.check_mask("mask", mask, "token_logps", lp)
    total = jnp.sum(jnp.where(mask, lp, 0), axis=-1)
    if length_normalize:
        return total / jnp.sum(mask, axis=-1)
    return total


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    reference_chosen_logps: jax.Array,
    reference_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    gamma: float = 1.0,
    reduction: chk.Reduction = "mean",
) -> jax.Array:
    r"""DPO loss (Chen et al. Def. 2.2) and its gamma variant (Eq. 4).

        L^gamma = -log sigma( beta [ log pi(y_w)/pi(y_l) + gamma log pi_ref(y_l)/pi_ref(y_w) ] )

    gamma = 1 is DPO; gamma scales the reference model's log-ratio (the paper uses
    gamma in {0, 0.25, ..., 2}).

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
      reference_rejected_logps: (...) sequence log-probs of y_w and y_l under pi_theta, pi_ref.
      beta: KL-penalty strength.

    Returns:
      Scalar, or (...) for reduction='none', in nats. Differentiable.
    """
    pw, pl, rw, rl = _same_shape_floats(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    logits = beta * ((pw - pl) + gamma * (rl - rw))
    return chk.reduce(-jax.nn.log_sigmoid(logits), reduction)


def dpo_flip_threshold(
    reference_chosen_logps: jax.Array,
    reference_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    gamma: float = 1.0,
) -> jax.Array:
    r"""DPO-loss value below which the model ranks the pair correctly (Chen et al. Thm 4.1).

    With c = log pi_ref(y_l|x) - log pi_ref(y_w|x):

        R(x, y_w, y_l) = 1  <=>  L_DPO(x, y_w, y_l) <= tau(c) = -log sigma(beta gamma c)

    (L_DPO = -log sigma(beta (m + gamma c)) is decreasing in m = log pi(y_w)/pi(y_l), and R = 1
    iff m >= 0.) A reference model that prefers the loser (c > 0) forces the loss below
    tau < log 2 before the ranking flips.

    Args:
      reference_chosen_logps, reference_rejected_logps: (...) sequence log-probs under pi_ref.

    Returns:
      (...) thresholds in nats. Differentiable.
    """
    rw, rl = _same_shape_floats(
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    return -jax.nn.log_sigmoid(beta * gamma * (rl - rw))


def ranking_accuracy(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    strict: bool = False,
) -> jax.Array:
    r"""Ranking accuracy (Chen et al. Def. 2.3) and its length-normalised version R~.

        R  = mean 1[ log pi(y_w|x) >= log pi(y_l|x) ]
        R~ = mean 1[ log pi(y_w|x)/|y_w| >= log pi(y_l|x)/|y_l| ]   (pass the lengths)

    Ties count as correct, as in Def. 2.3; `strict=True` uses > instead.

    Args:
      chosen_logps, rejected_logps: (N,) sequence log-probs.
      chosen_lengths, rejected_lengths: optional (N,) token counts for R~.

    Returns:
      Scalar in [0, 1].
    """
    win, lose = _same_shape_floats(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        _, nw, nl = _same_shape_floats(
            chosen_logps=win, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths
        )
        win, lose = win / nw, lose / nl
    return jnp.mean(win > lose) if strict else jnp.mean(win >= lose)


def ranking_exact_match(model_scores: jax.Array, human_ranks: jax.Array) -> jax.Array:
    r"""Ranking accuracy for n > 2 outputs (Chen et al. App. A.6): the full ranking must match.

        rank_i = 1 + #{j : s_j > s_i}            (1 = best; tied scores share the better rank)
        R = mean over prompts of 1[rank = human rank, for all n outputs]

    The model ranks follow the authors' code (`n + 1 - rankdata(scores, "max")`); an exact model
    tie is correct only if the humans tied the same outputs with the same convention.

    Args:
      model_scores: (N, n) sequence log-probs (or length-normalised ones) of n outputs.
      human_ranks: (N, n) integer ranks in the same convention.

    Returns:
      Scalar in [0, 1].
    """
    s = chk.as_float(model_scores)
    chk.check_ndim("model_scores", s, (2,))
    chk.check_same_shape(model_scores=s, human_ranks=human_ranks)
    chk.check_int_range("human_ranks", human_ranks, 1, s.shape[-1])
    ranks = 1 + jnp.sum(s[..., None, :] > s[..., :, None], axis=-1)
    return jnp.mean(jnp.all(ranks == jnp.asarray(human_ranks), axis=-1))


def idealized_ranking_accuracy(
    reference_chosen_logps: jax.Array,
    reference_rejected_logps: jax.Array,
    preferred_fraction: jax.Array,
    *,
    beta: float,
    eps: float = 1e-3,
) -> jax.Array:
    r"""Idealised ranking accuracy R* of the RLHF/DPO optimum (Chen et al. Thm 3.1, Cor. 3.3).

    Under Bradley-Terry with alpha = fraction of raters preferring y_w, the optimum satisfies
    pi*(y_w)/pi*(y_l) = pi_ref(y_w)/pi_ref(y_l) (alpha/(1 - alpha))^{1/beta}, so

        R* = mean 1[ beta (log pi_ref(y_w) - log pi_ref(y_l)) + log a_w - log a_l > 0 ]   (strict)

    with a_w = alpha and a_l = 1 - alpha, a zero proportion replaced by eps (the authors' code,
    eps = 1e-3; the paper's "add eps to the loser's proportion"). The log form equals the ratio
    form of Eq. (3) without overflow. For R~* pass length-normalised log-probs. The paper reports
    the min / median / max over beta in {0.01, 0.1, 1, 5, 10}: `jax.vmap` over beta.

    Args:
      reference_chosen_logps, reference_rejected_logps: (N,) log-probs under pi_ref.
      preferred_fraction: (N,) alpha in [0, 1].

    Returns:
      Scalar in [0, 1].
    """
    rw, rl, alpha = _same_shape_floats(
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
        preferred_fraction=preferred_fraction,
    )
    chk.check_probabilities("preferred_fraction", alpha)
    a_w = jnp.where(alpha > 0, alpha, eps)
    a_l = jnp.where(1 - alpha > 0, 1 - alpha, eps)
    return jnp.mean(beta * (rw - rl) + jnp.log(a_w) - jnp.log(a_l) > 0)


def response_prediction_mask(
    response_mask: jax.Array, *, include_final_token: bool = False
) -> jax.Array:
    r"""Positions whose hidden state predicts a response token, from a token-level mask.

    The hidden state at position t predicts token t + 1, so the predicting positions are
    `response_mask` shifted left by one: the last prompt token up to the second-to-last response
    token (|y| positions). This is the convention of `ches/ches.py`, for any padding side.
    `include_final_token=True` also includes the last response token's own position (|y| + 1
    positions), the convention of the authors' per-example script
    `compute_preference_similarity_per_example.py`.

    Args:
      response_mask: (..., L) 1 on response tokens of the (prompt, response) sequence.

    Returns:
      (..., L) bool mask.
    """
    m = jnp.asarray(response_mask).astype(bool)
    shifted = jnp.concatenate([m[..., 1:], jnp.zeros_like(m[..., :1])], axis=-1)
    return shifted | m if include_final_token else shifted


def ches_score(
    hidden_chosen: jax.Array,
    mask_chosen: jax.Array,
    hidden_rejected: jax.Array,
    mask_rejected: jax.Array,
    *,
    length_normalized: bool = False,
) -> jax.Array:
    r"""Centered hidden embedding similarity (Razin et al., Definition 2; `ches/ches.py`).

        H^+ = \sum_{k=1}^{|y^+|} h_{x, y^+_{<k}},   H^- = \sum_{k=1}^{|y^-|} h_{x, y^-_{<k}}
        CHES(y^+, y^-)    = <H^+, H^-> - ||H^+||^2 = <H^+, H^- - H^+>
        LN-CHES(y^+, y^-) = <H^+/|y^+|, H^-/|y^-|> - ||H^+/|y^+|||^2

    h are last-layer hidden states (the vectors multiplied by the unembedding). Higher CHES means
    more similar responses and a larger risk of likelihood displacement; CHES(y, y) = 0 and the
    score is asymmetric. The masks select the summed positions, normally
    `response_prediction_mask(response_token_mask)`; any padding side works. |y| is the mask
    count, so LN-CHES is NaN for an empty response.

    Args:
      hidden_chosen: (..., L, D) hidden states of (x, y^+). mask_chosen: (..., L).
      hidden_rejected: (..., L', D) hidden states of (x, y^-). mask_rejected: (..., L').

    Returns:
      (...) scores. Differentiable in the hidden states.
    """
    hc, hr = chk.as_float(hidden_chosen), chk.as_float(hidden_rejected)
    mc = chk.check_mask("mask_chosen", mask_chosen, "hidden_chosen[..., 0]", hc[..., 0])
    mr = chk.check_mask("mask_rejected", mask_rejected, "hidden_rejected[..., 0]", hr[..., 0])
    if hc.shape[:-2] != hr.shape[:-2] or hc.shape[-1] != hr.shape[-1]:
        raise ValueError(
            f"shape mismatch: hidden_chosen{hc.shape} and hidden_rejected{hr.shape} need the same "
            "batch shape and hidden size"
        )
    h_pos = jnp.sum(jnp.where(mc[..., None], hc, 0), axis=-2)
    h_neg = jnp.sum(jnp.where(mr[..., None], hr, 0), axis=-2)
    if length_normalized:
        h_pos = h_pos / jnp.sum(mc, axis=-1)[..., None]
        h_neg = h_neg / jnp.sum(mr, axis=-1)[..., None]
    return jnp.sum(h_pos * (h_neg - h_pos), axis=-1)


def normalized_edit_distance(
    tokens_a: jax.Array,
    tokens_b: jax.Array,
    *,
    mask_a: jax.Array | None = None,
    mask_b: jax.Array | None = None,
) -> jax.Array:
    r"""Levenshtein distance between two token sequences divided by the longer length.

        NED(a, b) = Lev(a, b) / max(|a|, |b|)       (0 when both are empty)

    A similarity baseline of the likelihood-displacement paper (it reports -NED). Computed with a
    row-by-row dynamic programme (`lax.scan`); within a row the insertion chain is a running
    minimum, d[i, j] = j + min_{k <= j}(t_k - k).

    Args:
      tokens_a: (La,) int ids. tokens_b: (Lb,) int ids. mask_a, mask_b: optional validity masks
        (any padding side). Batch with `jax.vmap`.

    Returns:
      Scalar in [0, 1].
    """
    ta, tb = jnp.asarray(tokens_a), jnp.asarray(tokens_b)
    chk.check_ndim("tokens_a", ta, (1,))
    chk.check_ndim("tokens_b", tb, (1,))
    ta, n = chk.compact(ta, chk.check_mask("mask_a", mask_a, "tokens_a", ta))
    tb, m = chk.compact(tb, chk.check_mask("mask_b", mask_b, "tokens_b", tb))
    cols = jnp.arange(tb.shape[0] + 1)

    def row(prev, inputs):
        i, token = inputs
        sub = prev[:-1] + (token != tb)
        t = jnp.concatenate([jnp.array([i]), jnp.minimum(prev[1:] + 1, sub)])
        cur = cols + jax.lax.cummin(t - cols)
        return cur, cur

    first = cols
    _, rows = jax.lax.scan(row, first, (jnp.arange(1, ta.shape[0] + 1), ta))
    table = jnp.concatenate([first[None], rows], axis=0)
    dist = table[n, m]
    longest = jnp.maximum(n, m)
    return chk.safe_divide(dist.astype(jnp.result_type(float)), longest, 0.0)


def lsc_transform(reward: jax.Array, reference_reward: jax.Array) -> jax.Array:
    r"""Log-sigmoid-centred reward (Wang et al., *Transforming and Combining Rewards*).

        u(x, y) = log sigma(r(x, y) - r_ref(x))

    sigma(r - r_ref) is the Bradley-Terry probability of beating a reference response, so u <= 0,
    u ~ r - r_ref for r << r_ref and u -> 0 for r >> r_ref (diminishing returns).

    Args:
      reward, reference_reward: broadcastable (...).

    Returns:
      (...) transformed rewards. Differentiable.
    """
    return jax.nn.log_sigmoid(chk.as_float(reward) - chk.as_float(reference_reward))


def lsc_aggregate(rewards: jax.Array, reference_rewards: jax.Array) -> jax.Array:
    r"""Sum of LSC-transformed rewards over K properties (helpful, harmless, ...).

        u_agg = \sum_{i=1}^{K} log sigma(r_i - r_i^ref) = log \prod_i p(good_i | x, y)

    the log-probability of being good in every property (independence assumed): a soft minimum
    dominated by the worst property.

    Args:
      rewards, reference_rewards: (..., K).

    Returns:
      (...). Differentiable.
    """
    r, ref = _same_shape_floats(rewards=rewards, reference_rewards=reference_rewards)
    return jnp.sum(jax.nn.log_sigmoid(r - ref), axis=-1)


def lsc_reference_reward(
    sft_rewards: jax.Array,
    *,
    quantile: float = 0.85,
    method: Literal["empirical", "normal"] = "empirical",
    ddof: int = 0,
) -> jax.Array:
    r"""Per-prompt reference reward r_ref(x): a quantile of rewards of base-policy samples.

    'empirical': `numpy.quantile(..., method='linear')` over the N samples.
    'normal':    mean + Phi^{-1}(quantile) * std (ddof as given; Phi^{-1}(0.85) = 1.0364).

    The 85th percentile is the value reported to work; which estimator the authors used, and N,
    are not confirmed (a third-party reimplementation uses the normal form), so both are offered.

    Args:
      sft_rewards: (..., N) rewards of N base-policy responses per prompt.

    Returns:
      (...) reference rewards. Differentiable.
    """
    r = chk.as_float(sft_rewards)
    chk.check_nonempty("sft_rewards", r)
    if method == "empirical":
        return jnp.quantile(r, quantile, axis=-1)
    if method == "normal":
        return jnp.mean(r, axis=-1) + ndtri(jnp.asarray(quantile, r.dtype)) * jnp.std(
            r, axis=-1, ddof=ddof
        )
    raise ValueError(f"method must be 'empirical' or 'normal', got {method!r}")


def bradley_terry_loss(
    chosen_rewards: jax.Array, rejected_rewards: jax.Array, *, reduction: chk.Reduction = "mean"
) -> jax.Array:
    r"""Bradley-Terry reward-model loss (InstructGPT; NeMo-Aligner).

        L_BT = -log sigma(r(x, y_c) - r(x, y_r))

    Args:
      chosen_rewards, rejected_rewards: (...) scalar rewards.

    Returns:
      Scalar, or (...) for reduction='none'. Differentiable.
    """
    rc, rr = _same_shape_floats(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return chk.reduce(-jax.nn.log_sigmoid(rc - rr), reduction)


def margin_bradley_terry_loss(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    margin: jax.Array,
    *,
    reduction: chk.Reduction = "mean",
) -> jax.Array:
    r"""Bradley-Terry loss with a margin (Llama 2; HelpSteer2-Preference).

        L_MBT = -log sigma(r(x, y_c) - r(x, y_r) - m)

    m is the preference magnitude (HelpSteer2-Preference: 1 slightly, 2 better, 3 much better).

    Returns:
      Scalar, or (...) for reduction='none'. Differentiable in the rewards.
    """
    rc, rr, m = _same_shape_floats(
        chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margin=margin
    )
    return chk.reduce(-jax.nn.log_sigmoid(rc - rr - m), reduction)


def scaled_bradley_terry_loss(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    magnitude: jax.Array,
    *,
    reduction: Literal["mean", "sum", "none", "magnitude_weighted"] = "mean",
) -> jax.Array:
    r"""Scaled Bradley-Terry loss (HelpSteer2-Preference, proposed).

        L_SBT = -m log sigma(r(x, y_c) - r(x, y_r))

    Equivalent to repeating the pair m times; unlike margin BT it does not assume
    r_c - r_r >= m. The batch normalisation is not confirmed: 'mean' (default) averages over
    pairs, 'magnitude_weighted' divides the sum by \sum m (the literal "repeat m times" batch).

    Returns:
      Scalar, or (...) for reduction='none'. Differentiable in the rewards.
    """
    rc, rr, m = _same_shape_floats(
        chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, magnitude=magnitude
    )
    chk.check_nonnegative("magnitude", m)
    loss = -m * jax.nn.log_sigmoid(rc - rr)
    if reduction == "magnitude_weighted":
        return jnp.sum(loss) / jnp.sum(m)
    return chk.reduce(loss, reduction)


def reward_accuracy(chosen_rewards: jax.Array, rejected_rewards: jax.Array) -> jax.Array:
    """Fraction of pairs with r_c > r_r (strict, as NeMo-Aligner's reward-model accuracy)."""
    rc, rr = _same_shape_floats(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return jnp.mean(rc > rr)


def masked_regression_loss(
    predictions: jax.Array, targets: jax.Array, *, mask_value: float = -100.0
) -> jax.Array:
    r"""Masked MSE of SteerLM-style attribute regression (HelpSteer2; NeMo-Aligner).

        L = \sum_{i,a} (y_hat_{ia} - y_{ia})^2 k_{ia} / \sum_{i,a} k_{ia},   k = 1[y != mask_value]

    Targets equal to `mask_value` (NeMo's `loss_mask_val` = -100) are missing attributes. The mean
    is over all unmasked entries of the batch; a batch with none gives 0 (and zero gradient).

    Args:
      predictions, targets: (..., A) attribute predictions and 0-4 Likert targets.

    Returns:
      Scalar. Differentiable in predictions.
    """
    p, y = _same_shape_floats(predictions=predictions, targets=targets)
    keep = y != mask_value
    sq = jnp.where(keep, (p - jnp.where(keep, y, 0)) ** 2, 0)
    return chk.safe_divide(jnp.sum(sq), jnp.sum(keep), 0.0)


def comparison_features(
    scores_a: jax.Array, scores_b: jax.Array, *, higher_is_better: jax.Array | None = None
) -> jax.Array:
    r"""Property-comparison features of Li et al. (*Dissecting Human and LLM Preferences*).

        phi_k = sign(s_k(A) - s_k(B))      in {-1, 0, 1}, negated where lower is better

    (e.g. error counts, where fewer errors in A gives +1, and repetitiveness).

    Args:
      scores_a, scores_b: (..., K) property scores of responses A and B.
      higher_is_better: optional (K,) bool; default all True.

    Returns:
      (..., K) features, in the dtype of the scores.
    """
    a, b = _same_shape_floats(scores_a=scores_a, scores_b=scores_b)
    phi = jnp.sign(a - b)
    if higher_is_better is None:
        return phi
    hib = jnp.asarray(higher_is_better)
    if hib.shape != a.shape[-1:]:
        raise ValueError(f"shape mismatch: higher_is_better{hib.shape} vs scores{a.shape}")
    return jnp.where(hib, phi, -phi)


def laplace_logistic_log_posterior(
    weights: jax.Array, features: jax.Array, labels: jax.Array, *, scale: float = 0.1
) -> jax.Array:
    r"""Unnormalised log posterior of Li et al.'s Bayesian logistic regression (no intercept).

        alpha_k ~ Laplace(0, b),   y_i ~ Bernoulli(sigma(alpha^T phi_i))
        log p(alpha, y) = \sum_i [y_i log sigma(z_i) + (1 - y_i) log sigma(-z_i)]
                          - \sum_k |alpha_k| / b - K log(2b),       z = Phi alpha

    Args:
      weights: (K,) alpha. features: (N, K) phi. labels: (N,) 1 if A is preferred.
      scale: b (the authors use 0.1).

    Returns:
      Scalar log density. Differentiable in weights (except at alpha_k = 0).
    """
    w = chk.as_float(weights)
    phi = chk.as_float(features)
    chk.check_ndim("features", phi, (2,))
    if w.shape != phi.shape[-1:] or chk.shape_of(labels) != phi.shape[:1]:
        raise ValueError(
            f"shape mismatch: weights{w.shape}, features{phi.shape}, labels{chk.shape_of(labels)}"
        )
    chk.check_binary("labels", labels)
    y = jnp.asarray(labels).astype(w.dtype)
    z = phi @ w
    loglik = jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))
    return loglik - jnp.sum(jnp.abs(w)) / scale - w.shape[0] * jnp.log(2 * scale)


def fit_laplace_logistic_map(
    features: jax.Array,
    labels: jax.Array,
    *,
    scale: float = 0.1,
    max_steps: int = 20000,
    tol: float = 1e-9,
) -> jax.Array:
    r"""MAP weights of Li et al.'s preference model: L1-penalised logistic regression.

        alpha_MAP = argmin_alpha  \sum_i logloss(y_i, sigma(phi_i^T alpha)) + ||alpha||_1 / b

    the same problem as `sklearn.linear_model.LogisticRegression(l1_ratio=1, C=b,
    fit_intercept=False)`. Solved by FISTA (proximal gradient with soft-thresholding, step 1/L,
    L = ||Phi||_2^2 / 4, adaptive momentum restart) until the largest weight change is below
    `tol` or `max_steps` is reached. The authors report the posterior *mean* from NUTS
    (numpyro, 4 x 2000 samples); the MAP is its deterministic counterpart and is what this
    computes. Effects are usually reported as 100 sigma(alpha_k).

    Args:
      features: (N, K) comparison features. labels: (N,) 1 if A is preferred.
      scale: b, the Laplace prior scale.

    Returns:
      (K,) MAP weights. `jax.vmap` fits several groups of equal size at once.
    """
    phi = chk.as_float(features)
    chk.check_ndim("features", phi, (2,))
    if chk.shape_of(labels) != phi.shape[:1]:
        raise ValueError(f"shape mismatch: features{phi.shape}, labels{chk.shape_of(labels)}")
    chk.check_binary("labels", labels)
    sign = 2 * jnp.asarray(labels).astype(phi.dtype) - 1
    lipschitz = jnp.linalg.norm(phi, ord=2) ** 2 / 4
    step = 1 / jnp.maximum(lipschitz, jnp.finfo(phi.dtype).tiny)
    threshold = step / scale

    def grad_loss(w):
        return -phi.T @ (sign * jax.nn.sigmoid(-sign * (phi @ w)))

    def body(state):
        w, v, t, k, _ = state
        w_new = v - step * grad_loss(v)
        w_new = jnp.sign(w_new) * jnp.maximum(jnp.abs(w_new) - threshold, 0)
        restart = jnp.vdot(v - w_new, w_new - w) > 0
        t = jnp.where(restart, 1.0, t)
        t_new = (1 + jnp.sqrt(1 + 4 * t**2)) / 2
        v_new = w_new + ((t - 1) / t_new) * (w_new - w)
        change = jnp.max(jnp.abs(w_new - w))
        return w_new, v_new, t_new, k + 1, change

    def cond(state):
        return (state[3] < max_steps) & (state[4] > tol)

    w0 = jnp.zeros(phi.shape[1], phi.dtype)
    init = (w0, w0, jnp.asarray(1.0, phi.dtype), 0, jnp.asarray(jnp.inf, phi.dtype))
    return jax.lax.while_loop(cond, body, init)[0]
