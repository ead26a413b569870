"""Datasets and batching: embedded digits, tfds without TensorFlow, text (genjax.data.text)."""

from genjax.data.batching import batch_indices, batches  # noqa: F401
from genjax.data.images import ImageSource, digits, from_arrays, load, tfds_source  # noqa: F401
