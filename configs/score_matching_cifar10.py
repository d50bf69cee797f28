"""Score matching at accelerator scale: DDPM's CIFAR-10 U-Net with DSM, and EDM's CIFAR-10 recipe.

Commands (one TPU VM or slice; a GPU host; several GPU hosts):

    launch/tpu_vm.sh run -- --config=configs/score_matching_cifar10.py:ddpm
    .venv/bin/python -m experiments.main --config=configs/score_matching_cifar10.py:ddpm \
        --workdir=runs/sm_cifar10
    launch/gpu_hosts.sh run host-a,host-b -- --config=configs/score_matching_cifar10.py:ddpm \
        --workdir=/shared/runs/sm_cifar10
    .venv/bin/python -m experiments.main --config=configs/score_matching_cifar10.py:edm \
        --workdir=runs/edm_cifar10

Variants:
- `ddpm`: the DDPM CIFAR-10 network (Ho et al. 2020, App. B: 128 channels, multipliers
  (1, 2, 2, 2), 2 residual blocks per level, attention at 16x16; about 36M parameters) on the VP
  SDE with the DDPM schedule (beta 0.1 -> 20), batch 128, Adam 2e-4 with 5000 warm-up steps,
  gradient clipping at 1, EMA 0.9999, 800k steps; samples by the probability-flow ODE. DDPM's
  dropout (0.1) and horizontal flips are not applied (see Status).
- `ddpm_slice`: the same network for a TPU v4-32 slice or 4+ GPU hosts: global batch 512 and
  peak learning rate 4e-4 for 200k steps (the same number of examples), data parallel over
  every chip of every host.
- `edm`: EDM's unconditional CIFAR-10 recipe (Karras et al. 2022, Table 1 "Ours" and the
  `--arch=ddpmpp --precond=edm` training of NVlabs/edm): the EDM path (sigma 0.002 -> 80), EDM
  preconditioning with sigma_data 0.5 around a DDPM++-sized U-Net (128 channels, multipliers
  (2, 2, 2), 4 residual blocks per level, attention at 16x16; 53.6M parameters against DDPM++'s
  55.7M), the EDM loss (ln sigma ~ N(-1.2, 1.2^2), weight (sigma^2 + 0.25) / (0.5 sigma)^2),
  batch 512, Adam 1e-3 (betas 0.9, 0.999, eps 1e-8) ramped up linearly over 10M images (19,531
  steps) then constant, no gradient clipping, EMA half-life 0.5M images (decay 0.99929 per step),
  200M images (390,625 steps); samples by EDM's Heun sampler with 18 steps (35 NFE, rho 7).
  What `scorejax.models.unet.UNet` and this study do not reproduce of DDPM++ / EDM: (1) dropout
  0.13 (the UNet has it, but the study's train step passes no dropout key); (2) EDM's non-leaky
  augmentation (probability 0.12, with the 9 augmentation parameters as extra conditioning);
  (3) DDPM++'s positional embedding of c_noise (here Gaussian Fourier features, scale 16, as in
  EDM's NCSN++); (4) resampling by the [1, 1] FIR filter inside residual blocks (here a strided
  3x3 conv down and nearest + 3x3 conv up between levels); (5) EDM's EMA ramp-up (half-life
  capped at 5% of the images seen; here decay min(0.99929, (1 + n) / (10 + n))).

Hardware and expected runtime (NOT measured here: this machine has no accelerator): DDPM reports
21 steps/s for this network at batch 128 on a TPU v3-8, i.e. about 10.6 h for 800k steps; a TPU
v4-8 or one 8-GPU A100 host should be at least as fast. `ddpm_slice` on a v4-32 (16 chips) runs
4x the examples per step; expect 4-6 h. On this 2-core CPU one step takes seconds: use
`configs/score_matching.py` instead.

Expected result: sample quality in the range DDPM reports for this network and schedule
(FID 3.17 at 800k steps with 1000-step ancestral sampling); this codebase evaluates bits/dim on
the test split and KID against test images (see the study's output), for which no accelerator run
has been recorded yet.

`edm` hardware and runtime (NOT measured here): EDM trained its CIFAR-10 DDPM++ models in about
2 days on 8 V100 GPUs (NVlabs/edm README) at this batch and duration; this network has their
layout and about their size (53.6M against 55.7M parameters), so expect about 2 days on 8
V100s, about 1 day on one 8-GPU A100 host or a TPU v4-8 slice, and proportionally less on
`launch/gpu_hosts.sh` with more hosts (keep the global batch at 512). Sampling at 35 NFE takes
minutes on any of these (`eval.num_samples` 10k, as `ddpm`; FID needs 50k).
Expected result: EDM reports FID 1.97 unconditional VP (1.79 class-conditional) at 35 NFE with
their DDPM++ and augmentation. This model is the same size and gets the same loss, sampler and
optimiser, but no dropout and no augmentation: on 50k training images seen 4000 times, EDM's
augmentation is what keeps the 56M-parameter network from overfitting (their Table 2 gains
from it), so expect a worse FID, roughly 2.5-3.5, that may rise again late in training;
evaluate FID on intermediate checkpoints (an Inception FID needs an external tool: the study
itself reports test bits/dim on the EDM path and KID on its own CNN's features).

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

VARIANTS = ("ddpm", "ddpm_slice", "edm")


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
    c.model.preconditioning = "none"
    c.model.sigma_data = 0.5
    c.model.remat = False  # True: lower activation memory for about one more forward pass

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
    c.sampler.sigma_min = 0.002
    c.sampler.sigma_max = 80.0
    c.sampler.rho = 7.0
    c.sampler.s_churn = 40.0
    c.sampler.s_tmin = 0.05
    c.sampler.s_tmax = 50.0
    c.sampler.s_noise = 1.003

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
    if variant == "edm":
        c.sde.name = "edm"
        c.sde.sigma_min = 0.002
        c.sde.sigma_max = 80.0
        c.model.channel_mult = (2, 2, 2)
        c.model.num_res_blocks = 4
        c.model.preconditioning = "edm"
        c.model.parametrization = "x0"
        c.model.sigma_data = 0.5
        c.loss.name = "edm"
        c.loss.p_mean = -1.2
        c.loss.p_std = 1.2
        t.batch_size = 512
        t.learning_rate = 1e-3
        t.warmup_steps = 19_531  # 10M images
        t.num_steps = 390_625  # 200M images
        t.grad_clip = 1e9  # EDM does not clip gradients
        t.ema_decay = 0.99929  # half-life 0.5M images = 977 steps of 512
        t.ema_warmup = True
        t.steps_per_call = 5
        t.checkpoint_every = 10_000
        c.sampler.name = "edm_heun"
        c.sampler.num_steps = 18  # 35 NFE, sigma 80 -> 0.002, rho 7
    return c.lock()
