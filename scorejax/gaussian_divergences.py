"""Distances between 1-D Gaussians, as DeQA-Score evaluates predicted score distributions.

Source: You et al., *Teaching LMMs to Regress Accurate Image Quality Scores using Score
Distribution* (DeQA-Score, CVPR 2025; `src/evaluate/cal_distribution_gap.py`): KL, the
moment-matched "JS" it reports, and the exact 2-Wasserstein distance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

__all__ = ["gaussian_kl", "gaussian_midpoint_divergence", "gaussian_w2"]


def gaussian_kl(
    mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array, sigma2: jax.Array, *, eps: float = 1e-8
) -> jax.Array:
    r"""KL(N(mu1, sigma1^2) || N(mu2, sigma2^2)) as in DeQA `cal_distribution_gap.py`.

        KL = log(sigma2 / (sigma1 + eps)) + (sigma1^2 + (mu1 - mu2)^2) / (2 sigma2^2 + eps) - 1/2

    eps = 1e-8 is the authors' guard; eps = 0 gives the exact closed form.

    Args:
      mu1, sigma1, mu2, sigma2: broadcastable (...), sigmas > 0.

    Returns:
      (...) KL in nats. Differentiable.

    Examples:
      >>> print(f"{gaussian_kl(0.0, 1.0, 1.0, 2.0, eps=0.0):.4f}")
      0.4431
    """
    mu1, sigma1, mu2, sigma2 = (chk.as_float(x) for x in (mu1, sigma1, mu2, sigma2))
    return (
        jnp.log(sigma2 / (sigma1 + eps))
        + (sigma1**2 + (mu1 - mu2) ** 2) / (2 * sigma2**2 + eps)
        - 0.5
    )


def gaussian_midpoint_divergence(
    mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array, sigma2: jax.Array, *, eps: float = 1e-8
) -> jax.Array:
    r"""What DeQA-Score's evaluation calls "JS" between two Gaussians. It is NOT the
    Jensen-Shannon divergence: the midpoint is a moment-matched Gaussian, not the mixture.

        mu_m = (mu1 + mu2)/2,   sigma_m = sqrt((sigma1^2 + sigma2^2)/2)
        D = KL(N1 || N_m)/2 + KL(N2 || N_m)/2          (KL as in `gaussian_kl`, same eps)

    Returns:
      (...) divergence in nats, symmetric in its two Gaussians. Differentiable.

    Examples:
      >>> print(f"{gaussian_midpoint_divergence(0.0, 1.0, 2.0, 1.0, eps=0.0):.4f}")
      0.5000
    """
    mu1, sigma1, mu2, sigma2 = (chk.as_float(x) for x in (mu1, sigma1, mu2, sigma2))
    mu_m = (mu1 + mu2) / 2
    sigma_m = jnp.sqrt((sigma1**2 + sigma2**2) / 2)
    return 0.5 * gaussian_kl(mu1, sigma1, mu_m, sigma_m, eps=eps) + 0.5 * gaussian_kl(
        mu2, sigma2, mu_m, sigma_m, eps=eps
    )


def gaussian_w2(
    mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array, sigma2: jax.Array
) -> jax.Array:
    r"""2-Wasserstein distance between 1-D Gaussians (exact): sqrt((mu1-mu2)^2 + (sigma1-sigma2)^2).

    Returns:
      (...) distance in score units. Differentiable away from identical Gaussians.

    Examples:
      >>> print(gaussian_w2(0.0, 1.0, 3.0, 5.0))
      5.0
    """
    mu1, sigma1, mu2, sigma2 = (chk.as_float(x) for x in (mu1, sigma1, mu2, sigma2))
    return jnp.sqrt((mu1 - mu2) ** 2 + (sigma1 - sigma2) ** 2)
