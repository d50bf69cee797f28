"""End-to-end checks of the distillation study (`experiments/distill/`): bad teachers, stage-2
resume, switch logging."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_distill import tiny_config

from configs import distill as distill_configs
from configs import score_matching as sm_configs
from experiments import distill as exp
from scorejax.train import Checkpointer, read_metrics


def _tiny_config(teacher_workdir: str, methods: str = "disback_fixed"):
    """150 updates along a three-node path of 30 stage-1 updates, evaluated every 50."""
    return tiny_config(
        "gmm8",
        teacher_workdir,
        methods,
        {
            "distill.num_steps": 150,
            "distill.fake_steps": 2,
            "stage1.num_nodes": 3,
            "stage1.num_steps": 30,
            "eval.every": 50,
        },
    )


def test_missing_teacher_is_an_error_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    config = _tiny_config(str(tmp_path / "no_such_teacher"))
    with pytest.raises(FileNotFoundError, match="holds no score-matching run"):
        exp.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()

    # A score-matching run that never reached its first checkpoint.
    teacher = tmp_path / "unfinished"
    teacher.mkdir()
    sm_config = sm_configs.get_config("gmm8")
    (teacher / "config.json").write_text(json.dumps(sm_config.to_dict()))
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        exp.train_and_evaluate(_tiny_config(str(teacher)), str(workdir))
    assert not workdir.exists()


def test_teacher_of_other_data_is_rejected(tiny_teacher, tmp_path):
    config = distill_configs.get_config("grid")
    with config.unlocked():
        config.teacher.workdir = tiny_teacher
    with pytest.raises(ValueError, match="trained on 'ring8'"):
        exp.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_stage2_interrupted_resumes_at_the_same_node_and_ends_the_same(
    tiny_teacher, tmp_path, monkeypatch
):
    config = _tiny_config(tiny_teacher)
    # One cache for the three runs, as in a process that resumes a run: compiled once.
    cache = exp.RunCache()
    full = exp.train_and_evaluate(config, str(tmp_path / "full"), cache)

    # Every target switch is logged: nodes 2 -> 1 -> 0 after 50 and 100 updates.
    assert [sw[:2] for sw in full["switches"]["disback_fixed"]] == [[50, 1], [100, 0]]
    assert full["stage1"]["num_nodes"] == 3 and full["stage1"]["steps"] == 30

    # Interrupt stage 2 at update 75: the last checkpoint (update 50) is on target node 1.
    real_maybe_save = Checkpointer.maybe_save

    def dying_maybe_save(self, step, state):
        if step == 75 and "disback_fixed" in self.directory:
            raise KeyboardInterrupt("simulated kill")
        return real_maybe_save(self, step, state)

    monkeypatch.setattr(Checkpointer, "maybe_save", dying_maybe_save)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        exp.train_and_evaluate(config, str(broken), cache)
    monkeypatch.setattr(Checkpointer, "maybe_save", real_maybe_save)
    ckpt_dir = broken / "disback_fixed" / "checkpoints"
    assert sorted(int(p) for p in os.listdir(ckpt_dir) if p.isdigit()) == [50]
    state = ocp.CheckpointManager(str(ckpt_dir)).restore(50, args=ocp.args.StandardRestore())
    assert int(state["schedule"]["node"]) == 1
    at_50 = [r for r in read_metrics(tmp_path / "full" / "disback_fixed") if r["step"] == 50]
    assert any(r.get("target_node") == 1 for r in at_50)

    resumed = exp.train_and_evaluate(config, str(broken), cache)
    assert len(cache.teachers) == len(cache.programs) == 1
    assert resumed["switches"] == full["switches"]
    for name, curve in full["curves"]["disback_fixed"].items():
        if name != "train_seconds":
            np.testing.assert_array_equal(resumed["curves"]["disback_fixed"][name], curve)
    gen = exp.final_generator_params(str(tmp_path / "full" / "disback_fixed"), None)
    gen_resumed = exp.final_generator_params(str(broken / "disback_fixed"), None)
    for a, b in zip(jax.tree.leaves(gen), jax.tree.leaves(gen_resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("results.json", "results.md", "convergence.png", "samples.png"):
        assert (broken / name).exists()


def test_method_specs_and_their_baselines_are_checked_before_anything_runs(tmp_path):
    config = distill_configs.get_config("gmm8")
    assert exp.split_method("disback_fixed+diff_instruct", config) == (
        "disback_fixed",
        "diff_instruct",
    )
    assert exp.split_method("disback_adaptive", config) == ("disback_adaptive", "dmd")
    assert exp.baseline_of("disback_fixed+diff_instruct", config) == "diff_instruct+diff_instruct"
    assert exp.baseline_of("disback_fixed+dmd", config) == "diff_instruct"
    for methods, match in (
        ("diff_instruct,disback_fixed+sds", "bad"),
        ("diff_instruct_ahead,diff_instruct", "must come after"),
        ("diff_instruct_ahead+vsd,diff_instruct", "must come after"),
    ):
        c = _tiny_config(str(tmp_path / "teacher"))
        with c.unlocked():
            c.methods = methods
        with pytest.raises(ValueError, match=match):
            exp.train_and_evaluate(c, str(tmp_path / "run"))
    c = distill_configs.get_config("digits")
    with c.unlocked():
        c.teacher.kind = "exact"
    with pytest.raises(ValueError, match="toy mixture"):
        exp.train_and_evaluate(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_exact_teacher_is_the_mixture_score_and_trainable(tiny_teacher, tmp_path):
    """The exact-teacher regime's score equals the analytic marginal score at its parameters
    (the network teacher's), and moving its parameters moves the score."""
    config = distill_configs.get_config("gmm8_exact")
    with config.unlocked():
        config.teacher.workdir = tiny_teacher
    teacher = exp.load_teacher(config, str(tmp_path))
    setup = teacher.setup
    x = setup.data.sample(jax.random.key(0), 64)
    t = jax.random.uniform(jax.random.key(1), (64,), minval=0.01, maxval=1.0)
    want = setup.data.mixture.marginal_score(x, t, sde=setup.sde)
    np.testing.assert_allclose(setup.score_fn(teacher.params, x, t), want, rtol=1e-6, atol=1e-6)
    moved = jax.tree.map(lambda a: a + 0.01, teacher.params)
    assert float(np.abs(setup.score_fn(moved, x, t) - want).max()) > 1e-3


def test_compare_measures_each_method_against_its_own_weighting_baseline():
    config = distill_configs.get_config("gmm8")
    steps = list(range(0, 1001, 100))
    fall = lambda scale, shift=0: [scale * np.exp(-max(s - shift, 0) / 150) + 0.01 for s in steps]
    curve = lambda v: {
        "curves": {"step": steps, "mmd2": v, "train_seconds": steps},
        "num_switches": 0,
    }
    results = {
        "diff_instruct": curve(fall(1.0)),
        "diff_instruct_ahead": curve(fall(1.0, -600)),
        "diff_instruct+diff_instruct": curve([v + 0.01 for v in fall(1.0)]),
        "disback_fixed+diff_instruct": curve(fall(1.0)),
    }
    table = exp.compare(results, config)["methods"]
    assert table["diff_instruct"]["ratio_to_baseline"] == 1.0
    assert table["diff_instruct_ahead"]["ratio_to_baseline"] < 0.5
    # DisBack+DI is compared with DI+DI (whose plateau is higher), not with DI+DMD.
    assert table["disback_fixed+diff_instruct"]["baseline"] == "diff_instruct+diff_instruct"
    assert table["disback_fixed+diff_instruct"]["ratio_to_baseline"] < 1.0
