"""Shared pytest helpers.

Multi-device checks run in a fresh interpreter, because XLA fixes the number of host devices when
the backend starts: `run_python(code, devices=8)` runs `code` with
`XLA_FLAGS=--xla_force_host_platform_device_count=<devices>` and returns its stdout.

Every test process compiles with `FAST_COMPILE`: the tests' programs are small and run a few
steps, so XLA:CPU compiling them is most of the suite's time, and without LLVM's optimisation
passes it compiles them about twice as fast (measured on a U-Net's loss and gradient: 74 of 75
arrays bit-identical to the optimised build's, the other within 6e-8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Read when the XLA backend starts, which no test has done yet; subprocesses inherit it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def _run_python(
    code: str, devices: int = 8, timeout: float = 600.0, env: dict | None = None
) -> str:
    full_env = dict(os.environ)
    full_env["XLA_FLAGS"] = f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"
    full_env["JAX_PLATFORMS"] = "cpu"
    full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"subprocess failed with code {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr[-5000:]}"
        )
    return proc.stdout


@pytest.fixture
def run_python():
    """Run Python source in a subprocess with N forced host devices; returns stdout."""
    return _run_python


def pytest_collection_modifyitems(config, items):
    """Run the files holding end-to-end (`slow`) tests first, each file's tests in their order.

    `make test` hands whole files to two worker processes in collection order; starting the long
    files first lets the short ones fill the gaps at the end instead of one long file finishing
    alone.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A score-matching run directory (config.json + Orbax checkpoint) of a small ring8 model.

    Its weights are the network's initialisation: the distillation tests check machinery
    (loading, path, switches, resume, bad input), which does not need a good teacher.
    """
    from tiny_distill import score_matching_run

    return score_matching_run(tmp_path_factory.mktemp("teacher"), "gmm8")
