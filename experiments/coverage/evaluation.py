"""Evaluation of the coverage study's stacked students (leaves (S seeds, M values of N', ...)).

`make_evaluate`: the metrics logged every `train.eval_every` steps (exact test and validation
pass@N, train pass@1, the greedy answer's confidence, the DCO factor on the training set).
`final_evaluation`: at the end, exact test pass@N of the final students, of early-stopped CE and
with the temperature tuned per test N on validation, and, with a sampler, sampled pass@N;
`summarize` reduces it to mean and std over seeds per method.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.coverage.tasks import Batch, Task
from scorejax import dco, pass_at
from scorejax.train import TrainState


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


def make_evaluate(
    task: Task, config: ml_collections.ConfigDict
) -> Callable[[Any, dict[str, Batch]], dict[str, jax.Array]]:
    """Jitted (params (S, M, ...), data) -> metrics with leading axes (S, M)."""
    train_ns = jnp.asarray(config.train_ns, jnp.float32)

    @jax.jit
    def evaluate(params, data):
        def per_seed(p_m, d):
            return jax.vmap(lambda p, n: _student_metrics(task, config, p, n, d))(p_m, train_ns)

        return jax.vmap(per_seed)(params, data)

    return evaluate


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
