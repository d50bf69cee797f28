"""Pass@N and pass@k estimators: the chance that at least one of N samples is correct.

    pass@N = 1 - (1 - p)^N

for an answer of probability p (exactly, from the model's log-probability: `pass_at_n`,
`log_pass_at_n`; from p itself: `pass_at_n_from_prob`), and the unbiased estimator of pass@k
from n sampled answers of which c are correct (`pass_at_k`, the HumanEval estimator, with its
argument order (n, c, k)). The budget is `n` in the first three (the DCO paper's N, keyword-only)
and `k` in `pass_at_k` (HumanEval's names).

Shapes raise `ValueError` while tracing. Value checks run under `scorejax.checked`, eagerly and
under `jit` alike; unchecked, nothing is copied to the host and each function states what invalid
values give.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from scorejax._coverage_core import check_n, dco_loss_per_example
from scorejax.logprobs import _float_dtype

Array = jax.Array

__all__ = ["log_pass_at_n", "pass_at_k", "pass_at_n", "pass_at_n_from_prob"]


def log_pass_at_n(seq_logp: Array, *, n: int | float | Array) -> Array:
    """log pass@N = log(1 - (1 - p)^N) with p = exp(seq_logp), in log space (= -l_DCO).

    Args:
      seq_logp: (...) log p(answer|prompt) <= 0 (`scorejax.logprobs.sequence_logprob`).
      n: the number of samples N >= 1, broadcast against seq_logp.

    Returns:
      (...) log pass@N in nats, <= 0; exact even when p underflows.

    Value checks and clipping as `scorejax.dco.dco_loss` (under `scorejax.checked`).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(log_pass_at_n(jnp.asarray([-1000.0]), n=10))
      [-997.6974]
    """
    return -dco_loss_per_example(seq_logp, n)


def pass_at_n(seq_logp: Array, *, n: int | float | Array) -> Array:
    """Exact pass@N = 1 - (1 - p)^N of one answer with log-probability seq_logp.

    The expected coverage of N i.i.d. samples when exactly one answer string is correct;
    average over problems for a test-set pass@N.

    Args:
      seq_logp: (...) log p(answer|prompt) <= 0.
      n: N >= 1, broadcast against seq_logp.

    Returns:
      (...) pass@N in [0, 1].

    Value checks as `scorejax.dco.dco_loss` (under `scorejax.checked`).

    Examples:
      >>> import jax.numpy as jnp
      >>> print(pass_at_n(jnp.log(jnp.asarray([0.5, 0.1])), n=4))
      [0.9375 0.3439]
    """
    return jnp.exp(log_pass_at_n(seq_logp, n=n))


def pass_at_n_from_prob(p: Array, *, n: int | float | Array) -> Array:
    """Exact pass@N = 1 - (1 - p)^N = -expm1(N log1p(-p)) from probabilities p in [0, 1].

    Args:
      p: (...) probabilities.
      n: N >= 1, broadcast against p.

    Returns:
      (...) pass@N in [0, 1].

    Value checks (p in [0, 1], not NaN; n >= 1) run under `scorejax.checked`; unchecked, p is
    clipped to [0, 1] (NaN stays NaN) and n is used as given.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(pass_at_n_from_prob(jnp.asarray([0.5, 1e-3]), n=4))
      [0.9375 0.004 ]
    """
    return _pass_at_n_from_prob_jit(p, n)


@jax.jit
def _pass_at_n_from_prob_jit(p, n) -> Array:
    dtype = _float_dtype(p)
    p = jnp.asarray(p, dtype)
    checkify.debug_check(jnp.all((p >= 0) & (p <= 1)), "p must be a probability in [0, 1].")
    check_n(n)
    p = jnp.clip(p, 0.0, 1.0)
    return -jnp.expm1(jnp.asarray(n, dtype) * jnp.log1p(-p))


def pass_at_k(num_samples: int, num_correct: Array, k: int | Array) -> Array:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021, Codex, eq. 1):

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i),

    evaluated as a sum of log1p terms (no binomials, no overflow); 1 when n - c < k. The
    argument order is the HumanEval estimator's, ``pass_at_k(n, c, k)``.

    Args:
      num_samples: n, a static Python int >= 1 (samples drawn per problem).
      num_correct: (...) integers c in [0, n].
      k: 1 <= k <= n, int or array broadcast against num_correct.

    Returns:
      (...) float32 estimate in [0, 1]; its mean over problems is unbiased for pass@k.

    num_samples is checked in Python (a static int >= 1). Value checks (c in [0, n], k in
    [1, n]) run under `scorejax.checked`; unchecked, c > n or k > n give 1, c < 0 gives 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(pass_at_k(10, jnp.asarray([0, 1, 5]), 2))
      [0.     0.2    0.7778]
    """
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a static int >= 1; got {num_samples!r}.")
    return _pass_at_k_jit(int(num_samples), num_correct, k)


@partial(jax.jit, static_argnums=(0,))
def _pass_at_k_jit(nsamp: int, num_correct, k) -> Array:
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
    # log_fail <= 0; abs turns the -0.0 of c = 0 into 0.0.
    return jnp.where(n_f - c < k, 1.0, jnp.abs(jnp.expm1(log_fail)))
