"""Dtype policies for mixed-precision training: float32 parameters, a chosen compute dtype.

A `Precision` names three dtypes (as in Micikevicius et al. 2018 and JMP):

- `param_dtype`: the stored parameters, the EMA and the optimiser state (float32);
- `compute_dtype`: the matmuls and convolutions of the forward and backward pass (float32 or
  bfloat16); models take it as their flax `dtype` field (`Precision.module_kwargs`);
- `output_dtype`: the model outputs, the loss, the normalisation statistics and the gradients
  handed to the optimiser (float32).

bfloat16 keeps float32's exponent range, so no loss scaling is needed. The models in
`scorejax.models` compute their normalisations (GroupNorm, LayerNorm, BatchNorm) and attention
softmax in float32 and return float32 outputs whatever their compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "bfloat16")

__all__ = [
    "CONFIG_FIELD",
    "PRECISIONS",
    "RECORD_DEFAULTS",
    "Precision",
    "get_precision",
    "precision_from_config",
]

CONFIG_FIELD = "precision"  # the study configs' field naming their policy
# The policy of runs recorded before the field existed (`prepare_workdir(..., defaults=...)`).
RECORD_DEFAULTS = {CONFIG_FIELD: "float32"}


def _cast_floating(tree: Any, dtype: Any) -> Any:
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A dtype policy; frozen and hashable, so it can be a static argument of a jitted function.

    Attributes:
      param_dtype: dtype of the stored parameters and optimiser state.
      compute_dtype: dtype of the model's matmuls and convolutions.
      output_dtype: dtype of model outputs, losses, normalisation statistics and gradients.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.models import ScoreMLP
      >>> policy = get_precision("bfloat16")
      >>> net = ScoreMLP(hidden_sizes=(8,), embed_dim=8, **policy.module_kwargs())
      >>> x = jnp.ones((2, 2))
      >>> params = jax.eval_shape(net.init, jax.random.key(0), x, 0.5)  # shapes and dtypes
      >>> policy.check_params(params)  # float32 parameters: no error
      >>> jax.eval_shape(net.apply, params, x, 0.5).dtype  # bfloat16 compute, float32 output
      dtype('float32')

      Pass it to `make_train_step(..., precision=policy)` to train with it.
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    def __post_init__(self):
        for field in dataclasses.fields(self):
            dtype = jnp.dtype(getattr(self, field.name))
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"Precision.{field.name} must be a floating dtype, got {dtype}")
            object.__setattr__(self, field.name, dtype)

    def module_kwargs(self) -> dict[str, Any]:
        """`{"dtype": compute_dtype, "param_dtype": param_dtype}` for a `scorejax.models` module.

        Examples:
          >>> get_precision("bfloat16").module_kwargs()
          {'dtype': dtype(bfloat16), 'param_dtype': dtype('float32')}
        """
        return {"dtype": self.compute_dtype, "param_dtype": self.param_dtype}

    def cast_to_compute(self, tree: Any) -> Any:
        """Floating leaves of `tree` cast to `compute_dtype` (integer leaves unchanged).

        Examples:
          >>> import jax, jax.numpy as jnp
          >>> batch = {"image": jnp.ones((2, 3)), "label": jnp.arange(2)}
          >>> jax.tree.map(lambda a: a.dtype, get_precision("bfloat16").cast_to_compute(batch))
          {'image': dtype(bfloat16), 'label': dtype('int32')}
        """
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_param(self, tree: Any) -> Any:
        """Floating leaves of `tree` cast to `param_dtype`.

        Examples:
          >>> import jax.numpy as jnp
          >>> Precision().cast_to_param(jnp.ones(2, jnp.bfloat16)).dtype
          dtype('float32')
        """
        return _cast_floating(tree, self.param_dtype)

    def check_params(self, params: Any) -> None:
        """Raise ValueError if a floating leaf of `params` is not `param_dtype` (trace time).

        Examples:
          >>> import jax.numpy as jnp
          >>> Precision().check_params({"w": jnp.ones(2, jnp.bfloat16)})
          Traceback (most recent call last):
          ...
          ValueError: parameter ['w'] is bfloat16, but the precision policy stores parameters as
          float32; build the model with `**precision.module_kwargs()`
        """
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            dtype = jnp.result_type(leaf)
            if jnp.issubdtype(dtype, jnp.floating) and dtype != self.param_dtype:
                raise ValueError(
                    f"parameter {jax.tree_util.keystr(path)} is {dtype}, but the precision policy "
                    f"stores parameters as {self.param_dtype}; build the model with "
                    "`**precision.module_kwargs()`"
                )

    def cast_to_output(self, tree: Any) -> Any:
        """Floating leaves of `tree` cast to `output_dtype`.

        Examples:
          >>> import jax.numpy as jnp
          >>> get_precision("bfloat16").cast_to_output(jnp.ones((), jnp.bfloat16)).dtype
          dtype('float32')
        """
        return _cast_floating(tree, self.output_dtype)


def get_precision(name: str) -> Precision:
    """The named policy: ``"float32"`` (everything float32, today's default) or ``"bfloat16"``
    (float32 parameters, loss and optimiser; bfloat16 compute).

    Examples:
      >>> get_precision("bfloat16").compute_dtype
      dtype(bfloat16)
    """
    if name == "float32":
        return Precision()
    if name == "bfloat16":
        return Precision(compute_dtype=jnp.bfloat16)
    raise ValueError(f"unknown precision {name!r}; expected one of {PRECISIONS}")


def precision_from_config(config: Any) -> Precision:
    """The policy named by a study config's top-level `precision` field (`PRECISIONS`).

    `config` is any mapping with `.get` (an `ml_collections.ConfigDict`, a dict read back from a
    run's `config.json`); a config saved before the field existed has float32, the policy every
    study ran under then.

    Raises:
      ValueError: the field names no known policy (the message names the field).

    Examples:
      >>> precision_from_config({"precision": "bfloat16"}).compute_dtype
      dtype(bfloat16)
    """
    name = config.get(CONFIG_FIELD, RECORD_DEFAULTS[CONFIG_FIELD])
    if name not in PRECISIONS:
        raise ValueError(
            f"config.{CONFIG_FIELD}={name!r} is not a known dtype policy; expected one of "
            f"{PRECISIONS}"
        )
    return get_precision(name)
