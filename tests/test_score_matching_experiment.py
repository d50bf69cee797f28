"""The score-matching experiment end to end: config handling, input errors, resume after a real
kill, and sample quality of a short `gmm8` run relative to the exact-score sampler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs.score_matching import get_config
from experiments import score_matching
from experiments.main import unknown_override_fields
from scorejax.train import (
    Checkpointer,
    TrainState,
    WorkdirError,
    checkpoint_dir,
    prepare_workdir,
    read_metrics,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MMD_FACTOR = 3.0

# A small model and budget so the experiment's full code path runs in seconds.
TINY = {
    "model.hidden_sizes": (32, 32),
    "model.embed_dim": 16,
    "train.batch_size": 64,
    "train.num_steps": 100,
    "train.steps_per_call": 5,
    "train.warmup_steps": 10,
    "train.log_every": 10,
    "train.checkpoint_every": 10,
    "sampler.num_steps": 20,
    "eval.num_samples": 256,
    "eval.num_time_bins": 3,
    "eval.points_per_bin": 256,
    "eval.num_projections": 16,
}


def _config(overrides: dict, variant: str = "gmm8"):
    config = get_config(variant)
    for name, value in overrides.items():
        *parents, leaf = name.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _flag_args(overrides: dict) -> list[str]:
    return [
        f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in overrides.items()
    ]


def _parse(argv: list[str]):
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, flag_values=fv, lock_config=True, sys_argv=argv
    )
    fv(argv)
    return holder.value


def test_config_overrides_and_unknown_field():
    config = _parse(
        ["prog", "--config=configs/score_matching.py:grid", "--config.train.num_steps=50"]
    )
    assert (config.data.name, config.train.num_steps) == ("grid25", 50)
    argv = ["prog", "--config=configs/score_matching.py", "--config.train.num_stepz=3"]
    with pytest.raises(AttributeError, match="num_stepz"):
        _parse(argv)
    assert unknown_override_fields(get_config("gmm8"), argv) == ["train.num_stepz"]
    with pytest.raises(ValueError, match="unknown score_matching variant"):
        get_config("gmm9")


def test_main_reports_unknown_field_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=configs/score_matching.py:gmm8",
            f"--workdir={workdir}",
            "--config.model.widht=3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "has no field model.widht" in proc.stderr
    assert not workdir.exists()


def test_bad_inputs_fail_before_writing(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"data_dim=3 but the data 'ring8' has dimension 2"):
        score_matching.train_and_evaluate(_config({**TINY, "model.data_dim": 3}), str(workdir))
    with pytest.raises(ValueError, match="t_min must be > 0"):
        score_matching.train_and_evaluate(_config({**TINY, "loss.t_min": 0.0}), str(workdir))
    with pytest.raises(ValueError, match="multiple of config.train.steps_per_call"):
        score_matching.train_and_evaluate(
            _config({**TINY, "train.checkpoint_every": 12}), str(workdir)
        )
    assert not workdir.exists()


def _final_state(config, workdir) -> TrainState:
    setup = score_matching.build(config)
    tx = score_matching.make_optimizer(config)
    template = TrainState.create(setup.init(jax.random.key(0)), tx)
    with Checkpointer(checkpoint_dir(workdir), save_every=1) as ckpt:
        assert ckpt.latest_step() == config.train.num_steps
        return ckpt.restore_or(template)


def test_killed_run_resumes_to_same_parameters(tmp_path):
    config = _config(TINY)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    cmd = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=configs/score_matching.py:gmm8",
        f"--workdir={killed}",
        *_flag_args(TINY),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    try:
        while not any(p.name.isdigit() for p in _listdir(checkpoint_dir(killed))):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with Checkpointer(checkpoint_dir(killed), save_every=1) as ckpt:
        killed_at = ckpt.latest_step()
    assert killed_at is not None and killed_at < config.train.num_steps
    assert not (killed / score_matching.EVAL_FILE).exists()

    # Resume (in this process) and run the same config without interruption.
    results = score_matching.train_and_evaluate(config, str(killed))
    prepare_workdir(config, straight)
    score_matching.train(score_matching.build(config), config, str(straight))
    resumed, reference = _final_state(config, killed), _final_state(config, straight)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), resumed, reference)
    # The metric log reads as one uninterrupted run.
    log_k = [(r["step"], r["loss"]) for r in read_metrics(killed) if "loss" in r]
    log_s = [(r["step"], r["loss"]) for r in read_metrics(straight) if "loss" in r]
    assert log_k == log_s and len(log_s) == config.train.num_steps // config.train.log_every
    assert np.isfinite(results["model/mmd2"]) and results["model/nonfinite"] == 0
    for name in ("samples.png", "loss.png", "score_error.png", "config.json"):
        assert (killed / name).stat().st_size > 0
    # A different config may not reuse the workdir.
    with pytest.raises(WorkdirError, match="different config"):
        score_matching.train_and_evaluate(_config({**TINY, "seed": 1}), str(killed))


def _listdir(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.is_dir() else []


@pytest.mark.slow
def test_short_gmm8_run_samples_close_to_exact_score_sampler(tmp_path):
    config = _config(
        {
            "train.num_steps": 1500,
            "train.checkpoint_every": 1500,
            "sampler.num_steps": 200,
            "eval.num_samples": 2000,
        }
    )
    r = score_matching.train_and_evaluate(config, str(tmp_path / "run"))
    null_level = abs(r["null/mmd2"])
    floor = max(r["exact/mmd2"], null_level)
    assert r["model/mmd2"] <= MMD_FACTOR * floor, r
    assert r["model/mode_weight_max_err"] <= 0.03, r
