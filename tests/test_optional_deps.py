"""Optional dependencies: every module imports without them; using one names the extra.

A missing package is simulated with ``sys.modules[name] = None``, which makes ``import name``
raise ModuleNotFoundError as if it were not installed.
"""

from __future__ import annotations

import json
import sys

import jax.numpy as jnp
import pytest

from scorejax import _optional, plotting
from scorejax.calibration import ReliabilityBins
from scorejax.data import sources
from scorejax.train import writers

# Import names of the packages of the `experiments` extra (and Pillow, which matplotlib brings).
OPTIONAL = (
    "tensorflow_datasets",
    "array_record",
    "grain",
    "matplotlib",
    "PIL",
    "sklearn",
    "scipy",
    "tqdm",
    "tensorboardX",
)
HINT = "pip install 'scorejax[experiments]'"


def _block(monkeypatch, *names: str) -> None:
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def test_every_module_imports_without_the_optional_packages(run_python):
    out = run_python(
        f"""
        import importlib, json, pkgutil, sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None
        import scorejax
        failed = {{}}
        for info in pkgutil.walk_packages(scorejax.__path__, "scorejax."):
            try:
                importlib.import_module(info.name)
            except ImportError as e:
                failed[info.name] = str(e)
        print(json.dumps(failed))
        """,
        devices=1,
    )
    failed = json.loads(out.strip().splitlines()[-1])
    # The shipped TFDS builder subclasses a TFDS class: importing it is using TFDS.
    assert set(failed) == {"scorejax.data.digits"}, failed
    assert HINT in failed["scorejax.data.digits"]
    assert "tensorflow-datasets" in failed["scorejax.data.digits"]


def test_import_optional_names_the_extra(monkeypatch):
    _block(monkeypatch, "sklearn")
    with pytest.raises(ImportError, match="'scikit-learn'") as info:
        _optional.import_optional("sklearn.datasets")
    assert HINT in str(info.value)
    assert _optional.import_optional("json") is json


def test_import_optional_keeps_errors_of_installed_packages(monkeypatch, tmp_path):
    # An installed package whose own import fails is not reported as a missing extra.
    (tmp_path / "scorejax_test_broken").mkdir()
    (tmp_path / "scorejax_test_broken" / "__init__.py").write_text("import scorejax_test_absent\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="scorejax_test_absent") as info:
        _optional.import_optional("scorejax_test_broken")
    assert HINT not in str(info.value)


def test_features_raise_the_hint_when_their_package_is_missing(monkeypatch, tmp_path):
    _block(monkeypatch, "matplotlib", "tensorboardX", "tqdm", "tensorflow_datasets")
    bins = ReliabilityBins(*(jnp.zeros(k) for k in (3, 2, 2, 2)))
    uses = {
        "matplotlib": lambda: plotting.plot_reliability_diagram(bins),
        "tensorboardX": lambda: writers.MetricWriter(tmp_path),
        "tqdm": lambda: writers.Progress(10),
        "tensorflow_datasets": lambda: sources.open_source("digits", "train", str(tmp_path)),
    }
    for name, use in uses.items():
        with pytest.raises(ImportError, match=name) as info:
            use()
        assert HINT in str(info.value), name
