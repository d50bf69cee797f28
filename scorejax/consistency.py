"""Consistency distillation (Song et al. 2023, "Consistency Models"), on EDM's path.

A consistency function maps any point of a PF-ODE trajectory to its origin, `f(x_t, t) = x_eps`.
It is parametrised so that the boundary condition `f(x, eps) = x` holds exactly (Song et al.
2023, eq. 5 and App. C, with EDM's input and noise scalings):

    f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(c_in(t) x, c_noise(t)),
    c_skip(t) = sigma_data^2 / ((t - eps)^2 + sigma_data^2),
    c_out(t)  = sigma_data (t - eps) / sqrt(sigma_data^2 + t^2),
    c_in(t)   = 1 / sqrt(t^2 + sigma_data^2),     c_noise(t) = ln(t) / 4,

with `eps = sigma_min`. Times live on EDM's path (`x_t = x_0 + t z`, `scorejax.paths.EDMPath`)
and are discretised as in EDM, `t_1 = eps < ... < t_N = T` (`ConsistencyConfig.time_steps`).

Consistency distillation (CD, Song et al. 2023, eq. 7 and Algorithm 2):

    L_CD = E_{n, x_0, z}[ lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}),
                                        f_{theta^-}(x_hat_{t_n}, t_n)) ],

with `n ~ U{1, ..., N - 1}`, `x_{t_{n+1}} = x_0 + t_{n+1} z`, `x_hat_{t_n}` one Heun step of the
teacher's PF-ODE `dx/dt = (x - D(x; t)) / t` from `t_{n+1}` to `t_n`
(`scorejax.edm_sampling.heun_step`), and `theta^-` an EMA of `theta` under stop-gradient
(`ema_update`). `d` is the squared L2 distance or iCT's pseudo-Huber
`sqrt(||a - b||^2 + c^2) - c` with `c = 0.00054 sqrt(dim)` (Song & Dhariwal 2023, Sec. 3.3);
`lambda` is 1 (`"uniform"`) or iCT's `1 / (t_{n+1} - t_n)` (`"ict"`).

The teacher is any EDM denoiser `D(params, x, sigma)`; a model of another path of the family
becomes one with `scorejax.edm.to_edm_denoiser`. The student is any `apply_fn(params, x_in,
c_noise)` with `x_in` `[B, ...]` and `c_noise` `[B]`; `network_from_denoiser` makes one of any
denoiser, so that the student can start from the teacher's weights (Song et al. 2023, Sec. 6),
and `one_step_generator` is the distilled model as a one-step generator `z -> x`.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> config = ConsistencyConfig()
  >>> net = lambda params, x, c_noise: jnp.ones_like(x)
  >>> x = jnp.full((2, 3), 0.75)
  >>> float(consistency_fn(net, None, x, jnp.full((2,), config.sigma_min), config=config)[0, 0])
  0.75
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scorejax._reduction import Reduction, reduce
from scorejax.edm_sampling import heun_step
from scorejax.sampling import SampleResult
from scorejax.sde import batch_broadcast

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array], Array]
DenoiserFn = Callable[[Any, Array, Array], Array]

METRICS = ("l2", "pseudo_huber")
CD_WEIGHTINGS = ("uniform", "ict")

__all__ = [
    "METRICS",
    "CD_WEIGHTINGS",
    "ConsistencyConfig",
    "consistency_fn",
    "network_from_denoiser",
    "one_step_generator",
    "distance",
    "CDAux",
    "cd_loss",
    "ema_update",
    "one_step_sample",
    "multistep_sample",
]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ConsistencyConfig:
    """Static settings of consistency distillation (defaults: Song et al. 2023, CIFAR-10 CD).

    Attributes:
      sigma_min: `eps`, the boundary time (0.002).
      sigma_max: `T`, the largest time (80).
      sigma_data: data std in the parametrisation (0.5).
      rho: exponent of the EDM discretisation (7).
      num_scales: `N`, the number of discretisation points (18).
      metric: `"l2"` (squared L2) or `"pseudo_huber"`.
      huber_c: pseudo-Huber `c`; `None` means `0.00054 sqrt(dim)` (iCT).
      weighting: `"uniform"` (`lambda = 1`) or `"ict"` (`lambda = 1 / (t_{n+1} - t_n)`).

    Examples:
      >>> ConsistencyConfig(num_scales=4).time_steps().shape
      (4,)
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    num_scales: int = 18
    metric: str = "l2"
    huber_c: float | None = None
    weighting: str = "uniform"

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")
        if not (isinstance(self.num_scales, int) and self.num_scales >= 2):
            raise ValueError(f"num_scales must be an int >= 2, got {self.num_scales!r}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {METRICS}")
        if self.weighting not in CD_WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; expected {CD_WEIGHTINGS}")

    def time_steps(self, dtype=jnp.float32) -> Array:
        """Increasing `t_i = (eps^(1/rho) + (i-1)/(N-1) (T^(1/rho) - eps^(1/rho)))^rho`; `[N]`.

        Song et al. 2023, Sec. 5 (EDM eq. 5 in increasing order, without the final 0).
        """
        frac = np.arange(self.num_scales, dtype=np.float64) / (self.num_scales - 1)
        lo, hi = self.sigma_min ** (1.0 / self.rho), self.sigma_max ** (1.0 / self.rho)
        return jnp.asarray((lo + frac * (hi - lo)) ** self.rho, dtype=dtype)

    def coefficients(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """`(c_skip, c_out, c_in, c_noise)` at times `t` (any shape; module docstring)."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, float))
        sd2 = self.sigma_data**2
        shifted = t - self.sigma_min
        c_skip = sd2 / (shifted**2 + sd2)
        c_out = self.sigma_data * shifted * jax.lax.rsqrt(sd2 + t**2)
        c_in = jax.lax.rsqrt(t**2 + sd2)
        return c_skip, c_out, c_in, jnp.log(t) / 4.0


def consistency_fn(
    apply_fn: ApplyFn, params: Any, x: Array, t: Array, *, config: ConsistencyConfig
) -> Array:
    """`f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(c_in(t) x, c_noise(t))`.

    Song et al. 2023, eq. 5. `x` `[B, ...]`, `t` scalar or `[B]`; returns `[B, ...]`; equals `x`
    at `t = sigma_min` whatever `F` is.

    Examples:
      >>> net = lambda params, x_in, c_noise: jnp.zeros_like(x_in)
      >>> config = ConsistencyConfig(sigma_data=0.5)
      >>> f = consistency_fn(net, None, jnp.ones((1, 1)), 0.502, config=config)
      >>> round(float(f[0, 0]), 6)  # c_skip(0.502) = 0.25 / (0.5^2 + 0.25)
      0.5
    """
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    c_skip, c_out, c_in, c_noise = config.coefficients(t)
    out = apply_fn(params, batch_broadcast(c_in, x) * x, c_noise)
    if out.shape != x.shape:
        raise ValueError(f"apply_fn returned shape {out.shape} for x of shape {x.shape}")
    return batch_broadcast(c_skip, x) * x + batch_broadcast(c_out, x) * out


def network_from_denoiser(denoiser_fn: DenoiserFn, *, config: ConsistencyConfig) -> ApplyFn:
    """The network `F` of `consistency_fn` read off a denoiser: the student starts as the teacher.

    `F(c_in(t) x, c_noise(t)) = (D(x; t) - c_skip^E(t) x) / c_out^E(t)`, with EDM's
    preconditioning (Karras et al. 2022, eq. 7 and Table 1) at `sigma_data = s_d`:
    `c_skip^E = s_d^2 / (t^2 + s_d^2)`, `c_out^E = t s_d / sqrt(t^2 + s_d^2)`. For an
    EDM-preconditioned denoiser this is its own network; for any other model of the family
    (`scorejax.edm.to_edm_denoiser`) it is the same quantity. With it,

        f(x, t) = [c_skip(t) - (1 - eps / t) c_skip^E(t)] x + (1 - eps / t) D(x; t),

    i.e. `D(x; t)` up to `O(eps / t)` above the boundary and `x` at `t = eps`, as when Song et
    al. 2023 initialise the consistency model with the teacher's weights. `t = exp(4 c_noise)`
    and `x = x_in / c_in(t)` are recovered from the inputs `consistency_fn` passes, `[B, ...]`
    and `[B]`; `denoiser_fn(params, x, sigma)` is called with `sigma` `[B]`. The returned
    `apply_fn(params, x_in, c_noise)` is differentiable in `params` like `denoiser_fn`.

    Examples:
      >>> config = ConsistencyConfig()
      >>> d = lambda params, x, sigma: jnp.zeros_like(x)  # the data is a point mass at 0
      >>> net = network_from_denoiser(d, config=config)
      >>> f = consistency_fn(net, None, jnp.ones((1, 1)), 80.0, config=config)
      >>> bool(jnp.abs(f).max() < 1e-4)
      True
    """
    sd = config.sigma_data

    def apply_fn(params: Any, x_in: Array, c_noise: Array) -> Array:
        t = jnp.exp(4.0 * c_noise)
        norm = jax.lax.rsqrt(t**2 + sd**2)
        x = x_in / batch_broadcast(norm, x_in)
        c_skip, c_out = sd**2 * norm**2, t * sd * norm
        denoised = denoiser_fn(params, x, t)
        return (denoised - batch_broadcast(c_skip, x) * x) / batch_broadcast(c_out, x)

    return apply_fn


def one_step_generator(
    apply_fn: ApplyFn, *, config: ConsistencyConfig
) -> Callable[[Any, Array], Array]:
    """The consistency model as a one-step generator: `G(params, z) = f_theta(T z, T)`.

    Song et al. 2023, Algorithm 1 with one step, for a given latent `z ~ N(0, I)` `[B, ...]`
    (`one_step_sample` draws it from a key); `T = config.sigma_max`. Returns `[B, ...]`.

    Examples:
      >>> net = lambda params, x_in, c_noise: jnp.zeros_like(x_in)
      >>> g = one_step_generator(net, config=ConsistencyConfig())
      >>> g(None, jnp.ones((2, 3))).shape
      (2, 3)
    """

    def generator_fn(params: Any, z: Array) -> Array:
        x = config.sigma_max * z
        t = jnp.asarray(config.sigma_max, z.dtype)
        return consistency_fn(apply_fn, params, x, t, config=config)

    return generator_fn


def distance(a: Array, b: Array, *, metric: str = "l2", huber_c: float | None = None) -> Array:
    """Per-example distance `[B]` between `a` and `b` `[B, ...]`.

    `"l2"`: `||a - b||^2`; `"pseudo_huber"`: `sqrt(||a - b||^2 + c^2) - c`, `c = huber_c` or
    `0.00054 sqrt(dim)` (Song & Dhariwal 2023, Sec. 3.3), whose gradient stays finite at 0.

    Examples:
      >>> float(distance(jnp.ones((1, 4)), jnp.zeros((1, 4)))[0])
      4.0
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    sq = jnp.sum((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    if metric == "l2":
        return sq
    c = 0.00054 * math.sqrt(math.prod(a.shape[1:])) if huber_c is None else huber_c
    return jnp.sqrt(sq + c**2) - c


class CDAux(NamedTuple):
    """What the consistency-distillation loss reports besides the loss: the adjacent times
    `t_cur` `[B]` (`t_n`) and `t_next` `[B]` (`t_{n+1}`) of its examples."""

    t_cur: Array
    t_next: Array


def cd_loss(
    apply_fn: ApplyFn,
    params: Any,
    x0: Array,
    key: Array,
    *,
    target_params: Any,
    teacher_fn: DenoiserFn,
    teacher_params: Any,
    config: ConsistencyConfig = ConsistencyConfig(),
    reduction: Reduction = "mean",
) -> tuple[Array, CDAux]:
    """Consistency-distillation loss (Song et al. 2023, eq. 7; Algorithm 2's loss).

    Per example: `n ~ U{0, ..., N - 2}` (0-based) on `config.time_steps()`, `z ~ N(0, I)`,
    `x_next = x0 + t_{n+1} z`, `x_hat = heun_step(x_next, t_{n+1} -> t_n)`, and

        loss_i = lambda(t_n) d(f_theta(x_next, t_{n+1}), sg[f_{theta^-}(x_hat, t_n)]).

    Only `params` receive gradients: the teacher step and the target network are stop-gradient.

    Args:
      apply_fn: the student's raw network `apply_fn(params, x_in, c_noise)`.
      params: online student parameters `theta`.
      x0: data `[B, ...]`.
      key: PRNG key (split into the time indices and the noise).
      target_params: EMA target parameters `theta^-` (same structure).
      teacher_fn: teacher EDM denoiser `D(teacher_params, x, sigma)`.
      teacher_params: the teacher's parameters.
      config: `ConsistencyConfig` (static).
      reduction: `"mean"`, `"sum"` over the batch, or `"none"`.

    Returns:
      `(loss, CDAux(t_cur [B], t_next [B]))`; `loss` is `[B]` for `reduction="none"`.

    Examples:
      >>> teacher = lambda params, x, sigma: jnp.zeros_like(x)  # data: a point mass at 0
      >>> net = lambda params, x_in, c_noise: jnp.zeros_like(x_in)
      >>> loss, aux = cd_loss(net, None, jnp.zeros((4, 2)), jax.random.key(0), target_params=None,
      ...                     teacher_fn=teacher, teacher_params=None,
      ...                     config=ConsistencyConfig(num_scales=10), reduction="none")
      >>> loss.shape, aux.t_cur.shape
      ((4,), (4,))
    """
    x0 = jnp.asarray(x0)
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, ...] with ndim >= 2, got {x0.shape}")
    k_n, k_z = jax.random.split(key)
    ts = config.time_steps(x0.dtype)
    n = jax.random.randint(k_n, (x0.shape[0],), 0, config.num_scales - 1)
    t_cur, t_next = ts[n], ts[n + 1]
    x_next = x0 + batch_broadcast(t_next, x0) * jax.random.normal(k_z, x0.shape, x0.dtype)
    x_hat = jax.lax.stop_gradient(
        heun_step(teacher_fn, teacher_params, x_next, t_next, t_cur)
    )
    target = jax.lax.stop_gradient(
        consistency_fn(apply_fn, target_params, x_hat, t_cur, config=config)
    )
    online = consistency_fn(apply_fn, params, x_next, t_next, config=config)
    per_example = distance(online, target, metric=config.metric, huber_c=config.huber_c)
    if config.weighting == "ict":
        per_example = per_example / (t_next - t_cur)
    return reduce(per_example, reduction), CDAux(t_cur=t_cur, t_next=t_next)


def ema_update(target_params: Any, params: Any, *, decay: float | Array) -> Any:
    """`theta^- <- decay theta^- + (1 - decay) theta`, leaf by leaf (Song et al. 2023, Alg. 2).

    Examples:
      >>> ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, decay=0.9)["w"]
      Array([0.1, 0.1], dtype=float32)
    """
    return jax.tree.map(lambda tp, p: decay * tp + (1.0 - decay) * p, target_params, params)


def one_step_sample(
    apply_fn: ApplyFn,
    params: Any,
    key: Array,
    *,
    shape: tuple[int, ...],
    config: ConsistencyConfig = ConsistencyConfig(),
    dtype=jnp.float32,
) -> SampleResult:
    """One-step generation `x = f_theta(T z, T)`, `z ~ N(0, I)` (Song et al. 2023, Alg. 1).

    Returns `SampleResult(samples [B, ...], nfe = 1)`.

    Examples:
      >>> net = lambda params, x_in, c_noise: jnp.zeros_like(x_in)
      >>> x, nfe = one_step_sample(net, None, jax.random.key(0), shape=(3, 2))
      >>> x.shape, nfe
      ((3, 2), 1)
    """
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, ...) with at least one data dim, got {shape}")
    z = jax.random.normal(key, shape, dtype)
    return SampleResult(one_step_generator(apply_fn, config=config)(params, z), 1)


def multistep_sample(
    apply_fn: ApplyFn,
    params: Any,
    key: Array,
    *,
    shape: tuple[int, ...],
    times: tuple[float, ...],
    config: ConsistencyConfig = ConsistencyConfig(),
    dtype=jnp.float32,
) -> SampleResult:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1).

    `x = f(T z, T)`; then for each `tau` of `times` (decreasing, in `(sigma_min, T)`):
    `x_tau = x + sqrt(tau^2 - eps^2) z'` and `x = f(x_tau, tau)`. Returns
    `SampleResult(samples, nfe = 1 + len(times))`.

    Examples:
      >>> net = lambda params, x_in, c_noise: jnp.zeros_like(x_in)
      >>> x, nfe = multistep_sample(net, None, jax.random.key(0), shape=(3, 2), times=(2.0, 0.5))
      >>> x.shape, nfe
      ((3, 2), 3)
    """
    k0, k_steps = jax.random.split(key)
    x, _ = one_step_sample(apply_fn, params, k0, shape=shape, config=config, dtype=dtype)
    if not times:
        return SampleResult(x, 1)
    taus = jnp.asarray(times, dtype)

    def step(x, inputs):
        tau, i = inputs
        z = jax.random.normal(jax.random.fold_in(k_steps, i), x.shape, dtype)
        x_tau = x + jnp.sqrt(tau**2 - config.sigma_min**2) * z
        return consistency_fn(apply_fn, params, x_tau, tau, config=config), None

    x, _ = jax.lax.scan(step, x, (taus, jnp.arange(len(times))))
    return SampleResult(x, 1 + len(times))
