"""scorejax: a functional JAX codebase for score-based learning.

Import the submodules you need (`scorejax.sde`, `scorejax.score_matching`, `scorejax.sampling`,
...); importing the package itself loads nothing heavy.
"""

__version__ = "0.1.0"
