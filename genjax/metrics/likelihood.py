"""Likelihood unit conversions shared by the families (nats in, reported units out)."""

import math


def bits_per_dim(nll_nats: float, num_dims: int) -> float:
    """A per-example NLL in nats as bits per dimension (pixel x channel)."""
    return nll_nats / (num_dims * math.log(2.0))


def perplexity(nll_nats_per_token: float) -> float:
    return math.exp(nll_nats_per_token)


def bits_per_char(nll_nats_per_token: float, chars_per_token: float) -> float:
    """Per-token NLL in nats as bits per character of the original text."""
    return nll_nats_per_token / (math.log(2.0) * chars_per_token)
