"""Analysis and reports of the data-diet study: accuracy tables, score correlations, label noise.

`analyse` turns the results of every task into the tables of `results.json`; `write_reports`
writes them as `results.md` and the PNG plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.data_diet.setup import (
    model_names,
    noise_model_names,
    score_names,
    strategies,
    windows,
)
from experiments.data_diet.tasks import strategy_scores
from scorejax import pruning


def _mean_std(a: np.ndarray) -> list[float]:
    a = np.asarray(a, np.float64)
    return [float(np.mean(a) * 100), float(np.std(a) * 100)]


def _smallest_class(
    scores: jnp.ndarray,
    labels: np.ndarray,
    fraction: float,
    strategy: str,
    balanced: bool,
    num_classes: int,
) -> int:
    """Examples of the rarest class in the subset `pruning.prune` keeps."""
    kept = pruning.prune(
        scores,
        keep_fraction=fraction,
        strategy=strategy,
        labels=jnp.asarray(labels),
        num_classes=num_classes,
        class_balanced=balanced,
    )
    return int(np.bincount(labels[np.asarray(kept)], minlength=num_classes).min())


def analyse(
    config: ml_collections.ConfigDict, results: dict, labels: np.ndarray, flipped: np.ndarray
) -> dict:
    """Accuracy tables (%, mean and std over seeds), Spearman correlations, label-noise AUROC."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    names = score_names(config)
    fractions = [float(f) for f in config.prune.fractions]
    out: dict[str, Any] = {"score_names": names, "fractions": fractions, "models": {}}
    num_classes = int(labels.max()) + 1
    for m in model_names(config):
        r = results[m]
        scores = np.asarray(r["scores"], np.float64)
        rho = spearmanr(scores.T).statistic
        table = {}
        min_class = {}
        for i, strategy in enumerate(strategies(config, m)):
            table[strategy] = [_mean_std(r["acc"][i, j]) for j in range(len(fractions))]
            parts = strategy.split(":")
            if parts[0] != "random":
                s = jnp.asarray(strategy_scores(config, np.asarray(r["scores"]), parts[0]))
                min_class[strategy] = [
                    _smallest_class(s, labels, f, parts[1], len(parts) > 2, num_classes)
                    for f in fractions
                ]
        out["models"][m] = {
            "full": _mean_std(r["full_acc"]),
            "score_runs": _mean_std(r["score_run_acc"]),
            "accuracy": table,
            "min_class_count": min_class,
            "spearman": np.asarray(rho, np.float64).round(4).tolist(),
        }
        if "window_acc" in r:
            out["models"][m]["clean_windows"] = [_mean_std(row) for row in r["window_acc"]]
    n_flip = int(flipped.sum())
    for m in noise_model_names(config):
        r = results[f"{m}_noisy"]
        scores = np.asarray(r["scores"], np.float64)
        auroc = {nm: float(roc_auc_score(flipped, s)) for nm, s in zip(names, scores, strict=True)}
        top = {
            nm: float(flipped[np.argsort(-s, kind="stable")[:n_flip]].mean())
            for nm, s in zip(names, scores, strict=True)
        }
        rows = ["random"] + [f"window{w}" for w in windows(config)]
        out.setdefault("noise", {})[m] = {
            "num_flipped": n_flip,
            "offsets": [int(round(w * n_flip)) for w in windows(config)],
            "fractions": [float(f) for f in config.noise.fractions],
            "full": _mean_std(r["full_acc"]),
            "auroc": auroc,
            "flipped_share_of_top": top,
            "accuracy": {
                row: [_mean_std(r["acc"][i, j]) for j in range(len(config.noise.fractions))]
                for i, row in enumerate(rows)
            },
        }
    return out


def flat_metrics(analysis: dict) -> dict[str, float]:
    """The headline numbers of `analyse`'s tables as scalars, for metrics.jsonl / TensorBoard."""
    flat = {}
    for m, a in analysis["models"].items():
        flat[f"{m}/full_acc"] = a["full"][0]
        for strategy, row in a["accuracy"].items():
            for f, (mean, _) in zip(analysis["fractions"], row, strict=True):
                flat[f"{m}/keep{round(f * 100)}/{strategy}"] = mean
    for m, a in analysis.get("noise", {}).items():
        flat[f"{m}_noisy/full_acc"] = a["full"][0]
        for name, v in a["auroc"].items():
            flat[f"{m}_noisy/auroc/{name}"] = v
    return flat


def _markdown(config: ml_collections.ConfigDict, analysis: dict) -> str:
    names = analysis["score_names"]
    fr = analysis["fractions"]
    lines = [f"# Data diet on `{config.data.name}`", ""]
    for m, a in analysis["models"].items():
        lines += [
            f"## {m}: test accuracy % (mean ± std over {config.prune.seeds} seeds)",
            "",
            f"Full data: {a['full'][0]:.2f} ± {a['full'][1]:.2f}; score runs "
            f"({config.scores.runs}): {a['score_runs'][0]:.2f}.",
            "",
            "| strategy | " + " | ".join(f"keep {round(f * 100)}%" for f in fr) + " |",
            "| --- " * (len(fr) + 1) + "|",
        ]
        for strategy, row in a["accuracy"].items():
            cells = " | ".join(f"{mu:.2f} ± {sd:.2f}" for mu, sd in row)
            lines.append(f"| {strategy} | {cells} |")
        lines += ["", "Smallest class count in the kept subset:", ""]
        lines += ["| strategy | " + " | ".join(f"{round(f * 100)}%" for f in fr) + " |"]
        lines += ["| --- " * (len(fr) + 1) + "|"]
        lines += [
            f"| {s} | " + " | ".join(str(c) for c in counts) + " |"
            for s, counts in a["min_class_count"].items()
        ]
        rho = np.asarray(a["spearman"])
        lines += ["", "Spearman correlation between scores:", ""]
        lines += ["| | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
        lines += [
            f"| {nm} | " + " | ".join(f"{v:.2f}" for v in rho[i]) + " |"
            for i, nm in enumerate(names)
        ]
        lines.append("")
        if "clean_windows" in a:
            noise = analysis["noise"][m]
            cells = " | ".join(
                f"skip {o}: {mu:.2f}"
                for o, (mu, _) in zip(noise["offsets"], a["clean_windows"], strict=True)
            )
            lines += [
                f"Clean labels, keep {round(config.noise.clean_window_fraction * 100)}% after "
                f"skipping the top m by {config.noise.window_score}: {cells}",
                "",
            ]
    for m, a in analysis.get("noise", {}).items():
        lines += [
            f"## {m}, {config.noise.fraction:.0%} flipped labels ({a['num_flipped']} examples)",
            "",
            f"Full noisy data: {a['full'][0]:.2f} ± {a['full'][1]:.2f}.",
            "",
            f"| score | AUROC for flipped | flipped share of the top {a['num_flipped']} |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {nm} | {a['auroc'][nm]:.3f} | {a['flipped_share_of_top'][nm]:.2f} |" for nm in names
        ]
        fr_n = a["fractions"]
        lines += [
            "",
            f"Keep the highest {config.noise.window_score} after skipping the top m (offset):",
            "",
            "| selection | " + " | ".join(f"keep {round(f * 100)}%" for f in fr_n) + " |",
            "| --- " * (len(fr_n) + 1) + "|",
        ]
        labels = ["random"] + [f"skip m={o}" for o in a["offsets"]]
        for lab, row in zip(labels, a["accuracy"].values(), strict=True):
            lines.append(
                f"| {lab} | " + " | ".join(f"{mu:.2f} ± {sd:.2f}" for mu, sd in row) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def write_reports(config: ml_collections.ConfigDict, analysis: dict, workdir: Path) -> None:
    """results.json, results.md and the PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (workdir / "results.json").write_text(json.dumps(analysis, indent=1) + "\n")
    (workdir / "results.md").write_text(_markdown(config, analysis))
    fr = analysis["fractions"]
    for m, a in analysis["models"].items():
        # Left: every strategy; right: zoom on the band around random selection.
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
        random_mu = [r[0] for r in a["accuracy"].get("random", [])]
        for ax in axes:
            for i, (strategy, row) in enumerate(a["accuracy"].items()):
                mu = [a["full"][0]] + [r[0] for r in row]
                sd = [a["full"][1]] + [r[1] for r in row]
                if strategy == "random":
                    style = {"ls": "--", "color": "k", "lw": 2}
                else:
                    style = {"color": colors[i % 20], "ls": ("-", "-.", ":")[i % 3]}
                ax.errorbar(
                    [1.0, *fr], mu, yerr=sd, marker="o", ms=3, capsize=2, label=strategy, **style
                )
            ax.set_xlabel("fraction of training data kept")
            ax.set_ylabel("test accuracy (%)")
        if random_mu:
            axes[1].set_ylim(min(random_mu) - 2.0, max(a["full"][0], max(random_mu)) + 1.0)
        axes[0].set_title(f"{config.data.name}, {m}: prune by score, retrain")
        axes[1].set_title("zoom")
        axes[1].legend(fontsize=6, ncol=2, loc="lower right")
        fig.tight_layout()
        fig.savefig(workdir / f"accuracy_vs_kept_{m}.png", dpi=120)
        plt.close(fig)
        names = analysis["score_names"]
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(np.asarray(a["spearman"]), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(im)
        ax.set_title(f"Spearman correlation of scores ({m})")
        fig.tight_layout()
        fig.savefig(workdir / f"spearman_{m}.png", dpi=120)
        plt.close(fig)
    for m, a in analysis.get("noise", {}).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        offsets = a["offsets"]
        for j, f in enumerate(a["fractions"]):
            rows = list(a["accuracy"].values())
            ax.plot(offsets, [r[j][0] for r in rows[1:]], marker="o", label=f"noisy, keep {f:.0%}")
            ax.axhline(rows[0][j][0], ls=":", color=f"C{j}", label=f"noisy, random {f:.0%}")
        clean = analysis["models"].get(m, {}).get("clean_windows")
        if clean:
            ax.plot(
                offsets,
                [r[0] for r in clean],
                marker="s",
                color="k",
                label=f"clean, keep {config.noise.clean_window_fraction:.0%}",
            )
        ax.axhline(a["full"][0], ls="--", color="grey", label="all noisy data")
        ax.set_xlabel(f"highest-{config.noise.window_score} examples skipped (m)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{a['num_flipped']} flipped labels: offset selection ({m})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(workdir / f"label_noise_{m}.png", dpi=120)
        plt.close(fig)
