"""Score distributions over discrete quality levels (DeQA-Score).

Source: You et al., *Teaching LMMs to Regress Accurate Image Quality Scores using Score
Distribution* (DeQA-Score, CVPR 2025, arXiv 2501.11561). Definitions follow the authors' code
(zhiyuanyou/DeQA-Score: `build_soft_labels/gen_soft_label.py`, `src/model/modeling_mplug_owl2.py`,
`src/evaluate/cal_distribution_gap.py`); the paper's own equations were not available, so the
code is taken as ground truth.

Levels: K levels with values c_k = k, k = 1..K (K = 5: bad, poor, fair, good, excellent).
Arrays over levels are in ascending order, index k - 1 holds level k. The authors' tensors list
the level tokens from "excellent" to "bad": reverse the last axis (`x[..., ::-1]`) to compare.

A mean opinion score (MOS) m with annotator standard deviation s is mapped to [1, K] (mu, sigma)
by `normalize_mos`; `gaussian_soft_label` turns (mu, sigma) into a level distribution q that sums
to 1 and has mean mu; the model's level logits give a predicted score distribution whose moments
(`score_moments`) enter the Thurstone fidelity loss on image pairs.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, xlogy

from scorejax import _score_utils as chk

LEVEL_NAMES: tuple[str, ...] = ("bad", "poor", "fair", "good", "excellent")
"""Names of DeQA-Score's five levels in ascending order (value k at index k - 1)."""

Density = Literal["cdf", "pdf"]
CenterRule = Literal["limit", "normalize", "authors"]


def _levels(num_levels: int, dtype) -> jax.Array:
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    return jnp.arange(1, num_levels + 1, dtype=dtype)


def normalize_mos(
    mos: jax.Array,
    std: jax.Array,
    mos_min: float,
    mos_max: float,
    *,
    num_levels: int = 5,
) -> tuple[jax.Array, jax.Array]:
    r"""Map a MOS and its annotator std to the level scale [1, K] (DeQA `gen_soft_label.py`).

        mu    = (K - 1)(m - m_min) / (m_max - m_min) + 1
        sigma = (K - 1) s / (m_max - m_min)

    m_min and m_max are the minimum and maximum MOS over the whole dataset (train and test).

    Args:
      mos, std: (...) MOS values and their standard deviations, in the dataset's units.
      mos_min, mos_max: the dataset's MOS range.

    Returns:
      (mu, sigma), each (...), on the level scale.
    """
    mos = chk.as_float(mos)
    std = chk.as_float(std)
    chk.check_same_shape(mos=mos, std=std)
    span = mos_max - mos_min
    if chk.is_concrete(span) and not span > 0:
        raise ValueError(f"mos_max must exceed mos_min, got [{mos_min}, {mos_max}]")
    return (num_levels - 1) * (mos - mos_min) / span + 1, (num_levels - 1) * std / span


def mos_to_level(
    mos: jax.Array, mos_min: float, mos_max: float, *, num_levels: int = 5
) -> jax.Array:
    r"""Hard level of a raw MOS: K equal bins of [m_min, m_max] (DeQA `get_level`).

    Bin k is (m_min + (k-1)/K Delta - 1e-8, m_min + k/K Delta + 1e-8], Delta = m_max - m_min; a
    value on a shared edge goes to the lower bin, as the authors' first-match loop does:

        level = 1 + \sum_{k=1}^{K-1} 1[m > m_min + k Delta / K + 1e-8]

    Args:
      mos: (...) raw MOS values in [m_min, m_max].

    Returns:
      (...) int32 levels in 1..K (1 = "bad"; the text answer is `LEVEL_NAMES[level - 1]`).
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
    """
    mu = chk.as_float(mu)
    sigma = chk.as_float(sigma)
    levels = _levels(num_levels, jnp.result_type(mu, sigma))
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
    """
    mu = chk.as_float(mu)
    if chk.is_concrete(mu) and not bool(jnp.all((mu >= 1) & (mu <= num_levels))):
        raise ValueError(f"mu must lie in [1, {num_levels}]")
    k = jnp.clip(jnp.ceil(mu) - 1, 1, num_levels - 1)
    levels = _levels(num_levels, mu.dtype)
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
    levels = _levels(num_levels, masses.dtype)
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
    """
    chk.check_choice("density", density, ("cdf", "pdf"))
    chk.check_choice("center", center, ("limit", "normalize", "authors"))
    mu = chk.as_float(mu)
    sigma = chk.as_float(sigma)
    mu, sigma = jnp.broadcast_arrays(mu, sigma)
    chk.check_nonnegative("sigma", sigma)
    levels = _levels(num_levels, mu.dtype)
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
    """
    z = chk.as_float(level_logits)
    chk.check_ndim("level_logits", z, tuple(range(1, 8)))
    values = (
        _levels(z.shape[-1], z.dtype) if level_values is None else chk.as_float(level_values)
    )
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
    """
    mu_a, mu_b = chk.as_float(mu_a), chk.as_float(mu_b)
    chk.check_nonnegative("var_a", var_a)
    chk.check_nonnegative("var_b", var_b)
    return ndtr((mu_a - mu_b) / jnp.sqrt(var_a + var_b + eps))


def fidelity_loss(
    p: jax.Array,
    q: jax.Array,
    *,
    eps: float = 1e-8,
    reduction: chk.Reduction = "mean",
) -> jax.Array:
    r"""Fidelity loss between predicted and target pair probabilities (DeQA `rating_loss`).

        L = 1 - sqrt(p q + eps) - sqrt((1 - p)(1 - q) + eps)

    eps = 1e-8 keeps the gradient finite at p (1 - p) = 0; as a result L is slightly negative at
    p = q (-1e-4 at p = q in {0, 1}, -2e-8 at 0.5), as in the authors' code.

    Args:
      p: (...) predicted P(A > B). q: (...) target P(A > B) (treated as data; stop its gradient
        if it depends on parameters).
      reduction: 'mean' (the authors' batch mean), 'sum' or 'none'.

    Returns:
      Scalar, or (...) for reduction='none'. Differentiable in p (and q).
    """
    p, q = chk.as_float(p), chk.as_float(q)
    chk.check_same_shape(p=p, q=q)
    chk.check_probabilities("p", p)
    chk.check_probabilities("q", q)
    loss = 1 - jnp.sqrt(p * q + eps) - jnp.sqrt((1 - p) * (1 - q) + eps)
    return chk.reduce(loss, reduction)


def binary_fidelity_loss(
    p: jax.Array, a_better: jax.Array, *, reduction: chk.Reduction = "mean"
) -> jax.Array:
    r"""Fidelity loss against a hard pair label (DeQA `binary_rating_loss`).

        L = 1 - sqrt(p)       if A is better (q = 1[mu_a > mu_b]; ties give q = 0)
            1 - sqrt(1 - p)   otherwise

    Args:
      p: (...) predicted P(A > B). a_better: (...) bool or 0/1.

    Returns:
      Scalar, or (...) for reduction='none'. Differentiable in p for 0 < p < 1.
    """
    p = chk.as_float(p)
    chk.check_same_shape(p=p, a_better=a_better)
    chk.check_probabilities("p", p)
    chk.check_binary("a_better", a_better)
    loss = jnp.where(jnp.asarray(a_better) > 0, 1 - jnp.sqrt(p), 1 - jnp.sqrt(1 - p))
    return chk.reduce(loss, reduction)


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
    reduction: chk.Reduction = "mean",
) -> jax.Array:
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

    Returns:
      Scalar (or (B,) for reduction='none'). Differentiable in the predicted scores.
    """
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
    return chk.reduce(1 - jnp.sqrt(p * q + eps) - jnp.sqrt((1 - p) * (1 - q) + eps), reduction)


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
    reduction: chk.Reduction = "mean",
) -> jax.Array:
    r"""KL(soft label || model) at the level-token position (DeQA `softkl_loss`).

        L = \sum_k t_k (log t_k - log p_{v_k}),   0 log 0 = 0

    p = softmax over the full vocabulary at the answer position (the authors' soft-KL), or over
    the K level logits only with `closed_set=True`. The target puts t on the K level token ids
    v_k and 0 elsewhere, so only those ids enter. With reduction='mean' this is
    `F.kl_div(log p, t, reduction="batchmean")` on a (B, V) batch.

    Args:
      logits: (..., V) next-token logits at the level position.
      level_token_ids: (K,) vocabulary ids of the level tokens, in the order of `soft_label`.
      soft_label: (..., K) target distribution (`gaussian_soft_label`, reordered to match ids).

    Returns:
      Scalar, or (...) for reduction='none'. Differentiable in logits.
    """
    logp = _gather_level_logprobs(logits, level_token_ids, closed_set)
    t = chk.as_float(soft_label)
    if t.shape != logp.shape:
        raise ValueError(
            f"shape mismatch: soft_label{t.shape} vs logits{chk.shape_of(logits)} with "
            f"{chk.shape_of(level_token_ids)[0]} level ids (expected {logp.shape})"
        )
    chk.check_probabilities("soft_label", t)
    return chk.reduce(jnp.sum(xlogy(t, t) - t * logp, axis=-1), reduction)


def in_level_loss(
    logits: jax.Array, level_token_ids: jax.Array, *, floor: float = 0.01
) -> jax.Array:
    r"""Penalty on probability mass outside the level tokens (DeQA, optional in-level loss).

        L = max(floor, mean_b (1 - \sum_k p_{b, v_k})),   p = softmax over the full vocabulary

    Args:
      logits: (B, V) next-token logits at the level position.
      level_token_ids: (K,) vocabulary ids of the level tokens.

    Returns:
      Scalar. Differentiable in logits where the mean exceeds `floor`.
    """
    logp = _gather_level_logprobs(logits, level_token_ids, closed_set=False)
    return jnp.maximum(floor, jnp.mean(1 - jnp.sum(jnp.exp(logp), axis=-1)))


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
    """
    mu1, sigma1, mu2, sigma2 = (chk.as_float(x) for x in (mu1, sigma1, mu2, sigma2))
    return jnp.sqrt((mu1 - mu2) ** 2 + (sigma1 - sigma2) ** 2)
