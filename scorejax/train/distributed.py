"""JAX's multi-controller runtime: start it when the environment asks for it, and fail fast.

One program runs unchanged as a single process (a laptop, one GPU host) and as one process per
host of a TPU pod or GPU cluster. `initialize()` decides from the environment whether the run has
several processes and then calls `jax.distributed.initialize()`, which must happen before any
other JAX call touches a device:

- `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (set by
  `launch/local_multiprocess.sh` and `launch/gpu_hosts.sh`, or by hand), or
- a cluster JAX recognises by itself: a Cloud TPU VM slice with several workers, Slurm
  (`srun`), Open MPI (`mpirun`), Kubernetes jobs.

On CPU the processes exchange collectives over gloo (TCP); on GPU over NCCL and on TPU over ICI,
chosen by JAX.

Failure handling: with several processes, `initialize()` starts a
`scorejax.train.watchdog.PeerWatchdog` and installs an exception hook that reports this process's
uncaught exception to its peers, so one failed process ends all of them quickly (see that
module).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import socket
import sys
import traceback
from collections.abc import Mapping

import jax
from jax._src import distributed as _jax_distributed

from scorejax.train.watchdog import PeerWatchdog

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
MODES = ("auto", "on", "off")


class DistributedError(RuntimeError):
    """The environment or the arguments describe an inconsistent multi-process run.

    Examples:
      >>> detect_cluster({"JAX_NUM_PROCESSES": "two"})
      Traceback (most recent call last):
      ...
      scorejax.train.distributed.DistributedError: $JAX_NUM_PROCESSES must be an integer, got 'two'
    """


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """What the environment says about the process layout.

    Attributes:
      source: where the layout came from (`"JAX_NUM_PROCESSES"`, or the name of a cluster
        environment JAX detects: `"slurm"`, `"ompi"`, `"gcetpu"`, `"gketpu"`, `"k8s"`, ...).
      num_processes: the number of processes of the run.

    Examples:
      >>> ClusterInfo("slurm", 4).num_processes
      4
    """

    source: str
    num_processes: int


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"${name} must be an integer, got {value!r}") from None


def detect_cluster(environ: Mapping[str, str] | None = None) -> ClusterInfo | None:
    """The multi-process layout the environment describes, or None for a plain single process.

    Checks `$JAX_NUM_PROCESSES` first, then every cluster environment JAX's own
    `jax.distributed.initialize()` would auto-detect (Cloud TPU VM slices, Slurm, Open MPI,
    Kubernetes; the opt-in `mpi4py` method is not probed). Detection reads environment variables
    and, on a Cloud TPU VM only, the VM's metadata server; it never initialises a JAX backend.

    Args:
      environ: variables to read instead of `os.environ` (only the `$JAX_NUM_PROCESSES` check
        honours it; JAX's detectors read `os.environ`).

    Examples:
      >>> detect_cluster({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "1"})
      ClusterInfo(source='JAX_NUM_PROCESSES', num_processes=4)
    """
    env = os.environ if environ is None else environ
    count = _int_env(env, ENV_NUM_PROCESSES)
    if count is not None:
        if count < 1:
            raise DistributedError(f"${ENV_NUM_PROCESSES} must be >= 1, got {count}")
        return ClusterInfo(ENV_NUM_PROCESSES, count)
    try:
        from jax._src import clusters
    except ImportError:  # JAX moved its private detectors: only the explicit variables work.
        return None
    for cluster in clusters.ClusterEnv._cluster_types:
        if cluster.opt_in_only_method:
            continue
        try:
            if not cluster.is_env_present():
                continue
            return ClusterInfo(cluster.name or cluster.__name__, int(cluster.get_process_count()))
        except Exception as e:  # a half-configured scheduler environment
            raise DistributedError(
                f"the environment looks like a {cluster.name or cluster.__name__} cluster, but "
                f"its process count cannot be read ({type(e).__name__}: {e}); set "
                f"${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID} explicitly"
            ) from e
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (the OS picks it when binding port 0).

    Examples:
      >>> port = free_port()  # e.g. for JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>
      >>> 0 < port < 2**16
      True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_watchdog: PeerWatchdog | None = None


def _excepthook(exc_type, exc, tb) -> None:
    """Print the traceback, tell the peers, and exit without blocking in JAX's shutdown barrier
    (which would wait for peers stuck in a collective with this process)."""
    traceback.print_exception(exc_type, exc, tb)
    if _watchdog is not None:
        _watchdog.report_failure(f"{exc_type.__name__}: {exc}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _finish() -> None:
    # Runs before JAX's own exit handler (registered earlier, run later), which shuts the
    # runtime down.
    if _watchdog is not None:
        _watchdog.stop()


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: float = 60.0,
    initialization_timeout_s: int = 300,
    watchdog: bool = True,
) -> bool:
    """Start JAX's distributed runtime when the run has several processes.

    Must run before anything else touches a JAX device. Explicit arguments win over
    `$JAX_COORDINATOR_ADDRESS` / `$JAX_NUM_PROCESSES` / `$JAX_PROCESS_ID`, which win over JAX's
    cluster auto-detection (Cloud TPU, Slurm, Open MPI, Kubernetes). On CPU the cross-process
    collectives use gloo unless `$JAX_CPU_COLLECTIVES_IMPLEMENTATION` says otherwise. With
    several processes a `PeerWatchdog` is started and an exception hook installed, so one failed
    process ends all of them within about `heartbeat_timeout_s` seconds.

    Args:
      mode: `"auto"`: initialise iff `detect_cluster()` or the arguments give more than one
        process; `"on"`: always initialise (e.g. a cluster JAX detects but this module does
        not know, or a one-process run that should exercise the runtime); `"off"`: never.
      coordinator_address: `host:port` of process 0's coordination service.
      num_processes, process_id: the layout; process ids are 0..num_processes-1.
      heartbeat_timeout_s: seconds without a heartbeat after which a peer counts as dead (the
        watchdog's timeout; JAX's own, a backstop, is three times that, at least 100 s).
      initialization_timeout_s: how long processes wait for each other at start-up.
      watchdog: start the `PeerWatchdog` (recommended).

    Returns:
      Whether the distributed runtime is initialised (also True if it already was).

    Raises:
      ValueError: `mode` is not one of `MODES`.
      DistributedError: inconsistent layout variables, or JAX was already in use.

    Examples:
      A program calls ``initialize()`` first thing; ``"off"`` keeps a single process:

      >>> initialize("off")
      False
    """
    global _watchdog
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if jax.distributed.is_initialized():
        return True
    if mode == "off":
        return False
    env = os.environ
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int_env(env, ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _int_env(env, ENV_PROCESS_ID)
    if mode == "auto":
        count = num_processes
        if count is None:
            cluster = detect_cluster()
            count = None if cluster is None else cluster.num_processes
        if count is None or count <= 1:
            return False
    if num_processes is not None and process_id is not None:
        if not 0 <= process_id < num_processes:
            raise DistributedError(
                f"process id {process_id} is outside 0..{num_processes - 1} (from "
                f"${ENV_PROCESS_ID} / ${ENV_NUM_PROCESSES} or the arguments)"
            )
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in env:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(initialization_timeout_s),
            # JAX's own detection is the backstop: well behind the watchdog, whose message is
            # clearer and which also reports failures JAX does not see (Python exceptions).
            heartbeat_timeout_seconds=int(max(3 * heartbeat_timeout_s, 100)),
        )
    except RuntimeError as e:
        raise DistributedError(
            f"cannot start JAX's distributed runtime ({e}); call "
            "scorejax.train.distributed.initialize() first thing in the program, before any "
            "JAX computation or jax.devices()"
        ) from e
    state = _jax_distributed.global_state
    if watchdog and state.num_processes > 1:
        _watchdog = PeerWatchdog(
            state.client, state.process_id, state.num_processes, timeout_s=heartbeat_timeout_s
        ).start()
        sys.excepthook = _excepthook
        atexit.register(_finish)
    return True


def describe() -> str:
    """One line naming this process, the process count and the device counts (for logs).

    Examples:
      >>> describe().startswith("process 0 of 1: ")  # then e.g. "1 local / 1 global cpu devices"
      True
    """
    return (
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global "
        f"{jax.devices()[0].platform} devices"
    )
