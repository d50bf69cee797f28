"""DisBack stage 1: record the degradation path from the teacher to the initial generator.

The maths (the stage-1 update, the score distance, the node selection) is in `scorejax.distill`;
`record_degradation` runs the loop over all devices and processes like every other training loop,
saves the copy's parameters through Orbax at every probe (so an interruption loses nothing) and
writes `path.json` atomically after every probe, in the layout that
`scorejax.train.degradation.DegradationPath` reads back. Wall-clock times are logged, never saved.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh

from scorejax import backtracking, distill
from scorejax.sde import SDE
from scorejax.train.checkpoint import Checkpointer
from scorejax.train.degradation import (
    _CANDIDATES,
    _RESUME,
    PATH_FILE,
    DegradationPath,
)
from scorejax.train.mesh import batch_sharding, make_mesh, put_replicated
from scorejax.train.optim import Adam
from scorejax.train.workdir import write_json

Params = Any

__all__ = ["record_degradation"]


@functools.partial(
    jax.jit,
    static_argnames=(
        "score_fn",
        "generator_fn",
        "sde",
        "optimizer",
        "batch_size",
        "latent_shape",
        "dsm_weighting",
        "t_min",
        "loss_fn",
        "mesh",
    ),
    donate_argnums=(0, 1),
)
def _stage1_step(
    params,
    opt_state,
    generator_params,
    key,
    step,
    *,
    score_fn,
    generator_fn,
    sde,
    optimizer,
    batch_size,
    latent_shape,
    dsm_weighting,
    t_min,
    loss_fn,
    mesh,
):
    """One stage-1 update on batch `step` (drawn from `fold_in(key, step)`, split over `mesh`)."""
    z_key, loss_key = jax.random.split(jax.random.fold_in(key, step))
    z = jax.lax.with_sharding_constraint(
        jax.random.normal(z_key, (batch_size, *latent_shape)), batch_sharding(mesh)
    )
    x0 = generator_fn(generator_params, z)
    return backtracking.stage1_update(
        score_fn,
        params,
        opt_state,
        x0,
        loss_key,
        tx=optimizer.build(),
        sde=sde,
        weighting=dsm_weighting,
        t_min=t_min,
        loss_fn=loss_fn,
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "sde", "time_dist"))
def _distance(params_a, params_b, x_probe, key, *, score_fn, sde, time_dist):
    return distill.score_distance(
        lambda x, t: score_fn(params_a, x, t),
        lambda x, t: score_fn(params_b, x, t),
        x_probe,
        key,
        sde=sde,
        time_dist=time_dist,
    )


def record_degradation(
    directory: str | os.PathLike,
    *,
    score_fn: Callable[[Params, jax.Array, jax.Array], jax.Array],
    teacher_params: Params,
    generator_fn: Callable[[Params, jax.Array], jax.Array],
    generator_params: Params,
    sde: SDE,
    latent_shape: tuple[int, ...],
    key: jax.Array,
    num_nodes: int,
    num_steps: int,
    probe_every: int,
    batch_size: int,
    optimizer: Adam,
    dsm_weighting: str = "sigma2",
    t_min: float = 1e-5,
    probe_samples: int = 2048,
    time_dist: distill.TimeDistribution | None = None,
    mesh: Mesh | None = None,
    callback: Callable[[int, jax.Array], None] | None = None,
    loss_fn: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, Any]] | None = None,
    loss_name: str = "",
) -> DegradationPath:
    """DisBack stage 1: record the path from the teacher to the initial generator's distribution.

    A copy of the teacher (`score_fn`, `teacher_params`) is trained for `num_steps` updates of
    `optimizer` with the teacher's DSM loss (`dsm_weighting`, `t_min`), or its own `loss_fn`, on
    samples `generator_fn(generator_params, z)`, `z ~ N(0, I)` `[batch_size, *latent_shape]`, of
    the frozen generator (`scorejax.backtracking.stage1_update`); update `s` draws its batch from
    `fold_in(key, s)`, split over `mesh`'s data axis (default: all devices of all processes).
    Every `probe_every` updates the copy is saved as a candidate and its distance to the teacher
    `D = E sigma_t^2 ||s_copy - s_teacher||^2` is measured on `probe_samples` fixed generator
    samples with fixed noise (`scorejax.distill.score_distance`, `time_dist`, by default
    uniform on `[0.02, 0.98]`). At the end
    `num_nodes` candidates evenly spaced in `D` become the nodes
    (`scorejax.backtracking.select_nodes`), and `path.json` records, per node, its step, `D_k`, its
    distance to the final node and the gaps between consecutive nodes. The run's log prints
    this profile.

    Resumable and idempotent: an interrupted recording continues from its last probe and ends as
    an uninterrupted one would; a complete recording with the same settings (the same teacher and
    generator weights) is returned as is. A recording with other settings, another teacher or
    another architecture in `directory` raises `ValueError` rather than being mixed with the new
    one.

    Args:
      optimizer: a hashable optimiser spec (equal specs reuse the compiled step).
      callback: called as `callback(step, loss)` after each update (progress reporting); `loss`
        is a device scalar, so a callback that does not read it does not stall the loop.
      loss_fn: `loss_fn(params, x0, key) -> (loss, aux)`, the training loss of a teacher not
        trained with DSM (e.g. `scorejax.edm.edm_loss` or `scorejax.flow_matching.fm_loss` of
        its model), used in place of the DSM loss; hashable (a static argument of the jitted
        update). `None`: the DSM loss.
      loss_name: the name `loss_fn` is recorded under in `path.json` (required with it), so a
        recording is only resumed with the same loss.

    Returns:
      the `DegradationPath`; its `meta["steps"]` is the stage-1 cost in updates.

    Examples:
      A teacher `s(x, t) = -a x` with `a = 1` (the exact score of N(0, I) data under a VP SDE)
      degraded towards the generator `x0 = 3 z`:

      >>> import functools, tempfile, jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> from scorejax.train.optim import Adam
      >>> tmp, teacher = tempfile.TemporaryDirectory(), {"a": jnp.ones(())}
      >>> record = functools.partial(
      ...     record_degradation, tmp.name, score_fn=lambda p, x, t: -p["a"] * x,
      ...     teacher_params=teacher, generator_fn=lambda p, z: p * z,
      ...     generator_params=jnp.float32(3.0), sde=VPSDE(), latent_shape=(2,),
      ...     key=jax.random.key(0), num_nodes=2, num_steps=4, probe_every=1, batch_size=16,
      ...     optimizer=Adam(0.1), probe_samples=64)
      >>> path = record()
      >>> path.node_steps[0], path.distances[0], path.distances[-1] > path.distances[1] > 0
      (0, 0.0, True)
      >>> len(path), path.order, path.load(0, teacher)["a"].tolist()  # node 0: the teacher
      (3, (2, 1, 0), 1.0)
      >>> path.stacked(teacher)["a"].shape  # every node on one leading axis
      (3,)
      >>> record().node_steps == path.node_steps  # complete: returned as recorded
      True
      >>> tmp.cleanup()
    """
    if num_nodes < 1:
        raise ValueError(
            f"num_nodes must be >= 1 (an empty path cannot be backtracked), got {num_nodes}"
        )
    if min(num_steps, probe_every, batch_size, probe_samples) < 1 or num_steps % probe_every:
        raise ValueError(
            f"need num_steps ({num_steps}) a positive multiple of probe_every ({probe_every}), "
            f"and positive batch_size ({batch_size}) and probe_samples ({probe_samples})"
        )
    if num_steps // probe_every < num_nodes:
        raise ValueError(
            f"num_steps / probe_every = {num_steps // probe_every} candidates cannot give "
            f"num_nodes={num_nodes} distinct nodes; probe more often"
        )
    if loss_fn is not None and not loss_name:
        raise ValueError("a custom stage-1 loss_fn needs a loss_name to record it under")
    mesh = make_mesh() if mesh is None else mesh
    time_dist = distill.TimeDistribution() if time_dist is None else time_dist
    directory = os.path.abspath(os.fspath(directory))
    settings = {
        "num_nodes": num_nodes,
        "num_steps": num_steps,
        "probe_every": probe_every,
        "batch_size": batch_size,
        "latent_shape": list(latent_shape),
        "optimizer": repr(optimizer),
        "dsm_weighting": dsm_weighting,
        "t_min": t_min,
        "probe_samples": probe_samples,
        "time_dist": repr(time_dist),
        "fingerprint": backtracking.param_fingerprint(teacher_params),
        "teacher_digest": backtracking.param_digest(teacher_params),
        "generator_digest": backtracking.param_digest(generator_params),
    }
    if loss_fn is not None:
        # Only then: recordings made with the DSM loss keep their settings.
        settings["loss"] = loss_name
    meta_file = os.path.join(directory, PATH_FILE)
    meta = {**settings, "complete": False, "probes": []}
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            old = json.load(f)
        if old.get("fingerprint") != settings["fingerprint"]:
            raise ValueError(
                f"{directory} holds a degradation path of a different score-model architecture; "
                "use another directory"
            )
        differing = sorted(k for k in settings if old.get(k) != settings[k])
        if differing:
            raise ValueError(
                f"{directory} holds a degradation path recorded with other settings "
                f"({', '.join(differing)}); use another directory"
            )
        meta = old
        if meta["complete"]:
            return DegradationPath(directory)
    os.makedirs(directory, exist_ok=True)

    k_steps, k_probe = jax.random.split(key)
    k_probe_z, k_probe_noise = jax.random.split(k_probe)
    teacher = put_replicated(teacher_params, mesh)
    gparams = put_replicated(generator_params, mesh)
    x_probe = generator_fn(gparams, jax.random.normal(k_probe_z, (probe_samples, *latent_shape)))
    x_probe = put_replicated(x_probe, mesh)
    k_probe_noise = put_replicated(k_probe_noise, mesh)
    distance = functools.partial(
        _distance,
        x_probe=x_probe,
        key=k_probe_noise,
        score_fn=score_fn,
        sde=sde,
        time_dist=time_dist,
    )
    static = dict(
        score_fn=score_fn,
        generator_fn=generator_fn,
        sde=sde,
        optimizer=optimizer,
        batch_size=batch_size,
        latent_shape=tuple(latent_shape),
        dsm_weighting=dsm_weighting,
        t_min=t_min,
        loss_fn=loss_fn,
        mesh=mesh,
    )
    step_key = put_replicated(k_steps, mesh)
    tx = optimizer.build()
    state = put_replicated(
        {"params": jax.tree.map(jnp.copy, teacher_params), "opt_state": tx.init(teacher_params)},
        mesh,
    )
    n_candidates = num_steps // probe_every + 1
    candidates = Checkpointer(
        os.path.join(directory, _CANDIDATES),
        save_every=probe_every,
        keep=n_candidates,
        async_save=False,
    )
    resume = Checkpointer(
        os.path.join(directory, _RESUME), save_every=probe_every, keep=1, async_save=False
    )
    try:
        state = resume.restore_or(state)
        start = resume.latest_step() or 0
        probes = [p for p in meta["probes"] if p[0] <= start]
        if start == 0:
            candidates.save(0, state["params"])
            probes = [[0, 0.0]]  # the teacher itself
        elif probes[-1][0] != start:
            probes.append([start, float(distance(state["params"], teacher))])
        if start:
            logging.info("stage 1: resuming at update %d", start)
        params, opt_state = state["params"], state["opt_state"]
        t0, steps_here = time.perf_counter(), 0
        for s in range(start, num_steps):
            params, opt_state, loss = _stage1_step(
                params, opt_state, gparams, step_key, jnp.int32(s), **static
            )
            steps_here += 1
            if callback is not None:
                callback(s + 1, loss)
            if (s + 1) % probe_every == 0:
                candidates.save(s + 1, params)
                resume.save(s + 1, {"params": params, "opt_state": opt_state})
                probes.append([s + 1, float(distance(params, teacher))])
                meta["probes"] = probes
                write_json(meta_file, meta, indent=1)
        if steps_here:
            logging.info("stage 1: %d updates in %.1f s", steps_here, time.perf_counter() - t0)

        chosen = backtracking.select_nodes([d for _, d in probes], num_nodes=num_nodes)
        node_steps = [probes[i][0] for i in chosen]
        nodes = [candidates.restore(s, teacher) for s in node_steps]
        final = nodes[-1]
        meta.update(
            complete=True,
            steps=num_steps,
            node_steps=node_steps,
            distances=[probes[i][1] for i in chosen],
            to_final=[float(distance(n, final)) for n in nodes[:-1]] + [0.0],
            segment_gaps=[float(distance(nodes[j + 1], nodes[j])) for j in range(num_nodes)],
        )
    finally:
        candidates.close()
        resume.close()
    write_json(meta_file, meta, indent=1)
    shutil.rmtree(os.path.join(directory, _RESUME), ignore_errors=True)
    path = DegradationPath(directory)
    logging.info("degradation path (%d stage-1 updates):\n%s", num_steps, path.profile())
    return path
