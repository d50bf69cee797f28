"""GraNd speed and memory: ghost norm vs chunked vmap vs a per-example loop, per train step.

    .venv/bin/python -m experiments.benchmarks.grand [--batch 1024] [--loop_examples 64]

For an MLP 64-1024-1024-10 (1.1M parameters) and the small digits CNN (`CNNClassifier`, 38k
parameters) on a batch of 8x8x1 inputs, times (jitted, after compilation, median of repeats):
one SGD-momentum training step on the mean cross-entropy, the EL2N forward pass, GraNd by ghost
norm, by chunked vmap (8 and 32 examples per chunk), by full vmap, a Python loop of a jitted
per-example gradient norm (timed on `--loop_examples` examples and scaled to the batch), and the
data_diet-style `jacrev` of the batch loss vector (at B=128 only; it is quadratic in B). Every
time is printed divided by the training step measured in the same run. Then the memory XLA
plans for each jitted function (`compiled.memory_analysis()`: arguments, outputs and
temporaries) against the batch size.

Timings on a shared CPU are noisy: compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.benchmarks.timing import report_load
from scorejax import importance
from scorejax.ghost_norm import flax_grand
from scorejax.models.classifier import CNNClassifier, MLPClassifier


def _median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _peak_bytes(fn, *args) -> int:
    """Arguments + outputs + temporaries of XLA's buffer assignment (CPU reports no peak)."""
    stats = fn.lower(*args).compile().memory_analysis()
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes)


def _functions(model, params):
    tx = optax.sgd(0.05, momentum=0.9)
    opt_state = tx.init(params)

    def mean_loss(p, x, y):
        return jnp.mean(importance.cross_entropy(model.apply({"params": p}, x), y))

    @jax.jit
    def train_step(p, o, x, y):
        grads = jax.grad(mean_loss)(p, x, y)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o

    def loss_one(p, x, y):
        return importance.cross_entropy(model.apply({"params": p}, x[None]), y[None])[0]

    # One jitted call per example that returns only the norm (a fair loop: one dispatch each).
    norm_one = jax.jit(lambda p, x, y: optax.tree.norm(jax.grad(loss_one)(p, x, y)))

    def per_example_loop(p, x, y):
        return [norm_one(p, x[i], y[i]) for i in range(len(x))]

    def jacrev_grand(p, x, y):
        def losses(q):
            return importance.cross_entropy(model.apply({"params": q}, x), y)

        jac = jax.jacrev(losses)(p)
        flat = jnp.concatenate([j.reshape(x.shape[0], -1) for j in jax.tree.leaves(jac)], axis=1)
        return jnp.linalg.norm(flat, axis=-1)

    fns = {
        "train step": lambda p, x, y: train_step(p, opt_state, x, y),
        "EL2N forward": jax.jit(lambda p, x, y: importance.el2n(model.apply({"params": p}, x), y)),
        "GraNd ghost": jax.jit(
            lambda p, x, y: flax_grand(model, p, x, y, method="ghost", chunk_size=None)
        ),
        "GraNd vmap chunk 8": jax.jit(
            lambda p, x, y: flax_grand(model, p, x, y, method="vmap", chunk_size=8)
        ),
        "GraNd vmap chunk 32": jax.jit(
            lambda p, x, y: flax_grand(model, p, x, y, method="vmap", chunk_size=32)
        ),
        "GraNd vmap full": jax.jit(
            lambda p, x, y: flax_grand(model, p, x, y, method="vmap", chunk_size=None)
        ),
    }
    return fns, per_example_loop, jax.jit(jacrev_grand), train_step, opt_state


def run(batch: int, loop_examples: int, repeats: int) -> None:
    key = jax.random.key(0)
    models = {
        "MLP 64-1024-1024-10": MLPClassifier(10, features=(1024, 1024)),
        "CNN 16-32-64": CNNClassifier(10),
    }
    for name, model in models.items():
        x = jax.random.uniform(key, (batch, 8, 8, 1))
        y = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 10)
        params = model.init(key, x[:1])["params"]
        n_params = sum(p.size for p in jax.tree.leaves(params))
        fns, loop, jacrev_fn, train_step, opt_state = _functions(model, params)
        ref = np.asarray(fns["GraNd vmap chunk 32"](params, x, y))
        ghost = np.asarray(fns["GraNd ghost"](params, x, y))
        err = float(np.max(np.abs(ghost - ref) / ref))
        print(f"\n## {name} ({n_params:,} parameters), batch {batch}")
        print(f"ghost vs vmap: max relative difference {err:.1e}")
        times = {k: _median_time(f, params, x, y, repeats=repeats) for k, f in fns.items()}
        n_loop = min(loop_examples, batch)
        t_loop = _median_time(loop, params, x[:n_loop], y[:n_loop], repeats=1) * batch / n_loop
        times[f"per-example loop (from {n_loop})"] = t_loop
        small = min(batch, 128)
        t_jac = _median_time(jacrev_fn, params, x[:small], y[:small], repeats=1)
        t_ghost_small = _median_time(fns["GraNd ghost"], params, x[:small], y[:small], repeats=3)
        step = times["train step"]
        print("| method | time (ms) | / train step |")
        print("| --- | --- | --- |")
        for k, t in times.items():
            print(f"| {k} | {1e3 * t:.2f} | {t / step:.2f} |")
        best = min(times["GraNd vmap chunk 8"], times["GraNd vmap chunk 32"])
        print(
            f"loop / best chunked vmap = {t_loop / best:.1f}x; "
            f"ghost / train step = {times['GraNd ghost'] / step:.2f}; "
            f"data_diet jacrev at B={small}: {1e3 * t_jac:.1f} ms = "
            f"{t_jac / t_ghost_small:.0f}x ghost at the same batch"
        )
        print("\nmemory planned by XLA (MiB: arguments + outputs + temporaries) against the batch")
        sizes = [128, 256, 512, 1024, 2048]
        print("| function | " + " | ".join(f"B={b}" for b in sizes) + " |")
        print("| --- " * (len(sizes) + 1) + "|")
        memfns = {
            "train step": jax.jit(fns["train step"]),
            "GraNd ghost": fns["GraNd ghost"],
            "GraNd vmap chunk 32": fns["GraNd vmap chunk 32"],
            "GraNd vmap full": fns["GraNd vmap full"],
        }
        for k, f in memfns.items():
            row = []
            for b in sizes:
                xb = jax.ShapeDtypeStruct((b, 8, 8, 1), jnp.float32)
                yb = jax.ShapeDtypeStruct((b,), jnp.int32)
                fj = f if hasattr(f, "lower") else jax.jit(f)
                row.append(f"{_peak_bytes(fj, params, xb, yb) / 2**20:.1f}")
            print(f"| {k} | " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--loop_examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    report_load("start")
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    run(args.batch, args.loop_examples, args.repeats)
    report_load("end")


if __name__ == "__main__":
    main()
