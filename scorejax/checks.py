"""Value checks that mean the same eagerly and under `jax.jit`: `checked(fn)`.

Library functions validate two kinds of input differently:

- Shapes, dtypes and static options are checked in Python while the function is traced, so a
  wrong shape raises `ValueError` eagerly and under `jit` alike, before anything runs.
- Values (a label outside [0, K), a log-probability above 0, N < 1, ...) are checked with
  `jax.experimental.checkify.debug_check`. By default these checks are switched off, eagerly and
  under `jit` alike: nothing is copied to the host, and each function documents what it returns
  for such input. `checked(fn)` switches them on: it runs `fn` under `checkify.checkify` and raises
  when a check fails, whether it is called eagerly, wrapped around a jitted function, or itself
  wrapped in `jax.jit` / `jax.vmap` / `jax.grad`.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import scorejax
  >>> from scorejax import dco
  >>> safe_loss = scorejax.checked(lambda s: dco.dco_loss(s, n=4.0)[0])
  >>> jax.jit(safe_loss)(jnp.log(jnp.asarray([0.5]))).round(4)
  Array(0.0645, dtype=float32)
  >>> try:
  ...     scorejax.checked(jax.jit(dco.dco_loss))(jnp.asarray([0.5]), n=4.0)
  ... except scorejax.CheckError:
  ...     print("rejected: log p > 0")
  rejected: log p > 0
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
from jax.experimental import checkify

__all__ = ["CheckError", "checked"]

F = TypeVar("F", bound=Callable[..., Any])


class CheckError(ValueError):
    """A value check of a function run under `checked` failed (raised when called eagerly).

    Under an outer `jax.jit` the failure surfaces as `jax.errors.JaxRuntimeError` instead (XLA
    re-raises host errors as its own type); its message contains ``CheckError: <message>``.
    """


def _raise_on_failure(error: checkify.Error) -> None:
    """Raise `CheckError` with the first failed check's message; runs on the host."""
    message = error.get()
    if message is not None:
        raise CheckError(message)


def checked(fn: F, *, errors: frozenset = checkify.user_checks) -> F:
    """`fn` with its value checks on: raises when a check fails, eagerly and under `jit`.

    The wrapper runs `checkify.checkify(fn, errors=errors)`. When the returned error is concrete
    (the wrapper was called eagerly, e.g. `checked(jax.jit(fn))(x)`) it raises `CheckError`, a
    `ValueError`, at once. When it is traced (`jax.jit(checked(fn))`, or under `vmap` / `grad`)
    a `jax.debug.callback` raises it on the host when the program runs, which XLA reports as
    `jax.errors.JaxRuntimeError` naming the `CheckError`. Either way the check costs one
    device-to-host copy of the error state per call, so use it while developing or in tests;
    the unwrapped function has no host copy.

    Args:
      fn: any function built from scorejax functions (or calling `checkify.check` itself).
      errors: checkify error categories to enable; the default `checkify.user_checks` runs the
        library's value checks. Add e.g. `checkify.nan_checks` to also catch NaNs produced
        inside `fn`.

    Returns:
      A function with the signature and outputs of `fn`.
    """
    checkified = checkify.checkify(fn, errors=errors)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        error, out = checkified(*args, **kwargs)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(error)):
            jax.debug.callback(_raise_on_failure, error)
        else:
            _raise_on_failure(error)
        return out

    return wrapper  # type: ignore[return-value]
