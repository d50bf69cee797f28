"""One-step generator distillation: score distillation, pure maths.

A one-step generator `x0 = G_eta(z)` is distilled from a score model (the *target*) by matching
the diffused marginals of its samples to the target's (Diff-Instruct, Luo et al. 2023; VSD, Wang
et al. 2023; DMD, Yin et al. 2024). With `x_t = alpha_t x0 + sigma_t eps` and an auxiliary *fake*
score `s_phi ~ grad log q_{eta,t}` fitted to the generator's own samples, the generator gradient is
(DisBack, Zhang et al. 2024, eq. 8)

    grad_eta L = E_{t, z, eps}[ w(t) (s_phi(x_t, t) - s_target(x_t, t))^T d x_t / d eta ],

implemented, as in every public code base, through the stop-gradient surrogate

    L_G = 1/2 mean_pixels (x0 - sg(x0 - g))^2,      d L_G / d x0 = g / D,

with a per-example, per-pixel `g` built from the score difference (`score_distillation_grad`) and
`D` the number of pixels (the per-pixel mean of DMD / DMD2, so a gradient clip means the same at
every resolution).

DisBack (Zhang et al. 2024) adds two stages around it, the degradation path and the
backtracking schedule (`scorejax.backtracking`); its path is spaced in `score_distance`, the
score gap on diffused samples, which also measures how far a score model is from another.

Conventions: a score model is any `score_fn(params, x, t) -> score` with `x: [B, ...]`, `t: [B]`;
a generator is any `generator_fn(params, z) -> x0` with `z: [B, ...]`. Functions follow the library
contract: model functions, then params, data and key, then keyword-only configuration (the SDE,
the generator weighting of `DISTILL_WEIGHTINGS`, the time distribution); losses take
`reduction="mean" | "sum" | "none"` and return `(loss, aux)` with a NamedTuple aux. Nothing here
touches files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scorejax._reduction import Reduction, reduce
from scorejax.score_matching import DSMAux, dsm_loss
from scorejax.sde import SDE, batch_broadcast
from scorejax.weighting import DISTILL_WEIGHTINGS

Array = jax.Array
Params = Any
ScoreFn = Callable[[Params, Array, Array], Array]
GeneratorFn = Callable[[Params, Array], Array]

__all__ = [
    "DISTILL_WEIGHTINGS",
    "DistillAux",
    "TimeDistribution",
    "score_distillation_grad",
    "surrogate_loss",
    "generator_loss",
    "fake_score_loss",
    "score_distance",
]

_TIME_KINDS = ("uniform", "log_nsr_normal")


def _sum_non_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _mean_non_batch(v: Array) -> Array:
    return jnp.mean(v, axis=tuple(range(1, v.ndim)))


# ----------------------------------------------------------------------------------------------
# Time distribution of the distillation loss.


@dataclasses.dataclass(frozen=True)
class TimeDistribution:
    """Distribution of the diffusion time `t` at which the generator's samples are compared.

    Kinds:
      * `"uniform"`: `t ~ U[t_min, t_max]` (DMD / DMD2 use `[0.02, 0.98] T`).
      * `"log_nsr_normal"`: `log(sigma_t / alpha_t) ~ N(log_nsr_mean, log_nsr_std^2)`, the EDM
        log-normal noise distribution of Diff-Instruct (`P_mean = -1.2`, `P_std = 1.2`), mapped to
        `t` through the SDE's inverse log-SNR `sde.t_from_log_snr` (closed form for the library's
        processes, bisection for others) and clipped to `[t_min, t_max]`.

    Frozen and hashable: pass it to jitted functions as a static argument.

    Examples:
      >>> import jax
      >>> from scorejax.score_sdes import VPSDE
      >>> t = TimeDistribution("uniform", t_min=0.2, t_max=0.4).sample(jax.random.key(0), 5,
      ...                                                              sde=VPSDE())
      >>> t.shape, bool(((t >= 0.2) & (t <= 0.4)).all())
      ((5,), True)
    """

    kind: str = "uniform"
    t_min: float = 0.02
    t_max: float = 0.98
    log_nsr_mean: float = -1.2
    log_nsr_std: float = 1.2

    def __post_init__(self):
        if self.kind not in _TIME_KINDS:
            raise ValueError(
                f"unknown time distribution {self.kind!r}; expected one of {_TIME_KINDS}"
            )
        if not 0.0 < self.t_min < self.t_max:
            raise ValueError(f"need 0 < t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if not self.log_nsr_std > 0:
            raise ValueError(f"log_nsr_std must be positive, got {self.log_nsr_std}")

    def sample(self, key: Array, n: int, *, sde: SDE) -> Array:
        """Draw `n` times, shape `[n]`, in `[t_min, t_max]` (units of the SDE's time)."""
        if self.t_max > sde.T:
            raise ValueError(f"t_max={self.t_max} exceeds the SDE's horizon T={sde.T}")
        if self.kind == "uniform":
            return jax.random.uniform(key, (n,), minval=self.t_min, maxval=self.t_max)
        log_nsr = self.log_nsr_mean + self.log_nsr_std * jax.random.normal(key, (n,))
        # log(sigma / alpha) = -lambda / 2: the SDE's own inverse log-SNR (closed form for VP,
        # sub-VP, VE, EDM and the linear path), clipped to the range.
        return jnp.clip(sde.t_from_log_snr(-2.0 * log_nsr), self.t_min, self.t_max)


# ----------------------------------------------------------------------------------------------
# The score-distillation gradient and the generator / fake-score losses.


class DistillAux(NamedTuple):
    """What score distillation reports besides `g` or the loss (all stop-gradiented).

    `t` `[B]` the diffusion times, `x_t` the noised samples (shaped like `x0`) and `score_gap`
    `[B]`, `sigma_t^2 ||s_fake - s_target||^2` summed over pixels.
    """

    t: Array
    x_t: Array
    score_gap: Array


def score_distillation_grad(
    target_score: Callable[[Array, Array], Array],
    fake_score: Callable[[Array, Array], Array],
    x0: Array,
    key: Array,
    *,
    sde: SDE,
    weighting: str = "diff_instruct",
    time_dist: TimeDistribution = TimeDistribution(),
) -> tuple[Array, DistillAux]:
    """The per-pixel generator gradient `g` of score distillation (DisBack eq. 8), stop-gradiented.

    Draws `t ~ time_dist`, `eps ~ N(0, I)`, forms `x_t = alpha_t x0 + sigma_t eps` and, with
    `delta = s_fake(x_t, t) - s_target(x_t, t)` and the target's denoiser
    `D_target = (x_t + sigma_t^2 s_target) / alpha_t`:

      * `"diff_instruct"` (Diff-Instruct's EDM code, `training/di_loss.py`): weight 1 in
        denoiser space, `g = D_fake - D_target = (sigma_t^2 / alpha_t) delta`.
      * `"vsd"` (ProlificDreamer, Wang et al. 2023, eq. 9 with `omega(t) = sigma_t^2`, i.e.
        `1 - alpha_bar_t`): `g = sigma_t^2 (eps_fake - eps_target)` in eps space with
        `eps = -sigma_t s`, i.e. `g = sigma_t^3 delta` in score space (no `alpha_t` factor).
      * `"dmd"` (DMD / DMD2, Yin et al. 2024): `g = (D_fake - D_target) / mean_pixels
        |x0 - D_target|` per example, the normaliser floored at 1e-12 so a perfect target
        denoiser cannot divide by zero.

    Args:
      target_score, fake_score: `(x, t) -> score` closures (parameters already bound).
      x0: generator samples `[B, ...]`; no gradient flows through `g` to them.
      key: PRNG key for `t` and `eps`.
      sde: the forward SDE shared by teacher and fake score.
      weighting: one of `DISTILL_WEIGHTINGS`.
      time_dist: distribution of `t`.

    Returns:
      `(g, DistillAux(t, x_t, score_gap))` with `g` shaped like `x0`; `score_gap` is zero when
      the generator's diffused distribution matches the target's, as far as the fake score can
      tell.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> x0 = jnp.zeros((3, 2))
      >>> g, aux = score_distillation_grad(lambda x, t: -x, lambda x, t: -x + 1.0, x0,
      ...                                  jax.random.key(0), sde=VPSDE(), weighting="vsd")
      >>> g.shape, aux.score_gap.shape, bool((g > 0).all())
      ((3, 2), (3,), True)
    """
    if weighting not in DISTILL_WEIGHTINGS:
        raise ValueError(
            f"unknown weighting {weighting!r}; expected one of {DISTILL_WEIGHTINGS}"
        )
    x0 = jax.lax.stop_gradient(x0)
    key_t, key_eps = jax.random.split(key)
    t = time_dist.sample(key_t, x0.shape[0], sde=sde)
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    alpha = batch_broadcast(sde.alpha(t), x0)
    sigma = batch_broadcast(sde.sigma(t), x0)
    x_t = alpha * x0 + sigma * eps
    s_target = target_score(x_t, t)
    s_fake = fake_score(x_t, t)
    if s_target.shape != x0.shape or s_fake.shape != x0.shape:
        raise ValueError(
            f"score shapes {s_target.shape} (target) and {s_fake.shape} (fake) must equal the "
            f"sample shape {x0.shape}"
        )
    delta = s_fake - s_target
    if weighting == "diff_instruct":
        g = sigma**2 / alpha * delta
    elif weighting == "vsd":
        g = sigma**3 * delta
    else:
        d_target = (x_t + sigma**2 * s_target) / alpha
        norm = _mean_non_batch(jnp.abs(x0 - d_target))
        g = sigma**2 / alpha * delta / batch_broadcast(jnp.maximum(norm, 1e-12), x0)
    aux = DistillAux(t=t, x_t=x_t, score_gap=_sum_non_batch(sigma**2 * delta**2))
    return jax.lax.stop_gradient(g), jax.lax.stop_gradient(aux)


def surrogate_loss(x0: Array, g: Array) -> Array:
    """Per-example surrogate `1/2 mean_pixels (x0 - sg(x0 - g))^2`, `[B]`.

    Its gradient in `x0` is `g / D`, `D` the number of pixels per example: the per-pixel mean of
    DMD / DMD2 (`0.5 * F.mse_loss(x0, sg(x0 - g))`), so learning rates and gradient clipping mean
    the same for 2-D toys and images.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(surrogate_loss(jnp.zeros((2, 4)), jnp.full((2, 4), 2.0)))  # 1/2 mean(g^2)
      [2. 2.]
    """
    if x0.shape != g.shape:
        raise ValueError(f"x0 {x0.shape} and g {g.shape} must have the same shape")
    return 0.5 * _mean_non_batch((x0 - jax.lax.stop_gradient(x0 - g)) ** 2)


def generator_loss(
    generator_fn: GeneratorFn,
    generator_params: Params,
    z: Array,
    key: Array,
    *,
    sde: SDE,
    target_score_fn: ScoreFn,
    target_params: Params,
    fake_score_fn: ScoreFn,
    fake_params: Params,
    weighting: str = "diff_instruct",
    time_dist: TimeDistribution = TimeDistribution(),
    reduction: Reduction = "mean",
) -> tuple[Array, DistillAux]:
    """Score-distillation loss of a one-step generator (DisBack eq. 8 through the surrogate).

    `x0 = generator_fn(generator_params, z)`; the loss is `surrogate_loss(x0, g)` with `g` from
    `score_distillation_grad`, so `grad_params loss = E[g^T d x0 / d params] / D` (`D` pixels per
    example) and no gradient reaches the target or fake parameters. `reduction="mean"` averages
    over the batch (gradient `g / (B D)` per example), `"sum"` sums (gradient `g / D`), `"none"`
    returns the `[B]` per-example values.

    Returns `(loss, DistillAux(t, x_t, score_gap))` (see `score_distillation_grad`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> generator = lambda p, z: p * z
      >>> score = lambda p, x, t: -x  # target and fake agree: g = 0, the loss is 0
      >>> loss, aux = generator_loss(generator, 2.0, jnp.ones((4, 2)), jax.random.key(0),
      ...                            sde=VPSDE(), target_score_fn=score, target_params=None,
      ...                            fake_score_fn=score, fake_params=None, reduction="none")
      >>> print(loss)
      [0. 0. 0. 0.]
      >>> aux.t.shape
      (4,)
    """
    x0 = generator_fn(generator_params, z)
    g, aux = score_distillation_grad(
        lambda x, t: target_score_fn(target_params, x, t),
        lambda x, t: fake_score_fn(fake_params, x, t),
        x0,
        key,
        sde=sde,
        weighting=weighting,
        time_dist=time_dist,
    )
    return reduce(surrogate_loss(x0, g), reduction), aux


def fake_score_loss(
    fake_score_fn: ScoreFn,
    fake_params: Params,
    x0: Array,
    key: Array,
    *,
    sde: SDE,
    weighting: str = "sigma2",
    t_min: float = 1e-5,
    reduction: Reduction = "mean",
) -> tuple[Array, DSMAux]:
    """DSM loss of the fake score on stop-gradient generator samples `x0` `[B, ...]`.

    Exactly `scorejax.score_matching.dsm_loss` on `sg(x0)`: the fake score tracks
    `grad log q_{eta,t}` without pushing the generator. Stage 1 of DisBack uses the same loss (the
    teacher's own DSM objective) on samples of the frozen initial generator.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> fake = lambda p, x, t: p * x
      >>> x0 = jnp.ones((4, 2))
      >>> grad = jax.grad(lambda x: fake_score_loss(fake, -1.0, x, jax.random.key(0),
      ...                                           sde=VPSDE())[0])(x0)
      >>> float(jnp.abs(grad).max())  # no gradient reaches the generator's samples
      0.0
    """
    return dsm_loss(
        fake_score_fn,
        fake_params,
        jax.lax.stop_gradient(x0),
        key,
        sde=sde,
        weighting=weighting,
        t_min=t_min,
        reduction=reduction,
    )


# ----------------------------------------------------------------------------------------------
# The score distance between two score models on diffused samples.


def score_distance(
    score_a: Callable[[Array, Array], Array],
    score_b: Callable[[Array, Array], Array],
    x0: Array,
    key: Array,
    *,
    sde: SDE,
    time_dist: TimeDistribution = TimeDistribution(),
) -> Array:
    """`E_{t, eps} sigma_t^2 ||s_a(x_t, t) - s_b(x_t, t)||^2` over the diffused samples `x0`.

    `x_t = alpha_t x0 + sigma_t eps`, `t ~ time_dist`, `eps ~ N(0, I)`; the squared norm is summed
    over the pixels and averaged over the batch `x0` `[B, ...]`. It is the excess sigma2-weighted
    DSM loss of `s_a` over `s_b` on those samples (zero iff the scores agree there), in units of
    squared data. DisBack's path is spaced in this distance between each node and the teacher on
    the initial generator's samples; with `s_b` an exact score it is the score mismatch of `s_a`.

    Args:
      score_a, score_b: `(x, t) -> score` closures.
      x0: samples `[B, ...]` (gradients are stopped).
      key: PRNG key for `t` and `eps`; a fixed key gives a deterministic estimate, so distances
        between several models are compared on the same noise.
      sde: the forward SDE.
      time_dist: distribution of `t`.

    Returns:
      a float32 scalar.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.score_sdes import VPSDE
      >>> x0 = jnp.zeros((8, 2))
      >>> d = score_distance(lambda x, t: -x, lambda x, t: -x, x0, jax.random.key(0), sde=VPSDE())
      >>> float(d)
      0.0
    """
    x0 = jax.lax.stop_gradient(x0)
    k_t, k_eps = jax.random.split(key)
    t = time_dist.sample(k_t, x0.shape[0], sde=sde)
    sigma = batch_broadcast(sde.sigma(t), x0)
    x_t = batch_broadcast(sde.alpha(t), x0) * x0 + sigma * jax.random.normal(
        k_eps, x0.shape, x0.dtype
    )
    diff = score_a(x_t, t) - score_b(x_t, t)
    return jnp.mean(_sum_non_batch(sigma**2 * diff**2))
