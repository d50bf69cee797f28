"""Timing helpers shared by the step benchmarks: best time per call, a matmul's FLOP rate, the
FLOPs XLA's cost analysis assigns to a compiled program, and the load-average report."""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp


def best_time(fn, min_seconds: float, rounds: int) -> float:
    """Best seconds per call of `fn()` (which must block) over `rounds` timed rounds."""
    fn()  # compile and warm up
    t0 = time.perf_counter()
    fn()
    reps = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def matmul_rate(n: int, seconds: float, rounds: int, dtype=jnp.float32) -> float:
    """FLOP/s of a jitted n x n matmul of `dtype` inputs (2 n^3 FLOPs; float32 by default)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    return 2 * n**3 / best_time(lambda: mm(a, b).block_until_ready(), seconds, rounds)


def cost_flops(compiled) -> float:
    """FLOPs of a compiled program from XLA's cost analysis (a dict, or a list of one)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def report_load(when: str) -> None:
    """Print the 1, 5 and 15 minute load averages, with a warning above 0.5: on a busy machine the
    other jobs slow the peers (PyTorch's threads, the matmul reference) more than XLA, which
    flatters every ratio."""
    one, five, fifteen = os.getloadavg()
    print(f"load average at {when}: {one:.2f} {five:.2f} {fifteen:.2f}", flush=True)
    if one > 0.5:
        print(f"WARNING: load average {one:.2f} > 0.5 at {when}: timings are not idle-machine ones")
