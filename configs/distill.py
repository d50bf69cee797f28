"""One-step distillation: Diff-Instruct against DisBack (distribution backtracking) on 2-D toys.

Command (variants `gmm8` (default), `grid`):

    .venv/bin/python -m experiments.main --config=configs/distill.py:gmm8 \
        --workdir=runs/distill_gmm8 [--config.teacher.workdir=runs/demo/teacher] [--config.x=v]

With `teacher.workdir` empty the teacher is trained first into `<workdir>/teacher` with
`configs/score_matching.py:<teacher.variant>`; otherwise that score-matching run is loaded (it
must hold a checkpoint of a model trained on `data.name`).

Measured on the 2-core CPU machine (shared with other jobs, so wall times vary by ~2x):

- `gmm8`, `grid`: end-to-end runs were started on the shared machine but not finished in the
  session that wrote this study, so no result is claimed here; `tests/test_distill_experiment.py`
  runs a shortened version of the pipeline.

Methods (`methods`, comma-separated): `diff_instruct` (fake score from the teacher),
`diff_instruct_warm` (fake score warmed up on the initial generator for stage 1's steps: the
fair control), `disback_fixed` and `disback_adaptive` (see `scorejax.distill.BacktrackSchedule`).
All share the seed, the initial generator and its batches, and run `distill.num_steps` generator
updates; stage 1 (`stage1.num_nodes * stage1.steps_per_node` fake-score updates) is reported
separately.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("gmm8", "grid")


def get_config(variant: str = "gmm8") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown distill variant {variant!r}; choose from {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.study = "distill"
    c.seed = 0
    c.methods = "diff_instruct,diff_instruct_warm,disback_fixed,disback_adaptive"

    c.data = ml_collections.ConfigDict()
    c.data.name = {"gmm8": "ring8", "grid": "grid25"}[variant]

    # The teacher: a finished score-matching run, or "" to train one into <workdir>/teacher.
    c.teacher = ml_collections.ConfigDict()
    c.teacher.workdir = ""
    c.teacher.variant = variant  # configs/score_matching.py variant trained on the fly
    c.teacher.num_steps = 6000 if variant == "gmm8" else 10000

    # The one-step generator: the teacher's denoiser at t_init (kind="denoiser", init "teacher"
    # or "random"), or a random MLP (kind="mlp").
    c.generator = ml_collections.ConfigDict()
    c.generator.kind = "denoiser"
    c.generator.init = "teacher"
    c.generator.t_init = 0.7
    c.generator.hidden_sizes = (256, 256, 256)  # mlp only
    c.generator.output_scale = 1.0  # mlp only

    c.distill = ml_collections.ConfigDict()
    c.distill.num_steps = 1000  # generator updates per method
    c.distill.batch_size = 256
    c.distill.weighting = "dmd"  # diff_instruct | vsd | dmd (see the module docstring)
    c.distill.time_dist = "uniform"  # uniform | log_nsr_normal
    c.distill.t_min = 0.02
    c.distill.t_max = 0.98
    c.distill.log_nsr_mean = -1.2  # log_nsr_normal only
    c.distill.log_nsr_std = 1.2
    c.distill.gen_lr = 1e-4
    c.distill.gen_ema = 0.99  # generator weights are evaluated as an EMA with this decay
    c.distill.fake_lr = 1e-3
    c.distill.adam_b1 = 0.0  # Diff-Instruct / SiD use beta1 = 0
    c.distill.adam_b2 = 0.999
    c.distill.grad_clip = 10.0
    c.distill.fake_steps = 1  # fake-score updates per generator update
    c.distill.steps_per_call = 25  # updates per jitted dispatch (lax.scan)

    # Stage 1: the degradation path (shared by DisBack and the warm-started control).
    c.stage1 = ml_collections.ConfigDict()
    c.stage1.num_nodes = 5
    c.stage1.steps_per_node = 100
    c.stage1.batch_size = 256
    c.stage1.learning_rate = 1e-3

    c.schedule = ml_collections.ConfigDict()
    c.schedule.interval = 40  # fixed: generator updates per target node
    c.schedule.adaptive_max_interval = 80
    c.schedule.adaptive_min_interval = 20
    c.schedule.adaptive_ratio = 0.5
    c.schedule.adaptive_ema_decay = 0.95

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 50
    c.eval.num_samples = 2000
    c.eval.num_projections = 128
    c.eval.smooth = 3  # evaluations averaged for final values and the convergence criterion

    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    return c.lock()
