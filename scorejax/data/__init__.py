"""Data: in-graph 2-D toys (`toy`), TFDS image datasets (`load`) and the shipped `digits` builder.

`load` is a `grain` pipeline over `tfds.data_source`; it imports TensorFlow Datasets and grain
only when called, so importing this package stays cheap.
"""

from scorejax.data.images import ImageBatches, load, load_arrays
from scorejax.data.sources import DatasetNotPreparedError

__all__ = ["DatasetNotPreparedError", "ImageBatches", "load", "load_arrays"]
