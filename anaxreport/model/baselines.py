"""The paper's baselines on the same region features (Table 3), as heads of the same model.

AnaXNet is compared with Faster R-CNN + FC and CheXGCN, both on the detector's region features
(paper §4.2). Making them heads (``HeadConfig.kind``) puts them through the same code as
AnaXNet: the same detector, training stages, checkpoint, inference and evaluation; only the
classification of the 18 × 1024 features differs.

* ``fc``: one linear classifier shared by the regions; no graph, no attention.
* ``chexgcn``: the label co-occurrence GCN of CheXGCN / ML-GCN (Chen et al. 2019): a GCN over
  the findings' re-weighted conditional-probability graph (:func:`~.graph.label_adjacency`)
  turns one node per finding into that finding's classifier, a 1024-d vector dotted with each
  region's feature. ML-GCN feeds the nodes GloVe word vectors of the label names; none can be
  downloaded here, so each node starts as its one-hot vector and the first layer's weights are
  its learnt embedding.

Neither has region attention: their :class:`~.head.HeadOutput` carries ``attention=None``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigurationError
from .config import HeadConfig, ModelConfig, require_regions
from .head import OWN_CONTRIBUTIONS, AnaXNetHead, HeadOutput, own_contributions

__all__ = ["CheXGCNHead", "FCHead", "build_head", "require_regions"]

#: ML-GCN's activation between its graph layers.
LEAKY_SLOPE = 0.2


class FCHead(nn.Module):
    """Faster R-CNN + FC: each region's feature through one shared linear layer."""

    CONTRIBUTIONS = OWN_CONTRIBUTIONS

    def __init__(self, config: HeadConfig, num_findings: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.feature_dim, num_findings)

    def forward(self, regions: Tensor) -> HeadOutput:
        return HeadOutput(logits=self.classifier(self.dropout(regions)), attention=None)

    def contributions(self, regions: Tensor, attention: Tensor | None) -> Tensor:
        """[B, k, k, M]: a region's logits come from its own feature alone (the diagonal)."""
        return own_contributions(regions @ self.classifier.weight.T)


class CheXGCNHead(nn.Module):
    """ML-GCN's classifier generator over the findings' graph, on region features.

    W = GCN(E) ∈ R^{M×d} with E the one-hot finding nodes, each layer Â H W_l (Â the symmetric
    normalisation D^-1/2 A D^-1/2 of the re-weighted graph, as ML-GCN's code), LeakyReLU 0.2
    between layers; logits[b, r, m] = R[b, r] · W[m] (no bias, as ML-GCN).
    """

    CONTRIBUTIONS = OWN_CONTRIBUTIONS

    def __init__(self, config: HeadConfig, label_adjacency: Tensor, num_findings: int) -> None:
        super().__init__()
        m = num_findings
        if label_adjacency.shape != (m, m):
            raise ValueError(f"label adjacency must be {m}x{m}, got {tuple(label_adjacency.shape)}")
        # from the config, where the checkpoint keeps it: not duplicated in the weights
        degree = label_adjacency.to(torch.float32).sum(dim=1).clamp(min=1e-12).pow(-0.5)
        normalised = degree[:, None] * label_adjacency.to(torch.float32) * degree[None, :]
        self.register_buffer("graph", normalised, persistent=False)
        self.register_buffer("nodes", torch.eye(m), persistent=False)
        sizes = (m, *config.label_gcn_sizes)
        self.layers = nn.ModuleList(
            nn.Linear(i, o, bias=False) for i, o in itertools.pairwise(sizes)
        )
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
        self.dropout = nn.Dropout(config.dropout)

    def classifiers(self) -> Tensor:
        """The findings' classifiers W [M, d]."""
        h = self.nodes
        for index, layer in enumerate(self.layers):
            h = self.graph @ layer(h)
            if index < len(self.layers) - 1:
                h = F.leaky_relu(h, LEAKY_SLOPE)
        return h

    def forward(self, regions: Tensor) -> HeadOutput:
        logits = self.dropout(regions) @ self.classifiers().T
        return HeadOutput(logits=logits, attention=None)

    def contributions(self, regions: Tensor, attention: Tensor | None) -> Tensor:
        """[B, k, k, M]: a region's logits come from its own feature alone (the diagonal)."""
        return own_contributions(regions @ self.classifiers().T)


def build_head(config: ModelConfig) -> nn.Module:
    """The head ``config.head.kind`` names, over ``config``'s graphs (untrained)."""
    require_regions(config)
    m = len(config.findings)
    if config.head.kind == "fc":
        return FCHead(config.head, m)
    if config.head.kind == "chexgcn":
        if not config.label_adjacency:
            raise ConfigurationError(
                "a chexgcn head needs its findings' graph (label_adjacency), which training "
                "builds from the training labels"
            )
        graph = torch.tensor(config.label_adjacency, dtype=torch.float32)
        return CheXGCNHead(config.head, graph, m)
    adjacency = torch.tensor(config.adjacency, dtype=torch.float32)
    return AnaXNetHead(config.head, adjacency, m)
