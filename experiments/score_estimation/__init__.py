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

The package, one part of the study a module:

- `problem`: the target, the triples and their pools (`make_target`, `draw_triples`), the step
  grid, the errors and fitted slopes (`path_errors`, `fit_slope`, `eigen_decay`);
- `kernel`: part 3's kernel GD paths and stopping rules (`kernel_paths`, `kernel_run`,
  `stopping_summary`);
- `control`: part 3's positive control of the RWY rule and the target's RKHS norm
  (`rwy_control`);
- `network`: parts 1-2, the network against the kernel for one width (`network_run`);
- `sampling`: part 4, end-to-end samples (`end_to_end`);
- `plots`: the PNG plots;
- here: `check_config`, and `train_and_evaluate`, which runs the parts in order, caching each
  finished piece.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.score_estimation.control import rwy_control
from experiments.score_estimation.kernel import (
    kernel_paths,
    kernel_predict,
    kernel_run,
    stopping_summary,
)
from experiments.score_estimation.network import network_run
from experiments.score_estimation.plots import plot_kernel, plot_network, plot_samples
from experiments.score_estimation.problem import (
    draw_triples,
    eigen_decay,
    fit_slope,
    ks_grid,
    make_target,
    num_val,
    path_errors,
    sample_triples,
)
from experiments.score_estimation.sampling import end_to_end
from scorejax.score_sdes import VPSDE
from scorejax.train.precision import RECORD_DEFAULTS, precision_from_config
from scorejax.train.workdir import prepare_workdir
from scorejax.train.writers import MetricWriter, Progress

__all__ = [
    "check_config",
    "draw_triples",
    "eigen_decay",
    "end_to_end",
    "fit_slope",
    "kernel_paths",
    "kernel_predict",
    "kernel_run",
    "ks_grid",
    "make_target",
    "network_run",
    "num_val",
    "path_errors",
    "rwy_control",
    "sample_triples",
    "stopping_summary",
    "train_and_evaluate",
]


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
    plot_kernel(workdir, runs, summaries, rates, config)

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
    plot_network(workdir, net_runs, net_slopes)

    # Part 4.
    e2e = _cached(workdir, "end_to_end", lambda: end_to_end(config, gm, sde, test(), pools(0)))
    tick()
    progress.close()
    e2e = {k: (v.item() if np.ndim(v) == 0 else v) for k, v in e2e.items()}
    plot_samples(workdir, e2e)

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
