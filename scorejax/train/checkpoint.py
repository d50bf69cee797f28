"""Orbax checkpointing of a training state: periodic, bounded, atomic, restored automatically."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from scorejax.train.workdir import write_json

DATA_STATE_DIR = "data_state"  # input-pipeline states, next to the step directories


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into the expected state.

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> with tempfile.TemporaryDirectory() as tmp, Checkpointer(tmp, save_every=1) as ckpt:
      ...     ckpt.restore(5, {"w": jnp.zeros(2)})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      scorejax.train.checkpoint.CheckpointError: no checkpoint of step 5 in ... (have [])
    """


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: the restore target Orbax fills in."""

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """A thin wrapper around `orbax.checkpoint.CheckpointManager` for one `TrainState`.

    Saves are asynchronous (training continues while the files are written) and atomic: Orbax
    writes each step into a temporary directory and renames it when complete, so a process killed
    mid-save leaves the previous checkpoint intact and the partial one invisible.

    Args:
      directory: where the step directories live (created if missing).
      save_every: `maybe_save` saves steps that are multiples of this.
      keep: how many of the most recent checkpoints to keep.
      async_save: write in a background thread (default) or block until written.
      read_only: open existing checkpoints for reading only (nothing is created or deleted).

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> state = {"w": jnp.arange(3.0), "step": jnp.int32(7)}
      >>> tmp = tempfile.TemporaryDirectory()
      >>> with Checkpointer(tmp.name, save_every=5) as ckpt:  # closing waits for the files
      ...     print(ckpt.maybe_save(4, state), ckpt.maybe_save(5, state))
      False True
      >>> with Checkpointer(tmp.name, save_every=5, read_only=True) as ckpt:
      ...     restored = ckpt.restore_or({"w": jnp.zeros(3), "step": jnp.int32(0)})
      ...     print(ckpt.latest_step(), restored["w"].tolist(), int(restored["step"]))
      5 [0.0, 1.0, 2.0] 7
      >>> tmp.cleanup()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every: int,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def restore_or(self, state: Any) -> Any:
        """The latest checkpoint restored into the structure, dtypes and shardings of `state`,
        or `state` itself when there is no checkpoint.

        Raises:
          CheckpointError: the latest checkpoint is corrupt, incomplete, or was written for a
            state of another structure (e.g. another model size).
        """
        step = self.latest_step()
        if step is None:
            return state
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(state)))
        except Exception as e:
            older = [s for s in self.all_steps() if s < step]
            bad = os.path.join(self.directory, str(step))
            hint = (
                f"delete {bad} to resume from step {older[-1]}"
                if older
                else f"delete {bad} to start afresh"
            )
            raise CheckpointError(
                f"cannot restore checkpoint step {step} in {self.directory}: it is corrupt or was "
                f"written for a different model/optimiser ({type(e).__name__}: {e}); {hint}"
            ) from e
        return restored

    def restore(self, step: int, like: Any) -> Any:
        """Checkpoint `step` restored into the structure, dtypes and shardings of `like`.

        Raises:
          CheckpointError: no such step, or it cannot be restored into `like`.
        """
        if step not in self._manager.all_steps():
            raise CheckpointError(
                f"no checkpoint of step {step} in {self.directory} (have {self.all_steps()})"
            )
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(like)))
        except Exception as e:
            raise CheckpointError(
                f"cannot restore checkpoint step {step} in {self.directory} into the given "
                f"structure ({type(e).__name__}: {e})"
            ) from e

    def maybe_save(self, step: int, state: Any, *, data_state: Any = None) -> bool:
        """Save if `step` is a positive multiple of `save_every`; returns whether it saved.

        `data_state`: as in `save`.
        """
        if step <= 0 or step % self.save_every:
            return False
        return self.save(step, state, data_state=data_state)

    def save(self, step: int, state: Any, *, data_state: Any = None) -> bool:
        """Save `state` as checkpoint `step` (no-op if that step is already saved).

        Returns once the arrays are copied off the devices, so the caller may donate `state` to
        the next train step while the files are still being written.

        `data_state`: this process's input-pipeline state after the batches of steps
        ``1..step`` (a JSON-serialisable value, e.g. a `grain` iterator's ``get_state()``); it is
        written to ``<directory>/data_state/<step>.process<i>.json`` before the checkpoint
        starts, so every complete checkpoint has it. `restore_data_state` reads it back.
        """
        if step in self._manager.all_steps():
            return False
        if data_state is not None:
            self._write_data_state(step, data_state)
        saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._prune_data_states()
        return saved

    def _data_state_path(self, step: int) -> str:
        name = f"{step}.process{jax.process_index()}.json"
        return os.path.join(self.directory, DATA_STATE_DIR, name)

    def _write_data_state(self, step: int, data_state: Any) -> None:
        path = self._data_state_path(step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, data_state)

    def _prune_data_states(self) -> None:
        """Drop this process's data states older than the oldest kept checkpoint."""
        folder = os.path.join(self.directory, DATA_STATE_DIR)
        steps = self.all_steps()
        if not steps or not os.path.isdir(folder):
            return
        suffix = f".process{jax.process_index()}.json"
        for name in os.listdir(folder):
            head = name[: -len(suffix)]
            if name.endswith(suffix) and head.isdigit() and int(head) < steps[0]:
                os.remove(os.path.join(folder, name))

    def restore_data_state(self, step: int | None = None) -> Any:
        """The input-pipeline state saved with checkpoint `step` (default: the latest) by this
        process, or None when there is no checkpoint or it was saved without one.

        Resuming a run restores both: ``state = ckpt.restore_or(state)``, then
        ``it.set_state(ckpt.restore_data_state())`` on the loader's iterator when it is not None.

        Examples:
          >>> import tempfile, jax.numpy as jnp
          >>> with tempfile.TemporaryDirectory() as tmp, Checkpointer(tmp, save_every=1) as ckpt:
          ...     print(ckpt.restore_data_state())  # no checkpoint yet
          ...     _ = ckpt.save(3, {"w": jnp.ones(2)}, data_state={"next_index": 96})
          ...     print(ckpt.restore_data_state())
          None
          {'next_index': 96}
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        path = self._data_state_path(step)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
