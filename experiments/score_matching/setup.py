"""Set-up of the score-matching study: the config checks, and data, path and model built from it.

`build` checks the config (`check_config`) and returns the `Setup`: the training distribution
(`Data`, from `config.data.kind`), the path, and the network (from `config.model.kind`) with its
`Model`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from experiments.common import check_batch_divides, check_multiples
from experiments.score_matching.family import (
    Model,
    ModelFn,
    check_family_config,
    make_model,
    make_sde,
)
from experiments.score_matching.sampling import SAMPLERS
from scorejax.analytic import GaussianMixture
from scorejax.data.toy import get_toy
from scorejax.models.mlp import ScoreMLP
from scorejax.sde import SDE
from scorejax.train.precision import precision_from_config


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
class Setup:
    """Everything built from the config before the workdir is touched.

    `score_fn` is `model.score_fn`, the form the distillation study reads.
    """

    data: Data
    sde: SDE
    init: Callable[[jax.Array], Any]
    score_fn: ModelFn
    model: Model


def _make_data(config: ml_collections.ConfigDict) -> Data:
    if config.data.kind == "toy":
        toy = get_toy(config.data.name)
        return Data(toy.name, (toy.dim,), toy.sample, toy.mixture)
    raise ValueError(f"unknown config.data.kind {config.data.kind!r}; known: 'toy'")


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
