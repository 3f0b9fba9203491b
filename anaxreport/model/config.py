"""Model configuration as data: frozen dataclasses that round-trip through JSON.

A checkpoint's JSON file holds one :class:`ModelConfig`; nothing about the architecture lives
in code paths that a config cannot reach (STYLE.md §6).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ..vocab import FINDING_NAMES, REGION_NAMES

#: The inference engine: ``onnxruntime`` (:mod:`.engine`, the CPU's, without torch) or
#: ``torch`` (:mod:`.inference`); ``auto`` takes the former where it is installed.
RUNTIMES = ("auto", "torch", "onnxruntime")

__all__ = [
    "HEAD_KINDS",
    "HEAD_NAMES",
    "LOCALISING_KINDS",
    "ROI_ALIGNS",
    "RUNTIMES",
    "DetectorConfig",
    "GraphConfig",
    "HeadConfig",
    "ModelConfig",
    "require_regions",
]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("batch", "frozen_batch", "group")
#: Region pooling: torchvision's MultiScaleRoIAlign, or detectron2's ROIAlignV2.
ROI_ALIGNS = ("torchvision", "detectron2")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


@dataclass(frozen=True)
class DetectorConfig:
    """The Faster R-CNN region detector (paper §3.3; torchvision engine, DESIGN.md §3).

    ``image_size`` is the longest side of the model input; anchors scale with it so that the
    FPN levels cover 1/16 to the whole image, as torchvision's defaults do at 512 px.
    ``score_threshold`` is the paper's confidence threshold: the best box of a class counts as
    found only at or above it. Aspect ratios (height/width) include 4 because the trachea and
    the mediastinum are tall and narrow. ``stride_in_1x1`` puts a bottleneck's stride in its
    first 1 × 1 convolution, as detectron2's ``STRIDE_IN_1X1`` (its default, for MSRA
    ResNets) does, instead of in the 3 × 3 as torchvision does (:mod:`.detectron2`).
    """

    backbone: str = "resnet50"
    norm: str = "batch"
    fpn_channels: int = 256
    image_size: int = 512
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    #: input normalisation of the [0, 1] grey image given as 3 channels: one value for all,
    #: or one per channel (detectron2 normalises BGR 0-255 per channel: its MSRA defaults are
    #: (0.406, 0.456, 0.485) and 1/255 here)
    pixel_mean: float | tuple[float, float, float] = 0.5
    pixel_std: float | tuple[float, float, float] = 0.25
    stride_in_1x1: bool = False
    #: the P2 anchors' side in pixels, doubling per level; 0: a sixteenth of ``image_size``
    anchor_base: int = 0
    #: torchvision rounds its anchors to whole pixels; detectron2 does not
    round_anchors: bool = True
    #: how regions are pooled: torchvision's MultiScaleRoIAlign (legacy alignment, 2 × 2
    #: samples a bin) or detectron2's ROIAlignV2 (half-pixel aligned, adaptive sampling)
    roi_align: str = "torchvision"

    def __post_init__(self) -> None:
        _require(self.backbone in BACKBONES, f"backbone {self.backbone!r} not in {BACKBONES}")
        _require(
            not self.stride_in_1x1 or self.backbone in ("resnet50", "resnet101"),
            f"stride_in_1x1 is for bottleneck ResNets (resnet50, resnet101), not {self.backbone}",
        )
        _require(self.norm in NORMS, f"norm {self.norm!r} not in {NORMS}")
        _require(32 <= self.image_size <= 4096, f"image_size {self.image_size} not in 32..4096")
        _require(self.fpn_channels > 0, f"fpn_channels must be positive, got {self.fpn_channels}")
        _require(
            0.0 <= self.score_threshold < 1.0,
            f"score_threshold {self.score_threshold} not in [0, 1)",
        )
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            _require(
                not isinstance(value, tuple) or len(value) == 3,
                f"{name} is one value or one per channel (3), got {value}",
            )
        _require(min(self.channel_stds) > 0, f"pixel_std must be positive, got {self.pixel_std}")
        _require(self.anchor_base >= 0, f"anchor_base must be 0 or more, not {self.anchor_base}")
        _require(self.roi_align in ROI_ALIGNS, f"roi_align {self.roi_align!r} not in {ROI_ALIGNS}")

    @property
    def channel_means(self) -> tuple[float, float, float]:
        """:attr:`pixel_mean` per input channel."""
        return _per_channel(self.pixel_mean)

    @property
    def channel_stds(self) -> tuple[float, float, float]:
        """:attr:`pixel_std` per input channel."""
        return _per_channel(self.pixel_std)

    @property
    def anchor_sizes(self) -> tuple[tuple[int], ...]:
        base = self.anchor_base or max(4, round(self.image_size / 16))
        return tuple((base * 2**level,) for level in range(5))


#: What classifies: AnaXNet's anatomical dependency module or one of the paper's baselines
#: on the same region features (:mod:`.baselines`), or the image-level GlobalView, which has
#: no regions at all (:mod:`.globalview`).
HEAD_KINDS = ("anaxnet", "fc", "chexgcn", "globalview")
#: The kinds that box and classify the 18 regions, and so can make a report.
LOCALISING_KINDS = ("anaxnet", "fc", "chexgcn")
#: The model name a trained checkpoint gets by default, per kind (Table 3's rows).
HEAD_NAMES = {
    "anaxnet": "anaxnet",
    "fc": "fasterrcnn-fc",
    "chexgcn": "chexgcn",
    "globalview": "globalview",
}


@dataclass(frozen=True)
class HeadConfig:
    """The anatomical dependency module: GCN (eq. 1), attention (eq. 4), classifier (eq. 5).

    Paper defaults; the official code's choices are options: ``gcn_sizes=(2048, 1024)``,
    ``activation="leaky_relu"``, ``normalize_adjacency=False`` and
    ``classifier="sum_layernorm"`` (LayerNorm(Q + R) then Linear(d, M)).

    ``kind`` ``fc`` and ``chexgcn`` are the paper's baselines on the same region features:
    a linear classifier, and a GCN over the findings' co-occurrence graph (ML-GCN's, with
    ``label_tau`` its threshold τ and ``label_reweight`` its p; ``label_gcn_sizes`` its layers).
    """

    feature_dim: int = 1024
    gcn_sizes: tuple[int, ...] = (512, 1024)
    activation: str = "relu"
    normalize_adjacency: bool = True
    gcn_bias: bool = False
    classifier: str = "concat"
    dropout: float = 0.0
    kind: str = "anaxnet"
    label_tau: float = 0.4
    label_reweight: float = 0.2
    label_gcn_sizes: tuple[int, ...] = (1024, 1024)

    def __post_init__(self) -> None:
        _require(self.kind in HEAD_KINDS, f"head kind {self.kind!r} not in {HEAD_KINDS}")
        _require(0.0 <= self.label_tau <= 1.0, f"label_tau {self.label_tau} not in [0, 1]")
        _require(
            0.0 <= self.label_reweight <= 1.0,
            f"label_reweight {self.label_reweight} not in [0, 1]",
        )
        _require(
            len(self.label_gcn_sizes) >= 1 and self.label_gcn_sizes[-1] == self.feature_dim,
            f"the last label GCN size must equal feature_dim {self.feature_dim}: the GCN's "
            "outputs are the classifiers of the region features",
        )
        _require(len(self.gcn_sizes) >= 1, "gcn_sizes needs at least one layer")
        _require(
            self.gcn_sizes[-1] == self.feature_dim,
            f"the last GCN size {self.gcn_sizes[-1]} must equal feature_dim {self.feature_dim} "
            "so that softmax(R Zᵀ) is defined",
        )
        _require(
            self.activation in ("relu", "leaky_relu"),
            f"activation {self.activation!r} not in ('relu', 'leaky_relu')",
        )
        _require(
            self.classifier in ("concat", "sum_layernorm"),
            f"classifier {self.classifier!r} not in ('concat', 'sum_layernorm')",
        )
        _require(0.0 <= self.dropout < 1.0, f"dropout {self.dropout} not in [0, 1)")


@dataclass(frozen=True)
class GraphConfig:
    """How the region adjacency is built from training labels (paper eqs. 2-3)."""

    tau: float = 0.5
    rule: str = "paper"

    def __post_init__(self) -> None:
        _require(0.0 <= self.tau <= 1.0, f"tau {self.tau} not in [0, 1]")
        _require(self.rule in ("paper", "official"), f"rule {self.rule!r} not in paper/official")


def _per_channel(value: float | tuple[float, float, float]) -> tuple[float, float, float]:
    if isinstance(value, tuple):
        return (float(value[0]), float(value[1]), float(value[2]))
    return (float(value),) * 3


def _identity_adjacency() -> tuple[tuple[int, ...], ...]:
    n = len(REGION_NAMES)
    return tuple(tuple(int(i == j) for j in range(n)) for i in range(n))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model and read its outputs, stored beside its weights."""

    name: str = "anaxnet"
    version: str = "0"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    regions: tuple[str, ...] = REGION_NAMES
    findings: tuple[str, ...] = FINDING_NAMES
    adjacency: tuple[tuple[int, ...], ...] = field(default_factory=_identity_adjacency)
    thresholds: tuple[float, ...] = (0.5,) * len(FINDING_NAMES)
    #: The findings' re-weighted co-occurrence graph [M, M] of a ``chexgcn`` head, built from
    #: the training labels (empty before, and for the other heads).
    label_adjacency: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        _require(
            self.regions == REGION_NAMES,
            f"region order {self.regions} differs from the vocabulary's {REGION_NAMES}",
        )
        _require(
            self.findings == FINDING_NAMES,
            f"finding order {self.findings} differs from the vocabulary's {FINDING_NAMES}",
        )
        k = len(self.regions)
        _require(
            len(self.adjacency) == k and all(len(row) == k for row in self.adjacency),
            f"adjacency must be {k}x{k}",
        )
        _require(
            all(v in (0, 1) for row in self.adjacency for v in row),
            "adjacency entries must be 0 or 1",
        )
        _require(all(self.adjacency[i][i] == 1 for i in range(k)), "adjacency needs A_ii = 1")
        _require(
            len(self.thresholds) == len(self.findings)
            and all(0.0 <= t <= 1.0 for t in self.thresholds),
            f"thresholds must be {len(self.findings)} values in [0, 1]",
        )
        m = len(self.findings)
        if self.label_adjacency:  # empty until training builds it from the labels
            _require(self.head.kind == "chexgcn", "label_adjacency is for a chexgcn head alone")
            _require(
                len(self.label_adjacency) == m
                and all(len(row) == m for row in self.label_adjacency)
                and all(0.0 <= v <= 1.0 for row in self.label_adjacency for v in row),
                f"label_adjacency must be {m}x{m} weights in [0, 1]",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from JSON data, refusing unknown keys so that typos do not pass silently."""
        try:
            return cls(
                **_fields(cls, data, nested=("detector", "head", "graph")),
            )
        except TypeError as exc:
            raise ConfigurationError(f"model config: {exc}") from exc

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


_NESTED = {"detector": DetectorConfig, "head": HeadConfig, "graph": GraphConfig}


def _fields(cls: type, data: dict[str, Any], nested: tuple[str, ...] = ()) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    _require(not unknown, f"{cls.__name__}: unknown keys {sorted(unknown)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested:
            out[key] = _NESTED[key](**_fields(_NESTED[key], value))
        elif isinstance(value, list):
            out[key] = _tuplify(value)
        else:
            out[key] = value
    return out


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def require_regions(config: ModelConfig) -> None:
    """Refuse, in one line, a model that has no regions (GlobalView) where regions are needed."""
    if config.head.kind not in LOCALISING_KINDS:
        raise ConfigurationError(
            f"{config.name}: a {config.head.kind} model classifies whole images and has no "
            "regions to report on; anaxreport evaluate and compare read it"
        )
