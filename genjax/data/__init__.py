"""Datasets and batching: image sources (`load`), seeded resumable batches, text (genjax.data.text).

    source = data.load("digits" | "tfds:mnist" | "path/to/images" | "x.npz" | "idx-folder", "train",
                       image_size=0, center_crop=True, channels=0)
    data.check_batch_fits(batch_size, source.size)       # before anything compiles
    for batch in data.batches(source.fetch, source.size, batch_size, seed, start_step, workers=2): ...
"""

from genjax.data.batching import batch_indices, batches, check_batch_fits  # noqa: F401
from genjax.data.images import digits, holdout, load, tfds_source  # noqa: F401
from genjax.data.source import ImageSource, check_images, from_arrays  # noqa: F401
from genjax.data.transforms import Transform  # noqa: F401
