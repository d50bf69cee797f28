"""Per-example scores recorded over training: VoG, forgetting, area under the margin, cartography.

Variance of Gradients (Agarwal, D'souza, Hooker 2022), example forgetting (Toneva et al. 2019;
data_diet `forgetting.py`), area under the margin (Pleiss et al. 2020) and dataset cartography
(Swayamdipta et al. 2020). Each comes in a batch form over a stacked history and a running form
(`VoGState`, `ForgettingState`, `DynamicsState`) that is updated in-graph during training and
gives the same scores without storing the history. Conventions as in `scorejax.importance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk
from scorejax.importance import _check_logits_labels, margin

# --------------------------------------------------------------------------------------------
# Variance of Gradients.

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


def _welford(
    count: jnp.ndarray, mean: jnp.ndarray, m2: jnp.ndarray, x: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Welford's update by one value `x`: count, mean and m2 (sum of squared deviations)."""
    count = count + 1
    delta = x - mean
    mean = mean + delta / count
    return count, mean, m2 + delta * (x - mean)


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
        return VoGState(*_welford(self.count, self.mean, self.m2, g))

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


# --------------------------------------------------------------------------------------------
# Forgetting events.


def forgetting_events(
    correct_history: jnp.ndarray,
    *,
    presented: jnp.ndarray | None = None,
    never_learned: float = float("inf"),
) -> jnp.ndarray:
    """Number of forgetting events per example (Toneva et al. 2019; data_diet `forgetting.py`).

    acc_i^(s) is whether example i was classified correctly at its s-th presentation (in the
    original: the training minibatch's pre-update forward pass). An event is a transition
    acc^(s) = 1 -> acc^(s+1) = 0 between consecutive presentations; the state before the first
    presentation counts as "incorrect", so a first presentation is never an event. Examples never
    classified correctly get `never_learned`: +inf as in data_diet (the default), or the number of
    presentations as in Toneva et al.'s repository.

    Args:
      correct_history: [S, B] booleans, step by step.
      presented: optional [S, B] booleans; steps where an example was not presented are skipped.
      never_learned: score for examples never correct.
    Returns:
      [B] float scores.

    Examples:
      >>> import jax.numpy as jnp
      >>> history = jnp.asarray([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 1]], bool)  # [S=4, B=3]
      >>> print(forgetting_events(history))
      [ 2. inf  0.]
      >>> print(forgetting_events(history, never_learned=4.0))
      [2. 4. 0.]
    """
    if correct_history.ndim != 2:
        raise ValueError(f"correct_history must be [S, B], got shape {correct_history.shape}")
    if presented is not None and presented.shape != correct_history.shape:
        raise ValueError(
            f"presented must have shape {correct_history.shape}, got {presented.shape}"
        )
    state = forgetting_init(correct_history.shape[1])
    ids = jnp.arange(correct_history.shape[1])
    pres = jnp.ones_like(correct_history, bool) if presented is None else presented

    def step(st, row):
        correct, shown = row
        return forgetting_update(st, ids, correct, shown), None

    state, _ = jax.lax.scan(step, state, (correct_history.astype(bool), pres.astype(bool)))
    return forgetting_scores(state, never_learned=never_learned)


class ForgettingState(NamedTuple):
    """Running forgetting statistics for N examples, updated in-graph during training.

    Examples:
      >>> import jax.numpy as jnp
      >>> state = forgetting_init(3)
      >>> state = forgetting_update(state, jnp.asarray([0, 2]), jnp.asarray([True, True]))
      >>> state = forgetting_update(state, jnp.asarray([2, 0]), jnp.asarray([False, True]))
      >>> print(forgetting_scores(state))
      [ 0. inf  1.]
    """

    prev_correct: jnp.ndarray  # [N] bool, correctness at the last presentation
    events: jnp.ndarray  # [N] int32
    learned: jnp.ndarray  # [N] bool, ever classified correctly


def forgetting_init(num_examples: int) -> ForgettingState:
    """Statistics before any presentation: nothing correct, no events.

    Examples:
      >>> print(forgetting_init(2).events)
      [0 0]
    """
    return ForgettingState(
        jnp.zeros(num_examples, bool),
        jnp.zeros(num_examples, jnp.int32),
        jnp.zeros(num_examples, bool),
    )


def forgetting_update(
    state: ForgettingState,
    ids: jnp.ndarray,
    correct: jnp.ndarray,
    valid: jnp.ndarray | None = None,
) -> ForgettingState:
    """Record one minibatch: examples `ids` [b] (distinct) were `correct` [b].

    `valid` [b] marks real rows; padded rows (False) change nothing.

    Examples:
      >>> import jax.numpy as jnp
      >>> ids, correct = jnp.asarray([1, 0]), jnp.asarray([True, False])
      >>> state = forgetting_update(forgetting_init(2), ids, correct, jnp.asarray([True, False]))
      >>> print(state.prev_correct, state.learned)
      [False  True] [False  True]
    """
    correct = correct.astype(bool)
    valid = jnp.ones_like(correct) if valid is None else valid.astype(bool)
    # Padded rows scatter out of range and are dropped, so pads may repeat any id.
    target = jnp.where(valid, ids, state.events.shape[0])
    forgot = state.prev_correct[ids] & ~correct & valid
    return ForgettingState(
        state.prev_correct.at[target].set(correct, mode="drop"),
        state.events.at[target].add(forgot.astype(jnp.int32), mode="drop"),
        state.learned.at[target].set(state.learned[ids] | correct, mode="drop"),
    )


def forgetting_scores(
    state: ForgettingState, *, never_learned: float = float("inf")
) -> jnp.ndarray:
    """[N] forgetting counts, `never_learned` for examples never classified correctly.

    Examples:
      >>> import jax.numpy as jnp
      >>> state = forgetting_update(forgetting_init(2), jnp.asarray([0]), jnp.asarray([True]))
      >>> print(forgetting_scores(state), forgetting_scores(state, never_learned=-1.0))
      [ 0. inf] [ 0. -1.]
    """
    return jnp.where(state.learned, state.events.astype(jnp.float32), never_learned)


# --------------------------------------------------------------------------------------------
# Area under the margin and dataset cartography.


def area_under_margin(logits_history: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """AUM (Pleiss et al. 2020): (1/T) sum_t [z^(t)_{y} - max_{k != y} z^(t)_k] over T records.

    Args:
      logits_history: [T, B, K] logits recorded during training. labels: [B] integers.
    Returns:
      [B] scores (low or negative values flag likely mislabelled examples).

    Examples:
      >>> import jax.numpy as jnp
      >>> history = jnp.asarray([[[2.0, 0.0]], [[0.0, 1.0]]])  # [T=2, B=1, K=2]
      >>> print(area_under_margin(history, jnp.asarray([0])))
      [0.5]
    """
    if logits_history.ndim != 3:
        raise ValueError(f"logits_history must be [T, B, K], got shape {logits_history.shape}")
    return jnp.mean(jax.vmap(margin, in_axes=(0, None))(logits_history, labels), axis=0)


class Cartography(NamedTuple):
    """Dataset-cartography coordinates (Swayamdipta et al. 2020), each [B].

    Examples:
      >>> import jax.numpy as jnp
      >>> print(cartography(jnp.zeros((2, 1, 2)), jnp.asarray([0])).confidence)
      [0.5]
    """

    confidence: jnp.ndarray  # mean over epochs of p(y_i | x_i)
    variability: jnp.ndarray  # population std over epochs of p(y_i | x_i)
    correctness: jnp.ndarray  # fraction of epochs with argmax = y_i


def cartography(logits_history: jnp.ndarray, labels: jnp.ndarray) -> Cartography:
    """Confidence, variability and correctness from [E, B, K] logits at E epoch checkpoints.

    mu_i = (1/E) sum_e p_e(y_i|x_i),  sigma_i = sqrt((1/E) sum_e (p_e(y_i|x_i) - mu_i)^2).

    Examples:
      >>> import jax.numpy as jnp
      >>> history = jnp.log(jnp.asarray([[[0.9, 0.1]], [[0.5, 0.5]]]))  # [E=2, B=1, K=2]
      >>> carto = cartography(history, jnp.asarray([0]))
      >>> print(carto.confidence, carto.variability, carto.correctness)
      [0.7] [0.2] [1.]
    """
    if logits_history.ndim != 3:
        raise ValueError(f"logits_history must be [E, B, K], got shape {logits_history.shape}")
    _check_logits_labels(logits_history[0], labels)
    p = jax.nn.softmax(logits_history, axis=-1)
    p_true = jnp.take_along_axis(p, labels[None, :, None], axis=-1)[..., 0]
    correct = jnp.argmax(logits_history, axis=-1) == labels[None]
    return Cartography(jnp.mean(p_true, 0), jnp.std(p_true, 0), jnp.mean(correct, 0))


class DynamicsState(NamedTuple):
    """Running statistics of logits over training for AUM and cartography, per example [B].

    Feed it the logits of the same examples at successive records (epochs); `aum()` and
    `cartography()` then equal `area_under_margin` and `cartography` of the stacked history.

    Examples:
      >>> import jax.numpy as jnp
      >>> history = jnp.log(jnp.asarray([[[0.9, 0.1]], [[0.5, 0.5]]]))
      >>> state = DynamicsState.create(1)
      >>> for logits in history:
      ...     state = state.update(logits, jnp.asarray([0]))
      >>> print(state.aum(), state.cartography().confidence)
      [1.0986] [0.7]
    """

    count: jnp.ndarray  # scalar, records seen
    margin_sum: jnp.ndarray  # sum_t M^(t)
    p_mean: jnp.ndarray  # running mean of p_t(y | x)
    p_m2: jnp.ndarray  # running sum of squared deviations of p_t(y | x) (Welford)
    correct_sum: jnp.ndarray  # number of records with argmax = y

    @classmethod
    def create(cls, num_examples: int) -> DynamicsState:
        zeros = jnp.zeros(num_examples, jnp.float32)
        return cls(jnp.zeros((), jnp.float32), zeros, zeros, zeros, zeros)

    def update(self, logits: jnp.ndarray, labels: jnp.ndarray) -> DynamicsState:
        """Add one record of logits [B, K]."""
        _check_logits_labels(logits, labels)
        p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]
        count, p_mean, p_m2 = _welford(self.count, self.p_mean, self.p_m2, p)
        margin_sum = self.margin_sum + margin(logits, labels)
        correct = self.correct_sum + (jnp.argmax(logits, axis=-1) == labels)
        return DynamicsState(count, margin_sum, p_mean, p_m2, correct)

    def aum(self) -> jnp.ndarray:
        """Area under the margin over the records so far: [B]."""
        return self.margin_sum / jnp.maximum(self.count, 1)

    def cartography(self) -> Cartography:
        """Confidence, variability, correctness over the records so far."""
        n = jnp.maximum(self.count, 1)
        return Cartography(self.p_mean, jnp.sqrt(self.p_m2 / n), self.correct_sum / n)
