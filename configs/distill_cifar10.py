"""One-step distillation at accelerator scale: Diff-Instruct against DisBack on CIFAR-10.

Command (after a finished `configs/score_matching_cifar10.py:ddpm` run, the teacher):

    launch/tpu_vm.sh run -- --config=configs/distill_cifar10.py:cifar10 \
        --config.teacher.workdir=$HOME/bucket/runs/score_matching_cifar10_ddpm
    .venv/bin/python -m experiments.main --config=configs/distill_cifar10.py:cifar10 \
        --workdir=runs/distill_cifar10 --config.teacher.workdir=runs/sm_cifar10

The teacher is the EMA network of the CIFAR-10 score-matching run; the one-step generator is the
teacher's denoiser at `generator.t_init` (initialised from the teacher), as in Diff-Instruct's
CIFAR-10 example, and the fake score starts from the teacher as well. Methods, stage 1 (the
degradation path) and the backtracking schedule mean what they mean in `configs/distill.py`;
all methods share the seed, the initial generator and its batches.

Hyper-parameters follow Diff-Instruct's CIFAR-10 example as recorded in
`../shared/notes/disback.md` (Adam beta = (0, 0.999), learning rate 1e-5 for generator and fake
score, batch 128, log-normal noise levels with mean -1.2 and std 1.2), with the DisBack
release's 5 fake-score updates per generator update (as in the toy study); DisBack's own CIFAR-10
settings were not released, so stage 1 and the schedule scale the toy study's (20k stage-1
updates at lr 1e-6 probed every 500, 8 nodes evenly spaced in the score distance to the teacher,
fixed interval) to 100k generator updates.

Hardware and expected runtime (NOT measured here: no accelerator): every generator update costs
about three forward and two backward passes of the 36M-parameter U-Net at batch 128 (teacher,
fake score and generator) plus 5 fake-score updates (one forward and backward each), so roughly
8x a teacher training step: about 2.5 updates/s on a TPU v4-8 or an 8-GPU host by DDPM's 21
training steps/s on a v3-8, i.e. about 11 h per method for 100k updates plus about 20 min of
stage 1; the methods (four score-distillation plans and consistency distillation) run one after
another (about 45 h for the four; consistency distillation's stage 2 took a fifth of
Diff-Instruct's time on the toys, no fake score to train).

Expected result: Diff-Instruct reports FID <= 4.5 for one-step CIFAR-10 generation from an EDM
teacher (its README); DisBack claims faster convergence than that baseline at equal generator
updates. This codebase reports FID-free sample metrics (KID against test images) per method
against generator updates; no accelerator run has been recorded yet.

Status: runnable. It is the image path of `experiments/distill/` that runs here, at small
scale, as `configs/distill.py:digits` (this config starts from that variant and changes data,
teacher and budget): U-Net teacher loaded from the score-matching run (or trained on the fly
with `configs/score_matching_cifar10.py:<teacher.variant>` when `teacher.workdir` is empty), a
one-step U-Net generator, and KID / confident rate on the features of the teacher study's small
CNN classifier (trained once on the train split). Data: CIFAR-10 prepared as for the teacher
(`launch/tpu_vm.sh prepare-data cifar10`).
"""

from __future__ import annotations

import ml_collections

from configs import distill as base

VARIANTS = ("cifar10",)


def get_config(variant: str = "cifar10") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown distill_cifar10 variant {variant!r}; choose from {VARIANTS}")
    c = base.get_config("digits").unlock()

    c.data.name = "cifar10"
    # `precision` stays the digits config's float32; --config.precision=bfloat16 runs the teacher,
    # fake-score and generator U-Nets' matmuls in bfloat16 (float32 parameters and losses).
    c.data.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets

    # The workdir of a finished configs/score_matching_cifar10.py run; when empty, that run
    # (800k steps) is trained first into <workdir>/teacher.
    c.teacher.workdir = ""
    c.teacher.config_module = "score_matching_cifar10"
    c.teacher.variant = "ddpm"
    c.teacher.num_steps = 800_000

    c.generator.kind = "denoiser"
    c.generator.init = "teacher"
    c.generator.t_init = 0.5

    d = c.distill
    d.num_steps = 100_000
    d.batch_size = 128
    d.weighting = "diff_instruct"
    d.time_dist = "log_nsr_normal"
    d.log_nsr_mean = -1.2
    d.log_nsr_std = 1.2
    d.gen_lr = 1e-5
    d.fake_lr = 1e-5
    d.gen_ema = 0.999
    d.adam_b1 = 0.0
    d.adam_b2 = 0.999
    d.grad_clip = 10.0
    d.fake_steps = 5
    d.steps_per_call = 10
    d.head_start = 50_000

    c.stage1.num_nodes = 8
    c.stage1.num_steps = 20_000
    c.stage1.probe_every = 500
    c.stage1.probe_samples = 1024
    c.stage1.batch_size = 128
    c.stage1.learning_rate = 1e-6

    c.schedule.interval = 4000
    c.schedule.adaptive_max_interval = 8000
    c.schedule.adaptive_min_interval = 2000

    c.eval.every = 5000
    c.eval.num_samples = 10_000
    c.eval.smooth = 3

    c.checkpoint_every = 5000
    c.keep_checkpoints = 2
    return c.lock()
