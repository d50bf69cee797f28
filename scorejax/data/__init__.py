"""Data: in-graph 2-D toys (`toy`), TFDS image datasets (`load`) and the shipped `digits` builder.

`load` imports TensorFlow Datasets only when called, so importing this package stays cheap.
"""

from scorejax.data.images import DatasetNotPreparedError, load, load_arrays

__all__ = ["DatasetNotPreparedError", "load", "load_arrays"]
