"""Cost of the DCO loss: a jitted loss-and-gradient step of the tiny transformer, DCO against CE.

Each step computes the summed answer log-probability of a batch with `TransformerLM` and
differentiates the batch-mean loss: -log p (CE), `dco_loss(log p, N)` (DCO), and the authors'
weighted form `stop_grad(F) * (-log p)` with F from `dco_weight`. The calls are interleaved
(CE, DCO, weighted, CE, ...) so that load from other jobs on the machine hits all of them
alike; the ratio of median times is printed (goal for DCO / CE: <= 1.05).

    .venv/bin/python -m experiments.benchmarks.dco_step [--batch 256] [--d_model 64] [--reps 50]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.timing import report_load
from scorejax import dco
from scorejax.logprobs import sequence_logprob, token_logprobs
from scorejax.models.transformer import TransformerLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--d_model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq_len", type=int, default=16)
    parser.add_argument("--answer_len", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument("--n", type=float, default=64.0)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    report_load("start")

    model = TransformerLM(
        vocab_size=args.vocab, max_len=args.seq_len, d_model=args.d_model,
        num_layers=args.layers, num_heads=4,
    )
    key = jax.random.key(0)
    tokens = jax.random.randint(key, (args.batch, args.seq_len), 0, args.vocab)
    params = jax.jit(model.init)(key, tokens[:, :-1])
    mask = jnp.broadcast_to(
        jnp.arange(args.seq_len - 1) >= args.seq_len - 1 - args.answer_len, tokens[:, 1:].shape
    )
    n = jnp.float32(args.n)

    def seq_logp(p):
        return sequence_logprob(token_logprobs(model.apply(p, tokens[:, :-1]), tokens[:, 1:]), mask)

    def weighted(p):
        s = seq_logp(p)
        return jnp.mean(dco.dco_weight(s, n=n) * -s)

    losses = {
        "CE": lambda p: jnp.mean(-seq_logp(p)),
        "DCO": lambda p: dco.dco_loss(seq_logp(p), n=n)[0],
        "weighted": weighted,
    }
    steps = {k: jax.jit(jax.value_and_grad(f)) for k, f in losses.items()}
    for f in steps.values():  # compile and warm up
        jax.block_until_ready(f(params))
        jax.block_until_ready(f(params))
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.reps):
        for k, f in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(params))
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"tiny transformer ({n_params} parameters), batch {args.batch}, sequence "
        f"{args.seq_len}, answer {args.answer_len} tokens, N = {args.n:g}, {args.reps} "
        f"interleaved repetitions, {jax.devices()[0].platform}"
    )
    print("| loss | median step (ms) | ratio to CE |")
    print("| --- | --- | --- |")
    for k, v in med.items():
        print(f"| {k} | {1e3 * v:.2f} | {v / med['CE']:.3f} |")
    report_load("end")


if __name__ == "__main__":
    main()
