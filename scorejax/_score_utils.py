"""Input validation and small array helpers shared by the seed-paper score modules.

Shape and static-option checks raise `ValueError` while tracing, eagerly and under `jit` alike.
Value checks (probabilities in [0, 1], labels in range, ...) are `checkify.debug_check`s: off by
default (nothing is copied to the host; each function documents what it returns for such input),
and on under `scorejax.checked`, where they raise eagerly and under `jit` alike. The batch
reduction lives in `scorejax._reduction`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = [
    "as_float",
    "check_binary",
    "check_choice",
    "check_int_range",
    "check_mask",
    "check_ndim",
    "check_nonempty",
    "check_nonnegative",
    "check_probabilities",
    "check_same_shape",
    "compact",
    "safe_divide",
    "same_shape_floats",
    "shape_of",
]


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


def same_shape_floats(**named) -> list[jax.Array]:
    """The named arrays as floating arrays (`as_float`), in order; ValueError unless same shape."""
    arrays = {name: as_float(x) for name, x in named.items()}
    check_same_shape(**arrays)
    return list(arrays.values())


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
    """Value check (on under `scorejax.checked`): every entry of `p` in [0, 1], none NaN."""
    p = as_float(p)
    checkify.debug_check(
        jnp.all((p >= 0) & (p <= 1)),
        f"{name} must lie in [0, 1]; found values in [{{low}}, {{high}}] (or NaN)",
        low=jnp.min(p, initial=jnp.inf),
        high=jnp.max(p, initial=-jnp.inf),
    )


def check_nonnegative(name: str, x) -> None:
    """Value check (on under `scorejax.checked`): every entry of `x` >= 0, none NaN."""
    x = as_float(x)
    checkify.debug_check(
        jnp.all(x >= 0),
        f"{name} must be >= 0; found min {{low}} (or NaN)",
        low=jnp.min(x, initial=jnp.inf),
    )


def check_int_range(name: str, x, lo: int, hi: int) -> None:
    """Value check (on under `scorejax.checked`): integer entries in [lo, hi].

    Float arrays must hold whole numbers; integer arrays are checked for the range only.
    """
    x = jnp.asarray(x)
    ok = (x >= lo) & (x <= hi)
    if jnp.issubdtype(x.dtype, jnp.floating):
        ok = ok & (x == jnp.round(x))
    checkify.debug_check(
        jnp.all(ok),
        f"{name} must hold integers in [{lo}, {hi}]; found values in [{{low}}, {{high}}]",
        low=jnp.min(x, initial=hi),
        high=jnp.max(x, initial=lo),
    )


def check_binary(name: str, y) -> None:
    """Value check (on under `scorejax.checked`): every entry of `y` is 0 or 1."""
    y = jnp.asarray(y)
    checkify.debug_check(jnp.all((y == 0) | (y == 1)), f"{name} must hold 0/1 labels")


def check_choice(name: str, value, options: tuple) -> None:
    """Raise ValueError unless `value` is one of `options` (checked before any computation)."""
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


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


def welford_update(
    count: jnp.ndarray, mean: jnp.ndarray, m2: jnp.ndarray, x: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Welford's update by one value `x`: count, mean and m2 (sum of squared deviations)."""
    count = count + 1
    delta = x - mean
    mean = mean + delta / count
    return count, mean, m2 + delta * (x - mean)
