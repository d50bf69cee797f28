"""DisBack's degradation path on disk: its directory layout, and `DegradationPath`, which reads it.

`scorejax.train.degradation_recording.record_degradation` records a path (DisBack stage 1); the
maths (the stage-1 update, the score distance, the node selection) is in `scorejax.distill`.
Checkpoints go through Orbax, so shardings are kept and an interruption loses nothing.

Layout of a recording directory:

* `path.json`: settings, the probe log (`[step, D]` every `probe_every` updates) and, once
  complete, the chosen nodes with their distances. Written atomically after every probe.
* `candidates/<step>/`: the copy's parameters at every probe step (step 0 is the teacher).
* `resume/<step>/`: parameters and optimiser state at the latest probe (deleted when complete).

Distances are `scorejax.distill.score_distance` on a fixed set of the frozen initial generator's
samples with fixed noise, so every node is measured on the same footing. A recording's files
depend only on its settings (wall-clock times are logged, never saved).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from scorejax import backtracking
from scorejax.train.checkpoint import Checkpointer

Params = Any

__all__ = ["DegradationPath", "PATH_FILE"]

PATH_FILE = "path.json"
_CANDIDATES = "candidates"
_RESUME = "resume"


class DegradationPath:
    """A recorded degradation path: node `0` is the teacher, node `N` the most degraded.

    Attributes:
      directory: absolute path of the recording.
      num_nodes: `N`, the number of recorded nodes besides the teacher (`len(path) == N + 1`).
      order: node indices in backtracking order, `(N, N-1, ..., 0)`: the fake score starts at
        `order[0]`, the target at `order[1]`, and the teacher `order[-1]` is the final target.
      node_steps: `[N + 1]` stage-1 update counts of the nodes (`node_steps[0] = 0`).
      distances: `[N + 1]` `D_k = E sigma_t^2 ||s_k - s_teacher||^2` on the initial
        generator's diffused samples (`D_0 = 0`).
      to_final: `[N + 1]` the same distance from node `k` to node `N`.
      segment_gaps: `[N]` distance between nodes `j + 1` and `j`: what the generator must close
        while the target is node `j` (the adaptive schedule's scale).
      meta: the whole `path.json`.

    Raises (on construction, before any training can start):
      FileNotFoundError: no recording at `directory`, or missing node checkpoints.
      ValueError: the recording is incomplete or empty.

    Examples:
      `scorejax.train.degradation_recording.record_degradation`'s example records a path and
      reads it; a directory without a recording fails at once:

      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     DegradationPath(tmp)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      FileNotFoundError: no degradation path at ... (missing path.json); record one with
      scorejax.train.degradation_recording.record_degradation
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        meta_file = os.path.join(self.directory, PATH_FILE)
        if not os.path.isfile(meta_file):
            raise FileNotFoundError(
                f"no degradation path at {self.directory} (missing {PATH_FILE}); record one "
                "with scorejax.train.degradation_recording.record_degradation"
            )
        with open(meta_file) as f:
            self.meta = json.load(f)
        if not self.meta.get("complete", False):
            raise ValueError(
                f"the degradation path at {self.directory} is incomplete (recording was "
                "interrupted); run record_degradation again to finish it"
            )
        self.num_nodes = int(self.meta["num_nodes"])
        if self.num_nodes < 1:
            raise ValueError(
                f"the degradation path at {self.directory} is empty: it holds no recorded node "
                "besides the teacher, so there is nothing to backtrack along"
            )
        self.node_steps = [int(s) for s in self.meta["node_steps"]]
        self.distances = [float(d) for d in self.meta["distances"]]
        self.to_final = [float(d) for d in self.meta["to_final"]]
        self.segment_gaps = [float(d) for d in self.meta["segment_gaps"]]
        missing = [s for s in self.node_steps if not os.path.isdir(self._candidate_dir(s))]
        if missing:
            raise FileNotFoundError(
                f"the degradation path at {self.directory} lacks the checkpoints of steps {missing}"
            )

    def __len__(self) -> int:
        return self.num_nodes + 1

    @property
    def order(self) -> tuple[int, ...]:
        """Node indices in backtracking order, `(N, N-1, ..., 0)`."""
        return tuple(range(self.num_nodes, -1, -1))

    def _candidate_dir(self, step: int) -> str:
        return os.path.join(self.directory, _CANDIDATES, str(step))

    def check_compatible(self, like: Params) -> None:
        """Raise `ValueError` unless `like` has the architecture the path was recorded with."""
        _check_fingerprint(self.meta["fingerprint"], like, self.directory)

    def load(self, i: int, like: Params) -> Params:
        """Parameters of node `i` (0 = teacher), restored with the shapes and shardings of `like`.

        `like` is any parameter pytree of the same architecture (for example the teacher's);
        a different architecture raises `ValueError` before anything is read.
        """
        if not 0 <= i <= self.num_nodes:
            raise IndexError(f"node {i} out of range: the path has nodes 0..{self.num_nodes}")
        self.check_compatible(like)
        with Checkpointer(
            os.path.join(self.directory, _CANDIDATES), save_every=1, keep=10**6, read_only=True
        ) as ckpt:
            return ckpt.restore(self.node_steps[i], like)

    def stacked(self, like: Params) -> Params:
        """All nodes stacked on a new leading axis `[N + 1, ...]`, index `i` = node `i`.

        Lets a jitted step pick its target with `scorejax.backtracking.select_node(stacked, node)`
        and switch targets without leaving the device.
        """
        nodes = [self.load(i, like) for i in range(self.num_nodes + 1)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *nodes)

    def profile(self) -> str:
        """One line per node: update count, distance to the teacher and to the final node."""
        rows = [
            f"node {k}: step {s}, D to teacher {d:.4g}, to node {self.num_nodes} {f:.4g}"
            for k, (s, d, f) in enumerate(
                zip(self.node_steps, self.distances, self.to_final, strict=True)
            )
        ]
        return "\n".join(rows)


def _check_fingerprint(want: list, like: Params, directory: str) -> None:
    got = backtracking.param_fingerprint(like)
    if want == got:
        return
    if len(want) != len(got):
        detail = f"{len(want)} parameter arrays recorded, {len(got)} given"
    else:
        w, g = next((w, g) for w, g in zip(want, got, strict=True) if w != g)
        detail = f"recorded {w[0]} {w[1]} {w[2]}, given {g[0]} {g[1]} {g[2]}"
    raise ValueError(
        f"the degradation path at {directory} was recorded from a different score-model "
        f"architecture ({detail})"
    )
