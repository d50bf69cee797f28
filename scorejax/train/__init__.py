"""Training infrastructure shared by every study: state, meshes, the jitted step, checkpoints,
metric writers and run directories. The only part of `scorejax` that touches the file system."""

from scorejax.train.checkpoint import Checkpointer, CheckpointError
from scorejax.train.data_parallel import data_parallel, map_in_batches
from scorejax.train.mesh import (
    DATA_AXIS,
    batch_sharding,
    make_mesh,
    put_replicated,
    replicated_sharding,
    shard_batch,
)
from scorejax.train.state import TrainState
from scorejax.train.step import loss_and_grad, make_train_step, train_step, train_steps
from scorejax.train.workdir import (
    CONFIG_FILE,
    WorkdirError,
    checkpoint_dir,
    config_to_dict,
    has_checkpoint,
    prepare_workdir,
    write_json,
)
from scorejax.train.writers import MetricWriter, Progress, read_metrics

__all__ = [
    "CONFIG_FILE",
    "DATA_AXIS",
    "CheckpointError",
    "Checkpointer",
    "MetricWriter",
    "Progress",
    "TrainState",
    "WorkdirError",
    "batch_sharding",
    "checkpoint_dir",
    "config_to_dict",
    "data_parallel",
    "has_checkpoint",
    "loss_and_grad",
    "make_mesh",
    "make_train_step",
    "map_in_batches",
    "prepare_workdir",
    "put_replicated",
    "read_metrics",
    "replicated_sharding",
    "shard_batch",
    "train_step",
    "train_steps",
    "write_json",
]
