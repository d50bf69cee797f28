"""pass@N at accelerator scale: CE against Direct Coverage Optimization with a larger transformer.

Command:

    launch/tpu_vm.sh run -- --config=configs/coverage_large.py:arithmetic
    .venv/bin/python -m experiments.main --config=configs/coverage_large.py:arithmetic \
        --workdir=runs/coverage_large

The `:arithmetic` study of `configs/coverage.py` (two-digit problems "a1 a2 op b1 b2 =" with
learnable '+' and ambiguous '?' items, so that no single test-time temperature suits every item)
scaled up: a causal transformer of 8 layers, width 512 and 8 heads (about 25M parameters,
`scorejax.models.transformer.TransformerLM`) instead of the 2-layer width-32 one, 8000 training
problems (the task has 10,000 distinct pairs), CE and DCO students for N' in {1, 4, 16, 64, 256}
on 3 seeds trained together in one vmapped program, and pass@N also estimated from 1024 sampled
answers per test problem on all 1000 test problems. The controls (early-stopped CE, CE with the
temperature tuned per N) are the study's.

Hardware and expected runtime (NOT measured here: no accelerator; a FLOP estimate): the 15
students' 20,000 training steps at batch 512 (9 tokens per problem) are about 2e17 FLOPs and the
20 sampled evaluations about 1e17, i.e. 2-4 h on one A100-class GPU or TPU v4 chip in float32;
several chips divide the time (the study splits the batch over a data-parallel mesh).

Expected result (the paper's claim; for this task no accelerator run has been recorded): under
CE, test pass@N for large N peaks early and then falls while pass@1 keeps rising; DCO with N'
near N holds pass@N, and the best N' grows with the test N. The study's CPU variants found the
early-stopped and tuned-temperature CE controls level with DCO; whether the larger model on a
task with heterogeneous difficulty separates them is what this run decides.
"""

from __future__ import annotations

import ml_collections

from configs import coverage as base

VARIANTS = ("arithmetic",)


def get_config(variant: str = "arithmetic") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown coverage_large variant {variant!r}; choose from {VARIANTS}")
    c = base.get_config("arithmetic").unlock()
    c.train_ns = (1, 4, 16, 64, 256)

    c.task.num_train = 8000
    c.task.num_val = 1000
    c.task.num_test = 1000

    c.model.d_model = 512
    c.model.num_layers = 8
    c.model.num_heads = 8
    c.model.mlp_ratio = 4

    c.train.optimizer = "adam"
    c.train.learning_rate = 3e-4
    c.train.batch_size = 512
    c.train.num_steps = 20_000
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000

    c.eval.num_samples = 1024
    c.eval.sample_problems = 1000
    return c.lock()
