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

Failure handling. JAX's coordination service aborts the survivors of a dead process only after
its heartbeat timeout (100 s by default), and a process that dies inside a collective leaves its
peers blocked in that collective until then. `PeerWatchdog` makes this fast and legible: every
process publishes a heartbeat counter in the coordination service's key-value store, and a
process whose peer's counter stops (SIGKILL, segfault, lost host), whose peer reports an uncaught
exception, or which loses the coordinator itself, prints one line saying which process failed
and how to resume, and exits with status `EXIT_PEER_FAILED` (75, "temporary failure: retry").
A relaunch with the same command resumes from the last complete Orbax checkpoint, because
checkpoints are written atomically.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax._src import distributed as _jax_distributed

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
MODES = ("auto", "on", "off")
# EX_TEMPFAIL from sysexits.h: the run did not fail by itself and a relaunch should succeed.
EXIT_PEER_FAILED = 75
_KV_PREFIX = "scorejax/heartbeat/"
_DONE = "done"
_STARTUP_GRACE = 3
_FAILED = "failed:"


class DistributedError(RuntimeError):
    """The environment or the arguments describe an inconsistent multi-process run."""


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """What the environment says about the process layout.

    Attributes:
      source: where the layout came from (`"JAX_NUM_PROCESSES"`, or the name of a cluster
        environment JAX detects: `"slurm"`, `"ompi"`, `"gcetpu"`, `"gketpu"`, `"k8s"`, ...).
      num_processes: the number of processes of the run.
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
    """A TCP port that is free on `host` now (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PeerWatchdog:
    """Detects dead or failed peer processes through the coordination service and aborts.

    A background thread writes this process's heartbeat counter to the coordination service's
    key-value store every `interval_s` seconds and reads every peer's entry. A second thread,
    which does no I/O and so cannot itself be blocked by a dead coordinator, calls `on_failure`
    with a message when:

    - a peer reported an uncaught exception (entry `failed:<reason>`, written by the exception
      hook `install()` adds), immediately;
    - a peer's counter has not advanced for `timeout_s` seconds (killed, crashed hard, host down;
      three times that before the peer's first beat);
    - the key-value store itself has been unreachable for `timeout_s` seconds (process 0, which
      hosts the coordination service, is gone).

    A peer that exited cleanly writes `done` and is no longer watched.

    Args:
      client: the `jax.distributed` client (anything with `key_value_set(key, value,
        allow_overwrite)` and `key_value_dir_get(prefix)`).
      process_id, num_processes: this process and the run's process count.
      timeout_s: seconds of silence after which a peer counts as dead.
      interval_s: heartbeat period (default `timeout_s / 5`, at most 5 s).
      on_failure: called once with the message; default prints it and exits the process with
        status `EXIT_PEER_FAILED` without running exit handlers (they could block on the dead
        peer).
      now: monotonic time of creation (default: now); peers get `timeout_s` from then on.
    """

    def __init__(
        self,
        client: Any,
        process_id: int,
        num_processes: int,
        *,
        timeout_s: float,
        interval_s: float | None = None,
        on_failure: Callable[[str], None] | None = None,
        now: float | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._client = client
        self.process_id = process_id
        self.num_processes = num_processes
        self.timeout_s = float(timeout_s)
        self.interval_s = float(interval_s or min(self.timeout_s / 5.0, 5.0))
        self._on_failure = on_failure or _abort
        self._stop = threading.Event()
        self._lock = threading.Lock()
        now = time.monotonic() if now is None else now
        # Peers get the full timeout from the moment the watchdog is created.
        self._last_seen: dict[int, tuple[str, float]] = {
            p: ("", now) for p in range(num_processes) if p != process_id
        }
        self._last_contact = now
        self._finished: set[int] = set()
        self._failure: str | None = None
        self._fired = False
        self._beat = 0
        self._threads: list[threading.Thread] = []

    def _key(self, process: int) -> str:
        return f"{_KV_PREFIX}{process}"

    def _publish(self, value: str) -> None:
        self._client.key_value_set(self._key(self.process_id), value, allow_overwrite=True)

    def poll(self, now: float | None = None) -> bool:
        """One heartbeat round: publish the next counter value and read every peer's entry.

        Returns whether the key-value store answered. `now` (monotonic seconds) is when the
        round happened (default: now).
        """
        self._beat += 1
        try:
            self._publish(str(self._beat))
            entries = self._client.key_value_dir_get(_KV_PREFIX)
        except Exception:
            # An unreachable store is judged in `check` through `_last_contact`.
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            self._last_contact = now
            for key, value in entries:
                try:
                    peer = int(key.rsplit("/", 1)[-1])
                except ValueError:
                    continue
                if peer not in self._last_seen or peer in self._finished:
                    continue
                if value == _DONE:
                    self._finished.add(peer)
                elif value.startswith(_FAILED) and self._failure is None:
                    reason = value[len(_FAILED) :]
                    self._failure = f"process {peer} of {self.num_processes} failed: {reason}"
                elif value != self._last_seen[peer][0]:
                    self._last_seen[peer] = (value, now)
        return True

    def _beat_loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def _judge_loop(self) -> None:
        while not self._stop.wait(min(self.interval_s, 1.0)):
            message = self.check(time.monotonic())
            if message is not None:
                self._fire(message)
                return

    def check(self, now: float) -> str | None:
        """The failure seen at monotonic time `now`, or None while every peer is healthy."""
        with self._lock:
            if self._failure is not None:
                return self._failure
            silent = now - self._last_contact
            if silent > self.timeout_s:
                return (
                    f"lost the coordination service (hosted by process 0) for {silent:.0f} s: "
                    "process 0 has probably died"
                )
            for peer, (value, seen) in sorted(self._last_seen.items()):
                if peer in self._finished:
                    continue
                # Before its first beat a peer may still be importing modules, which can hold the
                # interpreter lock for long stretches on a busy host: it gets three timeouts.
                limit = self.timeout_s if value else _STARTUP_GRACE * self.timeout_s
                if now - seen > limit:
                    return (
                        f"process {peer} of {self.num_processes} sent no heartbeat for "
                        f"{now - seen:.0f} s (killed, crashed without a Python traceback, or "
                        "its host is down)"
                    )
        return None

    def _fire(self, message: str) -> None:
        with self._lock:
            if self._fired:
                return
            self._fired = True
        self._stop.set()
        if not message.startswith("lost the coordination service"):
            # Tell the other survivors at once instead of letting each wait for its timeout.
            try:
                self._publish(f"{_FAILED}aborted because {message}")
            except Exception:
                pass
        self._on_failure(
            f"process {self.process_id} of {self.num_processes}: {message}. Relaunch all "
            "processes with the same command to resume from the last complete checkpoint."
        )

    def start(self) -> PeerWatchdog:
        """Start the heartbeat and judge threads (daemons) and return self."""
        if self._threads:
            return self
        for target, name in ((self._beat_loop, "beat"), (self._judge_loop, "judge")):
            thread = threading.Thread(target=target, name=f"scorejax-watchdog-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, *, status: str | None = _DONE) -> None:
        """Stop watching and publish `status` (`"done"`, or None to publish nothing)."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2 * self.interval_s + 1.0)
        self._threads = []
        if status is not None:
            try:
                self._publish(status)
            except Exception:
                pass

    def report_failure(self, reason: str) -> None:
        """Publish that this process failed (`reason`: one line), so peers abort at once."""
        self._stop.set()
        try:
            self._publish(_FAILED + " ".join(reason.split())[:500])
        except Exception:
            pass


def _abort(message: str) -> None:
    """Print `message` and end the process now; exit handlers could block on a dead peer."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    sys.stderr.write(f"\nscorejax.distributed FATAL: {message}\n")
    sys.stderr.flush()
    os._exit(EXIT_PEER_FAILED)


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
        _watchdog.stop(status=_DONE)


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
    """One line naming this process, the process count and the device counts (for logs)."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global "
        f"{jax.devices()[0].platform} devices"
    )
