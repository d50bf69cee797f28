"""Data diet: per-example scores early in training, pruning by score, retraining.

Variants:

    .venv/bin/python -m experiments.main --config=configs/data_diet.py:digits \
        --workdir=runs/data_diet_digits
    .venv/bin/python -m experiments.main --config=configs/data_diet.py:cifar10_resnet18 \
        --workdir=runs/data_diet_cifar10

`digits` (the protocol of `../shared/notes/importance.md` section 6 on the package's TFDS digits
split, 1438 train / 359 test): an MLP 64-128-128-10 and a small CNN (8-16 conv, 32 hidden), SGD
momentum 0.9, lr 0.05, batch 32, 30 epochs (1320 steps); 10 score runs; keep 90/70/50/30% and
retrain for the same 1320 steps with 5 seeds; label-noise study (10% flipped) with the MLP.
Measured (a fresh run, 21 min wall, 15 min CPU, on the 2-core machine shared with two other
jobs; a second run reproduced every number of `results.md` exactly): test accuracy %, mean ± std
over 5 retraining seeds. MLP full data 98.05 ± 0.25; at keep 50% / 30%: random 97.21 / 96.21,
EL2N (epoch 3, hardest) 97.99 / 97.94, GraNd at initialisation 96.43 / 80.33, forgetting
97.99 / 97.83, VoG 97.05 / 96.04. CNN full data 97.49; random 96.66 / 95.26, EL2N 98.22 / 97.66,
GraNd at initialisation 92.70 / 83.23. Label noise (10% of the MLP's labels flipped): AUROC of
the score for flipped examples 0.999 (EL2N epoch 3), 0.998 (GraNd epoch 3), 0.987 (forgetting),
0.48 (GraNd at initialisation); keeping the highest EL2N at 30% gives 41.1% with no offset and
97.55% after skipping the top 173 (random: 90.31%). Full tables: `results.md` in the workdir.

`cifar10_resnet18` (Paul et al. 2021 as re-run by Kirsch 2023): ResNet-18 (low-resolution stem),
SGD Nesterov momentum 0.9, lr 0.1 divided by 5 at epochs 60/120/160, weight decay 5e-4, batch 128,
200 epochs (78,000 steps), pad-4 crops and flips, per-channel normalisation; EL2N at epoch 20 and
GraNd at initialisation and epoch 20 from 10 score runs (trained 20 epochs; forgetting and AUM
over those 20 epochs); keep 90/70/50/30% and retrain 78,000 steps with 4 seeds. Sized for an
accelerator and NOT run here: about 13 full-length runs' worth of score runs and baselines plus
7 strategies x 4 fractions x 4 seeds = 112 retrains, i.e. roughly 120 ResNet-18 CIFAR-10 runs
(about 1 GPU-hour each on an A100-class device; `max_parallel_runs` runs share a device as one
vmapped program). Needs CIFAR-10 prepared as array_record in `data.data_dir` (see
`scorejax.data`). Expected (Kirsch's reproduction, %): random 94.96 / 94.28 / 93.54 at 90/70/50%
kept; EL2N@20 95.09 / 95.30 / 95.22; GraNd@init 95.06 / 93.91 / 92.19. On this machine only its
smoke test runs (tests/test_data_diet_cifar10.py, on TFDS-mocked data and tiny sizes).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("digits", "cifar10_resnet18")

# Strategies are "random" or "<score>:hardest|easiest[:balanced]" over experiments.data_diet's
# score names: el2n_ep<e>, grand_ep<e>, forgetting, low_aum, low_confidence, variability,
# input_norm, vog, vog_1run (high = hard).
_DIGITS_MLP = (
    "random,el2n_ep3:hardest,el2n_ep3:easiest,el2n_ep0:hardest,el2n_ep1:hardest,"
    "el2n_ep10:hardest,grand_ep0:hardest,grand_ep3:hardest,forgetting:hardest,vog:hardest,"
    "vog_1run:hardest,input_norm:hardest,low_aum:hardest,variability:hardest,"
    "el2n_ep3:hardest:balanced"
)
# XLA:CPU convolutions are slow at this size, so the CNN grid is the headline strategies only.
_DIGITS_CNN = (
    "random,el2n_ep3:hardest,el2n_ep3:easiest,grand_ep0:hardest,grand_ep3:hardest,"
    "forgetting:hardest"
)
_CIFAR = (
    "random,el2n_ep20:hardest,el2n_ep20:easiest,grand_ep0:hardest,grand_ep20:hardest,"
    "forgetting:hardest,input_norm:hardest"
)


def get_config(variant: str = "digits") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown data_diet variant {variant!r}; choose from {VARIANTS}")
    digits = variant == "digits"
    c = ml_collections.ConfigDict()
    c.study = "data_diet"
    c.seed = 0
    # Dtype policy (`scorejax.train.precision`): float32 | bfloat16 (float32 parameters, batch
    # norms, loss and SGD; bfloat16 convolutions and dense layers). The docstring's results are
    # float32 runs.
    c.precision = "float32"

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits" if digits else "cifar10"
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets (digits builds there)
    c.data.num_classes = 10
    c.data.max_train_examples = 0  # 0: all (a smaller number is for smoke tests)
    c.data.max_test_examples = 0
    c.data.augment = not digits
    # Per-channel normalisation of [0, 1] pixels (CIFAR-10 statistics as in data_diet).
    c.data.mean = (0.0,) if digits else (0.4914, 0.4822, 0.4465)
    c.data.std = (1.0,) if digits else (0.2470, 0.2435, 0.2616)

    c.models = ml_collections.ConfigDict()
    if digits:
        c.run_models = "mlp,cnn"
        c.models.mlp = dict(
            kind="mlp",
            features=(128, 128),
            hidden=0,
            width=0,
            vmap_runs=True,
            strategies=_DIGITS_MLP,
        )
        c.models.cnn = dict(
            kind="cnn",
            features=(8, 16),
            hidden=32,
            width=0,
            vmap_runs=False,
            strategies=_DIGITS_CNN,
        )
    else:
        c.run_models = "resnet18"
        c.models.resnet18 = dict(
            kind="resnet18",
            features=(),
            hidden=0,
            width=64,
            blocks=(2, 2, 2, 2),
            vmap_runs=False,
            strategies=_CIFAR,
        )

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32 if digits else 128
    c.train.epochs = 30 if digits else 200  # of full-data steps; subsets keep the step count
    c.train.learning_rate = 0.05 if digits else 0.1
    c.train.momentum = 0.9
    c.train.nesterov = not digits
    c.train.weight_decay = 0.0 if digits else 5e-4
    c.train.lr_decay_epochs = () if digits else (60, 120, 160)
    c.train.lr_decay = 0.2

    c.scores = ml_collections.ConfigDict()
    c.scores.runs = 10
    c.scores.epochs = 30 if digits else 20  # how long the score runs train
    c.scores.el2n_epochs = (0, 1, 3, 10) if digits else (0, 20)
    c.scores.grand_epochs = (0, 3) if digits else (0, 20)
    c.scores.grand_method = "ghost"
    c.scores.grand_chunk = 0  # 0: all examples of an evaluation batch at once
    c.scores.vog = digits
    c.scores.tiebreak = "el2n_ep3" if digits else "el2n_ep20"

    c.prune = ml_collections.ConfigDict()
    c.prune.fractions = (0.9, 0.7, 0.5, 0.3)
    c.prune.seeds = 5 if digits else 4

    c.noise = ml_collections.ConfigDict()
    c.noise.models = "mlp" if digits else ""
    c.noise.fraction = 0.1
    c.noise.fractions = (0.5, 0.3)
    # Offsets m (examples skipped from the top) as multiples of the number of flipped labels.
    c.noise.offsets = (0.0, 0.2, 0.4, 0.8, 1.2, 2.0)
    c.noise.window_score = "el2n_ep3" if digits else "el2n_ep20"
    c.noise.clean_window_fraction = 0.5

    c.max_parallel_runs = 80 if digits else 4
    c.eval_batch_size = 2048 if digits else 1000
    c.save_every_epochs = 10

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.model = 1
    c.mesh.fsdp_min_size = 2**18
    return c.lock()
