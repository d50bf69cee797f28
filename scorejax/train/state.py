"""The training state: one pytree holding everything a resumed run needs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Parameters, their exponential moving average, optimiser state and step counter.

    Every field is an array pytree, so the whole state can be jitted, donated, sharded and
    checkpointed as one object. The optimiser's update rule (an `optax.GradientTransformation`) is
    code, not data, and is passed to `scorejax.train.make_train_step` instead of living here.

    Attributes:
      step: int32 scalar, the number of optimiser updates applied so far.
      params: model parameters.
      ema_params: exponential moving average of `params` (the weights used for sampling).
      opt_state: the optimiser state of `tx.init(params)`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> state = TrainState.create({"w": jnp.ones(3)}, optax.adam(1e-3))
      >>> int(state.step), state.ema_params["w"].tolist()
      (0, [1.0, 1.0, 1.0])
      >>> len(jax.tree.leaves(state))  # step, params, EMA, Adam's count and two moments
      6
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> TrainState:
        """A fresh state at step 0 with `ema_params` equal to `params`."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            # A separate copy: the EMA buffers must not alias the params when the state is donated.
            ema_params=jax.tree.map(jnp.copy, params),
            opt_state=tx.init(params),
        )
