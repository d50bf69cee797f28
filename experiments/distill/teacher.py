"""The distillation study's teacher: found or trained, loaded, and put on the study's path.

The teacher may come from any path of the Gaussian family (VP, VE, EDM, linear flow matching)
and any loss (DSM, EDM, FM): the study distils on its own VP path (`methods.study_path`), so
another path's teacher is converted to its score there through its EDM denoiser
(`on_study_path`), and keeps its own training loss for stage 1 and the fake score
(`Teacher.loss_fn`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from experiments.distill.methods import study_path
from scorejax import backtracking, edm
from scorejax.score_sdes import VPSDE
from scorejax.train import checkpoint_dir, has_checkpoint
from scorejax.train.precision import CONFIG_FIELD, RECORD_DEFAULTS

# The score-matching studies a teacher may come from, by the `study` field of its config.json.
TEACHER_STUDIES = ("score_matching", "score_matching_images")
TEACHER_SUBDIR = "teacher"


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
    digest: str  # scorejax.backtracking.param_digest of `params`
    loss_fn: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]] | None = None
    loss_name: str = ""


def locate_teacher(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, Any, bool]:
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


def _dsm_on_study_path(
    config: ml_collections.ConfigDict, tconfig: ml_collections.ConfigDict
) -> bool:
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
    if backtracking.param_fingerprint(params) != backtracking.param_fingerprint(like):
        raise ValueError(
            f"the checkpoint in {tdir} does not match the model described by its config.json"
        )
    return params


def teacher_study(tconfig: ml_collections.ConfigDict) -> Any:
    """The experiment module of a teacher config: the toy or the image score-matching study."""
    from experiments import score_matching, score_matching_images

    return score_matching_images if tconfig.study == "score_matching_images" else score_matching


def load_teacher(config: ml_collections.ConfigDict, workdir: str) -> Teacher:
    """The teacher of `config`; trains it into `<workdir>/teacher` when none is given.

    Raises (before any training) the errors of `locate_teacher`, and ValueError when the
    teacher was trained on other data than `config.data.name`. Its networks compute in the
    study's dtype policy (`in_study_precision`). Each call builds a new teacher
    (new score functions); `RunCache.share_teacher` hands out one per teacher and config.
    """
    tdir, tconfig, must_train = locate_teacher(config, workdir)
    sm_exp = teacher_study(tconfig)
    study_config = in_study_precision(tconfig, config)
    setup = sm_exp.build(study_config)
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
        loss_fn = sm_exp.make_loss(study_config, setup.sde, setup.model)
        loss_name = f"{_sm_field(tconfig, 'loss.name')} loss on the {tconfig.sde.name} path"
    path = study_path(config)
    if setup.sde != path:
        setup = on_study_path(setup, path)
    if config.teacher.kind == "exact":
        setup = exact_teacher(setup, params)
    digest = backtracking.param_digest(params)
    return Teacher(tdir, tconfig, setup, params, digest, loss_fn, loss_name)


def in_study_precision(
    tconfig: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """A copy of the teacher's config `tconfig` with the study's dtype policy (`config.precision`;
    float32 in a config recorded before the field existed).

    The study builds the teacher's setup from it, so that the teacher, the fake score and a
    denoiser generator compute in the study's policy whatever the teacher was trained in (their
    parameters are float32 either way); `Teacher.config` stays the teacher's own.
    """
    study_config = ml_collections.ConfigDict(tconfig.to_dict())
    study_config[CONFIG_FIELD] = config.get(CONFIG_FIELD, RECORD_DEFAULTS[CONFIG_FIELD])
    return study_config


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
