"""The jitted, sharded, donated training step shared by every study."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from scorejax.train.mesh import batch_sharding, replicated_sharding
from scorejax.train.precision import Precision
from scorejax.train.state import TrainState

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]
StepFn = Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def _scalar_aux(aux: Any) -> dict[str, jax.Array]:
    """The scalar entries of a dict-valued `aux`, reported as metrics next to the loss."""
    if not isinstance(aux, dict):
        return {}
    return {
        str(k): jnp.asarray(v, jnp.float32)
        for k, v in aux.items()
        if isinstance(v, (jax.Array, float, int)) and jnp.ndim(v) == 0
    }


def _split_microbatches(batch: Any, microbatches: int) -> Any:
    """Leaves `[B, ...]` -> `[m, B / m, ...]`, microbatch i holding examples i, i + m, ...

    Strided rather than contiguous chunks, so that with the batch split over devices every
    microbatch stays spread over all of them.
    """

    def split(x):
        if x.shape[0] % microbatches:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by microbatches={microbatches}"
            )
        x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def loss_and_grad(
    loss_fn: LossFn, params: Any, batch: Any, key: jax.Array, microbatches: int = 1
) -> tuple[tuple[jax.Array, Any], Any]:
    """`((loss, aux), grad)` of `loss_fn(params, batch, key)`, optionally in microbatches.

    With `microbatches = m > 1` the batch is cut into m equal parts (`_split_microbatches`),
    evaluated one after another with keys `fold_in(key, i)`, and the losses, gradients and aux
    leaves are averaged: for a loss that is a batch mean this is the full-batch gradient up to
    the noise draws. It bounds activation memory to one part, and on CPUs keeps a large batch's
    activations in cache.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> loss_fn = lambda p, b, key: (jnp.mean((b["x"] @ p - b["y"]) ** 2), {})  # least squares
      >>> batch = {"x": jnp.eye(4, 2), "y": jnp.ones(4)}
      >>> (loss, _), grad = loss_and_grad(loss_fn, jnp.zeros(2), batch, jax.random.key(0))
      >>> _, parts = loss_and_grad(loss_fn, jnp.zeros(2), batch, jax.random.key(0), microbatches=2)
      >>> float(loss), grad.tolist(), bool(jnp.allclose(parts, grad))  # 2 parts: the same grad
      (1.0, [-0.5, -0.5], True)
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
        return grad_fn(params, batch, key)

    def body(acc, inputs):
        i, part = inputs
        (loss, aux), grads = grad_fn(params, part, jax.random.fold_in(key, i))
        acc = jax.tree.map(jnp.add, acc, (loss, grads))
        return acc, aux

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    parts = _split_microbatches(batch, microbatches)
    (loss, grads), aux = jax.lax.scan(body, zeros, (jnp.arange(microbatches), parts))
    scale = 1.0 / microbatches
    aux = jax.tree.map(lambda a: jnp.mean(a, axis=0), aux)
    return (loss * scale, aux), jax.tree.map(lambda g: g * scale, grads)


def _output_cast_loss(loss_fn: LossFn, precision: Precision) -> LossFn:
    """`loss_fn` with its loss in `precision.output_dtype` (the dtype the gradient starts in)."""

    def cast(params: Any, batch: Any, key: jax.Array) -> tuple[jax.Array, Any]:
        loss, aux = loss_fn(params, batch, key)
        return precision.cast_to_output(loss), aux

    return cast


def train_step(
    state: TrainState,
    batch: Any,
    key: jax.Array,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema_decay: float,
    ema_warmup: bool = False,
    microbatches: int = 1,
    precision: Precision | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser update and EMA update; pure, so it runs eagerly, under jit and sharded.

    The loss is evaluated with key `fold_in(key, state.step)`, so a run that passes the same `key`
    every step draws fresh noise per step and a resumed run draws exactly the noise of an
    uninterrupted one. The EMA follows ema <- d * ema + (1 - d) * params_new, with
    d = ema_decay, or with `ema_warmup` d = min(ema_decay, (1 + n) / (10 + n)) at update n
    (counted from 0), so that the average forgets the random initialisation within a short run.

    Args:
      state: the current `TrainState`.
      batch: any pytree accepted by `loss_fn`.
      key: the run's training key (not advanced by the caller).
      loss_fn: `loss_fn(params, batch, key) -> (scalar loss, aux)`.
      tx: the optax optimiser that built `state.opt_state`.
      ema_decay: d in [0, 1); 0 makes `ema_params` equal `params`.
      ema_warmup: ramp the decay up from 0.1 as above.
      microbatches: evaluate the gradient in this many sequential parts (`loss_and_grad`).
      precision: a dtype policy (`scorejax.train.precision`). The model computes in its
        `compute_dtype` (built with `precision.module_kwargs()`); the step differentiates the
        loss cast to `output_dtype`, hands the optimiser gradients in `param_dtype`, and checks
        that the parameters are stored in `param_dtype`. None (default): no casts or checks.

    Returns:
      The new state and metrics `{"loss", "grad_norm", **scalar entries of aux}` (float32
      scalars).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> loss_fn = lambda p, b, key: (jnp.mean((b["x"] @ p - b["y"]) ** 2), {})  # least squares
      >>> batch = {"x": jnp.eye(4, 2), "y": jnp.ones(4)}
      >>> tx = optax.sgd(0.5)
      >>> state = TrainState.create(jnp.zeros(2), tx)
      >>> state, metrics = train_step(state, batch, jax.random.key(0), loss_fn=loss_fn, tx=tx,
      ...                             ema_decay=0.9)
      >>> int(state.step), state.params.tolist()  # params - 0.5 grad, grad = (-0.5, -0.5)
      (1, [0.25, 0.25])
      >>> print(state.ema_params, round(float(metrics["grad_norm"]), 4))  # EMA = 0.1 params
      [0.025 0.025] 0.7071
    """
    step_key = jax.random.fold_in(key, state.step)
    if precision is not None:
        precision.check_params(state.params)
        loss_fn = _output_cast_loss(loss_fn, precision)
    (loss, aux), grads = loss_and_grad(loss_fn, state.params, batch, step_key, microbatches)
    if precision is not None:
        grads = precision.cast_to_param(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = jnp.asarray(ema_decay, jnp.float32)
    if ema_warmup:
        n = state.step.astype(jnp.float32)
        decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    ema_params = jax.tree.map(
        lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
        state.ema_params,
        params,
    )
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
    )
    metrics = {
        "loss": jnp.asarray(loss, jnp.float32),
        "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
        **_scalar_aux(aux),
    }
    return new_state, metrics


def train_steps(
    state: TrainState,
    batches: Any,
    key: jax.Array,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema_decay: float,
    ema_warmup: bool = False,
    microbatches: int = 1,
    precision: Precision | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`k` consecutive `train_step`s over a stack of batches (every leaf has leading axis `k`).

    Running several updates per dispatch with `lax.scan` amortises the host's dispatch cost,
    which dominates for small models. Returns the final state and the metrics averaged over the
    `k` steps.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> loss_fn = lambda p, b, key: (jnp.mean((b["x"] @ p - b["y"]) ** 2), {})  # least squares
      >>> batch = {"x": jnp.eye(4, 2), "y": jnp.ones(4)}
      >>> tx = optax.sgd(0.5)
      >>> batches = jax.tree.map(lambda a: jnp.stack([a, a, a]), batch)  # k = 3 steps
      >>> state, metrics = train_steps(TrainState.create(jnp.zeros(2), tx), batches,
      ...                              jax.random.key(0), loss_fn=loss_fn, tx=tx, ema_decay=0.9)
      >>> int(state.step), state.params.tolist(), metrics["loss"].shape
      (3, [0.578125, 0.578125], ())
    """

    def body(carry: TrainState, batch: Any):
        return train_step(
            carry,
            batch,
            key,
            loss_fn=loss_fn,
            tx=tx,
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
            microbatches=microbatches,
            precision=precision,
        )

    state, metrics = jax.lax.scan(body, state, batches)
    return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    ema_decay: float,
    ema_warmup: bool = False,
    steps_per_call: int = 1,
    microbatches: int = 1,
    state_sharding: Any = None,
    precision: Precision | None = None,
) -> StepFn:
    """Build the jitted `step(state, batch, key) -> (state, metrics)` for data parallelism.

    The state (donated: its buffers are reused for the output) and the key are replicated over
    `mesh`; the batch is split over the mesh's data axis, so gradients are averaged across
    devices by the compiler. The result is the same on 1 and on N devices.

    Args:
      loss_fn: `loss_fn(params, batch, key) -> (scalar loss, aux)`; the loss must be a mean over
        the batch for the data-parallel result to equal the single-device one.
      tx: the optax optimiser.
      mesh: a mesh from `make_mesh`; its first axis splits the batch.
      ema_decay: EMA decay d in [0, 1).
      ema_warmup: ramp the EMA decay up over the first updates (see `train_step`).
      steps_per_call: k >= 1. With k > 1 each call runs k updates in one `lax.scan`; every batch
        leaf then has shape `(k, batch, ...)` (split along axis 1) and the metrics are means over
        the k steps.
      microbatches: m >= 1; each update's gradient is accumulated over m sequential parts of the
        batch (`loss_and_grad`); the batch size must be divisible by m (times the devices).
      state_sharding: shardings of the state (a pytree matching it, e.g. from
        `scorejax.train.partitioning.fsdp_shardings`); default: replicated.
      precision: a dtype policy (see `train_step`); None keeps every dtype as the loss gives it.

    Returns:
      The jitted step. Place the state with `put_replicated(state, mesh)` (or, with
      `state_sharding`, `partitioning.shard_state`) and the batch with
      `shard_batch(batch, mesh, batch_axis=0 if k == 1 else 1)`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> loss_fn = lambda p, b, key: (jnp.mean((b["x"] @ p - b["y"]) ** 2), {})  # least squares
      >>> batch = {"x": jnp.eye(4, 2), "y": jnp.ones(4)}
      >>> from scorejax.train.mesh import make_mesh, put_replicated, shard_batch
      >>> tx, mesh = optax.sgd(0.5), make_mesh()  # all devices on the `data` axis
      >>> step = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.9)
      >>> state = put_replicated(TrainState.create(jnp.zeros(2), tx), mesh)
      >>> state, metrics = step(state, shard_batch(batch, mesh), jax.random.key(0))
      >>> int(state.step), state.params.tolist(), float(metrics["loss"])  # as `train_step`
      (1, [0.25, 0.25], 1.0)
    """
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    inner = train_step if steps_per_call == 1 else train_steps
    fn = functools.partial(
        inner,
        loss_fn=loss_fn,
        tx=tx,
        ema_decay=ema_decay,
        ema_warmup=ema_warmup,
        microbatches=microbatches,
        precision=precision,
    )
    replicated = replicated_sharding(mesh)
    state_sharding = replicated if state_sharding is None else state_sharding
    batched = batch_sharding(mesh, batch_axis=0 if steps_per_call == 1 else 1)
    return jax.jit(
        fn,
        in_shardings=(state_sharding, batched, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
