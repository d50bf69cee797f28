"""The distillation study's runs: stage 1 (the degradation path) and `run_method`, one method's
resumable stage-2 run (its jitted steps: `experiments.distill.steps`).

Stage 1 (`record_path`): `scorejax.train.degradation_recording.record_degradation` fine-tunes a
copy of the teacher on samples of the frozen `G_0` and saves the degradation path in
`<workdir>/path`. Stage 2 (`run_method`): one run per method in `<workdir>/<method>`, which
checkpoints (generator, fake score and the schedule state, i.e. the current target node; for
`consistency`, the student and its target network) with Orbax, resumes after an interruption
exactly, logs every target switch, and evaluates the generator's EMA weights every `eval.every`
updates.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from experiments.distill.evaluation import Evaluator
from experiments.distill.generators import Generator, Programs
from experiments.distill.methods import baseline_of, schedule, split_method, time_dist
from experiments.distill.steps import (
    ConsistencyState,
    DistillState,
    initial_state,
    make_consistency_step,
    make_stage2_step,
)
from experiments.distill.teacher import Teacher
from scorejax import backtracking
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    checkpoint_dir,
    make_mesh,
    put_replicated,
    read_metrics,
    write_json,
)
from scorejax.train.degradation import DegradationPath
from scorejax.train.degradation_recording import record_degradation
from scorejax.train.optim import Adam

FINAL_FILE = "final.json"
HEAD_START_SUBDIR = "head_start"
PATH_SUBDIR = "path"


def record_path(
    config: ml_collections.ConfigDict,
    workdir: str,
    teacher: Teacher,
    gen: Generator,
    key: jax.Array,
) -> DegradationPath:
    """Stage 1 into `<workdir>/path` (resumed or reused when already there); logs its profile."""
    s = config.stage1
    with Progress(s.num_steps, desc="stage 1: degradation path") as bar:
        path = record_degradation(
            os.path.join(workdir, PATH_SUBDIR),
            score_fn=teacher.setup.score_fn,
            teacher_params=teacher.params,
            generator_fn=gen.apply,
            generator_params=gen.init_params,
            sde=teacher.setup.sde,
            latent_shape=gen.latent_shape,
            key=key,
            num_nodes=s.num_nodes,
            num_steps=s.num_steps,
            probe_every=s.probe_every,
            batch_size=s.batch_size,
            optimizer=Adam(s.learning_rate, b1=s.adam_b1, b2=config.distill.adam_b2),
            dsm_weighting=teacher.config.loss.weighting,
            t_min=teacher.config.loss.t_min,
            probe_samples=s.probe_samples,
            time_dist=time_dist(config),
            callback=lambda step, loss: bar.update(step, loss=loss) if step % 25 == 0 else None,
            loss_fn=teacher.loss_fn,
            loss_name=teacher.loss_name,
        )
    logging.info("degradation path profile:\n%s", path.profile())
    return path


def _walk(state: DistillState | ConsistencyState) -> backtracking.ScheduleState:
    """The backtracking walk of a run (a consistency run has none: the teacher throughout)."""
    return state.schedule if isinstance(state, DistillState) else backtracking.schedule_init(0)


def _last_train_seconds(workdir: str, start: int) -> float:
    if start == 0 or not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return 0.0
    seconds = [
        r["train_seconds"]
        for r in read_metrics(workdir)
        if "train_seconds" in r and r["step"] <= start
    ]
    return seconds[-1] if seconds else 0.0


def run_method(
    config: ml_collections.ConfigDict,
    workdir: str,
    method: str,
    teacher: Teacher,
    gen: Generator,
    path: dict[str, Any],
    evaluator: Evaluator,
    key: jax.Array,
    save_head_start: bool = False,
    programs: Programs | None = None,
) -> dict[str, Any]:
    """Stage 2 of `method` in `workdir` (resumed from its latest checkpoint); returns its curves.

    `path`: `{"nodes": [N + 1, ...] stacked node parameters, "gaps": segment gaps}` (`N = 0`: the
    teacher alone, for runs without stage 1). `save_head_start`: also keep the state after
    `distill.head_start` updates in `<workdir>/head_start`, where `diff_instruct_ahead` (in a
    sibling directory named after it) starts from. A run that finished (its `final.json`) is
    read back, not run again.

    The compiled step is kept in `programs` (None: a new one) by schedule, so methods that differ
    only in their starting point (the Diff-Instruct variants and fixed-interval DisBack)
    compile once.

    `consistency` (consistency distillation) runs `make_consistency_step` on a
    `ConsistencyState` started from the teacher, `gen` being `consistency_generator`'s; it
    distils from the teacher alone (`path` unused), with the same updates, evaluations,
    checkpoints and resumption as the other methods.
    """
    final_file = os.path.join(workdir, FINAL_FILE)
    if os.path.exists(final_file):
        with open(final_file) as f:
            return json.load(f)
    programs = Programs() if programs is None else programs
    os.makedirs(workdir, exist_ok=True)
    d = config.distill
    k = d.steps_per_call
    mesh = make_mesh()
    plan_name, _ = split_method(method, config)
    state = put_replicated(initial_state(config, method, gen, path), mesh)
    # Updates already in `state` before this run's first one (the positive control's head start).
    offset = 0
    if plan_name == "diff_instruct_ahead":
        state, offset = _head_start(config, workdir, method, state), d.head_start
    path_gaps = np.asarray(path["gaps"])
    # What the step distils from: the path's nodes, or the teacher alone.
    source = put_replicated(teacher.params if plan_name == "consistency" else path, mesh)
    key = put_replicated(key, mesh)
    step_fn = _compiled_step(config, method, teacher, gen, path, programs, mesh, state, source, key)

    with Checkpointer(
        checkpoint_dir(workdir), save_every=config.checkpoint_every, keep=config.keep_checkpoints
    ) as ckpt:
        state = ckpt.restore_or(state)
        start = int(state.step) - offset
        seconds = _last_train_seconds(workdir, start)
        if start:
            logging.info(
                "%s: resuming at update %d, target node %d", method, start, int(_walk(state).node)
            )
        with (
            MetricWriter(workdir, resume_step=start or None) as writer,
            Progress(d.num_steps, initial=start, desc=f"stage 2: {method}") as bar,
        ):
            if start == 0:
                record = _eval_record(evaluator, state, 0.0)
                writer.write(0, {"target_node": int(_walk(state).node), **record})
            for step in range(start + k, d.num_steps + 1, k):
                t0 = time.perf_counter()
                state, metrics = step_fn(state, source, key)
                metrics = jax.device_get(metrics)
                seconds += time.perf_counter() - t0
                for i in np.flatnonzero(metrics.get("switched", ())):
                    at = step - k + int(i) + 1
                    node = int(metrics["target_node"][i]) - 1
                    gap = float(metrics["gap_ema"][i])
                    logging.info(
                        "%s: update %d: target switches to node %d (score gap %.4g, recorded "
                        "gap of the node left %.4g)",
                        method,
                        at,
                        node,
                        gap,
                        float(path_gaps[node + 1]),
                    )
                    writer.write(at, {"switch_to_node": node, "switch_gap": gap})
                if "score_gap" in metrics:
                    bar.update(step, gap=float(np.mean(metrics["score_gap"])))
                else:
                    bar.update(step, loss=float(np.mean(metrics["cd_loss"])))
                if step % config.eval.every == 0:
                    record = {
                        k_: float(np.mean(v)) for k_, v in metrics.items() if k_ != "switched"
                    }
                    # The node the next update targets, i.e. the one a checkpoint here holds.
                    record["target_node"] = int(_walk(state).node)
                    record.update(_eval_record(evaluator, state, seconds))
                    writer.write(step, record)
                if save_head_start and step == d.head_start:
                    head_dir = os.path.join(workdir, HEAD_START_SUBDIR)
                    with Checkpointer(head_dir, save_every=1, keep=1, async_save=False) as head:
                        head.save(step, state)
                ckpt.maybe_save(step, state)
            ckpt.save(d.num_steps, state)
    result = _curves(workdir)
    result["method"] = method
    result["final_target_node"] = int(_walk(state).node)
    result["num_switches"] = int(_walk(state).num_switches)
    write_json(final_file, result)
    return result


def _head_start(
    config: ml_collections.ConfigDict, workdir: str, method: str, state: DistillState
) -> DistillState:
    """The state `diff_instruct_ahead` starts from: its baseline's after `distill.head_start`
    updates, from the baseline's `head_start` directory."""
    d = config.distill
    source = os.path.join(os.path.dirname(workdir), baseline_of(method, config), HEAD_START_SUBDIR)
    with Checkpointer(source, save_every=1, keep=1, read_only=True) as head:
        if head.latest_step() != d.head_start:
            raise FileNotFoundError(
                f"{method} starts from {source} at update {d.head_start}, which holds "
                f"{head.latest_step()}; run its baseline first"
            )
        return head.restore(d.head_start, state)


def _compiled_step(
    config: ml_collections.ConfigDict,
    method: str,
    teacher: Teacher,
    gen: Generator,
    path: dict[str, Any],
    programs: Programs,
    mesh: jax.sharding.Mesh,
    *example: Any,
) -> Any:
    """The compiled step of `method`, from `programs.steps` or compiled there for the arguments
    `example` (state, source, key): ahead of time, so that the reported training seconds
    exclude compilation."""
    plan_name, weighting = split_method(method, config)
    sched = schedule(config, method)
    num_nodes = jax.tree.leaves(path["nodes"])[0].shape[0] - 1
    program_key = "consistency" if plan_name == "consistency" else (sched, num_nodes, weighting)
    if program_key not in programs.steps:
        if plan_name == "consistency":
            jitted = make_consistency_step(config, teacher, mesh, programs)
        else:
            jitted = make_stage2_step(config, teacher, gen, sched, mesh, weighting)
        programs.steps[program_key] = jitted.lower(*example).compile()
    return programs.steps[program_key]


def _eval_record(
    evaluator: Evaluator, state: DistillState | ConsistencyState, seconds: float
) -> dict[str, float]:
    out = jax.device_get(evaluator.evaluate(state.generator.ema_params))
    return {"train_seconds": seconds, **{f"eval/{k}": float(v) for k, v in out.items()}}


def _curves(workdir: str) -> dict[str, Any]:
    """Evaluation curves and switch events of a finished run, read back from metrics.jsonl."""
    records = read_metrics(workdir)
    evals = [r for r in records if "eval/mmd2" in r]
    curves = {
        "step": [r["step"] for r in evals],
        "train_seconds": [r["train_seconds"] for r in evals],
    }
    for name in evals[0]:
        if name.startswith("eval/"):
            curves[name[5:]] = [r[name] for r in evals]
    curves["target_node"] = [r.get("target_node", None) for r in evals]
    switches = [
        [r["step"], r["switch_to_node"], r["switch_gap"]] for r in records if "switch_to_node" in r
    ]
    return {"curves": curves, "switches": switches}


def final_generator_params(method_dir: str, gen: Generator | None) -> Any:
    """The EMA generator parameters of the last checkpoint of a method run (checked against
    `gen`'s architecture when given)."""
    # Orbax needs an absolute path.
    directory = os.path.abspath(os.fspath(checkpoint_dir(method_dir)))
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    finally:
        manager.close()
    params = jax.tree.map(jnp.asarray, restored["generator"]["ema_params"])
    if gen is not None and backtracking.param_fingerprint(params) != backtracking.param_fingerprint(
        gen.init_params
    ):
        raise ValueError(f"the checkpoint in {method_dir} holds another generator architecture")
    return params
