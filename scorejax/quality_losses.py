"""DeQA-Score's losses on predicted score distributions: moments, Thurstone fidelity, soft KL.

Source: You et al., *Teaching LMMs to Regress Accurate Image Quality Scores using Score
Distribution* (DeQA-Score, CVPR 2025, arXiv 2501.11561); definitions follow the authors' code
(`src/model/modeling_mplug_owl2.py`). The soft labels the losses compare against are built by
`scorejax.quality_labels`. Arrays over levels are in ascending level order.

Losses follow the library contract: ``reduction="mean" | "sum" | "none"`` and a ``(loss, aux)``
result. Shapes raise `ValueError` while tracing; value checks (probabilities in [0, 1], 0/1
labels, level ids in range, variances >= 0) run under `scorejax.checked`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, xlogy

from scorejax import _score_utils as chk
from scorejax import quality_labels
from scorejax._reduction import Reduction, check_reduction, reduce

__all__ = [
    "FidelityAux",
    "InLevelAux",
    "ScoreMoments",
    "SoftLabelAux",
    "binary_fidelity_loss",
    "fidelity_loss",
    "in_level_loss",
    "score_moments",
    "soft_label_kl",
    "thurstone_fidelity_loss",
    "thurstone_probability",
]


class FidelityAux(NamedTuple):
    """Auxiliary output of the fidelity losses, per pair."""

    probability: jax.Array  # (...) predicted P(A > B)
    target: jax.Array  # (...) target P(A > B) (1 or 0 for a hard label)


class SoftLabelAux(NamedTuple):
    """Auxiliary output of `soft_label_kl`."""

    level_probs: jax.Array  # (..., K) model probabilities of the level tokens


class InLevelAux(NamedTuple):
    """Auxiliary output of `in_level_loss`."""

    out_of_level_mass: jax.Array  # (B,) probability mass outside the level tokens


class ScoreMoments(NamedTuple):
    """Mean and variance of a score distribution over levels."""

    mean: jax.Array
    variance: jax.Array


def score_moments(
    level_logits: jax.Array, *, level_values: jax.Array | None = None
) -> ScoreMoments:
    r"""Expected score and variance from the K level-token logits (DeQA `get_score`).

        p = softmax(z)  over the K level logits only (close-set)
        mu_hat = \sum_k c_k p_k,   sigma_hat^2 = \sum_k p_k (c_k - mu_hat)^2

    Args:
      level_logits: (..., K) logits of the level tokens at the answer position (pass log-probs
        to use probabilities).
      level_values: (K,) numeric value of each logit's level; default 1..K (ascending). For
        logits gathered in the authors' token order use (5, 4, 3, 2, 1).

    Returns:
      `ScoreMoments(mean, variance)`, each (...). Differentiable.

    Examples:
      >>> import jax.numpy as jnp
      >>> moments = score_moments(jnp.log(jnp.asarray([0.0, 0.0, 0.5, 0.5, 0.0])))
      >>> print(moments.mean, moments.variance)
      3.5 0.25
    """
    z = chk.as_float(level_logits)
    chk.check_ndim("level_logits", z, tuple(range(1, 8)))
    if level_values is None:
        values = quality_labels.level_values(z.shape[-1], z.dtype)
    else:
        values = chk.as_float(level_values)
    if values.shape != z.shape[-1:]:
        raise ValueError(
            f"shape mismatch: level_values{values.shape} vs level_logits{z.shape} (last axis)"
        )
    p = jax.nn.softmax(z, axis=-1)
    mean = jnp.sum(p * values, axis=-1)
    return ScoreMoments(mean, jnp.sum(p * (values - mean[..., None]) ** 2, axis=-1))


def thurstone_probability(
    mu_a: jax.Array,
    mu_b: jax.Array,
    var_a: jax.Array | float = 1.0,
    var_b: jax.Array | float = 1.0,
    *,
    eps: float = 1e-8,
) -> jax.Array:
    r"""Thurstone (Case V with per-item variances) probability that A scores above B.

        P(A > B) = Phi((mu_a - mu_b) / sqrt(var_a + var_b + eps))

    DeQA-Score uses it for the ground truth (var = sigma^2 of the soft label, eps = 1e-8) and for
    the prediction: with `use_fix_std` (the training script's setting) the prediction is
    0.5(1 + erf((mu_a - mu_b)/2)) = Phi((mu_a - mu_b)/sqrt(2)), i.e. unit variances and eps = 0.

    Args:
      mu_a, mu_b, var_a, var_b: broadcastable (...).

    Returns:
      (...) probabilities. Differentiable.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(thurstone_probability(jnp.asarray([3.0, 4.0]), jnp.asarray([3.0, 3.0]), 0.5, 0.5))
      [0.5    0.8413]
    """
    mu_a, mu_b = chk.as_float(mu_a), chk.as_float(mu_b)
    chk.check_nonnegative("var_a", var_a)
    chk.check_nonnegative("var_b", var_b)
    return ndtr((mu_a - mu_b) / jnp.sqrt(var_a + var_b + eps))


def _fidelity(p: jax.Array, q: jax.Array, eps: float) -> jax.Array:
    """Per-pair fidelity loss 1 - sqrt(p q + eps) - sqrt((1 - p)(1 - q) + eps)."""
    return 1 - jnp.sqrt(p * q + eps) - jnp.sqrt((1 - p) * (1 - q) + eps)


def fidelity_loss(
    p: jax.Array,
    q: jax.Array,
    *,
    eps: float = 1e-8,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, FidelityAux]:
    r"""Fidelity loss between predicted and target pair probabilities (DeQA `rating_loss`).

        L = 1 - sqrt(p q + eps) - sqrt((1 - p)(1 - q) + eps)

    eps = 1e-8 keeps the gradient finite at p (1 - p) = 0; as a result L is slightly negative at
    p = q (-1e-4 at p = q in {0, 1}, -2e-8 at 0.5), as in the authors' code.

    Args:
      p: (...) predicted P(A > B). q: (...) target P(A > B) (treated as data; stop its gradient
        if it depends on parameters).
      reduction: "mean" (the authors' batch mean), "sum" or "none" (per pair).

    Returns:
      (loss, aux): a scalar, or (...) for "none"; aux = `FidelityAux(p, q)`. Differentiable in
      p (and q).

    Value checks (p, q in [0, 1]) under `scorejax.checked`; unchecked, outside [0, 1] the
    square roots give NaN.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss, _ = fidelity_loss(jnp.asarray([0.5, 0.9]), jnp.asarray([0.5, 0.1]),
      ...                         reduction="none")
      >>> print(loss)
      [0.  0.4]
    """
    check_reduction(reduction)
    p, q = chk.as_float(p), chk.as_float(q)
    chk.check_same_shape(p=p, q=q)
    chk.check_probabilities("p", p)
    chk.check_probabilities("q", q)
    return reduce(_fidelity(p, q, eps), reduction), FidelityAux(p, q)


def binary_fidelity_loss(
    p: jax.Array, a_better: jax.Array, *, reduction: Reduction = "mean"
) -> tuple[jax.Array, FidelityAux]:
    r"""Fidelity loss against a hard pair label (DeQA `binary_rating_loss`).

        L = 1 - sqrt(p)       if A is better (q = 1[mu_a > mu_b]; ties give q = 0)
            1 - sqrt(1 - p)   otherwise

    Args:
      p: (...) predicted P(A > B). a_better: (...) bool or 0/1.
      reduction: "mean" (default), "sum" or "none" (per pair).

    Returns:
      (loss, aux): a scalar, or (...) for "none"; aux = `FidelityAux(p, q)` with q the 0/1
      label. Differentiable in p for 0 < p < 1.

    Value checks (p in [0, 1], 0/1 labels) under `scorejax.checked`; unchecked, any nonzero
    label counts as "A better".

    Examples:
      >>> import jax.numpy as jnp
      >>> loss, aux = binary_fidelity_loss(jnp.asarray([0.64, 0.64]), jnp.asarray([1, 0]),
      ...                                  reduction="none")
      >>> print(loss, aux.target)
      [0.2 0.4] [1. 0.]
    """
    check_reduction(reduction)
    p = chk.as_float(p)
    chk.check_same_shape(p=p, a_better=a_better)
    chk.check_probabilities("p", p)
    chk.check_binary("a_better", a_better)
    better = jnp.asarray(a_better) > 0
    loss = jnp.where(better, 1 - jnp.sqrt(p), 1 - jnp.sqrt(1 - p))
    return reduce(loss, reduction), FidelityAux(p, better.astype(p.dtype))


def thurstone_fidelity_loss(
    pred_mu_a: jax.Array,
    pred_mu_b: jax.Array,
    mu_a: jax.Array,
    mu_b: jax.Array,
    sigma_a: jax.Array,
    sigma_b: jax.Array,
    *,
    pred_var_a: jax.Array | None = None,
    pred_var_b: jax.Array | None = None,
    detach_pred_var: bool = True,
    eps: float = 1e-8,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, FidelityAux]:
    r"""DeQA-Score's pairwise ranking loss: fidelity between predicted and true Thurstone P(A > B).

        q = sg[Phi((mu_a - mu_b) / sqrt(sigma_a^2 + sigma_b^2 + eps))]       (ground truth)
        p = Phi((mu_hat_a - mu_hat_b) / sqrt(2))                            (fixed unit std)
          or Phi((mu_hat_a - mu_hat_b) / sqrt(var_hat_a + var_hat_b + eps))  (predicted std)
        L = fidelity_loss(p, q)

    The training script's flags (`use_fix_std=True`) give the fixed-std form, selected when
    `pred_var_a`/`pred_var_b` are None; with predicted variances, `detach_pred_var` stops their
    gradient (`detach_pred_std`). sg = stop_gradient.

    Args:
      pred_mu_a, pred_mu_b: (B,) predicted scores (`score_moments(...).mean`).
      mu_a, mu_b, sigma_a, sigma_b: (B,) normalised ground-truth scores and stds.
      pred_var_a, pred_var_b: optional (B,) predicted variances.
      reduction: "mean" (default), "sum" or "none" (per pair).

    Returns:
      (loss, aux): a scalar (or (B,) for "none"); aux = `FidelityAux(p, q)`. Differentiable in
      the predicted scores.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss, aux = thurstone_fidelity_loss(jnp.asarray([3.5]), jnp.asarray([2.5]),
      ...     jnp.asarray([3.5]), jnp.asarray([2.5]), jnp.asarray([0.5]), jnp.asarray([0.5]))
      >>> print(f"{loss:.4f}", aux.probability, aux.target)
      0.0257 [0.7602] [0.9214]
    """
    check_reduction(reduction)
    q = jax.lax.stop_gradient(
        thurstone_probability(mu_a, mu_b, jnp.square(sigma_a), jnp.square(sigma_b), eps=eps)
    )
    if (pred_var_a is None) != (pred_var_b is None):
        raise ValueError("pass both pred_var_a and pred_var_b, or neither")
    if pred_var_a is None:
        p = thurstone_probability(pred_mu_a, pred_mu_b, 1.0, 1.0, eps=0.0)
    else:
        va, vb = pred_var_a, pred_var_b
        if detach_pred_var:
            va, vb = jax.lax.stop_gradient(va), jax.lax.stop_gradient(vb)
        p = thurstone_probability(pred_mu_a, pred_mu_b, va, vb, eps=eps)
    chk.check_same_shape(p=p, q=q)
    return reduce(_fidelity(p, q, eps), reduction), FidelityAux(p, q)


def _gather_level_logprobs(
    logits: jax.Array, level_token_ids: jax.Array, closed_set: bool
) -> jax.Array:
    logits = chk.as_float(logits)
    ids = jnp.asarray(level_token_ids)
    chk.check_ndim("level_token_ids", ids, (1,))
    chk.check_int_range("level_token_ids", ids, 0, logits.shape[-1] - 1)
    level_logits = jnp.take(logits, ids, axis=-1)
    if closed_set:
        return jax.nn.log_softmax(level_logits, axis=-1)
    return level_logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


def soft_label_kl(
    logits: jax.Array,
    level_token_ids: jax.Array,
    soft_label: jax.Array,
    *,
    closed_set: bool = False,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, SoftLabelAux]:
    r"""KL(soft label || model) at the level-token position (DeQA `softkl_loss`).

        L = \sum_k t_k (log t_k - log p_{v_k}),   0 log 0 = 0

    p = softmax over the full vocabulary at the answer position (the authors' soft-KL), or over
    the K level logits only with `closed_set=True`. The target puts t on the K level token ids
    v_k and 0 elsewhere, so only those ids enter. With reduction="mean" this is
    `F.kl_div(log p, t, reduction="batchmean")` on a (B, V) batch.

    Args:
      logits: (..., V) next-token logits at the level position.
      level_token_ids: (K,) vocabulary ids of the level tokens, in the order of `soft_label`.
      soft_label: (..., K) target distribution (`gaussian_soft_label`, reordered to match ids).
      closed_set: normalise over the K level logits only.
      reduction: "mean" (default), "sum" or "none" (per example).

    Returns:
      (loss, aux): KL in nats, a scalar or (...) for "none"; aux.level_probs the (..., K) model
      probabilities p_{v_k}. Differentiable in logits.

    Value checks (ids in [0, V), soft label in [0, 1]) under `scorejax.checked`; unchecked, an
    out-of-range id is clamped by the gather.

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.6, 0.1]]))
      >>> loss, aux = soft_label_kl(logits, jnp.asarray([1, 2]), jnp.asarray([[0.25, 0.75]]))
      >>> print(f"{loss:.4f}", aux.level_probs)
      0.2231 [[0.2 0.6]]
    """
    check_reduction(reduction)
    logp = _gather_level_logprobs(logits, level_token_ids, closed_set)
    t = chk.as_float(soft_label)
    if t.shape != logp.shape:
        raise ValueError(
            f"shape mismatch: soft_label{t.shape} vs logits{chk.shape_of(logits)} with "
            f"{chk.shape_of(level_token_ids)[0]} level ids (expected {logp.shape})"
        )
    chk.check_probabilities("soft_label", t)
    kl = jnp.sum(xlogy(t, t) - t * logp, axis=-1)
    return reduce(kl, reduction), SoftLabelAux(jnp.exp(logp))


def in_level_loss(
    logits: jax.Array,
    level_token_ids: jax.Array,
    *,
    floor: float = 0.01,
    reduction: Reduction = "mean",
) -> tuple[jax.Array, InLevelAux]:
    r"""Penalty on probability mass outside the level tokens (DeQA, optional in-level loss).

        o_b = 1 - \sum_k p_{b, v_k},   p = softmax over the full vocabulary
        "mean": L = max(floor, mean_b o_b)          (the authors' loss)
        "sum":  L = max(B floor, sum_b o_b)         (= B times the mean form)
        "none": o, unfloored

    The floor is a condition on the batch (no gradient once the mean mass is below it), so the
    per-example values of "none" are the masses themselves.

    Args:
      logits: (B, V) next-token logits at the level position.
      level_token_ids: (K,) vocabulary ids of the level tokens.
      floor: the batch mean below which the loss stops pushing.
      reduction: "mean" (default), "sum" or "none".

    Returns:
      (loss, aux): the loss; aux.out_of_level_mass the (B,) masses o. Differentiable in logits
      where the reduced mass exceeds the floor.

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.6, 0.1], [0.0, 0.5, 0.5, 0.0]]))
      >>> loss, aux = in_level_loss(logits, jnp.asarray([1, 2]))
      >>> print(f"{loss:.4f}", aux.out_of_level_mass)
      0.1000 [0.2 0. ]
    """
    check_reduction(reduction)
    logp = _gather_level_logprobs(logits, level_token_ids, closed_set=False)
    out = 1 - jnp.sum(jnp.exp(logp), axis=-1)
    if reduction == "none":
        return out, InLevelAux(out)
    scale = 1.0 if reduction == "mean" else out.size
    return jnp.maximum(floor * scale, reduce(out, reduction)), InLevelAux(out)
