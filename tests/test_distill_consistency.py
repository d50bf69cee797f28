"""The distillation study with consistency distillation as a method, and with EDM and
flow-matching teachers converted to the study's VP path."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_distill import score_matching_run, tiny_config

from configs import distill as distill_configs
from experiments import distill as exp
from experiments import score_matching as sm_exp
from scorejax.train import Checkpointer


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {v: score_matching_run(root / v, v) for v in ("gmm8", "gmm8_edm", "gmm8_fm")}


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


@pytest.mark.parametrize("variant", ["gmm8_edm", "gmm8_fm"])
def test_teacher_of_another_path_is_its_score_on_the_study_path(teachers, tmp_path, variant):
    """The converted teacher's VP score equals the teacher's own score at the same log-SNR:
    `s_VP(x, t) = s_own(x / alpha_t * a_s, s) * a_s / alpha_t` with `s` the teacher path's time of
    that log-SNR (`a_s` its alpha); its own loss is the EDM / FM loss of its own model."""
    config = tiny_config(f"{variant}_teacher", teachers[variant], "diff_instruct")
    teacher = exp.load_teacher(config, str(tmp_path))
    own = sm_exp.build(teacher.config)
    assert teacher.setup.sde == exp.study_path(config) and own.sde != teacher.setup.sde
    x = 2.0 * jax.random.normal(jax.random.key(0), (128, 2))
    t = jax.random.uniform(jax.random.key(1), (128,), minval=0.02, maxval=0.98)
    vp = teacher.setup.sde
    s = own.sde.t_from_log_snr(vp.log_snr(t))
    ratio = (own.sde.alpha(s) / vp.alpha(t))[:, None]
    want = own.score_fn(teacher.params, x * ratio, s) * ratio
    got = teacher.setup.score_fn(teacher.params, x, t)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4 * float(jnp.abs(want).max()))
    x0 = own.data.sample(jax.random.key(2), 64)
    loss, _ = teacher.loss_fn(teacher.params, x0, jax.random.key(3))
    own_loss = sm_exp.make_loss(teacher.config, own.sde, own.model)
    want_loss, _ = own_loss(teacher.params, x0, jax.random.key(3))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    assert teacher.loss_name.startswith({"gmm8_edm": "edm", "gmm8_fm": "fm"}[variant])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gmm8_edm_teacher", "gmm8_fm_teacher"])
def test_edm_and_fm_teachers_run_the_study(teachers, tmp_path, variant):
    """Both kinds of method (score distillation, here backtracking along a stage-1 path recorded
    with the teacher's own loss; consistency distillation) run from an EDM and an FM teacher
    and give finite metrics."""
    tdir = teachers[variant.removesuffix("_teacher")]
    config = tiny_config(variant, tdir, "disback_fixed,consistency")
    with config.unlocked():
        config.distill.num_steps = 50
        config.stage1.num_steps = 10
    out = exp.train_and_evaluate(config, str(tmp_path / "run"))
    rows = out["comparison"]["methods"]
    assert set(rows) == {"disback_fixed", "consistency"}
    for row in rows.values():
        for key in ("mmd2", "sliced_w2", "energy", "mode_coverage", "score_mismatch"):
            assert np.isfinite(row[key]), (key, row)
    path_json = json.loads((tmp_path / "run" / "path" / "path.json").read_text())
    assert path_json["loss"].startswith(("edm", "fm"))
    assert "consistency" in (tmp_path / "run" / "results.md").read_text()


@pytest.mark.slow
def test_consistency_method_resumes_and_ends_as_an_uninterrupted_run(
    teachers, tmp_path, monkeypatch
):
    config = tiny_config("gmm8", teachers["gmm8"], "consistency")
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
