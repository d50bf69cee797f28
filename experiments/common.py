"""Config checks that several studies share: step counts and batch sizes the runtime accepts."""

from __future__ import annotations

from collections.abc import Mapping

import jax


def check_multiples(values: Mapping[str, int], unit_name: str, unit: int) -> None:
    """Raise ValueError unless every `values[name]` is a positive multiple of `unit`.

    `values` maps config field names (`"train.num_steps"`) to their values; `unit_name` is the
    field that holds `unit` (for example the number of steps one jitted call runs).
    """
    for name, value in values.items():
        if value < 1 or value % unit:
            raise ValueError(
                f"config.{name}={value} must be a positive multiple of config.{unit_name}={unit}"
            )


def check_batch_divides(name: str, batch_size: int) -> None:
    """Raise ValueError unless the batch in config field `name` splits evenly over the devices."""
    if batch_size % jax.device_count():
        raise ValueError(
            f"config.{name}={batch_size} is not divisible by the {jax.device_count()} devices"
        )
