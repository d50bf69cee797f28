"""The distillation study's comparison of its methods: curves reduced to final values and to the
updates needed to reach a baseline (`compare`), `results.md` (`write_results_md`) and the plots
`convergence.png` and `samples.png` (`write_plots`).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from experiments.distill.evaluation import Evaluator
from experiments.distill.methods import baseline_of, split_method
from scorejax.plotting import image_grid


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average over `window` evaluations (shorter at the start)."""
    v = np.asarray(values, np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def updates_to_reach(
    steps: list[int], values: list[float], level: float, window: int
) -> int | None:
    """First evaluated update count whose smoothed value is <= `level`, or None if never."""
    s = smooth(values, window)
    hits = np.flatnonzero(s <= level)
    return int(steps[hits[0]]) if hits.size else None


# The "final" value of a curve: its mean over this last fraction of the evaluations (the plateau;
# a single last evaluation is too noisy to compare methods or to define a level to reach).
FINAL_FRACTION = 0.2
# A method has reached the baseline's final MMD^2 once its smoothed MMD^2 is within this relative
# tolerance of it: the plateau fluctuates by tens of percent between evaluations, so without it a
# baseline whose curve rises at the end would never reach its own final level.
REACH_TOLERANCE = 0.1


def final_value(values: list[float]) -> float:
    """Mean of the last `FINAL_FRACTION` of `values` (at least one)."""
    k = max(1, int(round(FINAL_FRACTION * len(values))))
    return float(np.mean(values[-k:]))


# Metric columns of results.md, in order: (curve key, header, format); absent keys are skipped.
TABLE_COLUMNS = (
    ("mmd2", "MMD^2", "{:.2e}"),
    ("sliced_w2", "SW2", "{:.3g}"),
    ("energy", "energy", "{:.2e}"),
    ("kid", "KID", "{:.3g}"),
    ("confident_rate", "confident", "{:.3f}"),
    ("mode_coverage", "mode coverage", "{:.3g}"),
    ("in_mode_fraction", "in-mode fraction", "{:.3g}"),
    ("score_mismatch", "score mismatch", "{:.3g}"),
)


def compare(results: dict[str, dict], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Final metrics and convergence speed of every method against its Diff-Instruct baseline.

    Final values are means over the last `FINAL_FRACTION` of the evaluations. The level of a
    baseline (`baseline_of`: Diff-Instruct with the method's weighting) is its final MMD^2 times
    `1 + REACH_TOLERANCE`; for every method, the first update count at which its MMD^2, smoothed
    over `eval.smooth` evaluations, reaches its baseline's level, and the ratio to the
    baseline's own count (< 1: faster).
    """
    window = config.eval.smooth
    table: dict[str, Any] = {}
    levels: dict[str, tuple[float, int | None]] = {}
    for name, r in results.items():
        if split_method(name, config)[0] == "diff_instruct":
            c = r["curves"]
            level = final_value(c["mmd2"]) * (1 + REACH_TOLERANCE)
            levels[name] = (level, updates_to_reach(c["step"], c["mmd2"], level, window))
    for method, r in results.items():
        c = r["curves"]
        row = {k: final_value(c[k]) for k, _, _ in TABLE_COLUMNS if k in c}
        row["train_seconds"] = c["train_seconds"][-1]
        row["num_switches"] = r["num_switches"]
        row["baseline"] = baseline_of(method, config)
        # Without its baseline in the run, a method has no level to reach.
        level, base_steps = levels.get(row["baseline"], (None, None))
        reach = None if level is None else updates_to_reach(c["step"], c["mmd2"], level, window)
        row["updates_to_baseline_mmd"] = reach
        row["ratio_to_baseline"] = reach / base_steps if reach is not None and base_steps else None
        table[method] = row
    return {
        "baseline_levels": {k: v[0] for k, v in levels.items()},
        "methods": table,
    }


def _fmt(v: float | None, f: str = "{:.3g}") -> str:
    return "-" if v is None else f.format(v)


def write_results_md(
    path: str,
    comparison: dict,
    stage1: dict | None,
    config: ml_collections.ConfigDict,
    null: dict[str, float],
    step0: dict[str, float] | None = None,
) -> None:
    """The comparison as a markdown table, with the reference row `null` (true samples) and,
    for mixtures, the teacher's score mismatch at step 0 (`step0_mismatch`)."""
    rows = comparison["methods"]
    columns = [c for c in TABLE_COLUMNS if any(c[0] in r for r in rows.values())]
    reference = "train split" if config.data.kind == "image" else "two true sets"
    lines = [
        f"# distill `{config.data.name}` seed {config.seed}: {config.distill.num_steps} generator "
        f"updates, weighting `{config.distill.weighting}`",
        "",
        "| method | "
        + " | ".join(h for _, h, _ in columns)
        + " | updates to DI's final MMD^2 | ratio | switches | stage-2 s |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for m, r in rows.items():
        lines.append(
            f"| {m} | "
            + " | ".join(_fmt(r.get(k), f) for k, _, f in columns)
            + f" | {_fmt(r.get('updates_to_baseline_mmd'), '{}')} | "
            f"{_fmt(r.get('ratio_to_baseline'), '{:.2f}')} | {r['num_switches']} | "
            f"{r['train_seconds']:.1f} |"
        )
    lines.append(
        f"| {reference} | " + " | ".join(_fmt(null.get(k), f) for k, _, f in columns) + " | | | | |"
    )
    if step0 is not None:
        lines += [
            "",
            "Teacher's score mismatch E sigma^2 ||s_teacher - s*||^2 at step 0: "
            f"{step0['g0']:.3g} on G0's diffused samples, {step0['data']:.3g} on diffused data.",
        ]
    if stage1 is not None:
        fmt = lambda v: ", ".join(f"{x:.3g}" for x in v)
        lines += [
            "",
            f"Stage 1 (degradation path, shared by DisBack and the warm-started control): "
            f"{stage1['steps']} fake-score updates; {stage1['num_nodes']} nodes at updates "
            f"{', '.join(map(str, stage1['node_steps']))}; distance to the teacher "
            f"E sigma^2 ||s_k - s_teacher||^2 on G0's diffused samples: {fmt(stage1['distances'])}"
            f"; to the last node: {fmt(stage1['to_final'])}.",
        ]
    lines += [
        "",
        f"Final values are means over the last {FINAL_FRACTION:.0%} of the evaluations; "
        f"'updates to DI's final MMD^2': first evaluation at which the MMD^2 (mean of "
        f"{config.eval.smooth} evaluations) is within {REACH_TOLERANCE:.0%} of that level; "
        f"'ratio': that count over Diff-Instruct's own; '{reference}': the metrics of true "
        "samples, the floor a perfect generator would reach.",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# Convergence panels, in order: (curve key, title, log scale); absent keys are skipped.
PANELS = (
    ("mmd2", "MMD$^2$", True),
    ("sliced_w2", "sliced $W_2$", True),
    ("energy", "energy distance", True),
    ("kid", "KID (classifier features)", False),
    ("confident_rate", "confident-prediction rate", False),
    ("mode_coverage", "mode coverage", False),
    ("score_mismatch", r"teacher mismatch $E\,\sigma^2|s_T - s^*|^2$", True),
    ("target_node", "target node", False),
)


def write_plots(
    workdir: str,
    results: dict,
    evaluator: Evaluator,
    samples: dict,
    title: str,
    config: ml_collections.ConfigDict,
) -> None:
    """`convergence.png` (metrics against generator updates) and `samples.png` (2-D scatter
    plots over true samples, or image grids next to the reference images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = config.data.kind == "image"
    reference = "train split" if image else "two true sets"
    panels = [p for p in PANELS if any(p[0] in r["curves"] for r in results.values())]
    cols = int(np.ceil(len(panels) / 2))
    fig, axes = plt.subplots(2, cols, figsize=(4.7 * cols, 7.5), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, (key, label, log) in zip(axes.ravel(), panels, strict=False):
        for method, r in results.items():
            c = r["curves"]
            if key in c:
                ax.plot(c["step"], c[key], label=method, lw=1.4)
        # An unbiased estimate of a null distance can be negative: no line on a log axis then.
        if key in evaluator.null and (evaluator.null[key] > 0 or not log):
            ax.axhline(evaluator.null[key], color="k", ls=":", lw=1, label=reference)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("generator updates")
        ax.set_title(label, fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "convergence.png"), dpi=100)
    plt.close(fig)

    if image:
        samples = {**samples, "reference images": evaluator.true}
    names = list(samples)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4))
    lim = float(np.percentile(np.abs(evaluator.true), 99.9)) * 1.3
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        x = samples[name]
        if image:
            lo = -1.0 if config.data.scale == "[-1,1]" else 0.0
            grid = (image_grid(x[:64], 8, lo) - lo) / (1.0 - lo)
            ax.imshow(np.clip(grid, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.scatter(evaluator.true[:, 0], evaluator.true[:, 1], s=1, color="0.75", linewidths=0)
            ax.scatter(x[:, 0], x[:, 1], s=1.5, color="tab:red", alpha=0.6, linewidths=0)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "samples.png"), dpi=100)
    plt.close(fig)


def step0_mismatch(results: dict, evaluator: Evaluator) -> dict[str, float] | None:
    """The teacher's score mismatch `E sigma_t^2 ||s_teacher - s*||^2` on the initial generator's
    diffused samples (`g0`) and on diffused true samples (`data`); None without an exact score."""
    first = next(iter(results.values()))["curves"]
    if "score_mismatch" not in first:
        return None
    return {"g0": first["score_mismatch"][0], "data": evaluator.null["score_mismatch"]}
