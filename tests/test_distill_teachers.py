"""The distillation study with EDM and flow-matching teachers converted to the study's VP path.

Apart from `tests/test_distill_consistency.py` so that the two test processes of `make test`
(`--dist loadfile`) can run the two files' end-to-end tests at the same time.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_distill import score_matching_run, tiny_config

from experiments import distill as exp
from experiments import score_matching as sm_exp


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {v: score_matching_run(root / v, v) for v in ("gmm8_edm", "gmm8_fm")}


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
