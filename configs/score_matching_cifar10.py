"""Score matching at accelerator scale: the DDPM CIFAR-10 U-Net trained with continuous-time DSM.

Commands (one TPU VM or slice; a GPU host; several GPU hosts):

    launch/tpu_vm.sh run -- --config=configs/score_matching_cifar10.py:ddpm
    .venv/bin/python -m experiments.main --config=configs/score_matching_cifar10.py:ddpm \
        --workdir=runs/sm_cifar10
    launch/gpu_hosts.sh run host-a,host-b -- --config=configs/score_matching_cifar10.py:ddpm \
        --workdir=/shared/runs/sm_cifar10

Variants:
- `ddpm`: the DDPM CIFAR-10 network (Ho et al. 2020, App. B: 128 channels, multipliers
  (1, 2, 2, 2), 2 residual blocks per level, attention at 16x16, dropout 0.1; about 36M
  parameters) on the VP SDE with the DDPM schedule (beta 0.1 -> 20), batch 128, Adam 2e-4 with
  5000 warm-up steps, gradient clipping at 1, EMA 0.9999, 800k steps, horizontal flips.
- `ddpm_slice`: the same network for a TPU v4-32 slice or 4+ GPU hosts: global batch 512 and
  peak learning rate 4e-4 for 200k steps (the same number of examples), data parallel over
  every chip of every host.
- `wide_fsdp`: 256 channels (about 4x the parameters) with its large tensors split over a
  `model` mesh axis of 4 (`mesh.model`, FSDP-style; see `scorejax.train.partitioning`), for chips
  whose memory does not hold four copies of state and activations.

Hardware and expected runtime (NOT measured here: this machine has no accelerator): DDPM reports
21 steps/s for this network at batch 128 on a TPU v3-8, i.e. about 10.6 h for 800k steps; a TPU
v4-8 or one 8-GPU A100 host should be at least as fast. `ddpm_slice` on a v4-32 (16 chips) runs
4x the examples per step; expect 4-6 h. On this 2-core CPU one step takes seconds: use
`configs/score_matching.py` instead.

Expected result: sample quality in the range DDPM reports for this network and schedule
(FID 3.17 at 800k steps with 1000-step ancestral sampling); this codebase evaluates bits/dim on
the test split and KID against test images (see the study's output), for which no accelerator run
has been recorded yet.

Status: `experiments/score_matching.py` currently trains on 2-D toys only; this config uses the
image fields (`data.kind = "image"`, `model.kind = "unet"`) that its image support will read
(issue 3; the U-Net is `scorejax.models.unet.UNet`, whose attribute names the `model` block uses).
Data: prepare CIFAR-10 once with `launch/tpu_vm.sh prepare-data cifar10`, or
`tfds build cifar10 --file_format=array_record --data_dir=...` on a machine with TensorFlow, and
point `$TFDS_DATA_DIR` (or `data.data_dir`) at it.
"""

from __future__ import annotations

import ml_collections

from configs import score_matching as base

VARIANTS = ("ddpm", "ddpm_slice", "wide_fsdp")


def get_config(variant: str = "ddpm") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown score_matching_cifar10 variant {variant!r}; choose {VARIANTS}")
    # The SDE, loss, optimiser, sampler and checkpoint fields are the toy study's; data, model
    # and evaluation are replaced by their image counterparts.
    c = base.get_config("gmm8").unlock()

    c.data = ml_collections.ConfigDict()
    c.data.kind = "image"
    c.data.name = "cifar10"
    c.data.split = "train"
    c.data.eval_split = "test"
    c.data.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.scale = "[-1,1]"
    c.data.random_flip = True
    c.data.in_memory = True  # 50k x 32x32x3 uint8 = 150 MB per host

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
    c.model.dropout = 0.1
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

    c.sampler.name = "em"  # reverse-SDE Euler-Maruyama, 1000 steps (DDPM-like)
    c.sampler.num_steps = 1000
    c.sampler.n_corrector = 0
    c.sampler.t_eps = 1e-3

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 10_000  # KID against the 10k test images
    c.eval.sample_batch = 1000
    c.eval.num_bpd_examples = 10_000  # test images for bits/dim (probability-flow ODE)
    c.eval.hutchinson_samples = 1

    # Device mesh (scorejax.train.partitioning): batch over `data`; parameters with at least
    # `fsdp_min_size` elements split over `model`.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.model = 1
    c.mesh.fsdp_min_size = 2**18

    if variant == "ddpm_slice":
        t.batch_size = 512
        t.learning_rate = 4e-4
        t.num_steps = 200_000
        t.warmup_steps = 1250
        t.checkpoint_every = 2500
    if variant == "wide_fsdp":
        c.model.channels = 256
        c.mesh.model = 4
    return c.lock()
