"""DSM train-step throughput of the score MLP on this machine, against a dense matmul and PyTorch.

Command (torch is installed only for this benchmark; `make bench` installs it and runs this):

    .venv/bin/pip install torch==2.13.0   # CPU build
    .venv/bin/python -m experiments.benchmarks.dsm_step

For each batch size it prints: examples/s of one full training step (DSM loss with
`sigma2` weighting on the VP SDE, backward pass, Adam, EMA) of `ScoreMLP` (3 hidden layers of
256, SiLU, Fourier time features) on 2-D data; the step's FLOPs from XLA's cost analysis and the
resulting FLOP rate; that rate's ratio to a 4096 x 4096 float32 matmul's FLOP rate measured in the
same run; and the ratio to the same model, loss, Adam and EMA written in PyTorch (eager, float32).
All numbers are float32. Each timing is the best of several rounds, and the matmul is re-measured
between batch sizes, because the machine is shared and other processes steal cores for seconds at
a time; the load average is printed so a reader can judge the noise.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments.benchmarks.timing import best_time, cost_flops, matmul_rate
from scorejax.data.toy import get_toy
from scorejax.models.mlp import ScoreMLP
from scorejax.score_matching import dsm_loss
from scorejax.score_sdes import VPSDE
from scorejax.train import (
    TrainState,
    make_mesh,
    make_train_step,
    put_replicated,
    shard_batch,
)

_BATCHES = flags.DEFINE_list("batches", ["256", "512", "1024", "2048", "4096", "8192"], "Batches.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 8, "Train steps per jitted dispatch.")
_MICROBATCH = flags.DEFINE_integer(
    "microbatch",
    512,
    "Also time the step with the gradient accumulated over parts of this many examples, for "
    "batches larger than it (0: do not).",
)
_SECONDS = flags.DEFINE_float("seconds", 1.0, "Approximate length of one timing round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds per measurement (best is kept).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch version.")
_TORCH_COMPILE = flags.DEFINE_bool(
    "torch_compile", True, "Also time PyTorch with the loss under torch.compile (inductor)."
)
_MATMUL_N = flags.DEFINE_integer("matmul_n", 4096, "Size of the reference square matmul.")

HIDDEN = (256, 256, 256)
EMBED = 64
LR = 1e-3
EMA = 0.999


def make_step(
    batch: int, *, steps_per_call: int = 8, microbatches: int = 1, adam: bool = True
) -> tuple:
    """(step, state, data, key, flops) of the jitted DSM step at `batch` (Adam, or SGD with
    `adam=False`); `flops()` compiles one plain update and returns XLA's FLOPs for it (its cost
    analysis counts a loop body once)."""
    sde = VPSDE()
    model = ScoreMLP(data_dim=2, hidden_sizes=HIDDEN, embed_dim=EMBED)
    tx = optax.adam(LR) if adam else optax.sgd(LR)

    def loss_fn(params, x0, key):
        return dsm_loss(lambda p, x, t: model.apply(p, x, t), params, x0, key, sde=sde)

    mesh = make_mesh()
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    state = put_replicated(TrainState.create(params, tx), mesh)
    step = make_train_step(
        loss_fn,
        tx,
        mesh=mesh,
        ema_decay=EMA,
        steps_per_call=steps_per_call,
        microbatches=microbatches,
    )
    x0 = get_toy("ring8").sample(jax.random.key(1), steps_per_call * batch)
    if steps_per_call == 1:
        data = shard_batch(x0, mesh)
    else:
        data = shard_batch(x0.reshape(steps_per_call, batch, 2), mesh, batch_axis=1)
    key = jax.random.key(2)

    def flops() -> float:
        single = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=EMA)
        return cost_flops(single.lower(state, shard_batch(x0[:batch], mesh), key).compile())

    return step, state, data, key, flops


def jax_step(batch: int, steps_per_call: int, microbatches: int, seconds: float, rounds: int):
    """(examples/s, FLOPs per train step from XLA) of the jitted DSM step at `batch`."""
    step, state, data, key, flops = make_step(
        batch, steps_per_call=steps_per_call, microbatches=microbatches
    )
    step_flops = flops()
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], data, key)
        metrics["loss"].block_until_ready()

    per_call = best_time(run, seconds, rounds)
    return batch * steps_per_call / per_call, step_flops


def torch_step(batch: int, seconds: float, rounds: int, compiled: bool = False) -> float | None:
    """Examples/s of the same step in PyTorch, or None without torch.

    `compiled`: the loss (forward and, through AOTAutograd, backward) under `torch.compile`
    (inductor, C++ on CPU); the fused Adam and EMA updates stay eager, as in the eager step.
    """
    try:
        import torch
    except ImportError:
        print(
            "PyTorch is not installed: `.venv/bin/pip install torch==2.13.0` (CPU build) to "
            "compare against it; skipping the PyTorch column."
        )
        return None
    torch.manual_seed(0)
    nn = torch.nn
    sde = VPSDE()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("freqs", 16.0 * torch.randn(EMBED // 2))
            self.time_proj = nn.Linear(EMBED, EMBED)
            widths = (2 + EMBED, *HIDDEN)
            pairs = zip(widths[:-1], widths[1:], strict=True)
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
            self.out = nn.Linear(HIDDEN[-1], 2)

        def forward(self, x, t):
            arg = 2 * math.pi * t[:, None] * self.freqs[None]
            temb = nn.functional.silu(self.time_proj(torch.cat([arg.sin(), arg.cos()], -1)))
            h = torch.cat([x, temb], -1)
            for layer in self.hidden:
                h = nn.functional.silu(layer(h))
            return self.out(h)

    net = Net()
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x0 = torch.from_numpy(np.array(get_toy("ring8").sample(jax.random.key(1), batch)))
    t_min, b0, b1 = 1e-5, sde.beta_min, sde.beta_max

    def loss_fn(t, z):
        log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
        std = torch.sqrt(-torch.expm1(2 * log_alpha))[:, None]
        xt = log_alpha.exp()[:, None] * x0 + std * z
        return ((std * net(xt, t) + z) ** 2).sum(-1).mean()

    if compiled:
        loss_fn = torch.compile(loss_fn)

    def run():
        t = t_min + (1 - t_min) * torch.rand(batch)
        z = torch.randn_like(x0)
        loss = loss_fn(t, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params = list(net.parameters())
            torch._foreach_mul_(ema, EMA)
            torch._foreach_add_(ema, params, alpha=1 - EMA)
        loss.item()

    return batch / best_time(run, seconds, rounds)


def main(argv):
    del argv
    seconds, rounds, k, mb = _SECONDS.value, _ROUNDS.value, _STEPS_PER_CALL.value, _MICROBATCH.value
    print(
        f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} cores; float32; steps_per_call={k}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    mm_rates = []
    for b in map(int, _BATCHES.value):
        mm_rates.append(matmul_rate(_MATMUL_N.value, seconds, rounds))
        plain, flops = jax_step(b, k, 1, seconds, rounds)
        micro = jax_step(b, k, b // mb, seconds, rounds)[0] if mb and b > mb else None
        torch_rate = torch_step(b, seconds, rounds) if _TORCH.value else None
        compiled = (
            torch_step(b, seconds, rounds, compiled=True)
            if _TORCH.value and _TORCH_COMPILE.value
            else None
        )
        rows.append((b, flops, plain, micro, torch_rate, compiled))
        print(f"batch {b} done", flush=True)
    mm_rates.append(matmul_rate(_MATMUL_N.value, seconds, rounds))
    mm = max(mm_rates)
    print(
        f"{_MATMUL_N.value}x{_MATMUL_N.value} float32 matmul: best {mm / 1e9:.0f} GFLOP/s "
        f"(range over the run {min(mm_rates) / 1e9:.0f}-{mm / 1e9:.0f})"
    )
    print(f"load average at end: {os.getloadavg()}")
    print()
    print(
        f"| batch | XLA FLOPs / example | JAX examples/s | / matmul | JAX, parts of {mb}: "
        "examples/s | / matmul | PyTorch examples/s | best JAX / PyTorch | PyTorch compiled "
        "examples/s | best JAX / compiled |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b, flops, plain, micro, torch_rate, compiled in rows:
        per_ex = flops / b
        best = max(plain, micro or 0.0)
        micro_cols = f"{micro:,.0f} | {micro * per_ex / mm:.2f}" if micro else "- | -"
        torch_cols = f"{torch_rate:,.0f} | {best / torch_rate:.2f}" if torch_rate else "- | -"
        compiled_cols = f"{compiled:,.0f} | {best / compiled:.2f}" if compiled else "- | -"
        print(
            f"| {b} | {per_ex:,.0f} | {plain:,.0f} | {plain * per_ex / mm:.2f} | {micro_cols} | "
            f"{torch_cols} | {compiled_cols} |"
        )


if __name__ == "__main__":
    app.run(main)
