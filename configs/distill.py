"""One-step distillation: Diff-Instruct against DisBack (distribution backtracking).

Commands (variants: the 2-D regimes below, `gmm8_edm_teacher` / `gmm8_fm_teacher` (`gmm8` with
an EDM / flow-matching teacher), and `digits`, 8x8 images):

    .venv/bin/python -m experiments.main --config=configs/distill.py:gmm8_far \
        --workdir=runs/distill_far [--config.teacher.workdir=runs/demo/teacher] [--config.x=v]
    .venv/bin/python -m experiments.benchmarks.distill_convergence \
        --variants gmm8_far,gmm8,gmm8_exact,gmm8_weak,grid --seeds 0,1,2 --root runs/bench_distill

With `teacher.workdir` empty the teacher is trained first into `<workdir>/teacher` with
`configs/<teacher.config_module>.py:<teacher.variant>` for `teacher.num_steps` steps; otherwise
that score-matching run is loaded (it must hold a checkpoint of a model trained on `data.name`).

Regimes (toy variants; the initial generator G0 is the teacher's denoiser at t_init = 0.7):
- `gmm8`: ring of 8 Gaussians, 6000-step teacher, G0 a blob at the origin. Diffused data covers
  the origin only for t >= 0.3, so the teacher's score IS mismatched on G0's diffused samples
  (measured below, ~300x its error on data): not the no-mismatch regime it was thought to be.
- `grid`: 5x5 grid, 10000-step teacher, G0 a blob on the central mode.
- `gmm8_far`: as `gmm8` with G0's samples shifted by (3, 3), off the data (`generator.offset`).
- `gmm8_weak`: as `gmm8` with a teacher trained for 1000 steps only.
- `gmm8_exact`: the negative control: the teacher is the mixture's exact score plus a residual
  network whose output layer is zero (`teacher.kind = "exact"`), so it has no mismatch anywhere
  and stage 1 can still fine-tune it.

Methods (`methods`, comma-separated; `<plan>` or `<plan>+<weighting>`, the weighting
defaulting to `distill.weighting`, DMD): `diff_instruct` (DI: teacher as the target, fake score
from the teacher), `diff_instruct_warm` (DI-warm: fake score from the last path node, i.e. warmed
up on G0 for stage 1's updates), `disback_fixed` / `disback_adaptive` (DB: fake score from the
last node, target walking the path back to the teacher every `schedule.interval` updates, or
once the score-gap EMA falls below `adaptive_ratio` x the recorded gap between the nodes, at the
latest after `adaptive_max_interval`), and the positive control `diff_instruct_ahead`
(DI-ahead: Diff-Instruct continued from its own state after `distill.head_start` = 750 updates,
so a method provably that many updates ahead), and `consistency` (CD: consistency distillation,
Song et al. 2023, of the teacher into a one-step model f(T z, T), T = consistency.sigma_max,
initialised from the teacher; compared with DI, DMD weighting). Every method runs 1500 generator
updates with 5
fake-score updates each (the release's ratio), the same seed, G0 and batches; each is compared
with Diff-Instruct of its own weighting. Stage 1 (shared by DI-warm and DisBack, cost reported
separately): 2000 Adam updates at lr 1e-5 of a teacher copy on G0's samples, probed every 20;
8 nodes chosen evenly spaced in D_k = E sigma^2 ||s_k - s_teacher||^2 on G0's diffused samples.
The generator surrogate is a per-pixel mean (DMD2), so `grad_clip = 10` bounds the same
per-pixel gradient for toys and images.

Budget: 1500 updates, chosen from a 2000-update probe (`gmm8_far`, seed 0): Diff-Instruct's MMD^2
was 7.3e-3 at update 800, 7.7e-3 at 1000, 5.3e-3 at 1400 and 4.7e-3 at 2000, its in-mode
fraction flat at 0.33-0.36 from update 1000 on; beyond 1500 the curves move by less than their
evaluation-to-evaluation noise.

Measured with the benchmark command above on the 2-core CPU machine at load average 3-10 (other jobs
ran), in three processes, partly in parallel: `gmm8_far` 27 min, `gmm8`, `gmm8_weak` and `grid` 62
min, `gmm8_exact` 20 min (a first `gmm8_exact` run with another residual construction was discarded,
see the README). Mean +- std over seeds 0, 1, 2; "reach": updates until the MMD^2 (3-evaluation
mean) is within 10% of its Diff-Instruct baseline's final MMD^2 (mean of the last 20% of
evaluations), seeds reaching it; "ratio": that count over the baseline's own; two true sample sets
give MMD^2 x1e3 of -0.3 to 1.7.

`gmm8_far`: step-0 mismatch 0.61±0.0302 on G0, 0.0023±0.0011 on data (x271)
| method | reach (seeds) | ratio | MMD^2 x1e3 | mode cov. | in-mode |
|---|---|---|---|---|---|
| DI | 1083±465 (3/3) | 1.00±0.00 | 8.3±5.5 | 0.78±0.17 | 0.30±0.04 |
| DI-warm | 925±672 (2/3) | 0.91±0.13 | 6.2±0.7 | 0.81±0.08 | 0.30±0.01 |
| DB-fixed | - (0/3) | - | 20.3±2.4 | 0.27±0.12 | 0.22±0.02 |
| DB-adapt | - (0/3) | - | 17.3±4.7 | 0.34±0.09 | 0.21±0.01 |
| DI-ahead (control) | 400±350 (3/3) | 0.30±0.26 | 6.2±3.2 | 0.91±0.08 | 0.35±0.05 |
| DI (DI weighting) | 1050±328 (3/3) | 1.00±0.00 | 12.1±2.1 | 0.54±0.06 | 0.26±0.01 |
| DB-fixed (DI weighting) | 1350±0 (1/3) | 1.93±0.00 | 17.3±6.2 | 0.26±0.13 | 0.21±0.04 |

`gmm8`: step-0 mismatch 0.645±0.0566 on G0, 0.0023±0.0011 on data (x286)
| method | reach (seeds) | ratio | MMD^2 x1e3 | mode cov. | in-mode |
|---|---|---|---|---|---|
| DI | 1117±284 (3/3) | 1.00±0.00 | 2.7±0.9 | 0.97±0.06 | 0.46±0.03 |
| DI-warm | 925±177 (2/3) | 0.94±0.09 | 3.1±1.5 | 0.96±0.07 | 0.43±0.07 |
| DB-fixed | 1000±0 (1/3) | 1.25±0.00 | 3.4±1.1 | 0.95±0.07 | 0.42±0.05 |
| DB-adapt | - (0/3) | - | 6.4±0.4 | 0.76±0.11 | 0.30±0.03 |

`gmm8_weak`: step-0 mismatch 2.24±0.148 on G0, 0.066±0.0063 on data (x34)
| method | reach (seeds) | ratio | MMD^2 x1e3 | mode cov. | in-mode |
|---|---|---|---|---|---|
| DI | 1233±126 (3/3) | 1.00±0.00 | 10.1±0.6 | 0.36±0.03 | 0.22±0.01 |
| DI-warm | 983±189 (3/3) | 0.80±0.17 | 9.4±1.0 | 0.24±0.08 | 0.20±0.02 |
| DB-fixed | 750±0 (1/3) | 0.56±0.00 | 14.1±7.0 | 0.25±0.27 | 0.21±0.04 |
| DB-adapt | 1000±0 (2/3) | 0.82±0.12 | 10.4±4.2 | 0.38±0.17 | 0.22±0.04 |

`grid`: step-0 mismatch 0.0552±0.00405 on G0, 0.015±0.0024 on data (x4)
| method | reach (seeds) | ratio | MMD^2 x1e3 | mode cov. | in-mode |
|---|---|---|---|---|---|
| DI | 400±50 (3/3) | 1.00±0.00 | 3.6±1.6 | 0.75±0.04 | 0.38±0.02 |
| DI-warm | 417±58 (3/3) | 1.04±0.07 | 4.3±1.5 | 0.77±0.06 | 0.37±0.01 |
| DB-fixed | 1000±636 (2/3) | 2.60±1.45 | 5.5±1.2 | 0.72±0.06 | 0.36±0.02 |
| DB-adapt | 1025±177 (2/3) | 2.56±0.01 | 5.3±0.7 | 0.75±0.06 | 0.36±0.02 |

`gmm8_exact`: step-0 mismatch 9.35e-14±3.78e-15 on G0, 7.1e-14±1.9e-15 on data (x1)
| method | reach (seeds) | ratio | MMD^2 x1e3 | mode cov. | in-mode |
|---|---|---|---|---|---|
| DI | 1067±252 (3/3) | 1.00±0.00 | 3.2±1.0 | 1.00±0.00 | 0.48±0.04 |
| DI-warm | 850±265 (3/3) | 0.83±0.29 | 2.3±0.8 | 1.00±0.00 | 0.49±0.04 |
| DB-fixed | 1075±247 (2/3) | 1.04±0.12 | 3.7±1.1 | 0.93±0.12 | 0.42±0.07 |
| DB-adapt | - (0/3) | - | 7.4±1.0 | 0.75±0.04 | 0.31±0.02 |


Conclusion. The mechanism DisBack relies on is present where it should be: the teacher's score
is 270-290x more wrong on G0's diffused samples than on diffused data on `gmm8` and `gmm8_far`,
34x on `gmm8_weak` (whose error on data is itself 30x larger), 4x on `grid` (G0 sits on the
central mode) and zero for the exact teacher; the recorded nodes differ (D_k evenly spaced, e.g.
0, 0.87, 1.62, ..., 6.07 on `gmm8_far`). The positive control detects a speed-up of the claimed
size (DI-ahead ratio 0.30 +- 0.26, 3/3 seeds). DisBack does not reach Diff-Instruct's final
MMD^2 sooner in any regime on average: never within 1500 updates on `gmm8_far` (DMD weighting;
with the Diff-Instruct weighting one seed in three, at ratio 1.93), 1.25 (one seed) on `gmm8`,
2.6 on `grid`, 1.04 +- 0.12 on the exact control. The one exception is the weak teacher, where
fixed DisBack reached the level at ratio 0.56 in one seed of three and adaptive DisBack at 0.82 +-
0.12 in two (the other seeds never): within seed noise, and not the claimed 0.5. Where G0 is off
the data DisBack ends at 2-3x Diff-Instruct's MMD^2 with a third of its mode coverage (0.27-0.34
against 0.78): while the target walks the intermediate nodes (teacher copies pulled toward G0's
blob) the generator is herded into a few modes, which the mode-seeking objective does not undo in
the remaining updates. The adaptive rule never fired (all 105 switches over 5 regimes x 3 seeds
came at its 100-update cap): the score gap on the generator's samples at a switch (0.11-7.7)
stayed above half the recorded node gaps (0.002-0.88, measured on G0's samples). DI-warm is
within noise of Diff-Instruct everywhere (ratios 0.80-1.04).

`digits_weak` (8x8 images, the image analogue of `gmm8_weak`): a `digits_vp` U-Net teacher trained
for 400 steps distilled into a one-step U-Net generator (its denoiser at t = 0.7, from the
teacher), 1000 generator updates at batch 64 with 5 fake-score updates each, Adam 3e-4, DMD
weighting, stage 1 at lr 1e-5 (D_k = 0, 1.01, 1.86, 2.66, 3.47, 4.36, 5.13, 6.03, 6.80, mean of 3
seeds); metrics against the 359 test images (pixel MMD^2, KID on the image study's classifier,
confident rate, class coverage); reference row: 1000 train images. About 78 min wall for 3 seeds
at load average 4-6 in two partly parallel processes (stage 2 took 4-8 min per
score-distillation method and seed, about 3 min for consistency).

    .venv/bin/python -m experiments.benchmarks.distill_convergence --variants digits_weak \
        --seeds 0,1,2 --root runs/bench_distill_digits

| `digits_weak` | reach (seeds) | ratio | MMD^2 x1e3 | KID | confident |
|---|---|---|---|---|---|
| DI | 783+-76 (3/3) | 1.00 | 74.4+-1.5 | 642+-16 | .409+-.008 |
| DI-warm | 733+-104 (3/3) | .94+-.12 | 73.5+-1.5 | 626+-6 | .409+-.005 |
| DB-fixed | 633+-419 (3/3) | .78+-.49 | 76.0+-1.9 | 644+-20 | .407+-.016 |
| DB-adapt | 717+-491 (3/3) | .88+-.58 | 81.6+-3.1 | 666+-15 | .407+-.008 |
| consistency | - (0/3) | - | 89.8+-1.3 | 565+-7 | .484+-.001 |
| DI-ahead (control) | 283+-76 (3/3) | .36+-.06 | 67.5+-1.1 | 581+-23 | .429+-.001 |
| train split | | | -1.8 | -12.4 | 1.000 |

DisBack's mean ratios come from one seed (seed 1) reaching the level at update 150 on an early dip
of the MMD^2 curve (ratio 0.21); seeds 0 and 2 give 1.00-1.25, and both DisBack variants end above
Diff-Instruct's final MMD^2. The `digits` variant (strong 2500-step teacher) keeps the same
settings; its table from the earlier protocol (1 fake update per generator update, summed
surrogate, stage 1 at lr 3e-4) gave DisBack ratios 1.03 +- 0.19 (fixed), 1.33 +- 0.29 (adaptive).

`make demo` runs the teacher, then `gmm8` and `gmm8_far` with `diff_instruct,disback_fixed,
disback_adaptive,diff_instruct_ahead`: 4 min 7 s with `.venv` installed and `runs/` empty on the
idle machine (stage 2 about 16 s per method). Its tables equal seed 0 of the benchmark:
`gmm8` (mismatch 0.58 on G0, 0.0036 on data): DisBack fixed ratio 1.25, adaptive never reaches
Diff-Instruct's final MMD^2 (2.8e-3); `gmm8_far` (same mismatch): neither DisBack reaches it
(final MMD^2 1.8e-2 and 1.3e-2 against 5.5e-3), the positive control at ratio 0.46.
"""

from __future__ import annotations

import ml_collections

# Regimes of the comparison (toys): `gmm8` and `grid`, the teacher's score is accurate where the
# initial generator's samples are (no mismatch); `gmm8_far`, the initial generator's samples lie
# off the data (offset blob); `gmm8_weak`, a teacher trained for few steps, inaccurate off the
# data; `gmm8_exact`, the analytic mixture score as the teacher (the negative control).
TOY_VARIANTS = ("gmm8", "grid", "gmm8_far", "gmm8_weak", "gmm8_exact")
# `gmm8` with a teacher of another path of the family: EDM (`score_matching.py:gmm8_edm`) or
# linear flow matching (`gmm8_fm`), converted to the score on the study's VP path.
TEACHER_VARIANTS = {"gmm8_edm_teacher": "gmm8_edm", "gmm8_fm_teacher": "gmm8_fm"}
VARIANTS = (*TOY_VARIANTS, *TEACHER_VARIANTS, "digits", "digits_weak")


def get_config(variant: str = "gmm8") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown distill variant {variant!r}; choose from {VARIANTS}")
    if variant.startswith("digits"):
        return _digits_config(variant)
    c = _toy_config(variant)
    return c.lock()


def _toy_config(variant: str) -> ml_collections.ConfigDict:
    base = {"grid": "grid"}.get(variant, "gmm8")
    c = ml_collections.ConfigDict()
    c.study = "distill"
    c.seed = 0
    # Dtype policy (`scorejax.train.precision`): float32 | bfloat16 (float32 parameters, losses
    # and optimiser states; bfloat16 matmuls in the teacher, fake-score and generator networks).
    # The docstring's measurements are float32 runs.
    c.precision = "float32"
    # Each method is a plan (METHODS of experiments/distill/methods.py) with the config's
    # weighting, or "<plan>+<weighting>"; diff_instruct_ahead is the positive control (a head
    # start of distill.head_start updates).
    c.methods = "diff_instruct,diff_instruct_warm,disback_fixed,disback_adaptive"
    if variant in ("gmm8", *TEACHER_VARIANTS):
        c.methods += ",consistency"
    if variant == "gmm8_far":
        # The regime built to hold DisBack's problem (G0 off the data): the positive control,
        # and DisBack over the Diff-Instruct weighting as well.
        c.methods += ",diff_instruct_ahead,diff_instruct+diff_instruct,disback_fixed+diff_instruct"

    c.data = ml_collections.ConfigDict()
    c.data.kind = "toy"
    c.data.name = {"gmm8": "ring8", "grid": "grid25"}[base]

    # The teacher: a finished score-matching run, or "" to train one into <workdir>/teacher.
    c.teacher = ml_collections.ConfigDict()
    c.teacher.kind = "exact" if variant == "gmm8_exact" else "network"  # network | exact
    c.teacher.workdir = ""
    c.teacher.config_module = "score_matching"  # configs/<this>.py: the teacher trained on the fly
    c.teacher.variant = TEACHER_VARIANTS.get(variant, base)  # its variant
    c.teacher.num_steps = {"gmm8": 6000, "grid": 10000}[base]
    if variant == "gmm8_weak":
        c.teacher.num_steps = 1000

    # The one-step generator: the teacher's denoiser at t_init (kind="denoiser", init "teacher"
    # or "random"), or a random MLP (kind="mlp").
    c.generator = ml_collections.ConfigDict()
    c.generator.kind = "denoiser"
    c.generator.init = "teacher"
    c.generator.t_init = 0.7
    c.generator.hidden_sizes = (256, 256, 256)  # mlp only
    c.generator.output_scale = 1.0  # mlp only
    # A constant added to every sample (() for none): places G0 off the data.
    c.generator.offset = (3.0, 3.0) if variant == "gmm8_far" else ()

    c.distill = ml_collections.ConfigDict()
    c.distill.num_steps = 1500  # generator updates per method (the plateau, from a probe)
    c.distill.head_start = 750  # diff_instruct_ahead starts from Diff-Instruct's state here
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
    c.distill.fake_steps = 5  # fake-score updates per generator update (5, as in the release)
    c.distill.steps_per_call = 25  # updates per jitted dispatch (lax.scan)
    # The path the study distils on: VP with these betas (T = 1); t_min, t_max and
    # generator.t_init are its times. A teacher of another path is converted to its score.
    c.distill.path_beta_min = 0.1
    c.distill.path_beta_max = 20.0

    # Method "consistency": consistency distillation (Song et al. 2023) of the teacher into a
    # one-step model f(T z, T), initialised from the teacher, for distill.num_steps updates on
    # data batches of distill.batch_size: one teacher Heun step between adjacent times of the
    # EDM discretisation, a target network theta^- (EMA), metric l2 | pseudo_huber.
    c.consistency = ml_collections.ConfigDict()
    c.consistency.num_scales = 18  # N: discretisation points t_1 = sigma_min < ... < sigma_max
    c.consistency.sigma_min = 0.002
    # T: 20, not EDM's 80 (images of std 0.5). The student is the teacher's eps network, whose
    # output the one-step map multiplies by T: on `gmm8` (std 1.4, seed 0, lr 1e-3) CD reached
    # MMD^2 4.7e-4 and all 8 modes at T = 20, but plateaued at 1.1e-2 (3 modes) with L2 and
    # 7.2e-3 with pseudo-Huber at T = 80 (L2 at lr 1e-4: 1.1e-2). p_T differs from N(0, T^2) by
    # 0.5% of its variance at T = 20.
    c.consistency.sigma_max = 20.0
    c.consistency.rho = 7.0
    c.consistency.sigma_data = 0.5
    c.consistency.metric = "l2"  # l2 | pseudo_huber
    c.consistency.weighting = "uniform"  # uniform | ict (lambda = 1 / (t_{n+1} - t_n))
    c.consistency.target_ema = 0.95  # mu of the target network (Song et al.'s CD setting)
    c.consistency.lr = 1e-3
    c.consistency.adam_b1 = 0.9

    # Stage 1: the degradation path (shared by DisBack and the warm-started control).
    # Nodes are chosen among probes (every `probe_every` updates) evenly spaced in their score
    # distance to the teacher on G0's diffused samples (`scorejax.backtracking.select_nodes`).
    c.stage1 = ml_collections.ConfigDict()
    c.stage1.num_nodes = 8
    c.stage1.num_steps = 2000
    c.stage1.probe_every = 20
    c.stage1.probe_samples = 2048
    c.stage1.batch_size = 256
    c.stage1.learning_rate = 1e-5
    c.stage1.adam_b1 = 0.9

    c.schedule = ml_collections.ConfigDict()
    c.schedule.interval = 50  # fixed: generator updates per target node
    # adaptive: move on once the score-gap EMA is below ratio x the recorded gap between the
    # nodes, after at least min_interval updates, at the latest after max_interval.
    c.schedule.adaptive_max_interval = 100
    c.schedule.adaptive_min_interval = 10
    c.schedule.adaptive_ratio = 0.5
    c.schedule.adaptive_ema_decay = 0.9

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 50
    c.eval.num_samples = 2000
    c.eval.num_projections = 128
    c.eval.smooth = 3  # evaluations averaged for final values and the convergence criterion

    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    return c


def _digits_config(variant: str) -> ml_collections.ConfigDict:
    """8x8 digits: a U-Net teacher (`configs/score_matching.py:digits_vp`) distilled into a
    one-step U-Net generator; every field not set here is the toy study's. `digits_weak` is the
    image analogue of `gmm8_weak` (the toy regime with the largest DisBack effect): a teacher
    trained for 400 of the 2500 steps, with the positive control."""
    c = _toy_config("gmm8")
    c.data = ml_collections.ConfigDict()
    c.data.kind = "image"
    c.data.name = "digits"
    c.data.split = "train"  # the reference row ("null") of the results
    c.data.eval_split = "test"  # the images every metric compares the samples with
    c.data.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets (digits builds there)
    c.data.scale = "[-1,1]"

    c.teacher.variant = "digits_vp"
    c.teacher.num_steps = 400 if variant == "digits_weak" else 2500
    if variant == "digits_weak":
        c.methods += ",diff_instruct_ahead"

    c.generator.t_init = 0.7

    d = c.distill
    d.num_steps = 1000
    d.head_start = 500
    d.batch_size = 64
    d.gen_lr = 3e-4
    d.fake_lr = 3e-4
    d.steps_per_call = 1  # a lax.scan over U-Net steps runs slower on this CPU

    c.stage1.batch_size = 64
    # Stage 1 at the toys' learning rate 1e-5: at 3e-4 (seed 0) D_k jumped to 4.9 of its 8.0 in
    # the first 20 updates and then wandered (5.7, 6.9, 6.9, 7.0, 6.5, 7.9): a degenerate path.

    c.eval.every = 50
    c.eval.num_samples = 1000
    c.checkpoint_every = 250
    return c.lock()
