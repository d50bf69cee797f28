"""One loader for every TFDS image dataset: a `grain` pipeline of seeded, shuffled, sharded batches.

`load(name, split, batch_size=..., seed=...)` reads any TFDS image dataset prepared in a random
access format (array_record) through `tfds.data_source`, so neither TensorFlow nor tf.data is
involved. The package's own `digits` builder (`scorejax.data.digits`) is built automatically
into `data_dir` on first use; standard datasets (`mnist`, `cifar10`, ...) must have been prepared
there beforehand, and a clear error says how when they are missing.

The pipeline is a `grain.MapDataset` over global steps: step -> this process's example ids (from
the epoch's order, computed once per epoch), then one batched read of those ids (array_record
examples parsed in a batch, images decoded straight into it, scaled in numpy). Iterating it
gives a `grain.DatasetIterator` (threads read ahead, or `num_workers` processes), whose state
can be saved.

Batching contract (what makes multi-process training and resumption exact):
- `batch_size` is the GLOBAL batch B. Epoch e visits the examples in the order of grain's index
  shuffle (exactly that of ``grain.MapDataset.range(N).shuffle(s)`` in epoch e, i.e. seeded with
  ``s + e``, where s is derived from `seed`; see `index_shuffle_order`), or in storage order when
  not shuffling. Global batch k of the epoch is positions
  ``[k*B, (k+1)*B)`` of that order (each epoch is batched separately), and process i of P
  receives ``np.array_split(global_ids, P)[i]``: the contiguous slice ``[i*B/P, (i+1)*B/P)`` of a
  full batch. Shards are therefore disjoint, their union is the global batch, and the global
  batch does not depend on the number of shards (nor on the number of worker processes).
- Step s of the stream is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, so a
  stream restarted with `start_step=s` continues exactly where an uninterrupted one would be;
  equivalently, ``iterator.set_state(state)`` with a state from ``iterator.get_state()`` (a JSON
  dict; `scorejax.train.Checkpointer` saves it next to each checkpoint) resumes on the exact
  next batch. A state restores into an iterator with the same `num_workers` (the worker
  processes' states are part of it).
- `id` is the example's position in the split as stored (stable across runs and machines for the
  same prepared files), so per-example statistics can be tracked over training.
- With `sharding` (e.g. ``scorejax.train.batch_sharding(mesh)``) every batch is one global
  `jax.Array` built from the processes' local slices (`jax.make_array_from_process_local_data`),
  ready for a jitted step with that input sharding.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from scorejax._optional import import_optional
from scorejax.data.shuffle import epoch_order, grain_seed
from scorejax.data.sources import SCALES, open_source, read_batch, scale_images

_READ_THREADS = 2  # threads reading a file-backed source (decoding holds the GIL: 4 was slower)
_PREFETCH_BATCHES = 8  # batches read ahead per process
_WORKER_BUFFER = 2  # batches each worker process hands over ahead of the consumer
_DEVICE_BUFFER = 2  # global batches placed on the devices ahead of the consumer


@dataclasses.dataclass(frozen=True)
class _StepIds:
    """Global step s -> this shard's example ids at step s, [~B/P] int64 (picklable for grain's
    worker processes): batch ``s % steps`` of epoch ``s // steps`` of `epoch_order`, split over
    the shards."""

    num_examples: int
    batch_size: int
    steps_per_epoch: int
    seed: int | None
    shard_index: int
    shard_count: int

    def __call__(self, step: int) -> np.ndarray:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        order = epoch_order(self.num_examples, self.seed, epoch)
        global_ids = order[k * self.batch_size : (k + 1) * self.batch_size]
        return np.array_split(global_ids, self.shard_count)[self.shard_index]


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Ids [b] -> ``{"image": [b,H,W,C] float32, "label": [b] int32, "id": [b] int64}``.

    Picklable, so grain can send it to worker processes; reads from `cache` when set.
    """

    source: Any
    scale: str
    image_shape: tuple[int, ...]
    cache: dict[str, np.ndarray] | None = None

    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64)
        if self.cache is not None:
            images, labels = self.cache["image"][ids], self.cache["label"][ids]
        else:
            images, labels = read_batch(self.source, ids, self.image_shape)
        return {"image": scale_images(images, self.scale), "label": labels, "id": ids}


@dataclasses.dataclass(frozen=True)
class _PutGlobal:
    """A process-local numpy batch -> global `jax.Array`s with `sharding` (ids as int32), all
    arrays in one `jax.make_array_from_process_local_data` call (one transfer per device)."""

    sharding: Any

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import jax

        local = dict(batch, id=np.asarray(batch["id"], np.int32))
        return jax.make_array_from_process_local_data(self.sharding, local)


def _allow_worker_processes() -> None:
    """grain's worker processes read absl flags; outside an absl app nobody parsed them, so use
    their defaults (what parsing an empty command line would give)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass
class ImageBatches:
    """An iterable of batches over one split; see the module docstring for the contract.

    Each batch is ``{"image": [b, H, W, C] float32, "label": [b] int32, "id": [b] int64}`` with
    ``b = batch_size // shard_count`` numpy arrays (the last batch of an epoch may be smaller when
    `drop_remainder` is False), or, with `sharding`, global `jax.Array`s of the full batch B (ids
    as int32). ``iter(batches)`` is a `grain.DatasetIterator` (``get_state``/``set_state``;
    ``close()`` it when `num_workers` > 0 to stop its processes).

    Examples:
      >>> import numpy as np, tensorflow_datasets as tfds
      >>> mock = tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)
      >>> with mock:
      ...     batches = load("mnist", "train", batch_size=4, seed=0)
      ...     first, second = list(batches)
      ...     step1 = batches.dataset()[1]  # random access: the batch of step 1
      ...     print(len(batches), batches.image_shape, batches.num_classes)
      2 (28, 28, 1) 10
      >>> bool((step1["id"] == second["id"]).all())
      True
    """

    source: Any
    name: str
    split: str
    batch_size: int
    seed: int
    shuffle: bool
    num_epochs: int | None
    drop_remainder: bool
    shard_index: int
    shard_count: int
    scale: str
    start_step: int
    cache: dict[str, np.ndarray] | None = None
    num_workers: int = 0
    sharding: Any = None

    @property
    def num_examples(self) -> int:
        return len(self.source)

    @property
    def steps_per_epoch(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.shard_count

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.source.dataset_info.features["image"].shape)

    @property
    def num_classes(self) -> int | None:
        features = self.source.dataset_info.features
        return features["label"].num_classes if "label" in features else None

    def ids_dataset(self) -> Any:
        """`grain.MapDataset`: global step s -> this shard's example ids at step s, [b] int64.

        The whole stream from step 0 (`start_step` is not applied); infinite (length
        `sys.maxsize`) when `num_epochs` is None.
        """
        grain = import_optional("grain")

        steps = sys.maxsize if self.num_epochs is None else self.num_epochs * self.steps_per_epoch
        step_ids = _StepIds(
            num_examples=self.num_examples,
            batch_size=self.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            seed=grain_seed(self.seed) if self.shuffle else None,
            shard_index=self.shard_index,
            shard_count=self.shard_count,
        )
        return grain.MapDataset.range(steps).map(step_ids)

    def dataset(self) -> Any:
        """`grain.MapDataset` of numpy batches: element k is the batch of step `start_step + k`.

        Random access, so ``batches.dataset()[k]`` reads one batch without iterating.
        """
        reader = _Reader(self.source, self.scale, self.image_shape, self.cache)
        return self.ids_dataset()[self.start_step :].map(reader)

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Reads, decodes and scales the examples with the given ids (numpy batch)."""
        return _Reader(self.source, self.scale, self.image_shape, self.cache)(ids)

    def __len__(self) -> int:
        if self.num_epochs is None:
            raise TypeError("an infinite stream (num_epochs=None) has no length")
        return max(self.num_epochs * self.steps_per_epoch - self.start_step, 0)

    def __iter__(self) -> Any:
        grain = import_optional("grain")

        threads = 0 if self.cache is not None else _READ_THREADS
        ds = self.dataset().to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=_PREFETCH_BATCHES)
        )
        if self.num_workers > 0:
            _allow_worker_processes()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.num_workers, per_worker_buffer_size=_WORKER_BUFFER
                )
            )
        if self.sharding is not None:
            ds = grain.experimental.ThreadPrefetchIterDataset(
                ds.map(_PutGlobal(self.sharding)), prefetch_buffer_size=_DEVICE_BUFFER
            )
        return iter(ds)


def _check_sharding(
    sharding: Any,
    batch_size: int,
    image_shape: tuple[int, ...],
    shard_index: int,
    shard_count: int,
    full_batches: bool,
) -> None:
    import jax

    if (shard_index, shard_count) != (jax.process_index(), jax.process_count()):
        raise ValueError(
            "with `sharding`, each JAX process must read its own shard: need shard_index="
            f"{jax.process_index()} and shard_count={jax.process_count()}, got {shard_index} and "
            f"{shard_count}"
        )
    if not full_batches:
        raise ValueError(
            "with `sharding` every batch must be full: use drop_remainder=True (or a batch size "
            "dividing the split)"
        )
    try:
        sharding.shard_shape((batch_size, *image_shape))
    except ValueError as e:
        raise ValueError(
            f"global batch_size {batch_size} cannot be split by {sharding}: {e}"
        ) from e


def load(
    name: str,
    split: str,
    *,
    batch_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    scale: str = "[-1,1]",
    in_memory: bool = False,
    start_step: int = 0,
    num_workers: int = 0,
    sharding: Any = None,
) -> ImageBatches:
    """Seeded, shuffled, sharded batches of a TFDS image dataset, read by a grain pipeline.

    Args:
      name: ``digits`` (shipped, built on first use), ``mnist``, ``cifar10``, or any TFDS image
        dataset with an ``image`` feature (and optionally ``label``) prepared as array_record.
      split: TFDS split string.
      batch_size: GLOBAL batch size B; each of the `shard_count` shards yields B / shard_count.
      seed: shuffling seed (>= 0); epoch e is shuffled with grain's per-epoch seed.
      data_dir: prepared-dataset directory; `default_data_dir()` when None.
      shuffle: reshuffle every epoch (False: storage order, for evaluation).
      num_epochs: number of passes; None streams forever.
      drop_remainder: drop each epoch's last partial global batch (False keeps it, split over
        shards as evenly as possible, so one pass covers the split exactly).
      shard_index, shard_count: this reader's shard; default ``jax.process_index()`` and
        ``jax.process_count()`` (one shard per host process).
      scale: ``"[-1,1]"`` or ``"[0,1]"``.
      in_memory: decode the whole split once and batch from memory (small datasets).
      start_step: first global step to yield (resuming a run at step s).
      num_workers: grain worker processes reading and decoding (0: in this process, with
        threads). Batches do not depend on it. Workers are spawned (each imports TFDS, seconds
        to start) and pay off when decoding from the source is the bottleneck, not `in_memory`.
      sharding: a `jax.sharding.Sharding` of a batch along axis 0 (e.g.
        ``scorejax.train.batch_sharding(mesh)``); each batch is then a global `jax.Array` of B
        examples. Needs full batches and the default (per-process) shards.

    Returns:
      An `ImageBatches` iterable of ``{"image": [b,H,W,C] float32, "label": [b] int32,
      "id": [b] int64}``; its iterator is a checkpointable `grain.DatasetIterator`.

    Examples:
      On TFDS's mock of MNIST (8 random examples, no files; ``load("digits", ...)`` builds the
      shipped digits into `data_dir` instead):

      >>> import numpy as np, tensorflow_datasets as tfds
      >>> mock = tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)
      >>> with mock:
      ...     batches = load("mnist", "train", batch_size=4, seed=0, num_epochs=None)
      ...     it = iter(batches)
      ...     first = next(it)
      ...     state = it.get_state()  # JSON; `Checkpointer.save(..., data_state=state)`
      ...     second = next(it)
      ...     resumed = iter(batches)
      ...     resumed.set_state(state)
      ...     again = next(resumed)
      >>> first["image"].shape, first["image"].dtype, first["label"].shape, state
      ((4, 28, 28, 1), dtype('float32'), (4,), {'next_index': 1})
      >>> bool((again["id"] == second["id"]).all())  # resumed on the exact next batch
      True
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    if batch_size % shard_count:
        raise ValueError(
            f"global batch_size {batch_size} is not divisible by shard_count {shard_count}"
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    source = open_source(name, split, data_dir)
    if "image" not in source.dataset_info.features:
        raise ValueError(f"dataset {name!r} has no 'image' feature")
    n = len(source)
    if drop_remainder and n < batch_size:
        raise ValueError(
            f"split {name}:{split} has {n} examples, fewer than one batch of {batch_size}; "
            "use a smaller batch or drop_remainder=False"
        )
    image_shape = tuple(source.dataset_info.features["image"].shape)
    if sharding is not None:
        _check_sharding(
            sharding,
            batch_size,
            image_shape,
            shard_index,
            shard_count,
            full_batches=drop_remainder or n % batch_size == 0,
        )
    cache = None
    if in_memory:
        images, labels = read_batch(source, np.arange(n), image_shape)
        cache = {"image": images, "label": labels}
    return ImageBatches(
        source=source,
        name=name,
        split=split,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        drop_remainder=drop_remainder,
        shard_index=shard_index,
        shard_count=shard_count,
        scale=scale,
        start_step=start_step,
        cache=cache,
        num_workers=num_workers,
        sharding=sharding,
    )


def load_arrays(
    name: str, split: str, *, data_dir: str | None = None, scale: str = "[-1,1]"
) -> dict[str, np.ndarray]:
    """The whole split as arrays in storage order: image [N,H,W,C] float32, label, id.

    Examples:
      >>> import numpy as np, tensorflow_datasets as tfds
      >>> mock = tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)
      >>> with mock:
      ...     arrays = load_arrays("mnist", "test", scale="[0,1]")
      >>> {k: v.shape for k, v in arrays.items()}, arrays["id"].tolist()
      ({'image': (8, 28, 28, 1), 'label': (8,), 'id': (8,)}, [0, 1, 2, 3, 4, 5, 6, 7])
    """
    source = open_source(name, split, data_dir)
    ids = np.arange(len(source), dtype=np.int64)
    images, labels = read_batch(source, ids, tuple(source.dataset_info.features["image"].shape))
    return {"image": scale_images(images, scale), "label": labels, "id": ids}
