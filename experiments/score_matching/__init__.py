"""Score-matching study: train a Gaussian-path model, sample from it, compare with the truth.

`train_and_evaluate(config, workdir)` (config: `configs/score_matching.py`)

1. trains `ScoreMLP` on a 2-D toy with the configured loss (data-parallel jitted step under the
   dtype policy `config.precision`, EMA weights, Orbax checkpoints every
   `train.checkpoint_every` steps; an interrupted run resumes from its latest checkpoint and
   ends with the same parameters as an uninterrupted one);
2. for Gaussian-mixture toys, measures the EMA network's score error against the exact marginal
   score in bins of diffusion time;
3. samples with the configured sampler and compares the samples with fresh true samples: MMD^2,
   sliced Wasserstein, energy distance, and mixture mode weights; the same sampler driven by the
   exact mixture is the reference, two true sample sets the noise floor;
4. writes `metrics.jsonl`, TensorBoard events, `eval.json`, `config.json`, and the PNGs
   `samples.png`, `loss.png`, `score_error.png` into `workdir`.

One study covers the whole Gaussian-path family (`scorejax.paths`); four config fields choose:

- `sde.name`, the path: `vp`, `subvp`, `ve` (Song et al. 2021), `edm` (`sigma(t) = t`, Karras et
  al. 2022) or `linear` (flow matching, `x_t = (1 - t) x_0 + t eps`);
- `model.parametrization` (`score`, `eps`, `x0`, `velocity`, `v`: what the network predicts on
  that path) or `model.preconditioning` (`edm`, `vp`, `ve`: EDM Table 1's `c_skip`, `c_out`,
  `c_in`, `c_noise` around the network, which then gives the EDM denoiser);
- `loss.name`: `dsm` (`scorejax.score_matching.dsm_loss`), `edm` (`scorejax.edm.edm_loss`) or
  `fm` (`scorejax.flow_matching.fm_loss`, linear path only);
- `sampler.name`: `pc`, `em`, `ode` (`scorejax.sampling`, on the study's path), `edm_heun`,
  `edm_stochastic` (`scorejax.edm`, EDM coordinates) or `fm_euler`, `fm_heun`
  (`scorejax.flow_matching`, linear-path coordinates).

Every model is turned into the three forms the losses and samplers need (`Model`: score on the
path, EDM denoiser, linear-path velocity) with the exact conversions of `scorejax.parametrisation`
and `scorejax.edm`; the Gaussian-mixture oracle gives the same three forms exactly
(`exact_model`), so the evaluation is the same for every path.

Data sources and models are chosen by `config.data.kind` and `config.model.kind` in
`setup._make_data` / `setup._make_model`, so further kinds slot in next to the toy ones.

The package, one part of the study a module:

- `family`: the path family, the model forms and the losses (`make_sde`, `Model`, `make_model`,
  `exact_model`, `make_loss`, `field`, `check_family_config`), shared with the image study;
- `sampling`: the configured sampler (`sample`, `sampler_end_time`, `SAMPLERS`);
- `setup`: the config checks and what is built from the config (`Data`, `Setup`, `check_config`,
  `build`);
- `training`: the optimiser, the train step and the resumable training loop (`make_optimizer`,
  `make_step_and_state`, `train`);
- `evaluation`: sample quality, score error and loss floor (`evaluate`);
- `plots`: the PNGs (`write_plots`);
- here: `train_and_evaluate`, which trains, evaluates, writes and prints the results.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from experiments.score_matching.evaluation import evaluate
from experiments.score_matching.family import (
    Model,
    exact_model,
    field,
    make_loss,
    make_model,
    make_sde,
)
from experiments.score_matching.plots import write_plots
from experiments.score_matching.sampling import sample
from experiments.score_matching.setup import Data, Setup, build, check_config
from experiments.score_matching.training import make_optimizer, make_step_and_state, train
from scorejax.train import MetricWriter, prepare_workdir, write_json
from scorejax.train.precision import RECORD_DEFAULTS

__all__ = [
    "EVAL_FILE",
    "RECORD_DEFAULTS",
    "Data",
    "Model",
    "Setup",
    "build",
    "check_config",
    "exact_model",
    "field",
    "make_loss",
    "make_model",
    "make_optimizer",
    "make_sde",
    "make_step_and_state",
    "sample",
    "train",
    "train_and_evaluate",
]

EVAL_FILE = "eval.json"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run the study in `workdir` (resuming it if it holds a checkpoint of the same config).

    Returns the evaluation results (also in `<workdir>/eval.json`).
    """
    setup = build(config)
    workdir = str(prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS))
    eval_path = os.path.join(workdir, EVAL_FILE)
    state = train(setup, config, workdir)
    if os.path.exists(eval_path):  # a finished run that was started again
        with open(eval_path) as f:
            results = json.load(f)
        _print_summary(setup, results)
        return results
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    results, arrays = evaluate(setup, config, state.ema_params, key)
    write_json(eval_path, results, indent=1)
    with MetricWriter(workdir, resume_step=config.train.num_steps) as writer:
        writer.write(config.train.num_steps, {f"eval/{k}": v for k, v in results.items()})
    write_plots(setup, config, workdir, results, arrays)
    _print_summary(setup, results)
    return results


def _print_summary(setup: Setup, r: dict[str, Any]) -> None:
    lines = [f"{setup.data.name}: samples vs fresh true samples"]
    for who in ("model", "exact", "null"):
        if f"{who}/mmd2" in r:
            line = f"  {who:5s} MMD^2 {r[f'{who}/mmd2']:.2e}  SW2 {r[f'{who}/sliced_w2']:.4f}"
            if f"{who}/mode_weight_max_err" in r:
                line += f"  max |mode weight - true| {r[f'{who}/mode_weight_max_err']:.4f}"
                line += f"  off-mode {r[f'{who}/off_mode_frac']:.4f}"
            lines.append(line)
    if "score/score_rel_err" in r:
        rel = ", ".join(f"{v:.3g}" for v in r["score/score_rel_err"])
        lines.append(f"  relative score error per time bin (small t -> T): {rel}")
    print("\n".join(lines), flush=True)
