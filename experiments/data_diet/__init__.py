"""Data-diet pruning study (Paul et al. 2021; Kirsch 2023): score early, prune, retrain.

`train_and_evaluate(config, workdir)` runs, for every model in `config.run_models`:

1. **score runs**: `config.scores.runs` networks trained on the full training set (vmapped in one
   jitted call), recording EL2N and GraNd at the listed epochs, forgetting events on every
   pre-update minibatch, VoG from the input gradients at every epoch end, and AUM / cartography
   from the end-of-epoch logits; each score is averaged over the runs (`scorejax.importance`,
   `scorejax.vog`, `scorejax.training_dynamics`).
2. **full-data baseline**: `config.prune.seeds` runs on all the data.
3. **retraining**: for every kept fraction, the subsets chosen by each strategy of the model's
   `strategies` (`<score>:hardest|easiest[:balanced]` or `random`), each retrained from scratch
   with `config.prune.seeds` seeds for the same number of steps as full-data training.

Then the label-noise study for `config.noise.models`: the same score runs on labels of which
`config.noise.fraction` were flipped, AUROC of each score for the flipped examples, and
retraining on windows that skip the highest-scoring `m` examples (offset strategy), plus the same
windows on clean labels. Test accuracy is always on the clean test split.

A step of the stream of work is one "task" (a score run group, a baseline or a retraining grid);
finished tasks are recorded in the Orbax checkpoint of the workdir, and a task in progress keeps
its own checkpoint every `config.save_every_epochs` epochs, so an interrupted study resumes where
it stopped and ends with the same numbers. Outputs: `results.json`, `results.md`, PNG plots,
`metrics.jsonl` (+ TensorBoard) and `config.json`.

The package, one stage of the study a module (as big_vision's per-project folders):

- `setup`: what the config asks for (`validate`, score and strategy names) and the models,
  optimiser and data (`Setup`, `make_setup`);
- `loop`: many runs of one setup trained at once (`RunFns`, `make_run_fns`);
- `scoring`: test accuracy and the per-example scores of a score-run group (`EvalFns`);
- `tasks`: the stream of tasks, each run in checkpointed chunks (`make_tasks`, `run_task`);
- `report`: the analysis, `results.md` and the plots (`analyse`, `write_reports`);
- here: `train_and_evaluate`, which runs the tasks in order and resumes an interrupted study.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.data_diet.loop import RunFns, make_run_fns
from experiments.data_diet.report import analyse, flat_metrics, write_reports
from experiments.data_diet.scoring import EvalFns, make_eval_fns
from experiments.data_diet.setup import (
    Setup,
    load_data,
    make_model,
    make_optimizer,
    make_setup,
    noise_model_names,
    score_names,
    validate,
)
from experiments.data_diet.tasks import (
    NOISE,
    Task,
    make_tasks,
    results_template,
    run_task,
    store,
    task_epochs,
    task_metrics,
    task_runs,
)
from scorejax import pruning
from scorejax.train import Checkpointer, MetricWriter, Progress, checkpoint_dir, prepare_workdir
from scorejax.train.partitioning import mesh_from_config
from scorejax.train.precision import RECORD_DEFAULTS

__all__ = [
    "EvalFns",
    "RunFns",
    "Setup",
    "Task",
    "analyse",
    "load_data",
    "make_eval_fns",
    "make_model",
    "make_optimizer",
    "make_run_fns",
    "make_setup",
    "make_tasks",
    "results_template",
    "run_task",
    "score_names",
    "train_and_evaluate",
    "validate",
    "write_reports",
]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole study in `workdir` (resuming it if interrupted); returns the analysis."""
    validate(config)
    workdir = prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS)
    data = load_data(config)
    n = data["x"].shape[0]
    key = jax.random.key(config.seed)
    noisy_y, flipped = pruning.flip_labels(
        data["y"],
        jax.random.fold_in(key, NOISE),
        fraction=config.noise.fraction,
        num_classes=data["num_classes"],
    )
    mesh = mesh_from_config(config)
    spe = n // config.train.batch_size
    noise_fracs = [*config.noise.fractions, config.noise.clean_window_fraction]
    noise_models = noise_model_names(config)
    smallest = min([*config.prune.fractions, *(noise_fracs if noise_models else [])]) * n
    if smallest < config.train.batch_size:
        raise ValueError(
            f"the smallest kept subset ({smallest:.0f} of {n} examples) is below one batch of "
            f"{config.train.batch_size}"
        )
    tx = make_optimizer(config, spe)
    tasks = make_tasks(config)
    setups = {m: make_setup(config, m, mesh, data["num_classes"], spe) for m in config.models}
    run_fns = {m: make_run_fns(s, tx, n) for m, s in setups.items()}
    eval_fns = {m: make_eval_fns(s) for m, s in setups.items()}
    run_epochs = [task_runs(config, t) * task_epochs(config, t) for t in tasks]

    ckpt = Checkpointer(checkpoint_dir(workdir), save_every=1, keep=2)
    template = {"done": jnp.asarray(0, jnp.int32), "results": results_template(config, n)}
    state = ckpt.restore_or(template)
    done = int(state["done"])
    results = jax.tree.map(np.asarray, state["results"])
    writer = MetricWriter(workdir, resume_step=done if done else None)
    progress = Progress(sum(run_epochs), initial=sum(run_epochs[:done]), desc="run-epochs")
    counter = {"value": sum(run_epochs[:done])}

    def tick(k: int, loss: float | None) -> None:
        counter["value"] += k
        progress.update(counter["value"], **({} if loss is None else {"loss": loss}))

    try:
        for i in range(done, len(tasks)):
            task = tasks[i]
            labels = noisy_y if task.noisy else data["y"]
            task_dir = Path(workdir) / "task_checkpoints" / task.name
            m = task.model
            out = run_task(
                config,
                task,
                setups[m],
                run_fns[m],
                eval_fns[m],
                data,
                labels,
                results,
                task_dir,
                tick,
            )
            results = store(results, task, out)
            writer.write(i + 1, task_metrics(config, task, out))
            ckpt.save(i + 1, {"done": jnp.asarray(i + 1, jnp.int32), "results": results})
            ckpt.wait()
            shutil.rmtree(task_dir, ignore_errors=True)
    finally:
        progress.close()
        ckpt.close()
    analysis = analyse(config, results, np.asarray(data["y"]), np.asarray(flipped))
    analysis["num_train"], analysis["num_test"] = n, int(data["x_test"].shape[0])
    writer.write(len(tasks) + 1, flat_metrics(analysis))
    writer.close()
    write_reports(config, analysis, Path(workdir))
    return analysis
