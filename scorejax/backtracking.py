"""DisBack (Zhang et al. 2024): the degradation path and the backtracking schedule, pure maths.

DisBack wraps score distillation (`scorejax.distill`) in two stages:

1. *Degradation recording*: a copy of the teacher is fine-tuned with the teacher's own DSM loss
   on samples of the frozen initial generator `G_0` (`stage1_update`); checkpoints along the way
   are the path's nodes, `0` (the teacher) .. `N` (fitted to `G_0`). The nodes are chosen evenly
   spaced in the score distance to the teacher on `G_0`'s diffused samples
   (`scorejax.distill.score_distance`, `select_nodes`); `param_fingerprint` and `param_digest`
   tell the path's architecture and teacher apart. Storage lives in `scorejax.train.degradation`.
2. *Backtracking*: the fake score starts at node `N` and the target walks `N-1, N-2, ..., 0`
   while the generator trains, so the generator always chases a target close to itself. The walk
   is driven by a `BacktrackSchedule` (fixed interval, the paper's rule, or adaptive: move on once
   the generator has closed the recorded gap between the nodes), whose state (`ScheduleState`) is
   a pytree meant to live in the checkpointed train state. Backtracking only changes the target's
   parameters (`select_node`), so it wraps every generator weighting alike.

Conventions as in `scorejax.distill`: a score model is any `score_fn(params, x, t) -> score` with
`x: [B, ...]`, `t: [B]`; configuration is keyword-only. Nothing here touches files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from scorejax.distill import fake_score_loss
from scorejax.sde import SDE

Array = jax.Array
Params = Any
ScoreFn = Callable[[Params, Array, Array], Array]

__all__ = [
    "stage1_update",
    "select_nodes",
    "param_fingerprint",
    "param_digest",
    "select_node",
    "BacktrackSchedule",
    "ScheduleState",
    "schedule_init",
    "schedule_update",
]


# ----------------------------------------------------------------------------------------------
# Stage 1: the degradation path (the maths; storage is in scorejax.train.degradation).


def stage1_update(
    score_fn: ScoreFn,
    params: Params,
    opt_state: optax.OptState,
    x0: Array,
    key: Array,
    *,
    tx: optax.GradientTransformation,
    sde: SDE,
    weighting: str = "sigma2",
    t_min: float = 1e-5,
    loss_fn: Callable[[Params, Array, Array], tuple[Array, Any]] | None = None,
) -> tuple[Params, optax.OptState, Array]:
    """One DisBack stage-1 update: the teacher's own loss on (frozen) generator samples `x0`.

    `params <- params - tx(grad_params L(params; x0))` (DisBack eq. 7: the teacher's own
    objective, so the copy drifts from the teacher's score toward `G_0`'s). `L` is the sigma2- or
    likelihood-weighted DSM loss of `scorejax.score_matching.dsm_loss` of `score_fn` on `sde`,
    or, for a teacher trained with another loss of the family (the EDM loss, the flow-matching
    loss), that loss: `loss_fn(params, x0, key) -> (loss, aux)`.

    Args:
      score_fn: the score model; `params` its parameters (the copy being degraded).
      opt_state: `tx`'s state for `params`.
      x0: samples of the frozen initial generator `[B, ...]` (gradients are stopped).
      key: PRNG key of the loss's noise.
      tx: the optimiser (the caller jits this function; pass an equal `tx` to reuse it).
      weighting, t_min: the DSM loss's settings (unused with `loss_fn`).
      loss_fn: the teacher's own loss, in place of the DSM loss; `None` for the DSM loss.

    Returns:
      `(params, opt_state, loss)`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from scorejax.score_sdes import VPSDE
      >>> tx = optax.sgd(0.1)
      >>> score = lambda p, x, t: p * x
      >>> p, state, loss = stage1_update(score, -1.0, tx.init(-1.0), jnp.ones((4, 2)),
      ...                                jax.random.key(0), tx=tx, sde=VPSDE())
      >>> bool(p != -1.0), loss.shape
      (True, ())
    """
    x0 = jax.lax.stop_gradient(x0)
    if loss_fn is None:

        def loss_fn(p, x, k):
            return fake_score_loss(score_fn, p, x, k, sde=sde, weighting=weighting, t_min=t_min)

    (loss, _), grads = jax.value_and_grad(lambda p: loss_fn(p, x0, key), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def select_nodes(distances: Sequence[float], *, num_nodes: int) -> list[int]:
    """Indices of `num_nodes` candidates evenly spaced in their distance to the teacher.

    `distances[i]` is `D_i = scorejax.distill.score_distance(candidate i, teacher)` on the
    initial generator's samples for stage-1 checkpoints in training order (`distances[0]` usually
    the teacher's own, 0).
    Node `k = 1..N` is the first candidate after node `k-1` whose distance reaches
    `D_0 + (k / N) (D_last - D_0)`; node `N` is the last candidate. So the recorded path
    moves by about `(D_last - D_0) / N` per node wherever the copy actually moved, whatever the
    learning rate and however uneven the motion in steps.

    Args:
      distances: `[C]` distances of the candidates, `C > num_nodes`.
      num_nodes: `N >= 1`.

    Returns:
      `N + 1` strictly increasing candidate indices, starting at 0 (the teacher) and ending at
      `C - 1`.

    Raises:
      ValueError: too few candidates, or distances that never grow (the copy did not move).

    Examples:
      >>> select_nodes([0.0, 0.5, 1.0, 1.2, 1.9, 2.0, 3.0, 3.1, 4.0], num_nodes=4)
      [0, 2, 5, 6, 8]
    """
    d = np.asarray(distances, np.float64)
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if d.ndim != 1 or d.size <= num_nodes:
        raise ValueError(
            f"need more than num_nodes={num_nodes} candidates to choose from, got {d.size}"
        )
    if not np.all(np.isfinite(d)):
        raise ValueError(f"non-finite candidate distances: {d.tolist()}")
    total = d[-1] - d[0]
    if not total > 0:
        raise ValueError(
            "the stage-1 copy never moved away from the teacher (distance "
            f"{d[0]:.3g} -> {d[-1]:.3g}); raise the learning rate or the number of steps"
        )
    nodes = [0]
    for k in range(1, num_nodes):
        level = d[0] + k / num_nodes * total
        # Leave at least one candidate for every later node.
        last_allowed = d.size - 1 - (num_nodes - k)
        i = nodes[-1] + 1
        while i < last_allowed and d[i] < level:
            i += 1
        nodes.append(i)
    nodes.append(d.size - 1)
    return nodes


def param_fingerprint(params: Params) -> list[list[Any]]:
    """The architecture signature of a parameter pytree: `[key path, shape, dtype]` per leaf.

    Examples:
      >>> param_fingerprint({"w": jnp.zeros((2, 3))})
      [["['w']", [2, 3], 'float32']]
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return [
        [jax.tree_util.keystr(path), list(np.shape(leaf)), str(_dtype(leaf))]
        for path, leaf in leaves
    ]


def _dtype(leaf: Any) -> np.dtype:
    # Arrays and `jax.ShapeDtypeStruct`s (`jax.eval_shape` outputs) carry a dtype; scalars do not.
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype


def param_digest(params: Params) -> str:
    """SHA-256 of a parameter pytree's values and structure: tells two teachers apart.

    Examples:
      >>> a, b = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
      >>> same, other = param_digest({"w": jnp.zeros(2)}), param_digest(b)
      >>> param_digest(a) == same, param_digest(a) == other
      (True, False)
    """
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        arr = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{arr.shape}{arr.dtype}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def select_node(stacked: Params, node: Array) -> Params:
    """Node `node` (a traced int scalar is fine) of a pytree of nodes stacked on axis 0.

    The backtracking target of any weighting: a jitted step holds every node `[N + 1, ...]`
    (`scorejax.train.degradation.DegradationPath.stacked`) and switches targets without leaving
    the device.

    Examples:
      >>> stacked = {"w": jnp.arange(6.0).reshape(3, 2)}  # three nodes of a 2-vector
      >>> print(select_node(stacked, jnp.asarray(1))["w"])
      [2. 3.]
    """
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, node, keepdims=False), stacked)


# ----------------------------------------------------------------------------------------------
# Stage 2: the backtracking schedule.

_SCHEDULE_KINDS = ("fixed", "adaptive")


@dataclasses.dataclass(frozen=True)
class BacktrackSchedule:
    """When the distillation target moves one node toward the teacher.

    Kinds:
      * `"fixed"` (the paper's rule): after `interval` generator updates on a node.
      * `"adaptive"`: when the generator has *caught up* with the current target, on the absolute
        scale the path was recorded on. While the target is node `j`, the generator (and the
        fake score fitted to it) start near node `j + 1`, a recorded distance
        `Delta_j = E sigma_t^2 ||s_{j+1} - s_j||^2` away (on `G_0`'s diffused samples,
        `DegradationPath.segment_gaps`). The score gap the generator update computes,
        `G = E sigma_t^2 ||s_fake - s_target||^2` on the generator's diffused samples
        (`scorejax.distill.DistillAux.score_gap`), is averaged with an EMA (decay `ema_decay`,
        restarted on each node); the target moves on once `G_ema <= ratio * Delta_j` after at
        least `min_interval` updates, or after `interval` updates whatever happens (a target the
        generator cannot reach must not stall the walk). Once the target is the teacher it stays
        there.

    Frozen and hashable (a static argument of the jitted step).

    Examples:
      >>> schedule = BacktrackSchedule("fixed", interval=2)
      >>> state = schedule_init(3)
      >>> for _ in range(2):
      ...     state, switched, _ = schedule_update(state, 0.0, schedule=schedule)
      >>> int(state.node), bool(switched)
      (1, True)
    """

    kind: str = "fixed"
    interval: int = 1000
    min_interval: int = 50
    ratio: float = 0.5
    ema_decay: float = 0.9

    def __post_init__(self):
        if self.kind not in _SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.kind!r}; expected one of {_SCHEDULE_KINDS}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if self.min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {self.min_interval}")
        if not self.ratio > 0.0:
            raise ValueError(f"ratio must be > 0, got {self.ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


class ScheduleState(struct.PyTreeNode):
    """Where the backtracking walk is; part of the checkpointed train state.

    Attributes:
      node: int32, index of the current target in the path (counts down to 0, the teacher).
      steps_on_node: int32, generator updates made against the current target.
      gap_ema: float32, moving average of the score gap on the current node (adaptive rule).
      num_switches: int32, switches made so far.

    Examples:
      >>> state = schedule_init(4)
      >>> int(state.node), int(state.num_switches)
      (3, 0)
    """

    node: Array
    steps_on_node: Array
    gap_ema: Array
    num_switches: Array


def schedule_init(num_nodes: int) -> ScheduleState:
    """The walk's start on a path with `num_nodes` recorded nodes: target `max(N - 1, 0)`.

    (The fake score starts at node `N`.) `num_nodes = 0` gives plain score distillation: the
    target is the teacher from the start and never switches.

    Examples:
      >>> int(schedule_init(5).node), int(schedule_init(0).node)
      (4, 0)
    """
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    return ScheduleState(
        node=jnp.asarray(max(num_nodes - 1, 0), jnp.int32),
        steps_on_node=jnp.zeros((), jnp.int32),
        gap_ema=jnp.zeros((), jnp.float32),
        num_switches=jnp.zeros((), jnp.int32),
    )


def schedule_update(
    state: ScheduleState,
    gap: Array,
    *,
    schedule: BacktrackSchedule,
    segment_gaps: Array | None = None,
) -> tuple[ScheduleState, Array, Array]:
    """Advance the walk by one generator update whose mean score gap was `gap` (a scalar).

    Args:
      state: the walk so far.
      gap: this update's `E sigma_t^2 ||s_fake - s_target||^2` (a scalar).
      schedule: the rule.
      segment_gaps: `[N]` recorded distances `Delta_j` between nodes `j + 1` and `j`
        (`DegradationPath.segment_gaps`); required by `"adaptive"`, ignored by `"fixed"`.

    Returns:
      `(new_state, switched, gap_ema)`: `switched` (bool scalar) says whether the update just
      made was the last one on the old target (the next update uses node `new_state.node`);
      `gap_ema` is the averaged gap the rule saw at this update. Never moves past node 0; pure
      and jit-able.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = BacktrackSchedule("adaptive", interval=10, min_interval=1, ratio=0.5, ema_decay=0.0)
      >>> st = schedule_init(2)
      >>> gaps = jnp.array([1.0, 2.0])
      >>> st, switched, _ = schedule_update(st, 0.4, schedule=s, segment_gaps=gaps)
      >>> bool(switched), int(st.node)
      (True, 0)
    """
    steps = state.steps_on_node + 1
    gap = jnp.asarray(gap, jnp.float32)
    ema = jnp.where(
        steps == 1, gap, schedule.ema_decay * state.gap_ema + (1 - schedule.ema_decay) * gap
    )
    if schedule.kind == "fixed":
        due = steps >= schedule.interval
    else:
        if segment_gaps is None:
            raise ValueError("the adaptive schedule needs the path's segment_gaps")
        threshold = schedule.ratio * jnp.asarray(segment_gaps, jnp.float32)[state.node]
        caught_up = (steps >= schedule.min_interval) & (ema <= threshold)
        due = caught_up | (steps >= schedule.interval)
    switched = due & (state.node > 0)
    new = ScheduleState(
        node=jnp.where(switched, state.node - 1, state.node),
        steps_on_node=jnp.where(switched, 0, steps),
        gap_ema=jnp.where(switched, 0.0, ema),
        num_switches=state.num_switches + switched.astype(jnp.int32),
    )
    return new, switched, ema
