"""Memory-bounded vmap: a per-example function over a batch, a fixed number of examples at a time.

`chunked_vmap(fn, batch, chunk_size=C)` equals `jax.vmap(fn)(batch)` while holding only
`chunk_size` examples' intermediates at once (per-example gradients, Jacobians, ...): the batch is
padded to a whole number of chunks, each chunk is vmapped, and the chunks run one after another
under `jax.lax.map`. `pad_to_multiple` is the padding rule it uses, shared with the host-side
batching of `scorejax.train.data_parallel.map_in_batches`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["batch_size_of", "chunked_vmap", "pad_to_multiple"]


def batch_size_of(batch: PyTree) -> int:
    """The common leading-axis length `B` of every leaf of `batch` (ValueError if they differ).

    Examples:
      >>> import jax.numpy as jnp
      >>> batch_size_of({"x": jnp.ones((3, 2)), "y": jnp.zeros(3)})
      3
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("empty batch")
    n = leaves[0].shape[0] if leaves[0].ndim else None
    if n is None or any(leaf.shape[:1] != (n,) for leaf in leaves):
        raise ValueError(
            f"batch leaves disagree on the batch size: {[jnp.shape(x) for x in leaves]}"
        )
    return n


def pad_to_multiple(batch: PyTree, *, multiple: int) -> tuple[PyTree, int]:
    """Pad the leading axis of every leaf from `B` to `ceil(B / multiple) * multiple` examples.

    The padding repeats the first example (zeros might lie outside a model's domain, e.g. give a
    log of zero), so padded rows compute finite values that the caller then drops. Returns
    `(padded, pad)` with `pad = ceil(B / multiple) * multiple - B` rows appended; `B >= 1`.

    Examples:
      >>> import jax.numpy as jnp
      >>> padded, pad = pad_to_multiple({"x": jnp.arange(5.0)}, multiple=4)
      >>> padded["x"].tolist(), pad
      ([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0], 3)
    """
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    n = batch_size_of(batch)
    pad = -n % multiple
    if pad == 0:
        return batch, 0
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), batch)
    return padded, pad


def chunked_vmap(
    fn: Callable[[PyTree], PyTree], batch: PyTree, *, chunk_size: int | None
) -> PyTree:
    """`jax.vmap(fn)(batch)`, computed `chunk_size` examples at a time.

    With `B` the leading length of `batch`'s leaves and `C = chunk_size`, the batch is padded to
    `M = ceil(B / C)` chunks (`pad_to_multiple`), reshaped to `[M, C, ...]`, and
    `jax.lax.map(jax.vmap(fn))` runs the chunks in sequence; outputs `[M, C, ...]` are flattened
    and cut back to `[B, ...]`. Results equal the plain vmap; peak memory is that of one chunk.
    Works under `jit`, `grad` and an outer `vmap`.

    Args:
      fn: a function of one example (a pytree of arrays without the batch axis).
      batch: a pytree of arrays sharing the leading batch axis `B`.
      chunk_size: examples per vmapped chunk; None (or `>= B`) vmaps the whole batch at once.

    Returns:
      `fn`'s outputs stacked along a leading axis of length `B`.

    Examples:
      >>> import jax.numpy as jnp
      >>> batch = jnp.arange(10.0).reshape(5, 2)
      >>> chunked_vmap(lambda v: jnp.sum(v**2), batch, chunk_size=2).tolist()
      [1.0, 13.0, 41.0, 85.0, 145.0]
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    n = batch_size_of(batch)
    if chunk_size is None or chunk_size >= n:
        return jax.vmap(fn)(batch)
    padded, _ = pad_to_multiple(batch, multiple=chunk_size)
    num_chunks = -(-n // chunk_size)
    chunks = jax.tree.map(lambda a: a.reshape(num_chunks, chunk_size, *a.shape[1:]), padded)
    out = jax.lax.map(jax.vmap(fn), chunks)
    return jax.tree.map(lambda y: y.reshape(num_chunks * chunk_size, *y.shape[2:])[:n], out)
