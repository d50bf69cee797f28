"""One-step distillation study: Diff-Instruct, DisBack (distribution backtracking) and
consistency distillation.

`train_and_evaluate(config, workdir)` (config: `configs/distill.py`)

Two data kinds (`config.data.kind`): `"toy"` (2-D Gaussian mixtures, MLP score models from
`experiments.score_matching`) and `"image"` (TFDS images, U-Net score models from
`experiments.score_matching_images`); everything below is shared, except the evaluation.

1. *Teacher.* Loads the EMA parameters of a score-matching run (`config.teacher.workdir`), or,
   when that field is empty, trains one into `<workdir>/teacher` with
   `configs/<teacher.config_module>.py:<teacher.variant>` (resumed if interrupted). A given
   teacher workdir without a checkpoint, one trained on other data, or one of the other data kind
   is an error before anything is trained or written. The teacher may come from any path of the
   family (VP, VE, EDM, linear flow matching) and any loss (DSM, EDM, FM): the study distils on
   its own VP path (`study_path`), so another path's teacher is converted to its score there
   through its EDM denoiser (`on_study_path`), and keeps its own training loss for stage 1 and
   the fake score (`Teacher.loss_fn`).
2. *Initial generator* `G_0`: the teacher's denoiser at a fixed large time (`generator.kind =
   "denoiser"`, initialised from the teacher or at random; for images a U-Net generator), or a
   random MLP (toys).
3. *Stage 1* (only when a method needs it):
   `scorejax.train.degradation_recording.record_degradation` fine-tunes a copy of the teacher on
   samples of the frozen `G_0` and saves the degradation path in `<workdir>/path` (resumable;
   its cost in steps and seconds is reported).
4. *Stage 2*, one run per method in `<workdir>/<method>`, all with the same seed, generator
   initialisation, batches and number of generator updates:
   - `diff_instruct`: target = teacher, fake score initialised from the teacher;
   - `diff_instruct_warm`: target = teacher, fake score initialised from the last path node, i.e.
     warmed up on `G_0` for exactly stage 1's steps (the fair control for DisBack);
   - `disback_fixed` / `disback_adaptive`: fake score from the last node, target walking the path
     back to the teacher with the fixed / adaptive `BacktrackSchedule`;
   - `consistency`: consistency distillation (Song et al. 2023, `scorejax.consistency`) of the
     teacher into a one-step model `f(T z, T)` initialised from the teacher's weights, with a
     Heun step of the teacher between adjacent EDM times, an EMA target network and an L2 or
     pseudo-Huber metric (`config.consistency`), on data batches; compared with `diff_instruct`.
   Each run checkpoints (generator, fake score, and the schedule state, i.e. the current target
   node; for `consistency`, the student and its target network) with Orbax, resumes after an
   interruption exactly, logs every target switch, and evaluates the generator's EMA weights
   (`distill.gen_ema`) every `eval.every` updates: MMD^2,
   sliced Wasserstein, energy distance and mode coverage against true samples (pixels, for
   images), and, for mixtures, the teacher's exact score mismatch
   `E sigma_t^2 ||s_teacher - s*||^2` on the diffused generator samples; for images, KID and the
   confident-prediction rate on the image study's classifier (`make_image_evaluator`).
5. Writes `results.json`, `results.md` (final metrics, updates needed to reach Diff-Instruct's
   final MMD, stage-1 cost), `convergence.png`, `samples.png` (scatter plots, or image grids),
   and per method `metrics.jsonl` and TensorBoard events.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import struct

from scorejax import consistency as cm
from scorejax import distill, edm
from scorejax import metrics as sm
from scorejax.data import load_arrays
from scorejax.models.generator import MLPGenerator, denoiser_generator
from scorejax.plotting import image_grid
from scorejax.score_sdes import VPSDE
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    TrainState,
    batch_sharding,
    checkpoint_dir,
    config_to_dict,
    has_checkpoint,
    make_mesh,
    prepare_workdir,
    put_replicated,
    read_metrics,
    replicated_sharding,
    write_json,
)
from scorejax.train.degradation import DegradationPath
from scorejax.train.degradation_recording import record_degradation
from scorejax.train.optim import Adam
from scorejax.train.step import train_step

METHODS = (
    "diff_instruct",
    "diff_instruct_warm",
    "disback_fixed",
    "disback_adaptive",
    "diff_instruct_ahead",
    "consistency",
)
HEAD_START_SUBDIR = "head_start"
DATA_KINDS = ("toy", "image")
# "network": a trained score model; "exact": a toy mixture's analytic score plus a residual
# network initialised to zero (a perfect teacher that stage 1 can still fine-tune).
TEACHER_KINDS = ("network", "exact")
# The score-matching studies a teacher may come from, by the `study` field of its config.json.
TEACHER_STUDIES = ("score_matching", "score_matching_images")
RESULTS_FILE = "results.json"
FINAL_FILE = "final.json"
TEACHER_SUBDIR = "teacher"
PATH_SUBDIR = "path"


# ----------------------------------------------------------------------------------------------
# Setup: teacher, generator, data.


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A trained model of the Gaussian-path family: its study's setup, EMA parameters, config.

    `setup.sde` is the study's path (`study_path`) and `setup.score_fn` the teacher's score on
    it, converted when the teacher was trained on another path (`on_study_path`). `loss_fn` is
    its own training loss `loss_fn(params, x0, key) -> (loss, aux)` on its own path (the EDM or
    flow-matching loss, ...), which stage 1 and the fake score train with; `None` for a teacher
    trained with DSM on the study's path, whose loss is that DSM loss of `setup.score_fn`
    (`config.loss.weighting`, `config.loss.t_min`). `loss_name` names it in stage 1's record.
    """

    workdir: str
    config: ml_collections.ConfigDict
    setup: Any  # experiments.score_matching.Setup (toys and images alike)
    params: Any
    digest: str  # scorejax.distill.param_digest of `params`
    loss_fn: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]] | None = None
    loss_name: str = ""


@dataclasses.dataclass(frozen=True)
class Generator:
    """`apply(params, z) -> x0`, its initial parameters and the latent shape (without batch)."""

    apply: Callable[[Any, jax.Array], jax.Array]
    init_params: Any
    latent_shape: tuple[int, ...]


def methods_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The methods a config runs, in order (`config.methods` is a comma-separated string).

    A method is `<plan>` or `<plan>+<weighting>`: the plan (`METHODS`: where the fake score
    starts, which targets the generator chases, how they switch) wraps any generator weighting
    of `scorejax.distill.DISTILL_WEIGHTINGS`; without a suffix it is `config.distill.weighting`.
    `consistency` (consistency distillation, `run_method`) has no fake score and no weighting.
    """
    names = tuple(m.strip() for m in config.methods.split(",") if m.strip())
    bad = [
        m
        for m in names
        if m.split("+")[0] not in METHODS
        or m.count("+") > 1
        or ("+" in m and m.split("+")[1] not in distill.DISTILL_WEIGHTINGS)
        or ("+" in m and m.startswith("consistency"))
    ]
    if bad or not names:
        raise ValueError(
            f"config.methods={config.methods!r}: each entry is one of {METHODS}, optionally "
            "followed by +<weighting> with a weighting of "
            f"{distill.DISTILL_WEIGHTINGS} (bad: {bad}; "
            "consistency distillation takes no weighting)"
        )
    return names


def split_method(method: str, config: ml_collections.ConfigDict) -> tuple[str, str]:
    """`(plan, weighting)` of a method name (see `methods_of`)."""
    plan_name, _, weighting = method.partition("+")
    return plan_name, weighting or config.distill.weighting


def baseline_of(method: str, config: ml_collections.ConfigDict) -> str:
    """The Diff-Instruct run a method is compared with: plain score distillation with the same
    generator weighting (`config.distill.weighting` for `consistency`)."""
    _, weighting = split_method(method, config)
    return (
        "diff_instruct" if weighting == config.distill.weighting else f"diff_instruct+{weighting}"
    )


def _check_config(config: ml_collections.ConfigDict) -> None:
    methods_of(config)
    d = config.distill
    k = d.steps_per_call
    for name, value in (
        ("distill.num_steps", d.num_steps),
        ("eval.every", config.eval.every),
        ("checkpoint_every", config.checkpoint_every),
    ):
        if value < 1 or value % k:
            raise ValueError(
                f"config.{name}={value} must be a positive multiple of "
                f"config.distill.steps_per_call={k}"
            )
    if d.batch_size % jax.device_count():
        raise ValueError(
            f"config.distill.batch_size={d.batch_size} is not divisible by the "
            f"{jax.device_count()} devices"
        )
    if config.generator.kind not in ("denoiser", "mlp"):
        raise ValueError(f"config.generator.kind={config.generator.kind!r}: 'denoiser' or 'mlp'")
    if config.generator.init not in ("teacher", "random"):
        raise ValueError(f"config.generator.init={config.generator.init!r}: 'teacher' or 'random'")
    if config.generator.kind == "mlp" and config.generator.init == "teacher":
        raise ValueError("an MLP generator has no teacher initialisation; use kind='denoiser'")
    if config.data.kind not in DATA_KINDS:
        raise ValueError(f"config.data.kind={config.data.kind!r}: choose from {DATA_KINDS}")
    if config.data.kind == "image" and config.generator.kind != "denoiser":
        raise ValueError("image distillation needs generator.kind='denoiser' (a U-Net generator)")
    if d.fake_steps < 1:
        raise ValueError(f"config.distill.fake_steps must be >= 1, got {d.fake_steps}")
    if config.teacher.kind not in TEACHER_KINDS:
        raise ValueError(
            f"config.teacher.kind={config.teacher.kind!r}: choose from {TEACHER_KINDS}"
        )
    if config.teacher.kind == "exact" and config.data.kind != "toy":
        raise ValueError("teacher.kind='exact' needs a toy mixture (data.kind='toy')")
    offset = tuple(config.generator.offset)
    if offset and config.data.kind != "toy":
        raise ValueError("generator.offset is for 2-D toys only")
    s1 = config.stage1
    if s1.num_steps % s1.probe_every or s1.num_steps // s1.probe_every < s1.num_nodes:
        raise ValueError(
            f"config.stage1.num_steps={s1.num_steps} must be a multiple of stage1.probe_every="
            f"{s1.probe_every} with at least stage1.num_nodes={s1.num_nodes} probes"
        )
    time_dist(config)
    study_path(config)
    consistency_config(config)
    methods = methods_of(config)
    for m in methods:
        if m.startswith("disback"):
            schedule(config, m)
        base = baseline_of(m, config)
        if split_method(m, config)[0] == "diff_instruct_ahead" and (
            base not in methods or methods.index(base) > methods.index(m)
        ):
            raise ValueError(
                f"config.methods: {m!r} starts from {base!r}'s state, so it must come after it"
            )
    h = d.head_start
    ahead = any(split_method(m, config)[0] == "diff_instruct_ahead" for m in methods)
    if ahead and (not 0 < h < d.num_steps or h % k):
        raise ValueError(
            f"config.distill.head_start={h} must be a multiple of steps_per_call={k} in "
            f"(0, num_steps={d.num_steps})"
        )


def time_dist(config: ml_collections.ConfigDict) -> distill.TimeDistribution:
    d = config.distill
    return distill.TimeDistribution(
        d.time_dist, d.t_min, d.t_max, log_nsr_mean=d.log_nsr_mean, log_nsr_std=d.log_nsr_std
    )


def study_path(config: ml_collections.ConfigDict) -> VPSDE:
    """The path the study distils on: VP with `distill.path_beta_min`, `path_beta_max`, `T = 1`.

    `distill.t_min`, `t_max` and `generator.t_init` are its times; a teacher of another path is
    converted to its score (`on_study_path`).
    """
    d = config.distill
    return VPSDE(beta_min=d.path_beta_min, beta_max=d.path_beta_max)


def consistency_config(config: ml_collections.ConfigDict) -> cm.ConsistencyConfig:
    """The static settings of the `consistency` method (`config.consistency`)."""
    c = config.consistency
    return cm.ConsistencyConfig(
        sigma_min=c.sigma_min,
        sigma_max=c.sigma_max,
        sigma_data=c.sigma_data,
        rho=c.rho,
        num_scales=c.num_scales,
        metric=c.metric,
        weighting=c.weighting,
    )


def schedule(config: ml_collections.ConfigDict, method: str) -> distill.BacktrackSchedule:
    """The backtracking schedule of `method` (teacher-only methods never switch)."""
    s = config.schedule
    if split_method(method, config)[0] == "disback_adaptive":
        return distill.BacktrackSchedule(
            "adaptive",
            interval=s.adaptive_max_interval,
            min_interval=s.adaptive_min_interval,
            ratio=s.adaptive_ratio,
            ema_decay=s.adaptive_ema_decay,
        )
    return distill.BacktrackSchedule("fixed", interval=s.interval)


def _teacher_config(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, Any, bool]:
    """`(teacher workdir, its score-matching config, whether it must be trained here)`.

    Raises FileNotFoundError for a given teacher workdir without a run or checkpoint, and
    ValueError for a teacher of the wrong study or kind (images for a toy config and the reverse,
    other pixel scaling); nothing is written. An exact teacher (`teacher.kind = "exact"`) is built
    on a network teacher found or trained the same way.
    """
    if config.teacher.workdir:
        tdir = os.path.abspath(config.teacher.workdir)
        cfg_file = os.path.join(tdir, "config.json")
        if not os.path.isfile(cfg_file):
            raise FileNotFoundError(
                f"config.teacher.workdir={tdir} holds no score-matching run (no config.json); "
                "train one with configs/score_matching.py, or leave teacher.workdir empty to "
                "train it on the fly"
            )
        if not has_checkpoint(tdir):
            raise FileNotFoundError(
                f"the teacher run {tdir} has no checkpoint (missing or unfinished training); "
                "finish it, or leave teacher.workdir empty to train one on the fly"
            )
        with open(cfg_file) as f:
            tconfig = ml_collections.ConfigDict(json.load(f))
        if tconfig.get("study") not in TEACHER_STUDIES:
            raise ValueError(
                f"{tdir} is a {tconfig.get('study')!r} run, not one of the score-matching "
                f"studies {TEACHER_STUDIES}"
            )
        must_train = False
    else:
        module = importlib.import_module(f"configs.{config.teacher.config_module}")
        tconfig = module.get_config(config.teacher.variant)
        with tconfig.unlocked():
            tconfig.seed = config.seed
            tconfig.train.num_steps = config.teacher.num_steps
            tconfig.train.checkpoint_every = config.teacher.num_steps
        tdir = os.path.join(os.path.abspath(workdir), TEACHER_SUBDIR)
        must_train = True
    is_image = tconfig.study == "score_matching_images"
    if is_image != (config.data.kind == "image"):
        raise ValueError(
            f"the teacher in {tdir} is a {tconfig.study!r} run, but config.data.kind is "
            f"{config.data.kind!r}"
        )
    if is_image and config.data.scale != tconfig.data.scale:
        raise ValueError(
            f"config.data.scale={config.data.scale!r} but the teacher in {tdir} was trained on "
            f"images scaled to {tconfig.data.scale!r}"
        )
    if config.teacher.kind == "exact" and not _dsm_on_study_path(config, tconfig):
        raise ValueError(
            "teacher.kind='exact' needs a network teacher trained with DSM on the study's path "
            f"(VP), not the {tconfig.sde.name!r} path with the "
            f"{_sm_field(tconfig, 'loss.name')!r} loss of {tdir}"
        )
    return tdir, tconfig, must_train


def _sm_field(tconfig: ml_collections.ConfigDict, name: str) -> Any:
    from experiments import score_matching

    return score_matching.field(tconfig, name)


def _dsm_on_study_path(config: ml_collections.ConfigDict, tconfig: ml_collections.ConfigDict):
    """Whether the teacher was trained with DSM on the study's path (so needs no conversion)."""
    from experiments import score_matching

    native = score_matching.make_sde(tconfig) == study_path(config)
    return native and _sm_field(tconfig, "loss.name") == "dsm"


def _restore_ema_params(tdir: str, like: Any) -> Any:
    """The EMA parameters of the latest checkpoint of the score-matching run in `tdir`."""
    manager = ocp.CheckpointManager(
        os.fspath(checkpoint_dir(tdir)), options=ocp.CheckpointManagerOptions(read_only=True)
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"the teacher run {tdir} has no checkpoint")
        restored = manager.restore(step, args=ocp.args.StandardRestore())
    finally:
        manager.close()
    params = jax.tree.map(jnp.asarray, restored["ema_params"])
    if distill.param_fingerprint(params) != distill.param_fingerprint(like):
        raise ValueError(
            f"the checkpoint in {tdir} does not match the model described by its config.json"
        )
    return params


def teacher_study(tconfig: ml_collections.ConfigDict):
    """The experiment module of a teacher config: the toy or the image score-matching study."""
    from experiments import score_matching, score_matching_images

    return score_matching_images if tconfig.study == "score_matching_images" else score_matching


def load_teacher(config: ml_collections.ConfigDict, workdir: str) -> Teacher:
    """The teacher of `config`; trains it into `<workdir>/teacher` when none is given.

    Raises (before any training) the errors of `_teacher_config`, and ValueError when the
    teacher was trained on other data than `config.data.name`.
    """
    tdir, tconfig, must_train = _teacher_config(config, workdir)
    sm_exp = teacher_study(tconfig)
    setup = sm_exp.build(tconfig)
    if setup.data.name != config.data.name:
        raise ValueError(
            f"the teacher in {tdir} was trained on {setup.data.name!r}, but config.data.name is "
            f"{config.data.name!r}"
        )
    if must_train and not os.path.exists(os.path.join(tdir, sm_exp.EVAL_FILE)):
        # Trains, or finishes an interrupted training; a finished teacher is only loaded.
        sm_exp.train_and_evaluate(tconfig, tdir)
    params = _restore_ema_params(tdir, jax.eval_shape(setup.init, jax.random.key(0)))
    loss_fn, loss_name = None, ""
    if not _dsm_on_study_path(config, tconfig):
        # Its own loss on its own path, built before the setup moves to the study's path.
        loss_fn = sm_exp.make_loss(tconfig, setup.sde, setup.model)
        loss_name = f"{_sm_field(tconfig, 'loss.name')} loss on the {tconfig.sde.name} path"
    path = study_path(config)
    if setup.sde != path:
        setup = on_study_path(setup, path)
    if config.teacher.kind == "exact":
        setup = exact_teacher(setup, params)
    digest = distill.param_digest(params)
    # The same teacher object (and so the same score function) for every run in this process, so
    # that runs share their compiled programs.
    key = (config.teacher.kind, json.dumps(config_to_dict(tconfig), sort_keys=True), digest)
    if key not in _TEACHERS:
        _TEACHERS[key] = Teacher(tdir, tconfig, setup, params, digest, loss_fn, loss_name)
    return _TEACHERS[key]


def on_study_path(setup: Any, path: VPSDE) -> Any:
    """The setup of a teacher of another path of the family (EDM, linear flow matching, VP with
    other betas), with `path` as its SDE and its score on `path` as `score_fn`.

    `s(x_t, t) = (alpha_t D(x_t / alpha_t; sigma_t / alpha_t) - x_t) / sigma_t^2` with `D` the
    teacher's EDM denoiser (`setup.model.denoiser_fn`; `scorejax.edm.from_edm_denoiser`, EDM
    eq. 4): the same posterior mean at the same log-SNR, so a teacher's distillation signal does
    not depend on the path it was trained on. `setup.model` keeps the teacher's own forms.
    """
    score_fn = edm.from_edm_denoiser(setup.model.denoiser_fn, path=path, target="score")
    return dataclasses.replace(setup, sde=path, score_fn=score_fn)


def exact_teacher(setup: Any, base_params: Any) -> Any:
    """A toy setup whose score is the mixture's exact marginal score plus a zero residual.

    `s(params, x, t) = s*(x, t) + n(params, x, t) - n(base_params, x, t)`, `n` the setup's own
    (trained) network: at `params = base_params` the teacher is exact everywhere (no score
    mismatch on or off the data), while its parameters, their trained features included, are the
    network teacher's, so stage 1 can fine-tune it, a fake score can start from it and a denoiser
    generator built on it starts from the same weights as with the network teacher (its G0 is
    the exact posterior mean at `t_init`). Returns the setup; the teacher's parameters are
    `base_params`.
    """
    mixture, sde, network = setup.data.mixture, setup.sde, setup.score_fn
    if mixture is None:
        raise ValueError(f"{setup.data.name!r} has no exact score; teacher.kind='exact' needs one")
    base = jax.tree.map(jnp.asarray, base_params)

    def score_fn(p, x, t):
        return mixture.marginal_score(x, t, sde=sde) + network(p, x, t) - network(base, x, t)

    return dataclasses.replace(setup, score_fn=score_fn)


_TEACHERS: dict[tuple[str, str, str], Teacher] = {}
_PROGRAMS: dict[tuple[str, str], dict[str, Any]] = {}


def _programs(config: ml_collections.ConfigDict, teacher: Teacher) -> dict[str, Any]:
    """A per-process cache of the jitted and compiled functions of a run.

    Keyed by everything that determines them (the config without its seed, methods and teacher
    path, and the teacher's weights), so the seeds of a benchmark and a resumed run reuse the
    programs compiled for the first run.
    """
    cfg = config_to_dict(config)
    for name in ("seed", "methods"):
        cfg.pop(name)
    cfg["teacher"].pop("workdir")
    key = (json.dumps(cfg, sort_keys=True), teacher.digest)
    return _PROGRAMS.setdefault(key, {})


def make_generator(
    config: ml_collections.ConfigDict, teacher: Teacher, key: jax.Array
) -> Generator:
    """The one-step generator and its initial parameters (see `configs/distill.py`)."""
    g = config.generator
    setup = teacher.setup
    shape = setup.data.shape
    programs = _programs(config, teacher)
    module = MLPGenerator(
        data_dim=setup.data.dim, hidden_sizes=tuple(g.hidden_sizes), output_scale=g.output_scale
    )
    if "gen_apply" not in programs:
        if g.kind == "denoiser":
            apply = denoiser_generator(setup.score_fn, setup.sde, g.t_init)
        else:
            apply = module.apply
        programs["gen_apply"] = _shifted(apply, tuple(g.offset)) if tuple(g.offset) else apply
    if g.kind == "mlp":
        params = jax.jit(module.init)(key, jnp.zeros((1, *shape)))
    elif g.init == "teacher":
        params = jax.tree.map(jnp.copy, teacher.params)
    else:
        params = jax.jit(setup.init)(key)
    return Generator(programs["gen_apply"], params, shape)


def _shifted(apply: Callable, offset: tuple[float, ...]) -> Callable:
    """`apply` with a constant added to every sample: `G(z) = G_base(z) + offset`.

    Places the initial generator's samples away from the data (the far-G0 regime); the offset
    is part of the architecture, so the generator must learn to undo it.
    """
    shift = np.asarray(offset, np.float32)

    def shifted(params, z):
        return apply(params, z) + shift

    return shifted


def consistency_generator(config: ml_collections.ConfigDict, teacher: Teacher) -> Generator:
    """The `consistency` method's one-step generator `G(z) = f_theta(T z, T)`, from the teacher.

    `f_theta` is `scorejax.consistency.consistency_fn` around the network
    `scorejax.consistency.network_from_denoiser` of the teacher's EDM denoiser (its score on the
    study's path through `scorejax.edm.to_edm_denoiser`), so its parameters are the teacher's
    and it starts as the teacher's denoiser (Song et al. 2023), whatever `config.generator` says.
    """
    programs = _programs(config, teacher)
    if "cm_apply" not in programs:
        setup, cfg = teacher.setup, consistency_config(config)
        denoiser = edm.to_edm_denoiser(setup.score_fn, path=setup.sde, source="score")
        programs["cm_teacher"] = denoiser
        programs["cm_net"] = cm.network_from_denoiser(denoiser, config=cfg)
        programs["cm_apply"] = cm.one_step_generator(programs["cm_net"], config=cfg)
    params = jax.tree.map(jnp.copy, teacher.params)
    return Generator(programs["cm_apply"], params, teacher.setup.data.shape)


def _adam(lr: float, config: ml_collections.ConfigDict) -> Adam:
    d = config.distill
    return Adam(lr, b1=d.adam_b1, b2=d.adam_b2, grad_clip=d.grad_clip)


def record_path(
    config: ml_collections.ConfigDict, workdir: str, teacher: Teacher, gen: Generator, key
) -> DegradationPath:
    """Stage 1 into `<workdir>/path` (resumed or reused when already there); logs its profile."""
    s = config.stage1
    with Progress(s.num_steps, desc="stage 1: degradation path") as bar:
        path = record_degradation(
            os.path.join(workdir, PATH_SUBDIR),
            score_fn=teacher.setup.score_fn,
            teacher_params=teacher.params,
            generator_fn=gen.apply,
            generator_params=gen.init_params,
            sde=teacher.setup.sde,
            latent_shape=gen.latent_shape,
            key=key,
            num_nodes=s.num_nodes,
            num_steps=s.num_steps,
            probe_every=s.probe_every,
            batch_size=s.batch_size,
            optimizer=Adam(s.learning_rate, b1=s.adam_b1, b2=config.distill.adam_b2),
            dsm_weighting=teacher.config.loss.weighting,
            t_min=teacher.config.loss.t_min,
            probe_samples=s.probe_samples,
            time_dist=time_dist(config),
            callback=lambda step, loss: bar.update(step, loss=loss) if step % 25 == 0 else None,
            loss_fn=teacher.loss_fn,
            loss_name=teacher.loss_name,
        )
    logging.info("degradation path profile:\n%s", path.profile())
    return path


# ----------------------------------------------------------------------------------------------
# Stage 2.


class DistillState(struct.PyTreeNode):
    """Everything a stage-2 run needs to resume: generator, fake score and the walk's position."""

    step: jax.Array
    generator: TrainState
    fake: TrainState
    schedule: distill.ScheduleState


def plan(plan_name: str, num_nodes: int) -> tuple[int, int]:
    """`(path node the fake score starts from, recorded nodes the target walks along)` of a plan
    of `METHODS`.

    `diff_instruct_ahead` is the positive control of the convergence comparison: Diff-Instruct
    continued from its own state after `distill.head_start` updates (generator, fake score and
    batch counter), i.e. a method known to be `head_start` updates ahead. Its ratio to
    Diff-Instruct is `(reach - head_start) / reach` by construction (at most 0.5 when
    `head_start >= reach / 2`): the setting in which the study provably shows a speed-up of the
    size DisBack claims, through the same evaluation, smoothing and reach criterion.
    """
    return {
        "diff_instruct": (0, 0),
        "diff_instruct_warm": (num_nodes, 0),
        "disback_fixed": (num_nodes, num_nodes),
        "disback_adaptive": (num_nodes, num_nodes),
        "diff_instruct_ahead": (0, 0),
    }[plan_name]


def make_stage2_step(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    gen: Generator,
    sched: distill.BacktrackSchedule,
    mesh,
    weighting: str,
):
    """Jitted `step(state, path, key) -> (state, per-update metrics)`.

    `path` is `{"nodes": stacked node parameters [N + 1, ...], "gaps": [max(N, 1)] segment gaps}`.
    Runs `distill.steps_per_call` iterations in one `lax.scan`. One iteration: a generator update
    against target node `state.schedule.node` (any weighting: backtracking only selects the
    target's parameters), `distill.fake_steps` DSM updates of the fake score on fresh
    (stop-gradient) samples of the updated generator (the fake-to-generator update ratio, the same
    for every method; the teacher's own loss, `Teacher.loss_fn`), and one schedule update driven
    by the iteration's mean score gap.
    Iteration `s` draws its randomness from `fold_in(key, s)`, so a resumed run repeats an
    uninterrupted one exactly. The state is donated and replicated; the
    generator batch is split over the mesh's data axis.
    """
    d = config.distill
    sde, score_fn = teacher.setup.sde, teacher.setup.score_fn
    tdist = time_dist(config)
    gen_tx, fake_tx = _adam(d.gen_lr, config).build(), _adam(d.fake_lr, config).build()
    fake_weighting, fake_t_min = teacher.config.loss.weighting, teacher.config.loss.t_min
    z_sharding = batch_sharding(mesh)
    shape = (d.batch_size, *gen.latent_shape)

    def latent(key):
        return jax.lax.with_sharding_constraint(jax.random.normal(key, shape), z_sharding)

    def one(state: DistillState, path, key):
        it_key = jax.random.fold_in(key, state.step)
        k_gen, k_fake, k_z = jax.random.split(it_key, 3)
        target = distill.select_node(path["nodes"], state.schedule.node)
        fake_params = state.fake.params

        def gen_loss(params, z, k):
            loss, aux = distill.generator_loss(
                gen.apply,
                params,
                z,
                k,
                sde=sde,
                target_score_fn=score_fn,
                target_params=target,
                fake_score_fn=score_fn,
                fake_params=fake_params,
                weighting=weighting,
                time_dist=tdist,
            )
            return loss, {"score_gap": jnp.mean(aux.score_gap)}

        generator, gm = train_step(
            state.generator, latent(k_z), k_gen, loss_fn=gen_loss, tx=gen_tx, ema_decay=d.gen_ema
        )

        def fake_loss(params, x0, k):
            if teacher.loss_fn is not None:
                return teacher.loss_fn(params, jax.lax.stop_gradient(x0), k)
            return distill.fake_score_loss(
                score_fn, params, x0, k, sde=sde, weighting=fake_weighting, t_min=fake_t_min
            )

        fake = state.fake
        fake_losses = []
        for j in range(d.fake_steps):
            x0 = gen.apply(generator.params, latent(jax.random.fold_in(k_z, j + 1)))
            k_j = jax.random.fold_in(k_fake, j)
            fake, fm = train_step(fake, x0, k_j, loss_fn=fake_loss, tx=fake_tx, ema_decay=0.0)
            fake_losses.append(fm["loss"])
        gap = gm["score_gap"]
        new_schedule, switched, gap_ema = distill.schedule_update(
            state.schedule, gap, schedule=sched, segment_gaps=path["gaps"]
        )
        metrics = {
            "gen_loss": gm["loss"],
            "gen_grad_norm": gm["grad_norm"],
            "score_gap": gap,
            "gap_ema": gap_ema,
            "fake_loss": jnp.mean(jnp.stack(fake_losses)),
            "target_node": state.schedule.node,
            "switched": switched,
        }
        new = DistillState(state.step + 1, generator, fake, new_schedule)
        return new, metrics

    def many(state, path, key):
        if d.steps_per_call == 1:
            # No scan of length one: XLA's CPU backend runs a U-Net update inside a loop body
            # several times slower than the same update at the top level.
            state, metrics = one(state, path, key)
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(lambda s, _: one(s, path, key), state, None, d.steps_per_call)

    rep = replicated_sharding(mesh)
    return jax.jit(many, in_shardings=(rep, rep, rep), out_shardings=(rep, rep), donate_argnums=0)


class ConsistencyState(struct.PyTreeNode):
    """Everything a `consistency` run needs to resume: the student and its target network.

    `generator` holds the online parameters `theta` (its `ema_params`, decay `distill.gen_ema`,
    are the evaluated weights, as for every method); `target` is `theta^-`, the EMA (decay
    `consistency.target_ema`) that gives the CD loss its stop-gradient targets.
    """

    step: jax.Array
    generator: TrainState
    target: Any


def _consistency_adam(config: ml_collections.ConfigDict) -> Adam:
    c, d = config.consistency, config.distill
    return Adam(c.lr, b1=c.adam_b1, b2=d.adam_b2, grad_clip=d.grad_clip)


def make_consistency_step(config: ml_collections.ConfigDict, teacher: Teacher, mesh):
    """Jitted `step(state, teacher_params, key) -> (state, per-update metrics)` of consistency
    distillation (Song et al. 2023, Algorithm 2).

    Runs `distill.steps_per_call` iterations in one `lax.scan`. Iteration `s` draws a batch of
    `distill.batch_size` data samples (split over the mesh's data axis) and the loss's noise from
    `fold_in(key, s)`, makes one Adam update of the student on `scorejax.consistency.cd_loss`
    (the teacher's Heun step between adjacent times of `consistency_config(config)`, targets from
    `state.target`), updates the evaluated EMA, then the target network,
    `theta^- <- mu theta^- + (1 - mu) theta` (`scorejax.consistency.ema_update`, `mu =
    consistency.target_ema`). A resumed run repeats an uninterrupted one exactly. Needs
    `consistency_generator(config, teacher)` first (its network). The state is donated and
    replicated.
    """
    d, c = config.distill, config.consistency
    cfg = consistency_config(config)
    programs = _programs(config, teacher)
    net, denoiser = programs["cm_net"], programs["cm_teacher"]
    tx = _consistency_adam(config).build()
    sample, x_sharding = teacher.setup.data.sample, batch_sharding(mesh)

    def one(state: ConsistencyState, teacher_params, key):
        k_data, k_loss = jax.random.split(jax.random.fold_in(key, state.step))
        x0 = jax.lax.with_sharding_constraint(sample(k_data, d.batch_size), x_sharding)

        def loss_fn(params, x0, k):
            loss, _ = cm.cd_loss(
                net,
                params,
                x0,
                k,
                target_params=state.target,
                teacher_fn=denoiser,
                teacher_params=teacher_params,
                config=cfg,
            )
            return loss, {}

        generator, m = train_step(
            state.generator, x0, k_loss, loss_fn=loss_fn, tx=tx, ema_decay=d.gen_ema
        )
        target = cm.ema_update(state.target, generator.params, decay=c.target_ema)
        metrics = {"cd_loss": m["loss"], "gen_grad_norm": m["grad_norm"]}
        return ConsistencyState(state.step + 1, generator, target), metrics

    def many(state, teacher_params, key):
        if d.steps_per_call == 1:
            state, metrics = one(state, teacher_params, key)
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(lambda s, _: one(s, teacher_params, key), state, None, d.steps_per_call)

    rep = replicated_sharding(mesh)
    return jax.jit(many, in_shardings=(rep, rep, rep), out_shardings=(rep, rep), donate_argnums=0)


def _walk(state: DistillState | ConsistencyState) -> distill.ScheduleState:
    """The backtracking walk of a run (a consistency run has none: the teacher throughout)."""
    return state.schedule if isinstance(state, DistillState) else distill.schedule_init(0)


# ----------------------------------------------------------------------------------------------
# Evaluation.


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Sample-quality metrics of a generator against a fixed set of true samples.

    Fixed keys and a fixed reference set, so every method and every step is scored on the same
    footing: the same latents, the same true samples, the same MMD bandwidths.
    """

    evaluate: Callable[[Any], dict[str, jax.Array]]
    sample: Callable[[Any], jax.Array]
    true: np.ndarray
    null: dict[str, float]


def _evaluator_programs(
    config: ml_collections.ConfigDict, teacher: Teacher, gen: Generator
) -> dict[str, Any]:
    """The evaluator's compiled functions, cached per generator architecture (`gen.apply`)."""
    return _programs(config, teacher).setdefault(("evaluator", gen.apply), {})


def make_evaluator(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    gen: Generator,
    key: jax.Array,
    workdir: str,
) -> Evaluator:
    """The evaluator of the config's data kind (`make_toy_evaluator`, `make_image_evaluator`)."""
    if config.data.kind == "image":
        return make_image_evaluator(config, teacher, gen, key, workdir)
    return make_toy_evaluator(config, teacher, gen, key)


def make_toy_evaluator(
    config: ml_collections.ConfigDict, teacher: Teacher, gen: Generator, key: jax.Array
) -> Evaluator:
    """Metrics against fresh true samples of a 2-D toy; `null` scores a second true sample set.

    MMD^2 (RBF, median bandwidths), sliced W2 and energy distance; for mixtures also the mode
    coverage, the in-mode fraction, the mode-weight total variation and the teacher's exact score
    mismatch `E sigma_t^2 ||s_teacher - s*||^2` on the diffused generator samples.
    """
    e = config.eval
    setup = teacher.setup
    sde, mixture, score_fn = setup.sde, setup.data.mixture, setup.score_fn
    tdist = time_dist(config)
    k_true, k_null, k_z, k_sw, k_mis = jax.random.split(key, 5)
    n = e.num_samples
    true = setup.data.sample(k_true, n)
    true_b = setup.data.sample(k_null, n)
    # Everything fixed is passed as an argument, not closed over: XLA would otherwise constant-fold
    # the reference kernel matrices at compile time.
    consts = {
        "true": true,
        "bandwidths": sm.median_bandwidth(true, true_b)
        * jnp.asarray(sm.DEFAULT_BANDWIDTH_MULTIPLIERS),
        "z": jax.random.normal(k_z, (n, *gen.latent_shape)),
        "teacher": teacher.params,
        "mixture": mixture,
        "k_sw": k_sw,
        "k_mis": k_mis,
    }

    def quality(x, c):
        out = {
            "mmd2": sm.mmd2_rbf(x, c["true"], c["bandwidths"]),
            "sliced_w2": sm.sliced_wasserstein(
                x, c["true"], c["k_sw"], num_projections=e.num_projections
            ),
            "energy": sm.energy_distance(x, c["true"]),
        }
        if c["mixture"] is not None:
            mix = c["mixture"]
            pi = jnp.exp(mix.log_weights)
            # Samples within 3 standard deviations of a component's mean belong to that mode; a
            # mode is covered when it holds at least a quarter of its true weight.
            near = sm.near_modes(x, mix.means, mix.stds, num_stds=3.0)
            out["mode_coverage"] = sm.mode_coverage(jnp.mean(near, axis=0), pi, min_share=0.25)
            out["in_mode_fraction"] = sm.in_mode_fraction(x, mix.means, mix.stds, num_stds=3.0)
            out["mode_tv"] = sm.mode_tv(sm.mode_weights(x, mix.means), pi)
            # The teacher's score mismatch on these samples, diffused (exact s*): on the
            # generator's samples it is what score distillation suffers; on true samples (the
            # null row) it is the teacher's error where it was trained.
            out["score_mismatch"] = distill.score_distance(
                lambda x_t, t: score_fn(c["teacher"], x_t, t),
                lambda x_t, t: mix.marginal_score(x_t, t, sde=sde),
                x,
                c["k_mis"],
                sde=sde,
                time_dist=tdist,
            )
        return out

    def sample(gen_params, c):
        return gen.apply(gen_params, c["z"])

    def evaluate(gen_params, c):
        x = sample(gen_params, c)
        out = quality(x, c)
        out["nonfinite"] = jnp.sum(~jnp.all(jnp.isfinite(x), -1))
        return out

    programs = _evaluator_programs(config, teacher, gen)
    if "evaluate" not in programs:
        programs.update(
            quality=jax.jit(quality), evaluate=jax.jit(evaluate), sample=jax.jit(sample)
        )
    null = {k: float(v) for k, v in programs["quality"](true_b, consts).items()}
    evaluate_jit, sample_jit = programs["evaluate"], programs["sample"]
    return Evaluator(
        lambda p: evaluate_jit(p, consts),
        lambda p: sample_jit(p, consts),
        np.asarray(true),
        null,
    )


def make_image_evaluator(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    gen: Generator,
    key: jax.Array,
    workdir: str,
) -> Evaluator:
    """Metrics of `eval.num_samples` generated images (clipped to the data range) against the
    `data.eval_split` images; `null` scores the first `eval.num_samples` images of `data.split`
    the same way.

    Pixel-space MMD^2, sliced W2 and energy distance (images flattened to `[N, H*W*C]`), KID on
    the penultimate features of the teacher study's classifier (trained with the teacher config's
    `eval.classifier` settings, cached as in that study), the classifier's confident-prediction
    rate (max probability >= `eval.classifier.confidence_threshold`), and per predicted class:
    `mode_coverage` (share of classes holding at least a quarter of their share of the reference
    labels) and `mode_tv` (total variation between predicted-class and label frequencies).
    """
    from experiments import score_matching_images as smi

    e, tc = config.eval, teacher.config
    data_dir = config.data.data_dir or tc.data.data_dir or None
    load = functools.partial(load_arrays, config.data.name, data_dir=data_dir, scale=tc.data.scale)
    ref, other = load(config.data.eval_split), load(config.data.split)
    train_data = other if config.data.split == "train" else load("train")
    cache = teacher.workdir
    if not os.path.exists(os.path.join(cache, smi.CLASSIFIER_FILE)):
        cache = workdir
    classify, accuracy = smi.classifier(tc, cache, train_data, ref)
    logging.info("sample-quality classifier: test accuracy %.4f", accuracy)
    lo = -1.0 if tc.data.scale == "[-1,1]" else 0.0
    ref_x = jnp.asarray(ref["image"])
    # As many images as samples (when the split has them): the null needs no second program.
    other_x = jnp.asarray(other["image"][: e.num_samples])
    num_classes = int(train_data["label"].max()) + 1
    k_z, k_sw, k_kid = jax.random.split(key, 3)
    flat = lambda x: x.reshape(x.shape[0], -1)
    consts = {
        "true": flat(ref_x),
        "bandwidths": sm.median_bandwidth(flat(ref_x), flat(other_x))
        * jnp.asarray(sm.DEFAULT_BANDWIDTH_MULTIPLIERS),
        "true_features": classify(ref_x)[1],
        "pi": jnp.bincount(jnp.asarray(ref["label"]), length=num_classes) / ref_x.shape[0],
        "z": jax.random.normal(k_z, (e.num_samples, *gen.latent_shape)),
        "k_sw": k_sw,
        "k_kid": k_kid,
    }
    threshold = tc.eval.classifier.confidence_threshold

    def quality(x, logits, features, c):
        out = {
            "mmd2": sm.mmd2_rbf(flat(x), c["true"], c["bandwidths"]),
            "sliced_w2": sm.sliced_wasserstein(
                flat(x), c["true"], c["k_sw"], num_projections=e.num_projections
            ),
            "energy": sm.energy_distance(flat(x), c["true"]),
        }
        out["kid"], out["kid_std"] = sm.kid(
            features, c["true_features"], c["k_kid"], num_subsets=tc.eval.kid_subsets
        )
        probs = jax.nn.softmax(logits, -1)
        out["confident_rate"] = jnp.mean(jnp.max(probs, -1) >= threshold)
        w = jnp.mean(jax.nn.one_hot(jnp.argmax(logits, -1), num_classes), axis=0)
        out["mode_coverage"] = sm.mode_coverage(w, c["pi"], min_share=0.25)
        out["mode_tv"] = sm.mode_tv(w, c["pi"])
        out["nonfinite"] = jnp.sum(~jnp.all(jnp.isfinite(flat(x)), -1))
        return out

    def sample(gen_params, c):
        return jnp.clip(gen.apply(gen_params, c["z"]), lo, 1.0)

    programs = _evaluator_programs(config, teacher, gen)
    if "quality" not in programs:
        programs.update(quality=jax.jit(quality), sample=jax.jit(sample))
    quality_jit, sample_jit = programs["quality"], programs["sample"]

    def evaluate(gen_params):
        x = sample_jit(gen_params, consts)
        return quality_jit(x, *classify(x), consts)

    null = {k: float(v) for k, v in quality_jit(other_x, *classify(other_x), consts).items()}
    return Evaluator(evaluate, lambda p: sample_jit(p, consts), np.asarray(ref_x), null)


# ----------------------------------------------------------------------------------------------
# One method's stage-2 run.


def _last_train_seconds(workdir: str, start: int) -> float:
    if start == 0 or not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return 0.0
    seconds = [
        r["train_seconds"]
        for r in read_metrics(workdir)
        if "train_seconds" in r and r["step"] <= start
    ]
    return seconds[-1] if seconds else 0.0


def run_method(
    config: ml_collections.ConfigDict,
    workdir: str,
    method: str,
    teacher: Teacher,
    gen: Generator,
    path: dict[str, Any],
    evaluator: Evaluator,
    key: jax.Array,
    save_head_start: bool = False,
) -> dict[str, Any]:
    """Stage 2 of `method` in `workdir` (resumed from its latest checkpoint); returns its curves.

    `path`: `{"nodes": [N + 1, ...] stacked node parameters, "gaps": segment gaps}` (`N = 0`: the
    teacher alone, for runs without stage 1). `save_head_start`: also keep the state after
    `distill.head_start` updates in `<workdir>/head_start`, where `diff_instruct_ahead` (in a
    sibling directory named after it) starts from.

    The compiled stage-2 step is cached by schedule, so methods that differ only in their
    starting point (the Diff-Instruct variants and fixed-interval DisBack) compile once.

    `consistency` (consistency distillation) runs `make_consistency_step` on a
    `ConsistencyState` started from the teacher, `gen` being `consistency_generator`'s; it
    distils from the teacher alone (`path` unused), with the same updates, evaluations,
    checkpoints and resumption as the other methods.
    """
    final_file = os.path.join(workdir, FINAL_FILE)
    if os.path.exists(final_file):
        with open(final_file) as f:
            return json.load(f)
    os.makedirs(workdir, exist_ok=True)
    d = config.distill
    k = d.steps_per_call
    mesh = make_mesh()
    sched = schedule(config, method)
    num_nodes = jax.tree.leaves(path["nodes"])[0].shape[0] - 1
    plan_name, weighting = split_method(method, config)
    if plan_name == "consistency":
        state = ConsistencyState(
            step=jnp.zeros((), jnp.int32),
            generator=TrainState.create(
                jax.tree.map(jnp.copy, gen.init_params), _consistency_adam(config).build()
            ),
            target=jax.tree.map(jnp.copy, gen.init_params),
        )
    else:
        fake_node, walk_nodes = plan(plan_name, num_nodes)
        fake_params = jax.tree.map(lambda a: a[fake_node], path["nodes"])
        state = DistillState(
            step=jnp.zeros((), jnp.int32),
            # A copy: the state is donated to the step and must not take the shared weights.
            generator=TrainState.create(
                jax.tree.map(jnp.copy, gen.init_params), _adam(d.gen_lr, config).build()
            ),
            fake=TrainState.create(fake_params, _adam(d.fake_lr, config).build()),
            schedule=distill.schedule_init(walk_nodes),
        )
    state = put_replicated(state, mesh)
    # Updates already in `state` before this run's first one (the positive control's head start).
    offset = 0
    if plan_name == "diff_instruct_ahead":
        source = os.path.join(
            os.path.dirname(workdir), baseline_of(method, config), HEAD_START_SUBDIR
        )
        with Checkpointer(source, save_every=1, keep=1, read_only=True) as head:
            if head.latest_step() != d.head_start:
                raise FileNotFoundError(
                    f"{method} starts from {source} at update {d.head_start}, which holds "
                    f"{head.latest_step()}; run its baseline first"
                )
            state = head.restore(d.head_start, state)
        offset = d.head_start
    path_gaps = np.asarray(path["gaps"])
    # What the step distils from: the path's nodes, or the teacher alone.
    source = put_replicated(teacher.params if plan_name == "consistency" else path, mesh)
    key = put_replicated(key, mesh)
    step_fns = _programs(config, teacher).setdefault("stage2", {})
    program_key = "consistency" if plan_name == "consistency" else (sched, num_nodes, weighting)
    if program_key not in step_fns:
        # Compiled ahead of time, so that the reported training seconds exclude compilation.
        if plan_name == "consistency":
            jitted = make_consistency_step(config, teacher, mesh)
        else:
            jitted = make_stage2_step(config, teacher, gen, sched, mesh, weighting)
        step_fns[program_key] = jitted.lower(state, source, key).compile()
    step_fn = step_fns[program_key]

    with Checkpointer(
        checkpoint_dir(workdir), save_every=config.checkpoint_every, keep=config.keep_checkpoints
    ) as ckpt:
        state = ckpt.restore_or(state)
        start = int(state.step) - offset
        seconds = _last_train_seconds(workdir, start)
        if start:
            logging.info(
                "%s: resuming at update %d, target node %d", method, start, int(_walk(state).node)
            )
        with (
            MetricWriter(workdir, resume_step=start or None) as writer,
            Progress(d.num_steps, initial=start, desc=f"stage 2: {method}") as bar,
        ):
            if start == 0:
                record = _eval_record(evaluator, state, 0.0)
                writer.write(0, {"target_node": int(_walk(state).node), **record})
            for step in range(start + k, d.num_steps + 1, k):
                t0 = time.perf_counter()
                state, metrics = step_fn(state, source, key)
                metrics = jax.device_get(metrics)
                seconds += time.perf_counter() - t0
                for i in np.flatnonzero(metrics.get("switched", ())):
                    at = step - k + int(i) + 1
                    node = int(metrics["target_node"][i]) - 1
                    gap = float(metrics["gap_ema"][i])
                    logging.info(
                        "%s: update %d: target switches to node %d (score gap %.4g, recorded "
                        "gap of the node left %.4g)",
                        method,
                        at,
                        node,
                        gap,
                        float(path_gaps[node + 1]),
                    )
                    writer.write(at, {"switch_to_node": node, "switch_gap": gap})
                if "score_gap" in metrics:
                    bar.update(step, gap=float(np.mean(metrics["score_gap"])))
                else:
                    bar.update(step, loss=float(np.mean(metrics["cd_loss"])))
                if step % config.eval.every == 0:
                    record = {
                        k_: float(np.mean(v)) for k_, v in metrics.items() if k_ != "switched"
                    }
                    # The node the next update targets, i.e. the one a checkpoint here holds.
                    record["target_node"] = int(_walk(state).node)
                    record.update(_eval_record(evaluator, state, seconds))
                    writer.write(step, record)
                if save_head_start and step == d.head_start:
                    head_dir = os.path.join(workdir, HEAD_START_SUBDIR)
                    with Checkpointer(head_dir, save_every=1, keep=1, async_save=False) as head:
                        head.save(step, state)
                ckpt.maybe_save(step, state)
            ckpt.save(d.num_steps, state)
    result = _curves(workdir)
    result["method"] = method
    result["final_target_node"] = int(_walk(state).node)
    result["num_switches"] = int(_walk(state).num_switches)
    write_json(final_file, result)
    return result


def _eval_record(
    evaluator: Evaluator, state: DistillState | ConsistencyState, seconds: float
) -> dict[str, float]:
    out = jax.device_get(evaluator.evaluate(state.generator.ema_params))
    return {"train_seconds": seconds, **{f"eval/{k}": float(v) for k, v in out.items()}}


def _curves(workdir: str) -> dict[str, Any]:
    """Evaluation curves and switch events of a finished run, read back from metrics.jsonl."""
    records = read_metrics(workdir)
    evals = [r for r in records if "eval/mmd2" in r]
    curves = {
        "step": [r["step"] for r in evals],
        "train_seconds": [r["train_seconds"] for r in evals],
    }
    for name in evals[0]:
        if name.startswith("eval/"):
            curves[name[5:]] = [r[name] for r in evals]
    curves["target_node"] = [r.get("target_node", None) for r in evals]
    switches = [
        [r["step"], r["switch_to_node"], r["switch_gap"]] for r in records if "switch_to_node" in r
    ]
    return {"curves": curves, "switches": switches}


# ----------------------------------------------------------------------------------------------
# Comparison.


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average over `window` evaluations (shorter at the start)."""
    v = np.asarray(values, np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def updates_to_reach(
    steps: list[int], values: list[float], level: float, window: int
) -> int | None:
    """First evaluated update count whose smoothed value is <= `level`, or None if never."""
    s = smooth(values, window)
    hits = np.flatnonzero(s <= level)
    return int(steps[hits[0]]) if hits.size else None


# The "final" value of a curve: its mean over this last fraction of the evaluations (the plateau;
# a single last evaluation is too noisy to compare methods or to define a level to reach).
FINAL_FRACTION = 0.2
# A method has reached the baseline's final MMD^2 once its smoothed MMD^2 is within this relative
# tolerance of it: the plateau fluctuates by tens of percent between evaluations, so without it a
# baseline whose curve rises at the end would never reach its own final level.
REACH_TOLERANCE = 0.1


def final_value(values: list[float]) -> float:
    """Mean of the last `FINAL_FRACTION` of `values` (at least one)."""
    k = max(1, int(round(FINAL_FRACTION * len(values))))
    return float(np.mean(values[-k:]))


# Metric columns of results.md, in order: (curve key, header, format); absent keys are skipped.
TABLE_COLUMNS = (
    ("mmd2", "MMD^2", "{:.2e}"),
    ("sliced_w2", "SW2", "{:.3g}"),
    ("energy", "energy", "{:.2e}"),
    ("kid", "KID", "{:.3g}"),
    ("confident_rate", "confident", "{:.3f}"),
    ("mode_coverage", "mode coverage", "{:.3g}"),
    ("in_mode_fraction", "in-mode fraction", "{:.3g}"),
    ("score_mismatch", "score mismatch", "{:.3g}"),
)


def compare(results: dict[str, dict], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Final metrics and convergence speed of every method against its Diff-Instruct baseline.

    Final values are means over the last `FINAL_FRACTION` of the evaluations. The level of a
    baseline (`baseline_of`: Diff-Instruct with the method's weighting) is its final MMD^2 times
    `1 + REACH_TOLERANCE`; for every method, the first update count at which its MMD^2, smoothed
    over `eval.smooth` evaluations, reaches its baseline's level, and the ratio to the
    baseline's own count (< 1: faster).
    """
    window = config.eval.smooth
    table: dict[str, Any] = {}
    levels: dict[str, tuple[float, int | None]] = {}
    for name, r in results.items():
        if split_method(name, config)[0] == "diff_instruct":
            c = r["curves"]
            level = final_value(c["mmd2"]) * (1 + REACH_TOLERANCE)
            levels[name] = (level, updates_to_reach(c["step"], c["mmd2"], level, window))
    for method, r in results.items():
        c = r["curves"]
        row = {k: final_value(c[k]) for k, _, _ in TABLE_COLUMNS if k in c}
        row["train_seconds"] = c["train_seconds"][-1]
        row["num_switches"] = r["num_switches"]
        row["baseline"] = baseline_of(method, config)
        # Without its baseline in the run, a method has no level to reach.
        level, base_steps = levels.get(row["baseline"], (None, None))
        reach = None if level is None else updates_to_reach(c["step"], c["mmd2"], level, window)
        row["updates_to_baseline_mmd"] = reach
        row["ratio_to_baseline"] = reach / base_steps if reach is not None and base_steps else None
        table[method] = row
    return {
        "baseline_levels": {k: v[0] for k, v in levels.items()},
        "methods": table,
    }


def _fmt(v, f="{:.3g}") -> str:
    return "-" if v is None else f.format(v)


def write_results_md(
    path: str,
    comparison: dict,
    stage1: dict | None,
    config,
    null: dict[str, float],
    step0: dict[str, float] | None = None,
) -> None:
    """The comparison as a markdown table, with the reference row `null` (true samples) and,
    for mixtures, the teacher's score mismatch at step 0 (`step0_mismatch`)."""
    rows = comparison["methods"]
    columns = [c for c in TABLE_COLUMNS if any(c[0] in r for r in rows.values())]
    reference = "train split" if config.data.kind == "image" else "two true sets"
    lines = [
        f"# distill `{config.data.name}` seed {config.seed}: {config.distill.num_steps} generator "
        f"updates, weighting `{config.distill.weighting}`",
        "",
        "| method | "
        + " | ".join(h for _, h, _ in columns)
        + " | updates to DI's final MMD^2 | ratio | switches | stage-2 s |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for m, r in rows.items():
        lines.append(
            f"| {m} | "
            + " | ".join(_fmt(r.get(k), f) for k, _, f in columns)
            + f" | {_fmt(r.get('updates_to_baseline_mmd'), '{}')} | "
            f"{_fmt(r.get('ratio_to_baseline'), '{:.2f}')} | {r['num_switches']} | "
            f"{r['train_seconds']:.1f} |"
        )
    lines.append(
        f"| {reference} | " + " | ".join(_fmt(null.get(k), f) for k, _, f in columns) + " | | | | |"
    )
    if step0 is not None:
        lines += [
            "",
            "Teacher's score mismatch E sigma^2 ||s_teacher - s*||^2 at step 0: "
            f"{step0['g0']:.3g} on G0's diffused samples, {step0['data']:.3g} on diffused data.",
        ]
    if stage1 is not None:
        fmt = lambda v: ", ".join(f"{x:.3g}" for x in v)
        lines += [
            "",
            f"Stage 1 (degradation path, shared by DisBack and the warm-started control): "
            f"{stage1['steps']} fake-score updates; {stage1['num_nodes']} nodes at updates "
            f"{', '.join(map(str, stage1['node_steps']))}; distance to the teacher "
            f"E sigma^2 ||s_k - s_teacher||^2 on G0's diffused samples: {fmt(stage1['distances'])}"
            f"; to the last node: {fmt(stage1['to_final'])}.",
        ]
    lines += [
        "",
        f"Final values are means over the last {FINAL_FRACTION:.0%} of the evaluations; "
        f"'updates to DI's final MMD^2': first evaluation at which the MMD^2 (mean of "
        f"{config.eval.smooth} evaluations) is within {REACH_TOLERANCE:.0%} of that level; "
        f"'ratio': that count over Diff-Instruct's own; '{reference}': the metrics of true "
        "samples, the floor a perfect generator would reach.",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# Convergence panels, in order: (curve key, title, log scale); absent keys are skipped.
PANELS = (
    ("mmd2", "MMD$^2$", True),
    ("sliced_w2", "sliced $W_2$", True),
    ("energy", "energy distance", True),
    ("kid", "KID (classifier features)", False),
    ("confident_rate", "confident-prediction rate", False),
    ("mode_coverage", "mode coverage", False),
    ("score_mismatch", r"teacher mismatch $E\,\sigma^2|s_T - s^*|^2$", True),
    ("target_node", "target node", False),
)


def write_plots(
    workdir: str,
    results: dict,
    evaluator: Evaluator,
    samples: dict,
    title: str,
    config: ml_collections.ConfigDict,
) -> None:
    """`convergence.png` (metrics against generator updates) and `samples.png` (2-D scatter
    plots over true samples, or image grids next to the reference images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = config.data.kind == "image"
    reference = "train split" if image else "two true sets"
    panels = [p for p in PANELS if any(p[0] in r["curves"] for r in results.values())]
    cols = int(np.ceil(len(panels) / 2))
    fig, axes = plt.subplots(2, cols, figsize=(4.7 * cols, 7.5), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, (key, label, log) in zip(axes.ravel(), panels, strict=False):
        for method, r in results.items():
            c = r["curves"]
            if key in c:
                ax.plot(c["step"], c[key], label=method, lw=1.4)
        # An unbiased estimate of a null distance can be negative: no line on a log axis then.
        if key in evaluator.null and (evaluator.null[key] > 0 or not log):
            ax.axhline(evaluator.null[key], color="k", ls=":", lw=1, label=reference)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("generator updates")
        ax.set_title(label, fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "convergence.png"), dpi=100)
    plt.close(fig)

    if image:
        samples = {**samples, "reference images": evaluator.true}
    names = list(samples)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4))
    lim = float(np.percentile(np.abs(evaluator.true), 99.9)) * 1.3
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        x = samples[name]
        if image:
            lo = -1.0 if config.data.scale == "[-1,1]" else 0.0
            grid = (image_grid(x[:64], 8, lo) - lo) / (1.0 - lo)
            ax.imshow(np.clip(grid, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.scatter(evaluator.true[:, 0], evaluator.true[:, 1], s=1, color="0.75", linewidths=0)
            ax.scatter(x[:, 0], x[:, 1], s=1.5, color="tab:red", alpha=0.6, linewidths=0)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "samples.png"), dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Entry point.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run every method of `config` in `workdir` (resuming what is there); returns the comparison.

    Also written to `<workdir>/results.json` and `results.md`.
    """
    _check_config(config)
    methods = methods_of(config)
    # Fails on a given teacher without a checkpoint before anything is written here.
    _teacher_config(config, workdir)
    workdir = str(prepare_workdir(config, workdir))
    teacher = load_teacher(config, workdir)
    root = jax.random.key(config.seed)
    k_gen, k_stage1, k_train, k_eval = (jax.random.fold_in(root, 100 + i) for i in range(4))
    gen = make_generator(config, teacher, k_gen)
    evaluator = make_evaluator(config, teacher, gen, k_eval, workdir)

    cd_gen = cd_evaluator = None
    if "consistency" in methods:
        # Its own generator, evaluated on the same true samples, latents and bandwidths.
        cd_gen = consistency_generator(config, teacher)
        cd_evaluator = make_evaluator(config, teacher, cd_gen, k_eval, workdir)

    path = None
    without_path = ("diff_instruct", "diff_instruct_ahead", "consistency")
    if any(split_method(m, config)[0] not in without_path for m in methods):
        path = record_path(config, workdir, teacher, gen, k_stage1)
        nodes = {"nodes": path.stacked(teacher.params), "gaps": np.asarray(path.segment_gaps)}
    else:
        nodes = {
            "nodes": jax.tree.map(lambda a: a[None], teacher.params),
            "gaps": np.zeros((1,), np.float32),
        }

    results = {}
    samples = {"initial generator": np.asarray(evaluator.sample(gen.init_params))}
    for method in methods:
        cd = method == "consistency"
        results[method] = run_method(
            config,
            os.path.join(workdir, method),
            method,
            teacher,
            cd_gen if cd else gen,
            nodes,
            cd_evaluator if cd else evaluator,
            k_train,
            save_head_start=any(
                split_method(m, config)[0] == "diff_instruct_ahead"
                and baseline_of(m, config) == method
                for m in methods
            ),
        )
        params = _final_generator_params(os.path.join(workdir, method), cd_gen if cd else gen)
        samples[method] = np.asarray((cd_evaluator if cd else evaluator).sample(params))

    comparison = compare(results, config)
    stage1 = None
    if path is not None:
        stage1 = {
            k: path.meta[k]
            for k in ("num_nodes", "steps", "node_steps", "distances", "to_final", "segment_gaps")
        }
    out = {
        "comparison": comparison,
        "stage1": stage1,
        "step0_mismatch": step0_mismatch(results, evaluator),
        "null": evaluator.null,
        "curves": {m: r["curves"] for m, r in results.items()},
        "switches": {m: r["switches"] for m, r in results.items()},
    }
    write_json(os.path.join(workdir, RESULTS_FILE), out)
    write_results_md(
        os.path.join(workdir, "results.md"),
        comparison,
        stage1,
        config,
        evaluator.null,
        out["step0_mismatch"],
    )
    write_plots(
        workdir,
        results,
        evaluator,
        samples,
        f"{config.data.name}, seed {config.seed}: one-step distillation "
        f"({config.distill.weighting} weighting)",
        config,
    )
    with open(os.path.join(workdir, "results.md")) as f:
        print(f.read(), flush=True)
    return out


def step0_mismatch(results: dict, evaluator: Evaluator) -> dict[str, float] | None:
    """The teacher's score mismatch `E sigma_t^2 ||s_teacher - s*||^2` on the initial generator's
    diffused samples (`g0`) and on diffused true samples (`data`); None without an exact score."""
    first = next(iter(results.values()))["curves"]
    if "score_mismatch" not in first:
        return None
    return {"g0": first["score_mismatch"][0], "data": evaluator.null["score_mismatch"]}


def _final_generator_params(method_dir: str, gen: Generator | None) -> Any:
    """The EMA generator parameters of the last checkpoint of a method run (checked against
    `gen`'s architecture when given)."""
    # Orbax needs an absolute path.
    directory = os.path.abspath(os.fspath(checkpoint_dir(method_dir)))
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    finally:
        manager.close()
    params = jax.tree.map(jnp.asarray, restored["generator"]["ema_params"])
    if gen is not None and distill.param_fingerprint(params) != distill.param_fingerprint(
        gen.init_params
    ):
        raise ValueError(f"the checkpoint in {method_dir} holds another generator architecture")
    return params
