"""U-Net DSM train-step throughput at 8x8 and 32x32, against a dense matmul in the same run.

Command:

    .venv/bin/python -m experiments.benchmarks.unet_step [--batches8=64,256] [--batches32=8,32]

For each image size and batch it prints images/s of one full training step (DSM loss with
`sigma2` weighting on the VP SDE, eps-parametrised `UNet`, backward pass, Adam, EMA; the shared
`scorejax.train.make_train_step`), the step's FLOPs from XLA's cost
analysis, the resulting FLOP rate, and its ratio to a 4096 x 4096 float32 matmul's FLOP rate
re-measured between configurations (the machine is shared; best of several rounds each).

Models: at 8x8x1 the `digits` configuration of `configs/score_matching_images.py` (channels 16,
multipliers (1, 2), one block per level, attention at 4x4); at 32x32x3 a
CIFAR-layout U-Net (channels 64, multipliers (1, 2, 2, 2), two blocks per level, attention at 8x8).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments.benchmarks.timing import best_time, cost_flops, matmul_rate
from scorejax.models.unet import UNet
from scorejax.score_matching import dsm_loss, score_from_eps
from scorejax.score_sdes import VPSDE
from scorejax.train import TrainState, make_mesh, make_train_step, put_replicated, shard_batch

_BATCHES8 = flags.DEFINE_list("batches8", ["64", "256"], "Batches at 8x8x1.")
_BATCHES32 = flags.DEFINE_list("batches32", ["8", "32"], "Batches at 32x32x3.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 1, "Train steps per jitted dispatch.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Approximate length of one timing round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds per measurement (best is kept).")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 4096, "Size of the reference square matmul.")

MODELS = {
    (8, 1): UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    (32, 3): UNet(channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(8,)),
}


def unet_step(size: int, channels: int, batch: int, steps_per_call: int, seconds: float,
              rounds: int) -> tuple[float, float, int]:
    """(images/s, XLA FLOPs per train step, parameter count) of the jitted DSM step."""
    sde = VPSDE()
    model = MODELS[(size, channels)]
    tx = optax.adam(2e-4)
    score_fn = score_from_eps(model.apply, sde=sde)

    def loss_fn(params, x0, key):
        return dsm_loss(score_fn, params, x0, key, sde=sde)

    mesh = make_mesh()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, channels)),
                                 jnp.zeros((1,)))
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    state = put_replicated(TrainState.create(params, tx), mesh)
    step = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.999, steps_per_call=steps_per_call)
    shape = (steps_per_call, batch) if steps_per_call > 1 else (batch,)
    x0 = jax.random.uniform(jax.random.key(1), (*shape, size, size, channels), minval=-1.0,
                            maxval=1.0)
    data = shard_batch(x0, mesh, batch_axis=1 if steps_per_call > 1 else 0)
    key = put_replicated(jax.random.key(2), mesh)
    # One compiled program serves the cost analysis and the timing (compiling is the slow part
    # on a CPU). XLA counts a loop body once, so with several steps per call the FLOPs are per
    # update already.
    compiled = step.lower(state, data, key).compile()
    flops = cost_flops(compiled)
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], data, key)
        metrics["loss"].block_until_ready()

    per_call = best_time(run, seconds, rounds)
    return batch * steps_per_call / per_call, flops, num_params


def main(argv):
    del argv
    seconds, rounds, k = _SECONDS.value, _ROUNDS.value, _STEPS_PER_CALL.value
    print(f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} "
          f"device(s), {os.cpu_count()} cores; float32; steps_per_call={k}")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows, mm_rates = [], []
    plan = [(8, 1, int(b)) for b in _BATCHES8.value] + [(32, 3, int(b)) for b in _BATCHES32.value]
    for size, channels, batch in plan:
        mm_rates.append(matmul_rate(_MATMUL_N.value, seconds, rounds))
        rate, flops, num_params = unet_step(size, channels, batch, k, seconds, rounds)
        rows.append((size, channels, batch, num_params, flops, rate))
        print(f"{size}x{size}x{channels} batch {batch}: {rate:,.0f} images/s", flush=True)
    mm_rates.append(matmul_rate(_MATMUL_N.value, seconds, rounds))
    mm = max(mm_rates)
    print(f"{_MATMUL_N.value}^2 float32 matmul: best {mm / 1e9:.0f} GFLOP/s (range over the run "
          f"{min(mm_rates) / 1e9:.0f}-{mm / 1e9:.0f})")
    print(f"load average at end: {os.getloadavg()}\n")
    print("| image | params | batch | XLA GFLOP / image (train step) | images/s | GFLOP/s | "
          "/ matmul |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, channels, batch, num_params, flops, rate in rows:
        per_image = flops / batch
        print(f"| {size}x{size}x{channels} | {num_params:,} | {batch} | {per_image / 1e9:.3f} | "
              f"{rate:,.0f} | {rate * per_image / 1e9:.1f} | {rate * per_image / mm:.2f} |")


if __name__ == "__main__":
    app.run(main)
