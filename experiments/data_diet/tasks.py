"""The stream of work of the data-diet study, one task at a time.

A task is a score-run group, a full-data baseline, a retraining grid at one kept fraction, or
the clean-label windows of the label-noise study. `run_task` trains its runs in chunks,
checkpointing them, and returns its numbers; `store` files them in the fixed-shape results of
`results_template`, which the study's checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.data_diet.loop import RunFns
from experiments.data_diet.scoring import (
    EvalFns,
    accuracy_on_test,
    finish_scores,
    record_epoch,
    score_stats_template,
)
from experiments.data_diet.setup import (
    Setup,
    model_names,
    noise_model_names,
    score_names,
    strategies,
    windows,
)
from scorejax import pruning
from scorejax.train import Checkpointer
from scorejax.train.mesh import put_replicated

# Stream tags for fold_in: every random choice of the study derives from config.seed.
SCORE_RUNS, RETRAIN, RANDOM_SUBSET, NOISE = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class Task:
    """One step of the study: `kind` is "score", "full", "retrain" or "window"."""

    kind: str
    model: str
    noisy: bool = False
    fraction: int = -1  # index into the kept fractions of the task's grid

    @property
    def name(self) -> str:
        """A unique name: `<model>_[noisy_]<kind>[_f<fraction>]`."""
        tag = "noisy_" if self.noisy else ""
        frac = f"_f{self.fraction}" if self.fraction >= 0 else ""
        return f"{self.model}_{tag}{self.kind}{frac}"


def make_tasks(config: ml_collections.ConfigDict) -> list[Task]:
    """Every task of the study, in the order they run."""
    tasks = []
    for m in model_names(config):
        tasks += [Task("score", m), Task("full", m)]
        tasks += [Task("retrain", m, fraction=i) for i in range(len(config.prune.fractions))]
    for m in noise_model_names(config):
        tasks += [Task("score", m, True), Task("full", m, True)]
        tasks += [Task("retrain", m, True, i) for i in range(len(config.noise.fractions))]
        if m in model_names(config):
            tasks.append(Task("window", m))
    return tasks


def results_template(config: ml_collections.ConfigDict, n_train: int) -> dict:
    """Every number the study produces, NaN until its task has run (a fixed checkpoint shape)."""
    seeds, runs = config.prune.seeds, config.scores.runs
    nan = lambda *shape: jnp.full(shape, jnp.nan, jnp.float32)
    out = {}
    for m in model_names(config):
        out[m] = {
            "scores": nan(len(score_names(config)), n_train),
            "score_run_acc": nan(runs),
            "full_acc": nan(seeds),
            "acc": nan(len(strategies(config, m)), len(config.prune.fractions), seeds),
        }
    for m in noise_model_names(config):
        out[f"{m}_noisy"] = {
            "scores": nan(len(score_names(config)), n_train),
            "score_run_acc": nan(runs),
            "full_acc": nan(seeds),
            "acc": nan(1 + len(windows(config)), len(config.noise.fractions), seeds),
        }
        if m in model_names(config):
            out[m]["window_acc"] = nan(len(windows(config)), seeds)
    return out


def task_epochs(config: ml_collections.ConfigDict, task: Task) -> int:
    """Training epochs of each run of `task`."""
    return config.scores.epochs if task.kind == "score" else config.train.epochs


def task_runs(config: ml_collections.ConfigDict, task: Task) -> int:
    """Number of runs of `task` (strategy-major, then seeds)."""
    if task.kind == "score":
        return config.scores.runs
    if task.kind == "full":
        return config.prune.seeds
    if task.kind == "window":
        return len(windows(config)) * config.prune.seeds
    n_strat = 1 + len(windows(config)) if task.noisy else len(strategies(config, task.model))
    return n_strat * config.prune.seeds


def strategy_scores(config: ml_collections.ConfigDict, scores: np.ndarray, name: str) -> np.ndarray:
    """The score a strategy ranks by; forgetting counts are tie-broken by the EL2N named in
    `config.scores.tiebreak` (< 0.05 added, below the 1/runs granularity of the mean count)."""
    names = score_names(config)
    s = scores[names.index(name)]
    if name == "forgetting":
        tie = scores[names.index(config.scores.tiebreak)]
        s = s + 0.05 * tie / (math.sqrt(2.0) * config.scores.runs)
    return s


def _subsets(config, task: Task, results: dict, labels: np.ndarray) -> np.ndarray:
    """[R, n_keep] example indices for the runs of a retrain/window task (strategy-major)."""
    key = jax.random.fold_in(jax.random.key(config.seed), RANDOM_SUBSET)
    seeds = range(config.prune.seeds)
    n = labels.shape[0]
    lab = jnp.asarray(labels)
    if task.kind == "window" or task.noisy:
        frac = (
            config.noise.clean_window_fraction
            if task.kind == "window"
            else config.noise.fractions[task.fraction]
        )
        scores = results[f"{task.model}_noisy" if task.noisy else task.model]["scores"]
        window = strategy_scores(config, np.asarray(scores), config.noise.window_score)
        n_flip = int(math.floor(config.noise.fraction * n + 0.5))
        n_keep = int(math.floor(frac * n + 0.5))
        rows = []
        if task.noisy:
            rows += [
                pruning.prune(
                    window, keep_fraction=frac, strategy="random", key=jax.random.fold_in(key, s)
                )
                for s in seeds
            ]
        for mult in windows(config):
            offset = min(int(round(mult * n_flip)), n - n_keep)
            sel = pruning.prune(
                jnp.asarray(window), keep_fraction=frac, strategy="offset", offset=offset
            )
            rows += [sel for _ in seeds]
        return np.stack([np.asarray(r) for r in rows])
    frac = config.prune.fractions[task.fraction]
    scores = np.asarray(results[task.model]["scores"])
    rows = []
    for strategy in strategies(config, task.model):
        parts = strategy.split(":")
        for s in seeds:
            if parts[0] == "random":
                sel = pruning.prune(
                    jnp.zeros(n),
                    keep_fraction=frac,
                    strategy="random",
                    key=jax.random.fold_in(key, s),
                )
            else:
                balanced = len(parts) > 2 and parts[2] == "balanced"
                sel = pruning.prune(
                    jnp.asarray(strategy_scores(config, scores, parts[0])),
                    keep_fraction=frac,
                    strategy=parts[1],
                    labels=lab,
                    num_classes=int(labels.max()) + 1,
                    class_balanced=balanced,
                )
            rows.append(np.asarray(sel))
    return np.stack(rows)


def _run_keys(config, task: Task, n_runs: int) -> jax.Array:
    """Score runs r use (seed, SCORE, noisy, r); retrain seed s uses (seed, RETRAIN, s), so all
    strategies of a seed share their initialisation key (paired comparisons)."""
    base = jax.random.key(config.seed)
    if task.kind == "score":
        k = jax.random.fold_in(jax.random.fold_in(base, SCORE_RUNS), int(task.noisy))
        return jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(n_runs))
    k = jax.random.fold_in(base, RETRAIN)
    seeds = jnp.arange(n_runs) % config.prune.seeds
    return jax.vmap(lambda s: jax.random.fold_in(k, s))(seeds)


def run_task(
    config: ml_collections.ConfigDict,
    task: Task,
    setup: Setup,
    fns: RunFns,
    evals: EvalFns,
    data: dict,
    labels: jnp.ndarray,
    results: dict,
    task_dir: Path,
    tick: Callable[[int, float | None], None],
) -> dict:
    """Train the runs of one task (in chunks of `config.max_parallel_runs`), return its results.

    `fns` trains the runs (`make_run_fns(setup, ...)`) and `evals` scores them
    (`make_eval_fns(setup)`); `tick(run_epochs, loss)` reports progress. The task's state is
    checkpointed in `task_dir` every `config.save_every_epochs` epochs and between chunks, and
    restored from there.
    """
    n = data["x"].shape[0]
    x = data["x"]
    n_runs = task_runs(config, task)
    epochs = task_epochs(config, task)
    if task.kind in ("score", "full"):
        members = np.tile(np.arange(n), (n_runs, 1))
    else:
        members = _subsets(config, task, results, np.asarray(data["y"]))
    keys = _run_keys(config, task, n_runs)
    # Score statistics are kept for one group of runs: score tasks are never split.
    chunk = n_runs if task.kind == "score" else min(config.max_parallel_runs, n_runs)
    n_chunks = -(-n_runs // chunk)
    pad = n_chunks * chunk - n_runs  # the last chunk repeats the first run to keep one shape
    members = np.concatenate([members, np.repeat(members[:1], pad, 0)])
    keys = jnp.concatenate([keys, jnp.repeat(keys[:1], pad, 0)])
    every = max(1, config.save_every_epochs)

    def fresh(c: int, acc: np.ndarray) -> dict:
        st = {
            "chunk": jnp.asarray(c, jnp.int32),
            "epoch": jnp.asarray(0, jnp.int32),
            "runs": fns.init(keys[c * chunk : (c + 1) * chunk], x[:1]),
            "acc": jnp.asarray(acc),
        }
        if task.kind == "score":
            st["stats"] = score_stats_template(config, chunk, n, tuple(x.shape[1:-1]))
        return put_replicated(st, setup.mesh)

    def record(state: dict, epoch: int) -> dict:
        variables = state["runs"]["variables"]
        return record_epoch(config, setup, evals, state["stats"], variables, x, labels, epoch)

    ckpt = Checkpointer(task_dir, save_every=every, keep=1)
    state = ckpt.restore_or(fresh(0, np.full(n_chunks * chunk, np.nan, np.float32)))
    while True:
        c, start = int(state["chunk"]), int(state["epoch"])
        if start:
            tick(chunk * start, None)
        mem = jnp.asarray(members[c * chunk : (c + 1) * chunk])
        if task.kind == "score" and start == 0:
            state["stats"] = record(state, 0)
        for e in range(start, epochs):
            state["runs"], loss = fns.epoch(state["runs"], mem, x, labels)
            if task.kind == "score":
                state["stats"] = record(state, e + 1)
            state["epoch"] = jnp.asarray(e + 1, jnp.int32)
            tick(chunk, float(loss))
            if (e + 1) % every == 0 and e + 1 < epochs:
                ckpt.save(c * epochs + e + 1, state)
        acc = np.asarray(state["acc"]).copy()
        acc[c * chunk : (c + 1) * chunk] = accuracy_on_test(
            setup, evals, state["runs"]["variables"], data, config.eval_batch_size
        )
        if c + 1 == n_chunks:
            break
        state = fresh(c + 1, acc)
        state["chunk"] = jnp.asarray(c + 1, jnp.int32)
        ckpt.save((c + 1) * epochs, state)
    ckpt.close()
    acc = acc[:n_runs]
    if task.kind == "score":
        scores = finish_scores(
            config, state["stats"], state["runs"], x, labels, data["num_classes"]
        )
        return {"scores": scores, "score_run_acc": acc}
    if task.kind == "full":
        return {"full_acc": acc}
    grid = acc.reshape(-1, config.prune.seeds)
    return {"window_acc": grid} if task.kind == "window" else {"acc": grid}


def store(results: dict, task: Task, out: dict) -> dict:
    """`results` (host copies) with the numbers `out` of a finished `task` filed in."""
    results = jax.tree.map(np.array, results)  # writable copies
    key = f"{task.model}_noisy" if task.noisy else task.model
    if task.kind == "retrain":
        results[key]["acc"][:, task.fraction, :] = out["acc"]
    else:
        for k, v in out.items():
            results[task.model if k == "window_acc" else key][k] = np.asarray(v, np.float32)
    return results


def task_metrics(config: ml_collections.ConfigDict, task: Task, out: dict) -> dict[str, float]:
    """Scalar summaries of a finished task, for metrics.jsonl / TensorBoard."""
    p = f"{task.name}/"
    if task.kind == "score":
        return {p + "test_acc": float(np.mean(out["score_run_acc"]))}
    if task.kind == "full":
        return {p + "test_acc": float(np.mean(out["full_acc"]))}
    grid = out.get("acc", out.get("window_acc"))
    if task.kind == "retrain" and not task.noisy:
        labels = strategies(config, task.model)
    else:
        labels = (["random"] if task.noisy else []) + [f"window{w}" for w in windows(config)]
    return {p + lab: float(np.mean(row)) for lab, row in zip(labels, grid, strict=True)}
