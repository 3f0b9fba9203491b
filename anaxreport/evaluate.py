"""Evaluation with the paper's Table 3 protocol, and detector IoU per region.

AUC is computed per (region, finding) over test images; a finding's score is the mean over the
regions where its AUC is defined (both classes present: a nan-mean), and the overall score is the
mean over the 9 findings. A finding predicted in the wrong region is a false positive of that
region, so mislocalisation costs AUC (paper §3.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .vocab import FINDING_NAMES, REGION_NAMES

__all__ = [
    "Evaluation",
    "auc_table",
    "box_iou",
    "evaluate_arrays",
    "evaluate_image_level",
    "evaluate_model",
    "predict_samples",
    "region_iou",
    "roc_auc",
]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum statistic (ties get half credit); nan when
    only one class is present."""
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def box_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of paired boxes [..., 4]; NaN where the truth is missing, 0 where only the
    prediction is (a missed region scores 0)."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    ix = np.clip(
        np.minimum(pred[..., 2], truth[..., 2]) - np.maximum(pred[..., 0], truth[..., 0]), 0, None
    )
    iy = np.clip(
        np.minimum(pred[..., 3], truth[..., 3]) - np.maximum(pred[..., 1], truth[..., 1]), 0, None
    )
    inter = ix * iy
    area_p = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_t = (truth[..., 2] - truth[..., 0]) * (truth[..., 3] - truth[..., 1])
    union = area_p + area_t - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    iou = np.nan_to_num(iou, nan=0.0)
    return np.where(np.isnan(truth).any(axis=-1), np.nan, iou)


@dataclass(frozen=True)
class Evaluation:
    """Table 3 numbers: ``auc`` [k, M] per region × finding, ``finding_auc`` [M] (nan-mean
    over regions), ``mean_auc`` (mean over findings), ``region_iou`` [k] (nan-mean over
    images) and ``mean_iou`` over regions; ``images`` is how many test images were scored."""

    auc: np.ndarray
    finding_auc: np.ndarray
    mean_auc: float
    region_iou: np.ndarray
    mean_iou: float
    images: int
    localising: bool = True

    def to_dict(self) -> dict[str, object]:
        def clean(values: np.ndarray) -> list:
            return [None if math.isnan(v) else round(float(v), 4) for v in values]

        return {
            "images": self.images,
            "localising": self.localising,
            "mean_auc": None if math.isnan(self.mean_auc) else round(self.mean_auc, 4),
            "finding_auc": dict(zip(FINDING_NAMES, clean(self.finding_auc), strict=True)),
            "mean_iou": None if math.isnan(self.mean_iou) else round(self.mean_iou, 4),
            "region_iou": dict(zip(REGION_NAMES, clean(self.region_iou), strict=True)),
            "auc": {
                region: dict(zip(FINDING_NAMES, clean(row), strict=True))
                for region, row in zip(REGION_NAMES, self.auc, strict=True)
            },
        }

    def table(self) -> str:
        """The paper's Table 3 layout: one column per finding (L1..L9) and AVG, plus IoU."""
        head = " ".join(f"{f'L{i + 1}':>5}" for i in range(len(FINDING_NAMES)))
        row = " ".join(f"{v:5.2f}" if not math.isnan(v) else "  n/a" for v in self.finding_auc)
        lines = [
            f"{'':10} {head}   AVG",
            f"{'AUC':10} {row} {self.mean_auc:5.2f}",
            f"mean detector IoU over {len(REGION_NAMES)} regions: {self.mean_iou:.3f} "
            f"({self.images} images)"
            if self.localising
            else f"image-level AUC: the model does not localise ({self.images} images)",
        ]
        return "\n".join(lines)


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    values = np.asarray(values, dtype=np.float64)
    count = (~np.isnan(values)).sum(axis=axis)
    total = np.nansum(values, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def auc_table(
    labels: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The AUC half of Table 3: per (region, finding) [k, M], per finding [M], and the mean."""
    _, k, m = labels.shape
    auc = np.array(
        [[roc_auc(labels[:, r, f], probabilities[:, r, f]) for f in range(m)] for r in range(k)]
    )
    finding_auc = np.asarray(_nanmean(auc, axis=0))
    return auc, finding_auc, float(_nanmean(finding_auc))


def region_iou(pred_boxes: np.ndarray, true_boxes: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-region IoU [k] over images of [N, k, 4] boxes, and its mean over regions."""
    per_region = np.asarray(_nanmean(box_iou(pred_boxes, true_boxes), axis=0))
    return per_region, float(_nanmean(per_region))


def evaluate_arrays(
    labels: np.ndarray,
    probabilities: np.ndarray,
    pred_boxes: np.ndarray,
    true_boxes: np.ndarray,
) -> Evaluation:
    """Score [N, k, M] labels against probabilities and [N, k, 4] boxes (NaN = no truth)."""
    auc, finding_auc, mean_auc = auc_table(labels, probabilities)
    per_region, mean_iou = region_iou(pred_boxes, true_boxes)
    return Evaluation(
        auc=auc,
        finding_auc=finding_auc,
        mean_auc=mean_auc,
        region_iou=per_region,
        mean_iou=mean_iou,
        images=labels.shape[0],
    )


def evaluate_image_level(labels: np.ndarray, probabilities: np.ndarray) -> Evaluation:
    """Score an image-level model (GlobalView): [N, M] labels (a finding anywhere in the image)
    against [N, M] probabilities. Per region it has nothing to say: those AUCs and IoUs are
    NaN, and the evaluation says it does not localise."""
    _, finding_auc, mean_auc = auc_table(labels[:, None], probabilities[:, None])
    k, m = len(REGION_NAMES), labels.shape[-1]
    return Evaluation(
        auc=np.full((k, m), np.nan),
        finding_auc=finding_auc,
        mean_auc=mean_auc,
        region_iou=np.full(k, np.nan),
        mean_iou=math.nan,
        images=labels.shape[0],
        localising=False,
    )


def predict_samples(
    model: Any, samples: Sequence[Any], batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Run a whole :class:`~anaxreport.model.anaxnet.AnaXNet` (or its inference model) over
    loaded samples (:func:`anaxreport.data.loader.load_split`): [N, k, M] probabilities and
    [N, k, 4] boxes in source pixels (NaN where no box was found).

    Samples go through in batches of one padded size, as the reporter runs studies
    (:meth:`~anaxreport.reporter.Reporter.predict_many`): padded together, two sizes change each
    other's proposals, and the scores would not be the ones the product reports.
    """
    import torch

    from .data.loader import source_boxes
    from .model.plan import batches_by_size, padded_size

    image_size = model.config.detector.image_size
    sizes = [padded_size(tuple(s.image.shape[-2:]), image_size) for s in samples]
    probabilities: list[np.ndarray] = [np.empty(0)] * len(samples)
    boxes: list[np.ndarray] = [np.empty(0)] * len(samples)
    engine = getattr(model, "runtime", "torch") == "onnxruntime"  # arrays in, arrays out
    if not engine:
        model.eval()
    with torch.inference_mode():
        for chunk in batches_by_size(sizes, batch_size):
            images = [samples[i].image.float().expand(3, -1, -1) for i in chunk]
            out = model([image.numpy() for image in images] if engine else images)
            for j, i in enumerate(chunk):
                probabilities[i] = np.asarray(out.probabilities[j])
                boxes[i] = source_boxes(out.boxes[j], out.found[j], samples[i].resize)
    return np.stack(probabilities), np.stack(boxes)


def evaluate_model(model: Any, samples: Sequence[Any], batch_size: int = 8) -> Evaluation:
    """Score a whole model over loaded samples (see :func:`predict_samples`)."""
    probabilities, boxes = predict_samples(model, samples, batch_size)
    return evaluate_arrays(
        np.stack([s.labels for s in samples]),
        probabilities,
        boxes,
        np.stack([s.boxes for s in samples]),
    )
