"""End-to-end checks of the experiments/data_diet/ study on tiny sizes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from configs.data_diet import VARIANTS, get_config
from experiments import data_diet
from scorejax.train import read_metrics


def _tiny_digits(data_dir):
    c = get_config("digits")
    with c.unlocked():
        c.data.data_dir = str(data_dir)
        c.data.max_train_examples = 160
        c.data.max_test_examples = 80
        c.run_models = "mlp"
        c.models.mlp.features = (16,)
        c.models.mlp.strategies = "random,el2n_ep1:hardest,forgetting:easiest:balanced"
        c.train.batch_size = 16
        c.train.epochs = 2
        c.scores.runs = 2
        c.scores.epochs = 2
        c.scores.el2n_epochs = (0, 1)
        c.scores.grand_epochs = (0, 1)
        c.scores.tiebreak = "el2n_ep1"
        c.prune.fractions = (0.5,)
        c.prune.seeds = 2
        c.noise.fractions = (0.5,)
        c.noise.offsets = (0.0, 1.0)
        c.noise.window_score = "el2n_ep1"
        c.max_parallel_runs = 4  # the 6-run retrain grid runs as 2 chunks
        c.save_every_epochs = 1
    return c


@pytest.mark.slow
def test_digits_study_runs_and_resumes_to_the_same_result(tmp_path):
    config = _tiny_digits(tmp_path / "tfds")
    first = tmp_path / "first"
    analysis = data_diet.train_and_evaluate(config, str(first))
    for name in (
        "config.json",
        "results.json",
        "results.md",
        "accuracy_vs_kept_mlp.png",
        "spearman_mlp.png",
        "label_noise_mlp.png",
    ):
        assert (first / name).exists(), name
    tasks = data_diet.make_tasks(config)
    kinds = [t.kind for t in tasks]
    assert kinds == ["score", "full", "retrain", "score", "full", "retrain", "window"]
    records = read_metrics(first)
    assert [r["step"] for r in records] == list(range(1, len(tasks) + 2))
    mlp = analysis["models"]["mlp"]
    assert set(mlp["accuracy"]) == {"random", "el2n_ep1:hardest", "forgetting:easiest:balanced"}
    accs = [m for row in mlp["accuracy"].values() for m, _ in row]
    assert all(0.0 <= a <= 100.0 for a in accs)
    assert np.isfinite(np.asarray(mlp["spearman"])).all()
    noise = analysis["noise"]["mlp"]
    assert noise["num_flipped"] == 16 and noise["offsets"] == [0, 16]
    assert all(0.0 <= v <= 1.0 for v in noise["auroc"].values())
    # The class-balanced subset keeps every class.
    assert min(mlp["min_class_count"]["forgetting:easiest:balanced"]) >= 1

    # Interrupt: forget the last two finished tasks and the outputs, then resume.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    steps = sorted(int(p.name) for p in (second / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [len(tasks) - 1, len(tasks)]
    shutil.rmtree(second / "checkpoints" / str(len(tasks)))
    for name in ("results.json", "results.md"):
        (second / name).unlink()
    resumed = data_diet.train_and_evaluate(config, str(second))
    assert json.loads((second / "results.json").read_text()) == json.loads(
        (first / "results.json").read_text()
    )
    assert resumed == analysis
    assert [r["step"] for r in read_metrics(second)] == list(range(1, len(tasks) + 2))


def test_config_variants_and_validation():
    assert VARIANTS == ("digits", "cifar10_resnet18")
    for variant in VARIANTS:
        c = get_config(variant)
        assert c.is_locked and c.study == "data_diet"
        data_diet.validate(c)
        with pytest.raises(AttributeError):
            c.train.epoch = 3  # locked: a misspelt override fails
    with pytest.raises(ValueError, match="variant"):
        get_config("mnist")
    c = get_config("digits")
    with c.unlocked():
        c.models.mlp.strategies = "random,el2n_ep7:hardest"
    with pytest.raises(ValueError, match="el2n_ep7"):
        data_diet.validate(c)
