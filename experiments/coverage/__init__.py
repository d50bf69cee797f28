"""Pass@N coverage study: cross-entropy (CE) against Direct Coverage Optimization (DCO).

`train_and_evaluate(config, workdir)` (config: `configs/coverage.py`, variants `teacher_student`,
`sequences`, `arithmetic`) reproduces the misalignment of Chen et al. (arXiv 2502.07154) on CPU:

1. builds, for each of `num_seeds` seeds, a task with a single reference answer per problem and
   train / validation / test splits (the seed changes the teacher and the data);
2. trains one student per (seed, N') at once (all stacked and vmapped in one jitted step): N' = 1
   is CE, N' > 1 the DCO loss -log(1 - (1 - p)^N') on the summed answer log-probability;
3. every `train.eval_every` steps logs, per student, exact test and validation pass@N
   = mean_x 1 - (1 - p(y_x|x))^N for every test N, train pass@1, the confidence of the greedy
   answer on test (mean, histogram, fraction > 0.5 and how many of those are right), and on the
   training set the mean DCO factor F(N', p) and the live fraction F > 0.1;
4. keeps, for every test N, the CE student with the best validation pass@N (early-stopped CE);
5. at the end tunes the test-time temperature per test N on the validation split for every
   final student (tuned-temperature CE is the main control; exp(sequence_logprob at T) is the
   exact probability of temperature-T ancestral sampling);
6. `arithmetic` also estimates pass@N (N <= k) by sampling k = `eval.num_samples` answers for
   each of the first `eval.sample_problems` test problems with `lax.scan` and the unbiased
   estimator, for the final students, early-stopped CE and tuned-temperature CE, next to the
   exact values on the same problems;
7. writes `metrics.jsonl`, TensorBoard events, `eval.json` (per-seed values and a summary with
   mean and std over seeds), `config.json`, and the PNGs `pass_at_n_vs_step.png`,
   `pass_at_n_vs_n.png` and `confidence.png` into `workdir`.

An interrupted run resumes from its latest Orbax checkpoint (students, optimiser state and the
early-stopping record) and ends with the same result as an uninterrupted one.

The package, one stage of the study a module:

- `tasks`: the problem families, their splits and students (`Task`, `make_task`,
  `arithmetic_problems`, `per_seed_data`);
- `training`: the stacked students, their DCO losses, the training loop and early stopping
  (`train`);
- `evaluation`: the metrics logged during training (`make_evaluate`) and the final exact and
  sampled pass@N of every method (`final_evaluation`, `summarize`);
- `report`: the markdown table and the plots (`markdown_table`, `write_plots`);
- here: `check_config` and `train_and_evaluate`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.common import check_multiples
from experiments.coverage.evaluation import final_evaluation, make_evaluate, params_shape, summarize
from experiments.coverage.report import markdown_table, write_plots
from experiments.coverage.tasks import Batch, Task, arithmetic_problems, make_task, per_seed_data
from experiments.coverage.training import train
from scorejax.train import prepare_workdir, write_json
from scorejax.train.precision import RECORD_DEFAULTS, precision_from_config

__all__ = [
    "EVAL_FILE",
    "Batch",
    "Task",
    "arithmetic_problems",
    "check_config",
    "final_evaluation",
    "make_evaluate",
    "make_task",
    "markdown_table",
    "params_shape",
    "per_seed_data",
    "summarize",
    "train",
    "train_and_evaluate",
    "write_plots",
]

EVAL_FILE = "eval.json"


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError on settings the study cannot run with."""
    precision_from_config(config)
    t = config.train
    if 1 not in tuple(config.train_ns):
        raise ValueError("config.train_ns must contain 1 (cross-entropy, the baseline)")
    if any(n < 1 for n in config.train_ns) or any(n < 1 for n in config.test_ns):
        raise ValueError("config.train_ns and config.test_ns must be >= 1")
    if config.num_seeds < 1:
        raise ValueError("config.num_seeds must be >= 1")
    steps = {f"train.{name}": t[name] for name in ("num_steps", "checkpoint_every")}
    check_multiples(steps, "train.eval_every", t.eval_every)
    if t.optimizer not in ("sgd", "adam"):
        raise ValueError(f"config.train.optimizer must be sgd or adam, got {t.optimizer!r}")
    if t.batch_size < 0 or t.batch_size > config.task.num_train:
        raise ValueError("config.train.batch_size must be in [0, task.num_train] (0: full batch)")
    if 1.0 not in tuple(config.eval.temperatures):
        raise ValueError("config.eval.temperatures must contain 1.0")
    if config.eval.num_samples and not 1 <= config.eval.sample_problems <= config.task.num_test:
        raise ValueError("config.eval.sample_problems must be in [1, task.num_test]")
    if config.eval.num_samples and make_task(config).sample_correct is None:
        raise ValueError(f"task {config.task.kind} has no sampler; set eval.num_samples=0")


def _order_ce_first(config) -> None:
    """train_ns with N' = 1 first (the CE student is index 0 everywhere)."""
    ns = tuple(config.train_ns)
    if ns[0] != 1:
        raise ValueError(f"config.train_ns must start with 1 (CE); got {ns}")


def _jsonable(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(x).tolist(), tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run the study in `workdir` (resuming it if it holds a checkpoint of the same config).

    Returns {"summary": rows, "per_seed": arrays, "markdown": table}; also in `eval.json`.
    """
    check_config(config)
    _order_ce_first(config)
    task = make_task(config)
    workdir = str(prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS))
    eval_path = os.path.join(workdir, EVAL_FILE)
    t0 = time.perf_counter()
    data = per_seed_data(task, config)
    state, best = train(task, config, workdir, data)
    if os.path.exists(eval_path):  # a finished run that was started again
        with open(eval_path) as f:
            return json.load(f)
    results = final_evaluation(task, config, state, best, data)
    rows = summarize(results, config)
    table = markdown_table(rows, config)
    out = {
        "summary": rows,
        "markdown": table,
        "per_seed": _jsonable(results),
        "seconds": time.perf_counter() - t0,
    }
    write_json(eval_path, out, indent=1)
    write_plots(workdir, config, results)
    print(f"coverage {config.variant}: test pass@N in % (mean ± std over "
          f"{config.num_seeds} seeds)\n{table}", flush=True)
    return out
