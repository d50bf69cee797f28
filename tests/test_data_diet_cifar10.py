"""The data-diet study's CIFAR-10 ResNet-18 variant end to end on mocked data.

Apart from `tests/test_data_diet_experiment.py` so that the two test processes of `make test`
(`--dist loadfile`) can run the two files' end-to-end tests at the same time.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.data_diet import get_config
from experiments import data_diet


@pytest.mark.slow
def test_cifar10_resnet18_smoke_on_mocked_data(tmp_path):
    import tensorflow_datasets as tfds

    c = get_config("cifar10_resnet18")
    with c.unlocked():
        c.data.data_dir = str(tmp_path / "tfds")
        c.data.max_train_examples = 16
        c.data.max_test_examples = 8
        c.models.resnet18.width = 2
        c.models.resnet18.blocks = (1,)  # the smoke test checks the pipeline, not the depth
        c.models.resnet18.strategies = "random,el2n_ep1:hardest,grand_ep0:hardest"
        c.train.batch_size = 8
        c.train.epochs = 1
        c.train.lr_decay_epochs = (1,)
        c.scores.runs = 2
        c.scores.epochs = 1
        c.scores.el2n_epochs = (1,)
        c.scores.grand_epochs = (0,)
        c.scores.tiebreak = "el2n_ep1"
        c.noise.window_score = "el2n_ep1"
        c.prune.fractions = (0.5,)
        c.prune.seeds = 1
        c.max_parallel_runs = 3
        c.eval_batch_size = 8
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        analysis = data_diet.train_and_evaluate(c, str(tmp_path / "run"))
    r = analysis["models"]["resnet18"]
    assert set(r["accuracy"]) == {"random", "el2n_ep1:hardest", "grand_ep0:hardest"}
    assert analysis["num_train"] == 16 and analysis["num_test"] == 8
    scores = json.loads((tmp_path / "run" / "results.json").read_text())["models"]["resnet18"]
    assert np.isfinite(np.asarray(scores["spearman"])[:2, :2]).all()
