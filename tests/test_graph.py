"""The region graph of eqs. 2-3 on hand-computed examples."""

import numpy as np
import pytest

from anaxreport.errors import ConfigurationError
from anaxreport.model.graph import build_adjacency, official_similarity, paper_similarity


def _labels() -> np.ndarray:
    """4 images, 4 regions, 2 findings.

    region 0: finding 0 in images {0, 1}
    region 1: finding 0 in {0, 1}, finding 1 in {2}
    region 2: finding 0 in {3}
    region 3: finding 0 in {0, 1}           (like region 0: finding 1 absent from both)
    """
    y = np.zeros((4, 4, 2), dtype=bool)
    y[[0, 1], 0, 0] = True
    y[[0, 1], 1, 0] = True
    y[2, 1, 1] = True
    y[3, 2, 0] = True
    y[[0, 1], 3, 0] = True
    return y


def test_paper_similarity_by_hand():
    j = paper_similarity(_labels())
    # (0,1): finding 0 -> 2/2, finding 1 -> 0/1; mean over both non-empty unions = 0.5
    assert j[0, 1] == pytest.approx(0.5)
    # (0,2): finding 0 -> 0/3; finding 1 has an empty union and is left out -> 0
    assert j[0, 2] == pytest.approx(0.0)
    # (0,3): finding 0 -> 2/2; finding 1 absent from both does not count either way -> 1
    assert j[0, 3] == pytest.approx(1.0)
    # (1,2): finding 0 -> 0/3, finding 1 -> 0/1
    assert j[1, 2] == pytest.approx(0.0)
    np.testing.assert_allclose(j, j.T)


def test_joint_absence_is_not_similarity():
    # regions 0 and 2 share nothing but absences: the paper rule keeps them apart,
    # the official (macro) rule scores the shared absences and joins them.
    labels = _labels()
    assert build_adjacency(labels, 0.5, "paper")[0, 2] == 0
    # official: finding 0 -> mean(J_pos 0/3, J_neg 1/4) = 0.125; finding 1 -> only the
    # negative class present -> 1.0; mean 0.5625 > 0.5
    assert official_similarity(labels)[0, 2] == pytest.approx(0.5625)
    assert build_adjacency(labels, 0.5, "official")[0, 2] == 1


def test_official_rule_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    labels = rng.random((30, 5, 3)) < 0.3
    ours = official_similarity(labels)
    for i in range(5):
        for j in range(5):
            theirs = np.mean(
                [
                    metrics.jaccard_score(labels[:, i, m], labels[:, j, m], average="macro")
                    for m in range(3)
                ]
            )
            assert ours[i, j] == pytest.approx(theirs)


def test_threshold_is_inclusive_and_diagonal_is_one():
    labels = _labels()
    a = build_adjacency(labels, tau=0.5)
    assert a[0, 1] == 1 and a[1, 0] == 1  # J = 0.5 exactly, paper's >= keeps the edge
    assert build_adjacency(labels, tau=0.51)[0, 1] == 0
    assert np.all(np.diag(a) == 1)
    assert np.all(np.diag(build_adjacency(np.zeros((2, 3, 2), bool))) == 1)
    assert a.dtype == np.int64


def test_bad_labels_are_refused():
    with pytest.raises(ConfigurationError):
        build_adjacency(np.zeros((3, 4)))
    with pytest.raises(ConfigurationError):
        build_adjacency(_labels(), rule="cosine")
