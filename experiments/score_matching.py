"""Score-matching study: train a score network with DSM, sample from it, compare with the truth.

`train_and_evaluate(config, workdir)` (config: `configs/score_matching.py`)

1. trains `ScoreMLP` with the continuous-time DSM loss on a 2-D toy (data-parallel jitted step,
   EMA weights, Orbax checkpoints every `train.checkpoint_every` steps; an interrupted run resumes
   from its latest checkpoint and ends with the same parameters as an uninterrupted one);
2. for Gaussian-mixture toys, measures the EMA network's score error against the exact marginal
   score in bins of diffusion time;
3. samples with the predictor-corrector (or Euler-Maruyama) sampler and compares the samples
   with fresh true samples: MMD^2, sliced Wasserstein, energy distance, and mixture mode weights;
   the same sampler driven by the exact score is the reference, two true sample sets the noise
   floor;
4. writes `metrics.jsonl`, TensorBoard events, `eval.json`, `config.json`, and the PNGs
   `samples.png`, `loss.png`, `score_error.png` into `workdir`.

Data sources and models are chosen by `config.data.kind` and `config.model.kind` in
`_make_data` / `_make_model`, so further kinds slot in next to the toy ones.
"""

from __future__ import annotations

import dataclasses
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

from scorejax import metrics as sm
from scorejax.analytic import GaussianMixture
from scorejax.data.toy import get_toy
from scorejax.models.mlp import ScoreMLP
from scorejax.sampling import euler_maruyama, predictor_corrector
from scorejax.score_matching import dsm_loss, make_score_fn
from scorejax.sde import SDE, VESDE, VPSDE, SubVPSDE
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
)

EVAL_FILE = "eval.json"
OFF_MODE_Z = 4.0


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
    """Everything built from the config before the workdir is touched."""

    data: Data
    sde: SDE
    init: Callable[[jax.Array], Any]
    score_fn: Callable[[Any, jax.Array, jax.Array], jax.Array]


def _make_data(config: ml_collections.ConfigDict) -> Data:
    if config.data.kind == "toy":
        toy = get_toy(config.data.name)
        return Data(toy.name, (toy.dim,), toy.sample, toy.mixture)
    raise ValueError(f"unknown config.data.kind {config.data.kind!r}; known: 'toy'")


def make_sde(config: ml_collections.ConfigDict) -> SDE:
    """The forward SDE of `config.sde` (`vp`, `subvp` or `ve`, with its parameters)."""
    c = config.sde
    if c.name == "vp":
        return VPSDE(beta_min=c.beta_min, beta_max=c.beta_max)
    if c.name == "subvp":
        return SubVPSDE(beta_min=c.beta_min, beta_max=c.beta_max)
    if c.name == "ve":
        return VESDE(sigma_min=c.sigma_min, sigma_max=c.sigma_max)
    raise ValueError(f"unknown config.sde.name {c.name!r}; known: 'vp', 'subvp', 've'")


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
    )

    def init(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros((1, data.dim)), jnp.zeros((1,)))

    return init, model.apply


def _check_config(config: ml_collections.ConfigDict) -> None:
    t = config.train
    k = t.steps_per_call
    for name in ("num_steps", "log_every", "checkpoint_every"):
        value = t[name]
        if value < 1 or value % k:
            raise ValueError(
                f"config.train.{name}={value} must be a positive multiple of "
                f"config.train.steps_per_call={k} (the step runs {k} updates per call)"
            )
    if t.batch_size % jax.device_count():
        raise ValueError(
            f"config.train.batch_size={t.batch_size} is not divisible by the "
            f"{jax.device_count()} devices"
        )
    if config.sampler.name not in ("pc", "em"):
        raise ValueError(f"unknown config.sampler.name {config.sampler.name!r}; known: pc, em")
    if config.loss.t_min <= 0:
        raise ValueError(f"config.loss.t_min must be > 0, got {config.loss.t_min}")
    if not 0 <= config.train.warmup_steps < config.train.num_steps:
        raise ValueError(
            f"config.train.warmup_steps must be in [0, num_steps={config.train.num_steps}), "
            f"got {config.train.warmup_steps}"
        )


def build(config: ml_collections.ConfigDict) -> Setup:
    """Check the config and build data, SDE and model (raises ValueError on bad settings)."""
    _check_config(config)
    data = _make_data(config)
    sde = make_sde(config)
    init, apply = _make_model(config, data)
    score_fn = make_score_fn(apply, sde, config.model.parametrization)
    return Setup(data, sde, init, score_fn)


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


def _sample(setup: Setup, config, score_fn, params, key: jax.Array, n: int) -> jax.Array:
    s = config.sampler
    shape = (n, setup.data.dim)
    if s.name == "pc":
        fn = lambda p, k: predictor_corrector(
            score_fn,
            p,
            setup.sde,
            k,
            shape,
            num_steps=s.num_steps,
            snr=s.snr,
            n_corrector=s.n_corrector,
            t_eps=s.t_eps,
        )[0]
    else:
        fn = lambda p, k: euler_maruyama(
            score_fn, p, setup.sde, k, shape, num_steps=s.num_steps, t_eps=s.t_eps
        )[0]
    return jax.jit(fn)(params, key)


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
        x = mixture.marginal_sample(sde, k_x, n, t)
        err = jnp.sum((setup.score_fn(params, x, t) - mixture.marginal_score(sde, x, t)) ** 2, -1)
        ref = jnp.sum(mixture.marginal_score(sde, x, t) ** 2, -1)
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
    """Monte Carlo DSM loss of the exact score: the lowest loss any network can reach."""
    mixture = setup.data.mixture
    exact = lambda _, x, t: mixture.marginal_score(setup.sde, x, t)

    @jax.jit
    def floor(key):
        x0 = setup.data.sample(jax.random.fold_in(key, 0), n)
        k_loss = jax.random.fold_in(key, 1)
        return dsm_loss(
            exact,
            None,
            x0,
            k_loss,
            setup.sde,
            weighting=config.loss.weighting,
            t_min=config.loss.t_min,
        )[0]

    return float(floor(key))


def _make_sample_metrics(config, mixture: GaussianMixture | None):
    """A jitted `(samples, reference, bandwidths, key) -> dict` of sample-quality metrics."""

    @jax.jit
    def compute(samples, reference, bandwidths, key):
        out = {
            "mmd2": sm.mmd2_rbf(samples, reference, bandwidths),
            "sliced_w2": sm.sliced_wasserstein(
                key, samples, reference, num_projections=config.eval.num_projections
            ),
            "energy": sm.energy_distance(samples, reference),
            "nonfinite": jnp.sum(~jnp.all(jnp.isfinite(samples), axis=-1)),
        }
        if mixture is not None:
            w = sm.mode_weights(samples, mixture.means)
            err = jnp.abs(w - jnp.exp(mixture.log_weights))
            out |= {"mode_weights": w, "mode_weight_max_err": jnp.max(err)}
            out["mode_weight_tv"] = 0.5 * jnp.sum(err)
            # Samples more than 4 standard deviations from every component (bridges between
            # modes, outliers); a true sample is that far with probability about 3e-4 in 2-D.
            z = (samples[:, None, :] - mixture.means[None]) / mixture.stds[None]
            out["off_mode_frac"] = jnp.mean(jnp.min(jnp.sum(z**2, -1), axis=1) > OFF_MODE_Z**2)
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
    samples = np.asarray(_sample(setup, config, setup.score_fn, params, k_sample, n))
    results["sample_seconds_incl_compile"] = time.perf_counter() - t0
    arrays["model"] = samples
    for k, v in sample_metrics(samples, true, bandwidths, k_sw).items():
        results[f"model/{k}"] = v
    for k, v in sample_metrics(true_b, true, bandwidths, k_sw).items():
        results[f"null/{k}"] = v

    if mixture is not None:
        exact_score = lambda _, x, t: mixture.marginal_score(setup.sde, x, t)
        # The same sampler and noise with the exact score: what a perfect network would reach.
        exact = np.asarray(_sample(setup, config, exact_score, None, k_sample, n))
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
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="DSM loss (train)")
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
        ax.axvline(config.sampler.t_eps, color="grey", ls=":", label="sampler stops here")
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
    tx = make_optimizer(config)
    loss_fn = lambda params, x0, key: dsm_loss(
        setup.score_fn,
        params,
        x0,
        key,
        setup.sde,
        weighting=config.loss.weighting,
        t_min=config.loss.t_min,
    )
    step_fn = make_train_step(
        loss_fn, tx, mesh=mesh, ema_decay=t.ema_decay, ema_warmup=t.ema_warmup, steps_per_call=k
    )
    # One compiled initialiser instead of many small eager ops.
    create = jax.jit(
        lambda key: TrainState.create(setup.init(key), tx), out_shardings=replicated_sharding(mesh)
    )
    state = create(k_init)

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
    workdir = str(prepare_workdir(config, workdir))
    eval_path = os.path.join(workdir, EVAL_FILE)
    state = train(setup, config, workdir)
    if os.path.exists(eval_path):  # a finished run that was started again
        with open(eval_path) as f:
            results = json.load(f)
        _print_summary(setup, results)
        return results
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    results, arrays = evaluate(setup, config, state.ema_params, key)
    tmp = eval_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, eval_path)
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
