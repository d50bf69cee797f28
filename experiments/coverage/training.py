"""Training of the coverage study's students: one per (seed, N'), all stacked and vmapped.

Parameter leaves are (S seeds, M values of N', ...); the students of a seed share their
initialisation across N'. Each minimises its mean DCO loss (N' = 1: cross-entropy) in one jitted
step; `train` runs the loop, logs `make_evaluate`'s metrics every `train.eval_every` steps, keeps
per seed and test N the CE student with the best validation pass@N (early stopping), and
checkpoints both with Orbax so that an interrupted run resumes exactly.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.coverage.evaluation import make_evaluate
from experiments.coverage.tasks import Batch, Task
from scorejax import dco
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    TrainState,
    checkpoint_dir,
    make_mesh,
    make_train_step,
    put_replicated,
    replicated_sharding,
)
from scorejax.train.precision import precision_from_config


def _init_students(task: Task, config) -> Any:
    """Students of one seed share their initialisation across N' (paired comparison)."""
    root = jax.random.fold_in(jax.random.key(config.seed), 10_000)
    m = len(config.train_ns)

    def per_seed(i):
        p = task.init(jax.random.fold_in(root, i))
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (m, *x.shape)), p)

    return jax.vmap(per_seed)(jnp.arange(config.num_seeds))


def _optimizer(config) -> optax.GradientTransformation:
    t = config.train
    if t.optimizer == "sgd":
        return optax.sgd(t.learning_rate)
    return optax.adam(t.learning_rate)


def _make_loss_fn(task: Task, train_ns: jax.Array):
    """Sum over (seed, N') of each student's mean DCO loss: each student gets its own gradient.

    The batch has the problem axis first, then the seed axis (so it shards over devices).
    """

    def loss_fn(params, batch, key):
        del key
        batch = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch)

        def per_seed(p_m, b):
            def per_student(p, n):
                return dco.dco_loss(task.seq_logp(p, b, 1.0), n=n)[0]

            return jax.vmap(per_student)(p_m, train_ns)

        losses = jax.vmap(per_seed)(params, batch)
        return jnp.sum(losses), {"ce_student_loss": jnp.mean(losses[:, 0])}

    return loss_fn


@jax.jit
def _update_best(best: dict, params: Any, val_pass: jax.Array, step: jax.Array) -> dict:
    """Early stopping of the CE students (index 0 of N'): per seed and test N, keep the
    parameters with the highest validation pass@N seen so far."""
    ce_val = val_pass[:, 0, :]  # (S, len(test_ns))
    better = ce_val > best["val"]
    ce_params = jax.tree.map(lambda x: x[:, 0], params)

    def pick(old, new):
        new = jnp.broadcast_to(new[:, None], old.shape)
        return jnp.where(better.reshape(better.shape + (1,) * (old.ndim - 2)), new, old)

    return {
        "val": jnp.where(better, ce_val, best["val"]),
        "step": jnp.where(better, step, best["step"]),
        "params": jax.tree.map(pick, best["params"], ce_params),
    }


def _initial_best(params: Any, config) -> dict:
    s, k = config.num_seeds, len(config.test_ns)
    return {
        "val": jnp.full((s, k), -1.0),
        "step": jnp.zeros((s, k), jnp.int32),
        "params": jax.tree.map(lambda x: jnp.broadcast_to(x[:, :1], (s, k, *x.shape[2:])), params),
    }


def _scalar_summary(metrics: dict[str, np.ndarray], config) -> dict[str, float]:
    """Seed means of the headline metrics, for TensorBoard and the progress bar."""
    out = {}
    for j, n_train in enumerate(config.train_ns):
        tag = f"N'={n_train}"
        for i, n in enumerate(config.test_ns):
            out[f"test_pass@{n}/{tag}"] = float(np.mean(metrics["test_pass"][:, j, i]))
        out[f"train_pass1/{tag}"] = float(np.mean(metrics["train_pass1"][:, j]))
        out[f"test_confidence/{tag}"] = float(np.mean(metrics["test_confidence"][:, j]))
        out[f"train_live_fraction/{tag}"] = float(np.mean(metrics["train_live_fraction"][:, j]))
    return out


def train(task: Task, config, workdir: str, data: dict[str, Batch]) -> tuple[TrainState, dict]:
    """Train (or resume) all students; returns the final state and the early-stopping record."""
    t = config.train
    k = t.eval_every
    mesh = make_mesh()
    tx = _optimizer(config)
    train_ns = jnp.asarray(config.train_ns, jnp.float32)
    step_fn = make_train_step(
        _make_loss_fn(task, train_ns),
        tx,
        mesh=mesh,
        ema_decay=0.0,
        steps_per_call=k,
        precision=precision_from_config(config),
    )
    evaluate = make_evaluate(task, config)
    create = jax.jit(
        lambda: TrainState.create(_init_students(task, config), tx),
        out_shardings=replicated_sharding(mesh),
    )
    state = create()
    best = _initial_best(state.params, config)
    train_data = data["train"]
    n_train = config.task.num_train
    k_data = jax.random.fold_in(jax.random.key(config.seed), 20_000)

    # The k batches of the updates starting at `step`, problem axis first, then the seed axis.
    # Minibatch i is drawn with fold_in(k_data, step + i), so a resumed run sees the same data.
    @jax.jit
    def batches(step):
        if t.batch_size == 0:
            full = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), train_data)
            return jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), full)

        def one(i):
            idx = jax.random.randint(
                jax.random.fold_in(k_data, step + i), (config.num_seeds, t.batch_size), 0, n_train
            )
            picked = jax.tree.map(lambda x: jax.vmap(lambda a, j: a[j])(x, idx), train_data)
            return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), picked)

        return jax.vmap(one)(jnp.arange(k))

    def log_eval(writer, bar, step, state, best):
        metrics = jax.device_get(evaluate(state.params, data))
        best = _update_best(best, state.params, jnp.asarray(metrics["val_pass"]), step)
        summary = _scalar_summary(metrics, config)
        writer.write(step, {**summary, **{f"arrays/{k}": v for k, v in metrics.items()}})
        headline = f"test_pass@{max(config.test_ns)}/N'=1"
        bar.update(step, ce_pass=summary[headline])
        return best

    with Checkpointer(
        checkpoint_dir(workdir), save_every=t.checkpoint_every, keep=t.keep_checkpoints
    ) as ckpt:
        restored = ckpt.restore_or({"state": state, "best": best})
        state, best = restored["state"], restored["best"]
        start = int(state.step)
        key = put_replicated(jax.random.key(0), mesh)
        with (
            MetricWriter(workdir, resume_step=start or None) as writer,
            Progress(t.num_steps, initial=start, desc=f"coverage {task.name}") as bar,
        ):
            if start == 0:
                best = log_eval(writer, bar, 0, state, best)
            last_time, last_step = time.perf_counter(), start
            for step in range(start + k, t.num_steps + 1, k):
                state, train_metrics = step_fn(state, batches(step - k), key)
                best = log_eval(writer, bar, step, state, best)
                now = time.perf_counter()
                writer.write(
                    step,
                    {
                        "loss": float(train_metrics["loss"]),
                        "steps_per_sec": (step - last_step) / (now - last_time),
                    },
                )
                last_time, last_step = now, step
                if step % t.checkpoint_every == 0:
                    ckpt.save(step, {"state": state, "best": best})
        ckpt.save(t.num_steps, {"state": state, "best": best})
    return state, best
