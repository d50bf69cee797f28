"""The distillation study's dtype policy (`config.precision`): bfloat16 compute in the teacher,
fake-score and generator networks, float32 parameters, optimiser state and losses, and a few
updates that stay finite and close to float32's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_distill import tiny_config

from experiments import distill as exp
from experiments.distill.generators import consistency_generator
from experiments.distill.methods import schedule
from experiments.distill.steps import initial_state, make_consistency_step, make_stage2_step
from scorejax.train import make_mesh, put_replicated

# Five updates per call, two calls.
NUM_CALLS = 2
# bfloat16 has 8 significant bits (unit roundoff 2^-8, 0.4%). Measured on this tiny config after
# ten updates: losses within 0.4% (score distillation) and 1.3% (consistency) of float32's, the
# generator's samples within 0.9% of their spread; 5% leaves a margin of about 4x.
RTOL = 0.05


def _updates(teacher_dir: str, workdir: str, method: str, precision: str):
    """The generator after `NUM_CALLS` calls of `method`'s step from its initial state, its
    latents' samples, the per-update metrics, and the jaxprs of the generator and the score."""
    config = tiny_config(
        "gmm8", teacher_dir, method, {"distill.steps_per_call": 5, "precision": precision}
    )
    exp.check_config(config)
    teacher = exp.load_teacher(config, workdir)
    programs, mesh = exp.Programs(), make_mesh()
    path = {
        "nodes": jax.tree.map(lambda a: a[None], teacher.params),
        "gaps": np.zeros((1,), np.float32),
    }
    if method == "consistency":
        gen = consistency_generator(config, teacher, programs)
        step, source = make_consistency_step(config, teacher, mesh, programs), teacher.params
    else:
        gen = exp.make_generator(config, teacher, jax.random.key(0), programs)
        sched = schedule(config, method)
        step, source = make_stage2_step(config, teacher, gen, sched, mesh, "dmd"), path
    state = put_replicated(initial_state(config, method, gen, path), mesh)
    source, key = put_replicated(source, mesh), put_replicated(jax.random.key(1), mesh)
    metrics = []
    for _ in range(NUM_CALLS):
        state, m = step(state, source, key)
        metrics.append(jax.device_get(m))
    z = jax.random.normal(jax.random.key(2), (256, *gen.latent_shape))
    x, t = jnp.ones((4, 2)), jnp.full((4,), 0.5)
    jaxprs = (
        str(jax.make_jaxpr(gen.apply)(gen.init_params, z)),
        str(jax.make_jaxpr(teacher.setup.score_fn)(teacher.params, x, t)),
    )
    metrics = {k: np.concatenate([m[k] for m in metrics]) for k in metrics[0]}
    return state, np.asarray(gen.apply(state.generator.params, z)), metrics, jaxprs


@pytest.mark.parametrize(
    ("method", "loss"), [("diff_instruct", "fake_loss"), ("consistency", "cd_loss")]
)
def test_bfloat16_updates_are_finite_and_close_to_float32(tiny_teacher, tmp_path, method, loss):
    """bf16 matmuls in the generator and the score network (teacher and fake score), float32
    parameters, optimiser state and losses; after ten updates of score distillation (generator
    and fake score) or consistency distillation, the losses and samples match float32's within
    `RTOL`."""
    runs = {
        p: _updates(tiny_teacher, str(tmp_path / p), method, p) for p in ("float32", "bfloat16")
    }
    (_, x32, m32, jaxprs32), (state16, x16, m16, jaxprs16) = runs.values()
    assert all("bf16" in j for j in jaxprs16) and not any("bf16" in j for j in jaxprs32)
    for leaf in jax.tree.leaves((state16.generator.params, state16.generator.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert m16[loss].dtype == np.float32 and len(m16[loss]) == 10
    assert np.all(np.isfinite(m16[loss])) and np.all(np.isfinite(x16))
    np.testing.assert_allclose(m16[loss], m32[loss], rtol=RTOL)
    assert float(np.max(np.abs(x16 - x32))) <= RTOL * float(np.std(x32))


def test_bfloat16_mlp_generator_computes_in_bfloat16(tiny_teacher, tmp_path):
    overrides = {"generator.kind": "mlp", "generator.init": "random", "precision": "bfloat16"}
    config = tiny_config("gmm8", tiny_teacher, "diff_instruct", overrides)
    teacher = exp.load_teacher(config, str(tmp_path))
    gen = exp.make_generator(config, teacher, jax.random.key(0))
    z = jnp.ones((4, *gen.latent_shape))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(gen.init_params))
    assert "bf16" in str(jax.make_jaxpr(gen.apply)(gen.init_params, z))
    assert gen.apply(gen.init_params, z).dtype == jnp.float32
