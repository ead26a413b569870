"""k-NN precision/recall against a brute-force reference and on cases with known answers."""

import numpy as np
import pytest

from genjax.config import ConfigError
from genjax.metrics import precision_recall
from genjax.metrics import manifold


def _brute_force(real, fake, k):
    """The definition, spelled out: pairwise norms of differences, sorted neighbour lists."""
    def radii(x):
        d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def coverage(queries, support, r):
        d = np.linalg.norm(queries[:, None, :] - support[None, :, :], axis=-1)
        return np.mean(np.any(d <= r[None, :], axis=1))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force(k, monkeypatch):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(300, 8))
    fake = 0.8 * rng.normal(size=(250, 8)) + 0.5
    monkeypatch.setattr(manifold, "_BLOCK_ELEMENTS", 1000)  # exercise the row blocking
    ours = precision_recall(real, fake, k)
    ref = _brute_force(real, fake, k)
    assert 0.2 < ref[0] < 0.99 and 0.2 < ref[1] < 0.99  # a case where the answer is not trivial
    assert ours == pytest.approx(ref, abs=1e-12)


def test_identical_sets_are_fully_precise_and_recalled():
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_far_apart_sets_score_zero():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(200, 4)), 100.0 + rng.normal(size=(150, 4))
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_samples_from_part_of_the_support_are_precise_but_do_not_recall():
    rng = np.random.default_rng(2)
    real = np.concatenate([rng.normal(size=(200, 4)), 20.0 + rng.normal(size=(200, 4))])
    fake = real[:200][rng.permutation(200)[:150]]  # real points of the first cluster only
    precision, recall = precision_recall(real, fake)
    assert precision == 1.0
    assert 0.3 < recall <= 0.5  # the second cluster is never reached


def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="k=3 nearest neighbours need more than k points; got 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((5, 2)))
    with pytest.raises(ConfigError, match=r"shapes \(5, 2\) and \(5, 3\)"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
