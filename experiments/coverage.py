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
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.common import check_multiples
from scorejax import dco, pass_at
from scorejax.logprobs import sequence_logprob, token_logprobs
from scorejax.models.transformer import TransformerLM, sample
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    TrainState,
    checkpoint_dir,
    make_mesh,
    make_train_step,
    prepare_workdir,
    put_replicated,
    read_metrics,
    replicated_sharding,
    write_json,
)
from scorejax.train.precision import RECORD_DEFAULTS, Precision, precision_from_config

EVAL_FILE = "eval.json"
Batch = dict[str, jax.Array]


# ----------------------------------------------------------------------------------------------
# Tasks: data, student, log-probability of the reference answer, greedy answer


@dataclasses.dataclass(frozen=True)
class Task:
    """One problem family and its student model.

    Attributes:
      name: the variant.
      make_data: key -> {"train": Batch, "val": Batch, "test": Batch} for one seed; every Batch
        leaf has the problem axis first.
      init: key -> parameters of one student.
      seq_logp: (params, batch, temperature) -> (n,) log p_T(reference answer | problem).
      greedy: (params, batch) -> ((n,) probability of the greedy answer, (n,) bool it is right).
      sample_correct: (params, batch, key, temperature, k) -> (n,) number of k sampled answers
        equal to the reference, or None when pass@N is only computed exactly.
      groups: names of boolean test-batch fields for per-group pass@N (e.g. "hard").
    """

    name: str
    make_data: Callable[[jax.Array], dict[str, Batch]]
    init: Callable[[jax.Array], Any]
    seq_logp: Callable[[Any, Batch, Any], jax.Array]
    greedy: Callable[[Any, Batch], tuple[jax.Array, jax.Array]]
    sample_correct: Callable[[Any, Batch, jax.Array, Any, int], jax.Array] | None
    groups: tuple[str, ...] = ()


def _split(arrays: Batch, sizes: tuple[int, int, int]) -> dict[str, Batch]:
    a, b = sizes[0], sizes[0] + sizes[1]
    return {
        "train": {k: v[:a] for k, v in arrays.items()},
        "val": {k: v[a:b] for k, v in arrays.items()},
        "test": {k: v[b:] for k, v in arrays.items()},
    }


def _linear_logits(precision: Precision, subscripts: str, features: jax.Array,
                   weights: jax.Array) -> jax.Array:
    """A linear student's logits `einsum(subscripts, features, weights)`, computed in the
    policy's compute dtype and returned in float32 (where the softmax and the loss run)."""
    features, weights = precision.cast_to_compute((features, weights))
    return precision.cast_to_output(jnp.einsum(subscripts, features, weights))


def _teacher_student_task(config, precision: Precision) -> Task:
    """Design A of the notes: x ~ N(0, I_d), teacher softmax(beta W* x / sqrt(d)) over K answers,
    one answer drawn per problem; the student is a zero-initialised linear softmax over raw x."""
    c = config.task
    sizes = (c.num_train, c.num_val, c.num_test)

    def make_data(key):
        w = jax.random.normal(jax.random.fold_in(key, 0), (c.dim, c.num_answers))
        x = jax.random.normal(jax.random.fold_in(key, 1), (sum(sizes), c.dim))
        y = jax.random.categorical(jax.random.fold_in(key, 2), c.beta * x @ w / np.sqrt(c.dim))
        return _split({"x": x, "y": y.astype(jnp.int32)}, sizes)

    def init(key):
        return jnp.zeros((c.dim, c.num_answers))

    def log_probs(w, x, temperature):
        return jax.nn.log_softmax(_linear_logits(precision, "nd,dk->nk", x, w) / temperature, -1)

    def seq_logp(w, batch, temperature):
        lp = log_probs(w, batch["x"], temperature)
        return jnp.take_along_axis(lp, batch["y"][:, None], axis=-1)[:, 0]

    def greedy(w, batch):
        lp = log_probs(w, batch["x"], 1.0)
        return jnp.exp(jnp.max(lp, -1)), jnp.argmax(lp, -1) == batch["y"]

    return Task("teacher_student", make_data, init, seq_logp, greedy, None)


def _sequence_features(x: jax.Array, y: jax.Array, vocab: int) -> jax.Array:
    """[x, onehot(y_{t-1}), onehot(y_{t-2})] per answer position: (n, d) x (n, L) -> (n, L, f)."""
    oh = jax.nn.one_hot(y, vocab)
    prev1 = jnp.concatenate([jnp.zeros_like(oh[:, :1]), oh[:, :-1]], 1)
    prev2 = jnp.concatenate([jnp.zeros_like(oh[:, :2]), oh[:, :-2]], 1)
    xs = jnp.broadcast_to(x[:, None, :], (*y.shape, x.shape[-1]))
    return jnp.concatenate([xs, prev1, prev2], -1)


def _sequences_task(config, precision: Precision) -> Task:
    """Design B of the notes: L-token answers over a vocabulary V from an autoregressive teacher
    softmax(beta (A_t x / sqrt(d) + B_t [onehot(y_{t-1}), onehot(y_{t-2})])); the student is a
    zero-initialised linear map per position on [x, onehot(y_{t-1}), onehot(y_{t-2})]."""
    c = config.task
    sizes = (c.num_train, c.num_val, c.num_test)
    vocab, length, dim = c.vocab, c.answer_len, c.dim
    feat = dim + 2 * vocab

    def make_data(key):
        a = jax.random.normal(jax.random.fold_in(key, 0), (length, dim, vocab))
        b = jax.random.normal(jax.random.fold_in(key, 1), (length, 2 * vocab, vocab))
        x = jax.random.normal(jax.random.fold_in(key, 2), (sum(sizes), dim))
        y = jnp.zeros((sum(sizes), length), jnp.int32)
        for t in range(length):
            f = _sequence_features(x, y, vocab)[:, t]
            logits = c.beta * (f[:, :dim] @ a[t] / np.sqrt(dim) + f[:, dim:] @ b[t])
            y = y.at[:, t].set(jax.random.categorical(jax.random.fold_in(key, 3 + t), logits))
        return _split({"x": x, "y": y}, sizes)

    def init(key):
        return jnp.zeros((length, feat, vocab))

    def seq_logp(w, batch, temperature):
        features = _sequence_features(batch["x"], batch["y"], vocab)
        logits = _linear_logits(precision, "nlf,lfv->nlv", features, w)
        mask = jnp.ones(batch["y"].shape, bool)
        return sequence_logprob(token_logprobs(logits, batch["y"], temperature=temperature), mask)

    def greedy(w, batch):
        x = batch["x"]
        y = jnp.zeros((x.shape[0], length), jnp.int32)
        logp = jnp.zeros(x.shape[0])
        for t in range(length):
            features = _sequence_features(x, y, vocab)[:, t]
            lp = jax.nn.log_softmax(_linear_logits(precision, "nf,fv->nv", features, w[t]), -1)
            y = y.at[:, t].set(jnp.argmax(lp, -1))
            logp = logp + jnp.max(lp, -1)
        return jnp.exp(logp), jnp.all(y == batch["y"], -1)

    return Task("sequences", make_data, init, seq_logp, greedy, None)


# Arithmetic vocabulary: digits 0-9, then the two operators and '='.
_PLUS, _QUERY, _EQUALS, _ARITH_VOCAB = 10, 11, 12, 13
_PROMPT_LEN, _ANSWER_LEN = 6, 3


def arithmetic_problems(key: jax.Array, num: int, hard_fraction: float) -> Batch:
    """Synthetic arithmetic with learnable and ambiguous problems (heterogeneous difficulty).

    Prompt "a1 a2 op b1 b2 =" for distinct two-digit pairs (a, b), answer three digits:
    - op '+' (learnable): (a1, b2, (a2 + b1) mod 10): two copies and one digit sum;
    - op '?' (ambiguous): (a1, s1, s2) with a hidden salt s1 s2 drawn uniformly per problem, so
      that no model can beat p = 1/100 on unseen '?' problems (pass@N <= 1 - 0.99^N).
    Returns tokens (num, 9) int32 and hard (num,) bool.
    """
    pairs = jax.random.choice(jax.random.fold_in(key, 0), 10000, (num,), replace=False)
    a, b = pairs // 100, pairs % 100
    a1, a2, b1, b2 = a // 10, a % 10, b // 10, b % 10
    hard = jax.random.uniform(jax.random.fold_in(key, 1), (num,)) < hard_fraction
    salt = jax.random.randint(jax.random.fold_in(key, 2), (num, 2), 0, 10)
    easy = jnp.stack([a1, b2, (a2 + b1) % 10], 1)
    ambiguous = jnp.concatenate([a1[:, None], salt], 1)
    answer = jnp.where(hard[:, None], ambiguous, easy)
    op = jnp.where(hard, _QUERY, _PLUS)
    prompt = jnp.stack([a1, a2, op, b1, b2, jnp.full_like(a1, _EQUALS)], 1)
    return {"tokens": jnp.concatenate([prompt, answer], 1).astype(jnp.int32), "hard": hard}


def _arithmetic_task(config, precision: Precision) -> Task:
    """The tiny causal transformer on `arithmetic_problems` (float32 logits whatever the
    policy's compute dtype)."""
    c, m = config.task, config.model
    sizes = (c.num_train, c.num_val, c.num_test)
    model = TransformerLM(
        vocab_size=_ARITH_VOCAB,
        max_len=_PROMPT_LEN + _ANSWER_LEN,
        d_model=m.d_model,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        **precision.module_kwargs(),
    )
    # logits[:, t] predicts tokens[:, t + 1]; the answer tokens are positions >= P.
    answer_mask = np.arange(_PROMPT_LEN + _ANSWER_LEN - 1) >= _PROMPT_LEN - 1

    def make_data(key):
        return _split(arithmetic_problems(key, sum(sizes), c.hard_fraction), sizes)

    def init(key):
        return model.init(key, jnp.zeros((1, _PROMPT_LEN + _ANSWER_LEN), jnp.int32))

    def logp_of(params, tokens, temperature):
        logits = model.apply(params, tokens[:, :-1])
        mask = jnp.broadcast_to(answer_mask, tokens[:, 1:].shape)
        return sequence_logprob(
            token_logprobs(logits, tokens[:, 1:], temperature=temperature), mask
        )

    def seq_logp(params, batch, temperature):
        return logp_of(params, batch["tokens"], temperature)

    def greedy(params, batch):
        prompt = batch["tokens"][:, :_PROMPT_LEN]
        ans = sample(partial(model.apply, params), prompt, jax.random.key(0), _ANSWER_LEN, 0.0)
        logp = logp_of(params, jnp.concatenate([prompt, ans], 1), 1.0)
        return jnp.exp(logp), jnp.all(ans == batch["tokens"][:, _PROMPT_LEN:], -1)

    def sample_correct(params, batch, key, temperature, k):
        prompt = batch["tokens"][:, :_PROMPT_LEN]
        ref = batch["tokens"][:, _PROMPT_LEN:]
        reps = jnp.repeat(prompt, k, axis=0)
        ans = sample(partial(model.apply, params), reps, key, _ANSWER_LEN, temperature)
        hit = jnp.all(ans.reshape(prompt.shape[0], k, _ANSWER_LEN) == ref[:, None], -1)
        return jnp.sum(hit, -1)

    return Task("arithmetic", make_data, init, seq_logp, greedy, sample_correct, ("hard",))


def make_task(config: ml_collections.ConfigDict) -> Task:
    """The task of `config.task.kind`, its student computing under `config.precision`."""
    kind, precision = config.task.kind, precision_from_config(config)
    if kind == "teacher_student":
        return _teacher_student_task(config, precision)
    if kind == "sequences":
        return _sequences_task(config, precision)
    if kind == "arithmetic":
        return _arithmetic_task(config, precision)
    raise ValueError(f"unknown config.task.kind {kind!r}; known: teacher_student, sequences, "
                     "arithmetic")


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


# ----------------------------------------------------------------------------------------------
# Stacked students: leaves (S seeds, M values of N', ...)


def _per_seed_data(task: Task, config) -> dict[str, Batch]:
    root = jax.random.key(config.seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(config.num_seeds))
    return jax.jit(jax.vmap(task.make_data))(keys)


def _init_students(task: Task, config) -> Any:
    """Students of one seed share their initialisation across N' (paired comparison)."""
    root = jax.random.fold_in(jax.random.key(config.seed), 10_000)
    m = len(config.train_ns)

    def per_seed(i):
        p = task.init(jax.random.fold_in(root, i))
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (m, *x.shape)), p)

    return jax.vmap(per_seed)(jnp.arange(config.num_seeds))


def _optimizer(config) -> optax.GradientTransformation:
    t = config.train
    if t.optimizer == "sgd":
        return optax.sgd(t.learning_rate)
    return optax.adam(t.learning_rate)


def _make_loss_fn(task: Task, train_ns: jax.Array):
    """Sum over (seed, N') of each student's mean DCO loss: each student gets its own gradient.

    The batch has the problem axis first, then the seed axis (so it shards over devices).
    """

    def loss_fn(params, batch, key):
        del key
        batch = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch)

        def per_seed(p_m, b):
            def per_student(p, n):
                return dco.dco_loss(task.seq_logp(p, b, 1.0), n=n)[0]

            return jax.vmap(per_student)(p_m, train_ns)

        losses = jax.vmap(per_seed)(params, batch)
        return jnp.sum(losses), {"ce_student_loss": jnp.mean(losses[:, 0])}

    return loss_fn


def _student_metrics(task: Task, config, p, n_train, data: dict[str, Batch]) -> dict[str, Any]:
    """Metrics of one student (seed already selected) on its seed's data."""
    test_ns = jnp.asarray(config.test_ns, jnp.float32)
    out: dict[str, Any] = {}

    def pass_curve(logp, weights=None):
        per = jax.vmap(lambda n: pass_at.pass_at_n(logp, n=n))(test_ns)  # (len(test_ns), n)
        if weights is None:
            return jnp.mean(per, -1)
        return jnp.sum(per * weights, -1) / jnp.maximum(jnp.sum(weights), 1.0)

    logp_test = task.seq_logp(p, data["test"], 1.0)
    out["test_pass"] = pass_curve(logp_test)
    for g in task.groups:
        mask = data["test"][g].astype(jnp.float32)
        out[f"test_pass_{g}"] = pass_curve(logp_test, mask)
        out[f"test_pass_not_{g}"] = pass_curve(logp_test, 1.0 - mask)
    out["val_pass"] = pass_curve(task.seq_logp(p, data["val"], 1.0))
    logp_train = task.seq_logp(p, data["train"], 1.0)
    out["train_pass1"] = jnp.mean(jnp.exp(logp_train))
    stats = dco.weight_stats(logp_train, n=n_train, threshold=config.eval.live_threshold)
    out["train_mean_weight"] = stats.mean_weight
    out["train_live_fraction"] = stats.live_fraction
    conf, right = task.greedy(p, data["test"])
    confident = conf > 0.5
    out["test_confidence"] = jnp.mean(conf)
    out["test_confident_fraction"] = jnp.mean(confident)
    out["test_confident_correct"] = jnp.sum(confident & right) / jnp.maximum(jnp.sum(confident), 1)
    edges = jnp.linspace(0.0, 1.0, config.eval.confidence_bins + 1)
    out["test_confidence_hist"] = jnp.histogram(conf, edges)[0] / conf.shape[0]
    return out


def _make_evaluate(task: Task, config):
    """Jitted (params (S, M, ...), data) -> metrics with leading axes (S, M)."""
    train_ns = jnp.asarray(config.train_ns, jnp.float32)

    @jax.jit
    def evaluate(params, data):
        def per_seed(p_m, d):
            return jax.vmap(lambda p, n: _student_metrics(task, config, p, n, d))(p_m, train_ns)

        return jax.vmap(per_seed)(params, data)

    return evaluate


@jax.jit
def _update_best(best: dict, params: Any, val_pass: jax.Array, step: jax.Array) -> dict:
    """Early stopping of the CE students (index 0 of N'): per seed and test N, keep the
    parameters with the highest validation pass@N seen so far."""
    ce_val = val_pass[:, 0, :]  # (S, len(test_ns))
    better = ce_val > best["val"]
    ce_params = jax.tree.map(lambda x: x[:, 0], params)

    def pick(old, new):
        new = jnp.broadcast_to(new[:, None], old.shape)
        return jnp.where(better.reshape(better.shape + (1,) * (old.ndim - 2)), new, old)

    return {
        "val": jnp.where(better, ce_val, best["val"]),
        "step": jnp.where(better, step, best["step"]),
        "params": jax.tree.map(pick, best["params"], ce_params),
    }


def _initial_best(params: Any, config) -> dict:
    s, k = config.num_seeds, len(config.test_ns)
    return {
        "val": jnp.full((s, k), -1.0),
        "step": jnp.zeros((s, k), jnp.int32),
        "params": jax.tree.map(lambda x: jnp.broadcast_to(x[:, :1], (s, k, *x.shape[2:])), params),
    }


def _order_ce_first(config) -> None:
    """train_ns with N' = 1 first (the CE student is index 0 everywhere)."""
    ns = tuple(config.train_ns)
    if ns[0] != 1:
        raise ValueError(f"config.train_ns must start with 1 (CE); got {ns}")


# ----------------------------------------------------------------------------------------------
# Training


def _scalar_summary(metrics: dict[str, np.ndarray], config) -> dict[str, float]:
    """Seed means of the headline metrics, for TensorBoard and the progress bar."""
    out = {}
    for j, n_train in enumerate(config.train_ns):
        tag = f"N'={n_train}"
        for i, n in enumerate(config.test_ns):
            out[f"test_pass@{n}/{tag}"] = float(np.mean(metrics["test_pass"][:, j, i]))
        out[f"train_pass1/{tag}"] = float(np.mean(metrics["train_pass1"][:, j]))
        out[f"test_confidence/{tag}"] = float(np.mean(metrics["test_confidence"][:, j]))
        out[f"train_live_fraction/{tag}"] = float(np.mean(metrics["train_live_fraction"][:, j]))
    return out


def train(task: Task, config, workdir: str, data: dict[str, Batch]) -> tuple[TrainState, dict]:
    """Train (or resume) all students; returns the final state and the early-stopping record."""
    t = config.train
    k = t.eval_every
    mesh = make_mesh()
    tx = _optimizer(config)
    train_ns = jnp.asarray(config.train_ns, jnp.float32)
    step_fn = make_train_step(
        _make_loss_fn(task, train_ns),
        tx,
        mesh=mesh,
        ema_decay=0.0,
        steps_per_call=k,
        precision=precision_from_config(config),
    )
    evaluate = _make_evaluate(task, config)
    create = jax.jit(
        lambda: TrainState.create(_init_students(task, config), tx),
        out_shardings=replicated_sharding(mesh),
    )
    state = create()
    best = _initial_best(state.params, config)
    train_data = data["train"]
    n_train = config.task.num_train
    k_data = jax.random.fold_in(jax.random.key(config.seed), 20_000)

    # The k batches of the updates starting at `step`, problem axis first, then the seed axis.
    # Minibatch i is drawn with fold_in(k_data, step + i), so a resumed run sees the same data.
    @jax.jit
    def batches(step):
        if t.batch_size == 0:
            full = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), train_data)
            return jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), full)

        def one(i):
            idx = jax.random.randint(
                jax.random.fold_in(k_data, step + i), (config.num_seeds, t.batch_size), 0, n_train
            )
            picked = jax.tree.map(lambda x: jax.vmap(lambda a, j: a[j])(x, idx), train_data)
            return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), picked)

        return jax.vmap(one)(jnp.arange(k))

    def log_eval(writer, bar, step, state, best):
        metrics = jax.device_get(evaluate(state.params, data))
        best = _update_best(best, state.params, jnp.asarray(metrics["val_pass"]), step)
        summary = _scalar_summary(metrics, config)
        writer.write(step, {**summary, **{f"arrays/{k}": v for k, v in metrics.items()}})
        headline = f"test_pass@{max(config.test_ns)}/N'=1"
        bar.update(step, ce_pass=summary[headline])
        return best

    with Checkpointer(
        checkpoint_dir(workdir), save_every=t.checkpoint_every, keep=t.keep_checkpoints
    ) as ckpt:
        restored = ckpt.restore_or({"state": state, "best": best})
        state, best = restored["state"], restored["best"]
        start = int(state.step)
        key = put_replicated(jax.random.key(0), mesh)
        with (
            MetricWriter(workdir, resume_step=start or None) as writer,
            Progress(t.num_steps, initial=start, desc=f"coverage {task.name}") as bar,
        ):
            if start == 0:
                best = log_eval(writer, bar, 0, state, best)
            last_time, last_step = time.perf_counter(), start
            for step in range(start + k, t.num_steps + 1, k):
                state, train_metrics = step_fn(state, batches(step - k), key)
                best = log_eval(writer, bar, step, state, best)
                now = time.perf_counter()
                writer.write(
                    step,
                    {
                        "loss": float(train_metrics["loss"]),
                        "steps_per_sec": (step - last_step) / (now - last_time),
                    },
                )
                last_time, last_step = now, step
                if step % t.checkpoint_every == 0:
                    ckpt.save(step, {"state": state, "best": best})
        ckpt.save(t.num_steps, {"state": state, "best": best})
    return state, best


# ----------------------------------------------------------------------------------------------
# Final evaluation: temperature control, early-stopped CE, sampled pass@N


def _pass_table(task: Task, config, params, data_split: Batch, temperature) -> jax.Array:
    """Exact pass@N of stacked students at one temperature: (S, M, len(test_ns))."""
    test_ns = jnp.asarray(config.test_ns, jnp.float32)

    def one(p, d):
        logp = task.seq_logp(p, d, temperature)
        return jax.vmap(lambda n: jnp.mean(pass_at.pass_at_n(logp, n=n)))(test_ns)

    return jax.vmap(lambda pm, d: jax.vmap(lambda p: one(p, d))(pm))(params, data_split)


def _sampled_pass(task: Task, config, params, test: Batch, temperature, key) -> jax.Array:
    """Sampled pass@N (unbiased estimator from k = eval.num_samples answers per problem):
    (S, M, len(test_ns)) for stacked students and (S, M) temperatures; NaN where N > k."""
    k = config.eval.num_samples

    def one(p, d, temp, key):
        c = task.sample_correct(p, d, key, temp, k)
        return jnp.stack(
            [jnp.mean(pass_at.pass_at_k(k, c, n)) if n <= k else jnp.nan for n in config.test_ns]
        )

    s, m = params_shape(params)
    keys = jax.random.split(key, s * m).reshape(s, m)
    return jax.vmap(
        lambda pm, d, tm, km: jax.lax.map(lambda a: one(a[0], d, a[1], a[2]), (pm, tm, km))
    )(params, test, temperature, keys)


def params_shape(params: Any) -> tuple[int, int]:
    """The (seed, student) leading axes of stacked parameters."""
    leaf = jax.tree.leaves(params)[0]
    return leaf.shape[0], leaf.shape[1]


def final_evaluation(task: Task, config, state: TrainState, best: dict, data) -> dict[str, Any]:
    """Exact (and, with a sampler, sampled) test pass@N of every method; per-seed arrays."""
    temps = tuple(float(x) for x in config.eval.temperatures)
    table = jax.jit(partial(_pass_table, task, config))
    val_t = np.stack([np.asarray(table(state.params, data["val"], x)) for x in temps])
    test_t = np.stack([np.asarray(table(state.params, data["test"], x)) for x in temps])
    # Per seed, student and test N: the temperature with the best validation pass@N.
    choice = np.argmax(val_t, axis=0)  # (S, M, len(test_ns))
    tuned = np.take_along_axis(test_t, choice[None], 0)[0]
    t1 = temps.index(1.0)
    results: dict[str, Any] = {
        "temperatures": list(temps),
        "final": test_t[t1],
        "tuned_temperature": tuned,
        "tuned_temperature_value": np.asarray(temps)[choice],
        "val_final": val_t[t1],
        "test_vs_temperature": test_t,
    }
    # Early-stopped CE: the j-th stored CE student was chosen for the j-th test N.
    es = np.asarray(jax.jit(partial(_pass_table, task, config))(best["params"], data["test"], 1.0))
    results["early_stopped_ce"] = np.diagonal(es, axis1=1, axis2=2)  # (S, len(test_ns))
    results["early_stopped_ce_step"] = np.asarray(best["step"])

    if config.eval.num_samples:
        key = jax.random.fold_in(jax.random.key(config.seed), 30_000)
        sub = jax.tree.map(lambda x: x[:, : config.eval.sample_problems], data["test"])
        # The same students' exact pass@N on the sampled problems, to check the estimates.
        results["exact_final_sampled_problems"] = np.asarray(table(state.params, sub, 1.0))
        sampled = jax.jit(partial(_sampled_pass, task, config))
        # Temperatures as (S, M) arrays, so calls with equally shaped students share a compile.
        ones_final = jnp.ones(params_shape(state.params), jnp.float32)
        ones_best = jnp.ones(params_shape(best["params"]), jnp.float32)
        results["sampled_final"] = np.asarray(
            sampled(state.params, sub, ones_final, jax.random.fold_in(key, 0))
        )
        es_s = np.asarray(
            sampled(best["params"], sub, ones_best, jax.random.fold_in(key, 1))
        )
        results["sampled_early_stopped_ce"] = np.diagonal(es_s, axis1=1, axis2=2)
        # Tuned-temperature CE: the final CE student once per test N, at that N's temperature.
        ce = jax.tree.map(
            lambda x: jnp.broadcast_to(x[:, :1], (x.shape[0], len(config.test_ns), *x.shape[2:])),
            state.params,
        )
        ce_temps = jnp.asarray(results["tuned_temperature_value"][:, 0, :], jnp.float32)
        tt_s = np.asarray(sampled(ce, sub, ce_temps, jax.random.fold_in(key, 2)))
        results["sampled_tuned_temperature_ce"] = np.diagonal(tt_s, axis1=1, axis2=2)
    return results


def summarize(results: dict[str, Any], config) -> list[dict[str, Any]]:
    """Rows (method, mean and std over seeds of test pass@N for every test N)."""
    rows = []

    def add(name, values, kind="exact"):
        v = 100.0 * np.asarray(values)  # (S, len(test_ns))
        rows.append(
            {
                "method": name,
                "estimate": kind,
                "mean": np.mean(v, 0).round(2).tolist(),
                "std": np.std(v, 0).round(2).tolist(),
            }
        )

    for j, n in enumerate(config.train_ns):
        add("CE, final" if n == 1 else f"DCO N'={n}, final", results["final"][:, j])
    add("CE, early-stopped per N (val)", results["early_stopped_ce"])
    for j, n in enumerate(config.train_ns):
        name = "CE" if n == 1 else f"DCO N'={n}"
        add(f"{name}, temperature tuned per N (val)", results["tuned_temperature"][:, j])
    if "sampled_final" in results:
        sub = f"sampled, {config.eval.sample_problems} problems"
        for j, n in enumerate(config.train_ns):
            name = "CE, final" if n == 1 else f"DCO N'={n}, final"
            add(name, results["exact_final_sampled_problems"][:, j], "exact, same problems")
            add(name, results["sampled_final"][:, j], sub)
        add("CE, early-stopped per N (val)", results["sampled_early_stopped_ce"], sub)
        add("CE, temperature tuned per N (val)", results["sampled_tuned_temperature_ce"], sub)
    return rows


def _markdown(rows: list[dict[str, Any]], config) -> str:
    head = "| method | estimate | " + " | ".join(f"pass@{n}" for n in config.test_ns) + " |"
    lines = [head, "|" + " --- |" * (len(config.test_ns) + 2)]
    for r in rows:
        cells = [
            "-" if np.isnan(m) else f"{m:.1f} ± {s:.1f}"
            for m, s in zip(r["mean"], r["std"], strict=True)
        ]
        lines.append(f"| {r['method']} | {r['estimate']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots


def write_plots(workdir: str, config, results: dict[str, Any]) -> None:
    """pass_at_n_vs_step.png, pass_at_n_vs_n.png and confidence.png in `workdir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [r for r in read_metrics(workdir) if "arrays/test_pass" in r]
    steps = np.asarray([r["step"] for r in history])
    curves = np.asarray([r["arrays/test_pass"] for r in history])  # (T, S, M, len(test_ns))
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(config.train_ns)))
    names = ["CE" if n == 1 else f"DCO N'={n}" for n in config.train_ns]

    fig, axes = plt.subplots(1, len(config.test_ns), figsize=(3.3 * len(config.test_ns), 3.4))
    for i, (ax, n) in enumerate(zip(np.atleast_1d(axes), config.test_ns, strict=True)):
        for j, name in enumerate(names):
            mean = 100 * curves[:, :, j, i].mean(1)
            ax.plot(steps, mean, color="k" if j == 0 else colors[j], lw=2 if j == 0 else 1.2,
                    label=name)
        ax.set_title(f"test pass@{n}")
        ax.set_xlabel("step")
    np.atleast_1d(axes)[0].set_ylabel("% (mean over seeds)")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle(f"coverage {config.variant}: exact test pass@N during training", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "pass_at_n_vs_step.png"), dpi=110)
    plt.close(fig)

    ns = np.asarray(config.test_ns)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for j, name in enumerate(names):
        ax.plot(ns, 100 * results["final"][:, j].mean(0), "o-", color="k" if j == 0 else colors[j],
                label=f"{name} (final)")
    ax.plot(ns, 100 * results["early_stopped_ce"].mean(0), "s--", color="tab:red",
            label="CE early-stopped per N")
    ax.plot(ns, 100 * results["tuned_temperature"][:, 0].mean(0), "^--", color="tab:orange",
            label="CE, temperature tuned per N")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test N")
    ax.set_ylabel("test pass@N (%)")
    ax.set_title(f"coverage {config.variant}: end of training", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "pass_at_n_vs_n.png"), dpi=110)
    plt.close(fig)

    hists = [r for r in history if "arrays/test_confidence_hist" in r]
    first, last = np.asarray(hists[0]["arrays/test_confidence_hist"]), np.asarray(
        hists[-1]["arrays/test_confidence_hist"]
    )
    edges = np.linspace(0, 1, first.shape[-1] + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, h, when in ((axes[0], first, hists[0]["step"]), (axes[1], last, hists[-1]["step"])):
        for j, name in enumerate(names):
            ax.stairs(h[:, j].mean(0), edges, color="k" if j == 0 else colors[j], label=name)
        ax.set_yscale("log")
        ax.set_title(f"step {when}")
        ax.set_xlabel("probability of the greedy answer (test)")
    axes[0].set_ylabel("fraction of test problems")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"coverage {config.variant}: test confidence", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "confidence.png"), dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Entry point


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
    data = _per_seed_data(task, config)
    state, best = train(task, config, workdir, data)
    if os.path.exists(eval_path):  # a finished run that was started again
        with open(eval_path) as f:
            return json.load(f)
    results = final_evaluation(task, config, state, best, data)
    rows = summarize(results, config)
    table = _markdown(rows, config)
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
