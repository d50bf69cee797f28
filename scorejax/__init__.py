"""scorejax: a functional JAX codebase for score-based learning.

Import the submodules you need (`scorejax.score_sdes`, `scorejax.score_matching`,
`scorejax.sampling`, ...); importing the package itself loads nothing heavy. `scorejax.checked`
(value checks that raise eagerly and under `jit`, see `scorejax.checks`) is loaded on first
access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scorejax.checks import CheckError, checked

__version__ = "0.1.0"
__all__ = ["CheckError", "checked"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from scorejax import checks

        return getattr(checks, name)
    raise AttributeError(f"module 'scorejax' has no attribute {name!r}")
