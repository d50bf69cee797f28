"""Input-pipeline throughput (`scorejax.data.load`, grain) against the U-Net step's consumption.

Command:

    .venv/bin/python -m experiments.benchmarks.loader [--digits_batch=256] [--cifar_batch=32] \
        [--num_workers=0,2] [--data_dir=...] [--seconds=2] [--rounds=3]

For `digits` (8x8x1, the shipped TFDS builder, read from its array_record files) and a mocked
`cifar10` (32x32x3; `tfds.testing.mock_data` makes random examples on the fly, so it measures
the pipeline, not PNG decoding from disk) it prints the loader's images/s next to the images/s of
the U-Net DSM train step of `experiments.benchmarks.unet_step` at the same image size and batch,
and their ratio (the loader's headroom; the goal is at least 10x). Each dataset is read

- from its source, decoding every batch, with each `--num_workers` count of grain worker
  processes (0: threads in this process), and
- decoded once into memory (`in_memory=True`, what `experiments/score_matching_images.py`
  trains from),

each as numpy batches and as global sharded `jax.Array`s (`sharding=batch_sharding(mesh)`).

A loader's rate is its steady state: after the first batch (which starts the worker processes)
and one untimed window that drains the read-ahead buffers, the best of `--rounds` windows of
`--seconds` each, counting the batches pulled. (`timing.best_time` sizes its rounds from one
timed call; a pull served from a full read-ahead buffer takes microseconds, so it asked for
hundreds of thousands of batches per round: why runs with worker processes or the mocked
CIFAR-10 gave no figure.) The load average is printed before and after; above 0.5 the numbers
are flagged as from a busy machine.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time

import jax
import tensorflow_datasets as tfds
from absl import app, flags

from experiments.benchmarks.timing import report_load
from experiments.benchmarks.unet_step import unet_step
from scorejax.data import load
from scorejax.train import batch_sharding, make_mesh

_DIGITS_BATCH = flags.DEFINE_integer("digits_batch", 256, "Global batch for digits (8x8x1).")
_CIFAR_BATCH = flags.DEFINE_integer("cifar_batch", 32, "Global batch for mocked cifar10.")
_CIFAR_EXAMPLES = flags.DEFINE_integer("cifar_examples", 2048, "Examples in the mocked split.")
_NUM_WORKERS = flags.DEFINE_list("num_workers", ["0", "2"], "grain worker processes to try.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: a temporary one).")
_SKIP_STEP = flags.DEFINE_bool("skip_step", False, "Do not time the U-Net step.")


def loader_rate(batches, batch_size: int, seconds: float, rounds: int) -> float:
    """Steady-state images/s of `batches`' iterator: the best of `rounds` windows of `seconds`.

    Device arrays are waited for. The first batch and one untimed window come first, so worker
    start-up and the initially full read-ahead buffers do not count.
    """
    it = iter(batches)

    def window() -> float:
        count, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            jax.block_until_ready(next(it))
            count += 1
        return count * batch_size / elapsed

    try:
        jax.block_until_ready(next(it))
        window()
        return max(window() for _ in range(rounds))
    finally:
        it.close()


def _load_line(when: str) -> None:
    """Prints the load average `when` (``"at start"``, ``"at end"``) with `timing.report_load`'s
    warning; `experiments.benchmarks.accelerator` prints its own through this too."""
    report_load(when.removeprefix("at "))


def measure(
    name: str,
    label: str,
    batch: int,
    workers: list[int],
    data_dir: str,
    seconds: float,
    rounds: int,
    step_rate: float | None,
) -> list[tuple[str, int, int, str, float, float | None]]:
    """Rows `(label, batch, workers, batches as, loader images/s, step images/s)` of `name`'s
    train split: read from its source with each worker count, then from memory (no workers),
    each as numpy and as global sharded batches."""
    sharding = batch_sharding(make_mesh())
    settings = [(w, False) for w in workers] + [(0, True)]
    rows = []
    for w, in_memory in settings:
        for output, extra in (("numpy", {}), ("global jax.Array", {"sharding": sharding})):
            batches = load(
                name,
                "train",
                batch_size=batch,
                seed=0,
                data_dir=data_dir,
                num_epochs=None,
                num_workers=w,
                in_memory=in_memory,
                **extra,
            )
            rate = loader_rate(batches, batch, seconds, rounds)
            gc.collect()  # frees grain's closed iterators now, not noisily at interpreter exit
            output += ", in memory" if in_memory else ""
            rows.append((label, batch, w, output, rate, step_rate))
            print(f"{name} batch {batch} workers {w} {output}: {rate:,.0f} images/s", flush=True)
    return rows


def main(argv):
    del argv
    # --seconds and --rounds are the flags of experiments.benchmarks.unet_step (imported above).
    seconds, rounds = flags.FLAGS.seconds, flags.FLAGS.rounds
    workers = [int(w) for w in _NUM_WORKERS.value]
    print(
        f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), {os.cpu_count()} cores"
    )
    _load_line("at start")
    data_dir = _DATA_DIR.value or tempfile.mkdtemp(prefix="tfds_")
    rows = []
    for name, size, channels, batch in (
        ("digits", 8, 1, _DIGITS_BATCH.value),
        ("cifar10", 32, 3, _CIFAR_BATCH.value),
    ):
        step_rate = None
        if not _SKIP_STEP.value:
            step_rate = unet_step(size, channels, batch, 1, seconds, rounds)[0]
            print(
                f"U-Net step {size}x{size}x{channels} batch {batch}: {step_rate:,.0f} images/s",
                flush=True,
            )
        label = f"{name} {size}x{size}x{channels}"
        if name == "digits":
            rows += measure(name, label, batch, workers, data_dir, seconds, rounds, step_rate)
        else:
            policy = tfds.testing.MockPolicy.USE_CODE
            with tfds.testing.mock_data(num_examples=_CIFAR_EXAMPLES.value, policy=policy):
                rows += measure(
                    name, label + " (mocked)", batch, workers, data_dir, seconds, rounds,
                    step_rate,
                )
    _load_line("at end")
    print(
        "\n| dataset | batch | workers | batches as | loader images/s | U-Net step images/s "
        "| headroom |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for dataset, batch, w, output, rate, step in rows:
        step_col = "-" if step is None else f"{step:,.0f}"
        ratio = "-" if step is None else f"{rate / step:.1f}x"
        print(f"| {dataset} | {batch} | {w} | {output} | {rate:,.0f} | {step_col} | {ratio} |")
    for dataset, _, w, output, rate, step in rows:
        if step is not None and rate < 10 * step:
            print(f"WARNING: {dataset} with {w} workers ({output}) has less than 10x headroom")


if __name__ == "__main__":
    app.run(main)
