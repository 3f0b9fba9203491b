"""A checkpoint's weights as the layers inference runs: plain arrays, read by name, no torch.

Both inference engines build from this one reading: the torch model (:mod:`.inference`) wraps
the arrays as tensors, the ONNX Runtime engine (:mod:`.engine`) writes them into its graphs.
So the state-dict names, the ResNet layout and the BatchNorm folding are said once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import WeightsError

__all__ = [
    "BackboneSpec",
    "BlockSpec",
    "BoxHeadSpec",
    "ConvSpec",
    "LinearSpec",
    "RpnSpec",
    "StateReader",
    "backbone_spec",
    "batches_by_size",
    "box_head_spec",
    "padded_size",
    "rpn_spec",
]

BN_EPS = 1e-5  # BatchNorm2d, FrozenBatchNorm2d and GroupNorm defaults; not in a state dict
SIZE_DIVISIBLE = 32
#: Blocks per stage of each backbone the config allows (torchvision's resnet builders).
BLOCKS = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}
BOTTLENECK = ("resnet50", "resnet101")
# torchvision's Faster R-CNN at inference, as both engines compute it
ROI_SIZE = 7  # the box head's pooled grid (torchvision's MultiScaleRoIAlign output_size)
ROI_SAMPLING = 2  # samples a bin along each axis (its sampling_ratio)
ROI_LEVELS = 4  # the RoI pooler reads FPN levels '0'..'3', not 'pool'
CANONICAL_SCALE, CANONICAL_LEVEL = 224, 4  # FPN paper eq. 1, as torchvision's LevelMapper
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # torchvision's box coder weights: RPN, then RoI heads
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BOX_CLIP = math.log(1000.0 / 16)
RPN_NMS = 0.7  # torchvision FasterRCNN defaults the config does not change
RPN_MIN_SIZE = 1e-3
PREFIX_FACTOR = 3  # the first NMS prefix, in boxes wanted (RegionProposals._best_survivors)
MIN_BOX = 0.01  # torchvision's postprocess_detections drops boxes thinner than this


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """A convolution with fixed weights [out, in, kh, kw] (BatchNorm folded in), optionally
    followed by GroupNorm (its weight and bias)."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: int = 1
    padding: int = 0
    group_norm: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True, eq=False)
class LinearSpec:
    """A linear layer: weight [out, in], bias [out]."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True, eq=False)
class BlockSpec:
    """A ResNet basic block (two 3×3) or bottleneck (1×1, 3×3, 1×1), with its shortcut's
    convolution where it has one."""

    convs: tuple[ConvSpec, ...]
    downsample: ConvSpec | None


@dataclass(frozen=True, eq=False)
class BackboneSpec:
    """torchvision's ResNet with an FPN over its four stages (and a max-pooled fifth level)."""

    stem: ConvSpec
    stages: tuple[tuple[BlockSpec, ...], ...]
    lateral: tuple[ConvSpec, ...]
    output: tuple[ConvSpec, ...]


@dataclass(frozen=True, eq=False)
class RpnSpec:
    """The RPN head: its 3×3 convolution, shared by the levels, then its two 1×1 convolutions
    as one matrix over the channels: A objectness logits, then A × 4 deltas, per cell."""

    conv: ConvSpec
    predict: LinearSpec
    anchors_per_cell: int


@dataclass(frozen=True, eq=False)
class BoxHeadSpec:
    """TwoMLPHead and FastRCNNPredictor. ``fc6`` reads a pooled box channels-last, (7, 7, C),
    as both engines pool it."""

    fc6: LinearSpec
    fc7: LinearSpec
    cls_score: LinearSpec
    bbox_pred: LinearSpec


class StateReader:
    """A state dict of float32 arrays read by name, with the detector's normalisation applied
    to convolutions.

    Strict like ``load_state_dict(strict=True)``: a missing tensor, or one left unread at the
    end (:meth:`check_all_read`), means the weights do not fit the config.
    """

    def __init__(self, state: Mapping[str, np.ndarray], norm: str) -> None:
        self.state, self.norm = state, norm
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise WeightsError(f"the weights have no tensor {key!r} that the config needs")
        self.read.add(key)
        return self.state[key]

    def conv(self, name: str, stride: int = 1, padding: int = 0) -> ConvSpec:
        """A convolution with bias (FPN, RPN)."""
        return ConvSpec(self[f"{name}.weight"], self[f"{name}.bias"], stride, padding)

    def conv_norm(self, conv: str, norm: str, stride: int = 1, padding: int = 0) -> ConvSpec:
        """A bias-free ResNet convolution and the norm after it, BatchNorm folded in."""
        weight, scale, shift = self[f"{conv}.weight"], self[f"{norm}.weight"], self[f"{norm}.bias"]
        if self.norm == "group":
            return ConvSpec(weight, None, stride, padding, (scale, shift))
        mean, var = self[f"{norm}.running_mean"], self[f"{norm}.running_var"]
        self.read.add(f"{norm}.num_batches_tracked")  # training bookkeeping (BatchNorm2d only)
        # as torch.nn.utils.fusion.fuse_conv_bn_weights, in float32
        rsqrt = np.float32(1.0) / np.sqrt(var + np.float32(BN_EPS))
        folded = np.ascontiguousarray(weight * (scale * rsqrt).reshape(-1, 1, 1, 1))
        bias = (-mean) * rsqrt * scale + shift
        return ConvSpec(folded, bias, stride, padding)

    def linear(self, name: str) -> LinearSpec:
        return LinearSpec(self[f"{name}.weight"], self[f"{name}.bias"])

    def check_all_read(self) -> None:
        unread = sorted(set(self.state) - self.read)
        if unread:
            raise WeightsError(
                f"the weights have {len(unread)} tensors that the config does not use, "
                f"e.g. {unread[0]!r}"
            )


def backbone_spec(reader: StateReader, backbone: str, stride_in_1x1: bool = False) -> BackboneSpec:
    """The ResNet-FPN of a detector's state dict (torchvision's ResNet v1.5: a bottleneck
    strides on its 3×3; on its first 1×1 with ``stride_in_1x1``, as detectron2's MSRA ResNets)."""
    body, fpn = "detector.backbone.body.", "detector.backbone.fpn."
    bottleneck = backbone in BOTTLENECK
    stages = []
    for stage, count in enumerate(BLOCKS[backbone], start=1):
        stride = 1 if stage == 1 else 2
        first = _block(reader, f"{body}layer{stage}.0.", stride, bottleneck,
                       downsample=stage > 1 or bottleneck, stride_in_1x1=stride_in_1x1)  # fmt: skip
        rest = (
            _block(reader, f"{body}layer{stage}.{i}.", 1, bottleneck, downsample=False)
            for i in range(1, count)
        )
        stages.append((first, *rest))
    return BackboneSpec(
        stem=reader.conv_norm(f"{body}conv1", f"{body}bn1", stride=2, padding=3),
        stages=tuple(stages),
        lateral=tuple(reader.conv(f"{fpn}inner_blocks.{i}.0") for i in range(4)),
        output=tuple(reader.conv(f"{fpn}layer_blocks.{i}.0", padding=1) for i in range(4)),
    )


def rpn_spec(reader: StateReader) -> RpnSpec:
    head = "detector.rpn.head."
    objectness, deltas = reader.conv(f"{head}cls_logits"), reader.conv(f"{head}bbox_pred")
    assert objectness.bias is not None and deltas.bias is not None
    weight = np.concatenate([objectness.weight, deltas.weight])
    return RpnSpec(
        conv=reader.conv(f"{head}conv.0.0", padding=1),
        predict=LinearSpec(
            weight.reshape(len(weight), -1), np.concatenate([objectness.bias, deltas.bias])
        ),
        anchors_per_cell=len(objectness.weight),
    )


def box_head_spec(reader: StateReader) -> BoxHeadSpec:
    heads = "detector.roi_heads."
    fc6 = reader.linear(f"{heads}box_head.fc6")
    channels = fc6.weight.shape[1] // (ROI_SIZE * ROI_SIZE)
    columns = fc6.weight.reshape(-1, channels, ROI_SIZE, ROI_SIZE).transpose(0, 2, 3, 1)
    return BoxHeadSpec(
        fc6=LinearSpec(np.ascontiguousarray(columns.reshape(len(columns), -1)), fc6.bias),
        fc7=reader.linear(f"{heads}box_head.fc7"),
        cls_score=reader.linear(f"{heads}box_predictor.cls_score"),
        bbox_pred=reader.linear(f"{heads}box_predictor.bbox_pred"),
    )


def _block(
    reader: StateReader,
    prefix: str,
    stride: int,
    bottleneck: bool,
    downsample: bool,
    stride_in_1x1: bool = False,
) -> BlockSpec:
    if bottleneck:
        first, middle = (stride, 1) if stride_in_1x1 else (1, stride)
        convs = (
            reader.conv_norm(f"{prefix}conv1", f"{prefix}bn1", first),
            reader.conv_norm(f"{prefix}conv2", f"{prefix}bn2", middle, padding=1),
            reader.conv_norm(f"{prefix}conv3", f"{prefix}bn3"),
        )
    else:
        convs = (
            reader.conv_norm(f"{prefix}conv1", f"{prefix}bn1", stride, padding=1),
            reader.conv_norm(f"{prefix}conv2", f"{prefix}bn2", padding=1),
        )
    shortcut = (
        reader.conv_norm(f"{prefix}downsample.0", f"{prefix}downsample.1", stride)
        if downsample
        else None
    )
    return BlockSpec(convs, shortcut)


# --- input sizes ---------------------------------------------------------------------------


def padded_size(size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """The size an image of ``size`` (height, width) is padded to when it is alone (torchvision's
    GeneralizedRCNNTransform: longest side ``image_size``, then a multiple of 32); a batch pads
    to its largest."""
    scale = input_scale(size, image_size)
    return padded(*(math.floor(side * scale) for side in size))


def input_scale(size: Sequence[int], image_size: int) -> float:
    short, long = sorted(size)
    return min(image_size / short, image_size / long)


def padded(height: int, width: int) -> tuple[int, int]:
    return (
        math.ceil(height / SIZE_DIVISIBLE) * SIZE_DIVISIBLE,
        math.ceil(width / SIZE_DIVISIBLE) * SIZE_DIVISIBLE,
    )


def batches_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices into ``sizes`` (padded sizes) in batches of at most ``batch_size`` of one size,
    in order of size and, within one, of index: what may share a forward pass."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    batches = []
    for _, group in itertools.groupby(order, key=lambda i: sizes[i]):
        members = list(group)
        batches += [members[k : k + batch_size] for k in range(0, len(members), batch_size)]
    return batches
