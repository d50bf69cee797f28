"""Plots of the score-matching study: `samples.png`, `loss.png` and `score_error.png`."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.score_matching.family import field
from experiments.score_matching.sampling import sampler_end_time
from experiments.score_matching.setup import Setup
from scorejax.train import read_metrics


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
    loss_name = field(config, "loss.name").upper()
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label=f"{loss_name} loss")
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
        end = sampler_end_time(config, setup.sde)
        ax.axvline(end, color="grey", ls=":", label="sampler stops here")
        ax.set_xlabel("diffusion time t (bin centre)")
        ax.set_title(f"{setup.data.name}: EMA network score error vs exact marginal score")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "score_error.png"), dpi=110)
        plt.close(fig)
