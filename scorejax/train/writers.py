"""Metric output of a run: `metrics.jsonl`, TensorBoard events, and a tqdm progress bar.

Only process 0 writes; on other processes every method is a no-op, so multi-host code calls them
unconditionally.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from scorejax._optional import import_optional

METRICS_FILE = "metrics.jsonl"


def _to_json(value: Any) -> Any:
    """A JSON-friendly copy of a metric value: scalars to float/int, arrays to nested lists."""
    arr = np.asarray(jax.device_get(value))
    if arr.ndim == 0:
        item = arr.item()
        if isinstance(item, float) and not math.isfinite(item):
            return str(item)
        return item
    return arr.tolist()


class MetricWriter:
    """Append metrics to `<workdir>/metrics.jsonl` (one `{"step": s, ...}` object per line) and
    to TensorBoard event files in `workdir` (scalar values only).

    Args:
      workdir: the run directory (must exist).
      resume_step: the step the run resumes from. Lines of an earlier attempt with a larger step
        (written after its last checkpoint) are dropped so the file reads as one uninterrupted
        run; None starts the file afresh.

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> tmp = tempfile.TemporaryDirectory()
      >>> with MetricWriter(tmp.name) as writer:
      ...     writer.write(100, {"loss": jnp.float32(0.5)})
      ...     writer.write(200, {"loss": jnp.float32(0.25), "lr": 1e-3})
      >>> with MetricWriter(tmp.name, resume_step=100):  # resumed from the step-100 checkpoint
      ...     read_metrics(tmp.name)
      [{'step': 100, 'loss': 0.5}]
      >>> tmp.cleanup()
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None):
        self.path = os.path.join(os.fspath(workdir), METRICS_FILE)
        self._active = jax.process_index() == 0
        self._tb = None
        if not self._active:
            return
        self._truncate(resume_step)
        SummaryWriter = import_optional("tensorboardX").SummaryWriter

        self._tb = SummaryWriter(logdir=os.fspath(workdir), flush_secs=10)

    def _truncate(self, resume_step: int | None) -> None:
        kept: list[str] = []
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        if int(json.loads(line)["step"]) <= resume_step:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a killed process
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` (scalars or arrays) at `step`."""
        if not self._active:
            return
        record = {"step": int(step), **{k: _to_json(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, global_step=int(step))

    def flush(self) -> None:
        """Write buffered TensorBoard events to disk (metrics.jsonl is written line by line)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard event file; the writer takes no `write` after this."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of `<workdir>/metrics.jsonl` in file order.

    Examples:
      >>> import tempfile, numpy as np
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     with MetricWriter(tmp) as writer:
      ...         writer.write(1, {"loss": float("nan"), "hist": np.arange(3)})
      ...     read_metrics(tmp)  # non-finite values as strings, arrays as lists
      [{'step': 1, 'loss': 'nan', 'hist': [0, 1, 2]}]
    """
    with open(os.path.join(os.fspath(workdir), METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A tqdm bar over training steps showing the running loss and steps/s (process 0 only).

    Args:
      total: the final step.
      initial: the step the run starts from (after a resume).
      desc: label in front of the bar.

    Examples:
      >>> with Progress(total=100, initial=50, desc="demo") as bar:  # drawn on stderr
      ...     bar.update(60, loss=0.25)
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train"):
        self._bar = None
        if jax.process_index() != 0:
            return
        tqdm = import_optional("tqdm.auto").tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
        self._step = initial

    def update(self, step: int, **postfix: Any) -> None:
        """Advance the bar to `step` and show `postfix` values (e.g. `loss=...`)."""
        if self._bar is None:
            return
        self._bar.update(step - self._step)
        self._step = step
        if postfix:
            self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        """Close the bar (leaving its last state on the terminal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
