"""Image data: the shipped `digits` TFDS builder and the sharded, seeded loader."""

from __future__ import annotations

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from tensorflow_datasets.proto import tf_example_pb2  # noqa: E402

from scorejax.data import (  # noqa: E402
    DatasetNotPreparedError,
    load,
    load_arrays,
    png,
    shuffle,
    sources,
)
from scorejax.data import digits as digits_builder  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A fresh data directory: digits is built from scratch here, offline."""
    return str(tmp_path_factory.mktemp("tfds"))


def test_digits_builds_offline_and_matches_sklearn(data_dir):
    from sklearn.datasets import load_digits

    train = load_arrays("digits", "train", data_dir=data_dir, scale="[0,1]")
    test = load_arrays("digits", "test", data_dir=data_dir, scale="[0,1]")
    bunch = load_digits()
    assert train["image"].shape == (1438, 8, 8, 1) and test["image"].shape == (359, 8, 8, 1)
    # Every stored image is the sklearn image at its source index, on the 0..255 grid.
    source = tfds.data_source("digits", split="train", data_dir=data_dir)
    src_index = np.array([source[i]["source_index"] for i in range(len(source))])
    expected = digits_builder.to_uint8(bunch.images[src_index])[..., 0] / 255.0
    np.testing.assert_allclose(train["image"][..., 0], expected, atol=1e-6)
    np.testing.assert_array_equal(train["label"], bunch.target[src_index])
    # The split is the one fixed by the seed: disjoint, covering, stratified.
    tr, te = digits_builder.split_indices(bunch.target)
    np.testing.assert_array_equal(np.sort(src_index), tr)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(bunch.target)
    counts = np.bincount(test["label"], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    assert test["image"].min() == 0.0 and test["image"].max() == 1.0


def test_split_is_deterministic():
    labels = np.repeat(np.arange(10), 37)
    a = digits_builder.split_indices(labels, seed=3)
    b = digits_builder.split_indices(labels, seed=3)
    c = digits_builder.split_indices(labels, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def _ids(batches):
    return [b["id"] for b in batches]


def test_batches_deterministic_per_seed_and_scaled(data_dir):
    kw = dict(batch_size=64, data_dir=data_dir, num_epochs=2)
    a = list(load("digits", "train", seed=1, **kw))
    b = list(load("digits", "train", seed=1, in_memory=True, **kw))
    c = list(load("digits", "train", seed=2, in_memory=True, **kw))
    assert len(a) == 2 * (1438 // 64)
    for x, y in zip(a, b, strict=True):
        for k in ("image", "label", "id"):
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(a[0]["id"], c[0]["id"])
    # Epochs are reshuffled, and each epoch visits distinct examples.
    per_epoch = len(a) // 2
    assert not np.array_equal(a[0]["id"], a[per_epoch]["id"])
    assert len(np.unique(np.concatenate(_ids(a[:per_epoch])))) == per_epoch * 64
    x = a[0]
    assert x["image"].dtype == np.float32 and x["image"].shape == (64, 8, 8, 1)
    assert x["label"].dtype == np.int32 and x["id"].dtype == np.int64
    assert x["image"].min() >= -1.0 and x["image"].max() <= 1.0 and x["image"].min() == -1.0
    # Images and labels are those of the ids (storage order).
    full = load_arrays("digits", "train", data_dir=data_dir)
    np.testing.assert_array_equal(x["image"], full["image"][x["id"]])
    np.testing.assert_array_equal(x["label"], full["label"][x["id"]])


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_shards_disjoint_union_is_global_batch_and_cover_split(data_dir, drop_remainder):
    kw = dict(batch_size=96, seed=5, data_dir=data_dir, drop_remainder=drop_remainder)
    whole = _ids(load("digits", "test", shard_index=0, shard_count=1, **kw))
    shards = [_ids(load("digits", "test", shard_index=i, shard_count=3, **kw)) for i in range(3)]
    assert all(len(s) == len(whole) for s in shards)
    for step, global_ids in enumerate(whole):
        parts = [s[step] for s in shards]
        np.testing.assert_array_equal(np.concatenate(parts), global_ids)
    every = np.concatenate([np.concatenate(s) for s in shards])
    assert len(np.unique(every)) == len(every)
    n = 359
    assert len(every) == (n // 96) * 96 if drop_remainder else n
    if not drop_remainder:
        np.testing.assert_array_equal(np.sort(every), np.arange(n))


def test_start_step_resumes_stream_and_in_memory_matches(data_dir):
    kw = dict(batch_size=100, seed=9, data_dir=data_dir, num_epochs=None)
    full = load("digits", "train", **kw)
    first = [b for _, b in zip(range(30), full, strict=False)]
    resumed = load("digits", "train", start_step=17, in_memory=True, **kw)
    for x, y in zip(first[17:], resumed, strict=False):
        np.testing.assert_array_equal(x["id"], y["id"])
        np.testing.assert_array_equal(x["image"], y["image"])
    with pytest.raises(TypeError):
        len(full)


def test_bad_arguments_raise_clear_errors(data_dir):
    with pytest.raises(ValueError, match="divisible"):
        load("digits", "train", batch_size=10, shard_index=0, shard_count=3, data_dir=data_dir)
    with pytest.raises(ValueError, match="scale"):
        load("digits", "train", batch_size=8, scale="[0,255]", data_dir=data_dir)
    with pytest.raises(ValueError, match="fewer than one batch"):
        load("digits", "test", batch_size=1000, data_dir=data_dir)
    with pytest.raises(ValueError, match="Unknown dataset"):
        load("no_such_dataset_xyz", "train", batch_size=8, data_dir=data_dir)


def test_missing_standard_dataset_says_how_to_prepare(data_dir):
    with pytest.raises(DatasetNotPreparedError, match="tfds build mnist"):
        load("mnist", "train", batch_size=8, data_dir=data_dir)


def test_mocked_mnist_batches():
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        batches = load("mnist", "train", batch_size=8, seed=0, shard_index=1, shard_count=2)
        out = list(batches)
        again = list(load("mnist", "train", batch_size=8, seed=0, shard_index=1, shard_count=2))
        other = list(load("mnist", "train", batch_size=8, seed=0, shard_index=0, shard_count=2))
    assert batches.image_shape == (28, 28, 1) and batches.num_classes == 10
    assert len(out) == 3
    x = out[0]
    assert x["image"].shape == (4, 28, 28, 1) and x["image"].dtype == np.float32
    assert -1.0 <= x["image"].min() and x["image"].max() <= 1.0
    assert x["label"].shape == (4,) and ((x["label"] >= 0) & (x["label"] < 10)).all()
    for a, b in zip(out, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    mine, theirs = np.concatenate(_ids(out)), np.concatenate(_ids(other))
    assert len(np.intersect1d(mine, theirs)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([mine, theirs])), np.arange(24))


def test_records_parsed_in_batches_equal_tfds_decoding(data_dir):
    """`read_batch` parses array_record examples itself; the pixels and labels are TFDS's."""
    source = sources.open_source("digits", "test", data_dir)
    assert sources._reads_serialized(source)  # the batched parsing path is the one tested
    records = source.data_source.__getitems__(list(range(359)))
    pngs = [tf_example_pb2.Example.FromString(r).features.feature["image"].bytes_list.value[0]
            for r in records]
    assert all(png._filtered_rows(p, 8, 8, 1) is not None for p in pngs)  # and batched decoding
    ids = np.concatenate([[358, 0, 17, 17, 200], np.arange(359)])  # every row filter PIL chose
    assert png.batched_is_faster(len(ids), (8, 8, 1))
    got_images, got_labels = sources.read_batch(source, ids, (8, 8, 1))
    expected = [source[int(i)] for i in ids]
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_images, np.stack([e["image"] for e in expected]))
    np.testing.assert_array_equal(got_labels, [e["label"] for e in expected])


@pytest.mark.parametrize("n", [1, 2, 359, 1438, 70001])
def test_index_shuffle_order_is_grains(n):
    grain = pytest.importorskip("grain")
    for seed in (0, 2**32 - 1):
        expected = [
            grain.experimental.index_shuffle(i, max_index=n - 1, seed=seed, rounds=4)
            for i in range(n)
        ]
        np.testing.assert_array_equal(shuffle.index_shuffle_order(n, seed), expected)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_ids_follow_grains_index_shuffle_per_epoch(data_dir, drop_remainder):
    """The per-epoch orders are those of grain's `MapDataset.shuffle` (seed + epoch), batched
    per epoch, computed once per epoch instead of per example."""
    grain = pytest.importorskip("grain")
    kw = dict(batch_size=96, seed=7, data_dir=data_dir, num_epochs=3)
    batches = load("digits", "test", drop_remainder=drop_remainder, **kw)
    reference = (
        grain.MapDataset.range(359)
        .shuffle(seed=shuffle.grain_seed(7))
        .batch(96, drop_remainder=drop_remainder)
        .repeat(3)
    )
    ids = batches.ids_dataset()
    assert len(ids) == len(reference) == 3 * batches.steps_per_epoch
    for step in range(len(ids)):
        np.testing.assert_array_equal(ids[step], reference[step])


def test_mocked_cifar10_batches():
    """TFDS's mock of CIFAR-10 (random examples made on request) yields 32x32x3 batches, the
    same read from the source and from memory."""
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        kw = dict(batch_size=16, seed=3, num_epochs=2)
        batches = load("cifar10", "train", **kw)
        streamed = list(batches)
        cached = list(load("cifar10", "train", in_memory=True, **kw))
    assert batches.image_shape == (32, 32, 3) and batches.num_classes == 10
    assert len(streamed) == len(cached) == 2 * (40 // 16)
    for x, y in zip(streamed, cached, strict=True):
        assert x["image"].shape == (16, 32, 32, 3) and x["image"].dtype == np.float32
        assert x["label"].shape == (16,) and x["label"].dtype == np.int32
        assert -1.0 <= x["image"].min() and x["image"].max() <= 1.0
        assert ((x["label"] >= 0) & (x["label"] < 10)).all()
        for k in ("image", "label", "id"):
            np.testing.assert_array_equal(x[k], y[k])
