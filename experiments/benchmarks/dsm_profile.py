"""Where the DSM MLP step's time goes, and what XLA:CPU options and the step's structure give.

Command (about 4 minutes on the 2-core machine):

    .venv/bin/python -m experiments.benchmarks.dsm_profile [--variant_batches=256,2048] \
        [--seconds=1] [--rounds=3]

1. Profile: the step of `experiments.benchmarks.dsm_step` (ScoreMLP 3x256, sigma2-weighted DSM,
   backward, Adam, EMA, 8 steps per call) runs under `jax.profiler.trace`; every XLA op event
   of the trace is put in a category from the op's HLO name and the JAX op path XLA keeps in its
   metadata (forward / backward matmuls, the time embedding's sin/cos, the SiLU elementwise
   fusions, random numbers, the optimiser and EMA updates, the rest) and the table gives each
   category's share of op time, with the slowest ops.
2. Variants: the same step's examples/s at each batch in a fresh process per XLA flag set
   (XLA reads `XLA_FLAGS` once per process), and in this process for structural changes (steps
   per dispatch; SGD for Adam, which shows what Adam's update costs), each as a ratio to the
   default measured in the same run (in this process: the better of a measurement before and
   one after the structural variants).

The load average is printed at the start and end; above 0.5 the figures are flagged.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

import jax
from absl import app, flags

from experiments.benchmarks.dsm_step import make_step
from experiments.benchmarks.timing import best_time, report_load

# --seconds and --rounds are experiments.benchmarks.dsm_step's flags (imported above).
_BATCHES = flags.DEFINE_list("variant_batches", ["256", "2048"], "Batch sizes of the variants.")
_PROFILE_BATCH = flags.DEFINE_integer("profile_batch", 2048, "Batch of the profiled step.")
_CHILD = flags.DEFINE_bool("child", False, "Internal: time the default step, print JSON.")

# XLA:CPU option sets tried, each in its own process: (label, XLA_FLAGS).
XLA_VARIANTS = (
    ("dots by Eigen (no YNNPACK fusions)", "--xla_cpu_experimental_ynn_fusion_type="),
    ("YNNPACK dot + elementwise fusions", "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise"),
    ("XNNPACK dot fusions", "--xla_cpu_experimental_ynn_fusion_type= "
     "--xla_cpu_experimental_xnn_fusion_type=dot"),
    ("fast math", "--xla_cpu_enable_fast_math=true"),
    ("no multi-threaded Eigen", "--xla_cpu_multi_thread_eigen=false"),
)

CATEGORIES = (
    "matmul, forward",
    "matmul, backward",
    "time embedding (sin, cos)",
    "SiLU and its derivative",
    "random numbers",
    "optimiser, EMA, loss and the rest",
)


def examples_per_s(batch: int, seconds: float, rounds: int, **kw) -> float:
    """Examples/s of `make_step(batch, **kw)`, best of `rounds`."""
    step, state, data, key, _ = make_step(batch, **kw)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], data, key)
        metrics["loss"].block_until_ready()

    steps = kw.get("steps_per_call", 8)
    return batch * steps / best_time(run, seconds, rounds)


def category(name: str, op_path: str) -> str:
    """The `CATEGORIES` entry of an XLA op from its HLO name and JAX op path."""
    if "dot_general" in op_path or name.startswith(("dot", "ynn_fusion", "xnn_fusion")):
        if "ScoreMLP" in op_path:
            return "matmul, backward" if "transpose(" in op_path else "matmul, forward"
    if "sin" in name or "cos" in name:  # XLA names a fusion after its ops: sine, cosine
        return "time embedding (sin, cos)"
    if "silu" in op_path:
        return "SiLU and its derivative"
    if "_uniform" in op_path or "_normal" in op_path or "threefry" in op_path:
        return "random numbers"
    return "optimiser, EMA, loss and the rest"


def profile(batch: int, calls: int = 20) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """(share of XLA op time per category, the 8 slowest ops as (name, JAX path, ms per step))."""
    step, state, data, key, _ = make_step(batch)
    for _ in range(3):
        state, metrics = step(state, data, key)
    jax.block_until_ready(metrics)
    hlo = step.lower(state, data, key).compile().as_text()
    paths = {
        m.group(1): m.group(2)
        for m in re.finditer(r'^\s*%?([\w.-]+) = [^\n]*?op_name="([^"]*)"', hlo, re.M)
    }
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                state, metrics = step(state, data, key)
            jax.block_until_ready(metrics)
        events = []
        for path in glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True):
            with gzip.open(path) as f:
                trace = json.load(f)
            events.extend(trace.get("traceEvents", []) if isinstance(trace, dict) else trace)
    per_op = collections.Counter()
    for e in events:
        op = e.get("args", {}).get("hlo_op")
        if e.get("ph") == "X" and op:
            per_op[op] += e.get("dur", 0.0)
    shares = dict.fromkeys(CATEGORIES, 0.0)
    for op, us in per_op.items():
        shares[category(op, paths.get(op, ""))] += us
    total = sum(shares.values())
    steps = calls * 8
    slowest = [(op, paths.get(op, ""), us / steps / 1e3) for op, us in per_op.most_common(8)]
    fractions = {k: v / total for k, v in shares.items()}
    return fractions | {"op ms per step": total / steps / 1e3}, slowest


def child(batches: list[int], seconds: float, rounds: int) -> None:
    rates = {b: examples_per_s(b, seconds, rounds) for b in batches}
    print("RESULT " + json.dumps(rates), flush=True)


def xla_variant(flags_: str, batches: list[int], seconds: float, rounds: int) -> dict | str:
    """Examples/s per batch in a fresh process with `XLA_FLAGS=flags_`, or the error's last line."""
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags_}".strip())
    cmd = [sys.executable, "-m", "experiments.benchmarks.dsm_profile", "--child",
           f"--variant_batches={','.join(map(str, batches))}", f"--seconds={seconds}",
           f"--rounds={rounds}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return {int(k): v for k, v in json.loads(line.removeprefix("RESULT ")).items()}
    return (out.stderr.strip().splitlines() or ["no output"])[-1]


def main(argv):
    del argv
    batches = [int(b) for b in _BATCHES.value]
    seconds, rounds = flags.FLAGS.seconds, flags.FLAGS.rounds
    if _CHILD.value:
        child(batches, seconds, rounds)
        return
    print(f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    report_load("start")
    shares, slowest = profile(_PROFILE_BATCH.value)
    print(f"\nProfile at batch {_PROFILE_BATCH.value}: {shares.pop('op ms per step'):.2f} ms of "
          "XLA ops per step\n\n| category | share of op time |\n| --- | ---: |")
    for name, share in shares.items():
        print(f"| {name} | {share:.1%} |")
    print("\n| slowest ops | JAX op path | ms per step |\n| --- | --- | ---: |")
    for op, path, ms in slowest:
        print(f"| {op} | {path.split('closed_call/')[-1]} | {ms:.3f} |")

    # Structural variants against the default measured in this process, XLA option sets against
    # the default measured in a fresh process like theirs.
    first = {b: examples_per_s(b, seconds, rounds) for b in batches}
    structural = [
        (label, {b: examples_per_s(b, seconds, rounds, **kw) for b in batches})
        for label, kw in (
            ("1 step per call", {"steps_per_call": 1}),
            ("32 steps per call", {"steps_per_call": 32}),
            ("SGD for Adam (what Adam's update costs)", {"adam": False}),
        )
    ]
    here = {b: max(first[b], examples_per_s(b, seconds, rounds)) for b in batches}
    rows = [("default (8 steps per call), this process", here, here)]
    rows += [(label, rates, here) for label, rates in structural]
    fresh = xla_variant("", batches, seconds, rounds)
    rows.append(("default, fresh process", fresh, fresh))
    for label, flags_ in XLA_VARIANTS:
        rates = xla_variant(flags_, batches, seconds, rounds)
        rows.append((f"{label} (`{flags_.strip()}`)", rates, fresh))
    report_load("end")
    head = " | ".join(f"batch {b} examples/s | ratio" for b in batches)
    print(f"\n| variant | {head} |\n| --- |" + " ---: | ---: |" * len(batches))
    for label, rates, base in rows:
        if isinstance(rates, str) or isinstance(base, str):
            print(f"| {label} | failed: {rates if isinstance(rates, str) else base} |")
            continue
        cells = [f"{rates[b]:,.0f} | {rates[b] / base[b]:.2f}" for b in batches]
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    app.run(main)
