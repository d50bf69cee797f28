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
import jax.numpy as jnp
import ml_collections
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


# The EDM and flow-matching variants: the same study, other path / model form / loss / sampler.
FAMILY = {
    "gmm8": ("vp", "none", "eps", "dsm", "pc"),
    "gmm8_edm": ("edm", "edm", "x0", "edm", "edm_heun"),
    "gmm8_fm": ("linear", "none", "velocity", "fm", "fm_heun"),
}


@pytest.mark.parametrize("variant", sorted(FAMILY))
def test_family_variants_are_config_fields_of_one_study(variant):
    config = get_config(variant)
    assert config.is_locked and config.study == "score_matching"
    got = (
        config.sde.name,
        config.model.preconditioning,
        config.model.parametrization,
        config.loss.name,
        config.sampler.name,
    )
    assert got == FAMILY[variant]
    # Everything else is gmm8's: data, network, training budget and evaluation.
    base = get_config("gmm8")
    for group in ("data", "train", "eval"):
        assert config[group].to_dict() == base[group].to_dict()
    assert config.model.hidden_sizes == base.model.hidden_sizes
    setup = score_matching.build(config)
    x, t = np.ones((3, 2), np.float32), np.full((3,), 0.5, np.float32)
    params = jax.jit(setup.init)(jax.random.key(0))
    for fn in (setup.model.score_fn, setup.model.denoiser_fn, setup.model.velocity_fn):
        out = fn(params, x, t)
        assert out.shape == (3, 2) and np.all(np.isfinite(out))


def test_legacy_variants_keep_the_2021_setup():
    for variant in ("gmm8", "grid", "checkerboard"):
        c = get_config(variant)
        assert (c.sde.name, c.sde.T, c.model.preconditioning, c.loss.name) == (
            "vp",
            1.0,
            "none",
            "dsm",
        )
        assert c.sampler.name == "pc"
    # A config saved before these fields existed builds the same study.
    saved = get_config("gmm8").to_dict()
    for group, leaf in (("sde", "T"), ("model", "preconditioning"), ("model", "sigma_data")):
        del saved[group][leaf]
    del saved["loss"]["name"]
    old = score_matching.build(ml_collections.ConfigDict(saved))
    assert old.sde == score_matching.build(get_config("gmm8")).sde


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"loss.name": "fm"}, "needs config.sde.name='linear'"),
        ({"model.preconditioning": "edm"}, "set config.model.parametrization='x0'"),
        ({"sde.name": "linear", "sampler.name": "pc"}, "needs config.sde.T < 1"),
        ({"sampler.name": "ddim"}, "unknown config.sampler.name"),
        ({"loss.name": "sm"}, "unknown config.loss.name"),
        ({"model.parametrization": "noise"}, "unknown config.model.parametrization"),
        ({"sde.name": "cosine"}, "unknown config.sde.name"),
    ],
)
def test_bad_family_combinations_fail_at_build(overrides, match):
    with pytest.raises(ValueError, match=match):
        score_matching.build(_config(overrides))


def test_model_forms_agree_with_the_oracle_on_every_path():
    """An exact network of each path, read through `make_model`, gives the oracle's score,
    denoiser and velocity: the conversions the evaluation relies on."""
    from scorejax.analytic import ring8
    from scorejax.parametrisation import convert

    gm = ring8()
    key = jax.random.key(0)
    for variant, kind in (("gmm8", "eps"), ("gmm8_fm", "velocity"), ("gmm8_edm", "x0")):
        config = get_config(variant)
        path = score_matching.make_sde(config)

        def exact_net(_, x, t, path=path, kind=kind):
            x0 = gm.denoiser(x, t, sde=path)
            return convert(x, t, x0, path=path, source="x0", target=kind)

        with config.unlocked():
            config.model.preconditioning = "none"
            config.model.parametrization = kind
        model = score_matching.make_model(exact_net, path, config)
        exact = score_matching.exact_model(gm, path)
        t = jnp.asarray([0.05, 0.3, 0.7], jnp.float32) * (path.T if variant != "gmm8_edm" else 4)
        x = gm.marginal_sample(key, 3, t, sde=path)
        np.testing.assert_allclose(
            model.score_fn(None, x, t), exact.score_fn(None, x, t), rtol=2e-3, atol=2e-3
        )
        sigma = jnp.asarray([0.05, 0.5, 5.0], jnp.float32)
        np.testing.assert_allclose(
            model.denoiser_fn(None, x, sigma),
            exact.denoiser_fn(None, x, sigma),
            rtol=2e-3,
            atol=2e-3,
        )
        tv = jnp.asarray([0.2, 0.9, 0.98], jnp.float32)
        np.testing.assert_allclose(
            model.velocity_fn(None, x, tv), exact.velocity_fn(None, x, tv), rtol=2e-3, atol=2e-3
        )
        # At t = 1, where the FM samplers start, a model of another path is read at sigma 80:
        # its posterior mean is off by about Var(x0) / 80^2 of the rescaled 81 x.
        at_one = jnp.ones((3,), jnp.float32)
        err = jnp.abs(model.velocity_fn(None, x, at_one) - exact.velocity_fn(None, x, at_one))
        bound = 0.0 if variant == "gmm8_fm" else 2 * 2.01 / 80**2 * 81 * jnp.abs(x).max()
        assert float(err.max()) <= bound + 1e-4, (variant, err)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gmm8_edm", "gmm8_fm"])
def test_tiny_edm_and_fm_runs_sample_with_their_own_sampler(variant, tmp_path):
    config = _config({**TINY, "train.num_steps": 50, "train.checkpoint_every": 50}, variant)
    r = score_matching.train_and_evaluate(config, str(tmp_path / "run"))
    assert r["model/nonfinite"] == 0 and np.isfinite(r["model/mmd2"])
    # The exact mixture through the same sampler (35 NFE) reproduces the ring.
    assert r["exact/mmd2"] <= 3 * abs(r["null/mmd2"]) + 2e-3, r
    assert r["exact/mode_weight_max_err"] <= 0.06 and r["exact/off_mode_frac"] <= 0.01, r
    assert len(r["score/score_rel_err"]) == TINY["eval.num_time_bins"]
    for name in ("samples.png", "loss.png", "score_error.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
