"""One-step distillation: Diff-Instruct against DisBack (distribution backtracking).

Commands (variants `gmm8` (default) and `grid`: 2-D toys; `digits`: 8x8 images):

    .venv/bin/python -m experiments.main --config=configs/distill.py:gmm8 \
        --workdir=runs/distill_gmm8 [--config.teacher.workdir=runs/demo/teacher] [--config.x=v]
    .venv/bin/python -m experiments.main --config=configs/distill.py:digits \
        --workdir=runs/distill_digits [--config.teacher.workdir=runs/digits_vp]

With `teacher.workdir` empty the teacher is trained first into `<workdir>/teacher` with
`configs/<teacher.config_module>.py:<teacher.variant>` (`score_matching.py:gmm8`, `:grid`,
`:digits_vp`); otherwise that score-matching run is loaded (it must hold a checkpoint of a model
trained on `data.name`).

`digits`: the `digits_vp` U-Net teacher (2500 steps; its PF-ODE samples: KID 11.1, confident rate
0.81) distilled into a one-step U-Net generator, its denoiser at t = 0.7 initialised from the
teacher (KID 1175, MMD^2 0.376, confident rate 0.39), 1000 generator updates at batch 64, Adam
3e-4 for generator and fake score, DMD weighting. Metrics against the 359 test images: pixel
MMD^2, sliced W2 and energy distance, KID on the image study's classifier features, confident
rate and class coverage; the reference row is 1000 train images. Measured on the 2-core CPU
machine (load 2-4), teacher `runs/digits_vp` reused:

    .venv/bin/python -m experiments.benchmarks.distill_convergence --variants digits \
        --seeds 0,1,2 --root runs/bench_distill_digits --teacher_workdir runs/digits_vp

took 59 min wall (about 19 min per seed: stage 1 74 +- 28 s for 500 fake-score updates, stage 2
219-242 s per method at 4.4 updates/s, the rest compilation and evaluation). Mean +- std over
seeds 0, 1, 2 (final values, "reach" and the method abbreviations as in the toy tables below):

| `digits` | MMD^2 x1e3 | SW2 | KID | confident | class cov. | reach | ratio |
|---|---|---|---|---|---|---|---|
| DI | 87+-25 | .174+-.027 | 646+-153 | .465+-.030 | 1 | 567+-208 (3/3) | 1 |
| DI-warm | 77+-10 | .164+-.012 | 583+-42 | .480+-.024 | 1 | 467+-161 (3/3) | .83+-.04 |
| DB-fixed | 79+-16 | .165+-.018 | 596+-89 | .480+-.021 | 1 | 567+-161 (3/3) | 1.03+-.19 |
| DB-adapt | 68+-13 | .156+-.014 | 532+-75 | .483+-.016 | 1 | 717+-104 (3/3) | 1.33+-.29 |
| train split | -1.7 | .047 | -12.7 | 1.000 | 1 | | |

Same picture as on the toys: DisBack does not reach Diff-Instruct's final MMD^2 sooner (ratios
1.03 and 1.33), the warm-started control is the fastest (0.83); adaptive DisBack ends with the
lowest MMD^2 and KID, within one standard deviation of the others. All four are far from the
teacher after 1000 updates: the samples are digit-shaped but noisy (KID ~50x the teacher's), and
the KID curves are not monotone (Diff-Instruct seed 0: 536 at update 800, 810 at 1000).

Toys, measured on the 2-core CPU machine (shared with other jobs at load average ~5-8, so wall times
are upper bounds and vary by ~2x). Teachers: `configs/score_matching.py:gmm8` (6000 steps) and
`:grid` (10000 steps), reused. Convergence benchmark, 2 variants x 3 seeds (0, 1, 2) x 4 methods x
1000 generator updates, DMD weighting (this config):

    .venv/bin/python -m experiments.benchmarks.distill_convergence --variants gmm8,grid \
        --seeds 0,1,2 --root runs/bench_distill_dmd

took 23.5 min wall (17 CPU-min). Stage 1: 500 fake-score updates, 15 +- 8 s (`gmm8`), 10 +- 2 s
(`grid`); stage 2: 26-35 s per method and seed. Mean +- std over the 3 seeds; final values are
means over the last 20% of the evaluations; "reach": updates until the MMD^2 (3-evaluation mean)
is within 10% of Diff-Instruct's final MMD^2 (seeds reaching it), ratio to Diff-Instruct's count
over the seeds where both reach it:

Method abbreviations: DI `diff_instruct`, DI-warm `diff_instruct_warm`, DB-fixed
`disback_fixed`, DB-adapt `disback_adaptive`; "true" is two true sample sets (the noise floor).

| `gmm8` | MMD^2 x1e3 | sliced W2 | energy x1e3 | mode cov. | score mism. | reach | ratio |
|---|---|---|---|---|---|---|---|
| DI | 6.3+-4.3 | .183+-.035 | 16+-6 | 1.00+-0 | .034+-.003 | 817+-231 (3/3) | 1 |
| DI-warm | 3.1+-0.7 | .158+-.003 | 12+-1 | 1.00+-0 | .034+-.008 | 667+-236 (3/3) | .80 |
| DB-fixed | 4.7+-0.3 | .173+-.004 | 14+-1 | .92+-.05 | .038+-.005 | 750+-283 (2/3) | 1.00 |
| DB-adapt | 7.7+-4.9 | .188+-.036 | 18+-8 | .92+-.14 | .042+-.015 | 950 (1/3) | 1.00 |
| true | 1.7 | .162 | 1.4 | 1 | - | | |

| `grid` | MMD^2 x1e3 | sliced W2 | energy x1e3 | mode cov. | score mism. | reach | ratio |
|---|---|---|---|---|---|---|---|
| DI | 4.2+-2.3 | .119+-.014 | 5.5+-2.0 | .75+-.06 | .039+-.007 | 583+-275 (3/3) | 1 |
| DI-warm | 5.2+-2.5 | .124+-.015 | 6.3+-2.4 | .74+-.02 | .040+-.005 | 400 (1/3) | .89 |
| DB-fixed | 5.2+-0.8 | .124+-.010 | 6.0+-1.1 | .74+-.02 | .037+-.005 | 625+-177 (2/3) | 1.49 |
| DB-adapt | 8.0+-3.7 | .131+-.014 | 7.5+-2.1 | .70+-.08 | .037+-.003 | 750 (1/3) | 1.67 |
| true | 2.2 | .139 | 4.3 | 1 | - | | |

Ratio spreads (std over seeds reaching the level): DI-warm 0.08 (`gmm8`), DB-fixed 0 (`gmm8`)
and 0.54 (`grid`).

So DisBack does not converge faster here: its ratio to Diff-Instruct is >= 1 (goal: <= 0.5),
while the fair control (fake score warmed up for stage 1's steps, teacher as target) is the
fastest on `gmm8` (0.80). The reason is visible in the curves: while the target walks the
recorded nodes (updates 1-160 with the fixed rule) the generator hardly moves (mean MMD^2 at
update 150: 1.14 for DisBack against 0.16 for Diff-Instruct on `gmm8`, 1.15 against 0.06 on
`grid`), because stage 1's nodes already agree with the fake score where the generator's samples
are (the nodes' DSM losses on generator samples drop from 0.41 to 0.17 within the first node and
stay there: 0.41, 0.17, 0.16, 0.16, 0.15). A gentler stage 1 (`stage1.learning_rate=1e-4`,
losses 2.1, 0.49, 0.20, 0.18, 0.16) gave the same delay (`gmm8` seed 0: MMD^2 1.42 at update
150). The adaptive rule mostly switched at its 80-update cap (switches at 80/160/240/320 on
`gmm8` seed 0), so it only adds delay. The generators are still improving at 1000 updates (in-mode
fraction ~0.4 against 0.99 for true samples).

With `--config.distill.weighting=diff_instruct` (denoiser-space weight 1) all methods plateau at
~4x higher MMD^2 (`gmm8` 1.3-1.5e-2, `grid` 1.5-1.9e-2, in-mode fraction ~0.27-0.31; same
benchmark, root `runs/bench_distill`); ratios to Diff-Instruct: `gmm8` warm 0.69 +- 0.21,
DisBack fixed 1.03 +- 0.26, adaptive 1.12 +- 0.34; `grid` warm 1.00, fixed 1.69 +- 0.27, adaptive
2.06 +- 0.09. Hence DMD weighting (the one the DisBack release uses) is the default.

`make demo` (teacher `configs/score_matching.py:gmm8`, then this config's `gmm8` with all four
methods), run as its two commands at load average ~4-7: teacher 197 s wall (146 CPU-s), distill
289 s wall (191 CPU-s: stage 1 17 s, stage 2 28-31 s per method, the rest compilation,
evaluation and plots), 8.1 min in all; its table equals seed 0 of the benchmark above (the
teacher training is deterministic). On the idle machine `make demo` took 3 min 22 s
(teacher 74 s, distill 128 s) with the same table. One-step sampling on that run (`disback_fixed`):

    .venv/bin/python -m experiments.benchmarks.one_step_sampling \
        --workdir runs/demo/distill --method disback_fixed

1e5 samples/s against 227 for the teacher's PC sampler (250 steps, 500 score evaluations): 440x
faster, at 1.8x its MMD^2 (7.5e-3 against 4.2e-3; two true sets -1.6e-4).

Methods (`methods`, comma-separated): `diff_instruct` (plain score distillation: teacher as the
target throughout, fake score from the teacher; with `distill.weighting="dmd"` this is DMD's
distribution-matching gradient without its regression loss),
`diff_instruct_warm` (fake score warmed up on the initial generator for stage 1's steps: the
fair control), `disback_fixed` and `disback_adaptive` (see `scorejax.distill.BacktrackSchedule`).
All share the seed, the initial generator and its batches, and run `distill.num_steps` generator
updates; stage 1 (`stage1.num_nodes * stage1.steps_per_node` fake-score updates) is reported
separately.
"""

from __future__ import annotations

import ml_collections

# Regimes of the comparison (toys): `gmm8` and `grid`, the teacher's score is accurate where the
# initial generator's samples are (no mismatch); `gmm8_far`, the initial generator's samples lie
# off the data (offset blob); `gmm8_weak`, a teacher trained for few steps, inaccurate off the
# data; `gmm8_exact`, the analytic mixture score as the teacher (the negative control).
TOY_VARIANTS = ("gmm8", "grid", "gmm8_far", "gmm8_weak", "gmm8_exact")
VARIANTS = (*TOY_VARIANTS, "digits")


def get_config(variant: str = "gmm8") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown distill variant {variant!r}; choose from {VARIANTS}")
    if variant == "digits":
        return _digits_config()
    c = _toy_config(variant)
    return c.lock()


def _toy_config(variant: str) -> ml_collections.ConfigDict:
    base = {"grid": "grid"}.get(variant, "gmm8")
    c = ml_collections.ConfigDict()
    c.study = "distill"
    c.seed = 0
    # Each method is a plan (experiments.distill.METHODS) with the config's weighting, or
    # "<plan>+<weighting>"; diff_instruct_ahead is the positive control (a head start of
    # distill.head_start updates).
    c.methods = "diff_instruct,diff_instruct_warm,disback_fixed,disback_adaptive"
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
    c.teacher.variant = base  # its variant
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

    # Stage 1: the degradation path (shared by DisBack and the warm-started control).
    # Nodes are chosen among probes (every `probe_every` updates) evenly spaced in their score
    # distance to the teacher on G0's diffused samples (`scorejax.distill.select_nodes`).
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


def _digits_config() -> ml_collections.ConfigDict:
    """8x8 digits: a U-Net teacher (`configs/score_matching.py:digits_vp`) distilled into a
    one-step U-Net generator; every field not set here is the toy study's."""
    c = _toy_config("gmm8")
    c.data = ml_collections.ConfigDict()
    c.data.kind = "image"
    c.data.name = "digits"
    c.data.split = "train"  # the reference row ("null") of the results
    c.data.eval_split = "test"  # the images every metric compares the samples with
    c.data.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets (digits builds there)
    c.data.scale = "[-1,1]"

    c.teacher.variant = "digits_vp"
    c.teacher.num_steps = 2500

    c.generator.t_init = 0.7

    d = c.distill
    d.num_steps = 1000
    d.head_start = 500
    d.batch_size = 64
    d.gen_lr = 3e-4
    d.fake_lr = 3e-4
    d.steps_per_call = 1  # a lax.scan over U-Net steps runs slower on this CPU

    c.stage1.batch_size = 64
    c.stage1.learning_rate = 3e-4

    c.eval.every = 50
    c.eval.num_samples = 1000
    c.checkpoint_every = 250
    return c.lock()
