"""Direct Coverage Optimization (DCO): the confidence-limited pass@N loss and its variants.

Chen, Raventós, Cheng, Ganguli & Druckmann, *Rethinking Fine-Tuning when Scaling Test-Time
Compute: Limiting Confidence Improves Mathematical Reasoning* (arXiv 2502.07154).

For a problem with reference answer ``y`` and model probability ``p = p(y|x)`` of the whole
answer, the chance that at least one of ``N`` i.i.d. samples is ``y`` is pass@N = 1 - (1 - p)^N
(`scorejax.pass_at`), and DCO minimises its negative log,

    l_DCO(N, p) = -log(1 - (1 - p)^N).                                       (DCO loss)

Its gradient is the cross-entropy gradient scaled by a per-example confidence factor,

    grad l_DCO = F(N, p) * grad(-log p),   F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N),

with F(1, p) = 1 (cross-entropy), F -> 1 as p -> 0 and F -> 0 as p -> 1. For large N,
F ~= c / (e^c - 1) with c = N p, so training stops pushing once p reaches a few times 1/N.

Everything here takes ``s = log p``, the summed answer log-probability
(`scorejax.logprobs.sequence_logprob`), and is computed in log space (`_coverage_core`): no
underflow for long answers, no cancellation when N p << 1. Log-probabilities are natural logs
(nats); ``n`` (the paper's N, the number of test-time samples) is keyword-only and may be an int,
a float (an effective branching factor need not be an integer) or a traced array, broadcast
against ``seq_logp``.

Losses follow the library contract: ``reduction="mean" | "sum" | "none"`` over the batch and a
``(loss, DCOAux)`` result. Shapes and dtypes raise `ValueError` while tracing. Value checks
(``seq_logp <= 0`` and not NaN, ``n >= 1``, counts in range) run under `scorejax.checked`,
eagerly and under `jit` alike; unchecked, nothing is copied to the host, ``seq_logp`` is clipped
to ``<= 0`` and ``n`` to ``>= 1``, and each function states what other invalid values give.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from scorejax._coverage_core import check_logp, dco_loss_per_example, dco_weight_per_example
from scorejax._reduction import Reduction, check_reduction, reduce

Array = jax.Array

__all__ = [
    "DCOAux",
    "LiveSelection",
    "WeightStats",
    "dco_loss",
    "dco_mc_loss",
    "dco_step_loss",
    "dco_weight",
    "live_mask",
    "mc_dco_weight",
    "select_live",
    "weight_stats",
]


class DCOAux(NamedTuple):
    """Auxiliary output of the DCO losses."""

    weight: Array  # confidence factor F per example (per step for dco_step_loss), no gradient


class LiveSelection(NamedTuple):
    """The first live examples of a candidate pool (`select_live`)."""

    indices: Array  # (batch_size,) int32 positions into the pool, in pool order (0 where padded)
    valid: Array  # (batch_size,) bool, False on padding


class WeightStats(NamedTuple):
    """Diagnostics of a DCO run (`weight_stats`)."""

    mean_weight: Array  # scalar, mean F
    live_fraction: Array  # scalar, fraction of examples with F > threshold


def dco_loss(
    seq_logp: Array, *, n: int | float | Array, reduction: Reduction = "mean"
) -> tuple[Array, DCOAux]:
    """DCO loss l = -log(1 - (1 - p)^N) with p = exp(seq_logp) (paper's l_DCO^N), reduced.

    Args:
      seq_logp: (...) log p(answer|prompt) <= 0, e.g. from `sequence_logprob`.
      n: number of test-time samples N >= 1 (int, float or traced), broadcast against seq_logp.
      reduction: "mean" (default) or "sum" over all examples, or "none" (per example).

    Returns:
      (loss, aux): loss in nats, >= 0 per example (for N = 1 exactly -seq_logp), a scalar or
      (...) for "none"; aux.weight the (...) confidence factor F. The per-example gradient with
      respect to seq_logp is exactly -F (a custom JVP evaluates the log-space F), so
      ``grad dco_loss(s(theta), n=N)[0] = mean(F * grad(-s(theta)))``. For N p << 1 the loss is
      -log p - log N + (N-1)p/2 + O(p^2): cross-entropy shifted by a constant.

    Value checks (seq_logp <= 0 and not NaN, n >= 1) run under `scorejax.checked`; unchecked,
    seq_logp > 0 counts as 0 (p = 1) and n < 1 as 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = jnp.log(jnp.asarray([0.5, 0.01]))
      >>> loss, aux = dco_loss(s, n=4, reduction="none")
      >>> print(loss, aux.weight)
      [0.0645 3.2339] [0.2667 0.985 ]
      >>> print(f"{dco_loss(s, n=4)[0]:.4f}")
      1.6492
    """
    check_reduction(reduction)
    per_example = dco_loss_per_example(seq_logp, n)
    return reduce(per_example, reduction), DCOAux(dco_weight_per_example(seq_logp, n))


def dco_weight(seq_logp: Array, *, n: int | float | Array) -> Array:
    """DCO confidence factor F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N), gradient stopped.

    Args:
      seq_logp: (...) log p(answer|prompt) <= 0.
      n: N >= 1, broadcast against seq_logp.

    Returns:
      (...) F in [0, 1]: 1 for N = 1 or N p -> 0, 1/2 near N p = 1.26, 0.1 near N p = 3.6
      (large N), 0 as p -> 1. ``stop_gradient(F) * (-seq_logp)`` (the authors' form) has the
      same gradient as `dco_loss`.

    Value checks as `dco_loss` (under `scorejax.checked`; unchecked, the same clipping).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(dco_weight(jnp.log(jnp.asarray([0.001, 0.5, 0.99])), n=16))
      [0.9925 0.0002 0.    ]
    """
    return dco_weight_per_example(seq_logp, n)


def dco_step_loss(
    step_logp: Array,
    mask: Array | None = None,
    *,
    n_eff: int | float | Array,
    reduction: Reduction = "mean",
) -> tuple[Array, DCOAux]:
    """Step-level DCO for search over proof trees: l = sum_i mask_i l_DCO(N_eff, p_i), reduced.

    Each step (e.g. one tactic given its proof state) gets its own confidence cap ~1/N_eff, so
    sampled attempts branch over ~N_eff alternatives per state; a depth-k proof is then found
    with about N_eff^k attempts (choose N_eff ~ N^(1/k) for a budget of N whole attempts).
    Whole-proof ("naive") DCO is instead ``dco_loss(sum_i mask_i step_logp_i, n=N)``; with one
    step the two coincide.

    Args:
      step_logp: (..., K) log p(step_i | state_i) of the K demonstrated steps, each <= 0.
      mask: optional (..., K) bool, False on padding steps.
      n_eff: effective branching factor N_eff >= 1, broadcast against step_logp[..., 0].
      reduction: over the examples (...): "mean" (default), "sum" or "none".

    Returns:
      (loss, aux): the per-example sums of per-step losses in nats, reduced; aux.weight the
      (..., K) per-step F (0 on padding). The gradient is sum_i F(N_eff, p_i) grad(-log p_i).

    Value checks as `dco_loss` (under `scorejax.checked`; unchecked, the same clipping).

    Examples:
      >>> import jax.numpy as jnp
      >>> steps = jnp.log(jnp.asarray([[0.5, 0.5, 0.9]]))
      >>> loss, aux = dco_step_loss(steps, jnp.asarray([[True, True, False]]), n_eff=2)
      >>> print(f"{loss:.4f}", aux.weight)
      0.5754 [[0.6667 0.6667 0.    ]]
    """
    check_reduction(reduction)
    step_logp = jnp.asarray(step_logp)
    if step_logp.ndim < 1:
        raise ValueError("step_logp must have a trailing step axis (..., K).")
    if mask is not None and jnp.shape(mask) != step_logp.shape:
        raise ValueError(f"mask shape {jnp.shape(mask)} must equal {step_logp.shape}.")
    n = jnp.expand_dims(jnp.asarray(n_eff), -1)
    per_step = dco_loss_per_example(step_logp, n)
    weight = dco_weight_per_example(step_logp, n)
    if mask is not None:
        keep = jnp.asarray(mask, bool)
        per_step = jnp.where(keep, per_step, 0.0)
        weight = jnp.where(keep, weight, 0.0)
    return reduce(jnp.sum(per_step, axis=-1), reduction), DCOAux(weight)


def mc_dco_weight(
    num_correct: Array, *, num_samples: int | Array, n: int | float | Array
) -> Array:
    """F(N, p_hat) with the Monte Carlo estimate p_hat = c / k (the paper's DCO_a).

    For chain-of-thought answers p(correct) is not a product of token probabilities: k answers
    are sampled (T = 1) and c of them are judged correct. c = 0 gives F = 1 (full CE gradient).

    Args:
      num_correct: (...) integer c in [0, k].
      num_samples: k >= 1, the answers sampled per problem (scalar or broadcastable).
      n: N >= 1.

    Returns:
      (...) F in [0, 1], gradient stopped.

    Value checks (0 <= c <= k, k >= 1, n >= 1) run under `scorejax.checked`; unchecked, c < 0
    gives F = 1, c > k gives the F of p = 1 (0 for N > 1), and n < 1 counts as 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(mc_dco_weight(jnp.asarray([0, 1, 8]), num_samples=8, n=4))
      [1.     0.8094 0.    ]
    """
    return _mc_dco_weight_jit(num_correct, num_samples, n)


@jax.jit
def _mc_dco_weight_jit(num_correct, num_samples, n) -> Array:
    c = jnp.asarray(num_correct, jnp.float32)
    k = jnp.asarray(num_samples, jnp.float32)
    checkify.debug_check(
        jnp.all(k >= 1) & jnp.all((c >= 0) & (c <= k)),
        "need 0 <= num_correct <= num_samples and num_samples >= 1.",
    )
    hit = c > 0
    # Clipped here so that c > k is reported by the check above, not as a log-probability > 0.
    s = jnp.where(hit, jnp.minimum(jnp.log(jnp.where(hit, c, 1.0)) - jnp.log(k), 0.0), -1.0)
    return jnp.where(hit, dco_weight_per_example(s, n), 1.0)


def dco_mc_loss(
    seq_logp: Array,
    num_correct: Array,
    *,
    num_samples: int | Array,
    n: int | float | Array,
    reduction: Reduction = "mean",
) -> tuple[Array, DCOAux]:
    """Monte Carlo DCO (DCO_a): l = stop_grad(F(N, c/k)) * (-log p(reference solution)), reduced.

    Args:
      seq_logp: (...) log-probability of the reference solution (e.g. a full CoT), <= 0.
      num_correct: (...) integer c, the correct answers among the k sampled.
      num_samples, n: as in `mc_dco_weight`.
      reduction: "mean" (default), "sum" or "none".

    Returns:
      (loss, aux): weighted negative log-likelihood in nats, reduced; aux.weight the (...) F.

    Value checks as `mc_dco_weight`, and seq_logp <= 0 and not NaN, under `scorejax.checked`;
    unchecked, seq_logp is used as given.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss, aux = dco_mc_loss(jnp.asarray([-2.0, -1.0]), jnp.asarray([0, 8]), num_samples=8,
      ...                         n=4, reduction="none")
      >>> print(loss, aux.weight)
      [2. 0.] [1. 0.]
    """
    check_reduction(reduction)
    weight = _dco_mc_weight_checked(seq_logp, num_correct, num_samples, n)
    return reduce(weight * -jnp.asarray(seq_logp), reduction), DCOAux(weight)


@jax.jit
def _dco_mc_weight_checked(seq_logp, num_correct, num_samples, n) -> Array:
    check_logp(seq_logp)
    return _mc_dco_weight_jit(num_correct, num_samples, n)


def live_mask(seq_logp: Array, *, n: int | float | Array, threshold: float = 0.1) -> Array:
    """True where F(N, p) > threshold: the examples DCO still trains on.

    The authors drop F <= 0.1 (p >~ 3.6/N for large N) before each step. Value checks as
    `dco_loss` (under `scorejax.checked`).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(live_mask(jnp.log(jnp.asarray([0.01, 0.5])), n=16))
      [ True False]
    """
    return dco_weight(seq_logp, n=n) > threshold


def select_live(
    seq_logp: Array, *, n: int | float | Array, batch_size: int, threshold: float = 0.1
) -> LiveSelection:
    """Filter-and-refill inside jit: the first ``batch_size`` live examples of a candidate pool.

    Args:
      seq_logp: (M,) no-grad log-probabilities of M candidate examples, in data order.
      n: N >= 1 (scalar or (M,)).
      batch_size: static number of examples to return (M >= batch_size for a full batch).
      threshold: drop examples with F <= threshold.

    Returns:
      `LiveSelection(indices, valid)`: (batch_size,) int32 positions into the pool, in pool order
      (0 where padded), and (batch_size,) bool, False on padding when fewer than batch_size are
      live; weight the per-example loss (``reduction="none"``) by it.

    Value checks as `dco_loss` (under `scorejax.checked`; unchecked, the same clipping).

    Examples:
      >>> import jax.numpy as jnp
      >>> pool = jnp.log(jnp.asarray([0.9, 0.01, 0.8, 0.02]))
      >>> sel = select_live(pool, n=16, batch_size=3)
      >>> print(sel.indices, sel.valid)
      [1 3 0] [ True  True False]
    """
    seq_logp = jnp.asarray(seq_logp)
    if seq_logp.ndim != 1:
        raise ValueError(f"seq_logp must be a 1-D candidate pool; got shape {seq_logp.shape}.")
    return LiveSelection(*_select_live_jit(seq_logp, n, batch_size, threshold))


@partial(jax.jit, static_argnums=(2,))
def _select_live_jit(seq_logp, n, batch_size: int, threshold) -> tuple[Array, Array]:
    live = dco_weight_per_example(seq_logp, n) > threshold
    (indices,) = jnp.nonzero(live, size=batch_size, fill_value=0)
    valid = jnp.arange(batch_size) < jnp.sum(live)
    return indices.astype(jnp.int32), valid


def weight_stats(
    seq_logp: Array, *, n: int | float | Array, threshold: float = 0.1
) -> WeightStats:
    """Diagnostics for a DCO run: mean F and the fraction of live examples (F > threshold).

    Log these rather than the loss: for large N the loss of covered examples underflows to 0.
    Value checks as `dco_loss` (under `scorejax.checked`).

    Examples:
      >>> import jax.numpy as jnp
      >>> stats = weight_stats(jnp.log(jnp.asarray([0.01, 0.5])), n=16)
      >>> print(f"{stats.mean_weight:.4f} {stats.live_fraction:.2f}")
      0.4633 0.50
    """
    weight = dco_weight(seq_logp, n=n)
    return WeightStats(
        jnp.mean(weight), jnp.mean((weight > threshold).astype(weight.dtype))
    )
