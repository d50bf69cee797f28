"""Per-example scores recorded over training: forgetting, area under the margin, cartography.

Example forgetting (Toneva et al. 2019; data_diet `forgetting.py`), area under the margin (Pleiss
et al. 2020) and dataset cartography (Swayamdipta et al. 2020). Each comes in a batch form over a
stacked history and a running form (`ForgettingState`, `DynamicsState`) that is updated in-graph
during training and gives the same scores without storing the history. Variance of Gradients is
in `scorejax.vog`. Conventions as in `scorejax.importance`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk
from scorejax.importance import _check_logits_labels, margin

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
        count, p_mean, p_m2 = chk.welford_update(self.count, self.p_mean, self.p_m2, p)
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
