"""Multi-process runs on JAX's distributed runtime (gloo CPU collectives, several processes on this
machine): environment detection, the peer watchdog, and end-to-end invariances

- a score-matching run in 2 processes x 2 devices ends with the parameters of 1 process x 4;
- checkpoints written by 2 processes restore in 1, and the reverse;
- a process killed mid-run stops the other one quickly with a clear message, and a relaunch
  resumes from the last complete checkpoint and ends where an uninterrupted run ends;
- importance scores over a process-sharded dataset equal the 1-process scores, id by id.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scorejax.train import distributed, watchdog

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "launch" / "local_multiprocess.sh"

# ---------------------------------------------------------------------------------------------
# Environment detection and the watchdog (in-process, fast)
# ---------------------------------------------------------------------------------------------

_CLUSTER_VARS = (
    distributed.ENV_COORDINATOR,
    distributed.ENV_NUM_PROCESSES,
    distributed.ENV_PROCESS_ID,
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "OMPI_MCA_orte_hnp_uri",
    "KUBERNETES_SERVICE_HOST",
)


@pytest.fixture
def clean_env(monkeypatch):
    for var in _CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_detect_cluster_from_variables(clean_env):
    assert distributed.detect_cluster() is None
    assert distributed.detect_cluster({distributed.ENV_NUM_PROCESSES: "4"}) == (
        distributed.ClusterInfo(distributed.ENV_NUM_PROCESSES, 4)
    )
    with pytest.raises(distributed.DistributedError, match="integer"):
        distributed.detect_cluster({distributed.ENV_NUM_PROCESSES: "two"})
    with pytest.raises(distributed.DistributedError, match=">= 1"):
        distributed.detect_cluster({distributed.ENV_NUM_PROCESSES: "0"})
    # A Slurm step with 8 tasks, as `srun` describes it: JAX's own detector recognises it.
    for var, value in dict(
        SLURM_JOB_ID="17",
        SLURM_STEP_NODELIST="node[01-02]",
        SLURM_NTASKS="8",
        SLURM_PROCID="3",
        SLURM_LOCALID="1",
    ).items():
        clean_env.setenv(var, value)
    assert distributed.detect_cluster() == distributed.ClusterInfo("slurm", 8)


def test_initialize_modes_without_a_cluster(clean_env):
    with pytest.raises(ValueError, match="mode"):
        distributed.initialize("sometimes")
    assert distributed.initialize("off") is False
    assert distributed.initialize("auto") is False  # one process: JAX is left alone
    with pytest.raises(distributed.DistributedError, match="outside 0..1"):
        distributed.initialize(
            "on", coordinator_address="127.0.0.1:1", num_processes=2, process_id=2
        )


def test_free_port_is_bindable():
    import socket

    port = distributed.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class _FakeStore:
    """The two key-value calls the watchdog makes, over a dict; `down` makes them fail."""

    def __init__(self):
        self.kv: dict[str, str] = {}
        self.down = False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise ConnectionError("coordination service unavailable")
        assert allow_overwrite or key not in self.kv
        self.kv[key] = value

    def key_value_dir_get(self, prefix):
        if self.down:
            raise ConnectionError("coordination service unavailable")
        return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]


def _watchdog(store, process_id=0, num_processes=3, timeout_s=10.0):
    return watchdog.PeerWatchdog(
        store, process_id, num_processes, timeout_s=timeout_s, on_failure=None, now=0.0
    )


def test_watchdog_flags_a_silent_peer_only_after_the_timeout():
    store = _FakeStore()
    wd = _watchdog(store)
    for t in range(0, 30, 2):
        store.kv["scorejax/heartbeat/1"] = str(t)  # process 1 keeps beating
        if t < 8:
            store.kv["scorejax/heartbeat/2"] = str(t)  # process 2 stops at t = 6
        assert wd.poll(now=float(t))
        message = wd.check(float(t))
        if t <= 16:
            assert message is None, (t, message)
        else:
            assert message.startswith("process 2 of 3 sent no heartbeat for"), message
            break
    else:
        pytest.fail("the silent peer was never reported")
    assert store.kv["scorejax/heartbeat/0"]  # it published its own counter


def test_watchdog_gives_a_peer_three_timeouts_for_its_first_beat():
    store = _FakeStore()
    wd = _watchdog(store, num_processes=2)
    wd.poll(now=25.0)
    assert wd.check(25.0) is None  # no beat from process 1 yet: still starting up
    wd.poll(now=31.0)
    assert wd.check(31.0).startswith("process 1 of 2 sent no heartbeat for 31 s")


def test_watchdog_reports_failed_peer_at_once_and_ignores_finished_peers():
    store = _FakeStore()
    wd = _watchdog(store)
    store.kv["scorejax/heartbeat/1"] = "done"
    store.kv["scorejax/heartbeat/2"] = "1"
    wd.poll(now=1.0)
    wd.poll(now=100.0)  # neither peer's entry changed; only process 2 is still expected to beat
    assert wd.check(100.0).startswith("process 2 of 3 sent no heartbeat for 99 s")
    store.kv["scorejax/heartbeat/2"] = "failed:ValueError: bad batch"
    wd.poll(now=2.0)
    assert wd.check(2.0) == "process 2 of 3 failed: ValueError: bad batch"


def test_watchdog_reports_lost_coordinator():
    store = _FakeStore()
    wd = _watchdog(store, process_id=1)
    assert wd.poll(now=1.0)
    store.down = True
    assert not wd.poll(now=5.0)
    assert wd.check(5.0) is None
    assert wd.check(12.0).startswith("lost the coordination service")


def test_watchdog_fires_once_and_tells_the_other_survivors():
    store = _FakeStore()
    messages = []
    wd = watchdog.PeerWatchdog(
        store, 0, 2, timeout_s=1.5, interval_s=0.05, on_failure=messages.append
    ).start()
    deadline = time.monotonic() + 20
    while not messages and time.monotonic() < deadline:
        time.sleep(0.05)
    wd.stop(status=None)
    assert len(messages) == 1
    assert "process 1 of 2 sent no heartbeat" in messages[0]
    assert "Relaunch all processes" in messages[0]
    assert store.kv["scorejax/heartbeat/0"].startswith("failed:aborted because process 1")


# ---------------------------------------------------------------------------------------------
# Several processes on this machine
# ---------------------------------------------------------------------------------------------

# A score-matching run through the experiment's own training loop
# (`experiments.score_matching.train`), shrunk to a few seconds. SCOREJAX_TEST_DIE_AT="s:p" kills
# process p with SIGKILL right after it started saving checkpoint s (so that save never
# completes), and every restore prints the step it restored.
SM_WORKER = r"""
import sys


class _NoTorch:  # tensorboardX imports torch when it is installed: seconds per run, unused here
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is not used by this run")


sys.meta_path.insert(0, _NoTorch())
import os, signal, sys
from scorejax.train import distributed

distributed.initialize(heartbeat_timeout_s=float(os.environ.get("SCOREJAX_TEST_HEARTBEAT", "60")))

import jax
import numpy as np

from configs.score_matching import get_config
from experiments import score_matching as sm
from experiments.score_matching import training as sm_training
from scorejax.train import prepare_workdir

die_step, die_process = (int(v) for v in os.environ.get("SCOREJAX_TEST_DIE_AT", "-1:-1").split(":"))


class Checkpointer(sm_training.Checkpointer):
    def restore_or(self, state):
        state = super().restore_or(state)
        print(f"restored step {int(state.step)}", flush=True)
        return state

    def maybe_save(self, step, state):
        saved = super().maybe_save(step, state)
        if step == die_step and jax.process_index() == die_process:
            print(f"process {die_process} is killed at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return saved


sm_training.Checkpointer = Checkpointer
config = get_config("gmm8").unlock()
config.train.update(
    num_steps=60, steps_per_call=10, log_every=20, checkpoint_every=20, warmup_steps=5,
    batch_size=64, ema_decay=0.9,
)
config.model.update(hidden_sizes=(32, 32), embed_dim=16)
setup = sm.build(config)
workdir = str(prepare_workdir(config, sys.argv[1]))
state = sm.train(setup, config, workdir)
leaves = jax.tree_util.tree_flatten_with_path({"params": state.params, "ema": state.ema_params})[0]
if jax.process_index() == 0:
    np.savez(
        os.path.join(workdir, "final.npz"),
        **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves},
    )
print(f"finished: {distributed.describe()}", flush=True)
"""

# EL2N and GraNd of a small classifier over the digits test split, read by the package's loader
# (each process reads only its own slice of every global batch), scored data-parallel over all
# devices, gathered and put back in dataset order by example id.
SCORES_WORKER = r"""
import sys


class _NoTorch:  # tensorboardX imports torch when it is installed: seconds per run, unused here
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is not used by this run")


sys.meta_path.insert(0, _NoTorch())
import os, sys
from scorejax.train import distributed

distributed.initialize(heartbeat_timeout_s=60)

import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils

from scorejax import importance as imp
from scorejax.ghost_norm import flax_grand
from scorejax.data import load
from scorejax.models.classifier import MLPClassifier
from scorejax.train import data_parallel, make_mesh, put_replicated, shard_batch

out_dir, data_dir = sys.argv[1], sys.argv[2]
mesh = make_mesh()
model = MLPClassifier(num_classes=10, features=(32,))
params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
params = put_replicated(params, mesh)


def per_example(p, x, y):
    logits = model.apply({"params": p}, x)
    return jnp.stack([imp.el2n(logits, y), flax_grand(model, p, x, y, method="ghost")], -1)


score = data_parallel(per_example, mesh)
batches = load("digits", "test", batch_size=64, seed=3, data_dir=data_dir, num_epochs=1)
ids, scores, local_ids = [], [], []
for b in batches:
    local_ids.append(b["id"])
    g = shard_batch({"image": b["image"], "label": b["label"], "id": b["id"]}, mesh)
    s = score(params, g["image"], g["label"])
    all_s, all_ids = multihost_utils.process_allgather((s, g["id"]), tiled=True)
    scores.append(np.asarray(all_s))
    ids.append(np.asarray(all_ids))
ids, scores = np.concatenate(ids), np.concatenate(scores)
by_id = np.asarray(imp.scores_by_id(jnp.asarray(ids), jnp.asarray(scores), batches.num_examples))
np.savez(
    os.path.join(out_dir, f"scores_{jax.process_count()}p_{jax.process_index()}.npz"),
    ids=ids, scores=scores, by_id=by_id, local_ids=np.concatenate(local_ids),
)
print(f"finished: {distributed.describe()}", flush=True)
"""


def _env(devices: int, extra_path: Path, cache: bool = False, **extra: str) -> dict[str, str]:
    """Environment of a worker process whose module is in `extra_path`.

    `cache`: share a compilation cache in `extra_path` between single-process workers of the
    same layout (compiling dominates these short runs). Multi-process workers never use it: a
    process that loads its programs from the cache while its peer compiles reaches the first
    collective tens of seconds earlier, longer than gloo waits for its peers to set up.
    """
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(extra_path), env.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        # The launcher's processes use this interpreter, whether or not the checkout has a .venv.
        PYTHON=sys.executable,
        **extra,
    )
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(extra_path / "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        )
    return env


def _write_worker(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(source)
    return directory


def _run_single(module_dir: Path, module: str, args: list[str], devices: int = 4, **extra):
    """One process with `devices` CPU devices; returns its stdout (fails the test on error)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=_env(devices, module_dir, cache=True, **extra),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _run_launcher(module_dir: Path, module: str, args: list[str], log_dir: Path, **extra):
    """`launch/local_multiprocess.sh -n 2 -d 2`; returns process 0's output and process 1's."""
    proc = subprocess.run(
        [
            "bash",
            str(LAUNCHER),
            "-n",
            "2",
            "-d",
            "2",
            "-m",
            module,
            "-l",
            str(log_dir),
            "-g",
            "60",
            "--",
            *args,
        ],
        env=_env(2, module_dir, **extra),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    other = (log_dir / "process_1.log").read_text()
    assert proc.returncode == 0, (
        f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}\n---- process 1\n"
        f"{other[-3000:]}"
    )
    return proc.stdout, other


def _tail(out: str, err: str, n: int = 3000) -> str:
    """The ends of a worker's stdout and stderr, without native stack-trace frames."""
    err = "\n".join(line for line in err.splitlines() if not line.startswith("    @ "))
    return f"stdout: ...{out[-n:]}\nstderr: ...{err[-n:]}"


def _final(workdir: Path) -> dict[str, np.ndarray]:
    with np.load(workdir / "final.npz") as f:
        return dict(f)


def _assert_same_params(a: dict, b: dict, exact: bool = False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def sm_reference(tmp_path_factory):
    """The uninterrupted score-matching run in 1 process x 4 devices."""
    root = tmp_path_factory.mktemp("sm")
    modules = _write_worker(root / "modules", "sm_worker", SM_WORKER)
    out = _run_single(modules, "sm_worker", [str(root / "reference")])
    assert "restored step 0" in out and "process 0 of 1: 4 local / 4 global cpu devices" in out
    return root, modules, _final(root / "reference")


@pytest.mark.slow
def test_two_processes_match_one_process_and_restore_its_checkpoint(sm_reference):
    root, modules, reference = sm_reference
    # Same global batch and seed on 2 processes x 2 devices: same parameters.
    out, other = _run_launcher(modules, "sm_worker", [str(root / "two")], root / "logs_two")
    assert "process 0 of 2: 2 local / 4 global cpu devices" in out
    assert "process 1 of 2: 2 local / 4 global cpu devices" in other
    _assert_same_params(_final(root / "two"), reference)
    # Written by 1 process, restored by 2 (relaunching a finished run restores its final state;
    # the reverse direction is checked by the relaunch after a killed process below).
    shutil.copytree(root / "reference", root / "one_in_two")
    (root / "one_in_two" / "final.npz").unlink()
    out, other = _run_launcher(
        modules, "sm_worker", [str(root / "one_in_two")], root / "logs_one_in_two"
    )
    assert "restored step 60" in out and "restored step 60" in other
    _assert_same_params(_final(root / "one_in_two"), reference, exact=True)


@pytest.mark.slow
def test_killed_process_stops_the_run_fast_and_relaunch_resumes(sm_reference):
    root, modules, reference = sm_reference
    workdir = root / "killed"
    heartbeat = 20.0  # generous: this machine is shared, and a false alarm would fail the test
    port = distributed.free_port()
    procs = []
    for pid in range(2):
        env = _env(
            2,
            modules,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            SCOREJAX_TEST_DIE_AT="40:1",
            SCOREJAX_TEST_HEARTBEAT=str(heartbeat),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "sm_worker", str(workdir)],
                env=env,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        out1, err1 = procs[1].communicate(timeout=400)
        died = time.monotonic()
        out0, err0 = procs[0].communicate(timeout=120)
        stopped_after = time.monotonic() - died
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = f"---- process 0\n{_tail(out0, err0)}\n---- process 1\n{_tail(out1, err1)}"
    assert procs[1].returncode == -9, logs
    assert "process 1 is killed at step 40" in out1, logs
    # The survivor was blocked in a collective with the dead process; the watchdog ends it.
    assert procs[0].returncode == watchdog.EXIT_PEER_FAILED, logs
    assert "scorejax.distributed FATAL: process 0 of 2: process 1 of 2 sent no heartbeat" in err0
    assert "resume from the last complete checkpoint" in err0
    assert stopped_after < 3 * heartbeat + 30, stopped_after
    assert "finished" not in out0
    complete = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert complete and complete[-1] in (20, 40), complete
    # Relaunched as 1 process x 4 devices: resumes from the last complete checkpoint (written by
    # 2 processes) and ends with the parameters of the uninterrupted run.
    out = _run_single(modules, "sm_worker", [str(workdir)])
    assert f"restored step {complete[-1]}" in out
    _assert_same_params(_final(workdir), reference)


@pytest.mark.slow
def test_importance_scores_two_processes_equal_one_process(tmp_path):
    from scorejax.data import load_arrays

    data_dir = tmp_path / "tfds"
    n = len(load_arrays("digits", "test", data_dir=str(data_dir))["id"])  # build digits once
    modules = _write_worker(tmp_path / "modules", "scores_worker", SCORES_WORKER)
    _run_single(modules, "scores_worker", [str(tmp_path), str(data_dir)])
    _run_launcher(modules, "scores_worker", [str(tmp_path), str(data_dir)], tmp_path / "logs")
    one = dict(np.load(tmp_path / "scores_1p_0.npz"))
    two = [dict(np.load(tmp_path / f"scores_2p_{i}.npz")) for i in range(2)]
    scored = (n // 64) * 64
    # Every process holds the same gathered result; the ids are those of the 1-process run, in
    # the same order, distinct, and the two processes read disjoint halves of them.
    for t in two:
        np.testing.assert_array_equal(t["ids"], one["ids"])
        np.testing.assert_array_equal(t["scores"], one["scores"])
        np.testing.assert_array_equal(t["by_id"], one["by_id"])
    assert len(np.unique(one["ids"])) == scored
    assert set(two[0]["local_ids"]).isdisjoint(two[1]["local_ids"])
    assert set(two[0]["local_ids"]) | set(two[1]["local_ids"]) == set(one["ids"])
    seen = ~np.isnan(one["by_id"][:, 0])
    assert seen.sum() == scored and set(np.flatnonzero(seen)) == set(one["ids"])
    el2n, grand = one["by_id"][seen].T
    assert np.all((el2n >= 0) & (el2n <= np.sqrt(2))) and np.all(grand > 0)
