"""Pass@N coverage: estimators and the Direct Coverage Optimization (DCO) loss.

Chen, Raventós, Cheng, Ganguli & Druckmann, *Rethinking Fine-Tuning when Scaling Test-Time
Compute: Limiting Confidence Improves Mathematical Reasoning* (arXiv 2502.07154).

For a problem with reference answer ``y`` and model probability ``p = p(y|x)`` of the whole
answer, the chance that at least one of ``N`` i.i.d. samples is ``y`` is

    pass@N = 1 - (1 - p)^N,

and DCO minimises its negative log,

    l_DCO(N, p) = -log(1 - (1 - p)^N).                                       (DCO loss)

Its gradient is the cross-entropy gradient scaled by a per-example confidence factor,

    grad l_DCO = F(N, p) * grad(-log p),   F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N),

with F(1, p) = 1 (cross-entropy), F -> 1 as p -> 0 and F -> 0 as p -> 1. For large N,
F ~= c / (e^c - 1) with c = N p, so training stops pushing once p reaches a few times 1/N.

Everything here takes ``s = log p`` (a summed answer log-probability, see `sequence_logprob`)
and works in log space: with x = -N log(1 - p) = N * (-log1p(-e^s)),

    l_DCO = -log(1 - e^(-x)),
    F     = g(x) * h(s),   g(x) = x / (e^x - 1),   h(s) = p / ((1 - p) (-log(1 - p))),

so neither p nor (1-p)^N is ever formed: no underflow for long answers (s down to -1e4 and
below) and no cancellation in 1 - (1-p)^N when N p << 1. Loss and F have relative error of a
few ulp times max(1, x) in float32 and float64 (the x factor only matters where the value is
already below ~e^-x).

Conventions: log-probabilities are natural logs (nats); ``n`` may be an int, a float (an
effective branching factor need not be an integer) or a traced array, broadcast against
``seq_logp``.

Checks: shapes and dtypes raise `ValueError` while tracing, eagerly and under `jit` alike. Value
checks (``seq_logp <= 0`` and not NaN, ``n >= 1``, counts in range, ...) are
`checkify.debug_check`s that run only under `scorejax.checked`, where they raise eagerly and under
`jit` alike. Without it the values are unchecked and never copied to the host: ``seq_logp`` is
clipped to ``<= 0`` and ``n`` to ``>= 1``, and each function states what other invalid values give.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array

# log(1-p) is evaluated at s <= _S_MAX: s = 0 (p = 1) has -log(1-p) = inf and a 0 * inf
# gradient; at s = -1e-12 the factor F is already 0 for N > 1 in both float32 and float64.
_S_MAX = -1e-12
# Below this x = -N log(1-p) the two-term series -log x + x/2 is exact to O(x^2/24) < 1e-13.
_X_SERIES = 1e-6

__all__ = [
    "sequence_logprob",
    "dco_loss",
    "dco_weight",
    "dco_step_loss",
    "mc_dco_weight",
    "dco_mc_loss",
    "live_mask",
    "select_live",
    "weight_stats",
    "log_pass_at_n",
    "pass_at_n",
    "pass_at_n_from_prob",
    "pass_at_k",
]


# ----------------------------------------------------------------------------------------------
# Input handling


def _float_dtype(x) -> jnp.dtype:
    """At least float32: log-space sums in bfloat16/float16 lose the answer probability."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(dtype, jnp.float32)


def _check_logp(seq_logp: Array) -> None:
    """Value check (on under `scorejax.checked`): every log-probability is <= 0, none NaN."""
    s = jnp.asarray(seq_logp, _float_dtype(seq_logp))
    checkify.debug_check(~jnp.any(jnp.isnan(s)), "seq_logp contains NaN.")
    checkify.debug_check(
        jnp.all(s <= 0),
        "seq_logp must be a log-probability (<= 0); got max {top}. "
        "Pass the summed log-probability of the answer tokens, not a loss.",
        top=jnp.max(s, initial=-jnp.inf),
    )


def _check_n(n: Array) -> None:
    """Value check (on under `scorejax.checked`): N >= 1 everywhere (NaN fails)."""
    n = jnp.asarray(n, _float_dtype(n))
    checkify.debug_check(
        jnp.all(n >= 1),
        "n (the number of samples) must be >= 1; got min {low}.",
        low=jnp.min(n, initial=jnp.inf),
    )


def _cast(seq_logp, n) -> tuple[Array, Array]:
    dtype = _float_dtype(seq_logp)
    s = jnp.asarray(seq_logp, dtype)
    n = jnp.asarray(n, dtype)
    # `where`, not minimum/maximum: those split the gradient 1/2-1/2 at a tie (s = 0, N = 1).
    s = jnp.where(s > 0.0, 0.0, s)
    n = jnp.where(n < 1.0, 1.0, n)
    return jnp.broadcast_arrays(s, n)


# ----------------------------------------------------------------------------------------------
# Log-space pieces


def _log1mexp(a: Array) -> Array:
    """log(1 - e^a) for a < 0 (Maechler's two branches; the unused branch gets a safe input
    so that its gradient is finite and `where` does not leak a NaN)."""
    near = a > -math.log(2.0)
    a_near = jnp.where(near, a, -1.0)
    a_far = jnp.where(near, -1.0, a)
    return jnp.where(near, jnp.log(-jnp.expm1(a_near)), jnp.log1p(-jnp.exp(a_far)))


def _neg_log1m(s: Array) -> tuple[Array, Array, Array]:
    """For p = e^s: returns (-log(1-p), log(-log(1-p)), log r) with r = -log(1-p) / p.

    Small p (s <= -1) uses -log(1-p) = p r with r = -log1p(-p)/p in [1, 1.27], so that
    log(-log(1-p)) = s + log r holds even when p underflows (r -> 1).
    """
    s = jnp.minimum(s, _S_MAX)
    small = s <= -1.0
    s_big = jnp.where(small, -1.0, s)
    s_small = jnp.where(small, s, -2.0)

    neg_l1_big = -_log1mexp(s_big)
    log_neg_l1_big = jnp.log(neg_l1_big)

    p = jnp.exp(s_small)
    # Taylor series below 1e-3 (truncation p^5/6 < 2e-16): the quotient's derivatives would
    # divide by p^2, which underflows.
    series = p < 1e-3
    p_direct = jnp.where(series, 0.5, p)
    ratio = jnp.where(
        series,
        1.0 + p * (1 / 2 + p * (1 / 3 + p * (1 / 4 + p / 5))),
        -jnp.log1p(-p_direct) / p_direct,
    )
    log_ratio = jnp.log(ratio)

    neg_l1 = jnp.where(small, p * ratio, neg_l1_big)
    log_neg_l1 = jnp.where(small, s_small + log_ratio, log_neg_l1_big)
    log_r = jnp.where(small, log_ratio, log_neg_l1_big - s_big)
    return neg_l1, log_neg_l1, log_r


def _dco_parts(s: Array, n: Array) -> tuple[Array, Array, Array]:
    """(loss, F, g) for s <= 0, n >= 1 (broadcast). g = x/(e^x-1) is dloss/dlog(x)."""
    neg_l1, log_neg_l1, log_r = _neg_log1m(s)
    w = jnp.log(n) + log_neg_l1  # log x, x = -n log(1-p)
    x = jnp.exp(w)
    series = x < _X_SERIES
    x_reg = jnp.where(series, 1.0, x)
    loss = jnp.where(series, -w + 0.5 * x, -_log1mexp(-x_reg))

    # g = x / (e^x - 1); above x = 50 as exp(w - x) / (1 - e^-x), which stays finite (0) when
    # x overflows to inf for astronomically large n.
    big = x_reg > 50.0
    x_mid = jnp.where(big, 1.0, x_reg)
    x_big = jnp.where(big, x_reg, 51.0)
    w_big = jnp.where(big, w, jnp.log(51.0))
    log_g_big = w_big - x_big - jnp.log1p(-jnp.exp(-x_big))
    g = jnp.where(
        series, 1.0 - 0.5 * x, jnp.where(big, jnp.exp(log_g_big), x_mid / jnp.expm1(x_mid))
    )
    log_h = neg_l1 - log_r
    # In log space when g is tiny: g alone can underflow while F = g h is still representable.
    weight = jnp.where(big, jnp.exp(log_g_big + log_h), g * jnp.exp(log_h))
    weight = jnp.clip(weight, 0.0, 1.0)

    # N = 1 is cross-entropy exactly (bitwise), not to rounding.
    ce = n == 1.0
    loss = jnp.where(ce, -s, loss)
    weight = jnp.where(ce, 1.0, weight)
    return loss, weight, g


@jax.custom_jvp
def _dco_core(s: Array, n: Array) -> Array:
    return _dco_parts(s, n)[0]


@_dco_core.defjvp
def _dco_core_jvp(primals, tangents):
    s, n = primals
    ds, dn = tangents
    loss, weight, g = _dco_parts(s, n)
    # d loss / d s = -F (DCO's gradient identity); d loss / d n = -g(x) / n.
    return loss, -weight * ds - (g / n) * dn


# One compiled program per shape instead of ~100 dispatched primitives in eager use; inlined
# when called under an outer jit.
@jax.jit
def _dco_loss_jit(seq_logp: Array, n: Array) -> Array:
    _check_logp(seq_logp)
    _check_n(n)
    return _dco_core(*_cast(seq_logp, n))


@jax.jit
def _dco_weight_jit(seq_logp: Array, n: Array) -> Array:
    _check_logp(seq_logp)
    _check_n(n)
    return jax.lax.stop_gradient(_dco_parts(*_cast(seq_logp, n))[1])


# ----------------------------------------------------------------------------------------------
# Public API: log-probabilities of answers


def sequence_logprob(
    logits: Array, tokens: Array, mask: Array, temperature: float | Array = 1.0
) -> Array:
    """Summed log-probability of the answer tokens, s = sum_t mask_t log softmax(z_t / T)[y_t].

    Args:
      logits: (..., T, V) next-token logits; ``logits[..., t, :]`` predicts ``tokens[..., t]``.
      tokens: (..., T) integer targets.
      mask: (..., T) bool (or 0/1): True on the answer tokens (prompt and padding False).
      temperature: sampling temperature T > 0. With teacher forcing, exp(s) is exactly the
        probability that temperature-T ancestral sampling produces the answer.
    Returns:
      (...) float32 (or float64) log p(answer | prompt) in nats; the argument of `dco_loss`.
      Use the token SUM, not the mean: a mean over T tokens turns F into F / T per example.
    """
    logits = jnp.asarray(logits)
    tokens = jnp.asarray(tokens)
    mask = jnp.asarray(mask)
    if logits.ndim < 2:
        raise ValueError(f"logits must be (..., T, V); got shape {logits.shape}.")
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"tokens shape {tokens.shape} must equal logits.shape[:-1] = {logits.shape[:-1]}."
        )
    if mask.shape != tokens.shape:
        raise ValueError(f"mask shape {mask.shape} must equal tokens shape {tokens.shape}.")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers; got dtype {tokens.dtype}.")
    return _sequence_logprob_jit(logits, tokens, mask, temperature)


@jax.jit
def _sequence_logprob_jit(logits, tokens, mask, temperature) -> Array:
    dtype = _float_dtype(logits)
    logp = jax.nn.log_softmax(logits.astype(dtype) / jnp.asarray(temperature, dtype), axis=-1)
    tok = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(jnp.where(mask.astype(bool), tok, 0.0), axis=-1)


# ----------------------------------------------------------------------------------------------
# Public API: DCO


def dco_loss(seq_logp: Array, n: int | float | Array) -> Array:
    """Per-example DCO loss l = -log(1 - (1 - p)^N) with p = exp(seq_logp) (paper's l_DCO^N).

    Args:
      seq_logp: (...) log p(answer|prompt) <= 0, e.g. from `sequence_logprob`.
      n: number of test-time samples N >= 1 (int, float or traced), broadcast against seq_logp.
    Returns:
      (...) loss in nats, >= 0 (for N = 1 exactly -seq_logp). Its gradient with respect to
      seq_logp is exactly -dco_weight(seq_logp, n) (a custom JVP evaluates the log-space F), so
      ``grad mean(dco_loss(s(theta), n)) = mean(F * grad(-s(theta)))``. For N p << 1 the loss
      is -log p - log N + (N-1)p/2 + O(p^2): cross-entropy shifted by a constant.

    Value checks (seq_logp <= 0 and not NaN, n >= 1) run under `scorejax.checked`; unchecked,
    seq_logp > 0 counts as 0 (p = 1) and n < 1 as 1.
    """
    return _dco_loss_jit(seq_logp, n)


def dco_weight(seq_logp: Array, n: int | float | Array) -> Array:
    """DCO confidence factor F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N), gradient stopped.

    Args:
      seq_logp: (...) log p(answer|prompt) <= 0.
      n: N >= 1, broadcast against seq_logp.
    Returns:
      (...) F in [0, 1]: 1 for N = 1 or N p -> 0, 1/2 near N p = 1.26, 0.1 near N p = 3.6
      (large N), 0 as p -> 1. ``stop_gradient(F) * (-seq_logp)`` (the authors' form) has the
      same gradient as `dco_loss`.

    Value checks as `dco_loss` (under `scorejax.checked`; unchecked, the same clipping).
    """
    return _dco_weight_jit(seq_logp, n)


def dco_step_loss(
    step_logp: Array, n_eff: int | float | Array, mask: Array | None = None
) -> Array:
    """Step-level DCO for search over proof trees: l = sum_i mask_i l_DCO(N_eff, p_i).

    Each step (e.g. one tactic given its proof state) gets its own confidence cap ~1/N_eff, so
    sampled attempts branch over ~N_eff alternatives per state; a depth-k proof is then found
    with about N_eff^k attempts (choose N_eff ~ N^(1/k) for a budget of N whole attempts).
    Whole-proof ("naive") DCO is instead ``dco_loss(sum_i mask_i step_logp_i, n)``; with one
    step the two coincide.

    Args:
      step_logp: (..., K) log p(step_i | state_i) of the K demonstrated steps, each <= 0.
      n_eff: effective branching factor N_eff >= 1, broadcast against step_logp[..., 0].
      mask: optional (..., K) bool, False on padding steps.
    Returns:
      (...) summed per-step losses in nats; the gradient is sum_i F(N_eff, p_i) grad(-log p_i).

    Value checks as `dco_loss` (under `scorejax.checked`; unchecked, the same clipping).
    """
    step_logp = jnp.asarray(step_logp)
    if step_logp.ndim < 1:
        raise ValueError("step_logp must have a trailing step axis (..., K).")
    if mask is not None and jnp.shape(mask) != step_logp.shape:
        raise ValueError(f"mask shape {jnp.shape(mask)} must equal {step_logp.shape}.")
    per_step = dco_loss(step_logp, jnp.expand_dims(jnp.asarray(n_eff), -1))
    if mask is not None:
        per_step = jnp.where(jnp.asarray(mask, bool), per_step, 0.0)
    return jnp.sum(per_step, axis=-1)


def mc_dco_weight(
    num_correct: Array, num_samples: int | Array, n: int | float | Array
) -> Array:
    """F(N, p_hat) with the Monte Carlo estimate p_hat = c / k (the paper's DCO_a).

    For chain-of-thought answers p(correct) is not a product of token probabilities: k answers
    are sampled (T = 1) and c of them are judged correct. c = 0 gives F = 1 (full CE gradient).

    Args:
      num_correct: (...) integer c in [0, k].
      num_samples: k >= 1 (scalar or broadcastable).
      n: N >= 1.
    Returns:
      (...) F in [0, 1], gradient stopped.

    Value checks (0 <= c <= k, k >= 1, n >= 1) run under `scorejax.checked`; unchecked, c < 0
    gives F = 1, c > k gives the F of p = 1 (0 for N > 1), and n < 1 counts as 1.
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
    return jnp.where(hit, _dco_weight_jit(s, n), 1.0)


def dco_mc_loss(
    seq_logp: Array, num_correct: Array, num_samples: int | Array, n: int | float | Array
) -> Array:
    """Monte Carlo DCO (DCO_a): l = stop_grad(F(N, c/k)) * (-log p(reference solution)).

    Args:
      seq_logp: (...) log-probability of the reference solution (e.g. a full CoT), <= 0.
      num_correct, num_samples, n: as in `mc_dco_weight`.
    Returns:
      (...) weighted negative log-likelihood in nats.

    Value checks as `mc_dco_weight`, and seq_logp <= 0 and not NaN, under `scorejax.checked`;
    unchecked, seq_logp is used as given.
    """
    return _dco_mc_loss_jit(seq_logp, num_correct, num_samples, n)


@jax.jit
def _dco_mc_loss_jit(seq_logp, num_correct, num_samples, n) -> Array:
    _check_logp(seq_logp)
    return _mc_dco_weight_jit(num_correct, num_samples, n) * -jnp.asarray(seq_logp)


def live_mask(seq_logp: Array, n: int | float | Array, threshold: float = 0.1) -> Array:
    """True where F(N, p) > threshold: the examples DCO still trains on.

    The authors drop F <= 0.1 (p >~ 3.6/N for large N) before each step. Value checks as
    `dco_loss` (under `scorejax.checked`).
    """
    return dco_weight(seq_logp, n) > threshold


def select_live(
    seq_logp: Array, n: int | float | Array, batch_size: int, threshold: float = 0.1
) -> tuple[Array, Array]:
    """Filter-and-refill inside jit: the first ``batch_size`` live examples of a candidate pool.

    Args:
      seq_logp: (M,) no-grad log-probabilities of M candidate examples, in data order.
      n: N >= 1 (scalar or (M,)).
      batch_size: static number of examples to return (M >= batch_size for a full batch).
      threshold: drop examples with F <= threshold.
    Returns:
      indices: (batch_size,) int32 positions into the pool, in pool order (0 where padded).
      valid: (batch_size,) bool, False on padding when fewer than batch_size are live; weight
        the per-example loss by it.

    Value checks as `dco_loss` (under `scorejax.checked`; unchecked, the same clipping).
    """
    seq_logp = jnp.asarray(seq_logp)
    if seq_logp.ndim != 1:
        raise ValueError(f"seq_logp must be a 1-D candidate pool; got shape {seq_logp.shape}.")
    return _select_live_jit(seq_logp, n, batch_size, threshold)


@partial(jax.jit, static_argnums=(2,))
def _select_live_jit(seq_logp, n, batch_size: int, threshold) -> tuple[Array, Array]:
    live = _dco_weight_jit(seq_logp, n) > threshold
    (indices,) = jnp.nonzero(live, size=batch_size, fill_value=0)
    valid = jnp.arange(batch_size) < jnp.sum(live)
    return indices.astype(jnp.int32), valid


def weight_stats(
    seq_logp: Array, n: int | float | Array, threshold: float = 0.1
) -> dict[str, Array]:
    """Diagnostics for a DCO run: mean F and the fraction of live examples (F > threshold).

    Log these rather than the loss: for large N the loss of covered examples underflows to 0.
    Value checks as `dco_loss` (under `scorejax.checked`).
    """
    weight = dco_weight(seq_logp, n)
    return {
        "mean_weight": jnp.mean(weight),
        "live_fraction": jnp.mean((weight > threshold).astype(weight.dtype)),
    }


# ----------------------------------------------------------------------------------------------
# Public API: pass@N


def log_pass_at_n(seq_logp: Array, n: int | float | Array) -> Array:
    """log pass@N = log(1 - (1 - p)^N) in log space (equals -dco_loss). Shapes and value checks
    (under `scorejax.checked`) as dco_loss."""
    return -dco_loss(seq_logp, n)


def pass_at_n(seq_logp: Array, n: int | float | Array) -> Array:
    """Exact pass@N = 1 - (1 - p)^N of one answer with log-probability seq_logp.

    The expected coverage of N i.i.d. samples when exactly one answer string is correct;
    average over problems for a test-set pass@N. Value checks as `dco_loss` (under
    `scorejax.checked`).
    """
    return jnp.exp(log_pass_at_n(seq_logp, n))


def pass_at_n_from_prob(p: Array, n: int | float | Array) -> Array:
    """Exact pass@N = 1 - (1 - p)^N = -expm1(N log1p(-p)) from probabilities p in [0, 1].

    Value checks (p in [0, 1], not NaN; n >= 1) run under `scorejax.checked`; unchecked, p is
    clipped to [0, 1] (NaN stays NaN) and n is used as given.
    """
    return _pass_at_n_from_prob_jit(p, n)


@jax.jit
def _pass_at_n_from_prob_jit(p, n) -> Array:
    dtype = _float_dtype(p)
    p = jnp.asarray(p, dtype)
    checkify.debug_check(jnp.all((p >= 0) & (p <= 1)), "p must be a probability in [0, 1].")
    _check_n(n)
    p = jnp.clip(p, 0.0, 1.0)
    return -jnp.expm1(jnp.asarray(n, dtype) * jnp.log1p(-p))


def pass_at_k(num_correct: Array, num_samples: int, k: int | Array) -> Array:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021, Codex, eq. 1):

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i),

    evaluated as a sum of log1p terms (no binomials, no overflow); 1 when n - c < k.

    Args:
      num_correct: (...) integers c in [0, n].
      num_samples: n, a static Python int (samples drawn per problem).
      k: 1 <= k <= n, int or array broadcast against num_correct.
    Returns:
      (...) float32 estimate in [0, 1]; its mean over problems is unbiased for pass@k.

    num_samples is checked in Python (a static int >= 1). Value checks (c in [0, n], k in
    [1, n]) run under `scorejax.checked`; unchecked, c > n or k > n give 1, c < 0 gives 0.
    """
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a static int >= 1; got {num_samples!r}.")
    return _pass_at_k_jit(num_correct, int(num_samples), k)


@partial(jax.jit, static_argnums=(1,))
def _pass_at_k_jit(num_correct, nsamp: int, k) -> Array:
    c = jnp.asarray(num_correct, jnp.float32)
    k = jnp.asarray(k, jnp.float32)
    checkify.debug_check(jnp.all((c >= 0) & (c <= nsamp)), f"num_correct must lie in [0, {nsamp}].")
    checkify.debug_check(
        jnp.all((k >= 1) & (k <= nsamp)),
        f"k must lie in [1, num_samples={nsamp}]; got min {{low}}, max {{high}}.",
        low=jnp.min(k, initial=jnp.inf),
        high=jnp.max(k, initial=-jnp.inf),
    )
    c, k = jnp.broadcast_arrays(c, k)
    i = jnp.arange(1, nsamp + 1, dtype=jnp.float32)
    n_f = jnp.float32(nsamp)
    active = i > (n_f - c)[..., None]
    safe = active & (i > k[..., None])
    ratio = jnp.where(safe, k[..., None] / i, 0.0)
    log_fail = jnp.sum(jnp.where(safe, jnp.log1p(-ratio), 0.0), axis=-1)
    return jnp.where(n_f - c < k, 1.0, -jnp.expm1(log_fail))
