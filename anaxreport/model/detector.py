"""The region detector and the per-region feature extractor (paper §3.3).

torchvision's ``FasterRCNN`` is the engine (ResNet-FPN, RoIAlign, the two-FC 1024-d box head:
the same architecture as the authors' detectron2 model). :func:`extract_regions` reads one
1024-d box-head vector per anatomical region: the highest-scoring box of each class at or above
the confidence threshold, re-pooled through the box head; a region with no such box gets a zero
vector and ``found = False`` (the paper's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _setup_scales  # torchvision's own level scales

from .config import DetectorConfig
from .inference import best_box_per_region, cell_anchors
from .plan import ROI_SIZE

__all__ = ["RegionDetections", "build_detector", "extract_regions"]

#: Width of the box head's output (torchvision TwoMLPHead; detectron2 FastRCNNConvFCHead).
FEATURE_DIM = 1024


def _norm_layer(name: str) -> type[nn.Module] | object:
    if name == "frozen_batch":
        return misc_ops.FrozenBatchNorm2d
    if name == "group":
        return lambda channels: nn.GroupNorm(32, channels)
    return nn.BatchNorm2d


def build_backbone(config: DetectorConfig) -> BackboneWithFPN:
    """A randomly initialised ResNet with an FPN over its four stages (no hub download)."""
    body = getattr(resnet, config.backbone)(weights=None, norm_layer=_norm_layer(config.norm))
    if config.stride_in_1x1:  # detectron2's MSRA ResNets stride in the 1x1, not the 3x3
        for layer in (body.layer2, body.layer3, body.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    stage2 = body.inplanes // 8
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[stage2 * 2**i for i in range(4)],
        out_channels=config.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


class UnroundedAnchors(AnchorGenerator):
    """torchvision's anchors without its rounding to whole pixels, as detectron2's
    DefaultAnchorGenerator makes them (width size / √r, height size · √r, centred)."""

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 - torchvision's signature
    ) -> Tensor:
        return cell_anchors(scales, aspect_ratios, rounded=False).to(dtype=dtype, device=device)


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (each box from the FPN level its size picks) with
    detectron2's ROIAlignV2 on each level: half-pixel aligned boxes, adaptive sampling."""

    def __init__(self, featmap_names: list[str]) -> None:
        super().__init__(featmap_names, output_size=ROI_SIZE, sampling_ratio=0)

    def forward(  # type: ignore[override]
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat([
            torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)
        ])  # fmt: skip
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            members = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[members], self.output_size, scale, 0, aligned=True)
            result[members] = pooled.to(result.dtype)
        return result


def build_detector(config: DetectorConfig, num_regions: int) -> FasterRCNN:
    """Faster R-CNN with ``num_regions`` foreground classes, sized by ``config``.

    Inputs are expected already resized so that their longest side is ``config.image_size``;
    ``min_size = max_size = image_size`` makes torchvision's own resize the identity then.
    """
    generator = AnchorGenerator if config.round_anchors else UnroundedAnchors
    anchors = generator(sizes=config.anchor_sizes, aspect_ratios=(config.aspect_ratios,) * 5)
    return FasterRCNN(
        build_backbone(config),
        num_classes=num_regions + 1,
        min_size=config.image_size,
        max_size=config.image_size,
        image_mean=list(config.channel_means),
        image_std=list(config.channel_stds),
        rpn_anchor_generator=anchors,
        box_roi_pool=(
            AlignedMultiScaleRoIAlign(["0", "1", "2", "3"])
            if config.roi_align == "detectron2"
            else None  # torchvision's default: MultiScaleRoIAlign, 7 x 7, sampling ratio 2
        ),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_score_thresh=config.score_threshold,
        box_nms_thresh=config.nms_threshold,
        box_detections_per_img=100,
    )


@dataclass(frozen=True)
class RegionDetections:
    """Per-region detector output for a batch; tensors stay inside the model package.

    Shapes: ``boxes`` [B, k, 4] (x1, y1, x2, y2 in the coordinates of the images given, zero
    rows where not found), ``scores`` [B, k], ``found`` [B, k] bool, ``features`` [B, k, 1024].
    """

    boxes: Tensor
    scores: Tensor
    found: Tensor
    features: Tensor


def select_best_per_class(
    boxes: Tensor, labels: Tensor, scores: Tensor, num_regions: int, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The highest-scoring box of each class 1..k at or above ``threshold``.

    Returns boxes [k, 4], scores [k] (0 where none) and found [k]; duplicates of a class are
    dropped, as in the paper.
    """
    best_boxes = boxes.new_zeros((num_regions, 4))
    best_scores = scores.new_zeros((num_regions,))
    found = torch.zeros(num_regions, dtype=torch.bool, device=boxes.device)
    for index in range(num_regions):
        mask = (labels == index + 1) & (scores >= threshold)
        if mask.any():
            candidate_scores = scores[mask]
            top = int(torch.argmax(candidate_scores))
            best_boxes[index] = boxes[mask][top]
            best_scores[index] = candidate_scores[top]
            found[index] = True
    return best_boxes, best_scores, found


def best_per_class_direct(
    roi_heads: RoIHeads,
    features: dict[str, Tensor],
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    num_regions: int,
    threshold: float,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The best box of each class straight from torchvision's box predictor, per image
    (:func:`~.inference.best_box_per_region` says why that is the box torchvision's full
    post-processing would give)."""
    pooled = roi_heads.box_roi_pool(features, proposals, image_sizes)
    class_logits, box_regression = roi_heads.box_predictor(roi_heads.box_head(pooled))
    boxes_all = roi_heads.box_coder.decode(box_regression, proposals)
    scores_all = torch.softmax(class_logits, -1)
    counts = [len(p) for p in proposals]
    return [
        best_box_per_region(boxes, scores, size, num_regions, threshold)
        for boxes, scores, size in zip(
            boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True
        )
    ]


def extract_regions(
    detector: FasterRCNN,
    images: list[Tensor],
    num_regions: int,
    threshold: float,
    selection: str = "direct",
) -> RegionDetections:
    """Detect the regions of each image and read one box-head vector per region.

    ``images`` are [C, H, W] float tensors in [0, 1]. The detector must be in eval mode.
    ``selection`` "direct" takes each class's best box with :func:`best_per_class_direct`;
    "torchvision" runs torchvision's full post-processing first (the reference the
    equivalence test compares against).
    """
    if detector.training:
        raise RuntimeError("extract_regions needs the detector in eval mode")
    if selection not in ("direct", "torchvision"):
        raise ValueError(f"selection must be 'direct' or 'torchvision', got {selection!r}")
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    batch, _ = detector.transform(images)
    feature_maps = detector.backbone(batch.tensors)
    proposals, _ = detector.rpn(batch, feature_maps)
    if selection == "direct":
        selected = best_per_class_direct(
            detector.roi_heads, feature_maps, proposals, batch.image_sizes, num_regions, threshold
        )
    else:
        detections, _ = detector.roi_heads(feature_maps, proposals, batch.image_sizes)
        selected = [
            select_best_per_class(d["boxes"], d["labels"], d["scores"], num_regions, threshold)
            for d in detections
        ]
    pooled = detector.roi_heads.box_roi_pool(
        feature_maps, [boxes for boxes, _, _ in selected], batch.image_sizes
    )
    vectors = detector.roi_heads.box_head(pooled).reshape(len(images), num_regions, -1)
    found = torch.stack([f for _, _, f in selected])
    features = vectors * found.unsqueeze(-1)
    boxes = torch.stack(
        [
            resize_boxes(b, batch.image_sizes[i], original_sizes[i]) * found[i].unsqueeze(-1)
            for i, (b, _, _) in enumerate(selected)
        ]
    )
    scores = torch.stack([s for _, s, _ in selected])
    return RegionDetections(boxes=boxes, scores=scores, found=found, features=features)
