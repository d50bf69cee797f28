"""Fast, legible failure of a multi-process run: a watchdog over the peers' heartbeats.

JAX's coordination service aborts the survivors of a dead process only after its heartbeat
timeout (100 s by default), and a process that dies inside a collective leaves its peers blocked
in that collective until then. `PeerWatchdog` makes this fast and legible: every
process publishes a heartbeat counter in the coordination service's key-value store, and a
process whose peer's counter stops (SIGKILL, segfault, lost host), whose peer reports an uncaught
exception, or which loses the coordinator itself, prints one line saying which process failed
and how to resume, and exits with status `EXIT_PEER_FAILED` (75, "temporary failure: retry").
A relaunch with the same command resumes from the last complete Orbax checkpoint, because
checkpoints are written atomically.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# EX_TEMPFAIL from sysexits.h: the run did not fail by itself and a relaunch should succeed.
EXIT_PEER_FAILED = 75
_KV_PREFIX = "scorejax/heartbeat/"
_DONE = "done"
_STARTUP_GRACE = 3
_FAILED = "failed:"


class PeerWatchdog:
    """Detects dead or failed peer processes through the coordination service and aborts.

    A background thread writes this process's heartbeat counter to the coordination service's
    key-value store every `interval_s` seconds and reads every peer's entry. A second thread,
    which does no I/O and so cannot itself be blocked by a dead coordinator, calls `on_failure`
    with a message when:

    - a peer reported an uncaught exception (entry `failed:<reason>`, written by `report_failure`,
      which the exception hook of `scorejax.train.distributed.initialize` calls), immediately;
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

    Examples:
      Two processes' watchdogs over an in-memory store, driven by hand (`start()` runs the same
      rounds in threads, with the clock):

      >>> class Store:  # the key-value calls of the `jax.distributed` client
      ...     def __init__(self):
      ...         self.kv = {}
      ...     def key_value_set(self, key, value, allow_overwrite=False):
      ...         self.kv[key] = value
      ...     def key_value_dir_get(self, prefix):
      ...         return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]
      >>> store = Store()
      >>> p0, p1 = (PeerWatchdog(store, i, 2, timeout_s=10.0, now=0.0) for i in (0, 1))
      >>> p1.poll(now=1.0), p0.poll(now=1.0), p0.check(now=5.0)  # both alive
      (True, True, None)
      >>> p0.poll(now=20.0), p0.check(now=20.0)  # process 1 silent since t = 1
      (True, 'process 1 of 2 sent no heartbeat for 19 s (killed, crashed without a Python
      traceback, or its host is down)')
      >>> p1.report_failure("ValueError: loss is nan")  # what the exception hook calls
      >>> p0.poll(now=21.0), p0.check(now=21.0)
      (True, 'process 1 of 2 failed: ValueError: loss is nan')
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
