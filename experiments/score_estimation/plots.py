"""The plots of the score-estimation study (PNG files in the workdir)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_kernel(workdir: Path, runs: dict[int, dict], summaries: dict[int, dict],
                rates: dict[str, float], config: ml_collections.ConfigDict) -> None:
    """`kernel_paths.png` (error against k, stopping rules, error against n with its slope) and
    `kernel_time_bins.png` (error per time bin for the largest n)."""
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


def plot_network(workdir: Path, runs: dict[int, dict], slopes: dict[str, float]) -> None:
    """`network_vs_kernel.png`: network and kernel errors, gap and weight movement against m."""
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


def plot_samples(workdir: Path, e2e: dict[str, Any]) -> None:
    """`end_to_end_samples.png`: the samples at t0 and denoised, over the training points."""
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
