"""Score-matching study: train a Gaussian-path model, sample from it, compare with the truth.

`train_and_evaluate(config, workdir)` (config: `configs/score_matching.py`)

1. trains `ScoreMLP` on a 2-D toy with the configured loss (data-parallel jitted step under the
   dtype policy `config.precision`, EMA weights, Orbax checkpoints every
   `train.checkpoint_every` steps; an interrupted run resumes from its latest checkpoint and
   ends with the same parameters as an uninterrupted one);
2. for Gaussian-mixture toys, measures the EMA network's score error against the exact marginal
   score in bins of diffusion time;
3. samples with the configured sampler and compares the samples with fresh true samples: MMD^2,
   sliced Wasserstein, energy distance, and mixture mode weights; the same sampler driven by the
   exact mixture is the reference, two true sample sets the noise floor;
4. writes `metrics.jsonl`, TensorBoard events, `eval.json`, `config.json`, and the PNGs
   `samples.png`, `loss.png`, `score_error.png` into `workdir`.

One study covers the whole Gaussian-path family (`scorejax.paths`); four config fields choose:

- `sde.name`, the path: `vp`, `subvp`, `ve` (Song et al. 2021), `edm` (`sigma(t) = t`, Karras et
  al. 2022) or `linear` (flow matching, `x_t = (1 - t) x_0 + t eps`);
- `model.parametrization` (`score`, `eps`, `x0`, `velocity`, `v`: what the network predicts on
  that path) or `model.preconditioning` (`edm`, `vp`, `ve`: EDM Table 1's `c_skip`, `c_out`,
  `c_in`, `c_noise` around the network, which then gives the EDM denoiser);
- `loss.name`: `dsm` (`scorejax.score_matching.dsm_loss`), `edm` (`scorejax.edm.edm_loss`) or
  `fm` (`scorejax.flow_matching.fm_loss`, linear path only);
- `sampler.name`: `pc`, `em`, `ode` (`scorejax.sampling`, on the study's path), `edm_heun`,
  `edm_stochastic` (`scorejax.edm`, EDM coordinates) or `fm_euler`, `fm_heun`
  (`scorejax.flow_matching`, linear-path coordinates).

Every model is turned into the three forms the losses and samplers need (`Model`: score on the
path, EDM denoiser, linear-path velocity) with the exact conversions of `scorejax.parametrisation`
and `scorejax.edm`; the Gaussian-mixture oracle gives the same three forms exactly
(`exact_model`), so the evaluation is the same for every path.

Data sources and models are chosen by `config.data.kind` and `config.model.kind` in
`_make_data` / `_make_model`, so further kinds slot in next to the toy ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from experiments.common import check_batch_divides, check_multiples
from scorejax import edm, edm_sampling, flow_matching
from scorejax import metrics as sm
from scorejax.analytic import GaussianMixture, exact_loss_floor
from scorejax.data.toy import get_toy
from scorejax.mode_metrics import mode_tv, mode_weights, near_modes
from scorejax.models.mlp import ScoreMLP
from scorejax.parametrisation import PARAMETRISATIONS, convert, wrap
from scorejax.paths import PATHS, EDMPath, LinearPath
from scorejax.sampling import euler_maruyama, predictor_corrector, probability_flow_ode
from scorejax.score_matching import PARAMETRIZATIONS, dsm_loss, make_score_fn
from scorejax.score_sdes import VESDE, VPSDE, SubVPSDE
from scorejax.sde import SDE
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    TrainState,
    batch_sharding,
    checkpoint_dir,
    make_mesh,
    make_train_step,
    prepare_workdir,
    put_replicated,
    read_metrics,
    replicated_sharding,
    write_json,
)
from scorejax.train.precision import RECORD_DEFAULTS, precision_from_config

EVAL_FILE = "eval.json"
OFF_MODE_Z = 4.0

ModelFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

LOSSES = ("dsm", "edm", "fm")
SAMPLERS = ("pc", "em", "ode", "edm_heun", "edm_stochastic", "fm_euler", "fm_heun")
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
class Data:
    """A training distribution: `sample(key, n) -> [n, *shape]`, and its exact mixture if known.

    `shape` is one example's shape: `(dim,)` for the 2-D toys, `(H, W, C)` for images.
    """

    name: str
    shape: tuple[int, ...]
    sample: Callable[[jax.Array, int], jax.Array]
    mixture: GaussianMixture | None

    @property
    def dim(self) -> int:
        """The number of values in one example."""
        return math.prod(self.shape)


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


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything built from the config before the workdir is touched.

    `score_fn` is `model.score_fn`, the form the distillation study reads.
    """

    data: Data
    sde: SDE
    init: Callable[[jax.Array], Any]
    score_fn: ModelFn
    model: Model


def field(config: ml_collections.ConfigDict, name: str) -> Any:
    """`config.<name>` for a `FIELD_DEFAULTS` field, or its default when a saved config lacks it."""
    group, leaf = name.split(".")
    return config[group].get(leaf, FIELD_DEFAULTS[name])


def _make_data(config: ml_collections.ConfigDict) -> Data:
    if config.data.kind == "toy":
        toy = get_toy(config.data.name)
        return Data(toy.name, (toy.dim,), toy.sample, toy.mixture)
    raise ValueError(f"unknown config.data.kind {config.data.kind!r}; known: 'toy'")


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


def _make_model(config: ml_collections.ConfigDict, data: Data):
    """`(init(key) -> params, apply(params, x, t) -> network output)`."""
    c = config.model
    if c.kind != "mlp":
        raise ValueError(f"unknown config.model.kind {c.kind!r}; known: 'mlp'")
    if c.data_dim != data.dim:
        raise ValueError(
            f"config.model.data_dim={c.data_dim} but the data {data.name!r} has dimension "
            f"{data.dim}; set --config.model.data_dim={data.dim}"
        )
    model = ScoreMLP(
        data_dim=c.data_dim,
        hidden_sizes=tuple(c.hidden_sizes),
        time_embedding=c.time_embedding,
        embed_dim=c.embed_dim,
        fourier_scale=c.fourier_scale,
        **precision_from_config(config).module_kwargs(),
    )

    def init(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros((1, data.dim)), jnp.zeros((1,)))

    return init, model.apply


def check_config(config: ml_collections.ConfigDict) -> None:
    """Check the training fields and the path, model, loss and sampler fields of a score-matching
    config (the toy and the image study's); ValueError on a bad value or combination."""
    t = config.train
    steps = {f"train.{name}": t[name] for name in ("num_steps", "log_every", "checkpoint_every")}
    check_multiples(steps, "train.steps_per_call", t.steps_per_call)
    check_batch_divides("train.batch_size", t.batch_size)
    check_family_config(config, SAMPLERS)
    if config.loss.t_min <= 0:
        raise ValueError(f"config.loss.t_min must be > 0, got {config.loss.t_min}")
    if not 0 <= config.train.warmup_steps < config.train.num_steps:
        raise ValueError(
            f"config.train.warmup_steps must be in [0, num_steps={config.train.num_steps}), "
            f"got {config.train.warmup_steps}"
        )


def build(config: ml_collections.ConfigDict) -> Setup:
    """Check the config and build data, SDE and model (raises ValueError on bad settings)."""
    check_config(config)
    data = _make_data(config)
    sde = make_sde(config)
    init, apply = _make_model(config, data)
    model = make_model(apply, sde, config)
    return Setup(data, sde, init, model.score_fn, model)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam on a linear-warm-up cosine schedule, after clipping the global gradient norm."""
    t = config.train
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=t.num_steps,
        end_value=t.learning_rate * t.final_lr_fraction,
    )
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adam(schedule))


def make_step_and_state(
    config: ml_collections.ConfigDict,
    loss_fn: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]],
    init: Callable[[jax.Array], Any],
    mesh: Mesh,
    key: jax.Array,
) -> tuple[Callable[..., tuple[TrainState, dict]], TrainState]:
    """The training step of `loss_fn(params, x0, key)` and the initial state of `init(key)`.

    The step is `scorejax.train.make_train_step` with `make_optimizer(config)`, the EMA of
    `config.train`, `train.steps_per_call` updates per call and the dtype policy
    `config.precision`, data-parallel over `mesh`; the state is created by one compiled call
    (not many small eager ops) and replicated over `mesh`.
    """
    t = config.train
    tx = make_optimizer(config)
    step_fn = make_train_step(
        loss_fn,
        tx,
        mesh=mesh,
        ema_decay=t.ema_decay,
        ema_warmup=t.ema_warmup,
        steps_per_call=t.steps_per_call,
        precision=precision_from_config(config),
    )
    create = jax.jit(
        lambda k: TrainState.create(init(k), tx), out_shardings=replicated_sharding(mesh)
    )
    return step_fn, create(key)


def _sample(setup: Setup, config, model: Model, params, key: jax.Array, n: int) -> jax.Array:
    return sample(config, setup.sde, model, params, key, (n, setup.data.dim))[0]


def _score_error_by_time(setup: Setup, config, params, key: jax.Array) -> dict[str, list[float]]:
    """Score error of the network against the exact marginal score, per diffusion-time bin.

    Bins are log-spaced between `t_min` and T. In each bin, `t` is uniform and `x_t ~ p_t`;
    reported: `sigma_t^2 E||s_theta - s*||^2` (the excess DSM loss over the exact score, i.e.
    the error the sigma2-weighted loss sees) and `E||s_theta - s*||^2 / E||s*||^2`.
    """
    mixture, sde = setup.data.mixture, setup.sde
    n_bins, n = config.eval.num_time_bins, config.eval.points_per_bin
    edges = np.geomspace(config.loss.t_min, sde.T, n_bins + 1)

    def one_bin(lo, hi, k):
        k_t, k_x = jax.random.split(k)
        t = jnp.exp(jax.random.uniform(k_t, (n,), minval=jnp.log(lo), maxval=jnp.log(hi)))
        x = mixture.marginal_sample(k_x, n, t, sde=sde)
        exact = mixture.marginal_score(x, t, sde=sde)
        err = jnp.sum((setup.score_fn(params, x, t) - exact) ** 2, -1)
        ref = jnp.sum(exact**2, -1)
        return jnp.mean(sde.sigma(t) ** 2 * err), jnp.mean(err) / jnp.mean(ref)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_bins))
    excess, rel = jax.jit(lambda lo, hi, ks: jax.lax.map(lambda a: one_bin(*a), (lo, hi, ks)))(
        jnp.asarray(edges[:-1], jnp.float32), jnp.asarray(edges[1:], jnp.float32), keys
    )
    return {
        "time_bin_edges": edges.tolist(),
        "score_excess_loss": np.asarray(excess).tolist(),
        "score_rel_err": np.asarray(rel).tolist(),
    }


def _exact_loss_floor(setup: Setup, config, key: jax.Array, n: int = 65536) -> float:
    """The config's training loss at the exact mixture (`scorejax.analytic.exact_loss_floor`)."""
    mixture = setup.data.mixture
    loss_fn = make_loss(config, setup.sde, exact_model(mixture, setup.sde))
    floor = jax.jit(lambda k: exact_loss_floor(loss_fn, mixture, k, num_samples=n))
    return float(floor(key))


def _make_sample_metrics(config, mixture: GaussianMixture | None):
    """A jitted `(samples, reference, bandwidths, key) -> dict` of sample-quality metrics."""

    @jax.jit
    def compute(samples, reference, bandwidths, key):
        out = {
            "mmd2": sm.mmd2_rbf(samples, reference, bandwidths=bandwidths),
            "sliced_w2": sm.sliced_wasserstein(
                samples, reference, key, num_projections=config.eval.num_projections
            ),
            "energy": sm.energy_distance(samples, reference),
            "nonfinite": jnp.sum(~jnp.all(jnp.isfinite(samples), axis=-1)),
        }
        if mixture is not None:
            w = mode_weights(samples, mixture.means)
            pi = jnp.exp(mixture.log_weights)
            out |= {"mode_weights": w, "mode_weight_max_err": jnp.max(jnp.abs(w - pi))}
            out["mode_weight_tv"] = mode_tv(w, pi)
            # Samples more than 4 standard deviations from every component (bridges between
            # modes, outliers); a true sample is that far with probability about 3e-4 in 2-D.
            near = near_modes(samples, mixture.means, mixture.stds, num_stds=OFF_MODE_Z)
            out["off_mode_frac"] = jnp.mean(~jnp.any(near, axis=1))
        return out

    def to_python(samples, reference, bandwidths, key) -> dict[str, Any]:
        values = jax.device_get(compute(samples, reference, bandwidths, key))
        return {k: np.asarray(v).tolist() for k, v in values.items()}

    return to_python


def evaluate(setup: Setup, config, params, key: jax.Array) -> tuple[dict[str, Any], dict]:
    """Evaluate `params`; returns `(scalars and lists for the metrics, arrays to plot)`."""
    data, mixture = setup.data, setup.data.mixture
    n = config.eval.num_samples
    k_true, k_null, k_sample, k_sw, k_err, k_floor = jax.random.split(key, 6)

    @jax.jit
    def references(k_a, k_b):
        a, b = data.sample(k_a, n), data.sample(k_b, n)
        # One fixed set of bandwidths, so all MMD values below are on the same scale.
        mult = jnp.asarray(sm.DEFAULT_BANDWIDTH_MULTIPLIERS)
        return a, b, sm.median_bandwidth(a, b) * mult

    true, true_b, bandwidths = (np.asarray(a) for a in references(k_true, k_null))
    sample_metrics = _make_sample_metrics(config, mixture)
    results: dict[str, Any] = {}
    arrays: dict[str, Any] = {"true": true}

    t0 = time.perf_counter()
    # Host arrays throughout, so every call of the metrics function hits one compiled version.
    samples = np.asarray(_sample(setup, config, setup.model, params, k_sample, n))
    results["sample_seconds_incl_compile"] = time.perf_counter() - t0
    arrays["model"] = samples
    for k, v in sample_metrics(samples, true, bandwidths, k_sw).items():
        results[f"model/{k}"] = v
    for k, v in sample_metrics(true_b, true, bandwidths, k_sw).items():
        results[f"null/{k}"] = v

    if mixture is not None:
        # The same sampler and noise with the exact mixture: what a perfect network would reach.
        exact_fns = exact_model(mixture, setup.sde)
        exact = np.asarray(_sample(setup, config, exact_fns, None, k_sample, n))
        arrays["exact"] = exact
        for k, v in sample_metrics(exact, true, bandwidths, k_sw).items():
            results[f"exact/{k}"] = v
        results.update(
            {f"score/{k}": v for k, v in _score_error_by_time(setup, config, params, k_err).items()}
        )
        results["exact_loss_floor"] = _exact_loss_floor(setup, config, k_floor)
    return results, arrays


def _true_density_image(setup: Setup, lim: float, res: int = 300) -> np.ndarray:
    xs = np.linspace(-lim, lim, res)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2).astype(np.float32)
    if setup.data.mixture is not None:
        dens = np.exp(np.asarray(setup.data.mixture.log_prob(jnp.asarray(grid))))
        return dens.reshape(res, res)
    many = np.asarray(jax.jit(setup.data.sample, static_argnums=1)(jax.random.key(12345), 200_000))
    hist, _, _ = np.histogram2d(many[:, 1], many[:, 0], bins=res, range=[[-lim, lim]] * 2)
    return hist


def write_plots(setup: Setup, config, workdir: str, results: dict, arrays: dict) -> None:
    """`samples.png`, `loss.png` and (mixtures) `score_error.png` in `workdir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = float(np.percentile(np.abs(arrays["true"]), 99.9)) * 1.25
    density = _true_density_image(setup, lim)
    panels = [("model", "trained network (EMA)")]
    if "exact" in arrays:
        panels.append(("exact", "exact score, same sampler"))
    panels.append(("true", "true samples"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    for ax, (name, title) in zip(axes, panels, strict=True):
        ax.imshow(density, extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys")
        pts = arrays[name]
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="tab:red", linewidths=0)
        subtitle = ""
        if name != "true":
            subtitle = f"\nMMD$^2$={results[f'{name}/mmd2']:.1e}"
            subtitle += f"  SW$_2$={results[f'{name}/sliced_w2']:.3f}"
            if f"{name}/off_mode_frac" in results:
                subtitle += f"  off-mode {100 * results[f'{name}/off_mode_frac']:.1f}%"
        ax.set_title(title + subtitle, fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.suptitle(
        f"{setup.data.name}: samples over the true density "
        f"(null MMD$^2$ of two true sets: {results['null/mmd2']:.1e})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(os.path.join(workdir, "samples.png"), dpi=110)
    plt.close(fig)

    history = [r for r in read_metrics(workdir) if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    loss_name = field(config, "loss.name").upper()
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label=f"{loss_name} loss")
    if "exact_loss_floor" in results:
        ax.axhline(results["exact_loss_floor"], color="k", ls="--", label="loss of the exact score")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over the logging interval)")
    ax.set_title(f"{setup.data.name}: training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "loss.png"), dpi=110)
    plt.close(fig)

    if "score/time_bin_edges" in results:
        edges = np.asarray(results["score/time_bin_edges"])
        centers = np.sqrt(edges[:-1] * edges[1:])
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.loglog(centers, results["score/score_rel_err"], "o-", label=r"$E|s-s^*|^2 / E|s^*|^2$")
        ax.loglog(
            centers,
            results["score/score_excess_loss"],
            "s-",
            label=r"$\sigma_t^2 E|s-s^*|^2$ (excess DSM loss)",
        )
        end = sampler_end_time(config, setup.sde)
        ax.axvline(end, color="grey", ls=":", label="sampler stops here")
        ax.set_xlabel("diffusion time t (bin centre)")
        ax.set_title(f"{setup.data.name}: EMA network score error vs exact marginal score")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "score_error.png"), dpi=110)
        plt.close(fig)


def train(setup: Setup, config, workdir: str) -> TrainState:
    """Train (or resume) and return the final state; writes checkpoints and training metrics."""
    t = config.train
    k = t.steps_per_call
    mesh = make_mesh()
    root = jax.random.key(config.seed)
    k_init, k_train, k_data = (jax.random.fold_in(root, i) for i in range(3))
    loss_fn = make_loss(config, setup.sde, setup.model)
    step_fn, state = make_step_and_state(config, loss_fn, setup.init, mesh, k_init)

    # Data for the k updates starting at `step`: batch i comes from fold_in(k_data, step + i), so
    # it depends only on the step number and a resumed run sees the same data.
    @jax.jit
    def batches(step):
        keys = jax.vmap(lambda i: jax.random.fold_in(k_data, step + i))(jnp.arange(k))
        out = jax.vmap(lambda key: setup.data.sample(key, t.batch_size))(keys)
        return jax.lax.with_sharding_constraint(out, batch_sharding(mesh, batch_axis=1))

    with Checkpointer(
        checkpoint_dir(workdir), save_every=t.checkpoint_every, keep=t.keep_checkpoints
    ) as ckpt:
        state = ckpt.restore_or(state)
        start = int(state.step)
        key = put_replicated(k_train, mesh)
        with (
            MetricWriter(workdir, resume_step=start or None) as writer,
            Progress(t.num_steps, initial=start, desc=f"train {setup.data.name}") as bar,
        ):
            last_time, last_step = time.perf_counter(), start
            # Metrics summed on the device over the logging interval: no host sync per call.
            interval_sum, calls = None, 0
            for step in range(start + k, t.num_steps + 1, k):
                state, metrics = step_fn(state, batches(step - k), key)
                interval_sum = (
                    metrics
                    if interval_sum is None
                    else jax.tree.map(jnp.add, interval_sum, metrics)
                )
                calls += 1
                if step % t.log_every == 0:
                    means = {n: float(v) / calls for n, v in jax.device_get(interval_sum).items()}
                    now = time.perf_counter()
                    rate = (step - last_step) / (now - last_time)
                    last_time, last_step = now, step
                    writer.write(step, {**means, "steps_per_sec": rate})
                    bar.update(step, loss=means["loss"])
                    interval_sum, calls = None, 0
                else:
                    bar.update(step)
                ckpt.maybe_save(step, state)
        ckpt.save(t.num_steps, state)
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run the study in `workdir` (resuming it if it holds a checkpoint of the same config).

    Returns the evaluation results (also in `<workdir>/eval.json`).
    """
    setup = build(config)
    workdir = str(prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS))
    eval_path = os.path.join(workdir, EVAL_FILE)
    state = train(setup, config, workdir)
    if os.path.exists(eval_path):  # a finished run that was started again
        with open(eval_path) as f:
            results = json.load(f)
        _print_summary(setup, results)
        return results
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    results, arrays = evaluate(setup, config, state.ema_params, key)
    write_json(eval_path, results, indent=1)
    with MetricWriter(workdir, resume_step=config.train.num_steps) as writer:
        writer.write(config.train.num_steps, {f"eval/{k}": v for k, v in results.items()})
    write_plots(setup, config, workdir, results, arrays)
    _print_summary(setup, results)
    return results


def _print_summary(setup: Setup, r: dict[str, Any]) -> None:
    lines = [f"{setup.data.name}: samples vs fresh true samples"]
    for who in ("model", "exact", "null"):
        if f"{who}/mmd2" in r:
            line = f"  {who:5s} MMD^2 {r[f'{who}/mmd2']:.2e}  SW2 {r[f'{who}/sliced_w2']:.4f}"
            if f"{who}/mode_weight_max_err" in r:
                line += f"  max |mode weight - true| {r[f'{who}/mode_weight_max_err']:.4f}"
                line += f"  off-mode {r[f'{who}/off_mode_frac']:.4f}"
            lines.append(line)
    if "score/score_rel_err" in r:
        rel = ", ".join(f"{v:.3g}" for v in r["score/score_rel_err"])
        lines.append(f"  relative score error per time bin (small t -> T): {rel}")
    print("\n".join(lines), flush=True)
