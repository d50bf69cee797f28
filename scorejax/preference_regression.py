"""Bayesian logistic regression of preferences on property comparisons (Li et al.).

Li et al., *Dissecting Human and LLM Preferences* (ACL 2024): Laplace-prior logistic regression
of preferences on property-comparison features, fitted here by its MAP. Shapes raise `ValueError`
while tracing; value checks (0/1 labels) run under `scorejax.checked`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

__all__ = ["comparison_features", "fit_laplace_logistic_map", "laplace_logistic_log_posterior"]


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

    Examples:
      >>> import jax.numpy as jnp
      >>> a, b = jnp.asarray([[3.0, 1.0, 2.0]]), jnp.asarray([[1.0, 1.0, 5.0]])
      >>> print(comparison_features(a, b, higher_is_better=jnp.asarray([True, True, False])))
      [[1. 0. 1.]]
    """
    a, b = chk.same_shape_floats(scores_a=scores_a, scores_b=scores_b)
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

    Examples:
      >>> import jax.numpy as jnp
      >>> phi = jnp.asarray([[1.0], [-1.0]])
      >>> print(f"{laplace_logistic_log_posterior(jnp.zeros(1), phi, jnp.asarray([1, 0])):.4f}")
      0.2231
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

    Examples:
      >>> import jax.numpy as jnp
      >>> phi = jnp.asarray([[1.0], [1.0], [1.0], [-1.0]])
      >>> print(fit_laplace_logistic_map(phi, jnp.asarray([1, 1, 0, 0]), scale=10.0))
      [0.9694]
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
