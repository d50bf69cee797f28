"""The distillation study's methods and settings: method names, the config check, and the objects
built from config fields (time distribution, the study's path, schedules, consistency settings).

A method is `<plan>` or `<plan>+<weighting>` (`methods_of`): the plan (`METHODS`) says where the
fake score starts and which targets the generator chases (`plan`); the weighting is a generator
weighting of `scorejax.distill.DISTILL_WEIGHTINGS`.
"""

from __future__ import annotations

import ml_collections

from experiments.common import check_batch_divides, check_multiples
from scorejax import backtracking, distill
from scorejax import consistency as cm
from scorejax.score_sdes import VPSDE
from scorejax.train.precision import precision_from_config

METHODS = (
    "diff_instruct",
    "diff_instruct_warm",
    "disback_fixed",
    "disback_adaptive",
    "diff_instruct_ahead",
    "consistency",
)
# The plans that distil from the teacher alone, so need no stage-1 path.
WITHOUT_PATH = ("diff_instruct", "diff_instruct_ahead", "consistency")
DATA_KINDS = ("toy", "image")
# "network": a trained score model; "exact": a toy mixture's analytic score plus a residual
# network initialised to zero (a perfect teacher that stage 1 can still fine-tune).
TEACHER_KINDS = ("network", "exact")


def methods_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The methods a config runs, in order (`config.methods` is a comma-separated string).

    A method is `<plan>` or `<plan>+<weighting>`: the plan (`METHODS`: where the fake score
    starts, which targets the generator chases, how they switch) wraps any generator weighting
    of `scorejax.distill.DISTILL_WEIGHTINGS`; without a suffix it is `config.distill.weighting`.
    `consistency` (consistency distillation) has no fake score and no weighting.
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


def plan(plan_name: str, num_nodes: int) -> tuple[int, int]:
    """`(path node the fake score starts from, recorded nodes the target walks along)` of a
    score-distillation plan of `METHODS`.

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


def needs_path(config: ml_collections.ConfigDict) -> bool:
    """Whether a method of `config` needs stage 1's degradation path."""
    return any(split_method(m, config)[0] not in WITHOUT_PATH for m in methods_of(config))


def check_config(config: ml_collections.ConfigDict) -> None:
    """Check every field of a distillation config (ValueError), before anything runs."""
    precision_from_config(config)
    methods = methods_of(config)
    d = config.distill
    k = d.steps_per_call
    steps = {
        "distill.num_steps": d.num_steps,
        "eval.every": config.eval.every,
        "checkpoint_every": config.checkpoint_every,
    }
    check_multiples(steps, "distill.steps_per_call", k)
    check_batch_divides("distill.batch_size", d.batch_size)
    _check_models(config)
    s1 = config.stage1
    if s1.num_steps % s1.probe_every or s1.num_steps // s1.probe_every < s1.num_nodes:
        raise ValueError(
            f"config.stage1.num_steps={s1.num_steps} must be a multiple of stage1.probe_every="
            f"{s1.probe_every} with at least stage1.num_nodes={s1.num_nodes} probes"
        )
    time_dist(config)
    study_path(config)
    consistency_config(config)
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


def _check_models(config: ml_collections.ConfigDict) -> None:
    """The generator, data and teacher fields and their combinations."""
    g = config.generator
    if g.kind not in ("denoiser", "mlp"):
        raise ValueError(f"config.generator.kind={g.kind!r}: 'denoiser' or 'mlp'")
    if g.init not in ("teacher", "random"):
        raise ValueError(f"config.generator.init={g.init!r}: 'teacher' or 'random'")
    if g.kind == "mlp" and g.init == "teacher":
        raise ValueError("an MLP generator has no teacher initialisation; use kind='denoiser'")
    if config.data.kind not in DATA_KINDS:
        raise ValueError(f"config.data.kind={config.data.kind!r}: choose from {DATA_KINDS}")
    if config.data.kind == "image" and g.kind != "denoiser":
        raise ValueError("image distillation needs generator.kind='denoiser' (a U-Net generator)")
    if config.distill.fake_steps < 1:
        raise ValueError(f"config.distill.fake_steps must be >= 1, got {config.distill.fake_steps}")
    if config.teacher.kind not in TEACHER_KINDS:
        raise ValueError(
            f"config.teacher.kind={config.teacher.kind!r}: choose from {TEACHER_KINDS}"
        )
    if config.teacher.kind == "exact" and config.data.kind != "toy":
        raise ValueError("teacher.kind='exact' needs a toy mixture (data.kind='toy')")
    if tuple(g.offset) and config.data.kind != "toy":
        raise ValueError("generator.offset is for 2-D toys only")


def time_dist(config: ml_collections.ConfigDict) -> distill.TimeDistribution:
    """The distribution of the diffusion times of the generator and evaluation losses."""
    d = config.distill
    return distill.TimeDistribution(
        d.time_dist, d.t_min, d.t_max, log_nsr_mean=d.log_nsr_mean, log_nsr_std=d.log_nsr_std
    )


def study_path(config: ml_collections.ConfigDict) -> VPSDE:
    """The path the study distils on: VP with `distill.path_beta_min`, `path_beta_max`, `T = 1`.

    `distill.t_min`, `t_max` and `generator.t_init` are its times; a teacher of another path is
    converted to its score (`experiments.distill.teacher.on_study_path`).
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


def schedule(config: ml_collections.ConfigDict, method: str) -> backtracking.BacktrackSchedule:
    """The backtracking schedule of `method` (teacher-only methods never switch)."""
    s = config.schedule
    if split_method(method, config)[0] == "disback_adaptive":
        return backtracking.BacktrackSchedule(
            "adaptive",
            interval=s.adaptive_max_interval,
            min_interval=s.adaptive_min_interval,
            ratio=s.adaptive_ratio,
            ema_decay=s.adaptive_ema_decay,
        )
    return backtracking.BacktrackSchedule("fixed", interval=s.interval)
