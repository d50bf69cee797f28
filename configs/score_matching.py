"""Score matching on 2-D toys: DSM training of a time-conditioned MLP, PC sampling, exact checks.

Command (variants `gmm8` (default), `grid`, `checkerboard`; images: `digits_vp`, `digits_ve`):

    .venv/bin/python -m experiments.main --config=configs/score_matching.py:gmm8 \
        --workdir=runs/gmm8 [--config.train.num_steps=...]

Measured on the 2-core CPU machine (shared with other jobs, so wall times vary by ~2x):

- `gmm8` (`make demo`, first stage; 6000 steps, then 3 x 3000 PC samples): 74 s wall on the
  idle machine, 197 s (146 s CPU) at load average 4-7. Samples' MMD^2 0.0013 against the
  exact-score sampler's 0.0012
  (two true sample sets: -0.0005), largest mode-weight error 0.010 (exact-score sampler 0.013),
  off-mode fraction 0.3%, sliced W2 0.149 (exact 0.154, null 0.105). An earlier run of the same
  config at load ~18 took 16 min and gave MMD^2 0.0014 (exact 0.0010).
- `grid` (10000 steps): resumed from its step-2000 checkpoint, the last 8000 steps and the
  evaluation took 11.7 min wall at load ~5 (about 15 steps/s). Samples' MMD^2 0.0011 against the
  exact-score sampler's -0.0003 (null -0.00002); largest mode-weight error 0.015 (exact 0.008);
  off-mode fraction 8.2% (exact 0.03%): the model leaves faint bridges between the 25 modes;
  sliced W2 0.074 (exact 0.058, null 0.058).
- `checkerboard` (10000 steps; no exact score, so no exact-score sampler): 10.8 min wall
  (197 s CPU) at load ~5. Samples' MMD^2 -0.0006 against the null level of two true sample sets
  -0.0007 (indistinguishable at 3000 samples); energy distance -0.0008 (null -0.0015); sliced W2
  0.077 (null 0.061).
- `digits_vp`, `digits_ve`: the U-Net on the 8x8 `digits` images, run by
  `experiments/score_matching_images.py`; command, runtime and results in
  `configs/score_matching_images.py`.

MMD^2 is the unbiased RBF-kernel estimate (bandwidths 0.25..4 x the median distance of two true
sample sets) between samples and fresh true samples; "null" is the same statistic between two
independent true sample sets, i.e. the noise floor of the estimate.
"""

from __future__ import annotations

import ml_collections

TOY_VARIANTS = ("gmm8", "grid", "checkerboard")
IMAGE_VARIANTS = ("digits_vp", "digits_ve")  # configs/score_matching_images.py
VARIANTS = TOY_VARIANTS + IMAGE_VARIANTS


def get_config(variant: str = "gmm8") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown score_matching variant {variant!r}; choose from {VARIANTS}")
    if variant in IMAGE_VARIANTS:
        from configs import score_matching_images

        return score_matching_images.get_config(variant)
    c = ml_collections.ConfigDict()
    c.study = "score_matching"
    c.seed = 0

    # `kind` selects the data source; only 2-D toys ("toy") exist so far.
    c.data = ml_collections.ConfigDict()
    c.data.kind = "toy"
    c.data.name = {"gmm8": "ring8", "grid": "grid25", "checkerboard": "checkerboard"}[variant]

    c.sde = ml_collections.ConfigDict()
    c.sde.name = "vp"  # vp | subvp | ve
    c.sde.beta_min = 0.1
    c.sde.beta_max = 20.0
    c.sde.sigma_min = 0.01  # ve only
    c.sde.sigma_max = 10.0  # ve only: about the largest distance between data points

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"
    c.model.data_dim = 2  # must equal the data's dimension
    c.model.hidden_sizes = (256, 256, 256)
    c.model.time_embedding = "fourier"
    c.model.embed_dim = 64
    c.model.fourier_scale = 16.0
    c.model.parametrization = "eps"  # score | eps | x0: what the network outputs

    c.loss = ml_collections.ConfigDict()
    c.loss.weighting = "sigma2"  # sigma2 | likelihood
    c.loss.t_min = 1e-5

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 6000
    c.train.batch_size = 512
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 200
    c.train.final_lr_fraction = 0.05  # cosine decay to this fraction of the peak rate
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.999
    c.train.ema_warmup = True  # decay min(0.999, (1 + n) / (10 + n)) at update n
    c.train.steps_per_call = 25  # updates per jitted dispatch (lax.scan)
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 2

    c.sampler = ml_collections.ConfigDict()
    c.sampler.name = "pc"  # pc | em
    c.sampler.num_steps = 250
    c.sampler.snr = 0.16
    c.sampler.n_corrector = 1
    c.sampler.t_eps = 1e-3

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 3000
    c.eval.num_time_bins = 10
    c.eval.points_per_bin = 4096
    c.eval.num_projections = 256  # sliced Wasserstein directions

    if variant == "grid":
        c.train.num_steps = 10000
    if variant == "checkerboard":
        c.train.num_steps = 10000
    return c.lock()
