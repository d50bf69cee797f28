"""Per-example functions run data-parallel: the batch sharded over a mesh axis, scores gathered.

Used to compute per-example scores (`scorejax.importance`, `scorejax.ghost_norm`) over a dataset
on every device of a mesh (`scorejax.train.make_mesh`): `data_parallel` shards one batch,
`map_in_batches` feeds a whole dataset through such a function one fixed-size batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from scorejax.chunked import batch_size_of, pad_to_multiple
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from scorejax.train.mesh import make_mesh
      >>> score = data_parallel(lambda w, x: x @ w, make_mesh())  # w replicated, x split
      >>> score(jnp.ones(2), jnp.arange(8.0).reshape(4, 2)).tolist()
      [1.0, 5.0, 9.0, 13.0]
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


def map_in_batches(
    fn: Callable[..., Any],
    *args: Any,
    batch_size: int,
    num_replicated: int = 1,
    multiple: int = 1,
) -> Any:
    """`fn(*replicated, *batched)` over all `N` examples of `batched`, one batch per call.

    The batched arguments (pytrees of arrays with leading axis `N`) are cut into consecutive
    slices of `b = max(multiple, ceil(min(batch_size, N) / multiple) * multiple)` examples; the
    last slice is padded to `b` with copies of its first example (`scorejax.chunked.
    pad_to_multiple`), so every call has one shape and `fn` compiles once. Each call's per-example
    outputs (leading axis `b`) are copied to the host, cut back and concatenated. With `fn` a
    `data_parallel` function, `multiple` is the device count of its mesh axis, which `b` must
    divide. The result equals `fn` on the whole dataset at once while holding one batch on device.

    Args:
      fn: `fn(*replicated, *batched) -> outputs` with per-example outputs `[b, ...]`.
      *args: the first `num_replicated` are passed unchanged to every call (parameters); the rest
        are the batched arguments.
      batch_size: examples per call (rounded up to a multiple of `multiple`, at most `N` rounded).
      num_replicated: how many leading arguments are not batched.
      multiple: the batch size of every call is a multiple of this.

    Returns:
      `fn`'s outputs as numpy arrays with leading axis `N`.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(10.0).reshape(5, 2)  # N = 5: batches of 2, 2 and 1 padded to 2
      >>> map_in_batches(lambda w, x: x @ w, jnp.ones(2), x, batch_size=2).tolist()
      [1.0, 5.0, 9.0, 13.0, 17.0]
    """
    if batch_size < 1 or multiple < 1:
        raise ValueError(f"batch_size and multiple must be positive, got {batch_size}, {multiple}")
    replicated, batched = args[:num_replicated], args[num_replicated:]
    n = batch_size_of(batched)
    b = max(multiple, -(-min(batch_size, n) // multiple) * multiple)
    outs = []
    for start in range(0, n, b):
        part = jax.tree.map(lambda a, s=start: a[s : s + b], batched)
        part, pad = pad_to_multiple(part, multiple=b)
        out = jax.device_get(fn(*replicated, *part))
        outs.append(jax.tree.map(lambda y, keep=b - pad: np.asarray(y)[:keep], out))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *outs)
