"""Quality levels and soft labels of DeQA-Score: MOS normalisation, level masses, soft labels.

Source: You et al., *Teaching LMMs to Regress Accurate Image Quality Scores using Score
Distribution* (DeQA-Score, CVPR 2025, arXiv 2501.11561). Definitions follow the authors' code
(zhiyuanyou/DeQA-Score: `build_soft_labels/gen_soft_label.py`); the paper's own equations were
not available, so the code is taken as ground truth. The losses on these labels are in
`scorejax.quality_losses`, the distances between Gaussians in `scorejax.gaussian_divergences`.

Levels: K levels with values c_k = k, k = 1..K (K = 5: bad, poor, fair, good, excellent).
Arrays over levels are in ascending order, index k - 1 holds level k. The authors' tensors list
the level tokens from "excellent" to "bad": reverse the last axis (`x[..., ::-1]`) to compare.

A mean opinion score (MOS) m with annotator standard deviation s is mapped to [1, K] (mu, sigma)
by `normalize_mos`; `gaussian_soft_label` turns (mu, sigma) into a level distribution q that sums
to 1 and has mean mu. Shapes and options raise `ValueError` while tracing; value checks (mu in
[1, K], sigma >= 0) run under `scorejax.checked`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify
from jax.scipy.special import ndtr

from scorejax import _score_utils as chk

__all__ = [
    "LEVEL_NAMES",
    "LevelScale",
    "gaussian_level_masses",
    "gaussian_soft_label",
    "level_values",
    "mos_to_level",
    "normalize_mos",
    "two_level_label",
]

LEVEL_NAMES: tuple[str, ...] = ("bad", "poor", "fair", "good", "excellent")
"""Names of DeQA-Score's five levels in ascending order (value k at index k - 1)."""

Density = Literal["cdf", "pdf"]
CenterRule = Literal["limit", "normalize", "authors"]


class LevelScale(NamedTuple):
    """A score and its spread on the level scale [1, K] (`normalize_mos`)."""

    mu: jax.Array  # (...) normalised score
    sigma: jax.Array  # (...) normalised standard deviation


def level_values(num_levels: int, dtype=jnp.float32) -> jax.Array:
    """(K,) level values c_k = 1..K in ascending order.

    Examples:
      >>> print(level_values(5))
      [1. 2. 3. 4. 5.]
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    return jnp.arange(1, num_levels + 1, dtype=dtype)


def normalize_mos(
    mos: jax.Array,
    std: jax.Array,
    *,
    mos_min: float,
    mos_max: float,
    num_levels: int = 5,
) -> LevelScale:
    r"""Map a MOS and its annotator std to the level scale [1, K] (DeQA `gen_soft_label.py`).

        mu    = (K - 1)(m - m_min) / (m_max - m_min) + 1
        sigma = (K - 1) s / (m_max - m_min)

    m_min and m_max are the minimum and maximum MOS over the whole dataset (train and test).

    Args:
      mos, std: (...) MOS values and their standard deviations, in the dataset's units.
      mos_min, mos_max: the dataset's MOS range, static Python floats (checked while tracing).
      num_levels: K.

    Returns:
      `LevelScale(mu, sigma)`, each (...), on the level scale.

    Examples:
      >>> import jax.numpy as jnp
      >>> scale = normalize_mos(jnp.asarray([0.0, 50.0, 100.0]), jnp.asarray([10.0, 10.0, 10.0]),
      ...                       mos_min=0.0, mos_max=100.0)
      >>> print(scale.mu, scale.sigma)
      [1. 3. 5.] [0.4 0.4 0.4]
    """
    mos = chk.as_float(mos)
    std = chk.as_float(std)
    chk.check_same_shape(mos=mos, std=std)
    span = float(mos_max) - float(mos_min)
    if not span > 0:
        raise ValueError(f"mos_max must exceed mos_min, got [{mos_min}, {mos_max}]")
    return LevelScale((num_levels - 1) * (mos - mos_min) / span + 1, (num_levels - 1) * std / span)


def mos_to_level(
    mos: jax.Array, *, mos_min: float, mos_max: float, num_levels: int = 5
) -> jax.Array:
    r"""Hard level of a raw MOS: K equal bins of [m_min, m_max] (DeQA `get_level`).

    Bin k is (m_min + (k-1)/K Delta - 1e-8, m_min + k/K Delta + 1e-8], Delta = m_max - m_min; a
    value on a shared edge goes to the lower bin, as the authors' first-match loop does:

        level = 1 + \sum_{k=1}^{K-1} 1[m > m_min + k Delta / K + 1e-8]

    Args:
      mos: (...) raw MOS values in [m_min, m_max].

    Returns:
      (...) int32 levels in 1..K (1 = "bad"; the text answer is `LEVEL_NAMES[level - 1]`).

    Examples:
      >>> import jax.numpy as jnp
      >>> levels = mos_to_level(jnp.asarray([0.0, 20.0, 21.0, 100.0]), mos_min=0.0, mos_max=100.0)
      >>> print(levels, [LEVEL_NAMES[k - 1] for k in levels.tolist()])
      [1 1 2 5] ['bad', 'bad', 'poor', 'excellent']
    """
    mos = chk.as_float(mos)
    span = mos_max - mos_min
    edges = mos_min + jnp.arange(1, num_levels, dtype=mos.dtype) / num_levels * span + 1e-8
    return 1 + jnp.sum(mos[..., None] > edges, axis=-1).astype(jnp.int32)


def _interval_mass(a: jax.Array, b: jax.Array) -> jax.Array:
    """Phi(b) - Phi(a) for a <= b, without cancellation in the upper tail."""
    return jnp.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


def gaussian_level_masses(
    mu: jax.Array, sigma: jax.Array, *, num_levels: int = 5, density: Density = "cdf"
) -> jax.Array:
    r"""Raw (unadjusted) level masses of N(mu, sigma^2) (DeQA `gen_soft_label.py`).

        'cdf': p_k = Phi((k + 1/2 - mu)/sigma) - Phi((k - 1/2 - mu)/sigma)
               (mass of unit intervals; they cover [0.5, K + 0.5], so \sum p <= 1)
        'pdf': p_k = phi((k - mu)/sigma) / sigma
               (density at the level; a width-1 Riemann sum, not normalised)

    The authors use 'cdf' for small-sigma datasets (SPAQ) and 'pdf' for large-sigma ones (KonIQ,
    KADID).

    Args:
      mu, sigma: (...) broadcastable; sigma > 0.

    Returns:
      (..., K) masses in ascending level order. Differentiable in mu and sigma.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(gaussian_level_masses(jnp.asarray(3.0), jnp.asarray(0.5)))
      [0.0013 0.1573 0.6827 0.1573 0.0013]
    """
    mu = chk.as_float(mu)
    sigma = chk.as_float(sigma)
    levels = level_values(num_levels, jnp.result_type(mu, sigma))
    mu_, sigma_ = mu[..., None], sigma[..., None]
    if density == "cdf":
        return _interval_mass((levels - 0.5 - mu_) / sigma_, (levels + 0.5 - mu_) / sigma_)
    if density == "pdf":
        z = (levels - mu_) / sigma_
        return jnp.exp(-0.5 * z**2) / (jnp.sqrt(2 * jnp.pi) * sigma_)
    raise ValueError(f"density must be 'cdf' or 'pdf', got {density!r}")


def two_level_label(mu: jax.Array, *, num_levels: int = 5) -> jax.Array:
    r"""Linear interpolation between the two levels around mu (DeQA `get_binary_probs`).

    For mu in (k, k + 1] (k = 1 for mu = 1): q_k = k + 1 - mu, q_{k+1} = mu - k, all others 0.
    Sum 1, mean exactly mu, variance (mu - k)(k + 1 - mu). The authors' intervals are widened by
    1e-8 on each side, which changes the weights by at most 2e-8.

    Args:
      mu: (...) in [1, K].

    Returns:
      (..., K) label in ascending level order. Differentiable (piecewise linear) in mu.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(two_level_label(jnp.asarray([1.0, 2.25, 5.0])))
      [[1.   0.   0.   0.   0.  ]
       [0.   0.75 0.25 0.   0.  ]
       [0.   0.   0.   0.   1.  ]]
    """
    mu = chk.as_float(mu)
    checkify.debug_check(
        jnp.all((mu >= 1) & (mu <= num_levels)), f"mu must lie in [1, {num_levels}]"
    )
    k = jnp.clip(jnp.ceil(mu) - 1, 1, num_levels - 1)
    levels = level_values(num_levels, mu.dtype)
    upper = (mu - k)[..., None]
    return jnp.where(levels == k[..., None], 1 - upper, 0) + jnp.where(
        levels == k[..., None] + 1, upper, 0
    )


def _adjust_scale(
    mu: jax.Array,
    sigma: jax.Array,
    masses: jax.Array,
    num_levels: int,
    density: Density,
    center: CenterRule,
    center_tol: float,
) -> jax.Array:
    """alpha of the post-adjustment, with the mu = (K + 1)/2 singularity handled per `center`."""
    levels = level_values(num_levels, masses.dtype)
    mid = (num_levels + 1) / 2
    total = jnp.sum(masses, axis=-1)
    offset = jnp.sum((levels - mid) * masses, axis=-1)  # B - mid * A
    if center == "authors":
        return (mu - mid) / (offset + 1e-9)
    near = jnp.abs(mu - mid) < center_tol
    if center == "normalize":
        return jnp.where(near, 1 / total, (mu - mid) / jnp.where(near, 1.0, offset))
    if center == "limit":
        # B - mid*A is odd in (mu - mid) and vanishes at mid, so (mu - mid)/(B - mid*A) tends to
        # 1/(d(B - mid*A)/d mu); the relative error of using it for |mu - mid| < tol is O(tol^2).
        def centred_mean(m):
            p = gaussian_level_masses(m, sigma, num_levels=num_levels, density=density)
            return jnp.sum((levels - mid) * p, axis=-1)

        _, slope = jax.jvp(centred_mean, (mu,), (jnp.ones_like(mu),))
        return jnp.where(near, 1 / slope, (mu - mid) / jnp.where(near, 1.0, offset))
    raise ValueError(f"center must be 'limit', 'normalize' or 'authors', got {center!r}")


def gaussian_soft_label(
    mu: jax.Array,
    sigma: jax.Array,
    *,
    num_levels: int = 5,
    density: Density = "cdf",
    thre_std: float = 0.2,
    thre_diff: float = 0.1,
    center: CenterRule = "limit",
    center_tol: float = 1e-3,
) -> jax.Array:
    r"""DeQA-Score soft label: Gaussian level masses adjusted to sum 1 and mean mu.

    With raw masses p (`gaussian_level_masses`), A = \sum_k p_k, B = \sum_k c_k p_k, solve

        alpha A + K beta = 1,   alpha B + (\sum_k c_k) beta = mu
        => alpha = (mu - c_mid) / (B - c_mid A),  beta = (1 - alpha A) / K,  c_mid = (K + 1)/2
        q_k = max(alpha p_k + beta, 0)            (no renormalisation after the clamp, as the code)

    If sigma < thre_std or |\sum_k c_k q_k - mu| > thre_diff, q is replaced by the two-level
    label (`two_level_label`).

    The mu = c_mid artefact: the authors compute alpha = (mu - 3)/(B - 3A + 1e-9), which at
    mu = 3 exactly gives alpha = 0, beta = 1/5, a uniform label (variance 2) that passes both
    fallback tests, while mu = 3 +- 1e-6 gives the expected peaked label. The 2x2 system is
    singular at mu = c_mid (any alpha with beta = (1 - alpha A)/K satisfies it). `center`
    chooses the fix:
      - 'limit' (default): the limit of the authors' alpha as mu -> c_mid, 1/(d(B - c_mid A)/d mu),
        used for |mu - c_mid| < center_tol. The label is then continuous in mu and equals the
        authors' label everywhere except within ~1e-9 of c_mid (up to O(center_tol^2)).
      - 'normalize': alpha = 1/A, beta = 0 there (the Gaussian masses renormalised; also sum 1
        and mean c_mid, but not the limit, so the label jumps slightly at c_mid).
      - 'authors': the code's formula, +1e-9 included, reproducing the uniform label.
    Away from c_mid, 'limit' and 'normalize' omit the 1e-9: alpha changes by a relative
    1e-9 / |B - c_mid A| (about 1e-9 / |mu - c_mid|, so below 1e-6 outside the window).
    In float32 the cancellation in B - c_mid A limits alpha to ~1e-4 relative accuracy near
    c_mid; build labels in float64 (`with jax.enable_x64(True):`) to match the authors' numpy
    labels to ~1e-9.

    Args:
      mu, sigma: (...) normalised score and std (`normalize_mos`), mu in [1, K].
      density: 'cdf' or 'pdf' masses (see `gaussian_level_masses`).
      thre_std, thre_diff: fallback thresholds (the authors' config: 0.2 and 0.1).

    Returns:
      (..., K) soft label in ascending level order. Differentiable in mu and sigma inside each
      regime (the regime switches are not).

    Examples:
      >>> import jax.numpy as jnp
      >>> q = gaussian_soft_label(jnp.asarray([2.5, 4.2]), jnp.asarray([0.7, 0.1]))
      >>> print(q)
      [[0.0732 0.4268 0.4268 0.0732 0.    ]
       [0.     0.     0.     0.8    0.2   ]]
      >>> print(jnp.sum(q, -1), jnp.sum(q * level_values(5), -1))
      [1. 1.] [2.5 4.2]
    """
    chk.check_choice("density", density, ("cdf", "pdf"))
    chk.check_choice("center", center, ("limit", "normalize", "authors"))
    mu = chk.as_float(mu)
    sigma = chk.as_float(sigma)
    mu, sigma = jnp.broadcast_arrays(mu, sigma)
    chk.check_nonnegative("sigma", sigma)
    levels = level_values(num_levels, mu.dtype)
    small = sigma < thre_std
    # The Gaussian branch is discarded where sigma is small; keep it finite there so gradients
    # through the selected branch do not pick up NaN.
    safe_sigma = jnp.where(small, 1.0, sigma)
    masses = gaussian_level_masses(mu, safe_sigma, num_levels=num_levels, density=density)
    alpha = _adjust_scale(mu, safe_sigma, masses, num_levels, density, center, center_tol)
    beta = (1 - alpha * jnp.sum(masses, axis=-1)) / num_levels
    q = jnp.maximum(alpha[..., None] * masses + beta[..., None], 0)
    diff = jnp.abs(jnp.sum(levels * q, axis=-1) - mu)
    fallback = small | (diff > thre_diff)
    return jnp.where(fallback[..., None], two_level_label(mu, num_levels=num_levels), q)
