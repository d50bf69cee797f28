"""Reward-model losses and reward transforms (HelpSteer2-Preference; Wang et al.).

Sources:
- Wang et al., *HelpSteer2-Preference: Complementing Ratings with Preferences* (arXiv 2410.01257):
  Bradley-Terry, margin BT, scaled BT and masked regression (SteerLM) reward-model losses.
- Wang et al., *Transforming and Combining Rewards for Aligning Large Language Models* (ICML 2024):
  the log-sigmoid-centred (LSC) reward transform and its sum over properties.

The losses follow the library contract: ``reduction="mean" | "sum" | "none"`` and a
``(loss, aux)`` result with a NamedTuple aux. Shapes raise `ValueError` while tracing; value
checks (magnitudes >= 0) run under `scorejax.checked`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from scorejax import _score_utils as chk
from scorejax._reduction import Reduction, check_reduction, reduce

__all__ = [
    "BradleyTerryAux",
    "MaskedRegressionAux",
    "ScaledBradleyTerryAux",
    "bradley_terry_loss",
    "lsc_aggregate",
    "lsc_reference_reward",
    "lsc_transform",
    "margin_bradley_terry_loss",
    "masked_regression_loss",
    "reward_accuracy",
    "scaled_bradley_terry_loss",
]


class BradleyTerryAux(NamedTuple):
    """Auxiliary output of the (margin) Bradley-Terry loss."""

    reward_margin: jax.Array  # (...) r(x, y_c) - r(x, y_r) per pair


class ScaledBradleyTerryAux(NamedTuple):
    """Auxiliary output of the scaled Bradley-Terry loss."""

    reward_margin: jax.Array  # (...) r(x, y_c) - r(x, y_r) per pair
    magnitude_sum: jax.Array  # scalar sum of the magnitudes m (the "repeat m times" batch size)


class MaskedRegressionAux(NamedTuple):
    """Auxiliary output of the masked regression loss."""

    count: jax.Array  # scalar number of entries that count (targets != mask_value)


def lsc_transform(reward: jax.Array, reference_reward: jax.Array) -> jax.Array:
    r"""Log-sigmoid-centred reward (Wang et al., *Transforming and Combining Rewards*).

        u(x, y) = log sigma(r(x, y) - r_ref(x))

    sigma(r - r_ref) is the Bradley-Terry probability of beating a reference response, so u <= 0,
    u ~ r - r_ref for r << r_ref and u -> 0 for r >> r_ref (diminishing returns).

    Args:
      reward, reference_reward: broadcastable (...).

    Returns:
      (...) transformed rewards. Differentiable.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(lsc_transform(jnp.asarray([-10.0, 0.0, 2.0]), 0.0))
      [-10.      -0.6931  -0.1269]
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

    Examples:
      >>> import jax.numpy as jnp
      >>> print(lsc_aggregate(jnp.asarray([[0.0, 5.0], [0.0, -5.0]]), jnp.zeros((2, 2))))
      [-0.6999 -5.6999]
    """
    r, ref = chk.same_shape_floats(rewards=rewards, reference_rewards=reference_rewards)
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

    Examples:
      >>> import jax.numpy as jnp
      >>> rewards = jnp.arange(21.0)
      >>> normal = lsc_reference_reward(rewards, method="normal")
      >>> print(lsc_reference_reward(rewards), f"{normal:.4f}")
      17.0 16.2759
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
    chosen_rewards: jax.Array, rejected_rewards: jax.Array, *, reduction: Reduction = "mean"
) -> tuple[jax.Array, BradleyTerryAux]:
    r"""Bradley-Terry reward-model loss (InstructGPT; NeMo-Aligner).

        L_BT = -log sigma(r(x, y_c) - r(x, y_r))

    Args:
      chosen_rewards, rejected_rewards: (...) scalar rewards.
      reduction: "mean" (default) or "sum" over pairs, or "none" (per pair).

    Returns:
      (loss, aux): loss in nats, a scalar or (...) for "none"; aux.reward_margin the (...)
      r_c - r_r. Differentiable.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss, aux = bradley_terry_loss(jnp.asarray([2.0, 0.0]), jnp.asarray([1.0, 1.0]))
      >>> print(f"{loss:.4f}", aux.reward_margin)
      0.8133 [ 1. -1.]
    """
    check_reduction(reduction)
    rc, rr = chk.same_shape_floats(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return reduce(-jax.nn.log_sigmoid(rc - rr), reduction), BradleyTerryAux(rc - rr)


def margin_bradley_terry_loss(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    margin: jax.Array,
    *,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, BradleyTerryAux]:
    r"""Bradley-Terry loss with a margin (Llama 2; HelpSteer2-Preference).

        L_MBT = -log sigma(r(x, y_c) - r(x, y_r) - m)

    m is the preference magnitude (HelpSteer2-Preference: 1 slightly, 2 better, 3 much better).

    Args:
      chosen_rewards, rejected_rewards, margin: (...) rewards and margins m.
      reduction: "mean" (default) or "sum" over pairs, or "none" (per pair).

    Returns:
      (loss, aux): loss in nats, a scalar or (...) for "none"; aux.reward_margin the (...)
      r_c - r_r (without m). Differentiable in the rewards.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss, _ = margin_bradley_terry_loss(jnp.asarray([3.0]), jnp.asarray([1.0]),
      ...                                     jnp.asarray([2.0]), reduction="none")
      >>> print(loss)
      [0.6931]
    """
    check_reduction(reduction)
    rc, rr, m = chk.same_shape_floats(
        chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margin=margin
    )
    return reduce(-jax.nn.log_sigmoid(rc - rr - m), reduction), BradleyTerryAux(rc - rr)


def scaled_bradley_terry_loss(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    magnitude: jax.Array,
    *,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, ScaledBradleyTerryAux]:
    r"""Scaled Bradley-Terry loss (HelpSteer2-Preference, proposed).

        L_SBT = -m log sigma(r(x, y_c) - r(x, y_r))

    Equivalent to repeating the pair m times; unlike margin BT it does not assume
    r_c - r_r >= m. The batch normalisation is not confirmed: "mean" averages over pairs; the
    literal "repeat m times" batch divides the sum by \sum m instead, which is
    ``loss_sum / aux.magnitude_sum`` with ``reduction="sum"``.

    Args:
      chosen_rewards, rejected_rewards, magnitude: (...) rewards and magnitudes m >= 0.
      reduction: "mean" (default) or "sum" over pairs, or "none" (per pair).

    Returns:
      (loss, aux): loss in nats, a scalar or (...) for "none"; aux the (...) reward margins and
      the scalar sum of m. Differentiable in the rewards.

    Value check (m >= 0) under `scorejax.checked`; unchecked, a negative m is used as given.

    Examples:
      >>> import jax.numpy as jnp
      >>> total, aux = scaled_bradley_terry_loss(jnp.asarray([1.0, 1.0]), jnp.asarray([1.0, 0.0]),
      ...                                        jnp.asarray([1.0, 3.0]), reduction="sum")
      >>> print(f"{total:.4f} {total / aux.magnitude_sum:.4f}")
      1.6329 0.4082
    """
    check_reduction(reduction)
    rc, rr, m = chk.same_shape_floats(
        chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, magnitude=magnitude
    )
    chk.check_nonnegative("magnitude", m)
    loss = -m * jax.nn.log_sigmoid(rc - rr)
    return reduce(loss, reduction), ScaledBradleyTerryAux(rc - rr, jnp.sum(m))


def reward_accuracy(chosen_rewards: jax.Array, rejected_rewards: jax.Array) -> jax.Array:
    """Fraction of pairs with r_c > r_r (strict, as NeMo-Aligner's reward-model accuracy).

    Args:
      chosen_rewards, rejected_rewards: (...) scalar rewards.

    Returns:
      Scalar in [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> print(reward_accuracy(jnp.asarray([2.0, 1.0, 0.0, 3.0]), jnp.ones(4)))
      0.5
    """
    rc, rr = chk.same_shape_floats(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return jnp.mean(rc > rr)


def masked_regression_loss(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    mask_value: float = -100.0,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, MaskedRegressionAux]:
    r"""Masked MSE of SteerLM-style attribute regression (HelpSteer2; NeMo-Aligner).

        l_{ia} = k_{ia} (y_hat_{ia} - y_{ia})^2,   k = 1[y != mask_value]
        "mean": \sum_{i,a} l_{ia} / \sum_{i,a} k_{ia}    (NeMo-Aligner's loss)
        "sum":  \sum_{i,a} l_{ia}
        "none": l, (..., A), 0 on masked entries

    Targets equal to `mask_value` (NeMo's `loss_mask_val` = -100) are missing attributes. The
    entries that count are the batch's unmasked ones, so "mean" is "sum" divided by
    ``aux.count``, not by the batch size; a batch with none gives 0 (and zero gradient).

    Args:
      predictions, targets: (..., A) attribute predictions and 0-4 Likert targets.
      mask_value: the target value of a missing attribute.
      reduction: "mean" (default), "sum" or "none" (per entry).

    Returns:
      (loss, aux): loss in squared target units; aux.count the number of unmasked entries.
      Differentiable in predictions.

    Examples:
      >>> import jax.numpy as jnp
      >>> pred = jnp.asarray([[3.0, 1.0], [2.0, 0.0]])
      >>> target = jnp.asarray([[4.0, -100.0], [2.0, 2.0]])
      >>> loss, aux = masked_regression_loss(pred, target)
      >>> print(f"{loss:.4f}", aux.count)
      1.6667 3
      >>> print(masked_regression_loss(pred, target, reduction="none")[0])
      [[1. 0.]
       [0. 4.]]
    """
    check_reduction(reduction)
    p, y = chk.same_shape_floats(predictions=predictions, targets=targets)
    keep = y != mask_value
    sq = jnp.where(keep, (p - jnp.where(keep, y, 0)) ** 2, 0)
    count = jnp.sum(keep)
    if reduction == "mean":
        loss = chk.safe_divide(jnp.sum(sq), count, 0.0)
    else:
        loss = reduce(sq, reduction)
    return loss, MaskedRegressionAux(count)
