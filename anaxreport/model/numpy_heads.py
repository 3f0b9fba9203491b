"""The heads of :mod:`.head` and :mod:`.baselines` at inference, in NumPy, for the engine that
never imports torch (:mod:`.engine`).

The same equations, read from the same state-dict names; ``tests/test_engine.py`` (AnaXNet)
and ``tests/test_baselines.py`` (FC, CheXGCN) hold each kind, explanations included, to its torch
module. Dropout is the identity at inference, so it is absent here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import ModelConfig
from .plan import StateReader

__all__ = ["ANAXNET_CONTRIBUTIONS", "OWN_CONTRIBUTIONS", "NumpyHead", "numpy_head"]

#: how AnaXNet's head splits its logits by region, for the explanation's record
ANAXNET_CONTRIBUTIONS = (
    "eq. 5 split by region: region j gives region r a_rj W_Q R_j, and W_R R_r its own, "
    "with the attention weights a as the model computed them"
)
#: the same, of a head with no terms across regions
OWN_CONTRIBUTIONS = "each region's own feature: this head has no terms across regions"

LEAKY_SLOPE = 0.2  # ML-GCN's, and AnaXNet's "leaky_relu" activation
LAYER_NORM_EPS = 1e-5


class NumpyHead:
    """A head's inference: ``forward(regions [B, k, d])`` → (logits [B, k, M], attention
    [B, k, k] or None) and ``contributions`` → [B, k, k, M], as the torch heads give them."""

    CONTRIBUTIONS = OWN_CONTRIBUTIONS

    def __init__(self, classifier: np.ndarray, bias: np.ndarray | None) -> None:
        self.weight, self.bias = classifier, bias  # [M, d], [M]

    def forward(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        logits = regions @ self.weight.T
        return (logits if self.bias is None else logits + self.bias), None

    def contributions(self, regions: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        return own_contributions(regions @ self.weight.T)


class AnaXNetNumpyHead(NumpyHead):
    """GCN over the region graph, non-local attention, shared linear classifier
    (:class:`~.head.AnaXNetHead`)."""

    CONTRIBUTIONS = ANAXNET_CONTRIBUTIONS

    def __init__(self, config: ModelConfig, reader: StateReader) -> None:
        head = config.head
        adjacency = reader["head.adjacency"]
        self.layers: list[Callable[[np.ndarray], np.ndarray]] = []
        for index in range(len(head.gcn_sizes)):
            prefix = f"head.gcn.{index}."
            weight = reader[f"{prefix}lin.weight"]
            if head.normalize_adjacency:
                bias = reader[f"{prefix}bias"] if head.gcn_bias else None
                self.layers.append(_normalized_conv(adjacency, weight, bias))
            else:
                bias = reader[f"{prefix}lin.bias"] if head.gcn_bias else None
                self.layers.append(_raw_conv(adjacency, weight, bias))
        self.leaky = head.activation == "leaky_relu"
        self.concat = head.classifier == "concat"
        if not self.concat:
            self.norm = (reader["head.norm.weight"], reader["head.norm.bias"])
        super().__init__(reader["head.classifier.weight"], reader["head.classifier.bias"])

    def forward(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        z = regions
        for layer in self.layers:
            out = layer(z)
            z = (
                np.where(out > 0, out, out * np.float32(LEAKY_SLOPE))
                if self.leaky
                else np.maximum(out, 0)
            )
        attention = softmax(regions @ z.transpose(0, 2, 1))
        q = attention @ regions
        if self.concat:
            joined = np.concatenate([regions, q], axis=-1)
        else:
            joined = _layer_norm(q + regions, *self.norm)
        return joined @ self.weight.T + self.bias, attention

    def contributions(self, regions: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        """:meth:`~.head.AnaXNetHead.contributions`: region j gives region r a_rj W_Q R_j, and
        W_R R_r its own."""
        if not self.concat or attention is None:
            from ..errors import ConfigurationError

            raise ConfigurationError(
                "region contributions need the paper's classifier ([R; Q] W2, 'concat')"
            )
        d = regions.shape[-1]
        through = regions @ self.weight[:, d:].T  # [B, k, M]
        shares = attention[..., None] * through[:, None, :, :]
        return shares + own_contributions(regions @ self.weight[:, :d].T)


def numpy_head(config: ModelConfig, reader: StateReader) -> NumpyHead:
    """The head ``config.head.kind`` names, with the checkpoint's weights."""
    if config.head.kind == "fc":
        return NumpyHead(reader["head.classifier.weight"], reader["head.classifier.bias"])
    if config.head.kind == "chexgcn":
        return NumpyHead(_label_classifiers(config, reader), None)
    return AnaXNetNumpyHead(config, reader)


def _label_classifiers(config: ModelConfig, reader: StateReader) -> np.ndarray:
    """CheXGCN's classifiers W [M, d]: the GCN over the findings' normalised graph from
    one-hot nodes (:meth:`~.baselines.CheXGCNHead.classifiers`); fixed at inference."""
    graph = np.asarray(config.label_adjacency, dtype=np.float32)
    degree = np.maximum(graph.sum(axis=1), np.float32(1e-12)) ** np.float32(-0.5)
    normalised = degree[:, None] * graph * degree[None, :]
    h = np.eye(len(graph), dtype=np.float32)
    count = len(config.head.label_gcn_sizes)
    for index in range(count):
        h = normalised @ (h @ reader[f"head.layers.{index}.weight"].T)
        if index < count - 1:
            h = _leaky_relu(h)
    return h


def _normalized_conv(
    adjacency: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> Callable[[np.ndarray], np.ndarray]:
    """D^-1/2 (A + I) D^-1/2 X W + b (:class:`~.head.NormalizedGraphConv`)."""
    loops = adjacency.copy()
    np.fill_diagonal(loops, 1.0)
    scale = np.maximum(loops.sum(axis=-1), np.float32(1)) ** np.float32(-0.5)
    propagate = scale[:, None] * loops * scale[None, :]

    def layer(x: np.ndarray) -> np.ndarray:
        out = propagate @ (x @ weight.T)
        return out if bias is None else out + bias

    return layer


def _raw_conv(
    adjacency: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> Callable[[np.ndarray], np.ndarray]:
    """A (X W + b) with the raw adjacency (:class:`~.head.RawGraphConv`)."""

    def layer(x: np.ndarray) -> np.ndarray:
        out = x @ weight.T
        return adjacency @ (out if bias is None else out + bias)

    return layer


def _leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, x * np.float32(LEAKY_SLOPE))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(LAYER_NORM_EPS)) * weight + bias


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def own_contributions(own: np.ndarray) -> np.ndarray:
    """Contributions [B, k, k, M] of a head that scores each region from its own feature
    alone: ``own`` [B, k, M] on the diagonal (:func:`~.head.own_contributions`)."""
    b, k, m = own.shape
    out = np.zeros((b, k, k, m), dtype=own.dtype)
    out[:, np.arange(k), np.arange(k), :] = own
    return out
