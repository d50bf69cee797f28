"""The coverage (DCO) experiment end to end: tiny runs of every variant, resume == uninterrupted,
and the key claim (CE's test pass@N at large N falls with training, DCO's holds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from configs.coverage import VARIANTS, get_config
from experiments import coverage as exp
from experiments.coverage import tasks as coverage_tasks
from scorejax.train import read_metrics

TINY = {
    "teacher_student": {
        "task.dim": 10,
        "task.num_answers": 40,
        "task.num_train": 64,
        "task.num_val": 64,
        "task.num_test": 64,
    },
    "sequences": {
        "task.dim": 12,
        "task.num_train": 64,
        "task.num_val": 64,
        "task.num_test": 64,
    },
    "arithmetic": {
        "task.num_train": 64,
        "task.num_val": 32,
        "task.num_test": 32,
        "model.d_model": 16,
        "model.num_layers": 1,
        "train.batch_size": 16,
        "train_ns": (1, 8),
        "test_ns": (1, 8),
        "eval.num_samples": 8,
        "eval.sample_problems": 32,
    },
}
COMMON = {
    "num_seeds": 2,
    "train.num_steps": 20,
    "train.eval_every": 10,
    "train.checkpoint_every": 10,
    "eval.temperatures": (1.0, 2.0),
}


def _config(variant: str, overrides: dict):
    config = get_config(variant)
    for name, value in overrides.items():
        *parents, leaf = name.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def test_configs_and_errors():
    for variant in VARIANTS:
        config = get_config(variant)
        assert config.study == "coverage" and config.train_ns[0] == 1
        exp.check_config(config)
    with pytest.raises(ValueError, match="unknown coverage variant"):
        get_config("nope")
    with pytest.raises(ValueError, match="must contain 1"):
        exp.check_config(_config("teacher_student", {"train_ns": (4, 16)}))
    with pytest.raises(ValueError, match="multiple of"):
        exp.check_config(_config("teacher_student", {"train.num_steps": 610}))
    with pytest.raises(ValueError, match="sample_problems"):
        exp.check_config(_config("arithmetic", {"eval.sample_problems": 10**6}))


def test_arithmetic_problems_follow_their_rules():
    batch = jax.device_get(exp.arithmetic_problems(jax.random.key(0), 400, 0.5))
    tok, hard = batch["tokens"], batch["hard"]
    a1, a2, op, b1, b2, eq = tok[:, :6].T
    assert np.all(eq == coverage_tasks._EQUALS) and np.all((op == coverage_tasks._QUERY) == hard)
    assert len({(x, y, z, w) for x, y, z, w in zip(a1, a2, b1, b2, strict=True)}) == 400
    assert 0.4 < hard.mean() < 0.6
    easy = ~hard
    np.testing.assert_array_equal(tok[:, 6], a1)
    np.testing.assert_array_equal(tok[easy, 7], b2[easy])
    np.testing.assert_array_equal(tok[easy, 8], (a2 + b1)[easy] % 10)
    # The salt digits of '?' problems are uniform and independent of the prompt.
    salt = tok[hard, 7] * 10 + tok[hard, 8]
    assert len(np.unique(salt)) > 80


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_run(variant, tmp_path):
    config = _config(variant, {**COMMON, **TINY[variant]})
    out = exp.train_and_evaluate(config, str(tmp_path))
    for name in ("eval.json", "metrics.jsonl", "config.json", "pass_at_n_vs_step.png",
                 "pass_at_n_vs_n.png", "confidence.png"):
        assert (tmp_path / name).exists(), name
    methods = [r["method"] for r in out["summary"]]
    assert "CE, early-stopped per N (val)" in methods
    assert "CE, temperature tuned per N (val)" in methods
    for row in out["summary"]:
        assert np.all(np.isfinite(row["mean"])) and np.all(np.asarray(row["mean"]) <= 100)
        # pass@N is non-decreasing in N for every exact method.
        if row["estimate"] == "exact":
            assert np.all(np.diff(row["mean"]) >= -1e-6), row
    records = [r for r in read_metrics(tmp_path) if "arrays/test_pass" in r]
    assert [r["step"] for r in records] == [0, 10, 20]
    shape = np.asarray(records[-1]["arrays/test_pass"]).shape
    assert shape == (2, len(config.train_ns), len(config.test_ns))
    if variant == "arithmetic":
        kinds = {r["estimate"] for r in out["summary"]}
        assert kinds == {"exact", "exact, same problems", "sampled, 32 problems"}
        assert "arrays/test_pass_hard" in records[-1]


@pytest.mark.slow
def test_key_claim_and_resume(tmp_path):
    """A small teacher-student run: CE's test pass@64 peaks early and falls, DCO N'=64 ends
    well above CE; after deleting the last checkpoint and the results, the resumed run
    reproduces them exactly."""
    config = _config(
        "teacher_student",
        {
            "num_seeds": 1,
            "train_ns": (1, 64),
            "test_ns": (1, 64),
            "task.dim": 30,
            "task.num_answers": 100,
            "task.num_train": 300,
            "task.num_val": 500,
            "task.num_test": 1000,
            "train.num_steps": 300,
            "train.checkpoint_every": 150,
            "eval.temperatures": (1.0, 2.0, 4.0),
        },
    )
    out = exp.train_and_evaluate(config, str(tmp_path))
    per_seed = out["per_seed"]
    final = np.asarray(per_seed["final"])[0]  # (M, len(test_ns))
    curves = np.asarray([r["arrays/test_pass"] for r in read_metrics(tmp_path)
                         if "arrays/test_pass" in r])[:, 0]  # (T, M, len(test_ns))
    ce64 = curves[:, 0, 1]
    assert ce64.max() - ce64[-1] > 0.08, ce64  # CE's pass@64 falls from its peak
    assert final[1, 1] - final[0, 1] > 0.08, final  # DCO N'=64 beats final CE at pass@64
    assert final[0, 0] > final[1, 0]  # and CE stays best at pass@1

    ckpt = tmp_path / "checkpoints"
    shutil.rmtree(ckpt / "300")
    (tmp_path / "eval.json").unlink()
    again = exp.train_and_evaluate(config, str(tmp_path))
    assert json.dumps(again["per_seed"]) == json.dumps(per_seed)
    steps = [r["step"] for r in read_metrics(Path(tmp_path)) if "arrays/test_pass" in r]
    assert steps == list(range(0, 301, 25))
