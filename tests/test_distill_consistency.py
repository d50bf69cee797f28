"""The distillation study with consistency distillation as a method (its EDM and flow-matching
teachers: `tests/test_distill_teachers.py`)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tiny_distill import tiny_config

from configs import distill as distill_configs
from experiments import distill as exp
from scorejax.train import Checkpointer


def test_consistency_specs_and_variants():
    config = distill_configs.get_config("gmm8")
    assert "consistency" in exp.methods_of(config)
    assert exp.baseline_of("consistency", config) == "diff_instruct"
    for variant in ("digits", "gmm8_edm_teacher", "gmm8_fm_teacher"):
        assert "consistency" in exp.methods_of(distill_configs.get_config(variant))
    with config.unlocked():
        config.methods = "diff_instruct,consistency+vsd"
    with pytest.raises(ValueError, match="takes no weighting"):
        exp.methods_of(config)
    assert distill_configs.get_config("gmm8_edm_teacher").teacher.variant == "gmm8_edm"
    assert distill_configs.get_config("gmm8_fm_teacher").teacher.variant == "gmm8_fm"


@pytest.mark.slow
def test_consistency_method_resumes_and_ends_as_an_uninterrupted_run(
    tiny_teacher, tmp_path, monkeypatch
):
    config = tiny_config("gmm8", tiny_teacher, "consistency")
    cache = exp.RunCache()
    full = exp.train_and_evaluate(config, str(tmp_path / "full"), cache)
    row = full["comparison"]["methods"]["consistency"]
    assert row["baseline"] == "diff_instruct" and row["num_switches"] == 0
    curve = full["curves"]["consistency"]
    assert curve["step"] == list(range(0, 101, 25))
    # The student starts as the teacher's denoiser at sigma_max and moves.
    assert curve["mmd2"][0] != curve["mmd2"][-1]

    real_maybe_save = Checkpointer.maybe_save

    def dying_maybe_save(self, step, state):
        if step == 75 and "consistency" in self.directory:
            raise KeyboardInterrupt("simulated kill")
        return real_maybe_save(self, step, state)

    monkeypatch.setattr(Checkpointer, "maybe_save", dying_maybe_save)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        exp.train_and_evaluate(config, str(broken), cache)
    monkeypatch.setattr(Checkpointer, "maybe_save", real_maybe_save)
    resumed = exp.train_and_evaluate(config, str(broken), cache)
    for name, values in curve.items():
        if name != "train_seconds":
            np.testing.assert_array_equal(resumed["curves"]["consistency"][name], values)
    a = exp.final_generator_params(str(tmp_path / "full" / "consistency"), None)
    b = exp.final_generator_params(str(broken / "consistency"), None)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
