"""Plot helpers for the library's scores.

matplotlib is an optional dependency (the `experiments` extra), so it is imported inside each
helper; importing this module does not need it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scorejax._optional import import_optional
from scorejax.calibration import ReliabilityBins


def plot_reliability_diagram(
    bins: ReliabilityBins,
    ax: Any = None,
    *,
    title: str | None = None,
    show_counts: bool = True,
) -> Any:
    """Draw a reliability diagram from `scorejax.calibration.reliability_bins` output.

    Bars span each bin's edges with height = accuracy (mean outcome); a marker shows the bin's
    mean confidence against its accuracy, and the diagonal is perfect calibration. Empty bins are
    left blank. With `show_counts`, the bin counts are drawn as a step line on a twin axis.

    Args:
      bins: the (M + 1,) edges and (M,) confidence / accuracy / count of the diagram.
      ax: a matplotlib Axes; a new figure is created when None.
      title: optional axes title.

    Returns:
      The matplotlib Axes drawn on.
    """
    plt = import_optional("matplotlib.pyplot")

    edges = np.asarray(bins.edges, dtype=float)
    conf = np.asarray(bins.confidence, dtype=float)
    acc = np.asarray(bins.accuracy, dtype=float)
    count = np.asarray(bins.count, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    full = count > 0
    widths = np.diff(edges)
    ax.bar(edges[:-1][full], acc[full], width=widths[full], align="edge", alpha=0.5,
           edgecolor="black", label="accuracy per bin")
    ax.plot(conf[full], acc[full], "o", color="C3", label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    if show_counts:
        twin = ax.twinx()
        twin.step(edges, np.append(count, count[-1:]), where="post", color="gray", lw=1)
        twin.set_ylabel("count", color="gray")
        twin.set_ylim(0, max(1.0, count.max()) * 4)
    return ax


def image_grid(images: np.ndarray, rows: int, fill: float) -> np.ndarray:
    """Tile `images` `[N, H, W, C]` row by row into one canvas with 1-pixel borders of `fill`.

    Returns `[rows (H + 1) + 1, cols (W + 1) + 1]` for one channel and the same with a trailing
    `C` axis otherwise, `cols = ceil(N / rows)`; cells past `N` stay `fill`.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    cols = int(np.ceil(n / rows))
    canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), fill, np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = (
            images[i]
        )
    return canvas[..., 0] if c == 1 else canvas
