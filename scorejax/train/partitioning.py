"""Meshes from config and FSDP-style parameter sharding over an optional `model` axis.

The device mesh has two named axes, `data` and `model` (`data * model` = all devices of all
processes). The batch is split over `data` and replicated over `model`. Parameters, their EMA and
the optimiser moments are replicated, except those with at least `min_size` elements: these are
split along their largest dimension divisible by the `model` axis size, so each device stores
`1 / model` of every large tensor (ZeRO-3 / FSDP memory saving) and the compiler inserts the
all-gathers (forward) and reduce-scatters (gradients) that this needs. With `model = 1` (the
default) everything is replicated and the mesh is the pure data-parallel one of
`scorejax.train.make_mesh`.

Config block (`config.mesh`, all fields optional):

    mesh.data = -1            # devices along `data`; -1: all devices / model
    mesh.model = 1            # devices along `model`
    mesh.fsdp_min_size = 2**18  # parameters with at least this many elements are sharded
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from scorejax.train.mesh import DATA_AXIS, put_global

MODEL_AXIS = "model"
# 2**18 float32 elements = 1 MiB: below this, gathering a tensor costs more than storing it.
DEFAULT_FSDP_MIN_SIZE = 2**18


def create_mesh(
    data: int = -1, model: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A `(data, model)` mesh with axes named `data` and `model`.

    Devices are laid out by `jax.make_mesh`, which follows the physical topology on TPU and GPU,
    so neighbours along `model` (the axis with the most traffic under FSDP) are close. On several
    processes, `devices` defaults to the devices of all processes.

    Args:
      data: size of the `data` axis, or -1 for `len(devices) // model`.
      model: size of the `model` axis (>= 1).
      devices: the devices to use (default `jax.devices()`).

    Raises:
      ValueError: the sizes do not multiply to the number of devices.

    Examples:
      >>> import jax
      >>> mesh = create_mesh(model=1)
      >>> mesh.axis_names, mesh.shape["data"] == jax.device_count()
      (('data', 'model'), True)
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if model < 1:
        raise ValueError(f"mesh model axis size must be >= 1, got {model}")
    if data == -1:
        if n % model:
            raise ValueError(f"{n} devices cannot be split into a model axis of size {model}")
        data = n // model
    if data < 1 or data * model != n:
        raise ValueError(
            f"mesh shape data={data} x model={model} does not match the {n} available devices"
        )
    return jax.make_mesh(
        (data, model), (DATA_AXIS, MODEL_AXIS), (AxisType.Auto, AxisType.Auto), devices=devices
    )


def mesh_from_config(config: Any, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """`create_mesh` from the optional `config.mesh` block (`data`, `model`; see module doc).

    Examples:
      >>> mesh = mesh_from_config({"mesh": {"data": -1, "model": 1}})
      >>> mesh.axis_names, mesh.shape["model"]
      (('data', 'model'), 1)
      >>> mesh_from_config({}).shape["model"]  # no block: pure data parallelism
      1
    """
    block = _mesh_block(config)
    return create_mesh(int(block.get("data", -1)), int(block.get("model", 1)), devices=devices)


def fsdp_min_size(config: Any) -> int:
    """`config.mesh.fsdp_min_size`, or `DEFAULT_FSDP_MIN_SIZE` when absent.

    Examples:
      >>> fsdp_min_size({"mesh": {"fsdp_min_size": 1024}}), fsdp_min_size({})
      (1024, 262144)
    """
    return int(_mesh_block(config).get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE))


def _mesh_block(config: Any) -> dict[str, Any]:
    block = config.get("mesh") if hasattr(config, "get") else getattr(config, "mesh", None)
    if block is None:
        return {}
    return dict(block.to_dict() if hasattr(block, "to_dict") else block)


def fsdp_partition_spec(shape: Sequence[int], model_size: int, min_size: int) -> PartitionSpec:
    """The FSDP rule for one array: split its largest `model_size`-divisible dimension over
    `model` if it has at least `min_size` elements, else replicate.

    Ties between equally large dimensions go to the last one (for a `[in, out]` kernel: `out`).
    An array with no divisible dimension stays replicated.

    Args:
      shape: the array's shape.
      model_size: the size of the mesh's `model` axis.
      min_size: element-count threshold.

    Examples:
      >>> tuple(fsdp_partition_spec((512, 1024), model_size=4, min_size=1024))  # split `out`
      (None, 'model')
      >>> tuple(fsdp_partition_spec((1024, 6), model_size=4, min_size=1024))  # 6: indivisible
      ('model',)
      >>> tuple(fsdp_partition_spec((16,), model_size=4, min_size=1024))  # small: replicated
      ()
    """
    if model_size <= 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [(d, i) for i, d in enumerate(shape) if d % model_size == 0 and d >= model_size]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*([None] * axis), MODEL_AXIS)


def fsdp_shardings(tree: Any, mesh: Mesh, *, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> Any:
    """A `NamedSharding` per array leaf of `tree` (arrays or `ShapeDtypeStruct`s) by the FSDP
    rule; non-array leaves (Python scalars) are replicated.

    Apply it to a whole `TrainState`: the optimiser moments have their parameters' shapes and so
    get their shardings, and the step counters are scalars and stay replicated.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> tree = {"w": jax.ShapeDtypeStruct((512, 1024), jnp.float32), "lr": 0.1}
      >>> shardings = fsdp_shardings(tree, create_mesh(), min_size=1024)
      >>> tuple(shardings["w"].spec)  # a model axis of size 1: replicated
      ()
    """
    model_size = mesh.shape.get(MODEL_AXIS, 1)

    def rule(leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, fsdp_partition_spec(tuple(shape), model_size, min_size))

    return jax.tree.map(rule, tree)


def shard_state(state: Any, mesh: Mesh, *, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> Any:
    """Place a state pytree on `mesh` by the FSDP rule (replicated when `model = 1`).

    On several processes every process must pass the same values (e.g. initialised from the
    same key), since each contributes only the pieces its devices hold.

    Examples:
      >>> import jax.numpy as jnp
      >>> state = shard_state({"w": jnp.ones((4, 4)), "step": jnp.int32(0)}, create_mesh())
      >>> state["w"].sharding.mesh.axis_names, float(state["w"].sum())
      (('data', 'model'), 16.0)
    """
    return put_global(state, fsdp_shardings(state, mesh, min_size=min_size))


def describe_shardings(tree: Any) -> dict[str, str]:
    """`{path: partition spec}` for every array leaf (for logs and tests).

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> state = shard_state({"w": jnp.ones((4, 4))}, create_mesh())
      >>> describe_shardings({**state, "host": np.zeros(2)})
      {"['host']": 'unplaced', "['w']": 'P()'}
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        sharding = getattr(leaf, "sharding", None)
        spec = getattr(sharding, "spec", None)
        out[jax.tree_util.keystr(path)] = str(spec) if spec is not None else "unplaced"
    return out
