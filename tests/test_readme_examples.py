"""The README's "Use scorejax in your project" examples run as written.

Each fenced python block of that section is executed in a fresh namespace; an exception fails
the test with the block's number. The blocks print what they computed; the test checks that they
ran and that the values they left behind are the finite, correctly shaped results they claim.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use scorejax in your project"


def section_blocks() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_section_has_one_example_per_research_line():
    assert len(section_blocks()) == 4


def _run(index: int) -> dict:
    namespace: dict = {"__name__": f"readme_example_{index}"}
    exec(compile(section_blocks()[index], f"README.md example {index}", "exec"), namespace)
    return namespace


def test_score_model_example():
    ns = _run(0)
    assert ns["samples"].shape == (512, 2) and ns["nfe"] == 100
    assert np.all(np.isfinite(np.asarray(ns["samples"]))) and np.isfinite(float(ns["loss"]))


def test_distillation_example():
    ns = _run(1)
    assert ns["samples"].shape == (512, 2)
    assert np.all(np.isfinite(np.asarray(ns["samples"]))) and float(ns["gap"]) >= 0


def test_dco_example():
    ns = _run(2)
    # F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N) lies in [0, 1].
    weight = np.asarray(ns["weight"])
    assert weight.shape == (8,) and np.all((weight >= 0) & (weight <= 1))
    assert float(ns["loss"]) >= 0


def test_importance_example():
    ns = _run(3)
    el2n, grand = np.asarray(ns["el2n_scores"]), np.asarray(ns["grand_scores"])
    assert el2n.shape == grand.shape == (32,)
    assert np.all((el2n >= 0) & (el2n <= np.sqrt(2))) and np.all(grand >= 0)

