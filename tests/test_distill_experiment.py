"""End-to-end checks of experiments/distill.py: bad teachers, stage-2 resume, switch logging."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import distill as distill_configs
from configs import score_matching as sm_configs
from experiments import distill as exp
from experiments import score_matching as sm_exp
from scorejax.train import Checkpointer, TrainState, checkpoint_dir, prepare_workdir, read_metrics


def _tiny_config(teacher_workdir: str, methods: str = "disback_fixed"):
    c = distill_configs.get_config("gmm8")
    with c.unlocked():
        c.teacher.workdir = teacher_workdir
        c.methods = methods
        c.distill.num_steps = 150
        c.distill.batch_size = 64
        c.distill.steps_per_call = 25
        c.stage1.num_nodes = 3
        c.stage1.steps_per_node = 10
        c.stage1.batch_size = 64
        c.schedule.interval = 50
        c.eval.every = 50
        c.eval.num_samples = 200
        c.eval.num_projections = 16
        c.checkpoint_every = 50
        c.keep_checkpoints = 10
    return c


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A score-matching run directory (config.json + Orbax checkpoint) of a small ring8 model.

    Its weights are the network's initialisation: the tests below check the distillation
    machinery (loading, path, switches, resume), which does not need a good teacher.
    """
    workdir = tmp_path_factory.mktemp("teacher")
    c = sm_configs.get_config("gmm8")
    with c.unlocked():
        c.model.hidden_sizes = (32, 32)
        c.model.embed_dim = 16
    setup = sm_exp.build(c)
    prepare_workdir(c, workdir)
    state = TrainState.create(jax.jit(setup.init)(jax.random.key(0)), optax.adam(1e-3))
    with Checkpointer(checkpoint_dir(workdir), save_every=1) as ckpt:
        ckpt.save(c.train.num_steps, state)
    return str(workdir)


# A tiny U-Net (see tests/test_score_matching_images.py): the image path's machinery, in seconds.
TINY_UNET = {
    "channels": 8,
    "channel_mult": (1,),
    "attn_resolutions": (),
    "mid_attention": False,
    "num_groups": 4,
}


@pytest.fixture(scope="module")
def tiny_image_teacher(tmp_path_factory):
    """`(run directory, TFDS data dir)` of a digits score-matching run of a tiny U-Net with
    random weights (config.json + Orbax checkpoint)."""
    from experiments import score_matching_images as smi

    root = tmp_path_factory.mktemp("image_teacher")
    c = sm_configs.get_config("digits_vp")
    with c.unlocked():
        c.model.update(TINY_UNET)
        c.data.data_dir = str(root / "tfds")
        c.eval.kid_subsets = 4
        c.eval.classifier.epochs = 3
    setup = smi.build(c)
    workdir = root / "run"
    prepare_workdir(c, workdir)
    # Random weights drawn with NumPy: compiling the U-Net's initialiser (or running it op by
    # op) costs seconds, and the distillation machinery needs no particular weights.
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
        jax.eval_shape(setup.init, jax.random.key(0)),
    )
    state = TrainState.create(params, optax.adam(1e-3))
    with Checkpointer(checkpoint_dir(workdir), save_every=1) as ckpt:
        ckpt.save(c.train.num_steps, state)
    return str(workdir), c.data.data_dir


def _tiny_image_config(teacher_workdir: str, data_dir: str):
    c = distill_configs.get_config("digits")
    with c.unlocked():
        c.teacher.workdir = teacher_workdir
        c.data.data_dir = data_dir
        c.methods = "diff_instruct,disback_fixed"
        c.distill.num_steps = 4
        c.distill.batch_size = 8
        c.stage1.num_nodes = 2
        c.stage1.steps_per_node = 2
        c.stage1.batch_size = 8
        c.schedule.interval = 2
        c.eval.every = 2
        c.eval.num_samples = 32
        c.eval.num_projections = 8
        c.checkpoint_every = 2
    return c


def test_digits_variant_is_an_image_config():
    c = distill_configs.get_config("digits")
    assert c.is_locked and c.study == "distill"
    assert c.data.kind == "image" and c.data.name == "digits"
    assert c.teacher.config_module == "score_matching" and c.teacher.variant == "digits_vp"
    assert c.generator.kind == "denoiser" and c.generator.init == "teacher"
    # Every field of the toy variants exists, with the same types.
    toy = distill_configs.get_config("gmm8")
    for section in ("teacher", "generator", "distill", "stage1", "schedule", "eval"):
        assert set(c[section].keys()) == set(toy[section].keys())


def test_teacher_of_the_wrong_kind_is_rejected_before_anything_runs(
    tiny_teacher, tiny_image_teacher, tmp_path
):
    image = _tiny_image_config(tiny_teacher, tiny_image_teacher[1])
    with pytest.raises(ValueError, match="'score_matching' run, but config.data.kind is 'image'"):
        exp.train_and_evaluate(image, str(tmp_path / "a"))
    toy = _tiny_config(tiny_image_teacher[0])
    with pytest.raises(ValueError, match="config.data.kind is 'toy'"):
        exp.train_and_evaluate(toy, str(tmp_path / "b"))
    mlp = _tiny_image_config(*tiny_image_teacher)
    with mlp.unlocked():
        mlp.generator.kind = "mlp"
        mlp.generator.init = "random"
    with pytest.raises(ValueError, match="image distillation needs generator.kind='denoiser'"):
        exp.train_and_evaluate(mlp, str(tmp_path / "c"))
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.slow
def test_digits_distillation_runs_end_to_end_with_image_metrics(tiny_image_teacher, tmp_path):
    config = _tiny_image_config(*tiny_image_teacher)
    workdir = tmp_path / "run"
    out = exp.train_and_evaluate(config, str(workdir))
    assert out["stage1"]["num_nodes"] == 2 and out["stage1"]["steps"] == 4
    # The fake score starts at the last node (2), the target one node before it, then the teacher.
    assert out["switches"]["disback_fixed"] == [[2, 0]]
    assert out["switches"]["diff_instruct"] == []
    for method in ("diff_instruct", "disback_fixed"):
        curves = out["curves"][method]
        assert curves["step"] == [0, 2, 4]
        for name in ("mmd2", "sliced_w2", "energy", "kid", "confident_rate", "mode_coverage"):
            assert np.all(np.isfinite(curves[name])), (method, name)
        assert all(0.0 <= v <= 1.0 for v in curves["confident_rate"] + curves["mode_coverage"])
    # The reference row: real digits of the train split score far better than an untrained
    # generator on the classifier's features.
    assert out["null"]["kid"] < out["curves"]["diff_instruct"]["kid"][0]
    # The generator keeps the image shape, and its samples lie in the data range.
    params = exp._final_generator_params(str(workdir / "disback_fixed"), None)
    teacher = exp.load_teacher(config, str(workdir))
    gen = exp.make_generator(config, teacher, jax.random.key(0))
    assert gen.latent_shape == (8, 8, 1)
    x = gen.apply(params, jax.random.normal(jax.random.key(1), (3, 8, 8, 1)))
    assert x.shape == (3, 8, 8, 1)
    table = (workdir / "results.md").read_text()
    assert "| KID |" in table and "| train split |" in table
    for name in ("results.json", "convergence.png", "samples.png"):
        assert (workdir / name).exists()


def test_missing_teacher_is_an_error_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    config = _tiny_config(str(tmp_path / "no_such_teacher"))
    with pytest.raises(FileNotFoundError, match="holds no score-matching run"):
        exp.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()

    # A score-matching run that never reached its first checkpoint.
    teacher = tmp_path / "unfinished"
    teacher.mkdir()
    sm_config = sm_configs.get_config("gmm8")
    (teacher / "config.json").write_text(json.dumps(sm_config.to_dict()))
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        exp.train_and_evaluate(_tiny_config(str(teacher)), str(workdir))
    assert not workdir.exists()


def test_teacher_of_other_data_is_rejected(tiny_teacher, tmp_path):
    config = distill_configs.get_config("grid")
    with config.unlocked():
        config.teacher.workdir = tiny_teacher
    with pytest.raises(ValueError, match="trained on 'ring8'"):
        exp.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_stage2_interrupted_resumes_at_the_same_node_and_ends_the_same(
    tiny_teacher, tmp_path, monkeypatch
):
    config = _tiny_config(tiny_teacher)
    full = exp.train_and_evaluate(config, str(tmp_path / "full"))

    # Every target switch is logged: nodes 2 -> 1 -> 0 after 50 and 100 updates.
    assert full["switches"]["disback_fixed"] == [[50, 1], [100, 0]]
    assert full["stage1"]["num_nodes"] == 3 and full["stage1"]["steps"] == 30

    # Interrupt stage 2 at update 75: the last checkpoint (update 50) is on target node 1.
    real_maybe_save = Checkpointer.maybe_save

    def dying_maybe_save(self, step, state):
        if step == 75 and "disback_fixed" in self.directory:
            raise KeyboardInterrupt("simulated kill")
        return real_maybe_save(self, step, state)

    monkeypatch.setattr(Checkpointer, "maybe_save", dying_maybe_save)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        exp.train_and_evaluate(config, str(broken))
    monkeypatch.setattr(Checkpointer, "maybe_save", real_maybe_save)
    ckpt_dir = broken / "disback_fixed" / "checkpoints"
    assert sorted(int(p) for p in os.listdir(ckpt_dir) if p.isdigit()) == [50]
    state = ocp.CheckpointManager(str(ckpt_dir)).restore(50, args=ocp.args.StandardRestore())
    assert int(state["schedule"]["node"]) == 1
    at_50 = [r for r in read_metrics(tmp_path / "full" / "disback_fixed") if r["step"] == 50]
    assert any(r.get("target_node") == 1 for r in at_50)

    resumed = exp.train_and_evaluate(config, str(broken))
    assert resumed["switches"] == full["switches"]
    for name, curve in full["curves"]["disback_fixed"].items():
        if name != "train_seconds":
            np.testing.assert_array_equal(resumed["curves"]["disback_fixed"][name], curve)
    gen = exp._final_generator_params(str(tmp_path / "full" / "disback_fixed"), None)
    gen_resumed = exp._final_generator_params(str(broken / "disback_fixed"), None)
    for a, b in zip(jax.tree.leaves(gen), jax.tree.leaves(gen_resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("results.json", "results.md", "convergence.png", "samples.png"):
        assert (broken / name).exists()
