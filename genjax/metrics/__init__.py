"""Evaluation metrics: sample quality in a frozen network's features (Frechet distance, KID, k-NN
precision/recall), the FID InceptionV3, the shipped digits classifier, and likelihood units."""

from genjax.metrics.classifier import FeatureNet, feature_net  # noqa: F401
from genjax.metrics.frechet import (  # noqa: F401
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
)
from genjax.metrics.inception import InceptionNet, inception_net  # noqa: F401
from genjax.metrics.likelihood import bits_per_dim, bits_per_char, perplexity  # noqa: F401
from genjax.metrics.manifold import precision_recall  # noqa: F401
from genjax.metrics.quality import gaussian_mixture_baseline, reference_scores, sample_quality  # noqa: F401
