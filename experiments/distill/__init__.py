"""One-step distillation study: Diff-Instruct, DisBack (distribution backtracking) and
consistency distillation.

`train_and_evaluate(config, workdir)` (config: `configs/distill.py`)

Two data kinds (`config.data.kind`): `"toy"` (2-D Gaussian mixtures, MLP score models from
`experiments.score_matching`) and `"image"` (TFDS images, U-Net score models from
`experiments.score_matching_images`); everything below is shared, except the evaluation.

1. *Teacher* (`teacher.py`). Loads the EMA parameters of a score-matching run
   (`config.teacher.workdir`), or, when that field is empty, trains one into `<workdir>/teacher`
   with `configs/<teacher.config_module>.py:<teacher.variant>` (resumed if interrupted). A given
   teacher workdir without a checkpoint, one trained on other data, or one of the other data kind
   is an error before anything is trained or written. The teacher may come from any path of the
   family (VP, VE, EDM, linear flow matching) and any loss (DSM, EDM, FM): the study distils on
   its own VP path (`study_path`), so another path's teacher is converted to its score there
   through its EDM denoiser (`on_study_path`), and keeps its own training loss for stage 1 and
   the fake score (`Teacher.loss_fn`).
2. *Initial generator* `G_0` (`generators.py`): the teacher's denoiser at a fixed large time
   (`generator.kind = "denoiser"`, initialised from the teacher or at random; for images a U-Net
   generator), or a random MLP (toys).
3. *Stage 1* (only when a method needs it; `loop.record_path`):
   `scorejax.train.degradation_recording.record_degradation` fine-tunes a copy of the teacher on
   samples of the frozen `G_0` and saves the degradation path in `<workdir>/path` (resumable;
   its cost in steps and seconds is reported).
4. *Stage 2* (`loop.run_method`, its steps in `steps.py`), one run per method in
   `<workdir>/<method>`, all with the same seed, generator initialisation, batches and number of
   generator updates (method names and plans: `methods.py`):
   - `diff_instruct`: target = teacher, fake score initialised from the teacher;
   - `diff_instruct_warm`: target = teacher, fake score initialised from the last path node, i.e.
     warmed up on `G_0` for exactly stage 1's steps (the fair control for DisBack);
   - `disback_fixed` / `disback_adaptive`: fake score from the last node, target walking the path
     back to the teacher with the fixed / adaptive `BacktrackSchedule`;
   - `consistency`: consistency distillation (Song et al. 2023, `scorejax.consistency`) of the
     teacher into a one-step model `f(T z, T)` initialised from the teacher's weights, with a
     Heun step of the teacher between adjacent EDM times, an EMA target network and an L2 or
     pseudo-Huber metric (`config.consistency`), on data batches; compared with `diff_instruct`.
   Each run checkpoints (generator, fake score, and the schedule state, i.e. the current target
   node; for `consistency`, the student and its target network) with Orbax, resumes after an
   interruption exactly, logs every target switch, and evaluates the generator's EMA weights
   (`distill.gen_ema`) every `eval.every` updates (`evaluation.py`): MMD^2,
   sliced Wasserstein, energy distance and mode coverage against true samples (pixels, for
   images), and, for mixtures, the teacher's exact score mismatch
   `E sigma_t^2 ||s_teacher - s*||^2` on the diffused generator samples; for images, KID and the
   confident-prediction rate on the image study's classifier (`make_image_evaluator`).
5. Writes (`report.py`) `results.json`, `results.md` (final metrics, updates needed to reach
   Diff-Instruct's final MMD, stage-1 cost), `convergence.png`, `samples.png` (scatter plots, or
   image grids), and per method `metrics.jsonl` and TensorBoard events.

The teachers and compiled programs of a run live in a `RunCache`; pass one cache to several calls
(seeds, variants, a resumed run) to compile once. `config.precision` (`"float32"` or `"bfloat16"`,
`scorejax.train.precision`) is the dtype policy of the teacher, fake-score and generator networks
and of the train steps: float32 parameters, optimiser states and losses, bfloat16 matmuls.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.distill.evaluation import Evaluator, make_evaluator
from experiments.distill.generators import (
    Generator,
    Programs,
    RunCache,
    consistency_generator,
    make_generator,
)
from experiments.distill.loop import final_generator_params, record_path, run_method
from experiments.distill.methods import (
    METHODS,
    baseline_of,
    check_config,
    methods_of,
    needs_path,
    split_method,
    study_path,
)
from experiments.distill.report import (
    REACH_TOLERANCE,
    TABLE_COLUMNS,
    compare,
    step0_mismatch,
    write_plots,
    write_results_md,
)
from experiments.distill.teacher import Teacher, load_teacher, locate_teacher, teacher_study
from scorejax.train import prepare_workdir, write_json
from scorejax.train.precision import RECORD_DEFAULTS

__all__ = [
    "METHODS",
    "REACH_TOLERANCE",
    "RESULTS_FILE",
    "TABLE_COLUMNS",
    "Evaluator",
    "Generator",
    "Programs",
    "RunCache",
    "Teacher",
    "baseline_of",
    "check_config",
    "compare",
    "final_generator_params",
    "load_teacher",
    "locate_teacher",
    "make_generator",
    "methods_of",
    "split_method",
    "study_path",
    "teacher_study",
    "train_and_evaluate",
]

RESULTS_FILE = "results.json"


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, cache: RunCache | None = None
) -> dict[str, Any]:
    """Run every method of `config` in `workdir` (resuming what is there); returns the comparison.

    Also written to `<workdir>/results.json` and `results.md`. `cache`: the teachers and compiled
    programs to reuse and add to (None: a new `RunCache`, shared with no other call).
    """
    check_config(config)
    methods = methods_of(config)
    # Fails on a given teacher without a checkpoint before anything is written here.
    locate_teacher(config, workdir)
    cache = RunCache() if cache is None else cache
    # A run recorded before `precision` existed ran in float32, and resumes as such.
    workdir = str(prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS))
    teacher = cache.share_teacher(config, load_teacher(config, workdir))
    programs = cache.programs_for(config, teacher)
    root = jax.random.key(config.seed)
    k_gen, k_stage1, k_train, k_eval = (jax.random.fold_in(root, 100 + i) for i in range(4))
    gen = make_generator(config, teacher, k_gen, programs)
    evaluator = make_evaluator(config, teacher, gen, k_eval, workdir, programs)

    cd_gen = cd_evaluator = None
    if "consistency" in methods:
        # Its own generator, evaluated on the same true samples, latents and bandwidths.
        cd_gen = consistency_generator(config, teacher, programs)
        cd_evaluator = make_evaluator(config, teacher, cd_gen, k_eval, workdir, programs)

    path = None
    if needs_path(config):
        path = record_path(config, workdir, teacher, gen, k_stage1)
        nodes = {"nodes": path.stacked(teacher.params), "gaps": np.asarray(path.segment_gaps)}
    else:
        nodes = {
            "nodes": jax.tree.map(lambda a: a[None], teacher.params),
            "gaps": np.zeros((1,), np.float32),
        }

    results = {}
    samples = {"initial generator": np.asarray(evaluator.sample(gen.init_params))}
    for method in methods:
        cd = method == "consistency"
        results[method] = run_method(
            config,
            os.path.join(workdir, method),
            method,
            teacher,
            cd_gen if cd else gen,
            nodes,
            cd_evaluator if cd else evaluator,
            k_train,
            save_head_start=any(
                split_method(m, config)[0] == "diff_instruct_ahead"
                and baseline_of(m, config) == method
                for m in methods
            ),
            programs=programs,
        )
        params = final_generator_params(os.path.join(workdir, method), cd_gen if cd else gen)
        samples[method] = np.asarray((cd_evaluator if cd else evaluator).sample(params))

    comparison = compare(results, config)
    stage1 = None
    if path is not None:
        stage1 = {
            k: path.meta[k]
            for k in ("num_nodes", "steps", "node_steps", "distances", "to_final", "segment_gaps")
        }
    out = {
        "comparison": comparison,
        "stage1": stage1,
        "step0_mismatch": step0_mismatch(results, evaluator),
        "null": evaluator.null,
        "curves": {m: r["curves"] for m, r in results.items()},
        "switches": {m: r["switches"] for m, r in results.items()},
    }
    write_json(os.path.join(workdir, RESULTS_FILE), out)
    write_results_md(
        os.path.join(workdir, "results.md"),
        comparison,
        stage1,
        config,
        evaluator.null,
        out["step0_mismatch"],
    )
    write_plots(
        workdir,
        results,
        evaluator,
        samples,
        f"{config.data.name}, seed {config.seed}: one-step distillation "
        f"({config.distill.weighting} weighting)",
        config,
    )
    with open(os.path.join(workdir, "results.md")) as f:
        print(f.read(), flush=True)
    return out
