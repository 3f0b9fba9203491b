"""The inference form of a trained AnaXNet: the same function, less work, no torchvision import.

Training builds the detector from torchvision's parts (:mod:`.detector`). Inference runs the
same computation from the same state dict with this module's own small parts, for two reasons
that the benchmark (``anaxreport bench``) measures:

* **Start-up.** Importing torchvision imports torch's compiler stack (``torch._dynamo``,
  through ``torchvision.ops.roi_align``): 2–3 s of every CLI start on two cores, more than
  the whole model run. Here the one native kernel that has no torch equivalent, NMS, is
  loaded from torchvision's compiled library alone (:func:`torchvision_nms`).
* **Less work per image.** BatchNorm is folded into the convolutions (its statistics are
  constants at inference); anchors are cached per feature-map size; the best box of each
  region is taken straight from the box predictor instead of after per-class NMS and sorting
  (:func:`best_box_per_region` says why that is the same box); RoIAlign is one multithreaded
  ``embedding_bag`` over channels-last maps (:func:`roi_align`), where torchvision's CPU
  kernel runs on one thread.

On the CPU the reporter runs :class:`~.engine.OnnxModel` instead: these steps on ONNX Runtime
and NumPy, without importing torch at all. This module is the torch form: for a GPU, for
``--runtime torch``, and for the FLOP counter of the benchmark.

What it computes is torchvision's Faster R-CNN inference (GeneralizedRCNNTransform, ResNet +
FPN with LastLevelMaxPool, RPN, MultiScaleRoIAlign, TwoMLPHead, FastRCNNPredictor) followed by
:func:`~.detector.extract_regions`, step for step, with detectron2's conventions where the
config asks for them (:mod:`.detectron2`); ``tests/test_inference.py`` checks boxes,
scores and probabilities against that plain path on the samples.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .baselines import build_head, require_regions
from .config import DetectorConfig, ModelConfig
from .head import AnaXNetOutput
from .plan import (
    BN_EPS,
    BOX_CLIP,
    CANONICAL_LEVEL,
    CANONICAL_SCALE,
    MIN_BOX,
    PREFIX_FACTOR,
    ROI_LEVELS,
    ROI_SAMPLING,
    ROI_SIZE,
    ROI_WEIGHTS,
    RPN_MIN_SIZE,
    RPN_NMS,
    RPN_WEIGHTS,
    BackboneSpec,
    BlockSpec,
    BoxHeadSpec,
    ConvSpec,
    LinearSpec,
    RpnSpec,
    StateReader,
    backbone_spec,
    box_head_spec,
    input_scale,
    padded,
    rpn_spec,
)

if TYPE_CHECKING:
    from .anaxnet import AnaXNet

__all__ = [
    "InferenceModel",
    "PoolingTable",
    "best_box_per_region",
    "cell_anchors",
    "roi_align",
    "torchvision_nms",
]

GROUPS = 32  # the detector's GroupNorm groups (detector._norm_layer)


# --- native kernels ----------------------------------------------------------------------


@cache
def torchvision_nms() -> Callable[[Tensor, Tensor, float], Tensor]:
    """torchvision's compiled NMS, loaded without importing torchvision's Python package.

    The operator library registers ``torch.ops.torchvision.*`` by itself; the package's
    ``__init__`` would also import every model, dataset and ``torch._dynamo``. Falls back to a
    plain ``import torchvision`` where the library is not where the package keeps it.
    """
    if not _has_nms():
        spec = importlib.util.find_spec("torchvision")
        folders = spec.submodule_search_locations if spec is not None else None
        for folder in folders or ():
            for name in ("_C_stable", "_C"):
                for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                    library = Path(folder) / f"{name}{suffix}"
                    if library.is_file() and not _has_nms():
                        torch.ops.load_library(str(library))
        if not _has_nms():
            import torchvision.ops  # noqa: F401  (registers the operators)
    return torch.ops.torchvision.nms


def _has_nms() -> bool:
    return hasattr(torch.ops.torchvision, "nms")


# --- building blocks ---------------------------------------------------------------------


class Conv(nn.Module):
    """A convolution with fixed weights (and any BatchNorm folded in), optionally followed by
    GroupNorm. Weights are buffers: nothing here is trained."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        # channels-last weights make the convolutions run channels-last: oneDNN's own layout
        # on the CPU, 3-6 % faster for the whole model here in interleaved A/B runs
        weight = torch.from_numpy(spec.weight)
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if spec.bias is None else torch.from_numpy(spec.bias))
        self.stride, self.padding = spec.stride, spec.padding
        if spec.group_norm is not None:
            self.register_buffer("norm_weight", torch.from_numpy(spec.group_norm[0]))
            self.register_buffer("norm_bias", torch.from_numpy(spec.group_norm[1]))
        self.grouped = spec.group_norm is not None

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self.grouped:
            x = F.group_norm(x, GROUPS, self.norm_weight, self.norm_bias, BN_EPS)
        return x


class Linear(nn.Module):
    """A linear layer with fixed weights."""

    def __init__(self, spec: LinearSpec) -> None:
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(spec.weight))
        self.register_buffer("bias", torch.from_numpy(spec.bias))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


# --- stages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBatch:
    """Normalised images padded into one tensor, with each image's size before padding."""

    tensors: Tensor
    sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


class Transform(nn.Module):
    """torchvision's GeneralizedRCNNTransform at inference: normalise, resize so that the
    longest side is ``image_size`` (the identity for :func:`~.preprocess.to_model_input`'s
    output), pad to a multiple of 32."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.size = config.image_size
        self.register_buffer("mean", torch.tensor(config.channel_means)[:, None, None], False)
        self.register_buffer("std", torch.tensor(config.channel_stds)[:, None, None], False)

    def forward(self, images: Sequence[Tensor]) -> ImageBatch:
        prepared = [self._resize((image - self.mean) / self.std) for image in images]
        height = max(image.shape[-2] for image in prepared)
        width = max(image.shape[-1] for image in prepared)
        shape = (len(prepared), prepared[0].shape[0], *padded(height, width))
        batch = prepared[0].new_zeros(shape)
        for slot, image in zip(batch, prepared, strict=True):
            slot[:, : image.shape[-2], : image.shape[-1]].copy_(image)
        return ImageBatch(
            tensors=batch,
            sizes=[(int(i.shape[-2]), int(i.shape[-1])) for i in prepared],
            original_sizes=[(int(i.shape[-2]), int(i.shape[-1])) for i in images],
        )

    def _resize(self, image: Tensor) -> Tensor:
        scale = input_scale(image.shape[-2:], self.size)
        if scale == 1.0:
            return image
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear",
            recompute_scale_factor=True, align_corners=False,
        )[0]  # fmt: skip


class ResNetFPN(nn.Module):
    """torchvision's ResNet with an FPN over its four stages and a max-pooled fifth level
    (:func:`~.plan.backbone_spec`); returns the five maps, finest first."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.stem = Conv(spec.stem)
        self.stages = nn.ModuleList(
            nn.ModuleList(_Block(block) for block in blocks) for blocks in spec.stages
        )
        self.lateral = nn.ModuleList(Conv(conv) for conv in spec.lateral)
        self.output = nn.ModuleList(Conv(conv) for conv in spec.output)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.max_pool2d(self.stem(x).relu_(), kernel_size=3, stride=2, padding=1)
        stages = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
            stages.append(x)
        inner = self.lateral[-1](stages[-1])
        levels = [self.output[-1](inner)]
        for index in range(len(stages) - 2, -1, -1):
            lateral = self.lateral[index](stages[index])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            levels.insert(0, self.output[index](inner))
        levels.append(F.max_pool2d(levels[-1], kernel_size=1, stride=2, padding=0))
        return levels


class _Block(nn.Module):
    """A ResNet basic block or bottleneck (:class:`~.plan.BlockSpec`)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.convs = nn.ModuleList(Conv(conv) for conv in spec.convs)
        self.downsample = None if spec.downsample is None else Conv(spec.downsample)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for conv in self.convs[:-1]:
            out = conv(out).relu_()
        out = self.convs[-1](out)
        identity = x if self.downsample is None else self.downsample(x)
        return out.add_(identity).relu_()


def decode_boxes(deltas: Tensor, boxes: Tensor, weights: tuple[float, ...]) -> Tensor:
    """torchvision's BoxCoder.decode_single: deltas [N, 4c] relative to boxes [N, 4] →
    boxes [N, c, 4], in the same operations (so the same float rounding)."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=BOX_CLIP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=BOX_CLIP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = 0.5 * (torch.exp(dw) * widths[:, None])
    half_h = 0.5 * (torch.exp(dh) * heights[:, None])
    return torch.stack(
        (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h),
        dim=2,
    )


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp x to [0, width] and y to [0, height] (torchvision clip_boxes_to_image)."""
    height, width = size
    clipped = boxes.clone()
    clipped[..., 0::2] = boxes[..., 0::2].clamp(min=0, max=width)
    clipped[..., 1::2] = boxes[..., 1::2].clamp(min=0, max=height)
    return clipped


class RegionProposals(nn.Module):
    """The RPN at inference: head on every level, anchors, top-n per level, clip, drop tiny
    boxes, NMS per level, keep the best ``post_nms_top_n``."""

    def __init__(self, spec: RpnSpec, config: DetectorConfig) -> None:
        super().__init__()
        self.conv = Conv(spec.conv)
        # the two 1×1 convolutions as one matrix product over the channels-last map: scores
        # for the A anchors of a cell, then their A × 4 deltas, in torchvision's (h, w, a) order
        self.predict = Linear(spec.predict)
        self.anchors_per_cell = spec.anchors_per_cell
        self.pre_nms_top_n = config.rpn_pre_nms_top_n_test
        self.post_nms_top_n = config.rpn_post_nms_top_n_test
        self.cell_anchors = [
            cell_anchors(sizes, config.aspect_ratios, config.round_anchors)
            for sizes in config.anchor_sizes
        ]
        self._anchors: dict[tuple[object, ...], Tensor] = {}

    def forward(self, batch: ImageBatch, levels: list[Tensor]) -> list[Tensor]:
        a, scores, deltas, counts = self.anchors_per_cell, [], [], []
        for level in levels:
            hidden = self.conv(level).relu_().permute(0, 2, 3, 1)  # [N, H, W, C]
            out = self.predict(hidden.reshape(-1, hidden.shape[-1])).view(len(level), -1, 5 * a)
            scores.append(out[..., :a].reshape(len(level), -1))
            deltas.append(out[..., a:].reshape(len(level), -1, 4))
            counts.append(scores[-1].shape[1])
        anchors = self._anchors_for(batch.tensors, levels)
        scores_all, deltas_all = torch.cat(scores, dim=1), torch.cat(deltas, dim=1)
        return [
            self._select(anchors, scores_all[i], deltas_all[i], counts, batch.sizes[i])
            for i in range(len(batch.sizes))
        ]

    def _anchors_for(self, images: Tensor, levels: list[Tensor]) -> Tensor:
        """All anchors of a padded batch size, cached (they depend on nothing else)."""
        key = (tuple(images.shape[-2:]), images.device, *(tuple(x.shape[-2:]) for x in levels))
        if key not in self._anchors:
            grids = []
            for level, cell in zip(levels, self.cell_anchors, strict=True):
                rows, columns = level.shape[-2:]
                stride_y, stride_x = images.shape[-2] // rows, images.shape[-1] // columns
                shift_y, shift_x = torch.meshgrid(
                    torch.arange(rows, dtype=torch.int32) * stride_y,
                    torch.arange(columns, dtype=torch.int32) * stride_x,
                    indexing="ij",
                )
                shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], -1).reshape(-1, 1, 4)
                grids.append((shifts.to(torch.int64) + cell.view(1, -1, 4)).reshape(-1, 4))
            self._anchors[key] = torch.cat(grids).to(images.device)
        return self._anchors[key]

    def _select(
        self,
        anchors: Tensor,
        logits: Tensor,
        deltas: Tensor,
        counts: list[int],
        size: tuple[int, int],
    ) -> Tensor:
        """torchvision's filter_proposals; only the top-n anchors of each level are decoded
        (decoding is per anchor, so the same boxes as decoding all, at a tenth of the work)."""
        tops, level_ids, offset = [], [], 0
        for level, count in enumerate(counts):
            top = logits[offset : offset + count].topk(min(self.pre_nms_top_n, count)).indices
            tops.append(top + offset)
            level_ids.append(torch.full_like(top, level))
            offset += count
        top = torch.cat(tops)
        boxes = clip_boxes(decode_boxes(deltas[top], anchors[top], RPN_WEIGHTS)[:, 0], size)
        scores, level = logits[top].sigmoid(), torch.cat(level_ids)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        # torchvision also keeps scores >= its rpn_score_thresh, 0.0: every sigmoid does
        keep = torch.where((widths >= RPN_MIN_SIZE) & (heights >= RPN_MIN_SIZE))[0]
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        return boxes[self._best_survivors(boxes, scores, level, len(counts))]

    def _best_survivors(self, boxes: Tensor, scores: Tensor, level: Tensor, count: int) -> Tensor:
        """The ``post_nms_top_n`` best boxes that survive NMS per level, best first.

        Greedy NMS decides a box by the better boxes of its level alone, so over the best
        boxes of all levels it keeps exactly the survivors that NMS over all boxes keeps among
        them; once that prefix has ``post_nms_top_n`` survivors, the boxes after it (worse than
        every one of those) cannot be among the best. NMS is quadratic, so a prefix of a third
        of the boxes costs a tenth of the work. It starts at three times the boxes wanted
        (about 40 % of the best boxes survive on the shipped model) and doubles until it has
        enough survivors.
        """
        wanted, order = self.post_nms_top_n, scores.argsort(descending=True)
        prefix = order[: PREFIX_FACTOR * wanted]
        while True:
            survivors = self._nms_per_level(boxes[prefix], scores[prefix], level[prefix], count)
            if len(survivors) >= wanted or len(prefix) == len(order):
                return prefix[survivors[:wanted]]
            prefix = order[: 2 * len(prefix)]

    def _nms_per_level(self, boxes: Tensor, scores: Tensor, level: Tensor, count: int) -> Tensor:
        """torchvision's batched_nms (its per-class form, which it takes for this many boxes):
        levels never suppress each other; the survivors sorted by score."""
        kept = torch.zeros_like(scores, dtype=torch.bool)
        nms = torchvision_nms()
        for index in range(count):
            members = torch.where(level == index)[0]
            if len(members):
                kept[members[nms(boxes[members], scores[members], RPN_NMS)]] = True
        survivors = torch.where(kept)[0]
        return survivors[scores[survivors].sort(descending=True)[1]]


def cell_anchors(sizes: Sequence[int], ratios: Sequence[float], rounded: bool = True) -> Tensor:
    """Zero-centred anchors of one level (aspect ratio = height / width: width size / √r,
    height size · √r), rounded to whole pixels as torchvision's AnchorGenerator makes them, or
    not, as detectron2's DefaultAnchorGenerator."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    h_ratios = torch.sqrt(torch.as_tensor(ratios, dtype=torch.float32))
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    return anchors.round() if rounded else anchors


def best_box_per_region(
    boxes: Tensor, scores: Tensor, size: tuple[int, int], num_regions: int, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Each region's best box of one image, straight from the box predictor.

    ``boxes`` [N, 1 + k, 4] decoded per class and ``scores`` [N, 1 + k] (softmax, background
    first) over N proposals. What torchvision's ``postprocess_detections`` followed by
    :func:`~.detector.select_best_per_class` gives, without the per-class NMS and sorting they
    do for boxes that are then dropped: NMS never removes the highest-scoring box of a class,
    so the best box is the arg-max, over the proposals, of the class's score among boxes that
    pass the same filters (score above ``threshold``; width and height at least 0.01 px after
    clipping to the image). The one difference: torchvision keeps only the 100 best detections
    of an image over all classes, which can drop a weak class's only box; here it is kept.
    Returns boxes [k, 4], scores [k] and found [k], zero where not found.
    """
    k = num_regions
    boxes = clip_boxes(boxes, size)[:, 1 : k + 1]
    scores = scores[:, 1 : k + 1]
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    valid = (scores > threshold) & (widths >= MIN_BOX) & (heights >= MIN_BOX)
    best_scores, best = torch.where(valid, scores, torch.full_like(scores, -1.0)).max(dim=0)
    found = best_scores > threshold
    best_boxes = boxes[best, torch.arange(k, device=boxes.device)] * found.unsqueeze(-1)
    return best_boxes, best_scores.clamp(min=0.0) * found, found


class RegionFeatures(nn.Module):
    """Score the proposals, take each region's best box, and re-pool it through the box head
    for its 1024-d feature (:func:`~.detector.extract_regions`)."""

    def __init__(
        self,
        spec: BoxHeadSpec,
        num_regions: int,
        threshold: float,
        roi_align: str = "torchvision",
    ) -> None:
        super().__init__()
        self.fc6, self.fc7 = Linear(spec.fc6), Linear(spec.fc7)
        self.cls_score, self.bbox_pred = Linear(spec.cls_score), Linear(spec.bbox_pred)
        self.num_regions, self.threshold, self.roi_align = num_regions, threshold, roi_align

    def forward(
        self, batch: ImageBatch, levels: list[Tensor], proposals: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Boxes [B, k, 4] on the transform's grid, scores [B, k], found [B, k], features
        [B, k, 1024]; zero where a region is not found."""
        table = PoolingTable(levels[:ROI_LEVELS], batch.sizes, self.roi_align)
        pooled = table.pool(proposals)
        hidden = self.box_head(pooled)
        class_logits, regression = self.cls_score(hidden), self.bbox_pred(hidden)
        all_boxes = decode_boxes(regression, torch.cat(proposals), ROI_WEIGHTS)
        all_scores = torch.softmax(class_logits, -1)
        counts = [len(p) for p in proposals]
        picked = [
            best_box_per_region(boxes, scores, size, self.num_regions, self.threshold)
            for boxes, scores, size in zip(
                all_boxes.split(counts), all_scores.split(counts), batch.sizes, strict=True
            )
        ]
        boxes = torch.stack([b for b, _, _ in picked])
        scores = torch.stack([s for _, s, _ in picked])
        found = torch.stack([f for _, _, f in picked])
        pooled = table.pool(list(boxes))
        vectors = self.box_head(pooled).reshape(len(picked), self.num_regions, -1)
        features = vectors * found.unsqueeze(-1)
        return boxes, scores, found, features

    def box_head(self, pooled: Tensor) -> Tensor:
        """Pooled boxes [n, 7, 7, C] → their 1024-d vectors (TwoMLPHead)."""
        return self.fc7(self.fc6(pooled.flatten(1)).relu_()).relu_()


def roi_align(
    levels: list[Tensor],
    boxes: list[Tensor],
    sizes: list[tuple[int, int]],
    roi_align: str = "torchvision",
) -> Tensor:
    """torchvision's MultiScaleRoIAlign (7×7, sampling ratio 2, ``aligned=False``), or with
    ``roi_align="detectron2"`` detectron2's ROIAlignV2 (aligned, adaptive sampling), each box
    read from the FPN level that matches its size; returns [N, 7, 7, C] (channels last).
    :class:`PoolingTable` says how."""
    return PoolingTable(levels, sizes, roi_align).pool(boxes)


class PoolingTable:
    """The FPN levels of a batch as one table of pixel rows [Σ B·H·W, C], to RoI-align boxes
    from, once for the proposals and again for the regions' best boxes.

    Every value RoIAlign outputs is a weighted sum of 16 feature vectors (2 × 2 samples per
    bin, 4 bilinear corners each), so pooling is one ``embedding_bag`` over the table: a
    multithreaded, vectorised gather-and-sum, where torchvision's CPU kernel walks the
    channels of a planar map on one thread (5× faster here over 300 proposals). With
    detectron2's ROIAlignV2 a box takes ceil(bin) samples a bin along each axis; the bags are
    then as large as the batch's largest grid, the extra samples weighing nothing.
    """

    def __init__(
        self, levels: list[Tensor], sizes: list[tuple[int, int]], roi_align: str = "torchvision"
    ) -> None:
        # torchvision: legacy alignment, 2 x 2 samples a bin; detectron2's ROIAlignV2: boxes
        # moved half a pixel, ceil(bin size) samples a bin along each axis
        self.aligned = roi_align == "detectron2"
        self.channels = levels[0].shape[1]
        self.device = levels[0].device
        self.table = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, self.channels) for x in levels])
        height = max(s[0] for s in sizes)  # torchvision infers each level's scale from rows
        scales = [2.0 ** round(math.log2(level.shape[-2] / height)) for level in levels]
        self.k_min, self.k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        starts = itertools.accumulate([0] + [level[:, 0].numel() for level in levels[:-1]])
        self.scales = torch.tensor(scales, dtype=torch.float32, device=self.device)
        self.rows = torch.tensor([x.shape[-2] for x in levels], device=self.device)
        self.columns = torch.tensor([x.shape[-1] for x in levels], device=self.device)
        self.starts = torch.tensor(list(starts), device=self.device)

    def pool(self, boxes: list[Tensor]) -> Tensor:
        """Boxes [n_i, 4] per image → pooled [Σ n_i, 7, 7, C]."""
        rois = torch.cat(boxes)
        n = len(rois)
        if n == 0:
            return rois.new_zeros((0, ROI_SIZE, ROI_SIZE, self.channels))
        areas = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
        target = torch.floor(
            CANONICAL_LEVEL + torch.log2(torch.sqrt(areas) / CANONICAL_SCALE) + 1e-6
        )
        level = target.clamp(min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min
        image = torch.cat(
            [torch.full((len(b),), i, device=self.device) for i, b in enumerate(boxes)]
        )
        scale, rows, columns = self.scales[level], self.rows[level], self.columns[level]
        first = self.starts[level] + image * rows * columns
        y, y_weight, y_grid = _taps(rois[:, 1] * scale, rois[:, 3] * scale, rows, self.aligned)
        x, x_weight, x_grid = _taps(rois[:, 0] * scale, rois[:, 2] * scale, columns, self.aligned)
        y_taps, x_taps = y.shape[-1], x.shape[-1]
        y = (first[:, None, None] + y * columns[:, None, None]).to(torch.int32)
        index = y.view(n, ROI_SIZE, 1, y_taps, 1) + x.to(torch.int32).view(
            n, 1, ROI_SIZE, 1, x_taps
        )
        count = (y_grid * x_grid).clamp(min=1).to(torch.float32)  # samples a bin, per box
        y_weight = (y_weight / count[:, None, None]).view(n, ROI_SIZE, 1, y_taps, 1)
        weight = y_weight * x_weight.view(n, 1, ROI_SIZE, 1, x_taps)
        bags = n * ROI_SIZE * ROI_SIZE
        pooled = F.embedding_bag(
            index.view(bags, -1), self.table, per_sample_weights=weight.view(bags, -1), mode="sum"
        )
        return pooled.view(n, ROI_SIZE, ROI_SIZE, self.channels)


def _taps(
    start: Tensor, end: Tensor, size: Tensor, aligned: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Along one axis, per box: the pixel indices [N, 7, 2 G] that each bin reads (G samples ×
    low/high corner), their bilinear weights and each box's samples a bin [N], in the float
    operations of torchvision's ``roi_align`` CPU kernel (a sample more than a pixel outside
    the map weighs nothing). Legacy alignment takes 2 samples a bin over at least a pixel;
    ``aligned`` (detectron2's ROIAlignV2) moves the box half a pixel and takes ceil(bin) samples,
    padded to the batch's most with samples of weight 0."""
    if aligned:
        start, end = start - 0.5, end - 0.5
        length = end - start
        grid = torch.ceil(length / ROI_SIZE).to(torch.int64)
        samples_per_bin = max(int(grid.max()), 1) if len(grid) else 1
    else:
        length = (end - start).clamp(min=1.0)
        grid = torch.full_like(start, ROI_SAMPLING, dtype=torch.int64)
        samples_per_bin = ROI_SAMPLING
    step = length / ROI_SIZE
    bins = torch.arange(ROI_SIZE, dtype=torch.float32, device=start.device)
    sample = torch.arange(samples_per_bin, device=start.device)
    at = (start[:, None] + bins * step[:, None])[:, :, None] + (
        (sample.to(torch.float32) + 0.5) * step[:, None, None] / grid.clamp(min=1)[:, None, None]
    )
    limit = size[:, None, None]
    inside = (at >= -1.0) & (at <= limit.to(torch.float32))
    if aligned:  # the padding samples of boxes with fewer weigh nothing
        inside &= sample < grid[:, None, None]
    at = at.clamp(min=0.0)
    low = at.to(torch.int64)
    edge = low >= limit - 1
    low = torch.where(edge, limit - 1, low)
    high = torch.where(edge, low, low + 1)
    fraction = torch.where(edge, 0.0, at - low)
    weights = torch.stack([1.0 - fraction, fraction], -1) * inside.unsqueeze(-1)
    return (
        torch.stack([low, high], -1).view(len(start), ROI_SIZE, -1),
        weights.view(len(start), ROI_SIZE, -1),
        grid,
    )


# --- the model -----------------------------------------------------------------------------


class InferenceModel(nn.Module):
    """AnaXNet for inference: ``model(images)`` as :class:`~.anaxnet.AnaXNet` gives it.

    Composed of stages that a benchmark can hook: ``transform`` → ``backbone`` → ``rpn`` →
    ``regions`` → ``head``. Build it from a config and a checkpoint's tensors, or with
    :meth:`from_model` (a trained :class:`~.anaxnet.AnaXNet`, which is left unchanged).

    Everything runs in torch: the model to train beside, count FLOPs in and move to a GPU.
    :class:`~.engine.OnnxModel` computes the same function on ONNX Runtime, without torch.
    """

    runtime = "torch"

    def __init__(self, config: ModelConfig, state: Mapping[str, Tensor]) -> None:
        super().__init__()
        require_regions(config)
        self.config = config
        torchvision_nms()  # fail here, not on the first image, if it cannot load
        reader = StateReader({name: t.detach().cpu().numpy() for name, t in state.items()},
                             config.detector.norm)  # fmt: skip
        detector = config.detector
        self.transform = Transform(detector)
        self.backbone = ResNetFPN(backbone_spec(reader, detector.backbone, detector.stride_in_1x1))
        self.rpn = RegionProposals(rpn_spec(reader), detector)
        self.regions = RegionFeatures(
            box_head_spec(reader), len(config.regions), detector.score_threshold,
            detector.roi_align,
        )  # fmt: skip
        self.head = build_head(config)
        self.head.load_state_dict(
            {name: torch.from_numpy(reader[f"head.{name}"]) for name in self.head.state_dict()},
            strict=True,
        )
        reader.check_all_read()
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_model(cls, model: AnaXNet) -> InferenceModel:
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        return cls(model.config, state)

    def forward(self, images: list[Tensor], explain: bool = False) -> AnaXNetOutput:
        """The model's output; with ``explain``, also each region's share of every region's
        logits (the head's ``contributions``), which the explanation overlays draw."""
        batch = self.transform(images)
        levels = self.backbone(batch.tensors)
        proposals = self.rpn(batch, levels)
        boxes, scores, found, features = self.regions(batch, levels, proposals)
        out = self.head(features)
        shares = self.head.contributions(features, out.attention) if explain else None
        boxes = torch.stack([
            _rescale(b, size, original)
            for b, size, original in zip(boxes, batch.sizes, batch.original_sizes, strict=True)
        ])  # fmt: skip
        return AnaXNetOutput(
            boxes=boxes,
            scores=scores,
            found=found,
            logits=out.logits,
            attention=out.attention,
            contributions=shares,
        )


def _rescale(boxes: Tensor, size: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """Boxes from the transform's grid back to the images given (torchvision resize_boxes)."""
    if size == original:
        return boxes
    ratio_h = torch.tensor(original[0], dtype=torch.float32) / torch.tensor(
        size[0], dtype=torch.float32
    )
    ratio_w = torch.tensor(original[1], dtype=torch.float32) / torch.tensor(
        size[1], dtype=torch.float32
    )
    return boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes)
