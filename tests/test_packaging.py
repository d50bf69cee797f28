"""What `pip install scorejax` installs: the library alone, and its public model exports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import scorejax.models

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_scorejax_alone(tmp_path):
    """The wheel's top-level names are `scorejax` and its dist-info: no `experiments`, `configs`.

    Built offline from a copy of the sources (so the checkout gets no `build/`), with the
    setuptools of this environment (the `dev` extra pins one that can build it).
    """
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # experiments/ and configs/ are copied too, so that leaving them out is the config's doing.
    for name in ("scorejax", "experiments", "configs"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
    out = tmp_path / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("scorejax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"scorejax", f"{wheel.name.split('-py')[0]}.dist-info"}, top_level
    # Every library module is in it.
    modules = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "scorejax").rglob("*.py")}
    assert modules <= set(names), modules - set(names)


def test_models_package_exports_its_modules():
    for name in scorejax.models.__all__:
        model = getattr(scorejax.models, name)
        assert model.__module__.startswith("scorejax.models."), name
    assert {
        "ScoreMLP",
        "UNet",
        "MLPClassifier",
        "CNNClassifier",
        "ResNet18",
        "TransformerLM",
    } <= set(scorejax.models.__all__)
