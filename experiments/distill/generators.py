"""The one-step generators of the distillation study, and the programs its runs share.

`make_generator` builds the score-distillation generator `G_0`: the teacher's denoiser at a fixed
large time (`generator.kind = "denoiser"`, initialised from the teacher or at random; for images
a U-Net generator), or a random MLP (toys). `consistency_generator` builds the `consistency`
method's student `f(T z, T)` from the teacher.

Functions that close over a teacher's score function are built once per config and teacher and
kept in a `Programs` (jit caches by function identity, so runs that share them compile once);
a `RunCache` holds the teachers and `Programs` of every run of a process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.distill.methods import consistency_config
from experiments.distill.teacher import Teacher
from scorejax import consistency as cm
from scorejax import edm
from scorejax.models.generator import MLPGenerator, denoiser_generator
from scorejax.train import config_to_dict
from scorejax.train.precision import Precision, precision_from_config


@dataclasses.dataclass(frozen=True)
class Generator:
    """`apply(params, z) -> x0`, its initial parameters and the latent shape (without batch)."""

    apply: Callable[[Any, jax.Array], jax.Array]
    init_params: Any
    latent_shape: tuple[int, ...]


class ConsistencyNetworks(NamedTuple):
    """The `consistency` method's functions, all of the teacher's parameters.

    `teacher`: the teacher's EDM denoiser on the study's path (the Heun step's model); `net`:
    the student network `scorejax.consistency.network_from_denoiser` of it; `apply`: the student's
    one-step generator `G(z) = f_theta(T z, T)`.
    """

    teacher: Callable
    net: Callable
    apply: Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass
class Programs:
    """The functions built for one config and teacher, which every run of them reuses.

    Attributes:
      generator_apply: the score-distillation generator's `apply` (`make_generator`).
      consistency: the `consistency` method's networks (`consistency_networks`).
      evaluators: per generator `apply`, the evaluator's jitted functions by name.
      steps: compiled training steps, by `(schedule, number of path nodes, weighting)` for score
        distillation and `"consistency"` for consistency distillation.
    """

    generator_apply: Callable[[Any, jax.Array], jax.Array] | None = None
    consistency: ConsistencyNetworks | None = None
    evaluators: dict[Callable, dict[str, Callable]] = dataclasses.field(default_factory=dict)
    steps: dict[Hashable, Callable] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunCache:
    """The teachers and `Programs` shared by the runs of one process.

    `train_and_evaluate` makes one when it is given none. A caller that runs several seeds or
    variants, or resumes a run, in one process passes the same cache to every call, so that the
    later runs reuse the teacher objects (and so the score functions) and the compiled programs
    of the first.
    """

    teachers: dict[tuple[str, Precision, str, str], Teacher] = dataclasses.field(
        default_factory=dict
    )
    programs: dict[tuple[str, str], Programs] = dataclasses.field(default_factory=dict)

    def share_teacher(self, config: ml_collections.ConfigDict, teacher: Teacher) -> Teacher:
        """The first teacher seen with `teacher`'s kind, dtype policy, config and weights (else
        `teacher`)."""
        key = (
            config.teacher.kind,
            precision_from_config(config),
            json.dumps(config_to_dict(teacher.config), sort_keys=True),
            teacher.digest,
        )
        return self.teachers.setdefault(key, teacher)

    def programs_for(self, config: ml_collections.ConfigDict, teacher: Teacher) -> Programs:
        """The `Programs` of `config` and `teacher`.

        Keyed by everything that determines them (the config without its seed, methods and
        teacher path, and the teacher's weights), so the seeds of a benchmark and a resumed run
        reuse the programs compiled for the first run.
        """
        cfg = config_to_dict(config)
        for name in ("seed", "methods"):
            cfg.pop(name)
        cfg["teacher"].pop("workdir")
        key = (json.dumps(cfg, sort_keys=True), teacher.digest)
        return self.programs.setdefault(key, Programs())


def make_generator(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    key: jax.Array,
    programs: Programs | None = None,
) -> Generator:
    """The one-step generator and its initial parameters (see `configs/distill.py`), computing in
    the dtype policy of `config.precision` (a denoiser generator: the teacher's network's).

    `programs`: where its `apply` is kept and found (None: a new one, shared with nothing).
    """
    programs = Programs() if programs is None else programs
    g = config.generator
    setup = teacher.setup
    shape = setup.data.shape
    module = MLPGenerator(
        data_dim=setup.data.dim,
        hidden_sizes=tuple(g.hidden_sizes),
        output_scale=g.output_scale,
        **precision_from_config(config).module_kwargs(),
    )
    if programs.generator_apply is None:
        if g.kind == "denoiser":
            apply = denoiser_generator(setup.score_fn, setup.sde, g.t_init)
        else:
            apply = module.apply
        programs.generator_apply = _shifted(apply, tuple(g.offset)) if tuple(g.offset) else apply
    if g.kind == "mlp":
        params = jax.jit(module.init)(key, jnp.zeros((1, *shape)))
    elif g.init == "teacher":
        params = jax.tree.map(jnp.copy, teacher.params)
    else:
        params = jax.jit(setup.init)(key)
    return Generator(programs.generator_apply, params, shape)


def _shifted(apply: Callable, offset: tuple[float, ...]) -> Callable:
    """`apply` with a constant added to every sample: `G(z) = G_base(z) + offset`.

    Places the initial generator's samples away from the data (the far-G0 regime); the offset
    is part of the architecture, so the generator must learn to undo it.
    """
    shift = np.asarray(offset, np.float32)

    def shifted(params, z):
        return apply(params, z) + shift

    return shifted


def consistency_networks(
    config: ml_collections.ConfigDict, teacher: Teacher, programs: Programs
) -> ConsistencyNetworks:
    """The `consistency` method's networks of `teacher`, built once per `programs`."""
    if programs.consistency is None:
        setup, cfg = teacher.setup, consistency_config(config)
        denoiser = edm.to_edm_denoiser(setup.score_fn, path=setup.sde, source="score")
        net = cm.network_from_denoiser(denoiser, config=cfg)
        programs.consistency = ConsistencyNetworks(
            denoiser, net, cm.one_step_generator(net, config=cfg)
        )
    return programs.consistency


def consistency_generator(
    config: ml_collections.ConfigDict, teacher: Teacher, programs: Programs | None = None
) -> Generator:
    """The `consistency` method's one-step generator `G(z) = f_theta(T z, T)`, from the teacher.

    `f_theta` is `scorejax.consistency.consistency_fn` around the network
    `scorejax.consistency.network_from_denoiser` of the teacher's EDM denoiser (its score on the
    study's path through `scorejax.edm.to_edm_denoiser`), so its parameters are the teacher's
    and it starts as the teacher's denoiser (Song et al. 2023), whatever `config.generator` says.
    `programs` as for `make_generator`.
    """
    programs = Programs() if programs is None else programs
    apply = consistency_networks(config, teacher, programs).apply
    params = jax.tree.map(jnp.copy, teacher.params)
    return Generator(apply, params, teacher.setup.data.shape)
