"""Score matching on 2-D toys: a time-conditioned MLP on a Gaussian path, sampling, exact checks.

Command (variants `gmm8` (default), `grid`, `checkerboard`, `gmm8_edm`, `gmm8_fm`; images:
`digits_vp`, `digits_ve`, `digits_edm`, `digits_fm`):

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
- `gmm8_edm`: EDM (Karras et al. 2022) on the same ring and MLP, same training budget: the EDM
  path (`sigma(t) = t`), the MLP as `F` inside the EDM preconditioning (sigma_data 1.4, the ring's
  per-coordinate std sqrt(2.01)), the EDM loss (ln sigma ~ N(-1.2, 1.2^2)), and EDM's Heun
  sampler with 18 steps (35 NFE, sigma 80 -> 0.002, rho 7).
  Measured (6000 steps, then 3 x 3000 Heun samples): 41 s wall on the otherwise idle machine (right
  after another benchmark); 2.8 min (60 s CPU) at load average 7-10. Same figures. Samples' MMD^2
  -0.00003 against the exact-denoiser Heun sampler's 0.00001 (two true sample sets: -0.0005): both
  at the noise floor; largest mode-weight error 0.011 (exact 0.011), off-mode fraction 1.0% (exact
  0.3%), sliced W2 0.115 (exact 0.121, null 0.105). Final EDM loss 1.116 against the exact
  denoiser's 1.112. Relative score error below 0.02 for sigma in [0.017, 80] but 13 in the lowest
  bin, sigma in [0.002, 0.006], which ln sigma ~ N(-1.2, 1.2^2) almost never trains (3.3 std below
  the mean) and the sampler's last, tiny steps hardly use.
- `gmm8_fm`: flow matching (Lipman et al. 2023) on the same ring and MLP, same training budget:
  the linear path `x_t = (1 - t) x_0 + t eps` (`sde.T` 0.999 so that the PC/EM/ODE samplers and
  the score error can use it too), the MLP predicting the velocity, the conditional FM loss with
  logit-normal t, and Heun sampling with 18 steps (35 NFE, uniform in t).
  Measured (6000 steps, then 3 x 3000 Heun samples): 3.4 min wall (57 s CPU) at load average
  9-10.5 (mean 10.1). Samples' MMD^2 -0.0007 against the exact-velocity Heun sampler's -0.0008
  (null -0.0005): both at the noise floor; largest mode-weight error 0.008 (exact 0.009),
  off-mode fraction 0.9% (exact 0.03%), sliced W2 0.086 (exact 0.084, null 0.105). Final FM loss
  3.88 against the exact velocity's 3.83. Relative score error (the velocity converted to the
  score) below 0.01 for t >= 0.06, where the sampler evaluates it, but large below t = 0.03
  (10^4 at t = 0.001): logit-normal t puts 2e-4 of its mass there, and the conversion
  s = -(x + (1 - t) v) / t divides the velocity error by t.
- `digits_vp`, `digits_ve`, `digits_edm`, `digits_fm`: the U-Net on the 8x8 `digits` images, run
  by `experiments/score_matching_images.py`; command, runtime and results in
  `configs/score_matching_images.py`.

All variants are one study: the path (`sde.name`: vp | subvp | ve | edm | linear), what the
network predicts (`model.parametrization`: score | eps | x0 | velocity | v, or
`model.preconditioning`: edm | vp | ve, EDM Table 1), the loss (`loss.name`: dsm | edm | fm) and
the sampler (`sampler.name`: pc | em | ode | edm_heun | edm_stochastic | fm_euler | fm_heun) are
config fields; their defaults are the 2021 setup of `gmm8`. Evaluation converts every model to
the score, EDM denoiser or velocity its sampler needs, and drives the same sampler with the exact
mixture for the reference.

MMD^2 is the unbiased RBF-kernel estimate (bandwidths 0.25..4 x the median distance of two true
sample sets) between samples and fresh true samples; "null" is the same statistic between two
independent true sample sets, i.e. the noise floor of the estimate.
"""

from __future__ import annotations

import ml_collections

TOY_VARIANTS = ("gmm8", "grid", "checkerboard", "gmm8_edm", "gmm8_fm")
IMAGE_VARIANTS = ("digits_vp", "digits_ve", "digits_edm", "digits_fm")  # score_matching_images.py
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
    # Dtype policy (`scorejax.train.precision`): float32 | bfloat16 (float32 parameters, loss
    # and optimiser; bfloat16 matmuls). The docstring's measurements are float32 runs.
    c.precision = "float32"

    # `kind` selects the data source; only 2-D toys ("toy") exist so far.
    c.data = ml_collections.ConfigDict()
    c.data.kind = "toy"
    c.data.name = {"grid": "grid25", "checkerboard": "checkerboard"}.get(variant, "ring8")

    c.sde = ml_collections.ConfigDict()
    c.sde.name = "vp"  # vp | subvp | ve | edm | linear
    c.sde.beta_min = 0.1
    c.sde.beta_max = 20.0
    c.sde.sigma_min = 0.01  # ve only
    c.sde.sigma_max = 10.0  # ve: about the largest distance between data points; edm: T
    c.sde.T = 1.0  # vp, subvp, ve, linear (< 1 for pc / em / ode on the linear path)

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlp"
    c.model.data_dim = 2  # must equal the data's dimension
    c.model.hidden_sizes = (256, 256, 256)
    c.model.time_embedding = "fourier"
    c.model.embed_dim = 64
    c.model.fourier_scale = 16.0
    c.model.parametrization = "eps"  # score | eps | x0 | velocity | v: what the network outputs
    c.model.preconditioning = "none"  # none | edm | vp | ve (EDM Table 1; then parametrization x0)
    c.model.sigma_data = 0.5  # the edm preconditioning's and the edm loss's sigma_data

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "dsm"  # dsm | edm | fm
    c.loss.weighting = "sigma2"  # dsm: sigma2 | likelihood
    c.loss.t_min = 1e-5  # dsm's smallest t; also where the score-error bins start
    c.loss.p_mean = -1.2  # edm: ln sigma ~ N(p_mean, p_std^2)
    c.loss.p_std = 1.2
    c.loss.time_dist = "logit_normal"  # fm: logit_normal | uniform
    c.loss.logit_mean = 0.0
    c.loss.logit_std = 1.0

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
    c.sampler.name = "pc"  # pc | em | ode | edm_heun | edm_stochastic | fm_euler | fm_heun
    c.sampler.num_steps = 250
    c.sampler.snr = 0.16  # pc
    c.sampler.n_corrector = 1  # pc
    c.sampler.t_eps = 1e-3  # pc, em, ode
    c.sampler.ode_tol = 1e-5  # ode: rtol = atol of Tsit5
    c.sampler.sigma_min = 0.002  # edm_*: EDM time steps (eq. 5)
    c.sampler.sigma_max = 80.0
    c.sampler.rho = 7.0
    c.sampler.s_churn = 40.0  # edm_stochastic (Algorithm 2; EDM's ImageNet-64 settings)
    c.sampler.s_tmin = 0.05
    c.sampler.s_tmax = 50.0
    c.sampler.s_noise = 1.003

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 3000
    c.eval.num_time_bins = 10
    c.eval.points_per_bin = 4096
    c.eval.num_projections = 256  # sliced Wasserstein directions

    if variant == "grid":
        c.train.num_steps = 10000
    if variant == "checkerboard":
        c.train.num_steps = 10000
    if variant == "gmm8_edm":
        c.sde.name = "edm"
        c.sde.sigma_min = 0.002
        c.sde.sigma_max = 80.0
        c.model.preconditioning = "edm"
        c.model.parametrization = "x0"
        c.model.sigma_data = 1.4  # the ring's per-coordinate std, sqrt(2 + 0.1^2)
        c.loss.name = "edm"
        c.loss.t_min = 0.002  # the score-error bins span sigma in [0.002, 80]
        c.sampler.name = "edm_heun"
        c.sampler.num_steps = 18  # 35 NFE
    if variant == "gmm8_fm":
        c.sde.name = "linear"
        c.sde.T = 0.999
        c.model.parametrization = "velocity"
        c.loss.name = "fm"
        c.loss.t_min = 1e-3  # the score-error bins span t in [1e-3, 0.999]
        c.sampler.name = "fm_heun"
        c.sampler.num_steps = 18  # 35 NFE
    return c.lock()
