"""AnaXNet inference on ONNX Runtime and NumPy: the CPU engine, which never imports torch.

Why: importing torch takes 2-4 s of CPU on two cores, more than everything else a CLI start
does, model run included (``anaxreport bench``, its cold-start line). This engine computes what
:class:`~.inference.InferenceModel` computes, step for step, from the same arrays (:mod:`.plan`):

* **ONNX Runtime** runs the arithmetic (:mod:`.runtime`): the ResNet + FPN, the RPN head's
  convolutions, the box head and its predictor (weights packed once), NMS, and the
  classification head (:mod:`.engine_heads`).
* **NumPy** runs the glue between them: anchors, the RPN's top-n and box decoding, RoIAlign,
  each region's best box, and the explanation's split of the logits.
* **RoIAlign** is a sparse matrix product: every pooled value is a weighted sum of 16 feature
  vectors (2 × 2 samples, 4 bilinear corners), so the weights of all bins over the rows of the
  channels-last levels form a sparse matrix, multiplied by SciPy, the proposals in two halves
  on two threads. ONNX Runtime's ``RoiAlign`` walks planar maps one channel at a time: 38.6 ms
  over 300 proposals here, against 6-8 ms.

``tests/test_inference.py`` holds it, as the torch model, to the plain trained model's boxes,
scores and probabilities on the samples and on other backbones and a detectron2-like config;
``tests/test_engine.py`` holds its own parts to the torch model's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, require_regions
from .engine_heads import EngineHead, engine_head
from .plan import (
    BOX_CLIP,
    CANONICAL_LEVEL,
    CANONICAL_SCALE,
    MIN_BOX,
    PREFIX_FACTOR,
    ROI_SAMPLING,
    ROI_SIZE,
    ROI_WEIGHTS,
    RPN_MIN_SIZE,
    RPN_NMS,
    RPN_WEIGHTS,
    StateReader,
    backbone_spec,
    box_head_spec,
    input_scale,
    padded,
    rpn_spec,
)
from .preprocess import resample
from .runtime import Session, box_head_graph, default_threads, features_graph, nms_graph

__all__ = ["ModelOutput", "OnnxModel"]

#: the stages a benchmark's clock is told of, in order (:attr:`OnnxModel.clock`)
STAGES = ("start", "backbone", "rpn", "regions", "head")
#: boxes from which RoIAlign pools in two halves on two threads (its NumPy and SciPy loops
#: release the GIL for most of their time: 4.2 → 3.5 ms for 300 proposals on two cores)
SPLIT_POOLING = 64


@dataclass(frozen=True)
class ModelOutput:
    """One batch's output, as :class:`~.head.AnaXNetOutput` in arrays: boxes [B, k, 4] in the
    coordinates of the images given, scores [B, k], found [B, k], logits [B, k, M], attention
    [B, k, k] or None, contributions [B, k, k, M] when asked for."""

    boxes: np.ndarray
    scores: np.ndarray
    found: np.ndarray
    logits: np.ndarray
    attention: np.ndarray | None
    contributions: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        return _sigmoid(self.logits)


class OnnxModel:
    """AnaXNet for inference on the CPU without torch: ``model(images)`` as
    :class:`~.inference.InferenceModel` gives it, in NumPy arrays.

    ``images`` are [h, w] grey or [3, h, w] float32 arrays in [0, 1]
    (:func:`~.preprocess.model_input`). ``clock``, when set, is called with each name of
    :data:`STAGES` as the forward pass reaches it (the benchmark's stage times).
    """

    runtime = "onnxruntime"

    def __init__(
        self, config: ModelConfig, state: Mapping[str, np.ndarray], threads: int | None = None
    ) -> None:
        require_regions(config)
        self.config = config
        detector = config.detector
        reader = StateReader(state, detector.norm)
        self._features = Session(
            features_graph(
                backbone_spec(reader, detector.backbone, detector.stride_in_1x1),
                rpn := rpn_spec(reader),
            ),
            threads,
        )
        self._box_head = Session(box_head_graph(box_head_spec(reader)), threads)
        self._nms = Session(nms_graph(RPN_NMS), threads)
        self.head: EngineHead = engine_head(config, reader)
        self._head = Session(self.head.graph(), threads)
        reader.check_all_read()
        self.anchors_per_cell = rpn.anchors_per_cell
        self.cell_anchors = [
            cell_anchors(sizes, detector.aspect_ratios, detector.round_anchors)
            for sizes in detector.anchor_sizes
        ]
        self._anchors: dict[tuple[object, ...], np.ndarray] = {}
        self.mean = np.asarray(detector.channel_means, dtype=np.float32)[:, None, None]
        self.std = np.asarray(detector.channel_stds, dtype=np.float32)[:, None, None]
        self.clock: Callable[[str], None] | None = None
        self._helper = ThreadPoolExecutor(1) if (threads or default_threads()) > 1 else None
        for session in (self._features, self._box_head, self._nms, self._head):
            session.wait()  # built side by side; a failure surfaces here

    @property
    def sessions(self) -> dict[str, Session]:
        """The graph each stage of :data:`STAGES` runs (a benchmark times them apart from the
        NumPy between them)."""
        return {
            "backbone": self._features,
            "rpn": self._nms,
            "regions": self._box_head,
            "head": self._head,
        }

    def __call__(self, images: Sequence[np.ndarray], explain: bool = False) -> ModelOutput:
        """The model's output; with ``explain``, also each region's share of every region's
        logits (the head's ``contributions``)."""
        self._stamp("start")
        batch, sizes, originals = self._transform(images)
        outputs = self._features.run(batch)
        levels, predictions = outputs[:4], outputs[4:]
        self._stamp("backbone")
        proposals = self._proposals(predictions, batch.shape[-2:], sizes)
        self._stamp("rpn")
        boxes, scores, found, features = self._regions(levels, proposals, sizes)
        self._stamp("regions")
        logits, *attention = self._head.run(features)
        attention = attention[0] if attention else None
        shares = self.head.contributions(features, attention) if explain else None
        self._stamp("head")
        boxes = np.stack([
            _rescale(b, size, original)
            for b, size, original in zip(boxes, sizes, originals, strict=True)
        ])  # fmt: skip
        return ModelOutput(boxes, scores, found, logits, attention, shares)

    def _stamp(self, stage: str) -> None:
        if self.clock is not None:
            self.clock(stage)

    # --- transform ----------------------------------------------------------------------------

    def _transform(
        self, images: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
        """GeneralizedRCNNTransform: normalise, resize the longest side to ``image_size``,
        pad into one batch [N, 3, H, W] (multiples of 32)."""
        size = self.config.detector.image_size
        prepared, originals = [], []
        for image in images:
            image = np.asarray(image, dtype=np.float32)
            if image.ndim == 2:
                image = np.broadcast_to(image, (3, *image.shape))
            originals.append((int(image.shape[-2]), int(image.shape[-1])))
            prepared.append(_resize((image - self.mean) / self.std, size))
        height = max(image.shape[-2] for image in prepared)
        width = max(image.shape[-1] for image in prepared)
        batch = np.zeros((len(prepared), 3, *padded(height, width)), dtype=np.float32)
        for slot, image in zip(batch, prepared, strict=True):
            slot[:, : image.shape[-2], : image.shape[-1]] = image
        return batch, [(int(i.shape[-2]), int(i.shape[-1])) for i in prepared], originals

    # --- region proposals ---------------------------------------------------------------------

    def _proposals(
        self, predictions: list[np.ndarray], shape: tuple[int, ...], sizes: list[tuple[int, int]]
    ) -> list[np.ndarray]:
        """The RPN after its head (:class:`~.inference.RegionProposals`)."""
        a, count = self.anchors_per_cell, len(sizes)
        scores = [p[..., :a].reshape(count, -1) for p in predictions]
        deltas = [p[..., a:].reshape(count, -1, 4) for p in predictions]
        counts = [s.shape[1] for s in scores]
        anchors = self._anchors_for(tuple(shape), [p.shape[1:3] for p in predictions])
        scores_all, deltas_all = np.concatenate(scores, 1), np.concatenate(deltas, 1)
        return [
            self._select(anchors, scores_all[i], deltas_all[i], counts, sizes[i])
            for i in range(count)
        ]

    def _anchors_for(self, shape: tuple[int, ...], grids: list[tuple[int, int]]) -> np.ndarray:
        key = (shape, *grids)
        if key not in self._anchors:
            every = []
            for (rows, columns), cell in zip(grids, self.cell_anchors, strict=True):
                stride_y, stride_x = shape[0] // rows, shape[1] // columns
                shift_y, shift_x = np.meshgrid(
                    np.arange(rows) * stride_y, np.arange(columns) * stride_x, indexing="ij"
                )
                shifts = np.stack([shift_x, shift_y, shift_x, shift_y], -1).reshape(-1, 1, 4)
                every.append((shifts + cell.reshape(1, -1, 4)).reshape(-1, 4))
            self._anchors[key] = np.concatenate(every).astype(np.float32)
        return self._anchors[key]

    def _select(
        self,
        anchors: np.ndarray,
        logits: np.ndarray,
        deltas: np.ndarray,
        counts: list[int],
        size: tuple[int, int],
    ) -> np.ndarray:
        """torchvision's filter_proposals: the top-n anchors of each level, decoded, clipped,
        tiny boxes dropped, NMS per level, the best ``post_nms_top_n`` kept."""
        detector = self.config.detector
        tops, level_ids, offset = [], [], 0
        for level, count in enumerate(counts):
            top = _top(logits[offset : offset + count], detector.rpn_pre_nms_top_n_test)
            tops.append(top + offset)
            level_ids.append(np.full(len(top), level))
            offset += count
        top = np.concatenate(tops)
        boxes = clip_boxes(decode_boxes(deltas[top], anchors[top], RPN_WEIGHTS)[:, 0], size)
        scores, level = _sigmoid(logits[top]), np.concatenate(level_ids)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = np.nonzero((widths >= RPN_MIN_SIZE) & (heights >= RPN_MIN_SIZE))[0]
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        wanted = detector.rpn_post_nms_top_n_test
        # the shortcut of :meth:`~.inference.RegionProposals._best_survivors`, which says why
        order = np.argsort(-scores, kind="stable")
        prefix = order[: PREFIX_FACTOR * wanted]
        while True:
            survivors = self._nms_per_level(
                boxes[prefix], scores[prefix], level[prefix], len(counts)
            )
            if len(survivors) >= wanted or len(prefix) == len(order):
                return boxes[prefix[survivors[:wanted]]]
            prefix = order[: 2 * len(prefix)]

    def _nms_per_level(
        self, boxes: np.ndarray, scores: np.ndarray, level: np.ndarray, levels: int
    ) -> np.ndarray:
        """NMS with levels as classes (never suppressing each other); survivors by score."""
        by_level = np.where(level == np.arange(levels)[:, None], scores, np.float32(-1.0))
        (kept,) = self._nms.run(boxes[None], by_level[None].astype(np.float32))
        survivors = kept[:, 2]
        return survivors[np.argsort(-scores[survivors], kind="stable")]

    # --- region features ----------------------------------------------------------------------

    def _regions(
        self, levels: list[np.ndarray], proposals: list[np.ndarray], sizes: list[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:class:`~.inference.RegionFeatures`: score the proposals, take each region's best
        box and re-pool it through the box head for its feature."""
        detector, k = self.config.detector, len(self.config.regions)
        table = PoolingTable(levels, sizes, detector.roi_align)
        _, class_logits, regression = self._box_head.run(table.pool(proposals, self._helper))
        all_boxes = decode_boxes(regression, np.concatenate(proposals), ROI_WEIGHTS)
        all_scores = _softmax(class_logits)
        splits = np.cumsum([len(p) for p in proposals])[:-1]
        picked = [
            best_box_per_region(boxes, scores, size, k, detector.score_threshold)
            for boxes, scores, size in zip(
                np.split(all_boxes, splits), np.split(all_scores, splits), sizes, strict=True
            )
        ]
        boxes = np.stack([b for b, _, _ in picked])
        scores = np.stack([s for _, s, _ in picked])
        found = np.stack([f for _, _, f in picked])
        vectors = self._box_head.run(table.pool(list(boxes)))[0].reshape(len(picked), k, -1)
        return boxes, scores, found, vectors * found[..., None]


class PoolingTable:
    """RoIAlign over the FPN levels of a batch (:class:`~.inference.PoolingTable`, the same
    taps), as one sparse matrix product over the levels' pixel rows [Σ B·H·W, C]."""

    def __init__(
        self, levels: list[np.ndarray], sizes: list[tuple[int, int]], roi_align: str
    ) -> None:
        self.aligned = roi_align == "detectron2"
        self.channels = levels[0].shape[-1]
        self.table = np.concatenate([x.reshape(-1, self.channels) for x in levels])
        height = max(s[0] for s in sizes)  # torchvision infers each level's scale from rows
        scales = [2.0 ** round(math.log2(level.shape[1] / height)) for level in levels]
        self.k_min, self.k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        self.scales = np.asarray(scales, dtype=np.float32)
        self.rows = np.asarray([x.shape[1] for x in levels])
        self.columns = np.asarray([x.shape[2] for x in levels])
        self.starts = np.cumsum([0] + [math.prod(x.shape[:3]) for x in levels[:-1]])

    def pool(self, boxes: list[np.ndarray], helper: ThreadPoolExecutor | None = None) -> np.ndarray:
        """Boxes [n_i, 4] per image → pooled [Σ n_i, 7 · 7 · C] (channels last); with a
        ``helper`` thread, from :data:`SPLIT_POOLING` boxes on, half of them pooled there."""
        rois = np.concatenate(boxes).astype(np.float32)
        image = np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)])
        if helper is None or len(rois) < SPLIT_POOLING:
            return self._pool(rois, image)
        half = len(rois) // 2
        first = helper.submit(self._pool, rois[:half], image[:half])
        second = self._pool(rois[half:], image[half:])
        return np.concatenate([first.result(), second])

    def _pool(self, rois: np.ndarray, image: np.ndarray) -> np.ndarray:
        """RoIAlign of boxes [n, 4] in images [n] → [n, 7 · 7 · C]."""
        from scipy.sparse import csr_array

        n = len(rois)
        if n == 0:
            return np.zeros((0, ROI_SIZE * ROI_SIZE * self.channels), dtype=np.float32)
        areas = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
        with np.errstate(divide="ignore"):  # a region not found has an empty box: level k_min
            scaled = np.log2(np.sqrt(areas) / np.float32(CANONICAL_SCALE))
        target = np.floor(CANONICAL_LEVEL + scaled + np.float32(1e-6))
        level = np.clip(target, self.k_min, self.k_max).astype(np.int64) - self.k_min
        scale, rows, columns = self.scales[level], self.rows[level], self.columns[level]
        first = self.starts[level] + image * rows * columns
        y, y_weight, y_grid = _taps(rois[:, 1] * scale, rois[:, 3] * scale, rows, self.aligned)
        x, x_weight, x_grid = _taps(rois[:, 0] * scale, rois[:, 2] * scale, columns, self.aligned)
        y_taps, x_taps = y.shape[-1], x.shape[-1]
        y = first[:, None, None] + y * columns[:, None, None]
        index = y.reshape(n, ROI_SIZE, 1, y_taps, 1) + x.reshape(n, 1, ROI_SIZE, 1, x_taps)
        count = np.maximum(y_grid * x_grid, 1).astype(np.float32)  # samples a bin, per box
        y_weight = (y_weight / count[:, None, None]).reshape(n, ROI_SIZE, 1, y_taps, 1)
        weight = y_weight * x_weight.reshape(n, 1, ROI_SIZE, 1, x_taps)
        bags, taps = n * ROI_SIZE * ROI_SIZE, y_taps * x_taps
        matrix = csr_array(
            (weight.reshape(-1), index.reshape(-1).astype(np.int32),
             np.arange(0, bags * taps + 1, taps, dtype=np.int32)),
            shape=(bags, len(self.table)),
        )  # fmt: skip
        # about half the taps repeat a pixel (a bin's samples a pixel apart or less): merged
        # and sorted, the product reads half the rows, in order (8.0 → 4.4 ms for 1.8 ms here)
        matrix.sum_duplicates()
        return (matrix @ self.table).reshape(n, -1)


def _taps(
    start: np.ndarray, end: np.ndarray, size: np.ndarray, aligned: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~.inference._taps` in float32 NumPy: per box, the pixel indices [N, 7, 2 G] each
    bin reads along one axis, their bilinear weights, and the samples a bin [N]."""
    if aligned:
        start, end = start - np.float32(0.5), end - np.float32(0.5)
        length = end - start
        grid = np.ceil(length / np.float32(ROI_SIZE)).astype(np.int64)
        samples_per_bin = max(int(grid.max()), 1) if len(grid) else 1
    else:
        length = np.maximum(end - start, np.float32(1.0))
        grid = np.full(start.shape, ROI_SAMPLING, dtype=np.int64)
        samples_per_bin = ROI_SAMPLING
    step = length / np.float32(ROI_SIZE)
    bins = np.arange(ROI_SIZE, dtype=np.float32)
    sample = np.arange(samples_per_bin)
    grid_f = np.maximum(grid, 1).astype(np.float32)
    at = (start[:, None] + bins * step[:, None])[:, :, None] + (
        (sample.astype(np.float32) + np.float32(0.5)) * step[:, None, None] / grid_f[:, None, None]
    )
    limit = size[:, None, None]
    inside = (at >= -1.0) & (at <= limit.astype(np.float32))
    if aligned:
        inside &= sample < grid[:, None, None]
    at = np.maximum(at, np.float32(0.0))
    low = at.astype(np.int64)
    edge = low >= limit - 1
    low = np.where(edge, limit - 1, low)
    high = np.where(edge, low, low + 1)
    fraction = np.where(edge, np.float32(0.0), at - low.astype(np.float32))
    weights = np.stack([np.float32(1.0) - fraction, fraction], -1) * inside[..., None]
    return (
        np.stack([low, high], -1).reshape(len(start), ROI_SIZE, -1),
        weights.reshape(len(start), ROI_SIZE, -1).astype(np.float32),
        grid,
    )


# --- box arithmetic, as :mod:`.inference` does it in torch ---------------------------------------


def cell_anchors(sizes: Sequence[int], ratios: Sequence[float], rounded: bool = True) -> np.ndarray:
    """:func:`~.inference.cell_anchors` in float32."""
    scales = np.asarray(sizes, dtype=np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, dtype=np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    anchors = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    return np.round(anchors) if rounded else anchors


def decode_boxes(deltas: np.ndarray, boxes: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """torchvision's BoxCoder.decode_single: deltas [N, 4c] relative to boxes [N, 4] →
    boxes [N, c, 4]."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + np.float32(0.5) * widths
    ctr_y = boxes[:, 1] + np.float32(0.5) * heights
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, np.float32(BOX_CLIP))
    dh = np.minimum(deltas[:, 3::4] / wh, np.float32(BOX_CLIP))
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = np.float32(0.5) * (np.exp(dw) * widths[:, None])
    half_h = np.float32(0.5) * (np.exp(dh) * heights[:, None])
    return np.stack(
        (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h),
        axis=2,
    )


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Clamp x to [0, width] and y to [0, height]."""
    height, width = size
    clipped = boxes.copy()
    clipped[..., 0::2] = np.clip(boxes[..., 0::2], 0, width)
    clipped[..., 1::2] = np.clip(boxes[..., 1::2], 0, height)
    return clipped


def best_box_per_region(
    boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int], num_regions: int,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`~.inference.best_box_per_region`, which says why the arg-max is the box."""
    k = num_regions
    boxes = clip_boxes(boxes, size)[:, 1 : k + 1]
    scores = scores[:, 1 : k + 1]
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    valid = (scores > threshold) & (widths >= MIN_BOX) & (heights >= MIN_BOX)
    masked = np.where(valid, scores, np.float32(-1.0))
    best = masked.argmax(axis=0)
    best_scores = masked[best, np.arange(k)]
    found = best_scores > threshold
    best_boxes = boxes[best, np.arange(k)] * found[:, None]
    return best_boxes, np.maximum(best_scores, np.float32(0.0)) * found, found


def _top(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest values, largest first (``torch.topk``)."""
    count = min(count, len(values))
    part = np.argpartition(-values, count - 1)[:count]
    return part[np.argsort(-values[part], kind="stable")]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf for x below -88: the sigmoid is 0
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _resize(image: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear resize [3, h, w] so the longest side is ``image_size`` (torchvision's
    transform; the identity for :func:`~.preprocess.model_input`'s output)."""
    scale = input_scale(image.shape[-2:], image_size)
    if scale == 1.0:
        return image
    size = (math.floor(image.shape[-2] * scale), math.floor(image.shape[-1] * scale))
    return resample(image, size, antialias=False)


def _rescale(boxes: np.ndarray, size: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """Boxes from the transform's grid back to the images given (torchvision resize_boxes)."""
    if size == original:
        return boxes
    ratio_h = np.float32(original[0]) / np.float32(size[0])
    ratio_w = np.float32(original[1]) / np.float32(size[1])
    return boxes * np.asarray([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
