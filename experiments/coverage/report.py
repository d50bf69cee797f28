"""The coverage study's outputs: the markdown table of `summarize`'s rows and the plots
`pass_at_n_vs_step.png`, `pass_at_n_vs_n.png` and `confidence.png`."""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from scorejax.train import read_metrics


def markdown_table(rows: list[dict[str, Any]], config: ml_collections.ConfigDict) -> str:
    """`summarize`'s rows as a markdown table: mean ± std per test N ("-" where NaN)."""
    head = "| method | estimate | " + " | ".join(f"pass@{n}" for n in config.test_ns) + " |"
    lines = [head, "|" + " --- |" * (len(config.test_ns) + 2)]
    for r in rows:
        cells = [
            "-" if np.isnan(m) else f"{m:.1f} ± {s:.1f}"
            for m, s in zip(r["mean"], r["std"], strict=True)
        ]
        lines.append(f"| {r['method']} | {r['estimate']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plots(workdir: str, config, results: dict[str, Any]) -> None:
    """pass_at_n_vs_step.png, pass_at_n_vs_n.png and confidence.png in `workdir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [r for r in read_metrics(workdir) if "arrays/test_pass" in r]
    steps = np.asarray([r["step"] for r in history])
    curves = np.asarray([r["arrays/test_pass"] for r in history])  # (T, S, M, len(test_ns))
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(config.train_ns)))
    names = ["CE" if n == 1 else f"DCO N'={n}" for n in config.train_ns]

    fig, axes = plt.subplots(1, len(config.test_ns), figsize=(3.3 * len(config.test_ns), 3.4))
    for i, (ax, n) in enumerate(zip(np.atleast_1d(axes), config.test_ns, strict=True)):
        for j, name in enumerate(names):
            mean = 100 * curves[:, :, j, i].mean(1)
            ax.plot(steps, mean, color="k" if j == 0 else colors[j], lw=2 if j == 0 else 1.2,
                    label=name)
        ax.set_title(f"test pass@{n}")
        ax.set_xlabel("step")
    np.atleast_1d(axes)[0].set_ylabel("% (mean over seeds)")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle(f"coverage {config.variant}: exact test pass@N during training", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "pass_at_n_vs_step.png"), dpi=110)
    plt.close(fig)

    ns = np.asarray(config.test_ns)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for j, name in enumerate(names):
        ax.plot(ns, 100 * results["final"][:, j].mean(0), "o-", color="k" if j == 0 else colors[j],
                label=f"{name} (final)")
    ax.plot(ns, 100 * results["early_stopped_ce"].mean(0), "s--", color="tab:red",
            label="CE early-stopped per N")
    ax.plot(ns, 100 * results["tuned_temperature"][:, 0].mean(0), "^--", color="tab:orange",
            label="CE, temperature tuned per N")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test N")
    ax.set_ylabel("test pass@N (%)")
    ax.set_title(f"coverage {config.variant}: end of training", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "pass_at_n_vs_n.png"), dpi=110)
    plt.close(fig)

    hists = [r for r in history if "arrays/test_confidence_hist" in r]
    first, last = np.asarray(hists[0]["arrays/test_confidence_hist"]), np.asarray(
        hists[-1]["arrays/test_confidence_hist"]
    )
    edges = np.linspace(0, 1, first.shape[-1] + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, h, when in ((axes[0], first, hists[0]["step"]), (axes[1], last, hists[-1]["step"])):
        for j, name in enumerate(names):
            ax.stairs(h[:, j].mean(0), edges, color="k" if j == 0 else colors[j], label=name)
        ax.set_yscale("log")
        ax.set_title(f"step {when}")
        ax.set_xlabel("probability of the greedy answer (test)")
    axes[0].set_ylabel("fraction of test problems")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"coverage {config.variant}: test confidence", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "confidence.png"), dpi=110)
    plt.close(fig)
