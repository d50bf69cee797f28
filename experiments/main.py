"""Entry point of every study: `python -m experiments.main --config=configs/<study>.py:<variant>
--workdir=<dir> [--config.<field>=<value> ...]`.

The config's `study` field names the module `experiments.<study>`, whose
`train_and_evaluate(config, workdir)` runs the experiment. Configs are locked, so overriding a
field that does not exist stops the program, naming the field, before anything runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from scorejax.train import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file and variant, e.g. configs/score_matching.py:gmm8.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it exists).")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    distributed.MODES,
    "Start JAX's multi-process runtime: auto = when the environment describes several processes "
    "(JAX_NUM_PROCESSES, a Cloud TPU slice, Slurm, Open MPI), on = always, off = never.",
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_float(
    "heartbeat_timeout",
    60.0,
    "Multi-process runs: seconds without a heartbeat after which a process counts as dead and "
    "all processes stop (relaunching resumes from the last checkpoint).",
)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config named by a `--config` value `path/to/file.py[:variant]`, without overrides."""
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config_module", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def unknown_override_fields(config: ml_collections.ConfigDict, argv: Sequence[str]) -> list[str]:
    """Dotted names of `--config.<name>=...` overrides in `argv` that `config` does not have."""
    unknown = []
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                name = arg[len(prefix) :].split("=", 1)[0]
                node = config
                for part in name.split("."):
                    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                        unknown.append(name)
                        break
                    node = node[part]
    return unknown


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a plain message for an override of a field that does not exist
    (ml_collections reports it as a bare AttributeError from deep inside its parser)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError):
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        unknown = unknown_override_fields(load_config(spec), argv) if spec else []
        if not unknown:
            raise
        sys.exit(
            f"error: the config {spec} has no field {', '.join(unknown)} (configs are locked: "
            "check the spelling against the config file)"
        )


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Dispatch `config` to `experiments.<config.study>.train_and_evaluate`."""
    study = config.get("study")
    if not study:
        raise ValueError("the config has no `study` field naming the experiment module to run")
    try:
        module = importlib.import_module(f"experiments.{study}")
    except ModuleNotFoundError as e:
        if e.name != f"experiments.{study}":
            raise
        msg = f"config.study={study!r}: there is no experiments/{study}.py or experiments/{study}/"
        raise ValueError(msg) from e
    logging.info("config:\n%s", config)
    print(f"study {study}, workdir {workdir}", flush=True)
    module.train_and_evaluate(config, workdir)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (Orbax reports every save) drown the progress bar; --verbosity=0
        # brings them back.
        logging.set_verbosity(logging.WARNING)
    if distributed.initialize(_DISTRIBUTED.value, heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value):
        logging.info("distributed run: %s", distributed.describe())
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
