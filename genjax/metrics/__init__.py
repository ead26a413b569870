"""Evaluation metrics: Frechet distance / KID in a frozen classifier's features, and likelihood units."""

from genjax.metrics.frechet import (  # noqa: F401
    FeatureNet,
    feature_net,
    frechet_distance,
    gaussian_mixture_baseline,
    kernel_inception_distance,
    reference_scores,
    sample_quality,
)
from genjax.metrics.likelihood import bits_per_dim, bits_per_char, perplexity  # noqa: F401
