"""The region graph: label co-occurrence similarity and the thresholded adjacency (eqs. 2-3).

``labels`` everywhere is a boolean array [N images, k regions, M findings] from the TRAINING
split. For regions i, j and finding m, Y_i^m is the set of images in which region i carries m.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigurationError

__all__ = ["build_adjacency", "official_similarity", "paper_similarity"]


def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3 or 0 in labels.shape:
        raise ConfigurationError(
            f"labels must be a non-empty [images, regions, findings] array, got {labels.shape}"
        )
    return labels.astype(bool)


def paper_similarity(labels: np.ndarray) -> np.ndarray:
    """J(r_i, r_j) of eq. 2: the Jaccard index |Y_i^m ∩ Y_j^m| / |Y_i^m ∪ Y_j^m| averaged
    over the findings m whose union is non-empty.

    A finding absent from both regions says nothing about their relation, so it is left out of
    the mean rather than scored as agreement; pairs with no finding at all get 0.
    """
    labels = _check(labels)
    as_float = labels.astype(np.float64)
    # intersections[m, i, j] = number of images where both i and j carry m
    intersections = np.einsum("nim,njm->mij", as_float, as_float)
    counts = as_float.sum(axis=0).T  # [M, k]
    unions = counts[:, :, None] + counts[:, None, :] - intersections
    defined = unions > 0
    ratio = np.divide(intersections, unions, out=np.zeros_like(unions), where=defined)
    n_defined = defined.sum(axis=0)
    return np.divide(
        ratio.sum(axis=0), n_defined, out=np.zeros(n_defined.shape), where=n_defined > 0
    )


def official_similarity(labels: np.ndarray) -> np.ndarray:
    """The authors' code: for each finding, scikit-learn's macro Jaccard of the two regions'
    binary label vectors, averaged over all findings.

    Macro averaging scores the negative class too, so joint absence counts as agreement and
    inflates the similarity; offered for reproducing their numbers, not as the default.
    """
    labels = _check(labels)
    _, k, m = labels.shape
    similarity = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            per_finding = []
            for f in range(m):
                a, b = labels[:, i, f], labels[:, j, f]
                scores = []
                for cls in (False, True):
                    union = np.sum((a == cls) | (b == cls))
                    if union:  # scikit-learn averages over the classes present
                        scores.append(np.sum((a == cls) & (b == cls)) / union)
                per_finding.append(np.mean(scores))
            similarity[i, j] = np.mean(per_finding)
    return similarity


def build_adjacency(labels: np.ndarray, tau: float = 0.5, rule: str = "paper") -> np.ndarray:
    """A_ij = 1 if J(r_i, r_j) ≥ τ else 0 (eq. 3), with A_ii = 1; an int array [k, k].

    ``rule="official"`` uses :func:`official_similarity` and the authors' strict ``>``.
    """
    if rule == "paper":
        adjacency = paper_similarity(labels) >= tau
    elif rule == "official":
        adjacency = official_similarity(labels) > tau
    else:
        raise ConfigurationError(f"adjacency rule {rule!r} is not 'paper' or 'official'")
    adjacency = adjacency.astype(np.int64)
    np.fill_diagonal(adjacency, 1)
    return adjacency
