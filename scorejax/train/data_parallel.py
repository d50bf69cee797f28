"""Per-example functions run data-parallel: the batch sharded over a mesh axis, scores gathered.

Used to compute per-example scores (`scorejax.importance`, `scorejax.ghost_norm`) over a dataset
on every device of a mesh (`scorejax.train.make_mesh`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from scorejax.train.mesh import DATA_AXIS


def data_parallel(
    score_fn: Callable[..., Any], mesh: Mesh, *, num_replicated: int = 1, axis: str = DATA_AXIS
) -> Callable[..., Any]:
    """Run a per-example score function with its batch sharded over the `axis` of `mesh`.

    `score_fn(*replicated, *batched)`: the first `num_replicated` arguments (parameters) are
    replicated; the rest are batches split along their leading axis; outputs are per-example
    arrays with a leading batch axis. Each device scores its own shard (chunking, if any, stays
    local) and only the scores are gathered, so results equal the single-device call. The batch
    size must be divisible by the number of devices on `axis`.

    Returns:
      a jitted function with the same signature.
    """

    def wrapped(*args):
        specs = tuple(
            PartitionSpec() if i < num_replicated else PartitionSpec(axis) for i in range(len(args))
        )
        sharded = jax.shard_map(
            score_fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(axis), check_vma=False
        )
        return sharded(*args)

    return jax.jit(wrapped)
