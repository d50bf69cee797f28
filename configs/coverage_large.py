"""pass@N at accelerator scale: CE against Direct Coverage Optimization with a larger transformer.

Command:

    launch/tpu_vm.sh run -- --config=configs/coverage_large.py:arithmetic
    .venv/bin/python -m experiments.main --config=configs/coverage_large.py:arithmetic \
        --workdir=runs/coverage_large

The `:arithmetic` study of `configs/coverage.py` (synthetic arithmetic with a mix of learnable
and ambiguous items, so that no single test-time temperature suits every item) scaled up: a
causal transformer of 8 layers, width 512 and 8 heads (about 25M parameters,
`scorejax.models.transformer.TransformerLM`) instead of the tiny CPU one, 200k training items,
2000 test items, and pass@N for N up to 1024 estimated from 4096 samples per test item with the
unbiased estimator. Losses: cross-entropy (N' = 1) and DCO with N' in {4, 16, 64, 256}, each
with `seeds` seeds; the controls are early-stopped CE and CE with its sampling temperature tuned
per N on a validation split.

Hardware and expected runtime (NOT measured here: no accelerator; a rough FLOP estimate): one
training run (50k steps, batch 512, ~24 tokens per sequence) is about 1e17 FLOPs, about an hour
on one TPU v4 chip or A100 at a realistic 30% of peak; each evaluation samples 8M answers (about
1e16 FLOPs with the KV cache, minutes). The 5 losses x 3 seeds run one after another: about a day
on one chip; data parallelism over a v4-8 or an 8-GPU host divides the sampling time by the chip
count.

Expected result (the paper's claim, not a number for this synthetic task): under CE, test pass@N
for large N peaks early and then falls as training continues, while pass@1 keeps rising; DCO with
N' near N holds pass@N, and at the end of training the best N' grows with the test N (a Pareto
frontier over N'). Whether DCO beats CE with a tuned temperature here is what the run decides.

Status: `experiments/coverage.py` (issue 5) is being written; this config follows the fields that
issue documents for `:arithmetic`, at larger scale, with the shared `mesh` block.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("arithmetic",)


def get_config(variant: str = "arithmetic") -> ml_collections.ConfigDict:
    """The locked config of one variant (one of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown coverage_large variant {variant!r}; choose from {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.study = "coverage"
    c.seed = 0
    c.seeds = 3

    c.task = ml_collections.ConfigDict()
    c.task.name = "arithmetic"
    c.task.num_train = 200_000
    c.task.num_val = 2000
    c.task.num_test = 2000
    c.task.modulus = 997
    c.task.ambiguous_fraction = 0.3  # items whose answer depends on a hidden salt
    c.task.num_salts = 8
    c.task.answer_tokens = 4

    c.model = ml_collections.ConfigDict()
    c.model.kind = "transformer"
    c.model.d_model = 512
    c.model.num_layers = 8
    c.model.num_heads = 8
    c.model.mlp_ratio = 4

    c.train = ml_collections.ConfigDict()
    c.train.losses = "ce,dco"
    c.train.dco_n = (4, 16, 64, 256)  # N' of the DCO runs; CE is N' = 1
    c.train.num_steps = 50_000
    c.train.batch_size = 512
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 1000
    c.train.weight_decay = 0.1
    c.train.grad_clip = 1.0
    c.train.live_threshold = 0.1  # drop examples whose DCO factor F is at most this
    c.train.log_every = 500
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 5000
    c.eval.n_values = (1, 4, 16, 64, 256, 1024)
    c.eval.samples_per_item = 4096
    c.eval.sample_batch = 65_536
    c.eval.temperature = 1.0
    c.eval.tuned_temperatures = (0.7, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.model = 1
    c.mesh.fsdp_min_size = 2**18
    return c.lock()
