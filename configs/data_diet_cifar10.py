"""Data diet at accelerator scale: CIFAR-10 ResNet-18, on one GPU or on the chips of a TPU VM.

Commands:

    .venv/bin/python -m experiments.main --config=configs/data_diet_cifar10.py:gpu \
        --workdir=runs/data_diet_cifar10
    launch/tpu_vm.sh run -- --config=configs/data_diet_cifar10.py:tpu_v4_8

The protocol is the study's `configs/data_diet.py:cifar10_resnet18` (Paul et al. 2021 as re-run by
Kirsch 2023: ResNet-18 low-resolution stem, SGD Nesterov 0.9, lr 0.1 divided by 5 at epochs
60/120/160, weight decay 5e-4, batch 128, 78,000 steps, crops and flips; EL2N and GraNd at
epoch 20 over 10 score runs, GraNd at initialisation; keep 90/70/50/30% and retrain with 4
seeds), unchanged; the variants only size the parallelism for the hardware:

- `gpu`: one A100/H100-class GPU; 4 runs share the device as one vmapped program
  (`max_parallel_runs`), as in the study's config.
- `tpu_v4_8`: the 4 chips of a TPU v4-8 as one data-parallel mesh (`mesh.data = 4`); each
  vmapped program trains 8 runs at once, so each chip holds 8 runs' share of a batch of 128.

Hardware and expected runtime (NOT measured here: no accelerator): roughly 120 ResNet-18
CIFAR-10 runs of 78,000 steps (112 retrains plus score runs and baselines), about 1 GPU-hour each
on an A100-class device (a 200-epoch CIFAR-10 ResNet-18 run is about an hour at a few thousand
images/s), so about 5 days on one GPU when runs share the device 4 at a time with little
speed-up, and about 1.5-2 days on a v4-8.

Expected result (Kirsch's reproduction, test accuracy %, run-to-run std 0.1-0.3): kept
90/70/50/40% -> random 94.96 / 94.28 / 93.54 / 92.50; EL2N@20 95.09 / 95.30 / 95.22 / 94.66;
GraNd@20 95.14 / 95.44 / 95.07 / 94.07; GraNd@init 95.06 / 93.91 / 92.19 / 90.76: EL2N early in
training prunes half of CIFAR-10 without loss, GraNd at initialisation does not beat random.
Data: prepare CIFAR-10 as array_record (see `configs/score_matching_cifar10.py`).
"""

from __future__ import annotations

import ml_collections

from configs import data_diet as base

VARIANTS = ("gpu", "tpu_v4_8")


def get_config(variant: str = "gpu") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown data_diet_cifar10 variant {variant!r}; choose from {VARIANTS}")
    c = base.get_config("cifar10_resnet18").unlock()
    if variant == "tpu_v4_8":
        c.mesh.data = 4
        c.max_parallel_runs = 8
    return c.lock()
