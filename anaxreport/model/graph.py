"""The region graph: label co-occurrence similarity and the thresholded adjacency (eqs. 2-3);
and the findings' co-occurrence graph of the CheXGCN baseline (:func:`label_adjacency`).

``labels`` everywhere is a boolean array [N images, k regions, M findings] from the TRAINING
split. For regions i, j and finding m, Y_i^m is the set of images in which region i carries m.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigurationError

__all__ = ["build_adjacency", "label_adjacency", "official_similarity", "paper_similarity"]


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


def label_adjacency(labels: np.ndarray, tau: float = 0.4, reweight: float = 0.2) -> np.ndarray:
    """The findings' correlation matrix of ML-GCN (Chen et al. 2019, eqs. 7-8), float [M, M].

    Counted over region samples (one per image and region: the classifier it feeds scores
    regions): P_ij = P(finding j | finding i), binarised at ``tau`` (eq. 7) against rare
    co-occurrences, then re-weighted (eq. 8) so that a finding keeps ``1 - reweight`` of its
    own feature and spreads ``reweight`` evenly over its neighbours, against over-smoothing.
    A finding with no neighbour (or never seen) keeps all of its own feature.
    """
    labels = _check(labels)
    samples = labels.reshape(-1, labels.shape[-1]).astype(np.float64)
    together = samples.T @ samples  # [M, M]: region samples carrying both i and j
    seen = np.diag(together).copy()
    conditional = np.divide(
        together, seen[:, None], out=np.zeros_like(together), where=seen[:, None] > 0
    )
    binary = conditional >= tau
    np.fill_diagonal(binary, False)
    neighbours = binary.sum(axis=1, keepdims=True)
    adjacency = np.where(neighbours > 0, reweight * binary / np.maximum(neighbours, 1), 0.0)
    np.fill_diagonal(adjacency, np.where(neighbours[:, 0] > 0, 1.0 - reweight, 1.0))
    return adjacency
