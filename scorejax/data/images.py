"""One loader for every TFDS image dataset: seeded, shuffled, sharded numpy batches.

`load(name, split, batch_size=..., seed=...)` reads any TFDS image dataset prepared in a random
access format (array_record) through `tfds.data_source`, so neither TensorFlow nor tf.data is
involved. The package's own `digits` builder (`scorejax.data.digits`) is built automatically
into `data_dir` on first use; standard datasets (`mnist`, `cifar10`, ...) must have been prepared
there beforehand, and a clear error says how when they are missing.

Batching contract (what makes multi-process training and resumption exact):
- `batch_size` is the GLOBAL batch. Epoch e visits the examples in the order
  `perm_e = default_rng([seed, e]).permutation(N)` (or `arange(N)` when not shuffling); global
  batch k of the epoch is `perm_e[k*B:(k+1)*B]`, and shard i of P receives the contiguous slice
  `[i*B/P, (i+1)*B/P)` of it. Shards are therefore disjoint, their union is the global batch, and
  the global batch does not depend on the number of shards.
- Step s of the stream is batch `s % steps_per_epoch` of epoch `s // steps_per_epoch`, so a
  stream restarted with `start_step=s` continues exactly where an uninterrupted one would be.
- `id` is the example's position in the split as stored (stable across runs and machines for the
  same prepared files), so per-example statistics can be tracked over training.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

SCALES = ("[-1,1]", "[0,1]")
# Builders shipped with the package: built on first use, with no download.
PACKAGE_BUILDERS = ("digits",)


class DatasetNotPreparedError(FileNotFoundError):
    """A standard TFDS dataset is not prepared (array_record) in the data directory."""


def default_data_dir() -> str:
    """`$TFDS_DATA_DIR` if set, else `~/tensorflow_datasets` (TFDS's own default)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _prepare_instructions(name: str, data_dir: str) -> str:
    return (
        f"Dataset {name!r} is not prepared in array_record format under {data_dir!r}. "
        "Prepare it once on a machine with internet access and TensorFlow (TFDS encodes the "
        "images with it), e.g.\n"
        f"    pip install tensorflow tensorflow-datasets && tfds build {name} "
        f"--file_format=array_record --data_dir={data_dir}\n"
        f"then copy {data_dir}/{name}/ to this machine (or point data_dir at a bucket holding "
        "it, e.g. gs://...). The package's own datasets "
        f"{list(PACKAGE_BUILDERS)} need no preparation."
    )


def open_source(name: str, split: str, data_dir: str | None = None) -> Any:
    """Opens a random-access TFDS data source, building package datasets on first use.

    Args:
      name: TFDS dataset name (``digits``, ``mnist``, ``cifar10``, ...).
      split: TFDS split string (``train``, ``test``, ``train[:90%]``, ...).
      data_dir: directory holding prepared datasets; `default_data_dir()` when None.

    Returns:
      A `tfds` data source: ``len(source)`` examples, ``source.__getitems__(indices)``.

    Raises:
      ValueError: `name` is not a TFDS dataset.
      DatasetNotPreparedError: a standard dataset is not prepared under `data_dir`.
    """
    import tensorflow_datasets as tfds

    from scorejax.data import digits  # noqa: F401  (registers the `digits` builder)

    data_dir = data_dir or default_data_dir()
    builtin = name.split("/")[0].split(":")[0] in PACKAGE_BUILDERS
    try:
        return tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=builtin,
            builder_kwargs={"file_format": "array_record"},
        )
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"Unknown dataset {name!r}: it is not a TFDS dataset.") from e
    except Exception as e:
        # TFDS reports a missing dataset with KeyError, NotImplementedError or AssertionError
        # depending on what is left on disk; ask the builder instead of parsing those.
        if builtin or tfds.builder(name, data_dir=data_dir).is_prepared():
            raise
        raise DatasetNotPreparedError(_prepare_instructions(name, data_dir)) from e


def read_examples(source: Any, ids: np.ndarray) -> list[dict[str, Any]]:
    """Decoded examples at positions `ids`, read in one batched call where the source allows."""
    keys = [int(i) for i in ids]
    if not keys:
        return []
    try:
        return list(source.__getitems__(keys))
    except TypeError:
        # TFDS's mocked array_record source installs `__getitems__` without binding `self`;
        # element-wise reads work on every source.
        return [source[k] for k in keys]


def scale_images(images: np.ndarray, scale: str) -> np.ndarray:
    """uint8 pixels in {0..255} -> float32 in [-1, 1] (x/127.5 - 1) or [0, 1] (x/255)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    x = np.asarray(images, np.float32)
    return x / 127.5 - 1.0 if scale == "[-1,1]" else x / 255.0


@dataclasses.dataclass
class ImageBatches:
    """An iterable of numpy batches over one split; see the module docstring for the contract.

    Each batch is ``{"image": [b, H, W, C] float32, "label": [b] int32, "id": [b] int64}`` with
    ``b = batch_size // shard_count`` (the last batch of an epoch may be smaller when
    `drop_remainder` is False).
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

    def epoch_order(self, epoch: int) -> np.ndarray:
        """[N] int64: the order in which epoch `epoch` visits the split's examples."""
        if not self.shuffle:
            return np.arange(self.num_examples, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def local_indices(self, step: int) -> np.ndarray:
        """Example ids this shard receives at global step `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        global_ids = order[k * self.batch_size : (k + 1) * self.batch_size]
        if len(global_ids) == self.batch_size:
            b = self.local_batch_size
            return global_ids[self.shard_index * b : (self.shard_index + 1) * b]
        return np.array_split(global_ids, self.shard_count)[self.shard_index]

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Reads, decodes and scales the examples with the given ids."""
        ids = np.asarray(ids, np.int64)
        if self.cache is not None:
            images, labels = self.cache["image"][ids], self.cache["label"][ids]
        else:
            examples = read_examples(self.source, ids)
            images = np.stack([e["image"] for e in examples]) if examples else np.zeros(
                (0, *self.image_shape), np.uint8
            )
            labels = np.array([e.get("label", -1) for e in examples], np.int32)
        return {
            "image": scale_images(images, self.scale),
            "label": np.asarray(labels, np.int32),
            "id": ids,
        }

    def __len__(self) -> int:
        if self.num_epochs is None:
            raise TypeError("an infinite stream (num_epochs=None) has no length")
        return max(self.num_epochs * self.steps_per_epoch - self.start_step, 0)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        step = self.start_step
        end = None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch
        while end is None or step < end:
            yield self.read(self.local_indices(step))
            step += 1


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
) -> ImageBatches:
    """Seeded, shuffled, sharded numpy batches of a TFDS image dataset.

    Args:
      name: ``digits`` (shipped, built on first use), ``mnist``, ``cifar10``, or any TFDS image
        dataset with an ``image`` feature (and optionally ``label``) prepared as array_record.
      split: TFDS split string.
      batch_size: GLOBAL batch size B; each of the `shard_count` shards yields B / shard_count.
      seed: shuffling seed; epoch e uses ``default_rng([seed, e])``.
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

    Returns:
      An `ImageBatches` iterable of ``{"image": [b,H,W,C] float32, "label": [b] int32,
      "id": [b] int64}``.
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
    batches = ImageBatches(
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
    )
    if in_memory:
        raw = read_examples(source, np.arange(n))
        batches.cache = {
            "image": np.stack([e["image"] for e in raw]),
            "label": np.array([e.get("label", -1) for e in raw], np.int32),
        }
    return batches


def load_arrays(
    name: str, split: str, *, data_dir: str | None = None, scale: str = "[-1,1]"
) -> dict[str, np.ndarray]:
    """The whole split as arrays in storage order: image [N,H,W,C] float32, label, id."""
    source = open_source(name, split, data_dir)
    ids = np.arange(len(source), dtype=np.int64)
    raw = read_examples(source, ids)
    return {
        "image": scale_images(np.stack([e["image"] for e in raw]), scale),
        "label": np.array([e.get("label", -1) for e in raw], np.int32),
        "id": ids,
    }
