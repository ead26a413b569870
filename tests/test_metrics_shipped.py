"""The shipped digits classifier reproduces the reference values published with it, on any machine.

If this fails after a dependency upgrade, the metric moved: publish new numbers with a new weights
version (`python -m genjax.metrics ship-classifier digits .../digits_v2.msgpack`), never edit v1's.
"""

import pytest

from genjax import data, metrics


def test_shipped_digits_classifier_reproduces_its_reference_values():
    train, test = data.digits("train").all(), data.digits("test").all()
    net = metrics.feature_net("digits", train, test, 10)
    published = dict(net.reference)
    num = int(published.pop("num"))
    assert {"frechet_gmm_baseline", "frechet_test_floor", "real_precision", "real_recall"} <= published.keys()
    measured = metrics.reference_scores(net, train["image"], test["image"], num)
    assert measured.keys() == published.keys()
    for name, value in published.items():
        assert measured[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
