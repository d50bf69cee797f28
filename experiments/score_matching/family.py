"""The Gaussian-path family of the score-matching study: path, model forms, loss.

`make_sde` builds the path of `config.sde`; `make_model` turns a network into a `Model`, the three
forms the losses and samplers need (score on the path, EDM denoiser, linear-path velocity), and
`exact_model` gives the same forms for the Gaussian-mixture oracle; `make_loss` is the training
loss of `config.loss`; `check_family_config` checks these fields (and the sampler's name), which
the toy and the image study share. `field` reads a field that configs saved by older runs may lack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from scorejax import edm, flow_matching
from scorejax.analytic import GaussianMixture
from scorejax.parametrisation import PARAMETRISATIONS, convert, wrap
from scorejax.paths import PATHS, EDMPath, LinearPath
from scorejax.score_matching import PARAMETRIZATIONS, dsm_loss, make_score_fn
from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE
from scorejax.sde import SDE
from scorejax.train.precision import precision_from_config

ModelFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

LOSSES = ("dsm", "edm", "fm")
PRECONDITIONINGS = ("none", *edm.PRECONDITIONINGS)
# Fields added with the EDM / flow-matching variants, and the values that reproduce the studies
# from before them: configs saved by older runs (read back by the distillation study) lack them.
FIELD_DEFAULTS = {
    "sde.T": 1.0,
    "model.preconditioning": "none",
    "model.sigma_data": 0.5,
    "loss.name": "dsm",
}
EDM_PATH = EDMPath()


@dataclasses.dataclass(frozen=True)
class Model:
    """One model of the posterior mean `E[x_0 | x_t]` in the three forms losses and samplers use.

    - `score_fn(params, x_t, t)`: the score `grad log p_t` on the study's path (DSM loss, PC / EM
      / PF-ODE samplers, likelihood, score error);
    - `denoiser_fn(params, x, sigma)`: EDM's `D(x; sigma)` in EDM coordinates `x = x_t / alpha_t`,
      `sigma = sigma_t / alpha_t` (EDM loss, EDM samplers);
    - `velocity_fn(params, x, t)`: the velocity of the linear path (FM loss, FM samplers).

    Every function maps `x` `[B, ...]` and a `[B]` time or noise level to `[B, ...]`.
    """

    score_fn: ModelFn
    denoiser_fn: ModelFn
    velocity_fn: ModelFn


def field(config: ml_collections.ConfigDict, name: str) -> Any:
    """`config.<name>` for a `FIELD_DEFAULTS` field, or its default when a saved config lacks it."""
    group, leaf = name.split(".")
    return config[group].get(leaf, FIELD_DEFAULTS[name])


def make_sde(config: ml_collections.ConfigDict) -> SDE:
    """The forward path of `config.sde`: `vp`, `subvp`, `ve`, `edm` or `linear` (`scorejax.paths`).

    `vp`/`subvp` take `beta_min`, `beta_max`; `ve` takes `sigma_min`, `sigma_max`; `edm` runs
    to `T = sigma_max` (its time is the noise level); `linear` runs to `T` (below 1 for the
    score-based samplers and the likelihood, whose drift is singular at `t = 1`). `vp`, `subvp`
    and `ve` also take `T` (1 by default).
    """
    c = config.sde
    horizon = field(config, "sde.T")
    if c.name == "vp":
        return VPSDE(beta_min=c.beta_min, beta_max=c.beta_max, T=horizon)
    if c.name == "subvp":
        return SubVPSDE(beta_min=c.beta_min, beta_max=c.beta_max, T=horizon)
    if c.name == "ve":
        return VESDE(sigma_min=c.sigma_min, sigma_max=c.sigma_max, T=horizon)
    if c.name == "edm":
        return EDMPath(T=c.sigma_max)
    if c.name == "linear":
        return LinearPath(T=horizon)
    raise ValueError(f"unknown config.sde.name {c.name!r}; known: {tuple(PATHS)}")


def make_model(apply: ModelFn, path: SDE, config: ml_collections.ConfigDict) -> Model:
    """The `Model` of a network `apply(params, x, t)` on `path`, as `config.model` describes it.

    With `model.preconditioning = "none"` the network predicts `model.parametrization` on `path`
    (`score`, `eps`, `x0` through `scorejax.score_matching.make_score_fn`, the others through
    `scorejax.parametrisation.wrap`), and `scorejax.edm.to_edm_denoiser` gives its denoiser.
    Otherwise the network is EDM's `F` and `scorejax.edm.precondition` (sigma_data
    `model.sigma_data`) its denoiser, which `scorejax.edm.from_edm_denoiser` puts on `path`. The
    velocity is converted directly on a linear path and by
    `scorejax.flow_matching.velocity_from_denoiser` elsewhere.
    """
    c = config.model
    preconditioning = field(config, "model.preconditioning")
    if preconditioning == "none":
        kind, fn = c.parametrization, apply
        if kind in PARAMETRIZATIONS:  # the 2021 kinds keep their exact arithmetic
            score_fn = make_score_fn(apply, sde=path, parametrization=kind)
        else:
            score_fn = wrap(apply, path=path, source=kind, target="score")
        denoiser_fn = edm.to_edm_denoiser(apply, path=path, source=kind)
    else:
        pre = edm.Preconditioning(preconditioning, sigma_data=field(config, "model.sigma_data"))
        denoiser_fn = edm.precondition(apply, preconditioning=pre)
        kind, fn = "x0", edm.from_edm_denoiser(denoiser_fn, path=path, target="x0")
        score_fn = edm.from_edm_denoiser(denoiser_fn, path=path, target="score")
    if isinstance(path, LinearPath):
        velocity_fn = wrap(fn, path=path, source=kind, target="velocity")
    else:
        sigma_max = config.sampler.get("sigma_max", 80.0)
        velocity_fn = flow_matching.velocity_from_denoiser(denoiser_fn, sigma_max=sigma_max)
    return Model(score_fn, denoiser_fn, velocity_fn)


def exact_model(mixture: GaussianMixture, path: SDE) -> Model:
    """The `Model` of the Gaussian-mixture oracle: exact score, denoiser and velocity.

    The score is `mixture.marginal_score` on `path`; the denoiser is the posterior mean on the
    EDM path; the velocity is `convert(x0 -> velocity)` of the posterior mean on the linear path,
    finite at `t = 1` (where `x0_hat` is the mixture mean).
    """
    linear = flow_matching.LINEAR_PATH

    def velocity_fn(_: Any, x: jax.Array, t: jax.Array) -> jax.Array:
        x0 = mixture.denoiser(x, t, sde=linear)
        return convert(x, t, x0, path=linear, source="x0", target="velocity")

    return Model(
        score_fn=lambda _, x, t: mixture.marginal_score(x, t, sde=path),
        denoiser_fn=lambda _, x, sigma: mixture.denoiser(x, sigma, sde=EDM_PATH),
        velocity_fn=velocity_fn,
    )


def make_loss(config: ml_collections.ConfigDict, path: SDE, model: Model):
    """`loss_fn(params, x0, key) -> (loss, aux)` of `config.loss.name` for `model` on `path`.

    `dsm`: `dsm_loss` of the score (`loss.weighting`, `loss.t_min`); `edm`: `edm_loss` of the
    denoiser (`model.sigma_data`, `loss.p_mean`, `loss.p_std`); `fm`: `fm_loss` of the velocity
    (`loss.time_dist`, `loss.logit_mean`, `loss.logit_std`).
    """
    c, name = config.loss, field(config, "loss.name")
    if name == "dsm":
        kw = {"sde": path, "weighting": c.weighting, "t_min": c.t_min}
        return functools.partial(dsm_loss, model.score_fn, **kw)
    if name == "edm":
        kw = {"sigma_data": field(config, "model.sigma_data"), "p_mean": c.p_mean, "p_std": c.p_std}
        return functools.partial(edm.edm_loss, model.denoiser_fn, **kw)
    if name == "fm":
        kw = {"time_dist": c.time_dist, "logit_mean": c.logit_mean, "logit_std": c.logit_std}
        return functools.partial(flow_matching.fm_loss, model.velocity_fn, **kw)
    raise ValueError(f"unknown config.loss.name {name!r}; known: {LOSSES}")


def check_family_config(config: ml_collections.ConfigDict, samplers: tuple[str, ...]) -> None:
    """Check the dtype policy, path, model form, loss and sampler fields (ValueError on a bad
    value or combination)."""
    precision_from_config(config)
    sde, model = config.sde.name, config.model
    if sde not in PATHS:
        raise ValueError(f"unknown config.sde.name {sde!r}; known: {tuple(PATHS)}")
    if config.sampler.name not in samplers:
        raise ValueError(f"unknown config.sampler.name {config.sampler.name!r}; known: {samplers}")
    loss = field(config, "loss.name")
    if loss not in LOSSES:
        raise ValueError(f"unknown config.loss.name {loss!r}; known: {LOSSES}")
    if loss == "fm" and sde != "linear":
        raise ValueError(f"config.loss.name='fm' needs config.sde.name='linear', got {sde!r}")
    preconditioning = field(config, "model.preconditioning")
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(
            f"unknown config.model.preconditioning {preconditioning!r}; known: {PRECONDITIONINGS}"
        )
    if model.parametrization not in PARAMETRISATIONS:
        raise ValueError(
            f"unknown config.model.parametrization {model.parametrization!r}; "
            f"known: {PARAMETRISATIONS}"
        )
    if preconditioning != "none" and model.parametrization != "x0":
        raise ValueError(
            "a preconditioned model is an EDM denoiser: set config.model.parametrization='x0' "
            f"with config.model.preconditioning={preconditioning!r}"
        )
    score_sampler = config.sampler.name in ("pc", "em", "ode")
    if sde == "linear" and score_sampler and not field(config, "sde.T") < 1.0:
        raise ValueError(
            f"sampler {config.sampler.name!r} on the linear path needs config.sde.T < 1 (its "
            "drift is singular at t = 1), or use fm_euler / fm_heun"
        )
