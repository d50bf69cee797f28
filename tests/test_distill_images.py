"""The distillation study on images (`configs/distill.py:digits`): config, bad teachers and a
tiny end-to-end run.

Apart from `tests/test_distill_experiment.py` so that the two test processes of `make test`
(`--dist loadfile`) can run the two files' end-to-end tests at the same time.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from configs import distill as distill_configs
from configs import score_matching as sm_configs
from experiments import distill as exp
from scorejax.train import Checkpointer, TrainState, checkpoint_dir, prepare_workdir

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
        c.distill.fake_steps = 1
        c.stage1.num_nodes = 2
        c.stage1.num_steps = 4
        c.stage1.probe_every = 2
        c.stage1.probe_samples = 16
        c.stage1.learning_rate = 1e-3
        c.stage1.batch_size = 8
        c.schedule.interval = 2
        c.eval.every = 2
        c.eval.num_samples = 32
        c.eval.num_projections = 8
        c.checkpoint_every = 4  # one save per method: Orbax saves cost about a second each
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
    toy = distill_configs.get_config("gmm8")
    with toy.unlocked():
        toy.teacher.workdir = tiny_image_teacher[0]
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
    assert [sw[:2] for sw in out["switches"]["disback_fixed"]] == [[2, 0]]
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
    # The generator's latents have the image shape, and its final weights are a U-Net's.
    teacher = exp.load_teacher(config, str(workdir))
    gen = exp.make_generator(config, teacher, jax.random.key(0))
    assert gen.latent_shape == (8, 8, 1)
    exp.final_generator_params(str(workdir / "disback_fixed"), gen)
    table = (workdir / "results.md").read_text()
    assert "| KID |" in table and "| train split |" in table
    for name in ("results.json", "convergence.png", "samples.png"):
        assert (workdir / name).exists()
