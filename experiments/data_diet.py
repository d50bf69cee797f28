"""Data-diet pruning study (Paul et al. 2021; Kirsch 2023): score early, prune, retrain.

`train_and_evaluate(config, workdir)` runs, for every model in `config.run_models`:

1. **score runs**: `config.scores.runs` networks trained on the full training set (vmapped in one
   jitted call), recording EL2N and GraNd at the listed epochs, forgetting events on every
   pre-update minibatch, VoG from the input gradients at every epoch end, and AUM / cartography
   from the end-of-epoch logits; each score is averaged over the runs (`scorejax.importance`,
   `scorejax.training_dynamics`).
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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scorejax import importance as imp
from scorejax import pruning
from scorejax import training_dynamics as dynamics
from scorejax.data import load_arrays
from scorejax.ghost_norm import flax_grand
from scorejax.models.classifier import CNNClassifier, MLPClassifier
from scorejax.models.resnet import ResNet18
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    checkpoint_dir,
    data_parallel,
    map_in_batches,
    prepare_workdir,
)
from scorejax.train.mesh import put_replicated
from scorejax.train.partitioning import mesh_from_config
from scorejax.train.precision import RECORD_DEFAULTS, Precision, precision_from_config

# Stream tags for fold_in: every random choice of the study derives from config.seed.
_SCORE_RUNS, _RETRAIN, _RANDOM_SUBSET, _NOISE = 1, 2, 3, 4

# --------------------------------------------------------------------------------------------
# Models, optimiser, data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static description of one model's training (hashable: it parametrises jitted code)."""

    model: nn.Module
    has_batch_norm: bool
    batch_size: int
    steps_per_epoch: int  # full-data steps per epoch; every run trains epochs x this many steps
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    vmap_runs: bool
    mesh: Mesh
    grand_method: str
    grand_chunk: int | None


def make_model(
    cfg: ml_collections.ConfigDict, num_classes: int, precision: Precision
) -> tuple[nn.Module, bool]:
    """(module, uses BatchNorm) for a model sub-config (`kind`: mlp, cnn or resnet18).

    The module computes in `precision.compute_dtype` and returns float32 logits; its batch norms
    run in float32, so the cross-entropy, the gradients and SGD are float32.
    """
    kw = precision.module_kwargs()
    if cfg.kind == "mlp":
        return MLPClassifier(num_classes, features=tuple(cfg.features), **kw), False
    if cfg.kind == "cnn":
        net = CNNClassifier(num_classes, features=tuple(cfg.features), hidden=cfg.hidden, **kw)
        return net, False
    if cfg.kind == "resnet18":
        return ResNet18(num_classes, width=cfg.width, blocks=tuple(cfg.blocks), **kw), True
    raise ValueError(f"unknown model kind {cfg.kind!r}; choose mlp, cnn or resnet18")


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """SGD (optionally Nesterov) momentum with step decays at epoch boundaries, L2 weight decay."""
    t = config.train
    boundaries = {int(e * steps_per_epoch): t.lr_decay for e in t.lr_decay_epochs}
    schedule = optax.piecewise_constant_schedule(t.learning_rate, boundaries)
    sgd = optax.sgd(schedule, momentum=t.momentum, nesterov=t.nesterov)
    if t.weight_decay:
        return optax.chain(optax.add_decayed_weights(t.weight_decay), sgd)
    return sgd


def load_data(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Train/test arrays in storage order (images in [0, 1]) through the TFDS loader."""
    d = config.data
    data_dir = d.data_dir or None
    train = load_arrays(d.name, d.train_split, data_dir=data_dir, scale="[0,1]")
    test = load_arrays(d.name, d.test_split, data_dir=data_dir, scale="[0,1]")
    if d.max_train_examples:
        train = {k: v[: d.max_train_examples] for k, v in train.items()}
    if d.max_test_examples:
        test = {k: v[: d.max_test_examples] for k, v in test.items()}
    num_classes = int(max(train["label"].max(), test["label"].max())) + 1
    if d.num_classes:
        num_classes = d.num_classes
    return {
        "x": jnp.asarray(train["image"]),
        "y": jnp.asarray(train["label"]),
        "ids": train["id"],
        "x_test": jnp.asarray(test["image"]),
        "y_test": jnp.asarray(test["label"]),
        "num_classes": num_classes,
    }


def _normalize(setup: Setup, x: jnp.ndarray) -> jnp.ndarray:
    mean = jnp.asarray(setup.mean, x.dtype)
    std = jnp.asarray(setup.std, x.dtype)
    return (x - mean) / std


def _augment(key: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
    """Reflect-pad 4, random crop to the original size, random horizontal flip (data_diet)."""
    b, h, w, _ = x.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets = jax.random.randint(k_crop, (b, 2), 0, 9)
    crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, x.shape[3])))
    x = crop(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def _apply_eval(setup: Setup, variables: Any, x: jnp.ndarray) -> jnp.ndarray:
    kwargs = {"train": False} if setup.has_batch_norm else {}
    return setup.model.apply(variables, _normalize(setup, x), **kwargs)


# --------------------------------------------------------------------------------------------
# Training many runs at once
# --------------------------------------------------------------------------------------------


def init_runs(setup: Setup, tx, keys: jax.Array, x_example: jnp.ndarray, n_train: int) -> dict:
    """Stacked state of R runs (keys: [R] typed keys): variables, optimiser, forgetting, keys."""
    return _init_fn(setup, tx, n_train)(keys, x_example[:1])


@functools.cache
def _init_fn(setup: Setup, tx, n_train: int):
    def one(key, x1):
        k_init, k_data = jax.random.split(key)
        kwargs = {"train": False} if setup.has_batch_norm else {}
        variables = dict(setup.model.init(k_init, x1, **kwargs))
        return {
            "step": jnp.zeros((), jnp.int32),
            "variables": variables,
            "opt": tx.init(variables["params"]),
            "forget": dynamics.forgetting_init(n_train),
            "key": jax.random.key_data(k_data),
        }

    return jax.jit(lambda keys, x1: _over_runs(setup, lambda k: one(k, x1), keys))


def _over_runs(setup: Setup, fn, tree):
    """fn over the leading (run) axis: vmap, or lax.map where vmapped convolutions would become
    grouped convolutions (slow to compile and to run on XLA:CPU)."""
    return jax.vmap(fn)(tree) if setup.vmap_runs else jax.lax.map(fn, tree)


def _epoch_order(setup: Setup, run: dict, members: jnp.ndarray) -> jnp.ndarray:
    """Example ids for the next `setup.steps_per_epoch` steps of one run: [steps, B].

    Minibatch k of subset-epoch e is `members[perm_e[kB:(k+1)B]]`, perm_e a permutation drawn
    from (run key, e); the last partial batch of a subset-epoch is dropped. Only the few
    subset-epochs this call reaches are permuted.
    """
    b, n = setup.batch_size, setup.steps_per_epoch
    m = members.shape[0]
    spe = m // b
    key = jax.random.split(jax.random.wrap_key_data(run["key"]))[0]
    first = run["step"] // spe
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), m)[: spe * b])(
        first + jnp.arange(n // spe + 2)
    )
    start = (run["step"] - first * spe) * b
    flat = jax.lax.dynamic_slice_in_dim(perms.reshape(-1), start, n * b)
    return members[flat].reshape(n, b)


def _train_step(setup: Setup, tx, run: dict, ids: jnp.ndarray, x_all, y_all):
    """One SGD step of one run on the training examples `ids` [B]."""
    aug_key = jax.random.split(jax.random.wrap_key_data(run["key"]))[1]
    xb, yb = x_all[ids], y_all[ids]
    if setup.mesh.size > 1:
        # Data parallelism: each device computes its share of the minibatch.
        xb = jax.lax.with_sharding_constraint(xb, NamedSharding(setup.mesh, PartitionSpec("data")))
    if setup.augment:
        xb = _augment(jax.random.fold_in(aug_key, run["step"]), xb)
    xb = _normalize(setup, xb)
    variables = run["variables"]

    def loss_fn(params):
        v = {**variables, "params": params}
        if setup.has_batch_norm:
            logits, updated = setup.model.apply(v, xb, train=True, mutable=["batch_stats"])
        else:
            logits, updated = setup.model.apply(v, xb), {}
        return jnp.mean(imp.cross_entropy(logits, yb)), (logits, updated)

    (loss, (logits, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"]
    )
    updates, opt = tx.update(grads, run["opt"], variables["params"])
    new_vars = {**variables, **updated, "params": optax.apply_updates(variables["params"], updates)}
    # Forgetting is counted on the pre-update training minibatch, as in data_diet.
    forget = dynamics.forgetting_update(run["forget"], ids, jnp.argmax(logits, -1) == yb)
    new = {**run, "step": run["step"] + 1, "variables": new_vars, "opt": opt, "forget": forget}
    return new, loss


def _train_epoch(setup: Setup, tx, runs: dict, members: jnp.ndarray, x_all, y_all):
    """`setup.steps_per_epoch` steps of every run; returns the runs and their mean loss.

    Args:
      runs: stacked state of R runs. members: [R, M] the training subset of each run.
    """
    step = functools.partial(_train_step, setup, tx)
    order = jax.vmap(functools.partial(_epoch_order, setup))(runs, members)  # [R, n, B]
    if setup.vmap_runs:

        def body(r, ids):
            r, loss = jax.vmap(step, in_axes=(0, 0, None, None))(r, ids, x_all, y_all)
            return r, jnp.mean(loss)

        runs, losses = jax.lax.scan(body, runs, jnp.swapaxes(order, 0, 1))
        return runs, jnp.mean(losses)

    # Convolutions of vmapped runs become grouped convolutions, slow on XLA:CPU; map instead.
    def one_run(args):
        r, ids = args
        r, losses = jax.lax.scan(lambda c, i: step(c, i, x_all, y_all), r, ids)
        return r, jnp.mean(losses)

    runs, losses = jax.lax.map(one_run, (runs, order))
    return runs, jnp.mean(losses)


def compile_epoch(setup: Setup, tx):
    """The jitted `_train_epoch` of one setup (runs donated; recompiles per subset size)."""
    return jax.jit(functools.partial(_train_epoch, setup, tx), donate_argnums=(0,))


def _over_examples(
    setup: Setup, parallel, runs_vars: Any, x: jnp.ndarray, y: jnp.ndarray, batch: int
) -> np.ndarray:
    """Apply a `data_parallel` fn(runs_vars, xb, yb) -> [b, R, ...] to all examples.

    Examples go `batch` at a time (`scorejax.train.map_in_batches`, batches a multiple of the
    device count); returns [R, N, ...].
    """
    devices = setup.mesh.shape["data"]
    out = map_in_batches(parallel, runs_vars, x, y, batch_size=batch, multiple=devices)
    return np.moveaxis(out, 0, 1)


class EvalFns(NamedTuple):
    """Jitted per-example functions `fn(runs_vars, xb, yb) -> [b, R, ...]` of R stacked models,
    sharded over the `data` axis; built once per setup (`make_eval_fns`) and passed to the tasks."""

    logits: Callable[..., jax.Array]
    grand: Callable[..., jax.Array]
    input_grads: Callable[..., jax.Array]  # channel-averaged


def make_eval_fns(setup: Setup) -> EvalFns:
    """The `EvalFns` of one setup: logits, GraNd and channel-averaged input gradients."""

    def logits(vs, xb, yb):
        del yb
        return jnp.moveaxis(_over_runs(setup, lambda v: _apply_eval(setup, v, xb), vs), 0, 1)

    def grand(vs, xb, yb):
        def one(v):
            state = {k: a for k, a in v.items() if k != "params"}
            kwargs = {"train": False} if setup.has_batch_norm else {}
            return flax_grand(
                setup.model,
                v["params"],
                _normalize(setup, xb),
                yb,
                method=setup.grand_method,
                chunk_size=setup.grand_chunk,
                model_state=state,
                apply_kwargs=kwargs,
            )

        return jnp.moveaxis(_over_runs(setup, one, vs), 0, 1)

    def input_grads(vs, xb, yb):
        def one(v):
            g = imp.logit_input_grads(lambda p, x: _apply_eval(setup, p, x), v, xb, yb)
            return jnp.mean(g, axis=-1)  # colour channels averaged, as the VoG code does

        return jnp.moveaxis(_over_runs(setup, one, vs), 0, 1)

    return EvalFns(*(data_parallel(f, setup.mesh) for f in (logits, grand, input_grads)))


def _test_accuracy(
    setup: Setup, evals: EvalFns, runs_vars: Any, data: dict, batch: int
) -> np.ndarray:
    z = _over_examples(setup, evals.logits, runs_vars, data["x_test"], data["y_test"], batch)
    return (z.argmax(-1) == np.asarray(data["y_test"])[None]).mean(-1)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str  # "score", "full", "retrain", "window"
    model: str
    noisy: bool = False
    fraction: int = -1  # index into the kept fractions of the task's grid

    @property
    def name(self) -> str:
        tag = "noisy_" if self.noisy else ""
        frac = f"_f{self.fraction}" if self.fraction >= 0 else ""
        return f"{self.model}_{tag}{self.kind}{frac}"


def _models(config) -> list[str]:
    return [m for m in config.run_models.split(",") if m]


def _noise_models(config) -> list[str]:
    return [m for m in config.noise.models.split(",") if m]


def score_names(config) -> list[str]:
    """Names of the averaged scores of a score-run group (high score = hard example)."""
    s = config.scores
    names = [f"el2n_ep{e}" for e in s.el2n_epochs] + [f"grand_ep{e}" for e in s.grand_epochs]
    names += ["forgetting", "low_aum", "low_confidence", "variability", "input_norm"]
    if s.vog:
        names += ["vog", "vog_1run"]
    return names


def _strategies(config, model: str) -> list[str]:
    return [s for s in config.models[model].strategies.split(",") if s]


def _windows(config) -> list[float]:
    return list(config.noise.offsets)


def make_tasks(config) -> list[Task]:
    tasks = []
    for m in _models(config):
        tasks += [Task("score", m), Task("full", m)]
        tasks += [Task("retrain", m, fraction=i) for i in range(len(config.prune.fractions))]
    for m in _noise_models(config):
        tasks += [Task("score", m, True), Task("full", m, True)]
        tasks += [Task("retrain", m, True, i) for i in range(len(config.noise.fractions))]
        if m in _models(config):
            tasks.append(Task("window", m))
    return tasks


def results_template(config, n_train: int) -> dict:
    """Every number the study produces, NaN until its task has run (a fixed checkpoint shape)."""
    seeds, runs = config.prune.seeds, config.scores.runs
    nan = lambda *shape: jnp.full(shape, jnp.nan, jnp.float32)
    out = {}
    for m in _models(config):
        out[m] = {
            "scores": nan(len(score_names(config)), n_train),
            "score_run_acc": nan(runs),
            "full_acc": nan(seeds),
            "acc": nan(len(_strategies(config, m)), len(config.prune.fractions), seeds),
        }
    for m in _noise_models(config):
        out[f"{m}_noisy"] = {
            "scores": nan(len(score_names(config)), n_train),
            "score_run_acc": nan(runs),
            "full_acc": nan(seeds),
            "acc": nan(1 + len(_windows(config)), len(config.noise.fractions), seeds),
        }
        if m in _models(config):
            out[m]["window_acc"] = nan(len(_windows(config)), seeds)
    return out


def _task_epochs(config, task: Task) -> int:
    return config.scores.epochs if task.kind == "score" else config.train.epochs


def _task_runs(config, task: Task) -> int:
    if task.kind == "score":
        return config.scores.runs
    if task.kind == "full":
        return config.prune.seeds
    if task.kind == "window":
        return len(_windows(config)) * config.prune.seeds
    n_strat = 1 + len(_windows(config)) if task.noisy else len(_strategies(config, task.model))
    return n_strat * config.prune.seeds


def _strategy_scores(config, scores: np.ndarray, name: str) -> np.ndarray:
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
    key = jax.random.fold_in(jax.random.key(config.seed), _RANDOM_SUBSET)
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
        window = _strategy_scores(config, np.asarray(scores), config.noise.window_score)
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
        for mult in _windows(config):
            offset = min(int(round(mult * n_flip)), n - n_keep)
            sel = pruning.prune(
                jnp.asarray(window), keep_fraction=frac, strategy="offset", offset=offset
            )
            rows += [sel for _ in seeds]
        return np.stack([np.asarray(r) for r in rows])
    frac = config.prune.fractions[task.fraction]
    scores = np.asarray(results[task.model]["scores"])
    rows = []
    for strategy in _strategies(config, task.model):
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
                    jnp.asarray(_strategy_scores(config, scores, parts[0])),
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
        k = jax.random.fold_in(jax.random.fold_in(base, _SCORE_RUNS), int(task.noisy))
        return jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(n_runs))
    k = jax.random.fold_in(base, _RETRAIN)
    seeds = jnp.arange(n_runs) % config.prune.seeds
    return jax.vmap(lambda s: jax.random.fold_in(k, s))(seeds)


def _score_stats_template(config, n_runs: int, n: int, image_hw: tuple[int, ...]) -> dict:
    s = config.scores
    stats = {
        "el2n": jnp.zeros((len(s.el2n_epochs), n_runs, n), jnp.float32),
        "grand": jnp.zeros((len(s.grand_epochs), n_runs, n), jnp.float32),
        "dynamics": jax.vmap(lambda _: dynamics.DynamicsState.create(n))(jnp.arange(n_runs)),
    }
    if s.vog:
        stats["vog"] = jax.vmap(lambda _: dynamics.VoGState.create((n, *image_hw)))(
            jnp.arange(n_runs)
        )
    return stats


def _record_epoch(
    config, setup: Setup, evals: EvalFns, stats: dict, runs_vars, x, y, epoch: int
) -> dict:
    """Scores of the R runs at the end of `epoch` (0 = initialisation), on the clean inputs."""
    s = config.scores
    logits_fn, grand_fn, grads_fn = evals
    batch = config.eval_batch_size
    stats = dict(stats)
    if epoch in s.el2n_epochs or epoch >= 1:
        z = jnp.asarray(_over_examples(setup, logits_fn, runs_vars, x, y, batch))
        if epoch in s.el2n_epochs:
            e2 = jax.vmap(imp.el2n, in_axes=(0, None))(z, y)
            stats["el2n"] = stats["el2n"].at[list(s.el2n_epochs).index(epoch)].set(e2)
        if epoch >= 1:
            upd = lambda d, zz: d.update(zz, y)
            stats["dynamics"] = jax.vmap(upd)(stats["dynamics"], z)
    if epoch in s.grand_epochs:
        g = jnp.asarray(_over_examples(setup, grand_fn, runs_vars, x, y, batch))
        stats["grand"] = stats["grand"].at[list(s.grand_epochs).index(epoch)].set(g)
    if s.vog and epoch >= 1:
        g = jnp.asarray(_over_examples(setup, grads_fn, runs_vars, x, y, batch))
        stats["vog"] = jax.vmap(lambda st, gg: st.update(gg))(stats["vog"], g)
    return stats


def _finish_scores(config, stats: dict, runs: dict, x, y, num_classes: int) -> np.ndarray:
    """Average each score over the runs: [n_scores, N] in `score_names` order."""
    s = config.scores
    out = [np.asarray(e).mean(0) for e in stats["el2n"]]
    out += [np.asarray(g).mean(0) for g in stats["grand"]]
    forget = jax.vmap(lambda f: dynamics.forgetting_scores(f, never_learned=float(s.epochs)))(
        runs["forget"]
    )
    out.append(np.asarray(forget).mean(0))
    dyn = stats["dynamics"]
    out.append(-np.asarray(jax.vmap(lambda d: d.aum())(dyn)).mean(0))
    carto = jax.vmap(lambda d: d.cartography())(dyn)
    out.append(-np.asarray(carto.confidence).mean(0))
    out.append(np.asarray(carto.variability).mean(0))
    out.append(np.asarray(imp.input_norm(x)))
    if s.vog:
        per_run = jax.vmap(lambda st: st.score(y, normalize="class", num_classes=num_classes))(
            stats["vog"]
        )
        per_run = np.asarray(per_run)
        out += [per_run.mean(0), per_run[0]]
    return np.stack(out).astype(np.float32)


def run_task(
    config,
    task: Task,
    setup: Setup,
    evals: EvalFns,
    epoch_fn,
    tx,
    data: dict,
    labels: jnp.ndarray,
    results: dict,
    task_dir: Path,
    tick,
) -> dict:
    """Train the runs of one task (in chunks of `config.max_parallel_runs`), return its results.

    `evals` scores the runs (`make_eval_fns(setup)`); `tick(run_epochs, loss)` reports progress.
    The task's state is checkpointed in `task_dir` every `config.save_every_epochs` epochs and
    between chunks, and restored from there.
    """
    n = data["x"].shape[0]
    x = data["x"]
    n_runs = _task_runs(config, task)
    epochs = _task_epochs(config, task)
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
            "runs": init_runs(setup, tx, keys[c * chunk : (c + 1) * chunk], x, n),
            "acc": jnp.asarray(acc),
        }
        if task.kind == "score":
            st["stats"] = _score_stats_template(config, chunk, n, tuple(x.shape[1:-1]))
        return put_replicated(st, setup.mesh)

    ckpt = Checkpointer(task_dir, save_every=every, keep=1)
    state = ckpt.restore_or(fresh(0, np.full(n_chunks * chunk, np.nan, np.float32)))
    while True:
        c, start = int(state["chunk"]), int(state["epoch"])
        if start:
            tick(chunk * start, None)
        mem = jnp.asarray(members[c * chunk : (c + 1) * chunk])
        if task.kind == "score" and start == 0:
            state["stats"] = _record_epoch(
                config, setup, evals, state["stats"], state["runs"]["variables"], x, labels, 0
            )
        for e in range(start, epochs):
            state["runs"], loss = epoch_fn(state["runs"], mem, x, labels)
            if task.kind == "score":
                state["stats"] = _record_epoch(
                    config,
                    setup,
                    evals,
                    state["stats"],
                    state["runs"]["variables"],
                    x,
                    labels,
                    e + 1,
                )
            state["epoch"] = jnp.asarray(e + 1, jnp.int32)
            tick(chunk, float(loss))
            if (e + 1) % every == 0 and e + 1 < epochs:
                ckpt.save(c * epochs + e + 1, state)
        acc = np.asarray(state["acc"]).copy()
        acc[c * chunk : (c + 1) * chunk] = _test_accuracy(
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
        scores = _finish_scores(
            config, state["stats"], state["runs"], x, labels, data["num_classes"]
        )
        return {"scores": scores, "score_run_acc": acc}
    if task.kind == "full":
        return {"full_acc": acc}
    grid = acc.reshape(-1, config.prune.seeds)
    return {"window_acc": grid} if task.kind == "window" else {"acc": grid}


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


def _setup(config, model_name: str, mesh: Mesh, num_classes: int, steps_per_epoch: int) -> Setup:
    cfg = config.models[model_name]
    model, has_bn = make_model(cfg, num_classes, precision_from_config(config))
    return Setup(
        model=model,
        has_batch_norm=has_bn,
        batch_size=config.train.batch_size,
        steps_per_epoch=steps_per_epoch,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        augment=config.data.augment,
        vmap_runs=cfg.vmap_runs,
        mesh=mesh,
        grand_method=config.scores.grand_method,
        grand_chunk=config.scores.grand_chunk or None,
    )


def _store(results: dict, task: Task, out: dict) -> dict:
    results = jax.tree.map(np.array, results)  # writable copies
    key = f"{task.model}_noisy" if task.noisy else task.model
    if task.kind == "retrain":
        results[key]["acc"][:, task.fraction, :] = out["acc"]
    else:
        for k, v in out.items():
            results[task.model if k == "window_acc" else key][k] = np.asarray(v, np.float32)
    return results


def _task_metrics(config, task: Task, out: dict) -> dict[str, float]:
    """Scalar summaries of a finished task, for metrics.jsonl / TensorBoard."""
    p = f"{task.name}/"
    if task.kind == "score":
        return {p + "test_acc": float(np.mean(out["score_run_acc"]))}
    if task.kind == "full":
        return {p + "test_acc": float(np.mean(out["full_acc"]))}
    grid = out.get("acc", out.get("window_acc"))
    if task.kind == "retrain" and not task.noisy:
        labels = _strategies(config, task.model)
    else:
        labels = (["random"] if task.noisy else []) + [f"window{w}" for w in _windows(config)]
    return {p + lab: float(np.mean(row)) for lab, row in zip(labels, grid, strict=True)}


def validate(config) -> None:
    """Clear errors for inconsistent settings, before anything runs."""
    precision_from_config(config)
    names = score_names(config)
    s = config.scores
    late = [e for e in (*s.el2n_epochs, *s.grand_epochs) if e > s.epochs]
    if late:
        raise ValueError(f"score epochs {late} exceed scores.epochs={s.epochs}")
    for m in _models(config) + _noise_models(config):
        if m not in config.models:
            raise ValueError(f"model {m!r} has no entry in config.models")
    for m in _models(config):
        for strategy in _strategies(config, m):
            parts = strategy.split(":")
            ok = parts == ["random"] or (
                parts[0] in names
                and len(parts) in (2, 3)
                and parts[1] in ("hardest", "easiest")
                and parts[2:] in ([], ["balanced"])
            )
            if not ok:
                raise ValueError(
                    f"strategy {strategy!r} of {m}: use 'random' or "
                    f"'<score>:hardest|easiest[:balanced]' with a score in {names}"
                )
    for field, name in (
        ("scores.tiebreak", s.tiebreak),
        ("noise.window_score", config.noise.window_score),
    ):
        if name not in names:
            raise ValueError(f"{field}={name!r} is not one of the scores {names}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the whole study in `workdir` (resuming it if interrupted); returns the analysis."""
    validate(config)
    workdir = prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS)
    data = load_data(config)
    n = data["x"].shape[0]
    key = jax.random.key(config.seed)
    noisy_y, flipped = pruning.flip_labels(
        data["y"],
        jax.random.fold_in(key, _NOISE),
        fraction=config.noise.fraction,
        num_classes=data["num_classes"],
    )
    mesh = mesh_from_config(config)
    spe = n // config.train.batch_size
    noise_fracs = [*config.noise.fractions, config.noise.clean_window_fraction]
    smallest = min([*config.prune.fractions, *(noise_fracs if _noise_models(config) else [])]) * n
    if smallest < config.train.batch_size:
        raise ValueError(
            f"the smallest kept subset ({smallest:.0f} of {n} examples) is below one batch of "
            f"{config.train.batch_size}"
        )
    tx = make_optimizer(config, spe)
    tasks = make_tasks(config)
    setups = {m: _setup(config, m, mesh, data["num_classes"], spe) for m in config.models}
    epoch_fns = {m: compile_epoch(s, tx) for m, s in setups.items()}
    eval_fns = {m: make_eval_fns(s) for m, s in setups.items()}
    run_epochs = [_task_runs(config, t) * _task_epochs(config, t) for t in tasks]

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
            out = run_task(
                config,
                task,
                setups[task.model],
                eval_fns[task.model],
                epoch_fns[task.model],
                tx,
                data,
                labels,
                results,
                task_dir,
                tick,
            )
            results = _store(results, task, out)
            writer.write(i + 1, _task_metrics(config, task, out))
            ckpt.save(i + 1, {"done": jnp.asarray(i + 1, jnp.int32), "results": results})
            ckpt.wait()
            shutil.rmtree(task_dir, ignore_errors=True)
    finally:
        progress.close()
        ckpt.close()
    analysis = analyse(config, results, np.asarray(data["y"]), np.asarray(flipped))
    analysis["num_train"], analysis["num_test"] = n, int(data["x_test"].shape[0])
    writer.write(len(tasks) + 1, _flat_metrics(analysis))
    writer.close()
    write_reports(config, analysis, Path(workdir))
    return analysis


# --------------------------------------------------------------------------------------------
# Analysis and reports
# --------------------------------------------------------------------------------------------


def _mean_std(a: np.ndarray) -> list[float]:
    a = np.asarray(a, np.float64)
    return [float(np.mean(a) * 100), float(np.std(a) * 100)]


def analyse(config, results: dict, labels: np.ndarray, flipped: np.ndarray) -> dict:
    """Accuracy tables (%, mean and std over seeds), Spearman correlations, label-noise AUROC."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    names = score_names(config)
    fractions = [float(f) for f in config.prune.fractions]
    out: dict[str, Any] = {"score_names": names, "fractions": fractions, "models": {}}
    num_classes = int(labels.max()) + 1
    for m in _models(config):
        r = results[m]
        scores = np.asarray(r["scores"], np.float64)
        rho = spearmanr(scores.T).statistic
        table = {}
        min_class = {}
        for i, strategy in enumerate(_strategies(config, m)):
            table[strategy] = [_mean_std(r["acc"][i, j]) for j in range(len(fractions))]
            parts = strategy.split(":")
            if parts[0] != "random":
                s = jnp.asarray(_strategy_scores(config, np.asarray(r["scores"]), parts[0]))
                counts = [
                    int(
                        np.bincount(
                            labels[
                                np.asarray(
                                    pruning.prune(
                                        s,
                                        keep_fraction=f,
                                        strategy=parts[1],
                                        labels=jnp.asarray(labels),
                                        num_classes=num_classes,
                                        class_balanced=len(parts) > 2,
                                    )
                                )
                            ],
                            minlength=num_classes,
                        ).min()
                    )
                    for f in fractions
                ]
                min_class[strategy] = counts
        out["models"][m] = {
            "full": _mean_std(r["full_acc"]),
            "score_runs": _mean_std(r["score_run_acc"]),
            "accuracy": table,
            "min_class_count": min_class,
            "spearman": np.asarray(rho, np.float64).round(4).tolist(),
        }
        if "window_acc" in r:
            out["models"][m]["clean_windows"] = [_mean_std(row) for row in r["window_acc"]]
    n_flip = int(flipped.sum())
    for m in _noise_models(config):
        r = results[f"{m}_noisy"]
        scores = np.asarray(r["scores"], np.float64)
        auroc = {nm: float(roc_auc_score(flipped, s)) for nm, s in zip(names, scores, strict=True)}
        top = {
            nm: float(flipped[np.argsort(-s, kind="stable")[:n_flip]].mean())
            for nm, s in zip(names, scores, strict=True)
        }
        rows = ["random"] + [f"window{w}" for w in _windows(config)]
        out.setdefault("noise", {})[m] = {
            "num_flipped": n_flip,
            "offsets": [int(round(w * n_flip)) for w in _windows(config)],
            "fractions": [float(f) for f in config.noise.fractions],
            "full": _mean_std(r["full_acc"]),
            "auroc": auroc,
            "flipped_share_of_top": top,
            "accuracy": {
                row: [_mean_std(r["acc"][i, j]) for j in range(len(config.noise.fractions))]
                for i, row in enumerate(rows)
            },
        }
    return out


def _flat_metrics(analysis: dict) -> dict[str, float]:
    flat = {}
    for m, a in analysis["models"].items():
        flat[f"{m}/full_acc"] = a["full"][0]
        for strategy, row in a["accuracy"].items():
            for f, (mean, _) in zip(analysis["fractions"], row, strict=True):
                flat[f"{m}/keep{round(f * 100)}/{strategy}"] = mean
    for m, a in analysis.get("noise", {}).items():
        flat[f"{m}_noisy/full_acc"] = a["full"][0]
        for name, v in a["auroc"].items():
            flat[f"{m}_noisy/auroc/{name}"] = v
    return flat


def _markdown(config, analysis: dict) -> str:
    names = analysis["score_names"]
    fr = analysis["fractions"]
    lines = [f"# Data diet on `{config.data.name}`", ""]
    for m, a in analysis["models"].items():
        lines += [
            f"## {m}: test accuracy % (mean ± std over {config.prune.seeds} seeds)",
            "",
            f"Full data: {a['full'][0]:.2f} ± {a['full'][1]:.2f}; score runs "
            f"({config.scores.runs}): {a['score_runs'][0]:.2f}.",
            "",
            "| strategy | " + " | ".join(f"keep {round(f * 100)}%" for f in fr) + " |",
            "| --- " * (len(fr) + 1) + "|",
        ]
        for strategy, row in a["accuracy"].items():
            cells = " | ".join(f"{mu:.2f} ± {sd:.2f}" for mu, sd in row)
            lines.append(f"| {strategy} | {cells} |")
        lines += ["", "Smallest class count in the kept subset:", ""]
        lines += ["| strategy | " + " | ".join(f"{round(f * 100)}%" for f in fr) + " |"]
        lines += ["| --- " * (len(fr) + 1) + "|"]
        lines += [
            f"| {s} | " + " | ".join(str(c) for c in counts) + " |"
            for s, counts in a["min_class_count"].items()
        ]
        rho = np.asarray(a["spearman"])
        lines += ["", "Spearman correlation between scores:", ""]
        lines += ["| | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
        lines += [
            f"| {nm} | " + " | ".join(f"{v:.2f}" for v in rho[i]) + " |"
            for i, nm in enumerate(names)
        ]
        lines.append("")
        if "clean_windows" in a:
            noise = analysis["noise"][m]
            cells = " | ".join(
                f"skip {o}: {mu:.2f}"
                for o, (mu, _) in zip(noise["offsets"], a["clean_windows"], strict=True)
            )
            lines += [
                f"Clean labels, keep {round(config.noise.clean_window_fraction * 100)}% after "
                f"skipping the top m by {config.noise.window_score}: {cells}",
                "",
            ]
    for m, a in analysis.get("noise", {}).items():
        lines += [
            f"## {m}, {config.noise.fraction:.0%} flipped labels ({a['num_flipped']} examples)",
            "",
            f"Full noisy data: {a['full'][0]:.2f} ± {a['full'][1]:.2f}.",
            "",
            f"| score | AUROC for flipped | flipped share of the top {a['num_flipped']} |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {nm} | {a['auroc'][nm]:.3f} | {a['flipped_share_of_top'][nm]:.2f} |" for nm in names
        ]
        fr_n = a["fractions"]
        lines += [
            "",
            f"Keep the highest {config.noise.window_score} after skipping the top m (offset):",
            "",
            "| selection | " + " | ".join(f"keep {round(f * 100)}%" for f in fr_n) + " |",
            "| --- " * (len(fr_n) + 1) + "|",
        ]
        labels = ["random"] + [f"skip m={o}" for o in a["offsets"]]
        for lab, row in zip(labels, a["accuracy"].values(), strict=True):
            lines.append(
                f"| {lab} | " + " | ".join(f"{mu:.2f} ± {sd:.2f}" for mu, sd in row) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def write_reports(config, analysis: dict, workdir: Path) -> None:
    """results.json, results.md and the PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (workdir / "results.json").write_text(json.dumps(analysis, indent=1) + "\n")
    (workdir / "results.md").write_text(_markdown(config, analysis))
    fr = analysis["fractions"]
    for m, a in analysis["models"].items():
        # Left: every strategy; right: zoom on the band around random selection.
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
        random_mu = [r[0] for r in a["accuracy"].get("random", [])]
        for ax in axes:
            for i, (strategy, row) in enumerate(a["accuracy"].items()):
                mu = [a["full"][0]] + [r[0] for r in row]
                sd = [a["full"][1]] + [r[1] for r in row]
                if strategy == "random":
                    style = {"ls": "--", "color": "k", "lw": 2}
                else:
                    style = {"color": colors[i % 20], "ls": ("-", "-.", ":")[i % 3]}
                ax.errorbar(
                    [1.0, *fr], mu, yerr=sd, marker="o", ms=3, capsize=2, label=strategy, **style
                )
            ax.set_xlabel("fraction of training data kept")
            ax.set_ylabel("test accuracy (%)")
        if random_mu:
            axes[1].set_ylim(min(random_mu) - 2.0, max(a["full"][0], max(random_mu)) + 1.0)
        axes[0].set_title(f"{config.data.name}, {m}: prune by score, retrain")
        axes[1].set_title("zoom")
        axes[1].legend(fontsize=6, ncol=2, loc="lower right")
        fig.tight_layout()
        fig.savefig(workdir / f"accuracy_vs_kept_{m}.png", dpi=120)
        plt.close(fig)
        names = analysis["score_names"]
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(np.asarray(a["spearman"]), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(im)
        ax.set_title(f"Spearman correlation of scores ({m})")
        fig.tight_layout()
        fig.savefig(workdir / f"spearman_{m}.png", dpi=120)
        plt.close(fig)
    for m, a in analysis.get("noise", {}).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        offsets = a["offsets"]
        for j, f in enumerate(a["fractions"]):
            rows = list(a["accuracy"].values())
            ax.plot(offsets, [r[j][0] for r in rows[1:]], marker="o", label=f"noisy, keep {f:.0%}")
            ax.axhline(rows[0][j][0], ls=":", color=f"C{j}", label=f"noisy, random {f:.0%}")
        clean = analysis["models"].get(m, {}).get("clean_windows")
        if clean:
            ax.plot(
                offsets,
                [r[0] for r in clean],
                marker="s",
                color="k",
                label=f"clean, keep {config.noise.clean_window_fraction:.0%}",
            )
        ax.axhline(a["full"][0], ls="--", color="grey", label="all noisy data")
        ax.set_xlabel(f"highest-{config.noise.window_score} examples skipped (m)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{a['num_flipped']} flipped labels: offset selection ({m})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(workdir / f"label_noise_{m}.png", dpi=120)
        plt.close(fig)
