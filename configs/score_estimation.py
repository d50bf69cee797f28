"""Han, Razaviyayn & Xu's score-estimation study on a 2-D Gaussian mixture (8 modes on a circle).

Command (variants `default`, `quick`):

    .venv/bin/python -m experiments.main --config=configs/score_estimation.py:default \
        --workdir=runs/score_estimation

Measured on the 2-core CPU machine (shared, load average 5-8): `default` 6.0 min wall (225 s
CPU) from an empty workdir; a finished run only replots (about 25 s). Results (`summary.json`;
errors are test sigma-weighted score errors `E sigma_t^2 ||s - s*||^2` over t ~ U[0.05, 1],
mean of 2 seeds):

| n | best k | error at best k | validation-stopped k (error) | RWY k (error) | k = 1e8 | k = 1 |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| 128 | 178 | 0.181 | 133 (0.181) | 0 (5.00) | 0.481 | 3.36 |
| 256 | 237 | 0.089 | 178 (0.095) | 1.3 (3.03) | 0.282 | 3.41 |
| 512 | 237 | 0.065 | 237 (0.065) | 2.1 (2.44) | 0.242 | 3.44 |
| 1024 | 237 | 0.055 | 237 (0.055) | 3.1 (1.97) | 0.219 | 3.48 |
| 2048 | 316 | 0.046 | 316 (0.046) | 5.1 (1.45) | 0.189 | 3.54 |

- U-shape in k at every n; over-training to the interpolating limit costs 2.7-4x the
  early-stopped error. Log-log slope of the early-stopped error against n: -0.47 (validation
  rule -0.48; unweighted score error -0.50; denoiser error -0.68), against -0.63 predicted by
  `-beta / (beta + 1)` from the Gram spectrum's decay (beta falls from 2.0 to 1.5 as n grows).
- The hold-out rule (noisy x0 labels) lands on the best step; the Raskutti-Wainwright-Yu rule
  with the oracle label-noise level (1.19 per coordinate) stops after 0-5 steps, 28-34x worse
  than the best: as reconstructed here it is far too conservative (not reproduced). Positive
  control (`kernel.control_noise`; same inputs and kernel, a target of RKHS norm 1): at label
  noise 0.05 the rule's error is 1.06-1.37x the best step's at every n, at 0.2 1.3-1.6x for
  n >= 256, at the denoiser labels' 1.2 it stops after 0-5 steps (2.4-6.4x). The denoiser
  target's RKHS norm (GD on the exact labels at the best step) is 5.1-6.2, while the rule's
  guarantee assumes at most 1: the study is outside the rule's setting on both counts. Re-run
  with the control: 2 min 44 s at load 2-5, the same table.
- Network vs kernel (n = 128, widths 128..8192, 3000 GD steps at the kernel's step size):
  relative weight movement 1.46, 0.67, 0.34, 0.18 (slope -0.50 in m, as predicted). The relative
  gap between network and NTK predictions falls like m^-0.42 for the first ~100 steps (0.093,
  0.074, 0.032, 0.017 at step 37), but the slope decays to -0.07 by step 3000 (gaps 0.40..0.30):
  at these widths the network fits the small-eigenvalue directions much more slowly than the
  kernel (train MSE 1.8 vs 0.24 at step 3000), so the kernel path describes early training only.
- End to end (n = 1024, Euler-Maruyama, 500 steps to t0 = 0.05, 2000 samples; MMD^2 against
  fresh p_t0 samples, null -0.0006): exact score 0.0004, early-stopped (k = 237) 0.036,
  over-trained (k = 1e8) 0.043; mode-weight TV 0.018 / 0.139 / 0.197. Mean distance of the
  denoised samples to the nearest training point: exact 0.052, early 0.080, over-trained 0.068
  (fresh data: 0.055): over-training moves samples towards training points, but with one noise
  draw per example no copying appears.

`quick`: a smaller configuration (not timed); the test shrinks it further.

What it computes is described in `experiments/score_estimation/__init__.py`.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("default", "quick")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown score_estimation variant {variant!r}; choose from {VARIANTS}")
    quick = variant == "quick"
    c = ml_collections.ConfigDict()
    c.study = "score_estimation"
    c.seed = 0
    # Dtype policy of the trained networks of parts 1-2 (`scorejax.train.precision`): float32 |
    # bfloat16 (float32 weights, loss and GD; bfloat16 matmuls). The kernel parts are float64
    # whatever it says. The docstring's results are float32.
    c.precision = "float32"

    c.target = ml_collections.ConfigDict()
    c.target.num_modes = 8
    c.target.radius = 2.0
    c.target.std = 0.3

    c.sde = ml_collections.ConfigDict()
    c.sde.beta_min = 0.1
    c.sde.beta_max = 20.0

    c.t0 = 0.05  # training and evaluation times t ~ U[t0, 1]
    c.x_scale = 2.0  # network input u = (x_t / x_scale, t, 1)
    c.num_test = 300 if quick else 2000

    # Part 3: closed-form kernel GD paths.
    c.kernel = ml_collections.ConfigDict()
    c.kernel.ns = (64, 128, 256) if quick else (128, 256, 512, 1024, 2048)
    c.kernel.num_seeds = 1 if quick else 2
    c.kernel.k_max = 1e8
    c.kernel.num_k = 25 if quick else 65
    c.kernel.val_fraction = 0.25  # hold-out set size for the validation stopping rule, x n
    c.kernel.num_time_bins = 5
    c.kernel.metric = "score_w"  # score_w | score | denoiser: what "best" minimises
    # Positive control of the RWY rule: a unit-RKHS-norm target, `control_centres` kernel
    # functions, at these label-noise levels (1.2 is the denoiser labels' level).
    c.kernel.control_noise = (0.05, 0.2, 1.2)
    c.kernel.control_centres = 16

    # Parts 1-2: the network trained by full-batch GD, against the kernel.
    c.network = ml_collections.ConfigDict()
    c.network.n = 64 if quick else 128
    c.network.widths = (64, 256, 1024) if quick else (128, 512, 2048, 8192)
    c.network.max_steps = 300 if quick else 3000
    c.network.num_records = 8 if quick else 21

    # Part 4: samples through the same Euler-Maruyama sampler.
    c.end_to_end = ml_collections.ConfigDict()
    c.end_to_end.n = 128 if quick else 1024
    c.end_to_end.num_samples = 300 if quick else 2000
    c.end_to_end.sampler_steps = 100 if quick else 500
    c.end_to_end.overtrained_k = 1e8
    c.end_to_end.stop = "best"  # best (least test score error) | val (hold-out noisy labels)

    c.lock()
    return c
