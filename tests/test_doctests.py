"""The `Examples:` blocks of the library's docstrings run as doctests.

Each module listed here has an example in every public function's docstring (the library
contract in README.md); a failing example fails this test with doctest's report. Examples print
arrays with numpy's `precision=4, suppress=True`, so printed floats are rounded to 4 decimals.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

MODULES = (
    "scorejax._reduction",
    "scorejax.checks",
    "scorejax.logprobs",
    "scorejax.dco",
    "scorejax.pass_at",
    "scorejax.dpo",
    "scorejax.likelihood_displacement",
    "scorejax.reward_models",
    "scorejax.preference_regression",
    "scorejax.quality_labels",
    "scorejax.quality_losses",
    "scorejax.gaussian_divergences",
    "scorejax.importance",
    "scorejax.ghost_norm",
    "scorejax.vog",
    "scorejax.training_dynamics",
    "scorejax.pruning",
    "scorejax.rank_stats",
    "scorejax.agreement",
    "scorejax.challenge_metrics",
    "scorejax.text_metrics",
    "scorejax.calibration",
    "scorejax.risk_scores",
    "scorejax.sde",
    "scorejax.score_sdes",
    "scorejax.paths",
    "scorejax.parametrisation",
    "scorejax.weighting",
    "scorejax.analytic",
    "scorejax.score_matching",
    "scorejax.sampling",
    "scorejax.ode",
    "scorejax.likelihood",
    "scorejax.edm",
    "scorejax.edm_sampling",
    "scorejax.flow_matching",
    "scorejax.consistency",
    "scorejax.distill",
    "scorejax.backtracking",
    "scorejax.metrics",
    "scorejax.mode_metrics",
    "scorejax.chunked",
    "scorejax.ntk",
    "scorejax.ntk_gd",
    "scorejax.models.mlp",
    "scorejax.models.unet",
    "scorejax.models.generator",
    "scorejax.models.classifier",
    "scorejax.models.resnet",
    "scorejax.models.transformer",
    "scorejax.data.toy",
    "scorejax.data.digits",
    "scorejax.data.images",
    "scorejax.data.sources",
    "scorejax.data.png",
    "scorejax.data.shuffle",
    "scorejax.train.state",
    "scorejax.train.step",
    "scorejax.train.optim",
    "scorejax.train.precision",
    "scorejax.train.mesh",
    "scorejax.train.partitioning",
    "scorejax.train.data_parallel",
    "scorejax.train.distributed",
    "scorejax.train.watchdog",
    "scorejax.train.checkpoint",
    "scorejax.train.degradation",
    "scorejax.train.degradation_recording",
    "scorejax.train.workdir",
    "scorejax.train.writers",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} has no docstring examples"
    report: list[str] = []
    with np.printoptions(precision=4, suppress=True):
        for test in tests:
            runner.run(test, out=report.append)
    if runner.summarize(verbose=False).failed:
        pytest.fail("".join(report), pytrace=False)
