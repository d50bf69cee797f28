"""Input validation, reductions and small array helpers shared by the seed-paper score modules.

Shape checks always run (shapes are static, even under `jit`). Value checks (probabilities in
[0, 1], labels in range) need concrete values, so they run only when the argument is not a tracer;
inside `jit`/`vmap`/`grad` they are skipped and the functions compute on whatever they get.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Reduction = Literal["mean", "sum", "none"]


def is_concrete(*xs) -> bool:
    """True when none of `xs` is a JAX tracer, so its values can be read on the host."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def as_float(x) -> jax.Array:
    """`x` as a floating JAX array; integer and bool inputs become the default float dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def shape_of(x) -> tuple[int, ...]:
    """Shape of an array, tracer, scalar or (nested) list."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def check_same_shape(**named) -> None:
    """Raise ValueError unless all named arrays have the same shape."""
    shapes = {name: shape_of(x) for name, x in named.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{name}{shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {desc}; these arguments must have the same shape")


def check_ndim(name: str, x, ndims: tuple[int, ...]) -> None:
    """Raise ValueError unless `x.ndim` is one of `ndims`."""
    if len(shape_of(x)) not in ndims:
        raise ValueError(
            f"{name} must have ndim in {ndims}, got shape {shape_of(x)}"
        )


def check_nonempty(name: str, x, axis: int = -1) -> None:
    """Raise ValueError when `x` has length 0 along `axis`."""
    if len(shape_of(x)) > 0 and shape_of(x)[axis] == 0:
        raise ValueError(f"{name} is empty along axis {axis}")


def check_probabilities(name: str, p) -> None:
    """Raise ValueError when a concrete `p` has an entry outside [0, 1] (NaN included)."""
    if not is_concrete(p):
        return
    a = np.asarray(p, dtype=np.float64)
    if not np.all((a >= 0.0) & (a <= 1.0)):
        bad = a[~((a >= 0.0) & (a <= 1.0))]
        raise ValueError(f"{name} must lie in [0, 1]; found {bad[:5]!r}")


def check_nonnegative(name: str, x) -> None:
    """Raise ValueError when a concrete `x` has a negative or NaN entry."""
    if not is_concrete(x):
        return
    a = np.asarray(x, dtype=np.float64)
    if not np.all(a >= 0.0):
        raise ValueError(f"{name} must be >= 0; found {a[~(a >= 0.0)][:5]!r}")


def check_int_range(name: str, x, lo: int, hi: int) -> None:
    """Raise ValueError when a concrete `x` has a non-integer entry or one outside [lo, hi]."""
    if not is_concrete(x):
        return
    a = np.asarray(x)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise ValueError(f"{name} must hold integers; found non-integer values")
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(
            f"{name} must lie in [{lo}, {hi}]; found values in [{a.min()}, {a.max()}]"
        )


def check_binary(name: str, y) -> None:
    """Raise ValueError when a concrete `y` has an entry other than 0 or 1."""
    if not is_concrete(y):
        return
    a = np.asarray(y)
    if not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name} must hold 0/1 labels; found {np.unique(a)[:5]!r}")


def check_choice(name: str, value, options: tuple) -> None:
    """Raise ValueError unless `value` is one of `options` (checked before any computation)."""
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def reduce(x: jax.Array, reduction: Reduction) -> jax.Array:
    """Reduce per-example values: 'mean' and 'sum' over all entries, 'none' returns `x`."""
    if reduction == "mean":
        return jnp.mean(x)
    if reduction == "sum":
        return jnp.sum(x)
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def safe_divide(num: jax.Array, den: jax.Array, fill: float) -> jax.Array:
    """num / den where den != 0, else `fill`; gradients stay finite at den == 0."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), fill)


def compact(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Move the valid entries of a 1-D `tokens` to the front, keeping their order.

    Returns (compacted tokens, number of valid entries); works for left, right or any padding.
    """
    order = jnp.argsort(~mask.astype(bool), stable=True)
    return tokens[order], jnp.sum(mask.astype(jnp.int32))


def check_mask(name: str, mask, like_name: str, like) -> jax.Array:
    """A boolean mask of the same shape as `like` (all True when `mask` is None)."""
    if mask is None:
        return jnp.ones(shape_of(like), bool)
    mask = jnp.asarray(mask)
    if mask.shape != shape_of(like):
        raise ValueError(
            f"shape mismatch: {name}{mask.shape} must match {like_name}{shape_of(like)}"
        )
    return mask.astype(bool)
