"""The distillation study's training steps: the state of a run, its initial value, and the jitted
steps of score distillation (`make_stage2_step`) and of consistency distillation
(`make_consistency_step`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from experiments.distill.generators import Generator, Programs, consistency_networks
from experiments.distill.methods import consistency_config, plan, split_method, time_dist
from experiments.distill.teacher import Teacher
from scorejax import backtracking, distill
from scorejax import consistency as cm
from scorejax.train import TrainState, batch_sharding, replicated_sharding
from scorejax.train.optim import Adam
from scorejax.train.precision import precision_from_config
from scorejax.train.step import train_step


def _adam(lr: float, config: ml_collections.ConfigDict) -> Adam:
    d = config.distill
    return Adam(lr, b1=d.adam_b1, b2=d.adam_b2, grad_clip=d.grad_clip)


def _consistency_adam(config: ml_collections.ConfigDict) -> Adam:
    c, d = config.consistency, config.distill
    return Adam(c.lr, b1=c.adam_b1, b2=d.adam_b2, grad_clip=d.grad_clip)


class DistillState(struct.PyTreeNode):
    """Everything a stage-2 run needs to resume: generator, fake score and the walk's position."""

    step: jax.Array
    generator: TrainState
    fake: TrainState
    schedule: backtracking.ScheduleState


class ConsistencyState(struct.PyTreeNode):
    """Everything a `consistency` run needs to resume: the student and its target network.

    `generator` holds the online parameters `theta` (its `ema_params`, decay `distill.gen_ema`,
    are the evaluated weights, as for every method); `target` is `theta^-`, the EMA (decay
    `consistency.target_ema`) that gives the CD loss its stop-gradient targets.
    """

    step: jax.Array
    generator: TrainState
    target: Any


def initial_state(
    config: ml_collections.ConfigDict, method: str, gen: Generator, path: dict[str, Any]
) -> DistillState | ConsistencyState:
    """The state a run of `method` starts from (`path` as for `run_method`).

    Score distillation: the generator at `gen.init_params`, the fake score at the node of the
    method's plan (`methods.plan`), the target at the start of its walk; `consistency`: the
    student and its target network at `gen.init_params` (the teacher's weights). Holds copies:
    the state is donated to the step and must not take the shared weights.
    """
    plan_name, _ = split_method(method, config)
    zero = jnp.zeros((), jnp.int32)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    if plan_name == "consistency":
        tx = _consistency_adam(config).build()
        return ConsistencyState(
            zero, TrainState.create(copy(gen.init_params), tx), copy(gen.init_params)
        )
    num_nodes = jax.tree.leaves(path["nodes"])[0].shape[0] - 1
    fake_node, walk_nodes = plan(plan_name, num_nodes)
    d = config.distill
    return DistillState(
        step=zero,
        generator=TrainState.create(copy(gen.init_params), _adam(d.gen_lr, config).build()),
        fake=TrainState.create(
            jax.tree.map(lambda a: a[fake_node], path["nodes"]), _adam(d.fake_lr, config).build()
        ),
        schedule=backtracking.schedule_init(walk_nodes),
    )


def make_stage2_step(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    gen: Generator,
    sched: backtracking.BacktrackSchedule,
    mesh: jax.sharding.Mesh,
    weighting: str,
) -> Any:
    """Jitted `step(state, path, key) -> (state, per-update metrics)`.

    `path` is `{"nodes": stacked node parameters [N + 1, ...], "gaps": [max(N, 1)] segment gaps}`.
    Runs `distill.steps_per_call` iterations in one `lax.scan`. One iteration: a generator update
    against target node `state.schedule.node` (any weighting: backtracking only selects the
    target's parameters), `distill.fake_steps` DSM updates of the fake score on fresh
    (stop-gradient) samples of the updated generator (the fake-to-generator update ratio, the same
    for every method; the teacher's own loss, `Teacher.loss_fn`), and one schedule update driven
    by the iteration's mean score gap.
    Iteration `s` draws its randomness from `fold_in(key, s)`, so a resumed run repeats an
    uninterrupted one exactly. The state is donated and replicated; the
    generator batch is split over the mesh's data axis.
    """
    d = config.distill
    sde, score_fn = teacher.setup.sde, teacher.setup.score_fn
    tdist = time_dist(config)
    gen_tx, fake_tx = _adam(d.gen_lr, config).build(), _adam(d.fake_lr, config).build()
    fake_weighting, fake_t_min = teacher.config.loss.weighting, teacher.config.loss.t_min
    policy = precision_from_config(config)
    z_sharding = batch_sharding(mesh)
    shape = (d.batch_size, *gen.latent_shape)

    def latent(key):
        return jax.lax.with_sharding_constraint(jax.random.normal(key, shape), z_sharding)

    def one(state: DistillState, path, key):
        it_key = jax.random.fold_in(key, state.step)
        k_gen, k_fake, k_z = jax.random.split(it_key, 3)
        target = backtracking.select_node(path["nodes"], state.schedule.node)
        fake_params = state.fake.params

        def gen_loss(params, z, k):
            loss, aux = distill.generator_loss(
                gen.apply,
                params,
                z,
                k,
                sde=sde,
                target_score_fn=score_fn,
                target_params=target,
                fake_score_fn=score_fn,
                fake_params=fake_params,
                weighting=weighting,
                time_dist=tdist,
            )
            return loss, {"score_gap": jnp.mean(aux.score_gap)}

        generator, gm = train_step(
            state.generator,
            latent(k_z),
            k_gen,
            loss_fn=gen_loss,
            tx=gen_tx,
            ema_decay=d.gen_ema,
            precision=policy,
        )

        def fake_loss(params, x0, k):
            if teacher.loss_fn is not None:
                return teacher.loss_fn(params, jax.lax.stop_gradient(x0), k)
            return distill.fake_score_loss(
                score_fn, params, x0, k, sde=sde, weighting=fake_weighting, t_min=fake_t_min
            )

        fake = state.fake
        fake_losses = []
        for j in range(d.fake_steps):
            x0 = gen.apply(generator.params, latent(jax.random.fold_in(k_z, j + 1)))
            k_j = jax.random.fold_in(k_fake, j)
            fake, fm = train_step(
                fake, x0, k_j, loss_fn=fake_loss, tx=fake_tx, ema_decay=0.0, precision=policy
            )
            fake_losses.append(fm["loss"])
        gap = gm["score_gap"]
        new_schedule, switched, gap_ema = backtracking.schedule_update(
            state.schedule, gap, schedule=sched, segment_gaps=path["gaps"]
        )
        metrics = {
            "gen_loss": gm["loss"],
            "gen_grad_norm": gm["grad_norm"],
            "score_gap": gap,
            "gap_ema": gap_ema,
            "fake_loss": jnp.mean(jnp.stack(fake_losses)),
            "target_node": state.schedule.node,
            "switched": switched,
        }
        new = DistillState(state.step + 1, generator, fake, new_schedule)
        return new, metrics

    return _many_jitted(one, d.steps_per_call, mesh)


def make_consistency_step(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    mesh: jax.sharding.Mesh,
    programs: Programs,
) -> Any:
    """Jitted `step(state, teacher_params, key) -> (state, per-update metrics)` of consistency
    distillation (Song et al. 2023, Algorithm 2).

    Runs `distill.steps_per_call` iterations in one `lax.scan`. Iteration `s` draws a batch of
    `distill.batch_size` data samples (split over the mesh's data axis) and the loss's noise from
    `fold_in(key, s)`, makes one Adam update of the student on `scorejax.consistency.cd_loss`
    (the teacher's Heun step between adjacent times of `consistency_config(config)`, targets from
    `state.target`), updates the evaluated EMA, then the target network,
    `theta^- <- mu theta^- + (1 - mu) theta` (`scorejax.consistency.ema_update`, `mu =
    consistency.target_ema`). A resumed run repeats an uninterrupted one exactly. The networks
    are `consistency_networks(config, teacher, programs)`. The state is donated and replicated.
    """
    d, c = config.distill, config.consistency
    cfg = consistency_config(config)
    nets = consistency_networks(config, teacher, programs)
    tx = _consistency_adam(config).build()
    policy = precision_from_config(config)
    sample, x_sharding = teacher.setup.data.sample, batch_sharding(mesh)

    def one(state: ConsistencyState, teacher_params, key):
        k_data, k_loss = jax.random.split(jax.random.fold_in(key, state.step))
        x0 = jax.lax.with_sharding_constraint(sample(k_data, d.batch_size), x_sharding)

        def loss_fn(params, x0, k):
            loss, _ = cm.cd_loss(
                nets.net,
                params,
                x0,
                k,
                target_params=state.target,
                teacher_fn=nets.teacher,
                teacher_params=teacher_params,
                config=cfg,
            )
            return loss, {}

        generator, m = train_step(
            state.generator,
            x0,
            k_loss,
            loss_fn=loss_fn,
            tx=tx,
            ema_decay=d.gen_ema,
            precision=policy,
        )
        target = cm.ema_update(state.target, generator.params, decay=c.target_ema)
        metrics = {"cd_loss": m["loss"], "gen_grad_norm": m["grad_norm"]}
        return ConsistencyState(state.step + 1, generator, target), metrics

    return _many_jitted(one, d.steps_per_call, mesh)


def _many_jitted(one: Any, steps_per_call: int, mesh: jax.sharding.Mesh) -> Any:
    """`one(state, source, key)` run `steps_per_call` times, jitted with a replicated, donated
    state."""

    def many(state, source, key):
        if steps_per_call == 1:
            # No scan of length one: XLA's CPU backend runs a U-Net update inside a loop body
            # several times slower than the same update at the top level.
            state, metrics = one(state, source, key)
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(lambda s, _: one(s, source, key), state, None, steps_per_call)

    rep = replicated_sharding(mesh)
    return jax.jit(many, in_shardings=(rep, rep, rep), out_shardings=(rep, rep), donate_argnums=0)
