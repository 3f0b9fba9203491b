"""Training in the paper's three stages: detector, region features, AnaXNet head.

1. The Faster R-CNN learns to box the 18 regions (torchvision's losses).
2. The frozen detector gives every image its 18 × 1024 region features and found mask.
3. The head (GCN + attention + classifier) learns from those features with BCE (eq. 6),
   Adam at 1e-4 for 25 epochs (paper §3.3), the region graph built from the TRAINING labels.

Then per-finding operating thresholds are chosen on the validation split (Youden's J) and the
test split is scored with the paper's protocol; all of it goes into the checkpoint's JSON.
Data come through :class:`anaxreport.data.imagenome.ImaGenomeDataset`, so Chest ImaGenome and
our phantoms take the same path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import FasterRCNN
from tqdm import tqdm

from .data.imagenome import ImaGenomeDataset
from .data.loader import Sample, load_split, source_boxes
from .evaluate import Evaluation, auc_table, evaluate_arrays, region_iou
from .model.anaxnet import AnaXNet, AnaXNetHead
from .model.checkpoint import CheckpointInfo, save_checkpoint
from .model.config import ModelConfig
from .model.detector import FEATURE_DIM, build_detector, extract_regions
from .model.graph import build_adjacency

__all__ = ["TrainSettings", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """One training run; every field has the paper's value or a CPU-sized default."""

    data: Path
    out: Path
    work_dir: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    image_root: Path | None = None
    detector_epochs: int = 12
    detector_lr: float = 1e-3
    batch_size: int = 4
    head_epochs: int = 25
    head_lr: float = 1e-4
    head_batch_size: int = 16
    finding_loss_weight: float = 0.0
    seed: int = 0
    limit: int | None = None
    training_data: str = "unspecified"
    command: str = ""
    progress: bool = False


def _batches(n: int, size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(size)


def _jitter(image: Tensor, generator: torch.Generator) -> Tensor:
    """Exposure augmentation: random gamma and contrast, so the detector does not learn one
    film's grey levels."""
    gamma, contrast = (torch.rand(2, generator=generator) * 0.6 + 0.7).tolist()
    return ((image.float() ** gamma - 0.5) * contrast + 0.5).clamp(0, 1).expand(3, -1, -1)


def _detector_losses(
    detector: FasterRCNN,
    probe: nn.Linear | None,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
) -> dict[str, Tensor]:
    """torchvision's detection losses, plus the finding probe's BCE when there is a probe.

    The probe reads the box-head vector of each ground-truth region box, so the 1024-d region
    features learn to carry the findings and not only the anatomy (a stand-in for the ImageNet
    pre-training a from-scratch detector lacks; ``finding_loss_weight`` = 0 is the paper's
    anatomy-only detector).
    """
    batch, targets = detector.transform(images, targets)
    feature_maps = detector.backbone(batch.tensors)
    proposals, losses = detector.rpn(batch, feature_maps, targets)
    _, roi_losses = detector.roi_heads(feature_maps, proposals, batch.image_sizes, targets)
    losses.update(roi_losses)
    if probe is not None:
        boxes = [t["boxes"] for t in targets]
        pooled = detector.roi_heads.box_roi_pool(feature_maps, boxes, batch.image_sizes)
        logits = probe(detector.roi_heads.box_head(pooled))
        findings = torch.cat([t["findings"] for t in targets])
        losses["loss_findings"] = F.binary_cross_entropy_with_logits(logits, findings)
    return losses


@torch.inference_mode()
def _probe_auc(detector: FasterRCNN, probe: nn.Linear, samples: Sequence[Sample]) -> float:
    """Validation mean AUC of the finding probe on the true region boxes."""
    probabilities, labels = [], []
    for sample in samples:
        target = sample.target()
        batch, _ = detector.transform([sample.image.float().expand(3, -1, -1)])
        feature_maps = detector.backbone(batch.tensors)
        pooled = detector.roi_heads.box_roi_pool(feature_maps, [target["boxes"]], batch.image_sizes)
        full = np.full(sample.labels.shape, 0.0)
        full[target["labels"].numpy() - 1] = torch.sigmoid(
            probe(detector.roi_heads.box_head(pooled))
        ).numpy()
        probabilities.append(full)
        labels.append(sample.labels)
    return _mean_auc(np.stack(labels), np.stack(probabilities))


def train_detector(
    settings: TrainSettings, train: list[Sample], valid: list[Sample]
) -> tuple[FasterRCNN, float]:
    """Stage 1. Keeps the epoch with the best validation score (IoU, averaged with the probe's
    AUC when the finding probe is on); resumes from ``work_dir`` at an epoch boundary."""
    config = settings.model.detector
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global state untouched
        torch.manual_seed(settings.seed)
        detector = build_detector(config, len(settings.model.regions))
        probe = (
            nn.Linear(FEATURE_DIM, len(settings.model.findings))
            if settings.finding_loss_weight > 0
            else None
        )
    modules = nn.ModuleDict({"detector": detector, **({"probe": probe} if probe else {})})
    weights = settings.work_dir / "detector.safetensors"
    best_path = settings.work_dir / "detector-best.safetensors"
    start, best_score, best_iou = 0, -1.0, -1.0
    if weights.exists():
        state = load_file(str(weights))
        meta = {k: float(v.item()) for k, v in state.items() if k.startswith("_meta.")}
        modules.load_state_dict({k: v for k, v in state.items() if not k.startswith("_meta.")})
        start, best_score = int(meta["_meta.epoch"]) + 1, meta["_meta.best_score"]
        best_iou = meta["_meta.best_iou"]
        log.info("resuming the detector at epoch %d (best score %.3f)", start, best_score)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=settings.detector_lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.detector_lr,
        total_steps=max(settings.detector_epochs * steps_per_epoch, 1),
        pct_start=0.1,
    )
    for _ in range(start * steps_per_epoch):
        schedule.step()
    for epoch in range(start, settings.detector_epochs):
        generator = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        modules.train()
        bar = tqdm(
            list(_batches(len(train), settings.batch_size, generator)),
            desc=f"detector {epoch + 1}/{settings.detector_epochs}",
            disable=not settings.progress,
        )
        for batch in bar:
            images = [_jitter(train[i].image, generator) for i in batch]
            losses = _detector_losses(detector, probe, images, [train[i].target() for i in batch])
            if "loss_findings" in losses:
                losses["loss_findings"] = losses["loss_findings"] * settings.finding_loss_weight
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(modules.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            bar.set_postfix({k.removeprefix("loss_"): f"{v.item():.3f}" for k, v in losses.items()})
        modules.eval()
        iou = _detections_iou(detector, settings, valid)
        probe_auc = _probe_auc(detector, probe, valid) if probe is not None else math.nan
        score = iou if probe is None or math.isnan(probe_auc) else (iou + probe_auc) / 2
        log.info(
            "detector epoch %d: loss %.3f (%s), validation IoU %.3f, probe AUC %.3f",
            epoch + 1,
            loss.item(),
            ", ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items()),
            iou,
            probe_auc,
        )
        if score > best_score:
            best_score, best_iou = score, iou
            save_file(_state(detector), str(best_path))
        state = _state(modules)
        state["_meta.epoch"] = torch.tensor(epoch)
        state["_meta.best_score"] = torch.tensor(best_score)
        state["_meta.best_iou"] = torch.tensor(best_iou)
        save_file(state, str(weights))
    if best_path.exists():
        detector.load_state_dict(load_file(str(best_path)))
    return detector.eval(), best_iou


def _state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


@dataclass(frozen=True)
class RegionArrays:
    """Stage 2 output for one split: features [N, k, d], found [N, k], boxes [N, k, 4] in
    source pixels, scores [N, k]."""

    features: Tensor
    found: Tensor
    boxes: np.ndarray
    scores: np.ndarray


@torch.inference_mode()
def extract_split(detector, settings: TrainSettings, samples: Sequence[Sample]) -> RegionArrays:
    """Stage 2: the frozen detector's region features and boxes for every sample."""
    k = len(settings.model.regions)
    feats, found, boxes, scores = [], [], [], []
    for batch in _batches(len(samples), 8, None):
        images = [samples[i].image.float().expand(3, -1, -1) for i in batch]
        out = extract_regions(detector, images, k, settings.model.detector.score_threshold)
        feats.append(out.features)
        found.append(out.found)
        scores.append(out.scores.numpy())
        for j, i in enumerate(batch.tolist()):
            boxes.append(source_boxes(out.boxes[j], out.found[j], samples[i].resize))
    return RegionArrays(torch.cat(feats), torch.cat(found), np.stack(boxes), np.concatenate(scores))


def _detections_iou(detector, settings: TrainSettings, samples: Sequence[Sample]) -> float:
    arrays = extract_split(detector, settings, samples)
    return region_iou(arrays.boxes, np.stack([s.boxes for s in samples]))[1]


def _mean_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return auc_table(labels, probabilities)[2]


def train_head(
    settings: TrainSettings,
    adjacency: np.ndarray,
    train: RegionArrays,
    train_labels: np.ndarray,
    valid: RegionArrays,
    valid_labels: np.ndarray,
) -> AnaXNetHead:
    """Stage 3: BCE (eq. 6) with Adam; the epoch with the best validation mean AUC is kept."""
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global state untouched
        torch.manual_seed(settings.seed)
        head = AnaXNetHead(
            settings.model.head, torch.tensor(adjacency), num_findings=len(settings.model.findings)
        )
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.head_lr)
    targets = torch.from_numpy(train_labels).float()
    generator = torch.Generator().manual_seed(settings.seed)
    best_auc, best_state = -math.inf, _state(head)
    for epoch in range(settings.head_epochs):
        head.train()
        for batch in _batches(len(targets), settings.head_batch_size, generator):
            logits = head(train.features[batch]).logits
            loss = F.binary_cross_entropy_with_logits(logits, targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.inference_mode():
            probabilities = torch.sigmoid(head(valid.features).logits).numpy()
        auc = _mean_auc(valid_labels, probabilities)
        log.info("head epoch %d: loss %.4f, validation mean AUC %.4f", epoch + 1, loss.item(), auc)
        if auc > best_auc or math.isnan(best_auc):
            best_auc, best_state = auc, _state(head)
    head.load_state_dict(best_state)
    return head.eval()


def youden_thresholds(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, ...]:
    """Per finding, the probability that maximises sensitivity + specificity − 1 over all
    (image, region) pairs of the validation split; 0.5 where a finding never occurs."""
    thresholds = []
    for f in range(labels.shape[-1]):
        y = labels[..., f].ravel().astype(bool)
        p = probabilities[..., f].ravel()
        if y.all() or not y.any():
            thresholds.append(0.5)
            continue
        candidates = np.unique(p)
        tpr = np.array([(p[y] >= t).mean() for t in candidates])
        fpr = np.array([(p[~y] >= t).mean() for t in candidates])
        thresholds.append(round(float(candidates[int(np.argmax(tpr - fpr))]), 4))
    return tuple(thresholds)


def train(settings: TrainSettings) -> tuple[CheckpointInfo, Evaluation]:
    """Run all three stages and write the checkpoint; returns its info and the test scores."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    size = settings.model.detector.image_size
    splits = {
        name: load_split(
            ImaGenomeDataset(settings.data, name, image_root=settings.image_root),
            size,
            settings.limit,
            settings.progress,
        )
        for name in ("train", "valid", "test")
    }
    detector, valid_iou = train_detector(settings, splits["train"], splits["valid"])
    arrays = {name: extract_split(detector, settings, s) for name, s in splits.items()}
    labels = {name: np.stack([s.labels for s in samples]) for name, samples in splits.items()}

    adjacency = build_adjacency(
        labels["train"], tau=settings.model.graph.tau, rule=settings.model.graph.rule
    )
    head = train_head(
        settings, adjacency, arrays["train"], labels["train"], arrays["valid"], labels["valid"]
    )
    with torch.inference_mode():
        valid_probs = torch.sigmoid(head(arrays["valid"].features).logits).numpy()
        test_probs = torch.sigmoid(head(arrays["test"].features).logits).numpy()
    config = replace(
        settings.model,
        adjacency=tuple(tuple(int(v) for v in row) for row in adjacency),
        thresholds=youden_thresholds(labels["valid"], valid_probs),
    )
    evaluation = evaluate_arrays(
        labels["test"],
        test_probs,
        arrays["test"].boxes,
        np.stack([s.boxes for s in splits["test"]]),
    )
    model = AnaXNet(config, detector=detector, head=head).eval()
    info = save_checkpoint(
        model,
        settings.out,
        provenance=_provenance(settings, {n: len(s) for n, s in splits.items()}),
        metrics={
            "validation_detector_iou": round(valid_iou, 4),
            "test": evaluation.to_dict(),
        },
    )
    return info, evaluation


def _provenance(settings: TrainSettings, counts: dict[str, int]) -> dict[str, Any]:
    from . import __version__

    return {
        "training_data": settings.training_data,
        "images": counts,
        "command": settings.command,
        "software": f"anaxreport {__version__}",
        "seed": settings.seed,
        "detector_epochs": settings.detector_epochs,
        "detector_finding_loss_weight": settings.finding_loss_weight,
        "head_epochs": settings.head_epochs,
        "optimiser": {
            "detector": f"AdamW one-cycle, max lr {settings.detector_lr}",
            "head": f"Adam, lr {settings.head_lr} (paper)",
        },
        "threshold_rule": "Youden's J per finding on the validation split",
    }
