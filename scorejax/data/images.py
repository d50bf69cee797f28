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
import functools
import io
import math
import os
import sys
from typing import Any

import numpy as np

from scorejax._optional import import_optional

SCALES = ("[-1,1]", "[0,1]")
# Builders shipped with the package: built on first use, with no download.
PACKAGE_BUILDERS = ("digits",)


class DatasetNotPreparedError(FileNotFoundError):
    """A standard TFDS dataset is not prepared (array_record) in the data directory.

    Examples:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     open_source("mnist", "train", data_dir=tmp)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      scorejax.data.images.DatasetNotPreparedError: Dataset 'mnist' is not prepared in
      array_record format under ... tfds build mnist --file_format=array_record ...
    """


def default_data_dir() -> str:
    """`$TFDS_DATA_DIR` if set, else `~/tensorflow_datasets` (TFDS's own default).

    Examples:
      >>> import os, unittest.mock
      >>> with unittest.mock.patch.dict(os.environ, {"TFDS_DATA_DIR": "/data/tfds"}):
      ...     default_data_dir()
      '/data/tfds'
    """
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

    Examples:
      TFDS's mock data stands in for a prepared MNIST (8 random examples, no files):

      >>> import numpy as np, tensorflow_datasets as tfds
      >>> mock = tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)
      >>> with mock:
      ...     source = open_source("mnist", "train")
      >>> len(source), source.dataset_info.features["image"].shape
      (8, (28, 28, 1))
    """
    tfds = import_optional("tensorflow_datasets")

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
    """Decoded examples at positions `ids`, read in one batched call where the source allows.

    Examples:
      >>> import numpy as np, tensorflow_datasets as tfds
      >>> mock = tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)
      >>> with mock:
      ...     examples = read_examples(open_source("mnist", "train"), np.array([3, 0]))
      >>> [sorted(e) for e in examples], examples[0]["image"].shape
      ([['image', 'label'], ['image', 'label']], (28, 28, 1))
    """
    keys = [int(i) for i in ids]
    if not keys:
        return []
    try:
        return list(source.__getitems__(keys))
    except TypeError:
        # TFDS's mocked array_record source installs `__getitems__` without binding `self`;
        # element-wise reads work on every source.
        return [source[k] for k in keys]


_FORMATS = ("PNG", "JPEG")  # the encodings of TFDS's Image feature


def _reads_serialized(source: Any) -> bool:
    """Whether `read_batch` may parse `source`'s records itself: an array_record file source
    decoded by TFDS's default method, with a uint8 PNG/JPEG ``image`` and an optional
    ``label`` class (everything `load` needs; other features are skipped)."""
    tfds = import_optional("tensorflow_datasets")
    array_record = import_optional("array_record.python.array_record_data_source")

    features = source.dataset_info.features
    image = features["image"]
    return (
        isinstance(source.data_source, array_record.ArrayRecordDataSource)
        and source.decoders is None
        and source.deserialize_method == tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE
        and isinstance(image, tfds.features.Image)
        and image.np_dtype == np.uint8
        and image.encoding_format in (None, "png", "jpeg")
        and ("label" not in features or isinstance(features["label"], tfds.features.ClassLabel))
    )


def _decode_records(
    records: list[bytes], image_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Serialized TFDS examples [b] -> (images [b, H, W, C] uint8, labels [b] int32, -1 if none).

    Parses each `tf.train.Example` and decodes its image with PIL straight into the batch, the
    same pixels as TFDS's own decoding (which uses PIL without OpenCV) at a fraction of its
    per-record cost (no per-feature dispatch, nesting or intermediate arrays).
    """
    Image = import_optional("PIL.Image")
    from tensorflow_datasets.proto import tf_example_pb2

    images = np.empty((len(records), *image_shape), np.uint8)
    labels = np.full((len(records),), -1, np.int32)
    for i, record in enumerate(records):
        feature = tf_example_pb2.Example.FromString(record).features.feature
        with Image.open(io.BytesIO(feature["image"].bytes_list.value[0]), formats=_FORMATS) as im:
            images[i] = np.asarray(im).reshape(image_shape)
        if "label" in feature:
            labels[i] = feature["label"].int64_list.value[0]
    return images, labels


def read_batch(
    source: Any, ids: np.ndarray, image_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Examples at positions `ids` [b] -> (images [b, H, W, C] uint8, labels [b] int32).

    Array_record sources are read in one batched call and parsed by `_decode_records`; any
    other source (e.g. TFDS's mock) through TFDS's decoding. Labels are -1 without a label.

    Examples:
      >>> import numpy as np, tensorflow_datasets as tfds
      >>> mock = tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)
      >>> with mock:
      ...     images, labels = read_batch(open_source("mnist", "train"), np.array([3, 0, 3]),
      ...                                 (28, 28, 1))
      >>> images.shape, images.dtype, labels.dtype, bool((images[0] == images[2]).all())
      ((3, 28, 28, 1), dtype('uint8'), dtype('int32'), True)
    """
    if _reads_serialized(source):
        return _decode_records(source.data_source.__getitems__([int(i) for i in ids]), image_shape)
    examples = read_examples(source, ids)
    images = np.zeros((len(examples), *image_shape), np.uint8)
    for i, e in enumerate(examples):
        images[i] = e["image"]
    return images, np.array([e.get("label", -1) for e in examples], np.int32)


def scale_images(images: np.ndarray, scale: str) -> np.ndarray:
    """uint8 pixels in {0..255} -> float32 in [-1, 1] (x/127.5 - 1) or [0, 1] (x/255).

    Examples:
      >>> import numpy as np
      >>> pixels = np.array([0, 51, 255], np.uint8)
      >>> print(scale_images(pixels, "[-1,1]"), scale_images(pixels, "[0,1]"))
      [-1.  -0.6  1. ] [0.  0.2 1. ]
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "[0,1]":
        return np.divide(images, np.float32(255.0), dtype=np.float32)
    x = np.divide(images, np.float32(127.5), dtype=np.float32)
    x -= np.float32(1.0)
    return x


_READ_THREADS = 2  # threads reading a file-backed source (decoding holds the GIL: 4 was slower)
_PREFETCH_BATCHES = 8  # batches read ahead per process
_WORKER_BUFFER = 2  # batches each worker process hands over ahead of the consumer
_DEVICE_BUFFER = 2  # global batches placed on the devices ahead of the consumer


def _grain_seed(seed: int) -> int:
    """A 32-bit grain seed from `seed`; epoch e shuffles with ``(s + e) mod 2**32``, so nearby user
    seeds do not share epochs."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


_SHUFFLE_ROUNDS = 4  # the Feistel rounds of `grain.MapDataset.shuffle`'s index shuffle
_MIN_BLOCK_BITS = 16  # grain's smallest cipher block


def _seed_seq_words(seed: int, count: int) -> list[int]:
    """`count` 32-bit words of C++'s ``std::seed_seq{seed}.generate`` (the algorithm the C++
    standard fixes, [rand.util.seedseq]): the round keys grain's index shuffle derives from a
    seed."""
    mask = 0xFFFFFFFF
    n = count
    words = [0x8B8B8B8B] * n
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(2, n)  # max(len(seeds) + 1, n) with one seed
    for k in range(m):
        x = words[k % n] ^ words[(k + p) % n] ^ words[(k - 1) % n]
        r1 = (1664525 * (x ^ (x >> 27))) & mask
        r2 = (r1 + (1 if k == 0 else k % n + seed if k == 1 else k % n)) & mask
        words[(k + p) % n] = (words[(k + p) % n] + r1) & mask
        words[(k + q) % n] = (words[(k + q) % n] + r2) & mask
        words[k % n] = r2
    for k in range(m, m + n):
        x = (words[k % n] + words[(k + p) % n] + words[(k - 1) % n]) & mask
        r3 = (1566083941 * (x ^ (x >> 27))) & mask
        r4 = (r3 - k % n) & mask
        words[(k + p) % n] ^= r3
        words[(k + q) % n] ^= r4
        words[k % n] = r4
    return words


def _simon_encrypt(blocks: np.ndarray, keys: list[int], word_bits: int) -> np.ndarray:
    """The Simon block cipher of grain's index shuffle on 2 * `word_bits`-bit blocks [n] uint64,
    two rounds per pair of `keys` (keys truncated to a word, as C++'s ``std::bitset`` does)."""
    word = np.uint64((1 << word_bits) - 1)
    left, right = (blocks >> np.uint64(word_bits)) & word, blocks & word

    def rotl(v: np.ndarray, r: int) -> np.ndarray:
        return ((v << np.uint64(r)) | (v >> np.uint64(word_bits - r))) & word

    def f(v: np.ndarray) -> np.ndarray:
        return (rotl(v, 1) & rotl(v, 8)) ^ rotl(v, 2)

    for k1, k2 in zip(keys[::2], keys[1::2], strict=True):
        left ^= f(right) ^ (np.uint64(k1) & word)
        right ^= f(left) ^ (np.uint64(k2) & word)
    return (left << np.uint64(word_bits)) | right


def index_shuffle_order(num_examples: int, seed: int) -> np.ndarray:
    """``[grain.experimental.index_shuffle(i, max_index=N-1, seed=seed, rounds=4) for i < N]``,
    [N] int64: one epoch of ``grain.MapDataset.range(N).shuffle(seed)``, computed for all i at
    once.

    grain shuffles an index by encrypting it with a small block cipher (Simon, keys from
    ``std::seed_seq``) on the smallest even number of bits (>= 16) holding N - 1, re-encrypting
    until the result is <= N - 1 ("cycle walking"). One call per index costs tens of
    microseconds for small N, whose block is mostly outside [0, N), which made index sampling
    the loader's largest cost; here the cipher is applied to the whole block domain once and
    the walks are lookups in that table.

    Examples:
      >>> import grain
      >>> order = index_shuffle_order(10, seed=3)
      >>> sorted(order.tolist()) == list(range(10))  # a permutation
      True
      >>> order.tolist() == [grain.experimental.index_shuffle(i, max_index=9, seed=3, rounds=4)
      ...                    for i in range(10)]  # grain's own, one index at a time
      True
    """
    max_index = num_examples - 1
    if max_index == 0:
        return np.zeros(1, np.int64)
    bits = math.ceil(math.log2(max_index))
    bits = max(bits + bits % 2, _MIN_BLOCK_BITS)
    keys = _seed_seq_words(seed, _SHUFFLE_ROUNDS)
    step = _simon_encrypt(np.arange(1 << bits, dtype=np.uint64), keys, bits // 2)
    out = step[np.arange(num_examples, dtype=np.uint64) & np.uint64((1 << bits) - 1)]
    walking = np.flatnonzero(out > max_index)
    while walking.size:
        out[walking] = step[out[walking]]
        walking = walking[out[walking] > max_index]
    return out.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int | None, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s visiting order of the example ids [N] int64: storage order when `seed` is
    None, else grain's index shuffle with seed ``(seed + epoch) mod 2**32``, exactly the order of
    ``grain.MapDataset.range(N).shuffle(seed=seed)`` in that epoch.

    Computed once per epoch (and cached for the few epochs a read-ahead spans) instead of once
    per example through grain's `MapDataset` chain, whose per-element cost dominated the loader.
    """
    if seed is None:
        return np.arange(num_examples, dtype=np.int64)
    return index_shuffle_order(num_examples, (seed + epoch) % 2**32)


@dataclasses.dataclass(frozen=True)
class _StepIds:
    """Global step s -> this shard's example ids at step s, [~B/P] int64 (picklable for grain's
    worker processes): batch ``s % steps`` of epoch ``s // steps`` of `_epoch_order`, split over
    the shards."""

    num_examples: int
    batch_size: int
    steps_per_epoch: int
    seed: int | None
    shard_index: int
    shard_count: int

    def __call__(self, step: int) -> np.ndarray:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        order = _epoch_order(self.num_examples, self.seed, epoch)
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
            seed=_grain_seed(self.seed) if self.shuffle else None,
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
