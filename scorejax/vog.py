"""Variance of Gradients (VoG; Agarwal, D'souza & Hooker 2022): per-example input-gradient spread.

`vog` scores a stacked history of input gradients `[T, B, ...]`: the per-pixel variance (or std)
over the `T` checkpoints, averaged over pixels, then z-normalised within each class or over the
dataset. `VoGState` gives the same scores from a running (Welford) update during training, without
storing the history. Conventions as in `scorejax.importance`; the other training-dynamics scores
(forgetting, area under the margin, cartography) are in `scorejax.training_dynamics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk

# A std within this many ulps of the group mean is rounding, not spread: XLA may compute a score
# twice (in two fusions, summed in different orders), so even a one-example group can show one.
_ZERO_SPREAD_ULPS = 16


def _z_score(value: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray, count) -> jnp.ndarray:
    """z = (value - mean) / std within a group of `count` examples.

    z = 0 where the group has one example or std <= 16 eps |mean| (all its values equal up to
    rounding): each example then sits at its group's mean, instead of 0 / 0.
    """
    eps = jnp.finfo(jnp.result_type(value)).eps
    spread = (count > 1) & (std > _ZERO_SPREAD_ULPS * eps * jnp.abs(mean))
    return jnp.where(spread, (value - mean) / jnp.where(spread, std, 1.0), 0.0)


def _segment_stats(values: jnp.ndarray, labels: jnp.ndarray, num_classes: int):
    """Per-example (mean, population std, count) of its label's group: three [B] arrays."""
    count = jax.ops.segment_sum(jnp.ones_like(values), labels, num_classes)
    mean = jax.ops.segment_sum(values, labels, num_classes) / jnp.maximum(count, 1)
    dev = values - mean[labels]
    var = jax.ops.segment_sum(dev * dev, labels, num_classes) / jnp.maximum(count, 1)
    return mean[labels], jnp.sqrt(var)[labels], count[labels]


def _check_vog_args(normalize: str | None, statistic: str, num_classes: int | None) -> None:
    chk.check_choice("normalize", normalize, ("class", "dataset", None))
    chk.check_choice("statistic", statistic, ("std", "var"))
    if normalize == "class" and num_classes is None:
        raise ValueError("normalize='class' needs num_classes (a static int)")


def _channel_mean(g: jnp.ndarray, channel_axis: int | None, lead: int) -> jnp.ndarray:
    """Average one example's gradient over its channel axis; `lead` axes precede the example's."""
    if channel_axis is None:
        return g
    return jnp.mean(g, axis=channel_axis if channel_axis < 0 else channel_axis + lead)


def _vog_from_variance(
    var: jnp.ndarray,
    labels: jnp.ndarray,
    normalize: str | None,
    num_classes: int | None,
    statistic: str,
) -> jnp.ndarray:
    """Pixel mean of the per-pixel spread [B, ...] over checkpoints, then normalisation."""
    spread = var.reshape(var.shape[0], -1)
    if statistic == "std":
        spread = jnp.sqrt(spread)
    score = jnp.mean(spread, axis=-1)
    if normalize == "dataset":
        return _z_score(score, jnp.mean(score), jnp.std(score), score.shape[0])
    if normalize == "class":
        mean, std, count = _segment_stats(score, labels, num_classes)
        return _z_score(score, mean, std, count)
    return score


def vog(
    input_grads: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    normalize: str | None = "class",
    num_classes: int | None = None,
    channel_axis: int | None = None,
    statistic: str = "std",
) -> jnp.ndarray:
    """Variance of Gradients (Agarwal, D'souza, Hooker 2022) from K checkpoints' input gradients.

    With S_t the input gradient at checkpoint t (`importance.logit_input_grads`), per pixel p
        VoG_p = sqrt( (1/K) sum_t (S_{t,p} - mu_p)^2 ),  mu_p = (1/K) sum_t S_{t,p},
    and VoG = mean_p VoG_p (the official code: population std over checkpoints, then the pixel
    mean). statistic="var" drops the square root (Anand et al. 2023, Alg. 1). Colour images are
    first averaged over `channel_axis` (an axis of one example, e.g. -1), as the official code
    does. normalize="class" z-scores within each label's examples, "dataset" over all examples
    (both with the population std), None returns the raw value. A group with one example, or
    whose std is at rounding level (<= 16 eps |mean|: equal scores), gets z = 0 instead of 0 / 0
    (the official code's NaN): each of its examples sits at the group's mean.
    `VoGState` computes the same score checkpoint by checkpoint without storing the K gradients.

    Args:
      input_grads: [K, B, ...] gradients at K checkpoints.
      labels: [B] integers (used by normalize="class").
      normalize: "class", "dataset" or None.
      num_classes: number of classes K, a static int (needed by normalize="class"); labels must
        lie in [0, K).
      channel_axis: axis of a single example's gradient to average first, or None.
      statistic: "std" or "var".
    Returns:
      [B] scores.

    Examples:
      >>> import jax.numpy as jnp
      >>> grads = jnp.asarray([[[1.0, 1.0], [2.0, 0.0]], [[3.0, 1.0], [2.0, 4.0]]])  # [K=2, B=2, 2]
      >>> print(vog(grads, jnp.asarray([0, 1]), normalize=None))
      [0.5 1. ]
      >>> print(vog(grads, jnp.asarray([0, 0]), normalize="class", num_classes=1))
      [-1.  1.]
    """
    if input_grads.ndim < 2 or input_grads.shape[1:2] != labels.shape:
        raise ValueError(
            f"input_grads must be [K, B, ...] with B={labels.shape}, got {input_grads.shape}"
        )
    _check_vog_args(normalize, statistic, num_classes)
    g = _channel_mean(input_grads, channel_axis, lead=2)
    return _vog_from_variance(jnp.var(g, axis=0), labels, normalize, num_classes, statistic)


class VoGState(NamedTuple):
    """Running per-pixel mean and sum of squared deviations of input gradients (Welford).

    Examples:
      >>> import jax.numpy as jnp
      >>> grads = jnp.asarray([[[1.0, 1.0], [2.0, 0.0]], [[3.0, 1.0], [2.0, 4.0]]])
      >>> state = VoGState.create((2, 2))
      >>> for g in grads:
      ...     state = state.update(g)
      >>> print(state.score(jnp.asarray([0, 1]), normalize=None))
      [0.5 1. ]
    """

    count: jnp.ndarray  # scalar, checkpoints seen
    mean: jnp.ndarray  # [B, ...]
    m2: jnp.ndarray  # [B, ...]

    @classmethod
    def create(cls, shape: Sequence[int], dtype: Any = jnp.float32) -> VoGState:
        """Empty statistics for gradients of shape [B, ...] (after any channel averaging)."""
        zeros = jnp.zeros(tuple(shape), dtype)
        return cls(jnp.zeros((), dtype), zeros, zeros)

    def update(self, grads: jnp.ndarray, *, channel_axis: int | None = None) -> VoGState:
        """Add one checkpoint's input gradients [B, ...] (Welford's update)."""
        g = _channel_mean(grads, channel_axis, lead=1).astype(self.mean.dtype)
        if g.shape != self.mean.shape:
            raise ValueError(f"gradients of shape {g.shape} for statistics {self.mean.shape}")
        return VoGState(*chk.welford_update(self.count, self.mean, self.m2, g))

    def score(
        self,
        labels: jnp.ndarray,
        *,
        normalize: str | None = "class",
        num_classes: int | None = None,
        statistic: str = "std",
    ) -> jnp.ndarray:
        """`vog` of the checkpoints added so far: [B] scores.

        Examples:
          >>> import jax.numpy as jnp
          >>> state = VoGState.create((2, 1))
          >>> for g in ([[1.0], [5.0]], [[3.0], [5.0]]):
          ...     state = state.update(jnp.asarray(g))
          >>> print(state.score(jnp.asarray([0, 0]), normalize=None))
          [1. 0.]
        """
        _check_vog_args(normalize, statistic, num_classes)
        var = self.m2 / jnp.maximum(self.count, 1)
        return _vog_from_variance(var, labels, normalize, num_classes, statistic)
