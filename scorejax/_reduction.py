"""The one batch reduction of the library's losses: `reduction="mean" | "sum" | "none"`.

Every loss that reduces per-example values over a batch takes `reduction` and passes its
per-example values here. The option is a static Python string, validated while tracing, so a
misspelt reduction raises `ValueError` eagerly and under `jit` alike, before anything runs:

    "mean":  (1/B) sum_i l_i      (the default)
    "sum":   sum_i l_i
    "none":  l, unreduced, one value per example (shape (...), the batch shape)

so that for any loss, ``loss(..., reduction="sum") == B * loss(..., reduction="mean")`` and
``loss(..., reduction="none")`` holds the per-example values those two reduce.

Examples:
  >>> import jax.numpy as jnp
  >>> per_example = jnp.asarray([1.0, 2.0, 6.0])
  >>> [float(reduce(per_example, r).sum()) for r in ("mean", "sum", "none")]
  [3.0, 9.0, 9.0]
  >>> try:
  ...     check_reduction("avg")
  ... except ValueError as e:
  ...     print(e)
  reduction must be one of ('mean', 'sum', 'none'), got 'avg'
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

__all__ = ["REDUCTIONS", "Reduction", "check_reduction", "reduce"]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Raise ValueError unless `reduction` is one of `REDUCTIONS` (a trace-time check)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce(values: jax.Array, reduction: Reduction) -> jax.Array:
    """Reduce per-example `values` (...) over all their entries: mean, sum, or unreduced.

    Args:
      values: (...) per-example values (the batch shape).
      reduction: "mean", "sum" or "none".

    Returns:
      a scalar for "mean" and "sum"; `values` itself for "none".
    """
    check_reduction(reduction)
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    return values
