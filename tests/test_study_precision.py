"""The dtype policy and U-Net rematerialisation as config fields of every study, and the image
study's grain iterator state in its checkpoints (resume on the exact next batch)."""

from __future__ import annotations

import functools
import importlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax.train import Checkpointer, TrainState, checkpoint_dir, prepare_workdir
from scorejax.train.precision import PRECISIONS

# (config module, variant, experiment module, the experiment's config check).
STUDY_CONFIGS = [
    *[("score_matching", v, "score_matching", "build")
      for v in ("gmm8", "grid", "checkerboard", "gmm8_edm", "gmm8_fm")],
    *[("score_matching", v, "score_matching_images", "_check_config")
      for v in ("digits_vp", "digits_ve", "digits_edm", "digits_fm")],
    *[("score_matching_cifar10", v, "score_matching_images", "_check_config")
      for v in ("ddpm", "ddpm_slice", "edm")],
    *[("data_diet", v, "data_diet", "validate") for v in ("digits", "cifar10_resnet18")],
    *[("data_diet_cifar10", v, "data_diet", "validate") for v in ("gpu", "tpu_v4_8")],
    *[("coverage", v, "coverage", "check_config")
      for v in ("teacher_student", "sequences", "arithmetic")],
    ("coverage_large", "arithmetic", "coverage", "check_config"),
    *[("score_estimation", v, "score_estimation", "check_config") for v in ("default", "quick")],
    *[("distill", v, "distill", "check_config")
      for v in ("gmm8", "grid", "gmm8_far", "gmm8_weak", "gmm8_exact", "gmm8_edm_teacher",
                "gmm8_fm_teacher", "digits", "digits_weak")],
    ("distill_cifar10", "cifar10", "distill", "check_config"),
]

# A U-Net small enough to compile in seconds, and a budget of a few steps.
TINY_IMAGES = {
    "model.channels": 8,
    "model.channel_mult": (1,),
    "model.attn_resolutions": (),
    "model.mid_attention": False,
    "model.num_groups": 4,
    "train.num_steps": 12,
    "train.batch_size": 16,
    "train.steps_per_call": 1,
    "train.warmup_steps": 2,
    "train.log_every": 4,
    "train.checkpoint_every": 4,
    "sampler.name": "em",
    "sampler.num_steps": 5,
    "eval.num_samples": 32,
    "eval.bpd_tol": 1e-2,
    "eval.kid_subsets": 4,
    "eval.classifier.epochs": 2,
}
TINY_TOY = {
    "model.hidden_sizes": (32, 32),
    "model.embed_dim": 16,
    "train.batch_size": 64,
    "train.num_steps": 40,
    "train.steps_per_call": 5,
    "train.warmup_steps": 5,
    "train.log_every": 10,
    "train.checkpoint_every": 20,
    "sampler.num_steps": 10,
    "eval.num_samples": 128,
    "eval.num_time_bins": 2,
    "eval.points_per_bin": 128,
    "eval.num_projections": 8,
}


def _config(module: str, variant: str, overrides: dict | None = None):
    config = importlib.import_module(f"configs.{module}").get_config(variant)
    with config.unlocked():
        for name, value in (overrides or {}).items():
            *parents, leaf = name.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


@pytest.mark.parametrize("module,variant,study,check", STUDY_CONFIGS)
def test_every_study_config_has_the_precision_field(module, variant, study, check):
    config = _config(module, variant)
    assert config.precision == "float32", (module, variant)
    check_fn = getattr(importlib.import_module(f"experiments.{study}"), check)
    with config.unlocked():
        config.precision = "float16"
    with pytest.raises(ValueError, match=r"config\.precision='float16'.*bfloat16"):
        check_fn(config)


@pytest.mark.parametrize("module,variant", [("score_matching_images", "digits_vp"),
                                            ("score_matching_cifar10", "ddpm"),
                                            ("score_matching_cifar10", "edm")])
def test_unet_configs_have_remat_off_by_default(module, variant):
    assert _config(module, variant).model.remat is False


def test_precision_field_reaches_the_toy_model_and_its_train_step():
    """bfloat16: the MLP's dense layers compute in bf16, its parameters stay float32."""
    from experiments import score_matching

    for name in PRECISIONS:
        setup = score_matching.build(_config("score_matching", "gmm8", {"precision": name}))
        params = setup.init(jax.random.key(0))
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
        x, t = jnp.ones((4, 2)), jnp.full((4,), 0.5)
        text = str(jax.make_jaxpr(setup.score_fn)(params, x, t))
        assert ("bf16" in text) == (name == "bfloat16"), name
        assert setup.score_fn(params, x, t).dtype == jnp.float32


def test_precision_field_reaches_the_classifiers_students_and_ntk_network():
    """bfloat16 in the data-diet classifiers, the coverage students (linear and transformer) and
    the score-estimation network: bf16 matmuls, float32 parameters and outputs."""
    from experiments import coverage, data_diet
    from scorejax.ntk import TwoLayerReLU
    from scorejax.train.partitioning import mesh_from_config

    config = _config("data_diet", "digits", {"precision": "bfloat16"})
    for name in ("mlp", "cnn"):
        setup = data_diet.make_setup(config, name, mesh_from_config(config), 10, 10)
        assert (setup.model.dtype, setup.model.param_dtype) == (jnp.bfloat16, jnp.float32)

    for variant in ("teacher_student", "sequences", "arithmetic"):
        sizes = {f"task.num_{split}": 16 for split in ("train", "val", "test")}
        config = _config("coverage", variant, {**sizes, "precision": "bfloat16"})
        task = coverage.make_task(config)
        # Shapes and dtypes only: the program is traced, not run.
        params = jax.eval_shape(task.init, jax.random.key(0))
        batch = jax.eval_shape(task.make_data, jax.random.key(1))["test"]
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
        logp = functools.partial(task.seq_logp, temperature=1.0)
        assert "bf16" in str(jax.make_jaxpr(logp)(params, batch)), variant
        assert jax.eval_shape(logp, params, batch).dtype == jnp.float32

    u = jax.random.normal(jax.random.key(2), (16, 4))
    f32 = TwoLayerReLU.init(jax.random.key(3), width=64, in_dim=4, out_dim=2)
    bf16 = TwoLayerReLU.init(jax.random.key(3), width=64, in_dim=4, out_dim=2,
                             compute_dtype=jnp.bfloat16)
    assert bf16(u).dtype == jnp.float32 and "bf16" in str(jax.make_jaxpr(bf16)(u))
    np.testing.assert_allclose(bf16(u), f32(u), atol=0.05 * float(jnp.max(jnp.abs(f32(u)))))


def _unet_loss_and_grads(remat: bool):
    """The image study's U-Net built from a config with `model.remat`, and one DSM loss and
    gradient at its initialisation."""
    from experiments import score_matching as sm
    from experiments import score_matching_images as smi

    config = _config("score_matching", "digits_vp", {**TINY_IMAGES, "model.remat": remat})
    net, sde = smi.make_unet(config), sm.make_sde(config)
    loss_fn = sm.make_loss(config, sde, sm.make_model(net.apply, sde, config))
    x0 = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1.0, maxval=1.0)
    params = net.init(jax.random.key(0), x0, jnp.zeros((8,)))
    value_and_grad = jax.value_and_grad(lambda p: loss_fn(p, x0, jax.random.key(2))[0])
    return net, jax.jit(value_and_grad)(params)


def test_remat_field_reaches_the_unet_with_equal_loss_and_gradients():
    """`model.remat` builds the rematerialised U-Net; one step's loss and gradients are equal."""
    plain, (loss0, grads0) = _unet_loss_and_grads(False)
    remat, (loss1, grads1) = _unet_loss_and_grads(True)
    assert (plain.remat, remat.remat) == (False, True)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 grads0, grads1)


def _losses(workdir) -> list[float]:
    with open(f"{workdir}/metrics.jsonl") as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


@pytest.mark.slow
def test_bfloat16_toy_run_trains_through_the_entry_point(tmp_path):
    from experiments import main

    config = _config("score_matching", "gmm8", {**TINY_TOY, "precision": "bfloat16"})
    main.run(config, str(tmp_path / "run"))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    with open(tmp_path / "run" / "eval.json") as f:
        results = json.load(f)
    assert math.isfinite(results["model/mmd2"]) and results["model/nonfinite"] == 0


@pytest.mark.slow
def test_bfloat16_digits_unet_run_trains_through_the_entry_point(tmp_path):
    from experiments import main

    config = _config("score_matching", "digits_vp",
                     {**TINY_IMAGES, "precision": "bfloat16", "model.remat": True})
    with config.unlocked():
        config.data.data_dir = str(tmp_path / "tfds")
    main.run(config, str(tmp_path / "run"))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    with open(tmp_path / "run" / "eval.json") as f:
        results = json.load(f)
    assert math.isfinite(results["test_bpd"]) and math.isfinite(results["model/kid"])


def _final_state(config, workdir):
    from experiments import score_matching_images as smi
    from experiments.score_matching import make_optimizer

    setup = smi.build(config)
    template = TrainState.create(setup.init(jax.random.key(0)), make_optimizer(config))
    with Checkpointer(checkpoint_dir(workdir), save_every=1) as ckpt:
        return ckpt.restore_or(template), ckpt.restore_data_state()


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_interrupted_image_run_resumes_on_the_exact_next_batch(tmp_path, monkeypatch):
    """A run interrupted mid-epoch (while reading batch 11 of 12; an epoch is 89 batches) and
    resumed from its step-8 checkpoint and saved grain iterator state ends with the parameters
    of an uninterrupted run, and the restored iterator yields the uninterrupted stream's next
    batch."""
    from experiments import score_matching_images as smi

    config = _config("score_matching", "digits_vp", TINY_IMAGES)
    with config.unlocked():
        config.data.data_dir = str(tmp_path / "tfds")
    sde, net = smi.make_sde(config), smi.make_unet(config)
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    for workdir in (interrupted, straight):
        prepare_workdir(config, workdir)

    read = smi._TrainStream.__next__
    count = [0]

    def next_or_stop(stream):
        count[0] += 1
        if count[0] > 10:
            raise _Interrupted
        return read(stream)

    monkeypatch.setattr(smi._TrainStream, "__next__", next_or_stop)
    with pytest.raises(_Interrupted):
        smi.train(config, str(interrupted), sde, net, (8, 8, 1))
    monkeypatch.undo()
    _, data_state = _final_state(config, interrupted)
    assert data_state is not None and data_state["start_step"] == 0

    # The saved state, not the step count, positions the stream: given a wrong step it still
    # yields batch 8 of the uninterrupted stream.
    resumed_stream = smi._TrainStream(config, 0, data_state)
    reference = smi._TrainStream(config, 0, None)
    for _ in range(8):
        next(reference)
    for _ in range(2):
        np.testing.assert_array_equal(next(resumed_stream)["id"], next(reference)["id"])

    smi.train(config, str(interrupted), sde, net, (8, 8, 1))
    smi.train(config, str(straight), sde, net, (8, 8, 1))
    (resumed, resumed_data), (uninterrupted, straight_data) = (
        _final_state(config, interrupted), _final_state(config, straight))
    assert int(resumed.step) == int(uninterrupted.step) == 12
    assert resumed_data == straight_data
    jax.tree.map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.ema_params, uninterrupted.ema_params)
    assert _losses(interrupted) == _losses(straight)
