"""Training many runs of one setup at once: initialisation, minibatch order and SGD epochs.

The R runs of a task are stacked on a leading axis and trained in one jitted call per epoch
(`RunFns.epoch`), vmapped or, where vmapped convolutions would become grouped convolutions,
mapped with `lax.map` (`Setup.vmap_runs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from experiments.data_diet.setup import Setup, augment, eval_kwargs, normalize
from scorejax import importance as imp
from scorejax import training_dynamics as dynamics


def over_runs(setup: Setup, fn: Callable[[Any], Any], tree: Any) -> Any:
    """fn over the leading (run) axis: vmap, or lax.map where vmapped convolutions would become
    grouped convolutions (slow to compile and to run on XLA:CPU)."""
    return jax.vmap(fn)(tree) if setup.vmap_runs else jax.lax.map(fn, tree)


class RunFns(NamedTuple):
    """Jitted training functions of one setup, built once (`make_run_fns`) and passed to the
    tasks.

    `init(keys [R], x1 [1, ...])` is the stacked state of R runs (variables, optimiser,
    forgetting, data keys); `epoch(runs, members [R, M], x, y)` trains every run for
    `setup.steps_per_epoch` steps on its subset `members` and returns `(runs, mean loss)` (runs
    donated; recompiles per subset size).
    """

    init: Callable[[jax.Array, jax.Array], dict]
    epoch: Callable[..., tuple[dict, jax.Array]]


def make_run_fns(setup: Setup, tx: optax.GradientTransformation, n_train: int) -> RunFns:
    """The `RunFns` of one setup, optimiser and training-set size."""

    def one(key: jax.Array, x1: jax.Array) -> dict:
        k_init, k_data = jax.random.split(key)
        variables = dict(setup.model.init(k_init, x1, **eval_kwargs(setup)))
        return {
            "step": jnp.zeros((), jnp.int32),
            "variables": variables,
            "opt": tx.init(variables["params"]),
            "forget": dynamics.forgetting_init(n_train),
            "key": jax.random.key_data(k_data),
        }

    init = jax.jit(lambda keys, x1: over_runs(setup, lambda k: one(k, x1), keys))
    epoch = jax.jit(functools.partial(_train_epoch, setup, tx), donate_argnums=(0,))
    return RunFns(init, epoch)


def _epoch_order(setup: Setup, run: dict, members: jnp.ndarray) -> jnp.ndarray:
    """Example ids for the next `setup.steps_per_epoch` steps of one run: [steps, B].

    Minibatch k of subset-epoch e is `members[perm_e[kB:(k+1)B]]`, perm_e a permutation drawn
    from (run key, e); the last partial batch of a subset-epoch is dropped. Only the few
    subset-epochs this call reaches are permuted.
    """
    b, n = setup.batch_size, setup.steps_per_epoch
    m = members.shape[0]
    spe = m // b
    key = jax.random.split(jax.random.wrap_key_data(run["key"]))[0]
    first = run["step"] // spe
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), m)[: spe * b])(
        first + jnp.arange(n // spe + 2)
    )
    start = (run["step"] - first * spe) * b
    flat = jax.lax.dynamic_slice_in_dim(perms.reshape(-1), start, n * b)
    return members[flat].reshape(n, b)


def _train_step(setup: Setup, tx, run: dict, ids: jnp.ndarray, x_all, y_all):
    """One SGD step of one run on the training examples `ids` [B]."""
    aug_key = jax.random.split(jax.random.wrap_key_data(run["key"]))[1]
    xb, yb = x_all[ids], y_all[ids]
    if setup.mesh.size > 1:
        # Data parallelism: each device computes its share of the minibatch.
        xb = jax.lax.with_sharding_constraint(xb, NamedSharding(setup.mesh, PartitionSpec("data")))
    if setup.augment:
        xb = augment(jax.random.fold_in(aug_key, run["step"]), xb)
    xb = normalize(setup, xb)
    variables = run["variables"]

    def loss_fn(params):
        v = {**variables, "params": params}
        if setup.has_batch_norm:
            logits, updated = setup.model.apply(v, xb, train=True, mutable=["batch_stats"])
        else:
            logits, updated = setup.model.apply(v, xb), {}
        return jnp.mean(imp.cross_entropy(logits, yb)), (logits, updated)

    (loss, (logits, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"]
    )
    updates, opt = tx.update(grads, run["opt"], variables["params"])
    new_vars = {**variables, **updated, "params": optax.apply_updates(variables["params"], updates)}
    # Forgetting is counted on the pre-update training minibatch, as in data_diet.
    forget = dynamics.forgetting_update(run["forget"], ids, jnp.argmax(logits, -1) == yb)
    new = {**run, "step": run["step"] + 1, "variables": new_vars, "opt": opt, "forget": forget}
    return new, loss


def _train_epoch(setup: Setup, tx, runs: dict, members: jnp.ndarray, x_all, y_all):
    """`setup.steps_per_epoch` steps of every run; returns the runs and their mean loss.

    Args:
      runs: stacked state of R runs. members: [R, M] the training subset of each run.
    """
    step = functools.partial(_train_step, setup, tx)
    order = jax.vmap(functools.partial(_epoch_order, setup))(runs, members)  # [R, n, B]
    if setup.vmap_runs:

        def body(r, ids):
            r, loss = jax.vmap(step, in_axes=(0, 0, None, None))(r, ids, x_all, y_all)
            return r, jnp.mean(loss)

        runs, losses = jax.lax.scan(body, runs, jnp.swapaxes(order, 0, 1))
        return runs, jnp.mean(losses)

    # Convolutions of vmapped runs become grouped convolutions, slow on XLA:CPU; map instead.
    def one_run(args):
        r, ids = args
        r, losses = jax.lax.scan(lambda c, i: step(c, i, x_all, y_all), r, ids)
        return r, jnp.mean(losses)

    runs, losses = jax.lax.map(one_run, (runs, order))
    return runs, jnp.mean(losses)
