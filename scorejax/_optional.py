"""Imports of optional dependencies, with an error that says which extra installs them.

The maths needs only the core dependencies. Data loading (tensorflow_datasets, array_record,
scikit-learn's digits), plots (matplotlib), progress bars (tqdm) and TensorBoard events
(tensorboardX) need the `experiments` extra; a module imports them through `import_optional`,
inside the function that uses them where it can, so that every module imports without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {
    "tensorflow_datasets": "tensorflow-datasets",
    "array_record": "array-record",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
}


def import_optional(name: str, *, extra: str = "experiments") -> ModuleType:
    """`importlib.import_module(name)`, or an ImportError naming the extra that provides it.

    Only a missing `name` (or a missing parent package of it) is translated; an error raised
    while importing an installed package propagates unchanged.

    Args:
      name: dotted module name, e.g. ``"matplotlib.pyplot"``.
      extra: the scorejax extra that installs the package.

    Returns:
      The imported module.

    Raises:
      ImportError: the package is not installed; the message gives the pip command.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
            raise
        top = name.split(".")[0]
        raise ImportError(
            f"This part of scorejax needs the optional package {_DISTRIBUTIONS.get(top, top)!r} "
            f"(import {name!r}), which is not installed. Install the {extra!r} extra: "
            f"pip install 'scorejax[{extra}]'",
            name=name,
        ) from e
