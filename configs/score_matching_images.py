"""Score matching on the 8x8 `digits` images with a small U-Net (VP and VE SDEs).

Reached through the score-matching config file, whose variants `digits_vp` and `digits_ve` return
these configs:

    .venv/bin/python -m experiments.main --config=configs/score_matching.py:digits_vp \
        --workdir=runs/digits_vp
    .venv/bin/python -m experiments.main --config=configs/score_matching.py:digits_ve \
        --workdir=runs/digits_ve

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

The run is `experiments/score_matching_images.py`. KID is on the penultimate features of a small
CNN trained on the train split (not Inception features: compare runs with each other only);
"confident" is the share of samples the CNN classifies with probability >= 0.9. Both are measured
against the test split, and the train split's own values are the reference a perfect model would
reach.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("digits_vp", "digits_ve")


def get_config(variant: str = "digits_vp") -> ml_collections.ConfigDict:
    """The locked config of one image variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown image variant {variant!r}; choose from {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.study = "score_matching_images"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.kind = "tfds"
    c.data.name = "digits"
    c.data.data_dir = ""  # empty: $TFDS_DATA_DIR or ~/tensorflow_datasets (digits builds there)
    c.data.scale = "[-1,1]"

    c.sde = ml_collections.ConfigDict()
    c.sde.name = "vp" if variant == "digits_vp" else "ve"
    c.sde.beta_min = 0.1
    c.sde.beta_max = 20.0
    c.sde.sigma_min = 0.01
    c.sde.sigma_max = 15.0  # about the largest distance between two digits in [-1, 1]^64

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
    c.model.parametrization = "eps"

    c.loss = ml_collections.ConfigDict()
    c.loss.weighting = "sigma2"
    c.loss.t_min = 1e-5

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
    c.sampler.name = "ode"  # ode | pc | em
    c.sampler.num_steps = 500  # pc / em
    c.sampler.snr = 0.16
    c.sampler.n_corrector = 1
    c.sampler.t_eps = 1e-3
    c.sampler.ode_tol = 1e-4

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
    return c.lock()
