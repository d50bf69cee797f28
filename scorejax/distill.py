"""One-step generator distillation: score distillation and DisBack's degradation path.

A one-step generator `x0 = G_eta(z)` is distilled from a score model (the *target*) by matching
the diffused marginals of its samples to the target's (Diff-Instruct, Luo et al. 2023; VSD, Wang
et al. 2023; DMD, Yin et al. 2024). With `x_t = alpha_t x0 + sigma_t eps` and an auxiliary *fake*
score `s_phi ~ grad log q_{eta,t}` fitted to the generator's own samples, the generator gradient is
(DisBack, Zhang et al. 2024, eq. 8)

    grad_eta L = E_{t, z, eps}[ w(t) (s_phi(x_t, t) - s_target(x_t, t))^T d x_t / d eta ],

implemented, as in every public code base, through the stop-gradient surrogate

    L_G = 1/2 || x0 - sg(x0 - g) ||^2,      d L_G / d x0 = g,

with a per-example, per-pixel `g` built from the score difference (`score_distillation_grad`).

DisBack (Zhang et al. 2024) adds two stages around it:

1. *Degradation recording* (`record_degradation`): a copy of the teacher is fine-tuned with the
   teacher's own DSM loss on samples of the frozen initial generator; its parameters are saved as
   nodes `0 (the teacher) .. N (fitted to the initial generator)` of a `DegradationPath`.
2. *Backtracking*: the fake score starts at node `N` and the target walks `N-1, N-2, ..., 0`
   while the generator trains, so the generator always chases a target close to itself. The walk is
   driven by a `BacktrackSchedule` (fixed interval, the paper's rule, or adaptive), whose state
   (`ScheduleState`) is a pytree meant to live in the checkpointed train state.

Conventions: a score model is any `score_fn(params, x, t) -> score` with `x: [B, ...]`, `t: [B]`;
a generator is any `generator_fn(params, z) -> x0` with `z: [B, ...]`. Losses follow the library
contract `(loss, aux)`. The path is the one part of this module that touches files (Orbax
checkpoints), because stage 1's product *is* a set of checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct

from scorejax.score_matching import dsm_loss
from scorejax.sde import SDE, batch_broadcast

Array = jax.Array
Params = Any
ScoreFn = Callable[[Params, Array, Array], Array]
GeneratorFn = Callable[[Params, Array], Array]

__all__ = [
    "WEIGHTINGS",
    "TimeDistribution",
    "score_distillation_grad",
    "surrogate_loss",
    "generator_loss",
    "fake_score_loss",
    "DegradationPath",
    "record_degradation",
    "param_fingerprint",
    "param_digest",
    "BacktrackSchedule",
    "ScheduleState",
    "schedule_init",
    "schedule_update",
    "select_node",
]

WEIGHTINGS = ("diff_instruct", "vsd", "dmd")
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
        `t` through the SDE's noise-to-signal ratio and clipped to `[t_min, t_max]`. The inverse
        is found by bisection (monotone for VP, sub-VP and VE), so it works for any SDE.

    Frozen and hashable: pass it to jitted functions as a static argument.
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

    def sample(self, key: Array, n: int, sde: SDE) -> Array:
        """Draw `n` times, shape `[n]`, in `[t_min, t_max]` (units of the SDE's time)."""
        if self.t_max > sde.T:
            raise ValueError(f"t_max={self.t_max} exceeds the SDE's horizon T={sde.T}")
        if self.kind == "uniform":
            return jax.random.uniform(key, (n,), minval=self.t_min, maxval=self.t_max)
        log_nsr = self.log_nsr_mean + self.log_nsr_std * jax.random.normal(key, (n,))
        return _invert_log_nsr(sde, log_nsr, self.t_min, self.t_max)


def _invert_log_nsr(sde: SDE, log_nsr: Array, t_min: float, t_max: float) -> Array:
    """Solve `log(sigma_t / alpha_t) = log_nsr` for `t` in `[t_min, t_max]` by bisection."""

    def f(t):
        return jnp.log(sde.sigma(t)) - sde.log_alpha(t)

    lo = jnp.full_like(log_nsr, t_min)
    hi = jnp.full_like(log_nsr, t_max)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = f(mid) < log_nsr
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    # 40 halvings of an interval of length <= 1 reach float32 resolution.
    lo, hi = jax.lax.fori_loop(0, 40, body, (lo, hi))
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------------------------
# The score-distillation gradient and the generator / fake-score losses.


def score_distillation_grad(
    x0: Array,
    key: Array,
    sde: SDE,
    target_score: Callable[[Array, Array], Array],
    fake_score: Callable[[Array, Array], Array],
    *,
    weighting: str = "diff_instruct",
    time_dist: TimeDistribution = TimeDistribution(),
) -> tuple[Array, dict[str, Array]]:
    """The per-pixel generator gradient `g` of score distillation (DisBack eq. 8), stop-gradiented.

    Draws `t ~ time_dist`, `eps ~ N(0, I)`, forms `x_t = alpha_t x0 + sigma_t eps` and, with
    `delta = s_fake(x_t, t) - s_target(x_t, t)` and the target's denoiser
    `D_target = (x_t + sigma_t^2 s_target) / alpha_t`:

      * `"diff_instruct"`: `g = D_fake - D_target = (sigma_t^2 / alpha_t) delta` (weight 1 in
        denoiser space, Diff-Instruct's EDM code; `w(t) = sigma_t^2 / alpha_t^2` in eq. 8).
      * `"vsd"`: `g = alpha_t sigma_t^2 delta`, i.e. eq. 8 with `w(t) = sigma_t^2`
        (ProlificDreamer's `1 - alpha_bar_t`) and the chain-rule factor `d x_t / d x0 = alpha_t`.
      * `"dmd"`: `g = (D_fake - D_target) / mean_pixels |x0 - D_target|` per example (DMD / DMD2),
        the normaliser floored at 1e-12 so a perfect target denoiser cannot divide by zero.

    Args:
      x0: generator samples `[B, ...]`; no gradient flows through `g` to them.
      key: PRNG key for `t` and `eps`.
      sde: the forward SDE shared by teacher and fake score.
      target_score, fake_score: `(x, t) -> score` closures (parameters already bound).
      weighting: one of `WEIGHTINGS`.
      time_dist: distribution of `t`.

    Returns:
      `(g, aux)` with `g` shaped like `x0`, and `aux` holding `t` `[B]`, the noised samples
      `x_t` (shaped like `x0`) and `score_gap` `[B]`,
      `sigma_t^2 ||s_fake - s_target||^2` summed over pixels (zero when the generator's diffused
      distribution matches the target's, as far as the fake score can tell).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    x0 = jax.lax.stop_gradient(x0)
    key_t, key_eps = jax.random.split(key)
    t = time_dist.sample(key_t, x0.shape[0], sde)
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
        g = alpha * sigma**2 * delta
    else:
        d_target = (x_t + sigma**2 * s_target) / alpha
        norm = _mean_non_batch(jnp.abs(x0 - d_target))
        g = sigma**2 / alpha * delta / batch_broadcast(jnp.maximum(norm, 1e-12), x0)
    aux = {"t": t, "x_t": x_t, "score_gap": _sum_non_batch(sigma**2 * delta**2)}
    return jax.lax.stop_gradient(g), jax.lax.stop_gradient(aux)


def surrogate_loss(x0: Array, g: Array) -> Array:
    """Per-example surrogate `1/2 ||x0 - sg(x0 - g)||^2`, `[B]`, whose gradient in `x0` is `g`."""
    if x0.shape != g.shape:
        raise ValueError(f"x0 {x0.shape} and g {g.shape} must have the same shape")
    return 0.5 * _sum_non_batch((x0 - jax.lax.stop_gradient(x0 - g)) ** 2)


def generator_loss(
    generator_fn: GeneratorFn,
    generator_params: Params,
    z: Array,
    key: Array,
    sde: SDE,
    target_score_fn: ScoreFn,
    target_params: Params,
    fake_score_fn: ScoreFn,
    fake_params: Params,
    *,
    weighting: str = "diff_instruct",
    time_dist: TimeDistribution = TimeDistribution(),
    reduce: str = "mean",
) -> tuple[Array, dict[str, Array]]:
    """Score-distillation loss of a one-step generator (DisBack eq. 8 through the surrogate).

    `x0 = generator_fn(generator_params, z)`; the loss is `surrogate_loss(x0, g)` with `g` from
    `score_distillation_grad`, so `grad_params loss = E[g^T d x0 / d params]` and no gradient
    reaches the target or fake parameters. `reduce="mean"` averages over the batch (gradient `g/B`
    per example), `"sum"` sums (gradient exactly `g`).

    Returns `(loss, aux)`; `aux` has `t`, `x_t`, `score_gap` (see `score_distillation_grad`) and
    the `per_example` losses `[B]`.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    x0 = generator_fn(generator_params, z)
    g, aux = score_distillation_grad(
        x0,
        key,
        sde,
        lambda x, t: target_score_fn(target_params, x, t),
        lambda x, t: fake_score_fn(fake_params, x, t),
        weighting=weighting,
        time_dist=time_dist,
    )
    per_example = surrogate_loss(x0, g)
    loss = jnp.mean(per_example) if reduce == "mean" else jnp.sum(per_example)
    return loss, {**aux, "per_example": per_example}


def fake_score_loss(
    fake_score_fn: ScoreFn,
    fake_params: Params,
    x0: Array,
    key: Array,
    sde: SDE,
    *,
    weighting: str = "sigma2",
    t_min: float = 1e-5,
    reduce: str = "mean",
) -> tuple[Array, dict[str, Array]]:
    """DSM loss of the fake score on stop-gradient generator samples `x0` `[B, ...]`.

    Exactly `scorejax.score_matching.dsm_loss` on `sg(x0)`: the fake score tracks
    `grad log q_{eta,t}` without pushing the generator. Stage 1 of DisBack uses the same loss (the
    teacher's own DSM objective) on samples of the frozen initial generator.
    """
    return dsm_loss(
        fake_score_fn,
        fake_params,
        jax.lax.stop_gradient(x0),
        key,
        sde,
        weighting=weighting,
        t_min=t_min,
        reduce=reduce,
    )


# ----------------------------------------------------------------------------------------------
# Stage 1: the degradation path.

_PATH_FILE = "path.json"
_NODE_FMT = "node_{:04d}"
_RESUME_DIR = "stage1_state"


def param_fingerprint(params: Params) -> list[list[Any]]:
    """The architecture signature of a parameter pytree: `[key path, shape, dtype]` per leaf."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return [
        [jax.tree_util.keystr(path), list(np.shape(leaf)), str(_dtype(leaf))]
        for path, leaf in leaves
    ]


def _dtype(leaf: Any) -> np.dtype:
    # Arrays and `jax.ShapeDtypeStruct`s (`jax.eval_shape` outputs) carry a dtype; scalars do not.
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype


def param_digest(params: Params) -> str:
    """SHA-256 of a parameter pytree's values and structure: tells two teachers apart."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        arr = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{arr.shape}{arr.dtype}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), tree)


class DegradationPath:
    """A recorded degradation path on disk: node `0` is the teacher, node `N` the most degraded.

    Layout of `directory`: `path.json` (metadata, written last, so a path is complete only once it
    exists with `complete: true`) and one Orbax checkpoint `node_0000 ... node_{N:04d}` of the
    score model's parameters per node.

    Attributes:
      directory: absolute path of the recording.
      num_nodes: `N`, the number of recorded nodes besides the teacher (`len(path) == N + 1`).
      order: node indices in backtracking order, `(N, N-1, ..., 0)`: the fake score starts at
        `order[0]`, the target at `order[1]`, and the teacher `order[-1]` is the final target.
      meta: the metadata dict (steps, seconds, per-node DSM losses, architecture fingerprint).

    Raises (on construction, before any training can start):
      FileNotFoundError: no recording at `directory`.
      ValueError: the recording is incomplete or has no recorded node (an empty path).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        meta_file = os.path.join(self.directory, _PATH_FILE)
        if not os.path.isfile(meta_file):
            raise FileNotFoundError(
                f"no degradation path at {self.directory} (missing {_PATH_FILE}); record one "
                "with scorejax.distill.record_degradation"
            )
        with open(meta_file) as f:
            self.meta = json.load(f)
        if not self.meta.get("complete", False):
            raise ValueError(
                f"the degradation path at {self.directory} is incomplete (recording was "
                "interrupted); run record_degradation again to finish it"
            )
        self.num_nodes = int(self.meta["num_nodes"])
        if self.num_nodes < 1:
            raise ValueError(
                f"the degradation path at {self.directory} is empty: it holds no recorded node "
                "besides the teacher, so there is nothing to backtrack along"
            )
        missing = [i for i in range(self.num_nodes + 1) if not os.path.isdir(self.node_dir(i))]
        if missing:
            raise FileNotFoundError(
                f"the degradation path at {self.directory} lacks node checkpoints {missing}"
            )

    def __len__(self) -> int:
        return self.num_nodes + 1

    @property
    def order(self) -> tuple[int, ...]:
        return tuple(range(self.num_nodes, -1, -1))

    def node_dir(self, i: int) -> str:
        return os.path.join(self.directory, _NODE_FMT.format(i))

    def check_compatible(self, like: Params) -> None:
        """Raise `ValueError` unless `like` has the architecture the path was recorded with."""
        want = self.meta["fingerprint"]
        got = param_fingerprint(like)
        if want == got:
            return
        if len(want) != len(got):
            detail = f"{len(want)} parameter arrays recorded, {len(got)} given"
        else:
            w, g = next((w, g) for w, g in zip(want, got, strict=True) if w != g)
            detail = f"recorded {w[0]} {w[1]} {w[2]}, given {g[0]} {g[1]} {g[2]}"
        raise ValueError(
            f"the degradation path at {self.directory} was recorded from a different score-model "
            f"architecture ({detail})"
        )

    def load(self, i: int, like: Params) -> Params:
        """Parameters of node `i` (0 = teacher), restored into the structure of `like`.

        `like` is any parameter pytree of the same architecture (for example the teacher's);
        a different architecture raises `ValueError` before anything is read.
        """
        if not 0 <= i <= self.num_nodes:
            raise IndexError(f"node {i} out of range: the path has nodes 0..{self.num_nodes}")
        self.check_compatible(like)
        ckptr = ocp.StandardCheckpointer()
        try:
            return ckptr.restore(self.node_dir(i), _abstract(like))
        finally:
            ckptr.close()

    def stacked(self, like: Params) -> Params:
        """All nodes stacked on a new leading axis `[N + 1, ...]`, index `i` = node `i`.

        Lets a jitted step pick its target with `select_node(stacked, node)` and switch targets
        without leaving the device.
        """
        nodes = [self.load(i, like) for i in range(self.num_nodes + 1)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *nodes)


def select_node(stacked: Params, node: Array) -> Params:
    """Node `node` (a traced int scalar is fine) of a `DegradationPath.stacked` pytree."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, node, keepdims=False), stacked)


def record_degradation(
    directory: str | os.PathLike,
    *,
    score_fn: ScoreFn,
    teacher_params: Params,
    generator_fn: GeneratorFn,
    generator_params: Params,
    sde: SDE,
    latent_shape: tuple[int, ...],
    key: Array,
    num_nodes: int,
    steps_per_node: int,
    batch_size: int,
    optimizer: optax.GradientTransformation,
    dsm_weighting: str = "sigma2",
    t_min: float = 1e-5,
    callback: Callable[[int, Array], None] | None = None,
) -> DegradationPath:
    """DisBack stage 1: record the path from the teacher to the initial generator's distribution.

    A copy of the teacher (`score_fn`, `teacher_params`) is trained with the teacher's DSM loss
    (`dsm_weighting`, `t_min`) on samples `generator_fn(generator_params, z)`, `z ~ N(0, I)` of
    shape `[batch_size, *latent_shape]`, of the frozen generator. Node 0 is the teacher; node `k`
    (`k = 1..num_nodes`) holds the parameters after `k * steps_per_node` updates. Step `s` draws
    its batch from `fold_in(key, s)`.

    Resumable and idempotent: the optimiser state is saved with each node, so an interrupted
    recording continues from its last node and ends as an uninterrupted one would; a complete
    recording with the same settings (and the same teacher weights) is returned as is. A recording
    with other settings, another teacher or another architecture in `directory` raises
    `ValueError` rather than being mixed with the new one.

    Args:
      callback: called as `callback(step, loss)` after each update (progress reporting); `loss`
        is a device scalar, so a callback that does not read it does not stall the loop. The
        jitted step is shared between calls with the same (identical) functions and optimiser.

    Returns:
      the `DegradationPath`; its `meta` has `steps` and `seconds` (the stage-1 cost) and the mean
      DSM loss of each segment (`node_losses`).
    """
    if num_nodes < 1:
        raise ValueError(
            f"num_nodes must be >= 1 (an empty path cannot be backtracked), got {num_nodes}"
        )
    if steps_per_node < 1 or batch_size < 1:
        raise ValueError(
            f"steps_per_node and batch_size must be >= 1, got {steps_per_node}, {batch_size}"
        )
    directory = os.path.abspath(os.fspath(directory))
    settings = {
        "num_nodes": num_nodes,
        "steps_per_node": steps_per_node,
        "batch_size": batch_size,
        "latent_shape": list(latent_shape),
        "dsm_weighting": dsm_weighting,
        "t_min": t_min,
        "fingerprint": param_fingerprint(teacher_params),
        "teacher_digest": param_digest(teacher_params),
    }
    meta_file = os.path.join(directory, _PATH_FILE)
    meta = {
        **settings,
        "complete": False,
        "nodes_done": 0,
        "steps": 0,
        "seconds": 0.0,
        "node_losses": [],
    }
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            old = json.load(f)
        if old["fingerprint"] != settings["fingerprint"]:
            raise ValueError(
                f"{directory} holds a degradation path of a different score-model architecture; "
                "use another directory"
            )
        differing = sorted(k for k in settings if old.get(k) != settings[k])
        if differing:
            raise ValueError(
                f"{directory} holds a degradation path recorded with other settings "
                f"({', '.join(differing)}); use another directory"
            )
        meta = old
        if meta["complete"]:
            return DegradationPath(directory)
    os.makedirs(directory, exist_ok=True)

    static = dict(
        score_fn=score_fn,
        generator_fn=generator_fn,
        sde=sde,
        optimizer=optimizer,
        batch_size=batch_size,
        latent_shape=tuple(latent_shape),
        dsm_weighting=dsm_weighting,
        t_min=t_min,
    )

    def train_step(params, opt_state, step):
        return _stage1_step(params, opt_state, generator_params, key, jnp.int32(step), **static)

    # Committed to one device like the step's outputs, so that the step compiles once.
    params, opt_state = jax.device_put(
        (teacher_params, optimizer.init(teacher_params)), jax.local_devices()[0]
    )
    # One throw-away update compiles the step, so the recorded seconds exclude compilation.
    jax.block_until_ready(train_step(params, opt_state, 0))
    ckptr = ocp.StandardCheckpointer()
    try:
        resume = os.path.join(directory, _RESUME_DIR)
        if meta["nodes_done"] > 0:
            restored = ckptr.restore(resume, _abstract({"params": params, "opt_state": opt_state}))
            params, opt_state = restored["params"], restored["opt_state"]
        else:
            _save_tree(ckptr, os.path.join(directory, _NODE_FMT.format(0)), teacher_params)
        for node in range(meta["nodes_done"] + 1, num_nodes + 1):
            start = time.perf_counter()
            losses = []
            for s in range((node - 1) * steps_per_node, node * steps_per_node):
                params, opt_state, loss = train_step(params, opt_state, s)
                losses.append(loss)
                if callback is not None:
                    callback(s + 1, loss)
            _save_tree(ckptr, os.path.join(directory, _NODE_FMT.format(node)), params)
            _save_tree(ckptr, resume, {"params": params, "opt_state": opt_state})
            meta["nodes_done"] = node
            meta["steps"] = node * steps_per_node
            meta["seconds"] += time.perf_counter() - start
            meta["node_losses"].append(float(jnp.mean(jnp.stack(losses))))
            meta["complete"] = node == num_nodes
            _write_json(meta_file, meta)
    finally:
        ckptr.close()
    shutil.rmtree(os.path.join(directory, _RESUME_DIR), ignore_errors=True)
    return DegradationPath(directory)


@functools.partial(
    jax.jit,
    static_argnames=(
        "score_fn",
        "generator_fn",
        "sde",
        "optimizer",
        "batch_size",
        "latent_shape",
        "dsm_weighting",
        "t_min",
    ),
)
def _stage1_step(
    params,
    opt_state,
    generator_params,
    key,
    step,
    *,
    score_fn,
    generator_fn,
    sde,
    optimizer,
    batch_size,
    latent_shape,
    dsm_weighting,
    t_min,
):
    """One stage-1 update: DSM of the copy on samples of the frozen generator, batch `step`."""
    z_key, loss_key = jax.random.split(jax.random.fold_in(key, step))
    z = jax.random.normal(z_key, (batch_size, *latent_shape))

    def loss_fn(p):
        x0 = generator_fn(generator_params, z)
        return fake_score_loss(score_fn, p, x0, loss_key, sde, weighting=dsm_weighting, t_min=t_min)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _save_tree(ckptr: ocp.StandardCheckpointer, path: str, tree: Any) -> None:
    # Orbax refuses to overwrite; a leftover from an interrupted save is replaced.
    if os.path.exists(path):
        shutil.rmtree(path)
    ckptr.save(path, tree)
    ckptr.wait_until_finished()


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Stage 2: the backtracking schedule.

_SCHEDULE_KINDS = ("fixed", "adaptive")


@dataclasses.dataclass(frozen=True)
class BacktrackSchedule:
    """When the distillation target moves one node toward the teacher.

    Kinds:
      * `"fixed"` (the paper's rule): after `interval` generator updates on a node.
      * `"adaptive"`: when the generator has *caught up* with the current target. The measure is
        the score gap `G = E sigma_t^2 ||s_fake - s_target||^2` on the generator's diffused
        samples, which the generator update already computes (`aux["score_gap"]`); it is what
        drives the generator, and it vanishes when the generator's distribution equals the
        target's. Its exponential moving average `G_ema` (decay `ema_decay`, restarted on each
        node) is compared with its largest value since the node started, `G_max`: the target
        moves on when `G_ema <= ratio * G_max` after at least `min_interval` updates, or after
        `interval` updates whatever happens (so a target the generator cannot reach does not stall
        the walk). `min_interval`, `ratio` and `ema_decay` are ignored by `"fixed"`.

    Frozen and hashable (a static argument of the jitted step).
    """

    kind: str = "fixed"
    interval: int = 1000
    min_interval: int = 50
    ratio: float = 0.5
    ema_decay: float = 0.9

    def __post_init__(self):
        if self.kind not in _SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.kind!r}; expected one of {_SCHEDULE_KINDS}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if self.min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {self.min_interval}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


class ScheduleState(struct.PyTreeNode):
    """Where the backtracking walk is; part of the checkpointed train state.

    Attributes:
      node: int32, index of the current target in the path (counts down to 0, the teacher).
      steps_on_node: int32, generator updates made against the current target.
      gap_ema: float32, moving average of the score gap on the current node (adaptive rule).
      gap_max: float32, its largest value on the current node.
      num_switches: int32, switches made so far.
    """

    node: Array
    steps_on_node: Array
    gap_ema: Array
    gap_max: Array
    num_switches: Array


def schedule_init(num_nodes: int) -> ScheduleState:
    """The walk's start on a path with `num_nodes` recorded nodes: target `max(N - 1, 0)`.

    (The fake score starts at node `N`.) `num_nodes = 0` gives plain score distillation: the
    target is the teacher from the start and never switches.
    """
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    return ScheduleState(
        node=jnp.asarray(max(num_nodes - 1, 0), jnp.int32),
        steps_on_node=jnp.zeros((), jnp.int32),
        gap_ema=jnp.zeros((), jnp.float32),
        gap_max=jnp.zeros((), jnp.float32),
        num_switches=jnp.zeros((), jnp.int32),
    )


def schedule_update(
    schedule: BacktrackSchedule, state: ScheduleState, gap: Array
) -> tuple[ScheduleState, Array]:
    """Advance the walk by one generator update whose mean score gap was `gap` (a scalar).

    Returns `(new_state, switched)`, `switched` a bool scalar: whether the update that was just
    made was the last one on the old target (the next update uses node `new_state.node`). Never
    moves past node 0; pure and jit-able.
    """
    steps = state.steps_on_node + 1
    gap = jnp.asarray(gap, jnp.float32)
    ema = jnp.where(
        steps == 1, gap, schedule.ema_decay * state.gap_ema + (1 - schedule.ema_decay) * gap
    )
    gap_max = jnp.maximum(jnp.where(steps == 1, ema, state.gap_max), ema)
    if schedule.kind == "fixed":
        due = steps >= schedule.interval
    else:
        caught_up = (steps >= schedule.min_interval) & (ema <= schedule.ratio * gap_max)
        due = caught_up | (steps >= schedule.interval)
    switched = due & (state.node > 0)
    new = ScheduleState(
        node=jnp.where(switched, state.node - 1, state.node),
        steps_on_node=jnp.where(switched, 0, steps),
        gap_ema=jnp.where(switched, 0.0, ema),
        gap_max=jnp.where(switched, 0.0, gap_max),
        num_switches=state.num_switches + switched.astype(jnp.int32),
    )
    return new, switched
