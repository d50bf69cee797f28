"""Score matching on the 8x8 `digits` images with a small U-Net (VP, VE, EDM and flow matching).

Reached through the score-matching config file, whose variants `digits_vp`, `digits_ve`,
`digits_edm` and `digits_fm` return these configs:

    .venv/bin/python -m experiments.main --config=configs/score_matching.py:digits_vp \
        --workdir=runs/digits_vp
    .venv/bin/python -m experiments.main --config=configs/score_matching.py:digits_ve \
        --workdir=runs/digits_ve
    nice -n 10 .venv/bin/python -m experiments.main \
        --config=configs/score_matching.py:digits_edm --workdir=runs/digits_edm
    nice -n 10 .venv/bin/python -m experiments.main \
        --config=configs/score_matching.py:digits_fm --workdir=runs/digits_fm

Measured on the 2-core CPU machine (shared with other jobs, load average about 5; U-Net with 16
channels, 2500 steps at batch 64, about 5 min of training at 8 steps/s):

- `digits_vp`: 11.0 min wall in all. Test bits/dim 5.03 (PF-ODE, Hutchinson, 241 NFE, 119 s for
  the 359 test images); 1000 samples by the PF-ODE (193 NFE, 124 s); KID 11.1 +- 7.1 against the
  test split (the floor, the train split's own KID against the test split: -11.9 +- 4.4); confident
  rate 0.81 (train split 1.00, test split 0.97); predicted classes between 8.3% and 11.4% of the
  samples each; the classifier's test accuracy 0.983.
- `digits_ve` (sigma 0.01 -> 15): 10.0 min wall in all. Test bits/dim 4.54 (163 NFE, 75 s);
  1000 PF-ODE samples (331 NFE, 156 s); KID 53.0 +- 10.4 (train split -11.9 +- 4.4); confident
  rate 0.78 (train 1.00, test 0.97); predicted classes between 7.2% and 12.9% of the samples.
  Same budget as VP: better likelihood, worse samples by KID.
- `digits_edm`: EDM (Karras et al. 2022) with the same U-Net and budget: the EDM path
  (`sigma(t) = t`, sigma 0.002 -> 80), the U-Net as `F` inside EDM's preconditioning
  (sigma_data 0.5), the EDM loss (ln sigma ~ N(-1.2, 1.2^2)) and EDM's Heun sampler with 18 steps
  (35 NFE); bits/dim by the PF-ODE of the EDM path (prior N(0, 80^2 I)).
  NOT MEASURED YET (the machine was busy): run the command above. Expected runtime: about that
  of `digits_vp` (same network, one network call per training step), with sampling about 5x
  cheaper (35 NFE against 193); no sample quality is claimed before the run.
- `digits_fm`: flow matching (Lipman et al. 2023) with the same U-Net and budget: the linear path
  (`sde.T` 0.999, so that the PF-ODE likelihood avoids the singular `t = 1`), the U-Net
  predicting the velocity, the conditional FM loss with logit-normal t, Heun sampling with 18
  steps (35 NFE, uniform in t). NOT MEASURED YET (the machine was busy): run the command
  above; expected runtime about that of `digits_vp`, no sample quality claimed before the run.

The run is `experiments/score_matching_images.py`. KID is on the penultimate features of a small
CNN trained on the train split (not Inception features: compare runs with each other only);
"confident" is the share of samples the CNN classifies with probability >= 0.9. Both are measured
against the test split, and the train split's own values are the reference a perfect model would
reach.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("digits_vp", "digits_ve", "digits_edm", "digits_fm")


def get_config(variant: str = "digits_vp") -> ml_collections.ConfigDict:
    """The locked config of one image variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown image variant {variant!r}; choose from {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.study = "score_matching_images"
    c.seed = 0
    # Dtype policy (`scorejax.train.precision`): float32 | bfloat16 (float32 parameters, loss,
    # group norms and optimiser; bfloat16 convolutions). The docstring's measurements are
    # float32 runs.
    c.precision = "float32"

    c.data = ml_collections.ConfigDict()
    c.data.kind = "tfds"
    c.data.name = "digits"
    c.data.data_dir = ""  # empty: $TFDS_DATA_DIR or ~/tensorflow_datasets (digits builds there)
    c.data.scale = "[-1,1]"

    c.sde = ml_collections.ConfigDict()
    c.sde.name = "vp" if variant == "digits_vp" else "ve"  # vp | subvp | ve | edm | linear
    c.sde.beta_min = 0.1
    c.sde.beta_max = 20.0
    c.sde.sigma_min = 0.01
    c.sde.sigma_max = 15.0  # about the largest distance between two digits in [-1, 1]^64
    c.sde.T = 1.0  # vp, subvp, ve, linear (< 1 on the linear path for pc / em / ode / bits/dim)

    c.model = ml_collections.ConfigDict()
    c.model.kind = "unet"
    c.model.channels = 16
    c.model.channel_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (4,)
    c.model.mid_attention = True
    c.model.num_heads = 1
    c.model.num_groups = 8
    c.model.fourier_scale = 16.0
    c.model.parametrization = "eps"  # score | eps | x0 | velocity | v
    c.model.preconditioning = "none"  # none | edm | vp | ve (EDM Table 1; then parametrization x0)
    c.model.sigma_data = 0.5  # edm preconditioning and edm loss
    c.model.remat = False  # recompute the U-Net blocks' activations in the backward pass

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "dsm"  # dsm | edm | fm
    c.loss.weighting = "sigma2"  # dsm
    c.loss.t_min = 1e-5  # dsm
    c.loss.p_mean = -1.2  # edm
    c.loss.p_std = 1.2
    c.loss.time_dist = "logit_normal"  # fm: logit_normal | uniform
    c.loss.logit_mean = 0.0
    c.loss.logit_std = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2500
    c.train.batch_size = 64
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 100
    c.train.final_lr_fraction = 0.05
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.999
    c.train.ema_warmup = True
    c.train.steps_per_call = 1  # a lax.scan over U-Net steps ran far slower on this CPU
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2

    c.sampler = ml_collections.ConfigDict()
    c.sampler.name = "ode"  # ode | pc | em | edm_heun | edm_stochastic | fm_euler | fm_heun
    c.sampler.num_steps = 500  # pc / em / edm_* / fm_*
    c.sampler.snr = 0.16
    c.sampler.n_corrector = 1
    c.sampler.t_eps = 1e-3
    c.sampler.ode_tol = 1e-4
    c.sampler.sigma_min = 0.002  # edm_*: EDM time steps (eq. 5)
    c.sampler.sigma_max = 80.0
    c.sampler.rho = 7.0
    c.sampler.s_churn = 40.0  # edm_stochastic (Algorithm 2; EDM's ImageNet-64 settings)
    c.sampler.s_tmin = 0.05
    c.sampler.s_tmax = 50.0
    c.sampler.s_noise = 1.003

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 1000
    c.eval.bpd_tol = 1e-4
    c.eval.bpd_t_min = 1e-5
    c.eval.bpd_batch = 359
    c.eval.kid_subsets = 50
    c.eval.classifier = ml_collections.ConfigDict()
    c.eval.classifier.seed = 0
    c.eval.classifier.epochs = 40
    c.eval.classifier.batch_size = 64
    c.eval.classifier.learning_rate = 1e-3
    c.eval.classifier.confidence_threshold = 0.9

    if variant == "digits_edm":
        c.sde.name = "edm"
        c.sde.sigma_min = 0.002
        c.sde.sigma_max = 80.0
        c.model.preconditioning = "edm"
        c.model.parametrization = "x0"
        c.loss.name = "edm"
        c.sampler.name = "edm_heun"
        c.sampler.num_steps = 18  # 35 NFE
    if variant == "digits_fm":
        c.sde.name = "linear"
        c.sde.T = 0.999
        c.model.parametrization = "velocity"
        c.loss.name = "fm"
        c.sampler.name = "fm_heun"
        c.sampler.num_steps = 18  # 35 NFE
    return c.lock()
