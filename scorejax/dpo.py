"""DPO and the ranking accuracies of preference learning (Chen et al.).

Chen et al., *Preference Learning Algorithms Do Not Learn Preference Rankings* (NeurIPS 2024):
ranking accuracy (Def. 2.3), DPO and its gamma variant (Def. 2.2, Eq. 4), idealised ranking
accuracy (Thm 3.1, Cor. 3.3), the per-datapoint flip threshold (Thm 4.1).

Log-probabilities are natural-log sums over response tokens (`scorejax.logprobs.sequence_logprob`,
or its length-normalised mean for the R~ variants). `dpo_loss` follows the library contract:
``reduction="mean" | "sum" | "none"`` and a ``(loss, DPOAux)`` result; accuracies return the
dataset mean. Shapes raise `ValueError` while tracing; value checks (fractions in [0, 1], ranks in
range) run under `scorejax.checked`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk
from scorejax._reduction import Reduction, check_reduction, reduce

__all__ = [
    "DPOAux",
    "dpo_flip_threshold",
    "dpo_loss",
    "idealized_ranking_accuracy",
    "ranking_accuracy",
    "ranking_exact_match",
]


class DPOAux(NamedTuple):
    """Implicit rewards of DPO, per pair: r = beta (log pi(y) - gamma log pi_ref(y))."""

    chosen_reward: jax.Array  # (...) beta (log pi(y_w) - gamma log pi_ref(y_w))
    rejected_reward: jax.Array  # (...) beta (log pi(y_l) - gamma log pi_ref(y_l))


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    reference_chosen_logps: jax.Array,
    reference_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    gamma: float = 1.0,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, DPOAux]:
    r"""DPO loss (Chen et al. Def. 2.2) and its gamma variant (Eq. 4).

        L^gamma = -log sigma( beta [ log pi(y_w)/pi(y_l) + gamma log pi_ref(y_l)/pi_ref(y_w) ] )

    gamma = 1 is DPO; gamma scales the reference model's log-ratio (the paper uses
    gamma in {0, 0.25, ..., 2}).

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
      reference_rejected_logps: (...) sequence log-probs of y_w and y_l under pi_theta, pi_ref.
      beta: KL-penalty strength.
      gamma: weight of the reference log-ratio (1 = DPO).
      reduction: "mean" (default) or "sum" over pairs, or "none" (per pair).

    Returns:
      (loss, aux): loss in nats, a scalar or (...) for "none"; aux the (...) implicit rewards
      `DPOAux(chosen_reward, rejected_reward)` (the loss is -log sigma(chosen - rejected)).
      Differentiable.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss, aux = dpo_loss(jnp.asarray([-3.0, -5.0]), jnp.asarray([-4.0, -4.0]),
      ...                      jnp.asarray([-3.5, -3.5]), jnp.asarray([-3.5, -3.5]), beta=1.0,
      ...                      reduction="none")
      >>> print(loss, aux.chosen_reward - aux.rejected_reward)
      [0.3133 1.3133] [ 1. -1.]
    """
    check_reduction(reduction)
    pw, pl, rw, rl = chk.same_shape_floats(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    chosen, rejected = beta * (pw - gamma * rw), beta * (pl - gamma * rl)
    return reduce(-jax.nn.log_sigmoid(chosen - rejected), reduction), DPOAux(chosen, rejected)


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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(dpo_flip_threshold(jnp.asarray([-3.0, -5.0]), jnp.asarray([-3.0, -3.0]), beta=1.0))
      [0.6931 0.1269]
    """
    rw, rl = chk.same_shape_floats(
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

    Examples:
      >>> import jax.numpy as jnp
      >>> chosen, rejected = jnp.asarray([-3.0, -8.0, -5.0]), jnp.asarray([-4.0, -6.0, -5.0])
      >>> print(ranking_accuracy(chosen, rejected), ranking_accuracy(chosen, rejected, strict=True))
      0.6666667 0.33333334
      >>> lengths = (jnp.asarray([1.0, 8.0, 5.0]), jnp.asarray([4.0, 2.0, 5.0]))
      >>> print(ranking_accuracy(chosen, rejected, chosen_lengths=lengths[0],
      ...                        rejected_lengths=lengths[1]))
      0.6666667
    """
    win, lose = chk.same_shape_floats(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        _, nw, nl = chk.same_shape_floats(
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

    Examples:
      >>> import jax.numpy as jnp
      >>> scores = jnp.asarray([[-1.0, -3.0, -2.0], [-1.0, -2.0, -3.0]])
      >>> print(ranking_exact_match(scores, jnp.asarray([[1, 3, 2], [1, 3, 2]])))
      0.5
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

    Examples:
      >>> import jax.numpy as jnp
      >>> ref_w, ref_l = jnp.asarray([-5.0, -5.0]), jnp.asarray([-3.0, -3.0])
      >>> alpha = jnp.asarray([0.9, 0.6])
      >>> print(idealized_ranking_accuracy(ref_w, ref_l, alpha, beta=0.1))
      1.0
      >>> print(idealized_ranking_accuracy(ref_w, ref_l, alpha, beta=1.0))
      0.5
    """
    rw, rl, alpha = chk.same_shape_floats(
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
        preferred_fraction=preferred_fraction,
    )
    chk.check_probabilities("preferred_fraction", alpha)
    a_w = jnp.where(alpha > 0, alpha, eps)
    a_l = jnp.where(1 - alpha > 0, 1 - alpha, eps)
    return jnp.mean(beta * (rw - rl) + jnp.log(a_w) - jnp.log(a_l) > 0)
