"""Two-dimensional toy distributions, sampled in-graph with `jax.random`.

Every sampler is `sample(key, n) -> [n, 2]` (float32) and works under `jit` with a static `n`.
The Gaussian-mixture toys also expose their exact density through `scorejax.analytic`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from scorejax import analytic

Array = jax.Array

__all__ = [
    "ToyDistribution",
    "get_toy",
    "TOY_NAMES",
    "ring8",
    "grid25",
    "checkerboard",
    "two_moons",
    "swiss_roll",
]


def ring8(key: Array, n: int) -> Array:
    """`n` samples of `analytic.ring8()` (8 Gaussians, radius 2, std 0.1); `[n, 2]`.

    Examples:
      >>> import jax, numpy as np
      >>> x = np.asarray(ring8(jax.random.key(0), 1000))
      >>> x.shape, round(float(np.linalg.norm(x, axis=1).mean()), 1)  # on the circle of radius 2
      ((1000, 2), 2.0)
    """
    return analytic.ring8().sample(key, n).astype(jnp.float32)


def grid25(key: Array, n: int) -> Array:
    """`n` samples of `analytic.grid25()` (5x5 grid, spacing 1, std 0.1); `[n, 2]`.

    Examples:
      >>> import jax, numpy as np
      >>> x = np.asarray(grid25(jax.random.key(0), 1000))
      >>> np.unique(np.round(x).astype(int)).tolist()  # the grid's coordinates
      [-2, -1, 0, 1, 2]
    """
    return analytic.grid25().sample(key, n).astype(jnp.float32)


def checkerboard(key: Array, n: int) -> Array:
    """Uniform on the 8 dark squares of a 4x4 board of 2x2 squares covering `[-4, 4]^2`; `[n, 2]`.

    Square `(i, j)`, `i, j in {0..3}`, is dark when `i + j` is even.

    Examples:
      >>> import jax, numpy as np
      >>> x = np.asarray(checkerboard(jax.random.key(0), 1000))
      >>> square = np.floor((x + 4.0) / 2.0).astype(int)  # (i, j) of each point
      >>> bool(np.all(square.sum(axis=1) % 2 == 0)), bool(np.all(np.abs(x) <= 4.0))
      (True, True)
    """
    k_cell, k_pos = jax.random.split(key)
    cell = jax.random.randint(k_cell, (n,), 0, 8)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2
    corner = jnp.stack([col, row], axis=-1).astype(jnp.float32) * 2.0 - 4.0
    return corner + 2.0 * jax.random.uniform(k_pos, (n, 2), jnp.float32)


def two_moons(key: Array, n: int, noise: float = 0.1) -> Array:
    """Two interleaved half circles (sklearn's `make_moons` geometry), scaled by 2 and centred.

    Half the points (in expectation) on each moon, Gaussian noise of std `noise`; `[n, 2]`.

    Examples:
      >>> import jax, numpy as np
      >>> x = np.asarray(two_moons(jax.random.key(0), 1000))
      >>> x.shape, bool(np.allclose(x.mean(axis=0), 0.0, atol=0.1))  # centred
      ((1000, 2), True)
    """
    k_side, k_ang, k_noise = jax.random.split(key, 3)
    angle = math.pi * jax.random.uniform(k_ang, (n,), jnp.float32)
    upper = jax.random.bernoulli(k_side, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(angle), 1.0 - jnp.cos(angle))
    y = jnp.where(upper, jnp.sin(angle), 0.5 - jnp.sin(angle))
    pts = 2.0 * (jnp.stack([x, y], axis=-1) - jnp.array([0.5, 0.25], jnp.float32))
    return pts + noise * jax.random.normal(k_noise, (n, 2), jnp.float32)


def swiss_roll(key: Array, n: int, noise: float = 0.1) -> Array:
    """2-D swiss roll `(u cos u, u sin u) / 5`, `u ~ U(1.5 pi, 4.5 pi)`, plus noise; `[n, 2]`.

    Examples:
      >>> import jax, numpy as np
      >>> radius = np.linalg.norm(swiss_roll(jax.random.key(0), 1000, noise=0.0), axis=1)
      >>> bool(np.all((radius > 0.3 * np.pi - 1e-5) & (radius < 0.9 * np.pi + 1e-5)))  # u / 5
      True
    """
    k_u, k_noise = jax.random.split(key)
    u = 1.5 * math.pi * (1.0 + 2.0 * jax.random.uniform(k_u, (n,), jnp.float32))
    pts = jnp.stack([u * jnp.cos(u), u * jnp.sin(u)], axis=-1) / 5.0
    return pts + noise * jax.random.normal(k_noise, (n, 2), jnp.float32)


@dataclasses.dataclass(frozen=True)
class ToyDistribution:
    """A named toy: `sample(key, n) -> [n, 2]`, and the exact mixture where there is one.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> toy = ToyDistribution("origin", lambda key, n: jnp.zeros((n, 2)))
      >>> toy.sample(jax.random.key(0), 3).shape, toy.dim, toy.mixture is None
      ((3, 2), 2, True)
    """

    name: str
    sample: Callable[[Array, int], Array]
    mixture: analytic.GaussianMixture | None = None

    @property
    def dim(self) -> int:
        """Data dimension (2)."""
        return 2


_SAMPLERS: dict[str, tuple[Callable[[Array, int], Array], Callable[[], object] | None]] = {
    "ring8": (ring8, analytic.ring8),
    "grid25": (grid25, analytic.grid25),
    "checkerboard": (checkerboard, None),
    "two_moons": (two_moons, None),
    "swiss_roll": (swiss_roll, None),
}

TOY_NAMES = tuple(_SAMPLERS)


def get_toy(name: str) -> ToyDistribution:
    """Look up a toy by name (one of `TOY_NAMES`); raises `ValueError` listing them otherwise.

    Examples:
      >>> import jax
      >>> toy = get_toy("ring8")
      >>> toy.sample(jax.random.key(0), 1000).shape, toy.mixture is not None  # exact density
      ((1000, 2), True)
      >>> get_toy("two_moons").mixture is None
      True
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown toy distribution {name!r}; known: {', '.join(TOY_NAMES)}")
    sample, make_mixture = _SAMPLERS[name]
    return ToyDistribution(name, sample, make_mixture() if make_mixture else None)
