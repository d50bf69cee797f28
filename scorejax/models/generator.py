"""One-step generators `z -> x0` for score distillation, and their initialisations.

Two families:

* `MLPGenerator`: a plain SiLU MLP from a latent `z` `[B, latent_dim]` to `x0` `[B, data_dim]`,
  initialised at random (2-D toys).
* `DenoiserGenerator` (a flax module) and `denoiser_generator` (the same map for any
  `score_fn(params, x, t)`, no module needed): the teacher's own network used as a denoiser at
  one fixed, large noise level, `G(z) = D(sigma_init z, t_init)` with `sigma_init =
  sigma(t_init)` (Diff-Instruct and DMD2 build their generators this way from an EDM teacher).
  The module wraps any time-conditioned network `(x, t) -> output` (the 2-D `ScoreMLP`, an image
  U-Net) and has exactly the teacher's parameter tree under the name `network`, so it can start
  from the teacher's weights (`DenoiserGenerator.params_from_teacher`) or from a fresh random
  initialisation (`init`); `denoiser_generator`'s parameters *are* a score model's parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorejax.sde import SDE, batch_broadcast

Array = jax.Array

__all__ = [
    "MLPGenerator",
    "DenoiserGenerator",
    "denoiser_generator",
    "GENERATOR_PARAMETRIZATIONS",
]

GENERATOR_PARAMETRIZATIONS = ("score", "eps", "x0")


class MLPGenerator(nn.Module):
    """MLP one-step generator: `z` `[B, latent_dim]` -> `x0` `[B, data_dim]`.

    `hidden_sizes` Dense + SiLU layers and a linear head, whose output is multiplied by
    `output_scale` (so a random initialisation starts with samples of a chosen spread). `dtype`
    is the compute dtype of the layers (None: inferred, as flax does; when set, the output is
    float32; see `scorejax.train.precision`), `param_dtype` that of the parameters.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> gen = MLPGenerator(data_dim=2, hidden_sizes=(16,), output_scale=0.5)
      >>> z = jnp.ones((8, 3))  # latent_dim = 3
      >>> params = jax.eval_shape(gen.init, jax.random.key(0), z)  # shapes only
      >>> jax.eval_shape(gen.apply, params, z).shape
      (8, 2)
    """

    data_dim: int
    hidden_sizes: Sequence[int] = (256, 256, 256)
    output_scale: float = 1.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: Array) -> Array:
        if z.ndim != 2:
            raise ValueError(f"MLPGenerator expects z of shape [B, latent_dim], got {z.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = z
        for i, width in enumerate(self.hidden_sizes):
            h = nn.silu(nn.Dense(width, name=f"hidden_{i}", **kw)(h))
        out = nn.Dense(self.data_dim, name="out", **kw)(h)
        return self.output_scale * (out if self.dtype is None else out.astype(jnp.float32))


class DenoiserGenerator(nn.Module):
    """One-step generator from a diffusion network evaluated at a fixed time `t_init`.

    `x_init = sigma(t_init) z` is a draw from the diffused marginal at `t_init` when
    `alpha(t_init) x0` is negligible (large `t_init`); the generator returns the denoiser there,

        G(z) = D(x_init, t_init) = (x_init + sigma^2 s(x_init, t_init)) / alpha     (Tweedie),

    with the score `s` read from `network`'s output according to `parametrization` (`"score"`,
    `"eps"`: `s = -out / sigma`, or `"x0"`: `D = out`). At the teacher's weights the initial
    generator is the teacher's posterior mean at `t_init`: a blurred, mode-averaged distribution.
    Whether it lies off the data depends on the data: for a VP teacher at `t_init = 0.7`
    (`alpha = 0.084`) on the 2-D toys it is a small blob at the origin, inside the region that
    the diffused data covers (no score mismatch there); a constant offset on the output (see
    `experiments/distill/generators.py`, `generator.offset`) puts it off the data.

    Its dtype policy is the wrapped network's (e.g. `UNet(dtype=jnp.bfloat16)`); the Tweedie
    step above runs in the dtype of `z` and of the network's output (float32 for the package's
    networks).

    Attributes:
      network: a flax module called as `network(x, t)` returning an array shaped like `x`.
      sde: the teacher's SDE (hashable).
      t_init: the fixed time, in `(0, sde.T]`.
      parametrization: the meaning of the network's output, as for the teacher.

    Call: `z` shaped like the data `[B, ...]`; returns `x0` of the same shape.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.models.mlp import ScoreMLP
      >>> from scorejax.score_sdes import VPSDE
      >>> sde, teacher = VPSDE(), ScoreMLP(hidden_sizes=(16,), embed_dim=8)  # a score network
      >>> z = jnp.ones((4, 2))
      >>> teacher_vars = teacher.init(jax.random.key(0), z, 0.5)
      >>> gen = DenoiserGenerator(teacher, sde, t_init=0.8, parametrization="score")
      >>> x0 = gen.apply(DenoiserGenerator.params_from_teacher(teacher_vars), z)
      >>> same = denoiser_generator(teacher.apply, sde, t_init=0.8)(teacher_vars, z)
      >>> x0.shape, bool(jnp.allclose(x0, same))  # the module and the function agree
      ((4, 2), True)
    """

    network: nn.Module
    sde: SDE
    t_init: float = 0.8
    parametrization: str = "eps"

    @nn.compact
    def __call__(self, z: Array) -> Array:
        if self.parametrization not in GENERATOR_PARAMETRIZATIONS:
            raise ValueError(
                f"unknown parametrization {self.parametrization!r}; expected one of "
                f"{GENERATOR_PARAMETRIZATIONS}"
            )
        if not 0.0 < self.t_init <= self.sde.T:
            raise ValueError(f"t_init must be in (0, T={self.sde.T}], got {self.t_init}")
        t = jnp.full((z.shape[0],), self.t_init, z.dtype)
        alpha = batch_broadcast(self.sde.alpha(t), z)
        sigma = batch_broadcast(self.sde.sigma(t), z)
        x_init = sigma * z
        out = self.network(x_init, t)
        if self.parametrization == "x0":
            return out
        if self.parametrization == "eps":
            return (x_init - sigma * out) / alpha
        return (x_init + sigma**2 * out) / alpha

    @staticmethod
    def params_from_teacher(teacher_variables: Any) -> Any:
        """The generator's variables holding a copy of the teacher's (`{"params": ...}`) weights.

        Examples:
          >>> import jax, jax.numpy as jnp
          >>> teacher_vars = {"params": {"out": {"kernel": jnp.ones((3, 2))}}}
          >>> jax.tree.map(jnp.shape, DenoiserGenerator.params_from_teacher(teacher_vars))
          {'params': {'network': {'out': {'kernel': (3, 2)}}}}
        """
        if not isinstance(teacher_variables, dict) or "params" not in teacher_variables:
            raise ValueError(
                "teacher_variables must be a flax variables dict with a 'params' entry, got "
                f"{type(teacher_variables).__name__}"
            )
        return {
            "params": {"network": jax.tree.map(jnp.array, teacher_variables["params"])},
        }


def denoiser_generator(
    score_fn: Callable[[Any, Array, Array], Array], sde: SDE, t_init: float
) -> Callable[[Any, Array], Array]:
    """`generator_fn(params, z) = (x + sigma^2 score_fn(params, x, t_init)) / alpha`, `x = sigma z`.

    The model-agnostic form of `DenoiserGenerator`: the generator's parameters are parameters of
    the score model `score_fn(params, x, t)` (`x` `[B, ...]`, `t` `[B]`), so the teacher's
    parameters initialise it from the teacher and the score model's own initialiser at random.
    `z` is shaped like the data; `alpha`, `sigma` are the SDE's at `t_init`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> sde = VPSDE()
      >>> exact = lambda params, x, t: -x / sde.sigma(t)[:, None] ** 2  # the score of data at 0
      >>> generator_fn = denoiser_generator(exact, sde, t_init=0.8)
      >>> print(generator_fn(None, jnp.ones((2, 3))))  # Tweedie's denoiser: every x0 is 0
      [[0. 0. 0.]
       [0. 0. 0.]]
    """
    if not 0.0 < t_init <= sde.T:
        raise ValueError(f"t_init must be in (0, T={sde.T}], got {t_init}")

    def generator_fn(params: Any, z: Array) -> Array:
        t = jnp.full((z.shape[0],), t_init, z.dtype)
        alpha = batch_broadcast(sde.alpha(t), z)
        sigma = batch_broadcast(sde.sigma(t), z)
        x = sigma * z
        return (x + sigma**2 * score_fn(params, x, t)) / alpha

    return generator_fn
