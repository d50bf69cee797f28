"""Optimisers as hashable values: equal settings give equal objects and reuse compiled programs.

An `optax.GradientTransformation` is a tuple of closures, hashed by identity: a jitted function
that takes one as a static argument recompiles every time an equal optimiser is built again. The
specs here are frozen dataclasses, equal (and hashed) by their fields; `build()` gives the optax
transformation inside the traced function.
"""

from __future__ import annotations

import dataclasses

import optax

__all__ = ["Adam"]


@dataclasses.dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015) after an optional global-norm gradient clip.

    `u = clip(g, grad_clip)`; `m <- b1 m + (1 - b1) u`; `v <- b2 v + (1 - b2) u^2`;
    `params <- params - learning_rate m_hat / (sqrt(v_hat) + eps)`.

    Attributes:
      learning_rate: a constant step size.
      b1, b2, eps: Adam's moment decays and denominator floor.
      grad_clip: the largest global gradient norm, or `None` for no clipping.

    Examples:
      >>> import jax.numpy as jnp
      >>> Adam(1e-3, b1=0.0) == Adam(1e-3, b1=0.0)  # equal specs: one compiled step
      True
      >>> tx = Adam(0.1, grad_clip=1.0).build()
      >>> params = jnp.zeros(2)
      >>> updates, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(params), params)
      >>> print(updates)  # first step: -learning_rate * sign(g), whatever the clip
      [-0.1  0.1]
    """

    learning_rate: float
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = None

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")

    def build(self) -> optax.GradientTransformation:
        """The optax transformation these settings describe.

        Examples:
          >>> import jax.numpy as jnp
          >>> Adam(1e-3).build().init(jnp.zeros(3))[0].mu.shape
          (3,)
        """
        adam = optax.adam(self.learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)
        if self.grad_clip is None:
            return adam
        return optax.chain(optax.clip_by_global_norm(self.grad_clip), adam)
