"""The heads of :mod:`.head` and :mod:`.baselines` as the ONNX Runtime engine runs them
(:mod:`.engine`): the forward pass as an ONNX graph, the explanation split in NumPy.

The forward runs on ONNX Runtime, not NumPy, for one reason: NumPy's BLAS gives products whose
rounding depends on its thread count, and its pool's limits hold per calling thread, so the
node's workers and the main thread reported probabilities a rounding apart. The graph's
products are the same from any thread (and no BLAS pool spins beside ONNX Runtime's).

The same equations, read from the same state-dict names; ``tests/test_engine.py`` (AnaXNet)
and ``tests/test_baselines.py`` (FC, CheXGCN) hold each kind, explanations included, to its torch
module. Dropout is the identity at inference, so it is absent here.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .plan import StateReader
from .runtime import GraphBuilder, OnnxGraph

__all__ = ["ANAXNET_CONTRIBUTIONS", "OWN_CONTRIBUTIONS", "EngineHead", "engine_head"]

#: how AnaXNet's head splits its logits by region, for the explanation's record
ANAXNET_CONTRIBUTIONS = (
    "eq. 5 split by region: region j gives region r a_rj W_Q R_j, and W_R R_r its own, "
    "with the attention weights a as the model computed them"
)
#: the same, of a head with no terms across regions
OWN_CONTRIBUTIONS = "each region's own feature: this head has no terms across regions"

LEAKY_SLOPE = 0.2  # ML-GCN's, and AnaXNet's "leaky_relu" activation
LAYER_NORM_EPS = 1e-5


class EngineHead:
    """A head that scores each region from its own feature: logits = R Wᵀ (+ b).

    :meth:`graph` is its forward: regions [B, k, d] in; logits [B, k, M] out, then the
    attention [B, k, k] where the head has one. :meth:`contributions` splits the logits by
    source region, [B, k, k, M], as the torch heads do.
    """

    CONTRIBUTIONS = OWN_CONTRIBUTIONS

    def __init__(self, classifier: np.ndarray, bias: np.ndarray | None) -> None:
        self.weight, self.bias = classifier, bias  # [M, d], [M]

    def graph(self) -> OnnxGraph:
        graph = GraphBuilder()
        return graph.model([self._classify(graph, graph.input(rank=3))])

    def _classify(self, graph: GraphBuilder, x: str) -> str:
        logits = graph.node("MatMul", [x, graph.constant(self.weight.T)])
        return (
            logits if self.bias is None else graph.node("Add", [logits, graph.constant(self.bias)])
        )

    def contributions(self, regions: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        return own_contributions(_scores(regions, self.weight))


class AnaXNetEngineHead(EngineHead):
    """GCN over the region graph, non-local attention, shared linear classifier
    (:class:`~.head.AnaXNetHead`)."""

    CONTRIBUTIONS = ANAXNET_CONTRIBUTIONS

    def __init__(self, config: ModelConfig, reader: StateReader) -> None:
        head = config.head
        adjacency = reader["head.adjacency"]
        if head.normalize_adjacency:  # D^-1/2 (A + I) D^-1/2, as NormalizedGraphConv
            loops = adjacency.copy()
            np.fill_diagonal(loops, 1.0)
            scale = np.maximum(loops.sum(axis=-1), np.float32(1)) ** np.float32(-0.5)
            self.propagate = scale[:, None] * loops * scale[None, :]
        else:  # the raw 0/1 graph, as RawGraphConv
            self.propagate = adjacency
        self.bias_inside = not head.normalize_adjacency  # A (X W + b), else Â X W + b
        self.layers = []
        for index in range(len(head.gcn_sizes)):
            prefix = f"head.gcn.{index}."
            bias_name = f"{prefix}lin.bias" if self.bias_inside else f"{prefix}bias"
            bias = reader[bias_name] if head.gcn_bias else None
            self.layers.append((reader[f"{prefix}lin.weight"], bias))
        self.leaky = head.activation == "leaky_relu"
        self.concat = head.classifier == "concat"
        if not self.concat:
            self.norm = (reader["head.norm.weight"], reader["head.norm.bias"])
        super().__init__(reader["head.classifier.weight"], reader["head.classifier.bias"])

    def graph(self) -> OnnxGraph:
        """Eq. 1, 4 and 5 (or the official LayerNorm(Q + R) classifier)."""
        graph = GraphBuilder()
        regions = graph.input(rank=3)
        z = regions
        for weight, bias in self.layers:
            z = graph.node("MatMul", [z, graph.constant(weight.T)])
            if bias is not None and self.bias_inside:
                z = graph.node("Add", [z, graph.constant(bias)])
            z = graph.node("MatMul", [graph.constant(self.propagate), z])
            if bias is not None and not self.bias_inside:
                z = graph.node("Add", [z, graph.constant(bias)])
            z = (
                graph.node("LeakyRelu", [z], alpha=LEAKY_SLOPE)
                if self.leaky
                else graph.node("Relu", [z])
            )
        keys = graph.node("Transpose", [z], perm=[0, 2, 1])
        attention = graph.node("Softmax", [graph.node("MatMul", [regions, keys])], axis=-1)
        q = graph.node("MatMul", [attention, regions])
        if self.concat:
            joined = graph.node("Concat", [regions, q], axis=-1)
        else:
            joined = graph.node(
                "LayerNormalization",
                [graph.node("Add", [q, regions]), *(graph.constant(p) for p in self.norm)],
                axis=-1,
                epsilon=LAYER_NORM_EPS,
            )
        return graph.model([self._classify(graph, joined), attention])

    def contributions(self, regions: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        """:meth:`~.head.AnaXNetHead.contributions`: region j gives region r a_rj W_Q R_j, and
        W_R R_r its own."""
        if not self.concat or attention is None:
            from ..errors import ConfigurationError

            raise ConfigurationError(
                "region contributions need the paper's classifier ([R; Q] W2, 'concat')"
            )
        d = regions.shape[-1]
        through = _scores(regions, self.weight[:, d:])  # [B, k, M]
        shares = attention[..., None] * through[:, None, :, :]
        return shares + own_contributions(_scores(regions, self.weight[:, :d]))


def engine_head(config: ModelConfig, reader: StateReader) -> EngineHead:
    """The head ``config.head.kind`` names, with the checkpoint's weights."""
    if config.head.kind == "fc":
        return EngineHead(reader["head.classifier.weight"], reader["head.classifier.bias"])
    if config.head.kind == "chexgcn":
        return EngineHead(_label_classifiers(config, reader), None)
    return AnaXNetEngineHead(config, reader)


def _label_classifiers(config: ModelConfig, reader: StateReader) -> np.ndarray:
    """CheXGCN's classifiers W [M, d]: the GCN over the findings' normalised graph from
    one-hot nodes (:meth:`~.baselines.CheXGCNHead.classifiers`); fixed at inference, so made
    once, here."""
    graph = np.asarray(config.label_adjacency, dtype=np.float32)
    degree = np.maximum(graph.sum(axis=1), np.float32(1e-12)) ** np.float32(-0.5)
    normalised = degree[:, None] * graph * degree[None, :]
    h = np.eye(len(graph), dtype=np.float32)
    count = len(config.head.label_gcn_sizes)
    for index in range(count):
        h = normalised @ (h @ reader[f"head.layers.{index}.weight"].T)
        if index < count - 1:
            h = np.where(h > 0, h, h * np.float32(LEAKY_SLOPE))
    return h


def _scores(regions: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """regions [B, k, d] · weight [M, d]ᵀ by NumPy's own loops, not BLAS, whose rounding
    depends on its thread count: an explanation is the same from any thread (18 × 9 rows)."""
    return np.einsum("bkd,md->bkm", regions, weight)


def own_contributions(own: np.ndarray) -> np.ndarray:
    """Contributions [B, k, k, M] of a head that scores each region from its own feature
    alone: ``own`` [B, k, M] on the diagonal (:func:`~.head.own_contributions`)."""
    b, k, m = own.shape
    out = np.zeros((b, k, k, m), dtype=own.dtype)
    out[:, np.arange(k), np.arange(k), :] = own
    return out
