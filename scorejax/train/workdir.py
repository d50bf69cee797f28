"""The run directory: its config record, the guard against mixing two runs in one place, and
atomic JSON writes for the records a run leaves there."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"


class WorkdirError(RuntimeError):
    """The workdir belongs to a run with a different config.

    Examples:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     _ = prepare_workdir({"lr": 0.1}, tmp)
      ...     os.makedirs(checkpoint_dir(tmp) / "100")  # the lr 0.1 run saved a checkpoint
      ...     prepare_workdir({"lr": 0.2}, tmp)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      scorejax.train.workdir.WorkdirError: ... holds checkpoints of a run with a different config
      (lr: 0.1 -> 0.2); use another --workdir, or delete it to start over
    """


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write `obj` as JSON to `path` atomically: a reader sees the old file or the whole new one.

    The text (`json.dumps(obj, **dump_kwargs)` and a final newline) goes to a temporary file named
    after this process, which then replaces `path` (`os.replace`, atomic on POSIX): every process
    of a multi-process run may write the same record, and a shared temporary name would let one
    process's rename pull the file from under another. An interrupted write leaves `path` as it
    was.

    Examples:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     write_json(os.path.join(tmp, "record.json"), {"fid": 3.5})
      ...     print(open(os.path.join(tmp, "record.json")).read(), end="")
      ...     print(os.listdir(tmp))  # no temporary file left behind
      {"fid": 3.5}
      ['record.json']
    """
    text = json.dumps(obj, **dump_kwargs) + "\n"  # before any file is opened: it may raise
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    """Where a run in `workdir` keeps its Orbax checkpoints: `<workdir>/checkpoints`.

    Examples:
      >>> checkpoint_dir("runs/demo").as_posix()
      'runs/demo/checkpoints'
    """
    return Path(workdir) / CHECKPOINT_SUBDIR


def has_checkpoint(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` holds at least one finished checkpoint (a step-numbered directory).

    Examples:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     before = has_checkpoint(tmp)
      ...     os.makedirs(checkpoint_dir(tmp) / "100.orbax-checkpoint-tmp-1")  # being written
      ...     during = has_checkpoint(tmp)
      ...     os.makedirs(checkpoint_dir(tmp) / "100")
      ...     print(before, during, has_checkpoint(tmp))
      False False True
    """
    ckpt = checkpoint_dir(workdir)
    return ckpt.is_dir() and any(p.is_dir() and p.name.isdigit() for p in ckpt.iterdir())


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-normal plain dict of an `ml_collections.ConfigDict` or a mapping (tuples become
    lists, non-JSON leaves become strings), so that a config compares equal to its reloaded
    `config.json`.

    Examples:
      >>> config_to_dict({"model": {"features": (64, 64)}, "seed": 0})
      {'model': {'features': [64, 64]}, 'seed': 0}
    """
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(raw, default=str, sort_keys=True))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """Dotted names of the fields that differ between two config dicts, minus `ignore`d ones.

    Examples:
      >>> old = {"lr": 0.1, "model": {"width": 64}, "num_steps": 100}
      >>> new = {"lr": 0.1, "model": {"width": 128}, "num_steps": 200, "seed": 0}
      >>> config_diff(old, new, ignore=["num_steps"])
      ['model.width', 'seed']
    """
    a, b = _flatten(old), _flatten(new)
    skip = set(ignore)
    return sorted(k for k in a.keys() | b.keys() if k not in skip and a.get(k) != b.get(k))


def prepare_workdir(
    config: Any,
    workdir: str | os.PathLike,
    *,
    ignore: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Create `workdir` and record `config` in `<workdir>/config.json`.

    A workdir that already holds a checkpoint is accepted only if its recorded config equals
    `config` (fields listed in `ignore` may differ), so a run resumes only its own checkpoints.
    `defaults` maps dotted names of fields added to a study after runs were recorded to the
    value that reproduces those runs: a recorded config that lacks such a field compares as if
    it held that value. The check happens before anything is created or written.

    Returns:
      `workdir` as an absolute `Path`.

    Raises:
      WorkdirError: the workdir holds checkpoints of a different (or unrecorded) config.

    Examples:
      >>> import json, os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     path = prepare_workdir({"lr": 0.1, "num_steps": 100}, tmp)
      ...     os.makedirs(checkpoint_dir(path) / "100")  # the run saved a checkpoint
      ...     # Resuming with more steps is the same run; another field would raise WorkdirError.
      ...     path = prepare_workdir({"lr": 0.1, "num_steps": 200}, tmp, ignore=["num_steps"])
      ...     print(json.loads((path / CONFIG_FILE).read_text()))
      {'lr': 0.1, 'num_steps': 200}
    """
    path = Path(workdir).absolute()
    new = config_to_dict(config)
    config_path = path / CONFIG_FILE
    if has_checkpoint(path):
        if not config_path.exists():
            raise WorkdirError(
                f"{path} holds checkpoints but no {CONFIG_FILE}, so it cannot be checked that "
                "they belong to this config; use another --workdir or delete that directory"
            )
        try:
            old = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WorkdirError(f"{config_path} is unreadable ({e}); use another --workdir") from e
        old = {**dict(defaults or {}), **_flatten(old)}
        diff = config_diff(old, new, ignore)
        if diff:
            a, b = _flatten(old), _flatten(new)
            shown = ", ".join(
                f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}" for k in diff[:8]
            )
            raise WorkdirError(
                f"{path} holds checkpoints of a run with a different config ({shown}"
                f"{', ...' if len(diff) > 8 else ''}); use another --workdir, or delete it to "
                "start over"
            )
    path.mkdir(parents=True, exist_ok=True)
    write_json(config_path, new, indent=2, sort_keys=True)
    return path
