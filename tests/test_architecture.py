"""The import rules of docs/ARCHITECTURE.md, checked on the source with `ast` (nothing imported).

The two tables of the document are the rules: which layers each layer may import, and which
layer every module under `scorejax/` belongs to. Each import of `scorejax`, `experiments` or
`configs` in `scorejax/` and `configs/` (at module level or inside a function) is resolved to the
module it names, and a violation is reported with file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PROJECT_PACKAGES = ("scorejax", "experiments", "configs")


def _table_rows(text: str, header: str) -> list[list[str]]:
    """Cells of the markdown table whose header row starts with `| header |`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _allowed() -> dict[str, set[str]]:
    """Layer -> the layers it may import, from the rules table."""
    rows = _table_rows(DOC.read_text(), "layer")
    return {row[0].strip("`"): set(re.findall(r"`(\w+)`", row[2])) for row in rows}


def _module_layers() -> dict[str, str]:
    """Path relative to the repository root -> layer, from the module table."""
    rows = _table_rows(DOC.read_text(), "module")
    return {row[0].strip("`"): row[1] for row in rows}


def _resolve(name: str) -> str | None:
    """The source file (relative path) of the dotted project module `name`, or its package."""
    parts = name.split(".")
    while parts:
        base = ROOT.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.relative_to(ROOT).as_posix()
        parts = parts[:-1]
    return None


def _imported_modules(rel: str, source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every project import in `source`, relative imports resolved."""
    package = ".".join(Path(rel).with_suffix("").parts)
    if not rel.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{anchor}.{node.module}" if node.module else anchor
            else:
                module = node.module or ""
            # `from scorejax import importance` names a submodule; `from scorejax import checked`
            # a value of the package: `_resolve` falls back to the package for the latter.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PROJECT_PACKAGES]


def _layer_of(relpath: str, layers: dict[str, str]) -> str | None:
    top = relpath.split("/")[0]
    if top in ("experiments", "configs"):
        return top
    return layers.get(relpath)


def _check_source(rel: str, source: str) -> list[str]:
    """Violations of the rules by the module at `rel` (relative to the root) with this source."""
    allowed, layers = _allowed(), _module_layers()
    own = _layer_of(rel, layers)
    out = []
    for line, name in _imported_modules(rel, source):
        target = _resolve(name)
        if target is None:
            out.append(f"{rel}:{line}: imports {name}, which is not a module of the project")
            continue
        layer = _layer_of(target, layers)
        if layer not in allowed[own]:
            out.append(f"{rel}:{line}: {own} module imports {name} ({layer} layer)")
    return out


def _violations(folder: str) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        out += _check_source(path.relative_to(ROOT).as_posix(), path.read_text())
    return out


def test_document_lists_every_library_module_once_with_a_known_layer():
    text = DOC.read_text()
    rows = _table_rows(text, "module")
    listed = [row[0].strip("`") for row in rows]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "scorejax").rglob("*.py")}
    assert sorted(on_disk - set(listed)) == [], "add these modules to docs/ARCHITECTURE.md"
    assert sorted(set(listed) - on_disk) == [], "these listed modules do not exist"
    allowed = _allowed()
    assert set(allowed) >= {"base", "maths", "models", "data", "train", "plots"}
    assert set(_module_layers().values()) <= set(allowed)


def test_library_imports_follow_the_layer_rules():
    violations = _violations("scorejax")
    assert violations == [], "\n".join(violations)


def test_configs_never_import_experiments():
    violations = _violations("configs")
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from scorejax.train import make_mesh\n", "maths module imports scorejax.train.make_mesh"),
        ("import experiments.main\n", "maths module imports experiments.main"),
        ("def f():\n    from scorejax import plotting\n", ":2: maths module imports"),
        ("from .models import mlp\n", "maths module imports scorejax.models.mlp (models layer)"),
    ],
)
def test_a_violation_is_reported_with_file_and_line(source, expected):
    """The checker itself: a maths module that imports upward is caught, even inside a function."""
    (message,) = _check_source("scorejax/sde.py", source)
    assert message.startswith("scorejax/sde.py:") and expected in message
