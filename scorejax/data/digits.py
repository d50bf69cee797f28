"""TFDS builder for the 8x8 handwritten digits bundled with scikit-learn.

`sklearn.datasets.load_digits` ships its 1,797 images inside the scikit-learn wheel, so this
builder prepares a real image dataset with no download. Importing this module registers the
builder under the name ``digits``; after that, ``tfds.data_source("digits", split="train")``
builds it on first use (array_record files, no TensorFlow needed) and reads it with random access.

Images are stored as uint8 ``[8, 8, 1]``: scikit-learn's 17 grey levels ``v in {0, ..., 16}`` are
mapped to ``round(v * 255 / 16)`` so that the usual 256-level conventions (scaling to [-1, 1],
uniform dequantisation, bits/dim) apply unchanged. The train/test split is stratified by label and
fixed by a seed through NumPy's legacy ``RandomState`` stream, whose output NumPy keeps stable
across releases, so every machine builds identical splits.
"""

from __future__ import annotations

import io

import numpy as np

from scorejax._optional import import_optional

# The module defines a TFDS builder class, so it cannot be imported without TFDS.
tfds = import_optional("tensorflow_datasets")

SPLIT_SEED = 0
TEST_FRACTION = 0.2
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


def split_indices(labels: np.ndarray, *, seed: int = SPLIT_SEED,
                  test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split of example indices, deterministic in `seed`.

    Args:
      labels: [N] integer class labels.
      seed: seed of the legacy NumPy stream that orders each class.
      test_fraction: share of every class that goes to the test split (rounded per class).

    Returns:
      (train_indices, test_indices), each sorted ascending, disjoint, covering range(N).

    Examples:
      >>> import numpy as np
      >>> labels = np.repeat(np.arange(3), 10)  # 3 classes of 10
      >>> train, test = split_indices(labels)
      >>> len(train), np.bincount(labels[test]).tolist()  # 20 % of every class in test
      (24, [2, 2, 2])
    """
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps scikit-learn's grey levels 0..16 to uint8 0..255 ([N, 8, 8] -> [N, 8, 8, 1]).

    `round(v * 255 / 16)`.

    Examples:
      >>> import numpy as np
      >>> images = to_uint8(np.array([[[0, 1, 8, 16]]]))
      >>> images.shape, images.dtype, images[0, 0, :, 0].tolist()
      ((1, 1, 4, 1), dtype('uint8'), [0, 16, 128, 255])
    """
    return np.round(np.asarray(images, np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]


def _png_bytes(image: np.ndarray) -> bytes:
    # TFDS encodes numpy images with TensorFlow; PIL gives the same PNG bytes without it.
    Image = import_optional("PIL.Image")

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class Digits(tfds.core.GeneratorBasedBuilder):
    """The scikit-learn 8x8 digits (UCI optical recognition of handwritten digits, test part).

    Building it (on first use by ``tfds.data_source("digits", ...)`` or `scorejax.data.load`)
    writes 1,438 train and 359 test examples.

    Examples:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     features = Digits(data_dir=tmp).info.features  # nothing is built
      >>> features["image"].shape, features["label"].num_classes
      ((8, 8, 1), 10)
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 80/20 train/test split with seed 0."}

    def __init__(self, *, file_format: str | None = None, **kwargs):
        # TFDS defaults to tfrecord, whose writer needs TensorFlow; array_record needs neither
        # TensorFlow nor a flag, and is what `tfds.data_source` reads with random access.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "1,797 8x8 greyscale handwritten digits bundled with scikit-learn, grey levels "
                "0..16 rescaled to 0..255; stratified 80/20 train/test split fixed by seed 0."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "source_index": np.int64,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ship with scikit-learn; nothing to download.
        load_digits = import_optional("sklearn.datasets").load_digits

        bunch = load_digits()
        images = to_uint8(bunch.images)
        labels = np.asarray(bunch.target, np.int64)
        train, test = split_indices(labels)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        for i in indices:
            yield int(i), {
                "image": _png_bytes(images[i]),
                "label": int(labels[i]),
                "source_index": int(i),
            }
