"""Data-parallel scaling of the score-matching train step: step time, throughput and the share of
device time spent in collectives, for 1, 2, 4, 8 devices and for 2 processes.

Command:

    .venv/bin/python -m experiments.benchmarks.scaling [--devices=1,2,4,8] [--batch=4096]

The workload is one full DSM training step (loss, backward, Adam, EMA) of `ScoreMLP` with
`--width` x `--depth` hidden units on 2-D data, with a fixed GLOBAL batch split over the `data`
axis (strong scaling). The step is the one every study uses (`scorejax.train.make_train_step`).

Timing: `--rounds` rounds of `--steps` steps each after compilation; the fastest round is kept
(the machine may be shared). CPU milliseconds per step (all threads of all processes, from
`time.process_time`) are printed too: on a shared CPU machine they are far less noisy than wall
time, and their growth with the device count is the cost of splitting the step.

Communication share: the step is run under `jax.profiler.trace`, and the trace's XLA-op events
are split into collectives (all-reduce, all-gather, reduce-scatter, collective-permute,
all-to-all, their async start/done halves, NCCL kernels) and the rest; the share is collective
time / all op time, summed over devices. A collective's time
includes waiting for the slowest participant, so on an oversubscribed CPU it also measures load
imbalance.

Where it runs:
- CPU (this machine): each device count runs in a fresh subprocess with
  `--xla_force_host_platform_device_count=K` (XLA fixes the count at start-up), and the 2-process
  row runs 2 processes x K/2 devices joined by JAX's distributed runtime (gloo over TCP). These
  are CPU figures: the "devices" share the same cores, so they measure overhead, not speed-up.
- GPU / TPU: the rows use the first K local devices of one process; run under a multi-host
  launcher (e.g. `launch/gpu_hosts.sh`, Slurm, a TPU slice), the last row uses every device of
  every process.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import app, flags

from scorejax.train import distributed

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to measure.")
_PROCESSES = flags.DEFINE_integer(
    "processes",
    2,
    "CPU only: also run this many processes (0: skip), splitting the largest "
    "even device count of --devices that is <= 4 between them.",
)
_BATCH = flags.DEFINE_integer("batch", 4096, "Global batch (divisible by every device count).")
_WIDTH = flags.DEFINE_integer("width", 256, "Hidden width of the score MLP.")
_DEPTH = flags.DEFINE_integer("depth", 3, "Hidden layers of the score MLP.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timing round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds (the fastest is kept).")
_CHILD = flags.DEFINE_bool("child", False, "Internal: measure this process's devices and print.")

RESULT = "SCALING_RESULT "
# HLO collective ops (and their async halves) and NCCL kernels.
_COLLECTIVE = re.compile(
    r"^(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all|collective-broadcast|"
    r"send|recv|ragged-all-to-all)(-start|-done)?([.\d].*)?$|nccl",
    re.IGNORECASE,
)


def _step_and_inputs(devices: Sequence) -> tuple:
    """The jitted train step on a data mesh over `devices`, its placed state, batch and key."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from scorejax.models.mlp import ScoreMLP
    from scorejax.score_matching import dsm_loss, make_score_fn
    from scorejax.score_sdes import VPSDE
    from scorejax.train import TrainState, make_mesh, make_train_step, put_replicated, shard_batch

    mesh = make_mesh(devices)
    sde = VPSDE()
    model = ScoreMLP(data_dim=2, hidden_sizes=(_WIDTH.value,) * _DEPTH.value)
    score_fn = make_score_fn(model.apply, sde=sde, parametrization="eps")
    tx = optax.adam(1e-3)

    def loss_fn(params, x0, key):
        return dsm_loss(score_fn, params, x0, key, sde=sde)

    step = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.999)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    state = put_replicated(TrainState.create(params, tx), mesh)
    # Each process passes its own slice of the global batch, as a data loader would.
    rng = np.random.default_rng(0)
    global_batch = rng.standard_normal((_BATCH.value, 2)).astype(np.float32)
    per_process = _BATCH.value // jax.process_count()
    local = global_batch[
        jax.process_index() * per_process : (jax.process_index() + 1) * per_process
    ]
    batch = shard_batch(local, mesh)
    key = put_replicated(jax.random.key(1), mesh)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    return step, state, batch, key, n_params


def _comm_share(trace_dir: str) -> tuple[float, float]:
    """(collective share of XLA-op time, total XLA-op seconds) from a profiler trace."""
    events = []
    for path in glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True):
        with gzip.open(path) as f:
            trace = json.load(f)
        events.extend(trace.get("traceEvents", []) if isinstance(trace, dict) else trace)
    device_pids = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and str(e.get("args", {}).get("name", "")).startswith("/device:")
    }
    total = comm = 0.0
    for e in events:
        if e.get("ph") != "X":
            continue
        if device_pids and e.get("pid") not in device_pids:
            continue  # GPU/TPU: count device-side op events only, not host launches
        op = e.get("args", {}).get("hlo_op") or (e.get("name") if device_pids else None)
        if not op:
            continue
        total += e.get("dur", 0.0)
        if _COLLECTIVE.search(op) or _COLLECTIVE.search(e.get("name", "")):
            comm += e.get("dur", 0.0)
    return (comm / total if total else float("nan")), total * 1e-6


def measure(devices: Sequence) -> dict:
    """Step time, throughput and communication share of the train step on `devices`."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    step, state, batch, key, n_params = _step_and_inputs(devices)
    for _ in range(3):  # compile and warm up
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    best = float("inf")
    cpu0 = time.process_time()
    for _ in range(_ROUNDS.value):
        t0 = time.perf_counter()
        for _ in range(_STEPS.value):
            state, metrics = step(state, batch, key)
        jax.block_until_ready((state, metrics))
        best = min(best, (time.perf_counter() - t0) / _STEPS.value)
    # CPU seconds of all threads of all processes per step: unlike wall time, barely affected
    # by other jobs on a shared machine.
    cpu = np.asarray([(time.process_time() - cpu0) / (_ROUNDS.value * _STEPS.value)])
    if jax.process_count() > 1:
        cpu = multihost_utils.process_allgather(cpu)
    cpu_per_step = float(np.sum(cpu))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(_STEPS.value):
                state, metrics = step(state, batch, key)
            jax.block_until_ready((state, metrics))
        share, op_seconds = _comm_share(trace_dir)
    return {
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "devices": len(devices),
        "processes": jax.process_count(),
        "batch": _BATCH.value,
        "params": n_params,
        "step_ms": 1e3 * best,
        "cpu_ms_per_step": 1e3 * cpu_per_step,
        "examples_per_s": _BATCH.value / best,
        "comm_share": share,
        "profiled_op_seconds": op_seconds,
    }


def _child_env(devices: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            distributed.ENV_COORDINATOR,
            distributed.ENV_NUM_PROCESSES,
            distributed.ENV_PROCESS_ID,
        )
    }
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **extra,
    )
    return env


def _child_args() -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.benchmarks.scaling",
        "--child",
        f"--batch={_BATCH.value}",
        f"--width={_WIDTH.value}",
        f"--depth={_DEPTH.value}",
        f"--steps={_STEPS.value}",
        f"--rounds={_ROUNDS.value}",
    ]


def _parse(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    raise RuntimeError(f"no result in the benchmark child's output:\n{output[-3000:]}")


def _run_cpu_children(device_counts: list[int]) -> list[dict]:
    rows = []
    for k in device_counts:
        proc = subprocess.run(
            _child_args(), env=_child_env(k), capture_output=True, text=True, check=False
        )
        if proc.returncode:
            raise RuntimeError(f"{k}-device run failed:\n{proc.stderr[-3000:]}")
        rows.append(_parse(proc.stdout))
        print(f"measured {k} device(s)", file=sys.stderr, flush=True)
    p = _PROCESSES.value
    split = [k for k in device_counts if k % p == 0 and k <= 4] if p > 1 else []
    if split:
        k = max(split)
        port = distributed.free_port()
        procs = [
            subprocess.Popen(
                _child_args(),
                env=_child_env(
                    k // p,
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=str(p),
                    JAX_PROCESS_ID=str(i),
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(p)
        ]
        outputs = [proc.communicate() for proc in procs]
        if any(proc.returncode for proc in procs):
            raise RuntimeError(f"{p}-process run failed:\n{outputs[0][1][-3000:]}")
        rows.append(_parse(outputs[0][0]))
        print(f"measured {p} processes x {k // p} devices", file=sys.stderr, flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["devices"] == 1 and r["processes"] == 1), rows[0])
    platform = rows[0]["platform"]
    title = (
        f"{platform.upper()} figures ({rows[0]['device_kind']}): ScoreMLP "
        f"{_DEPTH.value}x{_WIDTH.value} ({rows[0]['params']:,} parameters), DSM train step, "
        f"global batch {rows[0]['batch']}"
    )
    if platform == "cpu":
        title += (
            f"\nCPU figures: all 'devices' share this machine's {os.cpu_count()} cores, so these "
            "rows show the overhead of splitting a step, not a speed-up."
        )
    lines = [
        title,
        "",
        "| devices | processes | step (ms) | examples/s | vs 1 device | CPU ms / step "
        "| vs 1 device | communication share |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['devices']} | {r['processes']} | {r['step_ms']:.2f} | "
            f"{r['examples_per_s']:,.0f} | {r['examples_per_s'] / base['examples_per_s']:.2f}x | "
            f"{r['cpu_ms_per_step']:.1f} | {r['cpu_ms_per_step'] / base['cpu_ms_per_step']:.2f}x | "
            f"{100 * r['comm_share']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    distributed.initialize("auto")
    import jax

    counts = sorted({int(d) for d in _DEVICES.value})
    for k in counts:
        if _BATCH.value % k:
            raise app.UsageError(f"--batch={_BATCH.value} is not divisible by {k} devices")
    if _CHILD.value:
        result = measure(jax.devices())
        if jax.process_index() == 0:
            print(RESULT + json.dumps(result), flush=True)
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if jax.process_count() == 1 and jax.default_backend() == "cpu":
        rows = _run_cpu_children(counts)
    else:
        local = jax.local_devices()
        rows = (
            [measure(local[:k]) for k in counts if k <= len(local)]
            if (jax.process_count() == 1)
            else []
        )
        if jax.process_count() > 1:
            rows.append(measure(jax.devices()))
    if jax.process_index() == 0:
        print(_table(rows))
        print(f"\n(load average at start: {load:.1f})")


if __name__ == "__main__":
    app.run(main)
