"""The U-Net score network: shapes, pinned parameter counts, and DSM steps on image data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scorejax.models.unet import UNet
from scorejax.score_matching import dsm_loss, score_from_eps
from scorejax.score_sdes import VESDE, VPSDE

TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
# One level, no attention: the cheapest U-Net to differentiate, for the DSM-step tests.
MICRO = dict(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
             mid_attention=False)


def _key(seed: int) -> jax.Array:
    # Initialising with the "rbg" generator compiles about 4x faster on CPU than threefry.
    return jax.random.key(seed, impl="rbg")


def _num_params(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _init_shapes(model, shape):
    x = jnp.zeros(shape)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros(shape[0])))


@pytest.mark.parametrize(
    ("kwargs", "shape", "count"),
    [
        # Counted by hand layer by layer: time MLP 1,344, conv_in 80, down path 7,376, middle
        # 11,584, up path 24,496, output 89.
        (TINY, (2, 8, 8, 1), 44_969),
        ({}, (2, 8, 8, 1), 1_623_169),
        (dict(channels=64, channel_mult=(1, 2, 2, 2), attn_resolutions=(16,)), (2, 32, 32, 3),
         8_952_067),
    ],
)
def test_parameter_count_is_pinned(kwargs, shape, count):
    assert _num_params(_init_shapes(UNet(**kwargs), shape)) == count


@pytest.mark.parametrize("shape", [(3, 8, 8, 1)])
def test_output_shape_zero_init_and_per_example_independence(shape):
    model = UNet(**TINY)
    apply = jax.jit(model.apply)
    x = jax.random.normal(jax.random.key(1), shape)
    t = jnp.linspace(0.1, 0.9, shape[0])
    params = jax.jit(model.init)(_key(0), x, t)
    out = apply(params, x, t)
    assert out.shape == shape and out.dtype == x.dtype
    # The output convolution is zero-initialised: a fresh network predicts exactly 0.
    assert float(jnp.abs(out).max()) == 0.0
    # Perturb every parameter so the checks below see a non-trivial function.
    # (numpy noise: drawing it with jax.random would compile a generator per parameter shape)
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
    out = apply(params, x, t)
    # Each example depends on its own image and time only (group norm, not batch norm).
    swapped = apply(params, x[::-1], t[::-1])[::-1]
    np.testing.assert_allclose(swapped, out, rtol=1e-4, atol=1e-5)
    same_t = apply(params, x, jnp.full((shape[0],), 0.3))
    assert not np.allclose(out, same_t)
    first = apply(params, x[jnp.array([0, 0, 0])], jnp.full(3, 0.3))[0]
    np.testing.assert_allclose(same_t[0], first, rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise():
    model = UNet(**TINY)
    x = jnp.zeros((2, 8, 8, 1))
    params = jax.eval_shape(lambda: model.init(_key(0), x, jnp.zeros(2)))
    with pytest.raises(ValueError, match="NHWC"):
        model.apply(params, jnp.zeros((2, 8, 8)), jnp.zeros(2))
    with pytest.raises(ValueError, match="divisible by 2"):
        model.apply(params, jnp.zeros((2, 7, 7, 1)), jnp.zeros(2))
    with pytest.raises(ValueError, match="t must be"):
        model.apply(params, x, jnp.zeros(3))


def _dsm_steps(images: np.ndarray, sde, num_steps: int = 3) -> list[float]:
    model = UNet(**MICRO)
    x = jnp.asarray(images)
    params = jax.jit(model.init)(_key(0), x[:1], jnp.zeros(1))
    score_fn = score_from_eps(lambda p, x, t: model.apply(p, x, t), sde=sde)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        (loss, _), grads = jax.value_and_grad(
            lambda p: dsm_loss(score_fn, p, x, key, sde=sde, t_min=1e-3), has_aux=True
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(num_steps):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    return losses


def test_dsm_step_on_digits(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from scorejax.data import load

    batch = next(iter(load("digits", "train", batch_size=16, seed=0, data_dir=str(tmp_path))))
    losses = _dsm_steps(batch["image"], VPSDE())
    # With eps-parametrisation the fresh network predicts eps = 0: the loss starts at d = 64.
    assert abs(losses[0] - 64.0) < 16.0
    assert all(np.isfinite(losses))


def test_dsm_step_on_mocked_mnist():
    tfds = pytest.importorskip("tensorflow_datasets")
    from scorejax.data import load

    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        batch = next(iter(load("mnist", "train", batch_size=8, seed=0, shard_count=1,
                               shard_index=0)))
    assert batch["image"].shape == (8, 28, 28, 1)
    losses = _dsm_steps(batch["image"], VESDE(sigma_max=10.0))
    assert abs(losses[0] - 784.0) < 100.0 and all(np.isfinite(losses))
