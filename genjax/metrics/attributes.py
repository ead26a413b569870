"""Does a text-to-image model draw the attributes its prompt asks for? Samples are measured with the same
functions that captioned the training images (`genjax.data.captions.measure`), and read against the
training images' per-class statistics.

    stats = attributes.class_stats(train_values, train_labels, 10)
    scores = attributes.following(samples, labels, "thickness", prompted_buckets, edges, stats)

`bucket_accuracy`: the share of samples whose measured bucket (per-class tertiles of the training images)
is the prompted one; chance is 1/3. `spearman`: the rank correlation of the prompted bucket (0, 1, 2) with
the measured value standardized within its class (z); 0 when the prompt is ignored. `mean_z`: the mean z
per prompted bucket (a model that follows the prompt orders them low to high; real training images'
buckets average about -1.1, 0, +1.1).
"""

from __future__ import annotations

import numpy as np

from genjax.data import captions


def class_stats(values: dict[str, np.ndarray], labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per attribute, (num_classes, 2): each class's mean and standard deviation of the values."""
    labels = np.asarray(labels)
    return {k: np.stack([(v[labels == c].mean(), v[labels == c].std() + 1e-12) if np.any(labels == c)
                         else (0.0, 1.0) for c in range(num_classes)]) for k, v in values.items()}


def following(images: np.ndarray, labels: np.ndarray, attribute: str, prompted: np.ndarray,
              edges: dict[str, np.ndarray], stats: dict[str, np.ndarray]) -> dict:
    """Scores of samples `images` drawn for classes `labels` with `attribute` in buckets `prompted`."""
    from scipy.stats import spearmanr

    labels, prompted = np.asarray(labels), np.asarray(prompted)
    values = captions.measure(images)[attribute]
    measured = captions.buckets({attribute: values}, labels, edges)[attribute]
    z = (values - stats[attribute][labels, 0]) / stats[attribute][labels, 1]
    return {"bucket_accuracy": float(np.mean(measured == prompted)),
            "spearman": float(spearmanr(prompted, z).statistic),
            "mean_z": [float(z[prompted == b].mean()) for b in range(len(captions.ATTRIBUTES[attribute]))]}
