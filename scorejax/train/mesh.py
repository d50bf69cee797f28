"""Device meshes and shardings: data parallelism over a `data` axis of all devices.

The same code runs on one CPU, on 8 forced host devices, and on a multi-host TPU pod: the batch is
split along the `data` mesh axis, and the training state is replicated on every device. On several
hosts each process passes its own slice of the global batch to `shard_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, *, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh with axis `axis_name` over `devices` (default: all devices of all processes).

    Examples:
      >>> import jax
      >>> mesh = make_mesh()
      >>> mesh.axis_names, mesh.size == jax.device_count()
      (('data',), True)
      >>> make_mesh(jax.devices()[:1]).size
      1
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.asarray(devices), (axis_name,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the full array (used for the training state, keys and metrics).

    Examples:
      >>> tuple(replicated_sharding(make_mesh()).spec)  # no axis split
      ()
    """
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Arrays split along dimension `batch_axis` over the mesh's data axis.

    `batch_axis=1` is the layout of a stack of batches `(steps_per_call, batch, ...)` that one
    dispatch of a scanned train step consumes.

    Examples:
      >>> mesh = make_mesh()
      >>> tuple(batch_sharding(mesh).spec), tuple(batch_sharding(mesh, batch_axis=1).spec)
      (('data',), (None, 'data'))
    """
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), mesh.axis_names[0]))


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Place a pytree of host arrays onto the mesh, split along `batch_axis`.

    With one process `batch` is the global batch. With several processes each passes its local
    slice (global batch / process count examples) and the result is the global array.

    Raises:
      ValueError: if a leaf's batch dimension is not divisible by the number of devices that
        share it.

    Examples:
      >>> import numpy as np
      >>> mesh = make_mesh()
      >>> batch = shard_batch({"x": np.ones((4, 2)), "y": np.arange(4)}, mesh)
      >>> batch["x"].shape, batch["x"].sharding == batch_sharding(mesh)
      ((4, 2), True)
    """
    sharding = batch_sharding(mesh, batch_axis)
    n_shards = mesh.shape[mesh.axis_names[0]]
    multi_process = jax.process_count() > 1
    local_shards = n_shards // jax.process_count() if multi_process else n_shards

    def put(path, leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        shape = np.shape(leaf)
        if len(shape) <= batch_axis:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path)} has shape {shape}, which has no batch "
                f"axis {batch_axis}"
            )
        if shape[batch_axis] % local_shards:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path)} has {shape[batch_axis]} examples along "
                f"axis {batch_axis}, not divisible by the {local_shards} devices that split it; "
                "choose a batch size that is a multiple of the device count"
            )
        if multi_process:
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))
        return jax.device_put(leaf, sharding)

    return jax.tree_util.tree_map_with_path(put, batch)


def put_global(tree: Any, shardings: Any) -> Any:
    """Place a pytree whose values are the same on every process onto (possibly multi-process)
    shardings: one `Sharding` for all leaves, or a pytree of them matching `tree`.

    With several processes, `jax.device_put` refuses arrays committed to a local device and
    compares every other leaf across processes (a gather per leaf); here each process instead
    copies just the slices its own devices hold. Typed PRNG keys are placed through their raw
    key data.

    Examples:
      >>> import numpy as np
      >>> mesh = make_mesh()
      >>> placed = put_global({"w": np.ones(3)}, replicated_sharding(mesh))
      >>> placed["w"].sharding.is_fully_replicated, placed["w"].tolist()
      (True, [1.0, 1.0, 1.0])
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(leaf, sharding):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, sharding)  # already global: a reshard
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda leaf: put(leaf, shardings), tree)
    return jax.tree.map(put, tree, shardings)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Copy a pytree (a train state, a key) onto every device of `mesh`.

    Examples:
      >>> import jax
      >>> mesh = make_mesh()
      >>> key = put_replicated(jax.random.key(0), mesh)
      >>> key.sharding == replicated_sharding(mesh)
      True
    """
    return put_global(tree, replicated_sharding(mesh))
