"""scorejax.train.partitioning: (data, model) meshes and the FSDP size rule; a model-axis step
equals the unsharded step, and an FSDP-sharded checkpoint restores into a replicated state."""

from __future__ import annotations

import json

import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from scorejax.train import partitioning as part


@pytest.mark.parametrize(
    "shape, model, min_size, expected",
    [
        ((64, 128), 2, 1000, P(None, "model")),  # largest divisible dim
        ((128, 64), 2, 1000, P("model")),
        ((64, 64), 4, 1000, P(None, "model")),  # tie: the last dimension
        ((63, 5), 2, 10, P()),  # no dimension divisible by 2
        ((3, 3, 16, 6), 4, 100, P(None, None, "model")),  # 16 is divisible, 6 is not
        ((64, 128), 2, 64 * 128 + 1, P()),  # below the size threshold
        ((64, 128), 1, 1, P()),  # no model axis
        ((), 2, 0, P()),  # scalars
        ((2, 1024), 4, 16, P(None, "model")),  # 2 is smaller than the axis
    ],
)
def test_fsdp_rule(shape, model, min_size, expected):
    assert part.fsdp_partition_spec(shape, model, min_size) == expected


def test_create_mesh_shapes_and_errors():
    mesh = part.create_mesh()  # the test process has one CPU device
    assert mesh.axis_names == ("data", "model") and mesh.devices.shape == (1, 1)
    with pytest.raises(ValueError, match="does not match"):
        part.create_mesh(data=2, model=1)
    with pytest.raises(ValueError, match="model axis of size 3"):
        part.create_mesh(model=3)
    with pytest.raises(ValueError, match=">= 1"):
        part.create_mesh(model=0)


def test_mesh_config_block():
    c = ml_collections.ConfigDict({"mesh": {"data": 1, "model": 1, "fsdp_min_size": 12}})
    assert part.mesh_from_config(c).devices.shape == (1, 1)
    assert part.fsdp_min_size(c) == 12
    bare = ml_collections.ConfigDict({"seed": 0})
    assert part.mesh_from_config(bare).devices.shape == (1, 1)
    assert part.fsdp_min_size(bare) == part.DEFAULT_FSDP_MIN_SIZE


MODEL_AXIS_CHECK = """
import json, tempfile
import jax, jax.numpy as jnp, numpy as np, optax
from scorejax.models.mlp import ScoreMLP
from scorejax.score_matching import dsm_loss, make_score_fn
from scorejax.score_sdes import VPSDE
from scorejax.train import Checkpointer, TrainState, make_train_step, put_replicated, shard_batch
from scorejax.train import partitioning as part

assert jax.device_count() == 4
model = ScoreMLP(data_dim=4, hidden_sizes=(64, 64), embed_dim=16)
sde = VPSDE()
score_fn = make_score_fn(model.apply, sde=sde, parametrization="eps")
loss_fn = lambda p, x0, key: dsm_loss(score_fn, p, x0, key, sde=sde)
tx = optax.adam(1e-2)
params = model.init(jax.random.key(0), jnp.zeros((1, 4)), jnp.zeros((1,)))
key = jax.random.key(1)
batches = [jax.random.normal(jax.random.key(10 + i), (16, 4)) for i in range(3)]
MIN_SIZE = 64 * 64  # the 64x64 hidden kernel and its Adam moments; nothing else

def run(mesh, state_sharding, place):
    step = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.9, state_sharding=state_sharding)
    # Fresh buffers: placing on one device may alias `params`, and the step donates the state.
    state = place(TrainState.create(jax.tree.map(jnp.copy, params), tx))
    losses = []
    for b in batches:
        state, m = step(state, shard_batch(b, mesh), put_replicated(key, mesh))
        losses.append(float(m["loss"]))
    return state, losses

ref_mesh = part.create_mesh(devices=jax.devices()[:1])
ref, ref_losses = run(ref_mesh, None, lambda s: put_replicated(s, ref_mesh))

mesh = part.create_mesh(data=2, model=2)
template = TrainState.create(params, tx)
shardings = part.fsdp_shardings(template, mesh, min_size=MIN_SIZE)
state, losses = run(mesh, shardings, lambda s: part.shard_state(s, mesh, min_size=MIN_SIZE))

kernel = state.params["params"]["hidden_1"]["kernel"]
mu = state.opt_state[0].mu["params"]["hidden_1"]["kernel"]
small = state.params["params"]["hidden_1"]["bias"]
out = {
    "kernel_spec": str(kernel.sharding.spec),
    "kernel_shard_shapes": sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
    "ema_spec": str(state.ema_params["params"]["hidden_1"]["kernel"].sharding.spec),
    "mu_spec": str(mu.sharding.spec),
    "bias_spec": str(small.sharding.spec),
    "sharded_leaves": sorted(k for k, v in part.describe_shardings(state).items() if "model" in v),
    "loss_diff": max(abs(a - b) for a, b in zip(losses, ref_losses)),
    "param_diff": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params))
    ),
    "ema_diff": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ref.ema_params))
    ),
}
# An FSDP-sharded checkpoint restores into a replicated state on another mesh.
with tempfile.TemporaryDirectory() as d:
    with Checkpointer(d, save_every=1) as ckpt:
        ckpt.save(3, state)
    with Checkpointer(d, save_every=1) as ckpt:
        restored = ckpt.restore_or(put_replicated(template, ref_mesh))
out["restore_spec"] = str(restored.params["params"]["hidden_1"]["kernel"].sharding.spec)
out["restore_diff"] = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params))
)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_model_axis_shards_large_parameters_and_matches_unsharded_step(run_python):
    out = json.loads(run_python(MODEL_AXIS_CHECK, devices=4).strip().splitlines()[-1])
    # The 64x64 kernel (4096 elements >= the threshold) is split over `model` along its output
    # dimension; each device holds half of it. Its EMA and Adam moment follow it.
    assert out["kernel_spec"] == str(P(None, "model"))
    assert out["kernel_shard_shapes"] == [[64, 32]]
    assert out["ema_spec"] == out["mu_spec"] == out["kernel_spec"]
    assert out["bias_spec"] == str(P())
    assert len(out["sharded_leaves"]) == 4  # params, ema, Adam mu and nu of that kernel
    assert out["loss_diff"] < 1e-5
    assert out["param_diff"] < 1e-5
    assert out["ema_diff"] < 1e-5
    assert out["restore_spec"] == str(P())
    assert out["restore_diff"] == 0.0


ACCELERATOR_CONFIGS = {
    "score_matching_cifar10": ("score_matching_images", ("ddpm", "ddpm_slice", "edm")),
    "distill_cifar10": ("distill", ("cifar10",)),
    "data_diet_cifar10": ("data_diet", ("gpu", "tpu_v4_8")),
    "coverage_large": ("coverage", ("arithmetic",)),
}


@pytest.mark.parametrize("name", sorted(ACCELERATOR_CONFIGS))
def test_accelerator_configs_are_locked_variants_of_their_study(name):
    import importlib

    module = importlib.import_module(f"configs.{name}")
    study, variants = ACCELERATOR_CONFIGS[name]
    assert module.VARIANTS == variants
    for variant in variants:
        c = module.get_config(variant)
        assert c.is_locked and c.study == study
        with pytest.raises(AttributeError):
            c.trian = 2  # locked: a misspelt override fails
        if "mesh" in c:  # studies that build their mesh with partitioning.mesh_from_config
            assert set(c.mesh.keys()) == {"data", "model", "fsdp_min_size"}
            assert part.fsdp_min_size(c) == c.mesh.fsdp_min_size
    with pytest.raises(ValueError, match="variant"):
        module.get_config("nonexistent")


def _field_names(config, prefix: str = "") -> set[str]:
    names = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            names |= _field_names(value, f"{prefix}{key}.")
        else:
            names.add(prefix + key)
    return names


def test_cifar10_score_matching_config_has_exactly_the_image_study_fields():
    from configs import score_matching_cifar10, score_matching_images
    from experiments import score_matching_images as study

    reference = _field_names(score_matching_images.get_config("digits_vp"))
    for variant in score_matching_cifar10.VARIANTS:
        c = score_matching_cifar10.get_config(variant)
        assert _field_names(c) == reference
        assert (c.data.name, c.model.kind, c.model.channels) == ("cifar10", "unet", 128)
        study._check_config(c)


def test_cifar10_edm_config_follows_the_edm_recipe():
    """`score_matching_cifar10.py:edm` is EDM's CIFAR-10 setup (Karras et al. 2022, Table 1; the
    NVlabs/edm `--arch=ddpmpp --precond=edm` defaults) within the image study's fields."""
    import math

    import jax
    import jax.numpy as jnp

    from configs import score_matching_cifar10
    from experiments import score_matching_images as study
    from scorejax.models.unet import UNet

    c = score_matching_cifar10.get_config("edm")
    assert (c.sde.name, c.sde.sigma_min, c.sde.sigma_max) == ("edm", 0.002, 80.0)
    assert (c.model.preconditioning, c.model.parametrization, c.model.sigma_data) == (
        "edm",
        "x0",
        0.5,
    )
    assert (c.loss.name, c.loss.p_mean, c.loss.p_std) == ("edm", -1.2, 1.2)
    # Heun with 18 steps: 35 denoiser evaluations, sigma 80 -> 0.002, rho 7.
    assert (c.sampler.name, c.sampler.num_steps, c.sampler.rho) == ("edm_heun", 18, 7.0)
    assert 2 * c.sampler.num_steps - 1 == 35
    assert (c.sampler.sigma_min, c.sampler.sigma_max) == (0.002, 80.0)
    # Batch 512, Adam 1e-3 ramped over 10M images, 200M images, EMA half-life 0.5M images.
    t = c.train
    assert (t.batch_size, t.learning_rate, t.final_lr_fraction) == (512, 1e-3, 1.0)
    assert abs(t.warmup_steps * t.batch_size - 10e6) < t.batch_size
    assert t.num_steps * t.batch_size == 200_000_000
    half_life_images = math.log(0.5) / math.log(t.ema_decay) * t.batch_size
    assert abs(half_life_images - 0.5e6) < 0.01e6
    assert t.num_steps % t.steps_per_call == 0
    # DDPM++ layout: 128 channels, multipliers (2, 2, 2), 4 blocks, attention at 16x16.
    assert (c.model.channels, tuple(c.model.channel_mult), c.model.num_res_blocks) == (
        128,
        (2, 2, 2),
        4,
    )
    assert tuple(c.model.attn_resolutions) == (16,)
    study._check_config(c)
    net = study.make_unet(c)
    assert isinstance(net, UNet)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros(1))
    num_params = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))
    assert 50e6 < num_params < 58e6  # DDPM++ in EDM: 55.7M


def test_cifar10_distill_config_has_exactly_the_image_distill_fields(tmp_path):
    from configs import distill, distill_cifar10
    from experiments import distill as study

    c = distill_cifar10.get_config("cifar10")
    assert _field_names(c) == _field_names(distill.get_config("digits"))
    assert (c.data.kind, c.data.name, c.teacher.config_module) == (
        "image",
        "cifar10",
        "score_matching_cifar10",
    )
    study.check_config(c)
    # With no teacher workdir, the teacher it would train is the CIFAR-10 score-matching run.
    _, teacher, must_train = study.locate_teacher(c, str(tmp_path))
    assert must_train and teacher.study == "score_matching_images"
    assert (teacher.data.name, teacher.model.channels) == ("cifar10", 128)
    assert teacher.train.num_steps == c.teacher.num_steps
