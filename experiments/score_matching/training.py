"""Training in the score-matching study: optimiser, jitted train step, and the resumable loop.

`train` trains (or resumes) the network of a `Setup` with the loss of `config.loss`, writing Orbax
checkpoints and the training metrics; `make_optimizer` and `make_step_and_state` are shared with
the image study.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from experiments.score_matching.family import make_loss
from experiments.score_matching.setup import Setup
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    TrainState,
    batch_sharding,
    checkpoint_dir,
    make_mesh,
    make_train_step,
    put_replicated,
    replicated_sharding,
)
from scorejax.train.precision import precision_from_config


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam on a linear-warm-up cosine schedule, after clipping the global gradient norm."""
    t = config.train
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=t.num_steps,
        end_value=t.learning_rate * t.final_lr_fraction,
    )
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adam(schedule))


def make_step_and_state(
    config: ml_collections.ConfigDict,
    loss_fn: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]],
    init: Callable[[jax.Array], Any],
    mesh: Mesh,
    key: jax.Array,
) -> tuple[Callable[..., tuple[TrainState, dict]], TrainState]:
    """The training step of `loss_fn(params, x0, key)` and the initial state of `init(key)`.

    The step is `scorejax.train.make_train_step` with `make_optimizer(config)`, the EMA of
    `config.train`, `train.steps_per_call` updates per call and the dtype policy
    `config.precision`, data-parallel over `mesh`; the state is created by one compiled call
    (not many small eager ops) and replicated over `mesh`.
    """
    t = config.train
    tx = make_optimizer(config)
    step_fn = make_train_step(
        loss_fn,
        tx,
        mesh=mesh,
        ema_decay=t.ema_decay,
        ema_warmup=t.ema_warmup,
        steps_per_call=t.steps_per_call,
        precision=precision_from_config(config),
    )
    create = jax.jit(
        lambda k: TrainState.create(init(k), tx), out_shardings=replicated_sharding(mesh)
    )
    return step_fn, create(key)


def train(setup: Setup, config, workdir: str) -> TrainState:
    """Train (or resume) and return the final state; writes checkpoints and training metrics."""
    t = config.train
    k = t.steps_per_call
    mesh = make_mesh()
    root = jax.random.key(config.seed)
    k_init, k_train, k_data = (jax.random.fold_in(root, i) for i in range(3))
    loss_fn = make_loss(config, setup.sde, setup.model)
    step_fn, state = make_step_and_state(config, loss_fn, setup.init, mesh, k_init)

    # Data for the k updates starting at `step`: batch i comes from fold_in(k_data, step + i), so
    # it depends only on the step number and a resumed run sees the same data.
    @jax.jit
    def batches(step):
        keys = jax.vmap(lambda i: jax.random.fold_in(k_data, step + i))(jnp.arange(k))
        out = jax.vmap(lambda key: setup.data.sample(key, t.batch_size))(keys)
        return jax.lax.with_sharding_constraint(out, batch_sharding(mesh, batch_axis=1))

    with Checkpointer(
        checkpoint_dir(workdir), save_every=t.checkpoint_every, keep=t.keep_checkpoints
    ) as ckpt:
        state = ckpt.restore_or(state)
        start = int(state.step)
        key = put_replicated(k_train, mesh)
        with (
            MetricWriter(workdir, resume_step=start or None) as writer,
            Progress(t.num_steps, initial=start, desc=f"train {setup.data.name}") as bar,
        ):
            last_time, last_step = time.perf_counter(), start
            # Metrics summed on the device over the logging interval: no host sync per call.
            interval_sum, calls = None, 0
            for step in range(start + k, t.num_steps + 1, k):
                state, metrics = step_fn(state, batches(step - k), key)
                interval_sum = (
                    metrics
                    if interval_sum is None
                    else jax.tree.map(jnp.add, interval_sum, metrics)
                )
                calls += 1
                if step % t.log_every == 0:
                    means = {n: float(v) / calls for n, v in jax.device_get(interval_sum).items()}
                    now = time.perf_counter()
                    rate = (step - last_step) / (now - last_time)
                    last_time, last_step = now, step
                    writer.write(step, {**means, "steps_per_sec": rate})
                    bar.update(step, loss=means["loss"])
                    interval_sum, calls = None, 0
                else:
                    bar.update(step)
                ckpt.maybe_save(step, state)
        ckpt.save(t.num_steps, state)
    return state
