"""The anatomical dependency module of AnaXNet (paper §3.4), apart from the detector.

Paper equations, with R the region features [B, k, d] from the detector:

* eq. 1  R^{t+1} = φ(A R^t W^t), two layers (512, 1024), φ = ReLU; Z is the last output.
* eq. 4  Q = softmax(R Zᵀ) R, the softmax over the LAST dimension (each region attends over
  regions; the official code's dim-less ``nn.Softmax()`` normalised over the batch instead).
* eq. 5  ŷ = [R; Q] W2, W2 ∈ R^{2d×M} shared across regions → logits [B, k, M].

A module of its own so that inference (:mod:`.inference`) can use it without importing
torchvision, whose import pulls in torch's compiler stack (seconds of every CLI start).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigurationError
from .config import HeadConfig
from .engine_heads import ANAXNET_CONTRIBUTIONS, OWN_CONTRIBUTIONS

__all__ = [
    "OWN_CONTRIBUTIONS",
    "AnaXNetHead",
    "AnaXNetOutput",
    "HeadOutput",
    "NormalizedGraphConv",
    "RawGraphConv",
    "own_contributions",
]


class NormalizedGraphConv(nn.Module):
    """Kipf and Welling's GCN layer on a dense adjacency: D^-1/2 (A + I) D^-1/2 X W + b.

    The computation, initialisation (Glorot weights, zero bias) and parameter names
    (``lin.weight``, ``bias``) of torch-geometric's ``DenseGCNConv``, which
    tests/test_anaxnet.py checks it against. Written here because importing torch-geometric
    takes about 3 s (it loads torch._dynamo and every dataset module): most of a CLI start.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.xavier_uniform_(self.lin.weight)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        loops = adjacency.clone()
        loops.diagonal(dim1=-2, dim2=-1).fill_(1.0)  # A + I, with existing loops kept at 1
        scale = loops.sum(dim=-1).clamp(min=1).pow(-0.5)
        out = torch.matmul(scale.unsqueeze(-1) * loops * scale.unsqueeze(-2), self.lin(x))
        return out if self.bias is None else out + self.bias


class RawGraphConv(nn.Module):
    """A R W with the raw 0/1 adjacency, as in the official code (no degree normalisation)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(in_channels, out_channels, bias=bias)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        return torch.matmul(adjacency, self.lin(x))


@dataclass(frozen=True)
class HeadOutput:
    """``logits`` [B, k, M] and the attention weights softmax(R Zᵀ) [B, k, k] (None for a
    baseline head, which has none: :mod:`.baselines`)."""

    logits: Tensor
    attention: Tensor | None


class AnaXNetHead(nn.Module):
    """GCN over the region graph, non-local attention, shared linear classifier."""

    #: how :meth:`contributions` splits the logits, for the explanation's record
    CONTRIBUTIONS = ANAXNET_CONTRIBUTIONS

    def __init__(self, config: HeadConfig, adjacency: Tensor, num_findings: int) -> None:
        super().__init__()
        k = adjacency.shape[0]
        if adjacency.shape != (k, k):
            raise ValueError(f"adjacency must be square, got {tuple(adjacency.shape)}")
        self.config = config
        self.register_buffer("adjacency", adjacency.to(torch.float32))
        sizes = (config.feature_dim, *config.gcn_sizes)
        conv = NormalizedGraphConv if config.normalize_adjacency else RawGraphConv
        self.gcn = nn.ModuleList(
            conv(i, o, bias=config.gcn_bias) for i, o in itertools.pairwise(sizes)
        )
        self.dropout = nn.Dropout(config.dropout)
        d = config.feature_dim
        if config.classifier == "concat":
            self.norm: nn.Module = nn.Identity()
            self.classifier = nn.Linear(2 * d, num_findings)
        else:
            self.norm = nn.LayerNorm(d)
            self.classifier = nn.Linear(d, num_findings)

    def _activate(self, x: Tensor) -> Tensor:
        if self.config.activation == "leaky_relu":
            return F.leaky_relu(x, 0.2)
        return F.relu(x)

    def forward(self, regions: Tensor) -> HeadOutput:
        """``regions`` [B, k, d] → logits [B, k, M]; each sample is independent of the batch."""
        z = regions
        for layer in self.gcn:
            z = self._activate(layer(self.dropout(z), self.adjacency))
        attention = torch.softmax(regions @ z.transpose(-1, -2), dim=-1)
        q = attention @ regions
        if self.config.classifier == "concat":
            logits = self.classifier(self.dropout(torch.cat([regions, q], dim=-1)))
        else:
            logits = self.classifier(self.norm(q + regions))
        return HeadOutput(logits=logits, attention=attention)

    def contributions(self, regions: Tensor, attention: Tensor) -> Tensor:
        """What each region's feature adds to each region's logits, [B, k, k, M]: entry
        [b, r, j, m] is region j's share of region r's logit for finding m, and over j they sum
        to the logit less the classifier's bias (exactly, in eval mode).

        Eq. 5 is linear in R and Q = softmax(R Zᵀ) R: ŷ_r = W_R R_r + W_Q Σ_j a_rj R_j + b, so
        region j gives a_rj W_Q R_j (plus W_R R_r when j = r), with the attention weights a as
        the model computed them. The official code's LayerNorm(Q + R) has no such split.
        """
        if self.config.classifier != "concat":
            raise ConfigurationError(
                "region contributions need the paper's classifier ([R; Q] W2, 'concat'); "
                f"this head's is {self.config.classifier!r}"
            )
        d = regions.shape[-1]
        weight = self.classifier.weight  # [M, 2d]
        through = regions @ weight[:, d:].T  # [B, k, M]: W_Q R_j, before the attention
        shares = attention.unsqueeze(-1) * through.unsqueeze(1)  # [B, k, k, M]
        return shares + own_contributions(regions @ weight[:, :d].T)


def own_contributions(own: Tensor) -> Tensor:
    """Contributions [B, k, k, M] of a head that scores each region from its own feature
    alone: ``own`` [B, k, M] (each region's logits less the bias) on the diagonal."""
    return torch.diag_embed(own.transpose(-1, -2)).permute(0, 2, 3, 1)


@dataclass(frozen=True)
class AnaXNetOutput:
    """One batch's output; boxes are in the coordinates of the images given to the model.

    Shapes: boxes [B, k, 4], scores [B, k], found [B, k], logits [B, k, M], attention
    [B, k, k] (None for a baseline head). ``probabilities`` is sigmoid(logits).
    """

    boxes: Tensor
    scores: Tensor
    found: Tensor
    logits: Tensor
    attention: Tensor | None
    #: [B, k, k, M] region contributions to the logits (the head's ``contributions``), when
    #: asked for: an explanation of the findings
    contributions: Tensor | None = None

    @property
    def probabilities(self) -> Tensor:
        return torch.sigmoid(self.logits)
