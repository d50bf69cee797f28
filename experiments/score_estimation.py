"""Score estimation as noisy-label regression (Han, Razaviyayn & Xu, ICLR 2024) on a mixture.

The clean-data (x0) regression form of denoising score matching: training triples
`(t_j, x0_j, x_{t_j})` with one noise draw each, `t ~ U[t0, 1]`, inputs `u = (x_t / x_scale, t, 1)`,
labels `x0`, regression function the exact denoiser `f*(t, x) = E[x0 | x_t = x]`, score
`s = (alpha_t f - x) / sigma_t^2`. The target is a Gaussian mixture, so `f*` and the score are
known exactly (`scorejax.analytic`). Training sets of different sizes are nested prefixes of one
pool per seed (`draw_triples`). Four parts, each cached in the workdir (a rerun resumes
after the last finished piece):

1. `network`: a wide two-layer ReLU network (hidden layer trained, NTK parametrisation,
   antisymmetric initialisation so f_0 = 0) trained by full-batch GD, for several widths m;
2. the same GD on the infinite-width NTK in closed form (`scorejax.ntk_gd.KernelGDPath`), and the
   network-kernel gap and the relative weight movement against m (expected: ~m^{-1/2});
3. `kernel`: test score error against GD steps k for several training-set sizes n, per time bin,
   sigma-weighted (`sigma_t^2 ||s - s*||^2`) and unweighted; stopping rules (validation hold-out,
   Raskutti-Wainwright-Yu) against the best step; the early-stopped error against n on a log-log
   plot with its fitted slope, next to the kernel-eigenvalue prediction beta / (beta + 1); the RWY
   rule's positive control (a target in the unit ball of the kernel's RKHS, on the same inputs)
   and the RKHS norm of the denoiser target, which its guarantee assumes to be at most 1;
4. `end_to_end`: samples of the exact, early-stopped and over-trained scores through the same
   Euler-Maruyama sampler down to t0, compared by MMD to fresh p_{t0} samples and by the mean
   distance to the nearest training point (memorisation).

Outputs: metrics.jsonl (curves with `step = k`), TensorBoard events, `summary.json`, PNG plots,
config.json.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scorejax.analytic import GaussianMixture  # noqa: E402
from scorejax.metrics import mmd2_rbf  # noqa: E402
from scorejax.mode_metrics import mode_tv, mode_weights  # noqa: E402
from scorejax.ntk import TwoLayerReLU, error_weights, regression_inputs, relu_ntk  # noqa: E402
from scorejax.ntk_gd import KernelGDPath, gd_train, rwy_stopping_step  # noqa: E402
from scorejax.sampling import euler_maruyama  # noqa: E402
from scorejax.score_matching import score_from_x0  # noqa: E402
from scorejax.score_sdes import VPSDE  # noqa: E402
from scorejax.train.precision import RECORD_DEFAULTS, precision_from_config  # noqa: E402
from scorejax.train.workdir import prepare_workdir  # noqa: E402
from scorejax.train.writers import MetricWriter, Progress  # noqa: E402

F64 = jnp.float64


# ----------------------------------------------------------------------------------------------
# Problem: target, triples, errors.


def make_target(config: ml_collections.ConfigDict) -> GaussianMixture:
    """`num_modes` equal-weight isotropic Gaussians on a circle (float64)."""
    k = config.target.num_modes
    angles = 2 * np.pi * np.arange(k) / k
    means = config.target.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture(
        jnp.ones(k, F64), jnp.asarray(means, F64), jnp.full((k,), config.target.std, F64)
    )


@functools.partial(jax.jit, static_argnames=("sde", "n", "t0", "x_scale"))
def sample_triples(gm: GaussianMixture, sde: VPSDE, key: jax.Array, n: int, t0: float,
                   x_scale: float) -> dict[str, jax.Array]:
    """`n` triples `(t, x0, x_t)`, `t ~ U[t0, T]`, one noise draw each, with `u` and `f*(u)`."""
    k_t, k_x, k_z = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (n,), F64, t0, sde.T)
    x0 = gm.sample(k_x, n)
    xt = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * jax.random.normal(k_z, x0.shape, F64)
    return {
        "t": t,
        "x0": x0,
        "xt": xt,
        "u": regression_inputs(xt, t, x_scale=x_scale),
        "f_star": gm.denoiser(xt, t, sde=sde),
    }


def path_errors(preds: jax.Array, test: dict[str, jax.Array], sde: VPSDE,
                bin_edges: np.ndarray) -> dict[str, np.ndarray]:
    """Errors of predictions `[K, B, d]` on the test triples: overall `[K]` and per bin `[K, J]`,
    under each weighting of `scorejax.ntk.error_weights`."""
    sq = np.sum((np.asarray(preds) - np.asarray(test["f_star"])[None]) ** 2, axis=-1)  # [K, B]
    bins = np.clip(np.searchsorted(bin_edges, np.asarray(test["t"]), side="right") - 1, 0,
                   len(bin_edges) - 2)
    out = {}
    for name, w in error_weights(test["t"], sde=sde)._asdict().items():
        e = sq * np.asarray(w)[None]
        out[name] = e.mean(axis=1)
        out[name + "_bins"] = np.stack([e[:, bins == j].mean(axis=1)
                                        for j in range(len(bin_edges) - 1)], axis=1)
    return out


def fit_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of `log y` against `log x`."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def eigen_decay(eigvals: np.ndarray) -> float:
    """`beta` in `lam_i ~ i^{-beta}`, fitted on the middle of the spectrum (i in [5, n/8])."""
    lam = np.sort(np.asarray(eigvals))[::-1]
    i = np.arange(1, len(lam) + 1)
    sel = (i >= 5) & (i <= max(len(lam) // 8, 10))
    return -fit_slope(i[sel], lam[sel])


# ----------------------------------------------------------------------------------------------
# Caching: one .npz per finished piece, so an interrupted run resumes where it stopped.


def _cached(workdir: Path, name: str, compute) -> dict[str, np.ndarray]:
    path = workdir / "cache" / f"{name}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    result = {k: np.asarray(v) for k, v in compute().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **result)
    os.replace(tmp, path)
    return result


def ks_grid(config: ml_collections.ConfigDict) -> np.ndarray:
    return np.unique(np.round(np.logspace(0, math.log10(config.kernel.k_max),
                                          config.kernel.num_k)))


# ----------------------------------------------------------------------------------------------
# Part 3: kernel GD paths for several n.


@jax.jit
def kernel_paths(u_train: jax.Array, y_train: jax.Array, u_evals: tuple[jax.Array, ...],
                 ks: jax.Array) -> tuple[KernelGDPath, tuple[jax.Array, ...], jax.Array]:
    """Kernel GD from `(u_train, y_train)`: the path, its predictions `[K, B_i, d]` at each of
    `u_evals` for every `k` in `ks`, and the training MSE `[K]` (one compiled program)."""
    path = KernelGDPath.fit(relu_ntk(u_train, u_train), y_train)
    preds = tuple(path.predict_path(relu_ntk(u, u_train), ks) for u in u_evals)
    return path, preds, path.train_residual_path(ks)


@jax.jit
def kernel_predict(path: KernelGDPath, u_train: jax.Array, u: jax.Array, k: jax.Array) -> jax.Array:
    """`f_k(u)` `[B, d]` on the kernel GD path at one (real) step count `k`."""
    return path.predict(relu_ntk(u, u_train), k)


def num_val(config: ml_collections.ConfigDict, n: int) -> int:
    """Hold-out size for a training set of size `n`."""
    return max(int(config.kernel.val_fraction * n), 16)


def draw_triples(config, gm, sde) -> tuple[dict[str, np.ndarray], list[tuple[dict, dict]]]:
    """The test triples and, per seed, a training and a hold-out pool, from one draw.

    Every training set of size `n` is the first `n` triples of its seed's training pool (nested
    sets, so the learning curve against `n` is not blurred by resampling); its hold-out set is
    the first `num_val(n)` triples of the hold-out pool. One draw of the total size compiles one
    sampler for the whole study.
    """
    size = max(*config.kernel.ns, config.network.n, config.end_to_end.n)
    sizes = [config.num_test] + [size, num_val(config, size)] * config.kernel.num_seeds
    triples = sample_triples(gm, sde, jax.random.fold_in(jax.random.key(config.seed), 3),
                             sum(sizes), config.t0, config.x_scale)
    bounds = np.cumsum([0] + sizes)
    parts = [{k: np.asarray(v[a:b]) for k, v in triples.items()}
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return parts[0], [(parts[1 + 2 * s], parts[2 + 2 * s])
                      for s in range(config.kernel.num_seeds)]


def _prefix(triples: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in triples.items()}


def kernel_run(config, gm, sde, test, pools, n: int) -> dict[str, np.ndarray]:
    """Kernel GD path on one training set: errors against k, stopping steps, spectrum."""
    train, val = _prefix(pools[0], n), _prefix(pools[1], num_val(config, n))
    ks = jnp.asarray(ks_grid(config), F64)
    path, (test_pred, val_pred), train_mse = kernel_paths(
        train["u"], train["x0"], (test["u"], val["u"]), ks)
    edges = np.linspace(config.t0, sde.T, config.kernel.num_time_bins + 1)
    errs = path_errors(test_pred, test, sde, edges)
    val_mse = np.mean(np.sum((np.asarray(val_pred) - np.asarray(val["x0"])[None]) ** 2, -1),
                      axis=1)
    # Label noise per coordinate, from the exact posterior mean (an oracle quantity).
    noise_std = float(np.sqrt(np.mean((np.asarray(train["x0"] - train["f_star"])) ** 2)))
    eta = float(path.eta)
    k_rwy = rwy_stopping_step(np.asarray(path.eigvals), noise_std=noise_std, eta=eta,
                              max_steps=config.kernel.k_max)
    rwy_pred = kernel_predict(path, train["u"], test["u"], jnp.asarray(k_rwy, F64))
    rwy_errs = path_errors(rwy_pred[None], test, sde, edges)
    return {
        "ks": np.asarray(ks),
        "train_mse": np.asarray(train_mse),
        "val_mse": val_mse,
        "noise_std": noise_std,
        "k_rwy": k_rwy,
        "eta": eta,
        "beta": eigen_decay(np.asarray(path.eigvals)),
        **{name: v for name, v in errs.items()},
        **{f"rwy_{name}": v[0] for name, v in rwy_errs.items()},
    }


def rwy_control(config, test, pools, n: int, k_best: float) -> dict[str, np.ndarray]:
    """Positive control of the RWY rule on the same inputs and kernel, and the premise it needs.

    Control: labels `y = f_c(u) + s eps` with `f_c(u) = K(u, Z) a` in the unit ball of the NTK's
    RKHS (`||f_c||_H^2 = a^T K(Z, Z) a = 1`; `Z` the first `kernel.control_centres` hold-out
    inputs), for each noise level `s` in `kernel.control_noise`: the best step's and the RWY
    step's test error `E (f_k - f_c)^2`, all `[S]`. Premise: RWY's guarantee assumes
    `||f*||_H <= 1`; `target_norm` `[d]` is the RKHS norm per coordinate of GD on the exact
    denoiser labels `f*(U)` at `k_best` (the noisy-label path's best step),
    `||f_k||_H^2 = sum_i lam_i phi_k(lam_i)^2 (V^T f*)_i^2`.
    """
    train, held = _prefix(pools[0], n), pools[1]
    u, u_test = jnp.asarray(train["u"]), jnp.asarray(test["u"])
    clean = KernelGDPath.fit(relu_ntk(u, u), jnp.asarray(train["f_star"]))
    centres = jnp.asarray(held["u"][: config.kernel.control_centres])
    key = jax.random.fold_in(jax.random.key(config.seed), n)
    coef = jax.random.normal(jax.random.fold_in(key, 0), (centres.shape[0], 1), F64)
    coef = coef / jnp.sqrt(coef.T @ relu_ntk(centres, centres) @ coef)
    f_train, f_test = relu_ntk(u, centres) @ coef, relu_ntk(u_test, centres) @ coef
    cross, ks = relu_ntk(u_test, u), jnp.asarray(ks_grid(config), F64)
    out: dict[str, list[float]] = {"err_best": [], "k_best": [], "err_rwy": [], "k_rwy": []}
    for i, noise in enumerate(config.kernel.control_noise):
        eps = jax.random.normal(jax.random.fold_in(key, i + 1), f_train.shape, F64)
        path = clean.replace(proj_labels=clean.eigvecs.T @ (f_train + noise * eps))
        err = jnp.mean((path.predict_path(cross, ks) - f_test[None]) ** 2, axis=(1, 2))
        k_rwy = rwy_stopping_step(np.asarray(path.eigvals), noise_std=noise, eta=float(path.eta),
                                  max_steps=config.kernel.k_max)
        out["err_best"].append(float(jnp.min(err)))
        out["k_best"].append(float(ks[jnp.argmin(err)]))
        out["err_rwy"].append(float(jnp.mean((path.predict(cross, k_rwy) - f_test) ** 2)))
        out["k_rwy"].append(k_rwy)
    norm2 = jnp.sum(clean.eigvals[:, None] * clean.filter(k_best)[:, None] ** 2
                    * clean.proj_labels ** 2, axis=0)
    return {**{k: np.asarray(v) for k, v in out.items()}, "target_norm": np.sqrt(norm2)}


def stopping_summary(run: dict[str, np.ndarray], metric: str) -> dict[str, float]:
    """Best, validation-chosen and RWY steps and the test `metric` at each."""
    ks, err = run["ks"], run[metric]
    i_best, i_val = int(np.argmin(err)), int(np.argmin(run["val_mse"]))
    return {
        "k_best": float(ks[i_best]),
        "k_val": float(ks[i_val]),
        "k_rwy": float(run["k_rwy"]),
        "err_best": float(err[i_best]),
        "err_val": float(err[i_val]),
        "err_rwy": float(run[f"rwy_{metric}"]),
        "err_last": float(err[-1]),
        "err_first": float(err[0]),
    }


# ----------------------------------------------------------------------------------------------
# Parts 1-2: the network against the kernel for several widths.


def network_run(config, gm, sde, test, pools, width: int) -> dict[str, np.ndarray]:
    """GD on the width-`width` network, recorded on a log grid, next to the kernel path."""
    c = config.network
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    train = _prefix(pools[0], c.n)
    steps = np.unique(np.round(np.logspace(0, math.log10(c.max_steps), c.num_records))).astype(
        int)
    steps = np.concatenate([[0], steps])
    path, (kernel_pred,), kernel_train_mse = kernel_paths(
        train["u"], train["x0"], (test["u"],), jnp.asarray(steps, F64))
    net = TwoLayerReLU.init(jax.random.fold_in(key, width), width=width,
                            in_dim=train["u"].shape[1], out_dim=2, dtype=jnp.float32,
                            compute_dtype=precision_from_config(config).compute_dtype)
    to32 = lambda a: jnp.asarray(a, jnp.float32)
    rec = gd_train(net, to32(train["u"]), to32(train["x0"]), to32(test["u"]),
                   eta=float(path.eta), record_steps=steps)
    nn_pred = np.asarray(rec.predictions, np.float64)
    kernel_pred = np.asarray(kernel_pred)
    edges = np.linspace(config.t0, sde.T, config.kernel.num_time_bins + 1)
    nn_err = path_errors(nn_pred, test, sde, edges)
    kr_err = path_errors(kernel_pred, test, sde, edges)
    gap = np.sqrt(np.mean(np.sum((nn_pred - kernel_pred) ** 2, -1), axis=1))
    scale = np.sqrt(np.mean(np.sum(kernel_pred**2, -1), axis=1))
    return {
        "steps": steps,
        "nn_score_w": nn_err["score_w"],
        "nn_denoiser": nn_err["denoiser"],
        "kernel_score_w": kr_err["score_w"],
        "kernel_denoiser": kr_err["denoiser"],
        "rel_gap": gap / np.maximum(scale, 1e-12),
        "weight_change": rec.weight_change,
        "nn_train_mse": rec.train_mse,
        "kernel_train_mse": np.asarray(kernel_train_mse),
    }


# ----------------------------------------------------------------------------------------------
# Part 4: end to end.


def end_to_end(config, gm, sde, test, pools) -> dict[str, np.ndarray]:
    """Samples of the exact, early-stopped and over-trained scores through one sampler.

    The early-stopping step is the one with the least test sigma-weighted score error
    (`end_to_end.stop = "best"`) or the least hold-out error on noisy labels (`"val"`).
    """
    c = config.end_to_end
    key = jax.random.fold_in(jax.random.key(config.seed), 11)
    k_sample, k_ref, k_mmd = jax.random.split(key, 3)
    train, val = _prefix(pools[0], c.n), _prefix(pools[1], num_val(config, c.n))
    ks = jnp.asarray(ks_grid(config), F64)
    path, (test_pred, val_pred), _ = kernel_paths(train["u"], train["x0"],
                                                  (test["u"], val["u"]), ks)
    val_mse = np.mean(np.sum((np.asarray(val_pred) - np.asarray(val["x0"])[None]) ** 2, -1),
                      axis=1)
    edges = np.linspace(config.t0, sde.T, config.kernel.num_time_bins + 1)
    test_err = path_errors(test_pred, test, sde, edges)["score_w"]
    if c.stop not in ("best", "val"):
        raise ValueError(f"config.end_to_end.stop must be 'best' or 'val', got {c.stop!r}")
    k_best, k_val = float(ks[int(np.argmin(test_err))]), float(ks[int(np.argmin(val_mse))])
    k_early = k_best if c.stop == "best" else k_val
    u_train = train["u"]

    def x0_fn(coef, x, t):
        return relu_ntk(regression_inputs(x, t, x_scale=config.x_scale), u_train) @ coef

    learned = score_from_x0(x0_fn, sde=sde)
    coefficients = jax.jit(path.coefficients)
    scores = {
        "exact": (lambda _, x, t: gm.marginal_score(x, t, sde=sde), None),
        "early": (learned, coefficients(k_early)),
        "overtrained": (learned, coefficients(c.overtrained_k)),
    }
    # One compiled sampler per score function: early and over-trained share theirs.
    samplers = {
        fn: jax.jit(lambda p, k, fn=fn: euler_maruyama(
            fn, p, k, sde=sde, shape=(c.num_samples, 2), num_steps=c.sampler_steps, t_eps=config.t0,
            dtype=F64)[0])
        for fn in {id(fn): fn for fn, _ in scores.values()}.values()
    }
    denoise_learned = jax.jit(x0_fn)
    reference = gm.marginal_sample(k_ref, c.num_samples, config.t0, sde=sde)
    ref_clean = gm.denoiser(reference, config.t0, sde=sde)

    @jax.jit
    def nearest(points: jax.Array) -> jax.Array:
        d2 = jnp.sum((points[:, None] - train["x0"][None]) ** 2, -1)
        return jnp.sqrt(jnp.min(d2, axis=1))

    out: dict[str, Any] = {"k_early": k_early, "k_best": k_best, "k_val": k_val,
                           "k_over": float(c.overtrained_k),
                           "ref_nn_dist": float(jnp.mean(nearest(reference))),
                           "ref_clean_nn_dist": float(jnp.mean(nearest(ref_clean))),
                           "train_x0": np.asarray(train["x0"])}
    t0 = jnp.full((c.num_samples,), config.t0, F64)
    for name, (score_fn, params) in scores.items():
        x = samplers[score_fn](params, k_sample)
        clean = gm.denoiser(x, t0, sde=sde) if name == "exact" else denoise_learned(params, x, t0)
        weights = mode_weights(clean, gm.means)
        out[f"{name}_samples"] = np.asarray(x)
        out[f"{name}_clean"] = np.asarray(clean)
        out[f"{name}_mmd2"] = float(mmd2_rbf(x, reference))
        out[f"{name}_nn_dist"] = float(jnp.mean(nearest(x)))
        out[f"{name}_clean_nn_dist"] = float(jnp.mean(nearest(clean)))
        out[f"{name}_mode_tv"] = float(mode_tv(weights, jnp.exp(gm.log_weights)))
    other = gm.marginal_sample(k_mmd, c.num_samples, config.t0, sde=sde)
    out["null_mmd2"] = float(mmd2_rbf(other, reference))
    return out


# ----------------------------------------------------------------------------------------------
# Plots.


def _plot_kernel(workdir: Path, runs: dict[int, dict], summaries: dict[int, dict],
                 rates: dict[str, float], config) -> None:
    ns = sorted(runs)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, n in enumerate(ns):
        r, s, col = runs[n], summaries[n], cmap(i / max(len(ns) - 1, 1))
        axes[0].loglog(r["ks"], r["score_w"], color=col, label=f"n={n}")
        axes[0].loglog(r["ks"], r["train_mse"] / 2, color=col, ls=":", lw=1)
        for key, marker in (("best", "o"), ("val", "s"), ("rwy", "x")):
            k = s[f"k_{key}"]
            axes[0].plot(max(k, 1.0), s[f"err_{key}"], marker, color=col, ms=7, mfc="none")
    test_errs = np.concatenate([runs[n]["score_w"] for n in ns])
    axes[0].set(xlabel="GD steps k", ylabel="test sigma-weighted score error",
                ylim=(0.5 * test_errs.min(), 2.0 * test_errs.max()),
                title="test error (solid) and train MSE/2 (dotted)\n"
                      "o best, s validation, x RWY rule")
    axes[0].legend(fontsize=8)
    n_arr = np.asarray(ns, float)
    for key, marker in (("best", "o-"), ("val", "s--"), ("rwy", "x:")):
        errs = np.asarray([summaries[n][f"err_{key}"] for n in ns])
        axes[1].loglog(n_arr, errs, marker, label=f"{key}: slope {rates[key]:.2f}")
    last = np.asarray([summaries[n]["err_last"] for n in ns])
    axes[1].loglog(n_arr, last, "^-.", label=f"k={config.kernel.k_max:.0e}: slope "
                   f"{rates['last']:.2f}")
    axes[1].set(xlabel="training set size n", ylabel="test sigma-weighted score error",
                title=f"error at stopping vs n\nslope predicted by the kernel spectrum, "
                      f"-beta/(beta+1) = {rates['theory']:.2f}")
    axes[1].set_xticks(n_arr, [str(n) for n in ns])
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].legend(fontsize=8)
    for key, marker in (("val", "s"), ("rwy", "x")):
        axes[2].loglog([summaries[n]["k_best"] for n in ns],
                       [max(summaries[n][f"k_{key}"], 1.0) for n in ns], marker, label=key)
    lim = [1, config.kernel.k_max]
    axes[2].loglog(lim, lim, "k:", lw=1)
    axes[2].set(xlabel="best step k*", ylabel="chosen step", title="stopping rules vs best")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(workdir / "kernel_paths.png", dpi=110)
    plt.close(fig)

    n = ns[-1]
    r = runs[n]
    edges = np.linspace(config.t0, 1.0, config.kernel.num_time_bins + 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for j in range(len(edges) - 1):
        lab = f"t in [{edges[j]:.2f}, {edges[j + 1]:.2f})"
        axes[0].loglog(r["ks"], r["score_w_bins"][:, j], label=lab)
        axes[1].loglog(r["ks"], r["score_bins"][:, j], label=lab)
    axes[0].set(xlabel="GD steps k", ylabel="sigma^2 ||s - s*||^2",
                title=f"sigma-weighted score error per time bin (n={n})")
    axes[1].set(xlabel="GD steps k", ylabel="||s - s*||^2",
                title=f"unweighted score error per time bin (n={n})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "kernel_time_bins.png", dpi=110)
    plt.close(fig)


def _plot_network(workdir: Path, runs: dict[int, dict], slopes: dict[str, float]) -> None:
    widths = sorted(runs)
    cmap = plt.get_cmap("plasma")
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    any_run = runs[widths[0]]
    steps = np.maximum(any_run["steps"], 0.5)
    axes[0].loglog(steps, any_run["kernel_score_w"], "k-", lw=2.5, label="NTK (infinite width)")
    for i, m in enumerate(widths):
        axes[0].loglog(steps, runs[m]["nn_score_w"], color=cmap(i / len(widths)), label=f"m={m}")
    axes[0].set(xlabel="GD steps", ylabel="test sigma-weighted score error",
                title="network GD vs kernel GD")
    axes[0].legend(fontsize=8)
    gaps = np.asarray([runs[m]["rel_gap"][-1] for m in widths])
    moves = np.asarray([runs[m]["weight_change"][-1] for m in widths])
    axes[1].loglog(widths, gaps, "o-", label=f"relative gap, slope {slopes['gap']:.2f}")
    axes[1].loglog(widths, moves, "s-", label=f"||W-W0||/||W0||, slope {slopes['move']:.2f}")
    axes[1].loglog(widths, gaps[0] * (np.asarray(widths) / widths[0]) ** -0.5, "k:",
                   label="m^-1/2")
    axes[1].set(xlabel="width m", title=f"after {int(any_run['steps'][-1])} steps")
    axes[1].legend(fontsize=8)
    for i, m in enumerate(widths):
        axes[2].loglog(steps, runs[m]["rel_gap"], color=cmap(i / len(widths)), label=f"m={m}")
    axes[2].set(xlabel="GD steps", ylabel="||f_NN - f_NTK|| / ||f_NTK||",
                title="network-kernel gap along training")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "network_vs_kernel.png", dpi=110)
    plt.close(fig)


def _plot_samples(workdir: Path, e2e: dict[str, Any]) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5), sharex=True, sharey=True)
    train = e2e["train_x0"]
    for col, name in enumerate(("exact", "early", "overtrained")):
        for row, kind in enumerate(("samples", "clean")):
            ax = axes[row, col]
            ax.scatter(train[:, 0], train[:, 1], s=4, c="tab:red", alpha=0.5,
                       label="training x0")
            pts = e2e[f"{name}_{kind}"]
            ax.scatter(pts[:, 0], pts[:, 1], s=2, c="k", alpha=0.4, label="samples")
            stat = (f"MMD2 {e2e[f'{name}_mmd2']:.1e}, NN dist {e2e[f'{name}_nn_dist']:.3f}"
                    if kind == "samples" else
                    f"NN dist {e2e[f'{name}_clean_nn_dist']:.3f}, mode TV "
                    f"{e2e[f'{name}_mode_tv']:.3f}")
            where = "at t0" if kind == "samples" else "denoised E[x0|x_t0]"
            ax.set_title(f"{name} score, {where}\n{stat}", fontsize=9)
            ax.set_aspect("equal")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(workdir / "end_to_end_samples.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError on settings the study cannot run with, before anything runs."""
    precision_from_config(config)
    if config.kernel.metric not in ("score_w", "score", "denoiser"):
        raise ValueError("config.kernel.metric must be score_w, score or denoiser, got "
                         f"{config.kernel.metric!r}")
    if config.end_to_end.stop not in ("best", "val"):
        raise ValueError("config.end_to_end.stop must be 'best' or 'val', got "
                         f"{config.end_to_end.stop!r}")
    if not config.kernel.control_noise or min(config.kernel.control_noise) <= 0:
        raise ValueError("config.kernel.control_noise must be positive noise levels, got "
                         f"{config.kernel.control_noise!r}")
    pool = num_val(config, max(*config.kernel.ns, config.network.n, config.end_to_end.n))
    if not 1 <= config.kernel.control_centres <= pool:
        raise ValueError(f"config.kernel.control_centres must be in [1, {pool}] (the hold-out "
                         f"pool), got {config.kernel.control_centres}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the four parts (module docstring); returns the summary written to summary.json."""
    check_config(config)
    workdir = Path(prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS))
    with jax.enable_x64(True):
        return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    gm = make_target(config)
    sde = VPSDE(beta_min=config.sde.beta_min, beta_max=config.sde.beta_max)
    memo: list[Any] = []  # data drawn only when a piece is not cached yet

    def test() -> dict[str, np.ndarray]:
        if not memo:
            memo.extend(draw_triples(config, gm, sde))
        return memo[0]

    def pools(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        test()
        return memo[1][seed]

    writer = MetricWriter(workdir)
    pieces = ([("kernel", n, s) for n in config.kernel.ns for s in range(config.kernel.num_seeds)]
              + [("network", m, 0) for m in config.network.widths] + [("end_to_end", 0, 0)])
    progress = Progress(len(pieces), desc="score estimation")
    done = 0

    def tick(**postfix):
        nonlocal done
        done += 1
        progress.update(done, **postfix)

    # Part 3.
    metric = config.kernel.metric
    runs: dict[int, dict] = {}
    control: dict[int, dict[str, np.ndarray]] = {}
    for n in config.kernel.ns:
        seeds, controls = [], []
        for s in range(config.kernel.num_seeds):
            seeds.append(_cached(
                workdir, f"kernel_n{n}_s{s}",
                lambda n=n, s=s: kernel_run(config, gm, sde, test(), pools(s), n)))
            k_best = stopping_summary(seeds[-1], metric)["k_best"]
            controls.append(_cached(
                workdir, f"rwy_control_n{n}_s{s}",
                lambda n=n, s=s, k=k_best: rwy_control(config, test(), pools(s), n, k)))
            tick(n=n)
        runs[n] = {k: np.mean([r[k] for r in seeds], axis=0) for k in seeds[0]}
        control[n] = {k: np.mean([r[k] for r in controls], axis=0) for k in controls[0]}
        for i, k in enumerate(runs[n]["ks"]):
            writer.write(int(k), {f"kernel/n{n}/{m}": float(runs[n][m][i])
                                  for m in ("score_w", "score", "denoiser", "train_mse",
                                            "val_mse")})
    summaries = {n: stopping_summary(runs[n], metric) for n in config.kernel.ns}
    n_arr = np.asarray(config.kernel.ns, float)
    rates = {key: fit_slope(n_arr, [summaries[n][f"err_{key}"] for n in config.kernel.ns])
             for key in ("best", "val", "rwy", "last")}
    beta = float(np.mean([runs[n]["beta"] for n in config.kernel.ns]))
    rates["theory"] = -beta / (beta + 1)
    rates_unweighted = fit_slope(n_arr, [stopping_summary(runs[n], "score")["err_best"]
                                         for n in config.kernel.ns])
    rates_denoiser = fit_slope(n_arr, [stopping_summary(runs[n], "denoiser")["err_best"]
                                       for n in config.kernel.ns])
    _plot_kernel(workdir, runs, summaries, rates, config)

    # Parts 1-2.
    net_runs = {}
    for m in config.network.widths:
        net_runs[m] = _cached(workdir, f"network_m{m}",
                              lambda m=m: network_run(config, gm, sde, test(), pools(0), m))
        tick(width=m)
        for i, k in enumerate(net_runs[m]["steps"]):
            writer.write(int(k), {f"network/m{m}/{name}": float(net_runs[m][name][i])
                                  for name in ("nn_score_w", "kernel_score_w", "rel_gap",
                                               "weight_change")})
    widths = np.asarray(config.network.widths, float)
    net_slopes = {
        "gap": fit_slope(widths, [net_runs[m]["rel_gap"][-1] for m in config.network.widths]),
        "move": fit_slope(widths, [net_runs[m]["weight_change"][-1]
                                   for m in config.network.widths]),
    }
    _plot_network(workdir, net_runs, net_slopes)

    # Part 4.
    e2e = _cached(workdir, "end_to_end", lambda: end_to_end(config, gm, sde, test(), pools(0)))
    tick()
    progress.close()
    e2e = {k: (v.item() if np.ndim(v) == 0 else v) for k, v in e2e.items()}
    _plot_samples(workdir, e2e)

    widest = max(config.network.widths)
    summary = {
        "kernel": {
            "metric": metric,
            "per_n": {str(n): {**summaries[n], "noise_std": float(runs[n]["noise_std"]),
                               "beta": float(runs[n]["beta"])} for n in config.kernel.ns},
            "slope_best": rates["best"],
            "slope_val": rates["val"],
            "slope_rwy": rates["rwy"],
            "slope_overtrained": rates["last"],
            "slope_theory": rates["theory"],
            "slope_best_unweighted_score": rates_unweighted,
            "slope_best_denoiser": rates_denoiser,
            "rwy_control": {
                "noise": list(config.kernel.control_noise),
                "per_n": {str(n): {k: v.tolist() for k, v in control[n].items()}
                          for n in config.kernel.ns},
            },
        },
        "network": {
            "n": config.network.n,
            "steps": int(net_runs[widest]["steps"][-1]),
            "rel_gap": {str(m): float(net_runs[m]["rel_gap"][-1]) for m in config.network.widths},
            "weight_change": {str(m): float(net_runs[m]["weight_change"][-1])
                              for m in config.network.widths},
            "slope_gap": net_slopes["gap"],
            # The same slope along training: the kernel tracks the network while it is lazy.
            "slope_gap_by_step": {
                str(int(k)): fit_slope(widths, [net_runs[m]["rel_gap"][i]
                                                for m in config.network.widths])
                for i, k in enumerate(net_runs[widest]["steps"]) if k > 0
            },
            "slope_weight_change": net_slopes["move"],
            "best_nn_score_w_widest": float(np.min(net_runs[widest]["nn_score_w"])),
            "best_kernel_score_w": float(np.min(net_runs[widest]["kernel_score_w"])),
        },
        "end_to_end": {k: v for k, v in e2e.items() if np.ndim(v) == 0},
    }
    writer.write(0, {"summary/slope_best": rates["best"], "summary/slope_theory": rates["theory"],
                     "summary/slope_gap": net_slopes["gap"]})
    writer.close()
    with open(workdir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary
