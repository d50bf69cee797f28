"""Data diet at accelerator scale: CIFAR-10 ResNet-18, EL2N / GraNd scores, pruning, retraining.

Command:

    launch/tpu_vm.sh run -- --config=configs/data_diet_cifar10.py:resnet18
    .venv/bin/python -m experiments.main --config=configs/data_diet_cifar10.py:resnet18 \
        --workdir=runs/data_diet_cifar10

Protocol (Paul et al. 2021, as run by their code and re-run by Kirsch 2023; details in
`../shared/notes/importance.md`): ResNet-18 "lowres" (3x3 stem, no max-pool), SGD with Nesterov
momentum 0.9, learning rate 0.1 divided by 5 at epochs 60, 120 and 160, weight decay 5e-4,
batch 128, 200 epochs = 78,000 steps, reflect-pad-4 random crops and horizontal flips,
per-channel normalisation. Scores: EL2N and GraNd at epoch 20 (step 7800) and GraNd at
initialisation, each averaged over 10 independently initialised and trained networks, computed
on the unaugmented training set with BatchNorm in evaluation mode. Pruning keeps the highest
scores at 90/70/50/40% and retrains from scratch for the same 78,000 steps (the step-based
schedule is not rescaled); random subsets are the control.

Hardware and expected runtime (NOT measured here: no accelerator): one 78k-step ResNet-18
CIFAR-10 run takes about 1 h on one V100/A100-class GPU or TPU v4 chip when the input pipeline
keeps up (the study reads the prepared array_record files into memory); the 10 score runs stop at
20 epochs (1 h in all), and the retraining grid below is (4 scores + the random control) x 4
kept fractions x 2 seeds = 40 full runs, about 40 device-hours. Data parallelism over a v4-8's
4 chips shortens each run little at batch 128; run several variants in parallel instead (one per
host or chip).

Expected result (Kirsch's reproduction, test accuracy %, mean of 2-4 runs, run-to-run std
0.1-0.3): kept 90/70/50/40% -> random 94.96 / 94.28 / 93.54 / 92.50; EL2N@20 95.09 / 95.30 /
95.22 / 94.66; GraNd@20 95.14 / 95.44 / 95.07 / 94.07; GraNd@init 95.06 / 93.91 / 92.19 / 90.76,
i.e. EL2N early in training prunes half of CIFAR-10 without loss while GraNd at initialisation
does not beat random.

Status: `experiments/data_diet.py` (issue 6) is being written; this config follows the protocol
fields that issue documents (`:cifar10_resnet18`), at full scale, with the shared `mesh` block.
Data: prepare CIFAR-10 as array_record (see `configs/score_matching_cifar10.py`).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("resnet18",)


def get_config(variant: str = "resnet18") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown data_diet_cifar10 variant {variant!r}; choose from {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.study = "data_diet"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.split = "train"
    c.data.eval_split = "test"
    c.data.data_dir = ""  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.in_memory = True
    c.data.augment = "crop_flip"  # reflect-pad 4, random 32x32 crop, horizontal flip
    c.data.mean = (0.4914, 0.4822, 0.4465)  # per-channel statistics of CIFAR-10 pixels in [0, 1]
    c.data.std = (0.2470, 0.2435, 0.2616)
    c.data.label_noise = 0.0  # fraction of training labels permuted (the label-noise study)

    c.model = ml_collections.ConfigDict()
    c.model.kind = "resnet18"
    c.model.width = 64
    c.model.num_classes = 10

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 78_000  # 200 epochs of 390 steps; pruned runs keep the same count
    c.train.batch_size = 128
    c.train.optimizer = "sgd_nesterov"
    c.train.learning_rate = 0.1
    c.train.momentum = 0.9
    c.train.weight_decay = 5e-4
    c.train.lr_boundaries = (23_400, 46_800, 62_400)  # epochs 60, 120, 160
    c.train.lr_decay = 0.2
    c.train.log_every = 390
    c.train.checkpoint_every = 3900
    c.train.keep_checkpoints = 2

    c.scores = ml_collections.ConfigDict()
    c.scores.names = "el2n,grand,grand_init,forgetting"
    c.scores.step = 7800  # epoch 20
    c.scores.num_models = 10
    c.scores.grand_method = "ghost"
    c.scores.batch_size = 1000

    c.prune = ml_collections.ConfigDict()
    c.prune.keep_fractions = (0.9, 0.7, 0.5, 0.4)
    c.prune.strategy = "hardest"
    c.prune.offset = 0
    c.prune.class_balanced = False
    c.prune.seeds = 2

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.model = 1
    c.mesh.fsdp_min_size = 2**18
    return c.lock()
