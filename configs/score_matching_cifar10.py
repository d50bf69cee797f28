"""Score matching at accelerator scale: the DDPM CIFAR-10 U-Net trained with continuous-time DSM.

Commands (one TPU VM or slice; a GPU host; several GPU hosts):

    launch/tpu_vm.sh run -- --config=configs/score_matching_cifar10.py:ddpm
    .venv/bin/python -m experiments.main --config=configs/score_matching_cifar10.py:ddpm \
        --workdir=runs/sm_cifar10
    launch/gpu_hosts.sh run host-a,host-b -- --config=configs/score_matching_cifar10.py:ddpm \
        --workdir=/shared/runs/sm_cifar10

Variants:
- `ddpm`: the DDPM CIFAR-10 network (Ho et al. 2020, App. B: 128 channels, multipliers
  (1, 2, 2, 2), 2 residual blocks per level, attention at 16x16; about 36M parameters) on the VP
  SDE with the DDPM schedule (beta 0.1 -> 20), batch 128, Adam 2e-4 with 5000 warm-up steps,
  gradient clipping at 1, EMA 0.9999, 800k steps; samples by the probability-flow ODE. DDPM's
  dropout (0.1) and horizontal flips are not applied (see Status).
- `ddpm_slice`: the same network for a TPU v4-32 slice or 4+ GPU hosts: global batch 512 and
  peak learning rate 4e-4 for 200k steps (the same number of examples), data parallel over
  every chip of every host.

Hardware and expected runtime (NOT measured here: this machine has no accelerator): DDPM reports
21 steps/s for this network at batch 128 on a TPU v3-8, i.e. about 10.6 h for 800k steps; a TPU
v4-8 or one 8-GPU A100 host should be at least as fast. `ddpm_slice` on a v4-32 (16 chips) runs
4x the examples per step; expect 4-6 h. On this 2-core CPU one step takes seconds: use
`configs/score_matching.py` instead.

Expected result: sample quality in the range DDPM reports for this network and schedule
(FID 3.17 at 800k steps with 1000-step ancestral sampling); this codebase evaluates bits/dim on
the test split and KID against test images (see the study's output), for which no accelerator run
has been recorded yet.

Status: this config is a variant of the image score-matching study
(`experiments/score_matching_images.py`, `configs/score_matching_images.py`, run here on `digits`)
with the same fields. That study has no dropout or flip field, so those two
DDPM settings are not applied. The study builds a pure data-parallel mesh
(`scorejax.train.make_mesh`); the 36M parameters fit every current accelerator, so no `model`
axis is needed. Data: prepare
CIFAR-10 once with `launch/tpu_vm.sh prepare-data cifar10`, or
`tfds build cifar10 --file_format=array_record --data_dir=...` on a machine with TensorFlow, and
point `$TFDS_DATA_DIR` (or `data.data_dir`) at it.
"""

from __future__ import annotations

import ml_collections

from configs import score_matching_images as base

VARIANTS = ("ddpm", "ddpm_slice")


def get_config(variant: str = "ddpm") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown score_matching_cifar10 variant {variant!r}; choose {VARIANTS}")
    c = base.get_config("digits_vp").unlock()

    c.data = ml_collections.ConfigDict()
    c.data.kind = "tfds"
    c.data.name = "cifar10"
    c.data.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.scale = "[-1,1]"

    c.sde.name = "vp"
    c.sde.beta_min = 0.1
    c.sde.beta_max = 20.0

    c.model = ml_collections.ConfigDict()
    c.model.kind = "unet"
    c.model.channels = 128
    c.model.channel_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.mid_attention = True
    c.model.num_heads = 1
    c.model.num_groups = 32
    c.model.fourier_scale = 16.0
    c.model.parametrization = "eps"

    c.loss.weighting = "sigma2"
    c.loss.t_min = 1e-5

    t = c.train
    t.num_steps = 800_000
    t.batch_size = 128
    t.learning_rate = 2e-4
    t.warmup_steps = 5000
    t.final_lr_fraction = 1.0  # DDPM keeps the rate constant after warm-up
    t.grad_clip = 1.0
    t.ema_decay = 0.9999
    t.ema_warmup = False
    t.steps_per_call = 10
    t.log_every = 1000
    t.checkpoint_every = 10_000
    t.keep_checkpoints = 3

    c.sampler = ml_collections.ConfigDict()
    c.sampler.name = "ode"  # ode | pc | em
    c.sampler.num_steps = 1000  # pc / em
    c.sampler.snr = 0.16
    c.sampler.n_corrector = 1
    c.sampler.t_eps = 1e-3
    c.sampler.ode_tol = 1e-5

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 10_000
    c.eval.bpd_tol = 1e-5
    c.eval.bpd_t_min = 1e-5
    c.eval.bpd_batch = 1000
    c.eval.kid_subsets = 100
    c.eval.classifier = ml_collections.ConfigDict()
    c.eval.classifier.seed = 0
    c.eval.classifier.epochs = 30
    c.eval.classifier.batch_size = 256
    c.eval.classifier.learning_rate = 1e-3
    c.eval.classifier.confidence_threshold = 0.9

    if variant == "ddpm_slice":
        t.batch_size = 512
        t.learning_rate = 4e-4
        t.num_steps = 200_000
        t.warmup_steps = 1250
        t.checkpoint_every = 2500
    return c.lock()
