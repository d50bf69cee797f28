"""Tiny runs of the distillation study for its tests: a score-matching teacher run and a config.

The distillation tests check machinery (loading, conversions, paths, switches, resume, bad
input), which needs neither a good teacher nor long runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import optax

from configs import distill as distill_configs
from configs import score_matching as sm_configs
from experiments import score_matching as sm_exp
from scorejax.train import Checkpointer, TrainState, checkpoint_dir, prepare_workdir

# A budget of seconds: 100 generator updates, a two-node path of 20 stage-1 updates, an
# evaluation every 25 updates; every multiple of `distill.steps_per_call` that needs to be.
TINY = {
    "distill.num_steps": 100,
    "distill.batch_size": 64,
    "distill.steps_per_call": 25,
    "distill.fake_steps": 1,
    "stage1.num_nodes": 2,
    "stage1.num_steps": 20,
    "stage1.probe_every": 5,
    "stage1.probe_samples": 256,
    "stage1.learning_rate": 1e-3,
    "stage1.batch_size": 64,
    "schedule.interval": 50,
    "consistency.num_scales": 6,
    "consistency.lr": 1e-3,
    "eval.every": 25,
    "eval.num_samples": 200,
    "eval.num_projections": 16,
    "checkpoint_every": 50,
    "keep_checkpoints": 10,
}


def tiny_config(
    variant: str,
    teacher_workdir: str,
    methods: str,
    overrides: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """`configs/distill.py:<variant>` on the teacher run in `teacher_workdir`, running `methods`
    with the `TINY` budget, then `overrides` (dotted field names) on top."""
    c = distill_configs.get_config(variant)
    with c.unlocked():
        c.teacher.workdir = teacher_workdir
        c.methods = methods
        for name, value in {**TINY, **(overrides or {})}.items():
            *parents, leaf = name.split(".")
            node = c
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c


def score_matching_run(directory: str | Path, variant: str) -> str:
    """A score-matching run of `configs/score_matching.py:<variant>` in `directory` (config.json
    and an Orbax checkpoint) holding a small MLP (two layers of 32) at its initialisation."""
    c = sm_configs.get_config(variant)
    with c.unlocked():
        c.model.hidden_sizes = (32, 32)
        c.model.embed_dim = 16
    setup = sm_exp.build(c)
    prepare_workdir(c, directory)
    state = TrainState.create(jax.jit(setup.init)(jax.random.key(0)), optax.adam(1e-3))
    with Checkpointer(checkpoint_dir(directory), save_every=1) as ckpt:
        ckpt.save(c.train.num_steps, state)
    return str(directory)
