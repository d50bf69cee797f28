"""Every speed benchmark in one process, for one GPU or TPU host: one table, in under 8 minutes.

Command (on the accelerator host, from the repository root, with the `experiments` extra):

    .venv/bin/python -m experiments.benchmarks.accelerator --size=full --budget_s=480 \
        --out=runs/benchmarks/accelerator

Expected runtime at `--size=full`: about 5-6 minutes on one H100/H200 or a TPU v5e host (mostly
XLA compiling the two U-Net steps; not yet measured there). `--size=tiny` is the CPU smoke test
(`tests/test_accelerator_benchmark.py`): about 50 s of CPU time on the 2-core CPU, nearly all of
it XLA compiling, so about a minute on an idle machine. Nothing is downloaded: every model is
randomly initialised and CIFAR-10 is mocked.

It prints `jax.devices()`, the device kind and the load average (before and after, with a warning
above 0.5), then one table with a row per measurement, also written to `<out>/accelerator.md`
and `<out>/accelerator.json`:

- matmul: TFLOP/s of a dense n x n matmul in float32 and in bfloat16, the chip's measured limit
  (float32 runs at JAX's default matmul precision: TF32 on recent NVIDIA GPUs, bfloat16 passes
  on TPU; the float32 train steps below use the same precision);
- DSM MLP step: examples/s of `experiments.benchmarks.dsm_step`'s step, and its FLOP rate (XLA's
  cost analysis) as a fraction of the float32 matmul's;
- U-Net step: images/s of the train step of the DDPM CIFAR-10 U-Net
  (`configs/score_matching_cifar10.py:ddpm`: model, SDE, loss, optimiser, EMA) at batch 128 in
  float32 and in bfloat16 (`scorejax.train.precision`), with FLOP utilisation against the matmul
  of the same compute dtype;
- GraNd: the ghost-norm GraNd of a batch against one training step on it
  (`experiments.benchmarks.grand`'s functions; MLP and CNN classifiers);
- DCO: a loss-and-gradient step of a transformer LM with the DCO loss against cross-entropy;
- one-step sampling: samples/s of a one-step denoiser generator against its teacher's PC and
  Euler-Maruyama samplers (a randomly initialised `configs/score_matching.py:gmm8` score MLP,
  the generator of `configs/distill.py:gmm8`; speed does not depend on the weights);
- input pipeline: images/s of the grain loader on mocked CIFAR-10 (`experiments.benchmarks.
  loader`), as numpy and as global sharded batches, against the U-Net step's consumption.

Train steps use the library's data-parallel step over every local device; utilisation is per
chip (XLA's per-device FLOPs against a one-chip matmul). A section whose planned time exceeds
what is left of `--budget_s` is skipped, and a section that fails is reported as failed; both
keep their row with the reason, and the script exits with status 1 if any section failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import tensorflow_datasets as tfds
from absl import flags

from configs import distill as distill_configs
from configs import score_matching as toy_configs
from configs import score_matching_cifar10
from experiments.benchmarks import dsm_step, grand
from experiments.benchmarks.timing import best_time, cost_flops, matmul_rate
from experiments.score_matching import build, make_optimizer, make_sde
from experiments.score_matching_images import make_unet
from scorejax import dco
from scorejax.logprobs import sequence_logprob, token_logprobs
from scorejax.models.classifier import CNNClassifier, MLPClassifier
from scorejax.models.generator import denoiser_generator
from scorejax.models.transformer import TransformerLM
from scorejax.sampling import euler_maruyama, predictor_corrector
from scorejax.score_matching import dsm_loss, make_score_fn
from scorejax.train import TrainState, make_mesh, make_train_step, put_replicated, shard_batch
from scorejax.train.precision import get_precision

CIFAR_SHAPE = (32, 32, 3)
PRECISIONS = ("float32", "bfloat16")
DCO_N = 64.0  # the N of pass@N in the DCO loss (`experiments.benchmarks.dco_step`'s default)


@dataclasses.dataclass(frozen=True)
class Size:
    """Problem sizes and timing effort of one `--size`.

    `unet` overrides fields of `configs/score_matching_cifar10.py:ddpm`'s `model` (empty: the
    DDPM network). `plan_s` is each section's planned seconds, compilation included; a section
    runs only if its plan fits in what is left of the budget.
    """

    seconds: float
    rounds: int
    matmul_n: int
    dsm_batches: tuple[int, ...]
    dsm_steps_per_call: int
    unet: Mapping[str, Any]
    unet_batch: int
    grand_batch: int
    dco: Mapping[str, int]
    samples: int
    teacher_steps: int | None  # None: the teacher config's sampler steps
    loader_batch: int
    loader_examples: int
    plan_s: Mapping[str, float]


SIZES = {
    "tiny": Size(
        seconds=0.05,
        rounds=1,
        matmul_n=256,
        dsm_batches=(256,),
        dsm_steps_per_call=2,
        unet={
            "channels": 8,
            "channel_mult": (1,),
            "num_res_blocks": 1,
            "attn_resolutions": (),
            "num_groups": 4,
        },
        unet_batch=4,
        grand_batch=64,
        dco={
            "batch": 8,
            "seq_len": 16,
            "answer_len": 6,
            "vocab": 32,
            "d_model": 32,
            "layers": 1,
            "heads": 2,
        },
        samples=128,
        teacher_steps=10,
        loader_batch=16,
        loader_examples=64,
        plan_s={
            "matmul": 1,
            "DSM MLP step": 6,
            "U-Net step float32": 12,
            "U-Net step bfloat16": 12,
            "GraNd": 7,
            "DCO": 5,
            "one-step sampling": 4,
            "input pipeline": 4,
        },
    ),
    "full": Size(
        seconds=1.0,
        rounds=3,
        matmul_n=8192,
        dsm_batches=(4096, 65536),
        dsm_steps_per_call=8,
        unet={},
        unet_batch=128,
        grand_batch=8192,
        dco={
            "batch": 64,
            "seq_len": 256,
            "answer_len": 64,
            "vocab": 8192,
            "d_model": 512,
            "layers": 8,
            "heads": 8,
        },
        samples=65536,
        teacher_steps=None,
        loader_batch=128,
        loader_examples=4096,
        plan_s={
            "matmul": 20,
            "DSM MLP step": 45,
            "U-Net step float32": 100,
            "U-Net step bfloat16": 100,
            "GraNd": 40,
            "DCO": 45,
            "one-step sampling": 30,
            "input pipeline": 30,
        },
    ),
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement of a section: `value` in `unit`, and optionally a ratio."""

    setting: str
    value: float | None
    unit: str
    ratio: float | None = None
    ratio_of: str = ""
    note: str = ""


# Rates shared between sections: the matmul rates (FLOP/s) per dtype name, and "unet", the
# fastest U-Net step (images/s) that the input pipeline must keep up with.
Refs = dict[str, float]


def _seconds(fn: Callable[..., Any], *args: Any, size: Size) -> float:
    """Best seconds per call of `fn(*args)`, waiting for its outputs."""
    return best_time(lambda: jax.block_until_ready(fn(*args)), size.seconds, size.rounds)


def _load_line(when: str) -> tuple[float, float, float]:
    """The load average, printed with `loader`'s warning above its threshold."""
    _loader()._load_line(when)
    return os.getloadavg()


def _loader() -> ModuleType:
    """`experiments.benchmarks.loader`, imported once `dsm_step`'s absl flags are dropped.

    `dsm_step` and `unet_step` (which `loader` imports) both define --seconds, --rounds,
    --steps_per_call and --matmul_n at import time, so they cannot be imported into one process
    as they are. This script parses its own arguments and calls only their functions, which
    take every setting as an argument, so `dsm_step`'s flags are not needed.
    """
    for flag in flags.FLAGS.get_flags_for_module(dsm_step.__name__):
        delattr(flags.FLAGS, flag.name)
    return importlib.import_module("experiments.benchmarks.loader")


def matmul_section(size: Size, refs: Refs) -> list[Row]:
    n = size.matmul_n
    rows = []
    for name in PRECISIONS:
        refs[name] = matmul_rate(n, size.seconds, size.rounds, dtype=jnp.dtype(name))
        rows.append(Row(f"{n}x{n} {name}", refs[name] / 1e12, "TFLOP/s"))
    return rows


def _of_matmul(refs: Refs, dtype: str) -> str:
    return f"FLOP rate / {dtype} matmul" if dtype in refs else "(matmul not measured)"


def dsm_section(size: Size, refs: Refs) -> list[Row]:
    k = size.dsm_steps_per_call
    rows = []
    for batch in size.dsm_batches:
        rate, flops = dsm_step.jax_step(batch, k, 1, size.seconds, size.rounds)
        frac = rate * flops / batch / refs["float32"] if "float32" in refs else None
        rows.append(
            Row(
                f"batch {batch}, {k} steps per call, float32",
                rate,
                "examples/s",
                frac,
                _of_matmul(refs, "float32"),
                f"{flops / batch:,.0f} FLOP/example (XLA)",
            )
        )
    return rows


def unet_config(size: Size) -> ml_collections.ConfigDict:
    """`configs/score_matching_cifar10.py:ddpm` with `size.unet`'s model fields."""
    config = score_matching_cifar10.get_config("ddpm")
    for field, value in size.unet.items():
        config.model[field] = value
    return config


def unet_step(size: Size, precision_name: str) -> tuple[float, float, int, float]:
    """(images/s, XLA FLOPs per step and device, parameters, XLA temporaries in bytes) of the
    DDPM U-Net's DSM train step (the image study's loss, optimiser and EMA) under a precision."""
    config = unet_config(size)
    precision = get_precision(precision_name)
    model = make_unet(config).clone(**precision.module_kwargs())
    sde = make_sde(config)
    score_fn = make_score_fn(model.apply, sde=sde, parametrization=config.model.parametrization)

    def loss_fn(params, x0, key):
        return dsm_loss(
            score_fn,
            params,
            x0,
            key,
            sde=sde,
            weighting=config.loss.weighting,
            t_min=config.loss.t_min,
        )

    tx = make_optimizer(config)
    mesh = make_mesh()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *CIFAR_SHAPE)), jnp.zeros((1,)))
    num_params = sum(p.size for p in jax.tree.leaves(params))
    state = put_replicated(TrainState.create(params, tx), mesh)
    step = make_train_step(
        loss_fn, tx, mesh=mesh, ema_decay=config.train.ema_decay, precision=precision
    )
    images = jax.random.uniform(
        jax.random.key(1), (size.unet_batch, *CIFAR_SHAPE), minval=-1.0, maxval=1.0
    )
    data = shard_batch(images, mesh)
    key = put_replicated(jax.random.key(2), mesh)
    compiled = step.lower(state, data, key).compile()
    temp_bytes = float(compiled.memory_analysis().temp_size_in_bytes)
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], data, key)
        metrics["loss"].block_until_ready()

    rate = size.unet_batch / best_time(run, size.seconds, size.rounds)
    return rate, cost_flops(compiled), num_params, temp_bytes


def unet_section(precision_name: str) -> Callable[[Size, Refs], list[Row]]:
    def section(size: Size, refs: Refs) -> list[Row]:
        rate, flops, num_params, temp_bytes = unet_step(size, precision_name)
        refs["unet"] = max(refs.get("unet", 0.0), rate)
        batch = size.unet_batch
        util = rate * flops / batch / refs[precision_name] if precision_name in refs else None
        return [
            Row(
                f"DDPM CIFAR-10 U-Net ({num_params:,} parameters), batch {batch}",
                rate,
                "images/s",
                util,
                _of_matmul(refs, precision_name),
                f"{flops / batch / 1e9:.2f} GFLOP/image (XLA); "
                f"temporaries {temp_bytes / 2**30:.2f} GiB",
            )
        ]

    return section


def grand_section(size: Size, refs: Refs) -> list[Row]:
    del refs
    batch = size.grand_batch
    key = jax.random.key(0)
    x = jax.random.uniform(key, (batch, 8, 8, 1))
    y = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 10)
    rows = []
    models = {
        "MLP 64-1024-1024-10": MLPClassifier(10, features=(1024, 1024)),
        "CNN 16-32-64": CNNClassifier(10),
    }
    for name, model in models.items():
        params = model.init(key, x[:1])["params"]
        fns = grand._functions(model, params)[0]
        t_step = _seconds(fns["train step"], params, x, y, size=size)
        t_ghost = _seconds(fns["GraNd ghost"], params, x, y, size=size)
        rows.append(
            Row(
                f"{name}, batch {batch}: ghost norm",
                1e3 * t_ghost,
                "ms",
                t_ghost / t_step,
                "time / SGD train step",
                f"train step {1e3 * t_step:.3g} ms",
            )
        )
    return rows


def dco_section(size: Size, refs: Refs) -> list[Row]:
    del refs
    d = size.dco
    model = TransformerLM(
        vocab_size=d["vocab"],
        max_len=d["seq_len"],
        d_model=d["d_model"],
        num_layers=d["layers"],
        num_heads=d["heads"],
    )
    tokens = jax.random.randint(jax.random.key(0), (d["batch"], d["seq_len"]), 0, d["vocab"])
    params = jax.jit(model.init)(jax.random.key(1), tokens[:, :-1])
    positions = jnp.arange(d["seq_len"] - 1)
    mask = jnp.broadcast_to(positions >= d["seq_len"] - 1 - d["answer_len"], tokens[:, 1:].shape)
    n = jnp.float32(DCO_N)

    def seq_logp(p):
        logits = model.apply(p, tokens[:, :-1])
        return sequence_logprob(token_logprobs(logits, tokens[:, 1:]), mask)

    losses = {
        "CE": lambda p: jnp.mean(-seq_logp(p)),
        "DCO": lambda p: dco.dco_loss(seq_logp(p), n=n)[0],
    }
    times = {
        k: _seconds(jax.jit(jax.value_and_grad(f)), params, size=size) for k, f in losses.items()
    }
    setting = (
        f"transformer {d['layers']}x{d['d_model']}, vocab {d['vocab']}, batch {d['batch']}"
        f" x {d['seq_len']} tokens, N = {DCO_N:g}"
    )
    return [
        Row(f"{setting}: CE step", 1e3 * times["CE"], "ms"),
        Row(
            f"{setting}: DCO step",
            1e3 * times["DCO"],
            "ms",
            times["DCO"] / times["CE"],
            "time / CE step",
        ),
    ]


def sampling_section(size: Size, refs: Refs) -> list[Row]:
    del refs
    config = toy_configs.get_config("gmm8")
    setup = build(config)
    params = jax.jit(setup.init)(jax.random.key(0))
    generator = denoiser_generator(
        setup.score_fn, setup.sde, distill_configs.get_config("gmm8").generator.t_init
    )
    s = config.sampler
    steps = size.teacher_steps or s.num_steps
    shape = (size.samples, *setup.data.shape)
    key = jax.random.key(1)

    def one_step(k: jax.Array) -> jax.Array:
        return generator(params, jax.random.normal(k, shape))

    def pc(k: jax.Array) -> jax.Array:
        return predictor_corrector(
            setup.score_fn,
            params,
            k,
            sde=setup.sde,
            shape=shape,
            num_steps=steps,
            snr=s.snr,
            n_corrector=s.n_corrector,
            t_eps=s.t_eps,
        )[0]

    def em(k: jax.Array) -> jax.Array:
        return euler_maruyama(
            setup.score_fn, params, k, sde=setup.sde, shape=shape, num_steps=steps, t_eps=s.t_eps
        )[0]

    samplers = {
        "one-step denoiser generator (1 NFE)": one_step,
        f"teacher PC, {steps} steps ({steps * (1 + s.n_corrector)} NFE)": pc,
        f"teacher Euler-Maruyama, {steps} steps ({steps} NFE)": em,
    }
    rates = [
        (name, size.samples / _seconds(jax.jit(f), key, size=size)) for name, f in samplers.items()
    ]
    (name, one_step_rate), teachers = rates[0], rates[1:]
    setting = f"{size.samples} samples of ring8"
    return [Row(f"{name}, {setting}", one_step_rate, "samples/s")] + [
        Row(f"{name}, {setting}", rate, "samples/s", one_step_rate / rate, "one-step / this")
        for name, rate in teachers
    ]


def loader_section(size: Size, refs: Refs) -> list[Row]:
    step = refs.get("unet")
    policy = tfds.testing.MockPolicy.USE_CODE
    with (
        tempfile.TemporaryDirectory(prefix="tfds_") as data_dir,
        tfds.testing.mock_data(num_examples=size.loader_examples, policy=policy),
    ):
        measured = _loader().measure(
            "cifar10",
            "cifar10 (mocked)",
            size.loader_batch,
            [0],
            data_dir,
            size.seconds,
            size.rounds,
            step,
        )
    return [
        Row(
            f"mocked CIFAR-10, batch {batch}, {output}",
            rate,
            "images/s",
            None if step is None else rate / step,
            "headroom: / fastest U-Net step" if step else "(no U-Net step measured)",
        )
        for _, batch, _, output, rate, _ in measured
    ]


# The table's sections, in the order they run (the matmul first: the others divide by it).
SECTIONS: dict[str, Callable[[Size, Refs], list[Row]]] = {
    "matmul": matmul_section,
    "DSM MLP step": dsm_section,
    "U-Net step float32": unet_section("float32"),
    "U-Net step bfloat16": unet_section("bfloat16"),
    "GraNd": grand_section,
    "DCO": dco_section,
    "one-step sampling": sampling_section,
    "input pipeline": loader_section,
}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def markdown(rows: list[tuple[str, Row]]) -> str:
    lines = [
        "| section | setting | value | unit | ratio | ratio is | note |",
        "| --- | --- | ---: | --- | ---: | --- | --- |",
    ]
    lines += [
        f"| {name} | {r.setting} | {_fmt(r.value)} | {r.unit} | {_fmt(r.ratio)} | "
        f"{r.ratio_of} | {r.note} |"
        for name, r in rows
    ]
    return "\n".join(lines)


def run(size_name: str, budget_s: float, out: str | None) -> dict[str, Any]:
    """Run every section that fits in `budget_s`; print the table and write it under `out`."""
    start = time.perf_counter()
    size = SIZES[size_name]
    devices = jax.devices()
    print(f"jax {jax.__version__}; devices: {devices}")
    print(
        f"device kind: {devices[0].device_kind} ({devices[0].platform}, {len(devices)} "
        f"device(s)); size {size_name}; budget {budget_s:.0f} s",
        flush=True,
    )
    load_start = _load_line("at start")
    refs: Refs = {}
    rows: list[tuple[str, Row]] = []
    seconds: dict[str, float] = {}
    failed = []
    for name, section in SECTIONS.items():
        left = budget_s - (time.perf_counter() - start)
        plan = size.plan_s[name]
        if plan > left:
            reason = f"skipped: planned {plan:.0f} s, {max(left, 0.0):.0f} s of the budget left"
            rows.append((name, Row("-", None, "", note=reason)))
            print(f"[{name}] {reason}", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            rows += [(name, row) for row in section(size, refs)]
        except Exception as e:  # one failing section must not lose the others' numbers
            traceback.print_exc()
            rows.append((name, Row("-", None, "", note=f"failed: {type(e).__name__}: {e}")))
            failed.append(name)
        seconds[name] = time.perf_counter() - t0
        print(f"[{name}] {seconds[name]:.1f} s (planned {plan:.0f} s)", flush=True)
    load_end = _load_line("at end")
    total = time.perf_counter() - start
    table = markdown(rows)
    header = (
        f"{devices[0].device_kind} x {len(devices)} ({devices[0].platform}), jax "
        f"{jax.__version__}, size {size_name}, {total:.0f} s of a {budget_s:.0f} s budget; "
        f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    print(f"\n{header}\n\n{table}")
    result = {
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "jax_version": jax.__version__,
        "size": size_name,
        "budget_s": budget_s,
        "total_s": total,
        "section_s": seconds,
        "failed": failed,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "rows": [{"section": name, **dataclasses.asdict(r)} for name, r in rows],
    }
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "accelerator.md"), "w") as f:
            f.write(f"{header}\n\n{table}\n")
        with open(os.path.join(out, "accelerator.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=480.0,
        help="total seconds; sections that would exceed it are skipped",
    )
    parser.add_argument(
        "--out",
        default="runs/benchmarks/accelerator",
        help="directory for accelerator.md and accelerator.json ('' for none)",
    )
    args = parser.parse_args(argv)
    result = run(args.size, args.budget_s, args.out)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
