"""Per-finding operating thresholds, chosen on a validation split (issue 4, item 5).

A threshold applies to every region of a finding. It is chosen at one of two levels:

* ``image`` (the default): a report states a finding when any region crosses its threshold,
  so the threshold is chosen on each image's highest region probability against "the image
  has the finding somewhere". This is the level at which a report is right or wrong.
* ``region``: over all (image, region) pairs, as region-level AUCs are. Most pairs are
  negative, and summed over 18 regions the false calls of a region-level choice fill reports:
  on 250 held-out phantoms the shipped model's region-level Youden thresholds made a false
  pneumothorax call in 98 % of images, its image-level ones in 14 % (see MODEL_CARD.md).

Rules, at either level:

* ``youden``: maximise sensitivity + specificity − 1 (Youden's J);
* ``sensitivity=S``: the highest threshold whose sensitivity is at least S;
* ``specificity=S``: the lowest threshold whose specificity is at least S;
* ``precision=P``: the lowest threshold whose precision (positive predictive value) is at
  least P; a finding that never reaches P is never called.

Written ``youden@image``, ``specificity=0.95@region``...; the rule, the split and the operating
points go into the checkpoint's provenance with the thresholds.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigurationError
from .model.checkpoint import CheckpointInfo, read_checkpoint_info, resolve_checkpoint
from .vocab import FINDING_NAMES

__all__ = [
    "CalibrationRule",
    "OperatingPoint",
    "calibration_record",
    "choose_thresholds",
    "operating_points",
    "write_thresholds",
]

#: The threshold of a finding that never (or always) occurs in the split: nothing to choose by.
UNCALIBRATED = 0.5


@dataclass(frozen=True)
class CalibrationRule:
    """How to choose a threshold (``kind``, ``target``) and over what (``level``)."""

    kind: str = "youden"
    target: float | None = None
    level: str = "image"

    KINDS = ("youden", "sensitivity", "specificity", "precision")
    LEVELS = ("image", "region")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ConfigurationError(f"calibration rule {self.kind!r} is not one of {self.KINDS}")
        if (self.kind == "youden") != (self.target is None):
            raise ConfigurationError(
                f"calibration rule {self.kind!r}: "
                + ("takes no target" if self.kind == "youden" else "needs a target in (0, 1]")
            )
        if self.target is not None and not 0 < self.target <= 1:
            raise ConfigurationError(f"calibration target {self.target} is not in (0, 1]")
        if self.level not in self.LEVELS:
            raise ConfigurationError(f"calibration level {self.level!r} not one of {self.LEVELS}")

    @classmethod
    def parse(cls, text: str) -> CalibrationRule:
        """``"youden"``, ``"sensitivity=0.9"``, ``"specificity=0.98@region"``,
        ``"precision=0.7@image"`` (the level defaults to image)."""
        rule, _, level = text.strip().partition("@")
        kind, _, value = rule.partition("=")
        try:
            target = float(value) if value.strip() else None
        except ValueError:
            raise ConfigurationError(f"calibration rule {text!r}: {value!r} is no number") from None
        return cls(kind.strip().lower(), target, level.strip().lower() or "image")

    def __str__(self) -> str:
        rule = self.kind if self.target is None else f"{self.kind}={self.target:g}"
        return f"{rule}@{self.level}"

    def pairs(self, labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, ...]:
        """[N, regions, findings] arrays as the (label, score) pairs this rule counts: the
        image's highest region score against "any region has it" at image level."""
        if self.level == "region":
            return labels, probabilities
        return labels.max(axis=1, keepdims=True), probabilities.max(axis=1, keepdims=True)


@dataclass(frozen=True)
class OperatingPoint:
    """A finding's threshold and what it does on the split, over (image, region) pairs."""

    finding: str
    threshold: float
    sensitivity: float
    specificity: float
    precision: float
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in vars(self).items()
        }


def _curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (distinct scores, descending) with the true and false positive
    counts of "score >= threshold" at each."""
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p)), p.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    return p[last], tp, fp


def choose_thresholds(
    labels: np.ndarray,
    probabilities: np.ndarray,
    rule: CalibrationRule,
    fallback: tuple[float, ...] | None = None,
) -> tuple[float, ...]:
    """One threshold per finding from [N, regions, findings] labels and probabilities.

    A finding with only one class in the split cannot be calibrated: it keeps its ``fallback``
    threshold (the checkpoint's current one), or :data:`UNCALIBRATED`.
    """
    labels, probabilities = rule.pairs(labels, probabilities)
    thresholds = []
    for f in range(labels.shape[-1]):
        y = labels[..., f].ravel().astype(bool)
        p = probabilities[..., f].ravel().astype(np.float64)
        if y.all() or not y.any():
            thresholds.append(fallback[f] if fallback is not None else UNCALIBRATED)
            continue
        candidates, tp, fp = _curve(y, p)
        tpr, fpr = tp / y.sum(), fp / (~y).sum()
        if rule.kind == "youden":
            index = int(np.argmax(tpr - fpr))
        elif rule.kind == "sensitivity":  # tpr rises as the threshold falls: first that reaches
            index = int(np.argmax(tpr >= rule.target - 1e-12))
        else:  # the lowest threshold that still keeps the specificity or precision
            kept = 1 - fpr if rule.kind == "specificity" else tp / (tp + fp)
            keeps = np.flatnonzero(kept >= rule.target - 1e-12)
            if not keeps.size:  # not even the top score keeps it: call none
                above = np.nextafter(np.float32(candidates[0]), np.float32(np.inf))  # fp32 scores
                thresholds.append(min(1.0, float(above)))
                continue
            index = int(keeps[-1])
        # exact, not rounded: close scores (ties within 1e-6 are common) must not slip across
        thresholds.append(float(candidates[index]))
    return tuple(thresholds)


def operating_points(
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: tuple[float, ...],
    level: str = "image",
) -> tuple[OperatingPoint, ...]:
    """Sensitivity, specificity and precision of each finding's threshold on the split, counted
    at ``level`` (see :meth:`CalibrationRule.pairs`)."""
    labels, probabilities = CalibrationRule(level=level).pairs(labels, probabilities)
    points = []
    for f, t in enumerate(thresholds):  # findings in vocab order (the first ones if fewer)
        y = labels[..., f].ravel().astype(bool)
        called = probabilities[..., f].ravel().astype(np.float64) >= t
        tp, fp = int((called & y).sum()), int((called & ~y).sum())
        pos, neg = int(y.sum()), int((~y).sum())
        points.append(
            OperatingPoint(
                finding=FINDING_NAMES[f],
                threshold=t,
                sensitivity=tp / pos if pos else math.nan,
                specificity=1 - fp / neg if neg else math.nan,
                precision=tp / (tp + fp) if tp + fp else math.nan,
                positives=pos,
                negatives=neg,
            )
        )
    return tuple(points)


def calibration_record(
    rule: CalibrationRule,
    points: tuple[OperatingPoint, ...],
    *,
    split: str,
    data: str,
    images: int,
    command: str,
) -> dict[str, Any]:
    """What a checkpoint's ``provenance.calibration`` says about its thresholds."""
    return {
        "rule": str(rule),
        "split": split,
        "data": data,
        "images": images,
        "date": dt.date.today().isoformat(),
        "command": command,
        "operating_points": [p.to_dict() for p in points],
    }


def write_thresholds(
    checkpoint: str | Path, thresholds: tuple[float, ...], calibration: dict[str, Any]
) -> CheckpointInfo:
    """Replace a checkpoint's thresholds in its JSON (the weights and their hash are untouched)
    and record how they were chosen under ``provenance.calibration``."""
    path = resolve_checkpoint(checkpoint)
    document = json.loads(path.read_text())
    if len(thresholds) != len(document["config"]["findings"]):
        raise ConfigurationError(
            f"{path}: expected {len(document['config']['findings'])} thresholds"
        )
    document["config"]["thresholds"] = list(thresholds)
    document["provenance"]["calibration"] = calibration
    document["provenance"].pop("threshold_rule", None)  # superseded by the calibration record
    path.write_text(json.dumps(document, indent=2) + "\n")
    return read_checkpoint_info(path)
