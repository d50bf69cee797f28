"""The image score-matching study (`digits_vp`, `digits_ve`, `digits_edm`, `digits_fm`): configs
and tiny end-to-end runs."""

from __future__ import annotations

import json
import math
import os

import pytest

from configs.score_matching import get_config

# A tiny U-Net and budget so the study's whole code path (train, classifier, bits/dim, samples,
# KID, plots) runs in seconds.
TINY = {
    "model.channels": 8,
    "model.channel_mult": (1,),
    "model.attn_resolutions": (),
    "model.mid_attention": False,
    "model.num_groups": 4,
    "train.num_steps": 20,
    "train.batch_size": 16,
    "train.steps_per_call": 1,
    "train.warmup_steps": 2,
    "train.log_every": 10,
    "train.checkpoint_every": 20,
    "sampler.name": "em",
    "sampler.num_steps": 10,
    "eval.num_samples": 64,
    "eval.bpd_tol": 1e-2,
    "eval.kid_subsets": 4,
    "eval.classifier.epochs": 5,
}


def _config(variant: str, data_dir: str):
    config = get_config(variant)
    with config.unlocked():
        for name, value in TINY.items():
            *parents, leaf = name.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
        config.data.data_dir = data_dir
    return config


@pytest.mark.parametrize(
    "variant,sde,loss,sampler",
    [
        ("digits_vp", "vp", "dsm", "ode"),
        ("digits_ve", "ve", "dsm", "ode"),
        ("digits_edm", "edm", "edm", "edm_heun"),
        ("digits_fm", "linear", "fm", "fm_heun"),
    ],
)
def test_digits_variants_run_the_image_study(variant, sde, loss, sampler):
    from experiments import score_matching_images

    config = get_config(variant)
    assert config.is_locked and config.study == "score_matching_images"
    assert config.data.name == "digits" and config.sde.name == sde
    assert (config.loss.name, config.sampler.name) == (loss, sampler)
    with pytest.raises(AttributeError):
        config.trian = 1
    score_matching_images._check_config(config)
    # The new variants change the path, model form, loss and sampler only.
    base = get_config("digits_vp")
    for group in ("data", "train", "eval"):
        assert config[group].to_dict() == base[group].to_dict()
    if variant == "digits_edm":
        assert (config.model.preconditioning, config.model.sigma_data) == ("edm", 0.5)
        assert (config.loss.p_mean, config.loss.p_std, config.sampler.num_steps) == (-1.2, 1.2, 18)
    if variant == "digits_fm":
        assert config.model.parametrization == "velocity" and config.sde.T < 1.0


def test_toy_variants_unchanged():
    config = get_config("gmm8")
    assert config.study == "score_matching" and config.data.kind == "toy"


@pytest.mark.slow
def test_digits_tiny_run_writes_outputs_and_reprints(tmp_path):
    from experiments import score_matching_images

    config = _config("digits_vp", str(tmp_path / "tfds"))
    workdir = str(tmp_path / "run")
    results = score_matching_images.train_and_evaluate(config, workdir)
    for name in ("samples.png", "loss.png", "eval.json", "config.json", "metrics.jsonl",
                 "classifier.msgpack"):
        assert os.path.exists(os.path.join(workdir, name)), name
    # Dequantised bits/dim of 8-bit data lie in (0, 8] for a density that beats nothing, and a
    # 20-step model is still far from the data; the classifier itself is trained to work.
    assert math.isfinite(results["test_bpd"]) and results["test_bpd"] > 0
    assert results["classifier_test_accuracy"] > 0.8
    assert results["sample_nfe"] == TINY["sampler.num_steps"]
    # KID separates the untrained model's samples from real digits.
    assert results["model/kid"] > results["train_split/kid"] + 3 * results["model/kid_std"] or (
        results["model/kid"] > 10 * abs(results["train_split/kid"]))
    assert 0.0 <= results["model/confident_rate"] <= 1.0
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f) == results
    # A finished run is not retrained: it returns the recorded results.
    assert score_matching_images.train_and_evaluate(config, workdir) == results


@pytest.mark.slow
def test_digits_edm_tiny_run_trains_and_samples_with_heun(tmp_path):
    """EDM end to end on images: preconditioned U-Net, EDM loss, Heun samples, PF-ODE bits/dim
    on the EDM path, KID; a few steps of a tiny U-Net."""
    from experiments import score_matching_images

    config = _config("digits_edm", str(tmp_path / "tfds"))
    with config.unlocked():
        config.sampler.name = "edm_heun"
        config.sampler.num_steps = 5
        config.eval.num_samples = 32
    workdir = str(tmp_path / "run")
    results = score_matching_images.train_and_evaluate(config, workdir)
    for name in ("samples.png", "loss.png", "eval.json", "metrics.jsonl"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert results["sample_nfe"] == 2 * 5 - 1
    assert math.isfinite(results["test_bpd"]) and results["test_bpd"] > 0
    assert math.isfinite(results["model/kid"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    # The EDM loss is about 1 per dimension at initialisation (unit-variance F target): 64 dims.
    assert losses and all(math.isfinite(v) and v < 5 * 64 for v in losses)
