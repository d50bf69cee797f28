"""Log-space pass@N and the DCO confidence factor: the numerics `scorejax.dco` and
`scorejax.pass_at` share.

For a problem with reference answer ``y`` and model probability ``p = p(y|x) = e^s``,

    pass@N = 1 - (1 - p)^N,      l_DCO(N, p) = -log pass@N,
    F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N)    (the DCO confidence factor, d l / d s = -F).

With x = -N log(1 - p) = N * (-log1p(-e^s)),

    l_DCO = -log(1 - e^(-x)),
    F     = g(x) * h(s),   g(x) = x / (e^x - 1),   h(s) = p / ((1 - p) (-log(1 - p))),

so neither p nor (1-p)^N is ever formed: no underflow for long answers (s down to -1e4 and
below) and no cancellation in 1 - (1-p)^N when N p << 1. Loss and F have relative error of a
few ulp times max(1, x) in float32 and float64 (the x factor only matters where the value is
already below ~e^-x).

Value checks (``s <= 0`` and not NaN, ``n >= 1``) are `checkify.debug_check`s, on under
`scorejax.checked`; unchecked, ``s`` is clipped to ``<= 0`` and ``n`` to ``>= 1``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from scorejax.logprobs import _float_dtype

Array = jax.Array

# log(1-p) is evaluated at s <= _S_MAX: s = 0 (p = 1) has -log(1-p) = inf and a 0 * inf
# gradient; at s = -1e-12 the factor F is already 0 for N > 1 in both float32 and float64.
_S_MAX = -1e-12
# Below this x = -N log(1-p) the two-term series -log x + x/2 is exact to O(x^2/24) < 1e-13.
_X_SERIES = 1e-6


def check_logp(seq_logp: Array) -> None:
    """Value check (on under `scorejax.checked`): every log-probability is <= 0, none NaN."""
    s = jnp.asarray(seq_logp, _float_dtype(seq_logp))
    checkify.debug_check(~jnp.any(jnp.isnan(s)), "seq_logp contains NaN.")
    checkify.debug_check(
        jnp.all(s <= 0),
        "seq_logp must be a log-probability (<= 0); got max {top}. "
        "Pass the summed log-probability of the answer tokens, not a loss.",
        top=jnp.max(s, initial=-jnp.inf),
    )


def check_n(n: Array) -> None:
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
def dco_loss_per_example(seq_logp: Array, n: Array) -> Array:
    """(...) l_DCO(N, e^s) = -log(1 - (1 - e^s)^N), broadcast; d l / d s = -F exactly."""
    check_logp(seq_logp)
    check_n(n)
    return _dco_core(*_cast(seq_logp, n))


@jax.jit
def dco_weight_per_example(seq_logp: Array, n: Array) -> Array:
    """(...) F(N, e^s) in [0, 1], broadcast, gradient stopped."""
    check_logp(seq_logp)
    check_n(n)
    return jax.lax.stop_gradient(_dco_parts(*_cast(seq_logp, n))[1])
