"""Sampling in the score-matching study: the configured sampler on a `Model`.

`sample` draws with `config.sampler` (`SAMPLERS`: on the path with the score, in EDM coordinates
with the denoiser, or on the linear path with the velocity); `sampler_end_time` is the smallest
time of the path at which that sampler evaluates the model.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.score_matching.family import Model
from scorejax import edm_sampling, flow_matching
from scorejax.sampling import euler_maruyama, predictor_corrector, probability_flow_ode
from scorejax.sde import SDE

SAMPLERS = ("pc", "em", "ode", "edm_heun", "edm_stochastic", "fm_euler", "fm_heun")


def sample(
    config: ml_collections.ConfigDict,
    path: SDE,
    model: Model,
    params: Any,
    key: jax.Array,
    shape: tuple[int, ...],
) -> tuple[jax.Array, jax.Array]:
    """Draw `shape[0]` samples with `config.sampler`; returns `(samples, nfe)` (jitted).

    `pc`, `em`, `ode` run on `path` with the score; `edm_heun`, `edm_stochastic` in EDM
    coordinates with the denoiser (`sampler.sigma_min`, `sigma_max`, `rho`, and `s_churn`,
    `s_tmin`, `s_tmax`, `s_noise` for the stochastic one); `fm_euler`, `fm_heun` on the linear
    path with the velocity. `nfe` counts network evaluations.
    """
    s = config.sampler
    on_path = {"sde": path, "shape": shape, "t_eps": s.t_eps}
    if s.name == "pc":
        fn = functools.partial(
            predictor_corrector,
            model.score_fn,
            **on_path,
            num_steps=s.num_steps,
            snr=s.snr,
            n_corrector=s.n_corrector,
        )
    elif s.name == "em":
        fn = functools.partial(euler_maruyama, model.score_fn, **on_path, num_steps=s.num_steps)
    elif s.name == "ode":
        fn = functools.partial(
            probability_flow_ode, model.score_fn, **on_path, rtol=s.ode_tol, atol=s.ode_tol
        )
    elif s.name in ("edm_heun", "edm_stochastic"):
        steps = {"shape": shape, "num_steps": s.num_steps, "sigma_min": s.sigma_min,
                 "sigma_max": s.sigma_max, "rho": s.rho}
        if s.name == "edm_heun":
            fn = functools.partial(edm_sampling.heun_sampler, model.denoiser_fn, **steps)
        else:
            churn = {"s_churn": s.s_churn, "s_tmin": s.s_tmin, "s_tmax": s.s_tmax,
                     "s_noise": s.s_noise}
            fn = functools.partial(
                edm_sampling.stochastic_sampler, model.denoiser_fn, **steps, **churn
            )
    elif s.name in ("fm_euler", "fm_heun"):
        sampler = (
            flow_matching.euler_sampler if s.name == "fm_euler" else flow_matching.heun_sampler
        )
        fn = functools.partial(sampler, model.velocity_fn, shape=shape, num_steps=s.num_steps)
    else:
        raise ValueError(f"unknown config.sampler.name {s.name!r}; known: {SAMPLERS}")
    return jax.jit(fn)(params, key)


def sampler_end_time(config: ml_collections.ConfigDict, path: SDE) -> float:
    """The smallest time of `path` at which the configured sampler evaluates the model.

    `t_eps` for `pc`/`em`/`ode`; for the EDM and FM samplers, the time of `path` with the same
    log-SNR as their last evaluation (`sigma_min`, or `t = 1 / num_steps` on the linear path).
    """
    s = config.sampler
    if s.name in ("pc", "em", "ode"):
        return float(s.t_eps)
    if s.name.startswith("edm"):
        log_snr = -2.0 * np.log(s.sigma_min)
    else:
        log_snr = flow_matching.LINEAR_PATH.log_snr(1.0 / s.num_steps)
    return float(path.t_from_log_snr(jnp.asarray(log_snr, jnp.float32)))
