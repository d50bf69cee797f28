"""Evaluation of stacked runs: test accuracy and the per-example scores of a score-run group.

A score-run group records EL2N and GraNd at the listed epochs, the training dynamics (AUM,
cartography) and VoG's input gradients at every epoch end (`record_epoch`), and averages every
score over its runs at the end (`finish_scores`), in `setup.score_names` order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.data_diet.loop import over_runs
from experiments.data_diet.setup import Setup, apply_eval, eval_kwargs, normalize
from scorejax import importance as imp
from scorejax import training_dynamics as dynamics
from scorejax.ghost_norm import flax_grand
from scorejax.train import data_parallel, map_in_batches
from scorejax.vog import VoGState


class EvalFns(NamedTuple):
    """Jitted per-example functions `fn(runs_vars, xb, yb) -> [b, R, ...]` of R stacked models,
    sharded over the `data` axis; built once per setup (`make_eval_fns`) and passed to the tasks."""

    logits: Callable[..., jax.Array]
    grand: Callable[..., jax.Array]
    input_grads: Callable[..., jax.Array]  # channel-averaged


def make_eval_fns(setup: Setup) -> EvalFns:
    """The `EvalFns` of one setup: logits, GraNd and channel-averaged input gradients."""

    def logits(vs, xb, yb):
        del yb
        return jnp.moveaxis(over_runs(setup, lambda v: apply_eval(setup, v, xb), vs), 0, 1)

    def grand(vs, xb, yb):
        def one(v):
            state = {k: a for k, a in v.items() if k != "params"}
            return flax_grand(
                setup.model,
                v["params"],
                normalize(setup, xb),
                yb,
                method=setup.grand_method,
                chunk_size=setup.grand_chunk,
                model_state=state,
                apply_kwargs=eval_kwargs(setup),
            )

        return jnp.moveaxis(over_runs(setup, one, vs), 0, 1)

    def input_grads(vs, xb, yb):
        def one(v):
            g = imp.logit_input_grads(lambda p, x: apply_eval(setup, p, x), v, xb, yb)
            return jnp.mean(g, axis=-1)  # colour channels averaged, as the VoG code does

        return jnp.moveaxis(over_runs(setup, one, vs), 0, 1)

    return EvalFns(*(data_parallel(f, setup.mesh) for f in (logits, grand, input_grads)))


def over_examples(
    setup: Setup, parallel: Callable, runs_vars: Any, x: jnp.ndarray, y: jnp.ndarray, batch: int
) -> np.ndarray:
    """Apply a `data_parallel` fn(runs_vars, xb, yb) -> [b, R, ...] to all examples.

    Examples go `batch` at a time (`scorejax.train.map_in_batches`, batches a multiple of the
    device count); returns [R, N, ...].
    """
    devices = setup.mesh.shape["data"]
    out = map_in_batches(parallel, runs_vars, x, y, batch_size=batch, multiple=devices)
    return np.moveaxis(out, 0, 1)


def accuracy_on_test(
    setup: Setup, evals: EvalFns, runs_vars: Any, data: dict, batch: int
) -> np.ndarray:
    """[R] accuracy of each stacked run on the (clean) test split."""
    z = over_examples(setup, evals.logits, runs_vars, data["x_test"], data["y_test"], batch)
    return (z.argmax(-1) == np.asarray(data["y_test"])[None]).mean(-1)


def score_stats_template(
    config: ml_collections.ConfigDict, n_runs: int, n: int, image_hw: tuple[int, ...]
) -> dict:
    """Empty score statistics of `n_runs` runs on `n` training examples of size `image_hw`."""
    s = config.scores
    stats = {
        "el2n": jnp.zeros((len(s.el2n_epochs), n_runs, n), jnp.float32),
        "grand": jnp.zeros((len(s.grand_epochs), n_runs, n), jnp.float32),
        "dynamics": jax.vmap(lambda _: dynamics.DynamicsState.create(n))(jnp.arange(n_runs)),
    }
    if s.vog:
        stats["vog"] = jax.vmap(lambda _: VoGState.create((n, *image_hw)))(
            jnp.arange(n_runs)
        )
    return stats


def record_epoch(
    config: ml_collections.ConfigDict,
    setup: Setup,
    evals: EvalFns,
    stats: dict,
    runs_vars: Any,
    x: jnp.ndarray,
    y: jnp.ndarray,
    epoch: int,
) -> dict:
    """Scores of the R runs at the end of `epoch` (0 = initialisation), on the clean inputs."""
    s = config.scores
    logits_fn, grand_fn, grads_fn = evals
    batch = config.eval_batch_size
    stats = dict(stats)
    if epoch in s.el2n_epochs or epoch >= 1:
        z = jnp.asarray(over_examples(setup, logits_fn, runs_vars, x, y, batch))
        if epoch in s.el2n_epochs:
            e2 = jax.vmap(imp.el2n, in_axes=(0, None))(z, y)
            stats["el2n"] = stats["el2n"].at[list(s.el2n_epochs).index(epoch)].set(e2)
        if epoch >= 1:
            upd = lambda d, zz: d.update(zz, y)
            stats["dynamics"] = jax.vmap(upd)(stats["dynamics"], z)
    if epoch in s.grand_epochs:
        g = jnp.asarray(over_examples(setup, grand_fn, runs_vars, x, y, batch))
        stats["grand"] = stats["grand"].at[list(s.grand_epochs).index(epoch)].set(g)
    if s.vog and epoch >= 1:
        g = jnp.asarray(over_examples(setup, grads_fn, runs_vars, x, y, batch))
        stats["vog"] = jax.vmap(lambda st, gg: st.update(gg))(stats["vog"], g)
    return stats


def finish_scores(
    config: ml_collections.ConfigDict,
    stats: dict,
    runs: dict,
    x: jnp.ndarray,
    y: jnp.ndarray,
    num_classes: int,
) -> np.ndarray:
    """Average each score over the runs: [n_scores, N] in `score_names` order."""
    s = config.scores
    out = [np.asarray(e).mean(0) for e in stats["el2n"]]
    out += [np.asarray(g).mean(0) for g in stats["grand"]]
    forget = jax.vmap(lambda f: dynamics.forgetting_scores(f, never_learned=float(s.epochs)))(
        runs["forget"]
    )
    out.append(np.asarray(forget).mean(0))
    dyn = stats["dynamics"]
    out.append(-np.asarray(jax.vmap(lambda d: d.aum())(dyn)).mean(0))
    carto = jax.vmap(lambda d: d.cartography())(dyn)
    out.append(-np.asarray(carto.confidence).mean(0))
    out.append(np.asarray(carto.variability).mean(0))
    out.append(np.asarray(imp.input_norm(x)))
    if s.vog:
        per_run = jax.vmap(lambda st: st.score(y, normalize="class", num_classes=num_classes))(
            stats["vog"]
        )
        per_run = np.asarray(per_run)
        out += [per_run.mean(0), per_run[0]]
    return np.stack(out).astype(np.float32)
