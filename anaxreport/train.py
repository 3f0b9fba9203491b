"""Training in the paper's three stages: detector, region features, AnaXNet head.

1. The Faster R-CNN learns to box the 18 regions (torchvision's losses).
2. The frozen detector gives every image its 18 × 1024 region features and found mask.
3. The head (GCN + attention + classifier) learns from those features with BCE (eq. 6),
   Adam at 1e-4 for 25 epochs (paper §3.3), the region graph built from the TRAINING labels.

Then per-finding operating thresholds are chosen on the validation split (Youden's J) and the
test split is scored with the paper's protocol; all of it goes into the checkpoint's JSON.
Data come through :class:`anaxreport.data.imagenome.ImaGenomeDataset`, so Chest ImaGenome and
our phantoms take the same path.

Under ``torchrun`` (see :mod:`anaxreport.distributed`) the detector and the head train in
DistributedDataParallel, each rank on its share of every epoch; detector validation and stage 2
are sharded and gathered; rank 0 selects the best epoch, its weights are broadcast, and only
rank 0 writes the work folder and the checkpoint. One process computes what it always has.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
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

from .calibrate import CalibrationRule, calibration_record, choose_thresholds, operating_points
from .data.imagenome import ImaGenomeDataset
from .data.loader import Sample, load_split, source_boxes
from .distributed import LOCAL, Runtime, gather_rows, runtime, shard_indices, shard_order
from .evaluate import Evaluation, auc_table, evaluate_arrays, evaluate_image_level, region_iou
from .model.anaxnet import AnaXNet
from .model.baselines import build_head
from .model.checkpoint import CheckpointInfo, save_checkpoint
from .model.config import HEAD_NAMES, LOCALISING_KINDS, ModelConfig
from .model.detector import FEATURE_DIM, build_detector, extract_regions
from .model.detectron2 import detector_weights
from .model.graph import build_adjacency, label_adjacency

__all__ = ["TrainSettings", "train", "train_heads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """One training run; every field has the paper's value or a CPU-sized default.

    ``batch_size`` and ``head_batch_size`` are per process: under torchrun with N processes a
    step sees N times as many images (learning rates are not rescaled). ``device`` is ``auto``
    (CUDA when there is one), ``cpu`` or ``cuda``; ``amp`` None means mixed precision on CUDA
    and none on the CPU.
    """

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
    device: str = "auto"
    amp: bool | None = None
    calibration: CalibrationRule = field(default_factory=CalibrationRule)
    #: the detector's weights to start from (a detectron2 or anaxreport checkpoint; None: random)
    init_detector: Path | None = None


def _batches(
    n: int, size: int, generator: torch.Generator | None, rt: Runtime = LOCAL
) -> Iterator[Tensor]:
    """This rank's batches of one epoch (all of them with one process)."""
    yield from shard_order(n, generator, rt.rank, rt.world_size).split(size)


def _epoch_generators(
    seed: int, epoch: int, rt: Runtime
) -> tuple[torch.Generator, torch.Generator]:
    """The epoch's order generator, alike on every rank, and the exposure jitter's: with one
    process the same generator goes on, as it always has; under torchrun each rank gets its
    own stream so that no two ranks jitter their images alike."""
    order = torch.Generator().manual_seed(seed * 1000 + epoch)
    if not rt.distributed:
        return order, order
    seeds = torch.randint(2**62, (rt.world_size,), generator=order).tolist()
    return order, torch.Generator().manual_seed(seeds[rt.rank])


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


class _DetectorLosses(nn.Module):
    """Detector and finding probe as one module whose forward is the training loss, so that
    DistributedDataParallel sees the whole step; state keys ``detector.*`` and ``probe.*``."""

    def __init__(self, detector: FasterRCNN, probe: nn.Linear | None) -> None:
        super().__init__()
        self.detector = detector
        self.probe = probe

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return _detector_losses(self.detector, self.probe, images, targets)


def _probe_auc(
    detector: FasterRCNN,
    probe: nn.Linear,
    settings: TrainSettings,
    samples: Sequence[Sample],
    rt: Runtime = LOCAL,
) -> float:
    """Validation mean AUC of the finding probe on the true region boxes (sharded over ranks)."""
    indices = shard_indices(len(samples), rt.rank, rt.world_size)
    shape = (len(settings.model.regions), len(settings.model.findings))
    local = _probe_probabilities(detector, probe, samples, indices, shape, rt.device)
    probabilities = gather_rows(local, len(samples), rt).numpy()
    return _mean_auc(np.stack([s.labels for s in samples]), probabilities)


@torch.inference_mode()
def _probe_probabilities(
    detector: FasterRCNN,
    probe: nn.Linear,
    samples: Sequence[Sample],
    indices: Tensor,
    shape: tuple[int, int],
    device: torch.device,
) -> Tensor:
    """[len(indices), k, M] float64 probe probabilities, 0 for regions without a true box."""
    out = torch.zeros((len(indices), *shape), dtype=torch.float64)
    for row, i in enumerate(indices.tolist()):
        target = samples[i].target()
        batch, _ = detector.transform([samples[i].image.float().expand(3, -1, -1).to(device)])
        feature_maps = detector.backbone(batch.tensors)
        pooled = detector.roi_heads.box_roi_pool(
            feature_maps, [target["boxes"].to(device)], batch.image_sizes
        )
        probabilities = torch.sigmoid(probe(detector.roi_heads.box_head(pooled)))
        out[row, target["labels"] - 1] = probabilities.cpu().double()
    return out


@dataclass
class _Stepper:
    """One optimiser step: loss scaling (float16 only), optional clipping and LR schedule."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    clip: tuple[list[nn.Parameter], float] | None = None

    def __call__(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(*self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule is not None:
            self.schedule.step()


def train_detector(
    settings: TrainSettings, train: list[Sample], valid: list[Sample], rt: Runtime = LOCAL
) -> tuple[FasterRCNN, float]:
    """Stage 1. Keeps the epoch with the best validation score (IoU, averaged with the probe's
    AUC when the finding probe is on); resumes from ``work_dir`` at an epoch boundary.

    The detector is returned on ``rt.device`` with the same best weights on every rank.
    """
    modules = _detector_modules(settings)
    weights = settings.work_dir / "detector.safetensors"
    best_path = settings.work_dir / "detector-best.safetensors"
    # rank 0 reads the resume state; DDP's construction copies its weights to the other ranks
    start, best_score, best_iou = rt.broadcast(
        _resume_detector(modules, weights) if rt.is_main else None
    )
    model = rt.wrap(modules.to(rt.device))
    step = _one_cycle(modules, settings, len(train), rt, start)
    for epoch in range(start, settings.detector_epochs):
        losses = _detector_epoch(model, settings, train, epoch, step, rt)
        model.eval()
        iou, probe_auc, score = _validate_detector(modules, settings, valid, rt)
        log.info(
            "detector epoch %d: loss %.3f (%s), validation IoU %.3f, probe AUC %.3f",
            epoch + 1,
            float(sum(v.detach() for v in losses.values())),
            ", ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items()),
            iou,
            probe_auc,
        )
        if score > best_score:
            best_score, best_iou = score, iou
            if rt.is_main:
                save_file(_state(modules.detector), str(best_path))
        if rt.is_main:
            state = _state(modules)
            state["_meta.epoch"] = torch.tensor(epoch)
            state["_meta.best_score"] = torch.tensor(best_score)
            state["_meta.best_iou"] = torch.tensor(best_iou)
            save_file(state, str(weights))
    if best_iou < 0:  # no epoch ran (--detector-epochs 0): the starting detector's score
        modules.eval()
        best_iou = _validate_detector(modules, settings, valid, rt)[0]
    if rt.is_main and best_path.exists():
        modules.detector.load_state_dict(load_file(str(best_path)))
    rt.broadcast_state(modules.detector)
    return modules.detector.eval(), best_iou


def _one_cycle(
    module: nn.Module, settings: TrainSettings, images: int, rt: Runtime, start: int = 0
) -> _Stepper:
    """The steps of a CNN over the training images (the detector, GlobalView): AdamW on a
    one-cycle schedule over ``detector_epochs``, advanced to epoch ``start`` when resuming."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.detector_lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(math.ceil(images / rt.world_size) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.detector_lr,
        total_steps=max(settings.detector_epochs * steps_per_epoch, 1),
        pct_start=0.1,
    )
    for _ in range(start * steps_per_epoch):
        schedule.step()
    return _Stepper(optimizer, rt.grad_scaler(), schedule, (list(module.parameters()), 10.0))


def _detector_modules(settings: TrainSettings) -> _DetectorLosses:
    """The detector (and the finding probe when it is on), initialised from the seed."""
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global state untouched
        torch.manual_seed(settings.seed)
        detector = build_detector(settings.model.detector, len(settings.model.regions))
        if settings.init_detector is not None:
            start = detector_weights(settings.init_detector, detector.state_dict())
            detector.load_state_dict(start, strict=True)
        probe = (
            nn.Linear(FEATURE_DIM, len(settings.model.findings))
            if settings.finding_loss_weight > 0
            else None
        )
    return _DetectorLosses(detector, probe)


def _detector_epoch(
    model: nn.Module,
    settings: TrainSettings,
    train: list[Sample],
    epoch: int,
    step: _Stepper,
    rt: Runtime,
) -> dict[str, Tensor]:
    """One epoch over this rank's batches; returns the last batch's losses for the log."""
    order, jitter = _epoch_generators(settings.seed, epoch, rt)
    model.train()
    bar = tqdm(
        list(_batches(len(train), settings.batch_size, order, rt)),
        desc=f"detector {epoch + 1}/{settings.detector_epochs}",
        disable=not (settings.progress and rt.is_main),
    )
    losses: dict[str, Tensor] = {}
    for batch in bar:
        images = [_jitter(train[i].image, jitter).to(rt.device) for i in batch]
        targets = [_to_device(train[i].target(), rt.device) for i in batch]
        with rt.autocast():
            losses = model(images, targets)
        if "loss_findings" in losses:
            losses["loss_findings"] = losses["loss_findings"] * settings.finding_loss_weight
        step(sum(losses.values()))
        bar.set_postfix({k.removeprefix("loss_"): f"{v.item():.3f}" for k, v in losses.items()})
    return losses


def _validate_detector(
    modules: _DetectorLosses, settings: TrainSettings, valid: list[Sample], rt: Runtime
) -> tuple[float, float, float]:
    """Validation IoU, probe AUC and selection score, computed sharded; rank 0's numbers are
    every rank's, so that all take the same decision."""
    detector, probe = modules.detector, modules.probe
    iou = _detections_iou(detector, settings, valid, rt)
    probe_auc = _probe_auc(detector, probe, settings, valid, rt) if probe is not None else math.nan
    score = iou if probe is None or math.isnan(probe_auc) else (iou + probe_auc) / 2
    return rt.broadcast((iou, probe_auc, score))


def _resume_detector(modules: nn.Module, weights: Path) -> tuple[int, float, float]:
    """Load the last finished epoch from ``weights`` if there is one; returns the epoch to
    start at, the best score and the best IoU so far."""
    if not weights.exists():
        return 0, -1.0, -1.0
    state = load_file(str(weights))
    meta = {k: float(v.item()) for k, v in state.items() if k.startswith("_meta.")}
    modules.load_state_dict({k: v for k, v in state.items() if not k.startswith("_meta.")})
    start, best_score = int(meta["_meta.epoch"]) + 1, meta["_meta.best_score"]
    log.info("resuming the detector at epoch %d (best score %.3f)", start, best_score)
    return start, best_score, meta["_meta.best_iou"]


def _to_device(target: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in target.items()}


def _state(module: torch.nn.Module) -> dict[str, Tensor]:
    """A CPU copy of the weights (what safetensors writes and best-epoch selection keeps)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


@dataclass(frozen=True)
class RegionArrays:
    """Stage 2 output for one split: features [N, k, d], found [N, k], boxes [N, k, 4] in
    source pixels, scores [N, k]."""

    features: Tensor
    found: Tensor
    boxes: np.ndarray
    scores: np.ndarray


def extract_split(
    detector: FasterRCNN, settings: TrainSettings, samples: Sequence[Sample], rt: Runtime = LOCAL
) -> RegionArrays:
    """Stage 2: the frozen detector's region features and boxes for every sample, on the CPU.

    Full precision even when training used autocast: the head must learn from the features
    the shipped model computes. Under torchrun each rank extracts its share and every rank
    receives them all.
    """
    indices = shard_indices(len(samples), rt.rank, rt.world_size)
    local = _extract_indices(detector, settings, samples, indices, rt.device)
    if not rt.distributed:
        return local
    n = len(samples)
    return RegionArrays(
        features=gather_rows(local.features, n, rt),
        found=gather_rows(local.found, n, rt),
        boxes=gather_rows(torch.from_numpy(local.boxes), n, rt).numpy(),
        scores=gather_rows(torch.from_numpy(local.scores), n, rt).numpy(),
    )


@torch.inference_mode()
def _extract_indices(
    detector: FasterRCNN,
    settings: TrainSettings,
    samples: Sequence[Sample],
    indices: Tensor,
    device: torch.device,
) -> RegionArrays:
    k = len(settings.model.regions)
    if len(indices) == 0:  # a rank whose share of a small split is empty
        return RegionArrays(
            torch.zeros((0, k, FEATURE_DIM)),
            torch.zeros((0, k), dtype=torch.bool),
            np.zeros((0, k, 4)),
            np.zeros((0, k), dtype=np.float32),
        )
    feats, found, boxes, scores = [], [], [], []
    for batch in indices.split(8):
        images = [samples[i].image.float().expand(3, -1, -1).to(device) for i in batch]
        out = extract_regions(detector, images, k, settings.model.detector.score_threshold)
        feats.append(out.features.cpu())
        found.append(out.found.cpu())
        scores.append(out.scores.cpu().numpy())
        for j, i in enumerate(batch.tolist()):
            boxes.append(source_boxes(out.boxes[j].cpu(), out.found[j].cpu(), samples[i].resize))
    return RegionArrays(torch.cat(feats), torch.cat(found), np.stack(boxes), np.concatenate(scores))


def _detections_iou(
    detector: FasterRCNN, settings: TrainSettings, samples: Sequence[Sample], rt: Runtime = LOCAL
) -> float:
    arrays = extract_split(detector, settings, samples, rt)
    return region_iou(arrays.boxes, np.stack([s.boxes for s in samples]))[1]


def _mean_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return auc_table(labels, probabilities)[2]


def train_head(
    settings: TrainSettings,
    train: RegionArrays,
    train_labels: np.ndarray,
    valid: RegionArrays,
    valid_labels: np.ndarray,
    rt: Runtime = LOCAL,
) -> nn.Module:
    """Stage 3: BCE (eq. 6) with Adam; the epoch with the best validation mean AUC is kept.

    The head is the one ``settings.model`` names (AnaXNet's or a baseline's), over the graphs
    it holds. Rank 0 validates and keeps the best epoch; its weights end up on every rank, on
    the CPU.
    """
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global state untouched
        torch.manual_seed(settings.seed)
        head = build_head(settings.model)
    model = rt.wrap(head.to(rt.device))
    step = _Stepper(torch.optim.Adam(head.parameters(), lr=settings.head_lr), rt.grad_scaler())
    targets = torch.from_numpy(train_labels).float()
    generator = torch.Generator().manual_seed(settings.seed)  # alike on every rank
    best_auc, best_state = -math.inf, _state(head)
    for epoch in range(settings.head_epochs):
        model.train()
        for batch in _batches(len(targets), settings.head_batch_size, generator, rt):
            with rt.autocast():
                logits = model(train.features[batch].to(rt.device)).logits
                loss = F.binary_cross_entropy_with_logits(logits, targets[batch].to(rt.device))
            step(loss)
        model.eval()
        if not rt.is_main:
            continue
        auc = _mean_auc(valid_labels, _head_probabilities(head, valid.features))
        log.info("head epoch %d: loss %.4f, validation mean AUC %.4f", epoch + 1, loss.item(), auc)
        if auc > best_auc or math.isnan(best_auc):
            best_auc, best_state = auc, _state(head)
    if rt.is_main:
        head.load_state_dict(best_state)
    rt.broadcast_state(head)
    return head.cpu().eval()


@torch.inference_mode()
def _head_probabilities(head: nn.Module, features: Tensor) -> np.ndarray:
    device = next(head.parameters()).device
    return torch.sigmoid(head(features.to(device)).logits).cpu().numpy()


def train(settings: TrainSettings) -> tuple[CheckpointInfo, Evaluation]:
    """Run all three stages and write the checkpoint; returns its info and the test scores.

    Started by torchrun, every process runs this and gets rank 0's result; only rank 0 writes.
    """
    return train_heads(settings, {settings.model.head.kind: settings.out})[0]


def train_heads(
    settings: TrainSettings, outs: Mapping[str, Path]
) -> list[tuple[CheckpointInfo, Evaluation]]:
    """Stages 1 and 2 once, then stage 3 for each head kind in ``outs`` (AnaXNet's or a
    baseline's, :mod:`.model.baselines`) on the same region features, each written to its path:
    the paper's comparison, where every head reads the same Faster R-CNN's features.

    A head kind's model gets its Table 3 name unless ``settings`` names the model itself and
    trains one head.
    """
    with runtime(settings.device, settings.amp) as rt:
        # torchvision's RPN and RoI samplers draw from the global generator: seed it, per rank
        torch.manual_seed(settings.seed + rt.rank)
        if rt.is_main:
            settings.work_dir.mkdir(parents=True, exist_ok=True)
        splits = _load_splits(settings, rt)
        regions = None
        if any(kind in LOCALISING_KINDS for kind in outs):
            regions = _region_stage(settings, splits, rt)
        results = []
        for kind, out in outs.items():
            model = replace(settings.model, head=replace(settings.model.head, kind=kind))
            if len(outs) > 1:
                model = replace(model, name=HEAD_NAMES[kind])
            one = replace(settings, model=model, out=out)
            if regions is not None and kind in LOCALISING_KINDS:
                results.append(_head_stage(one, regions, rt))
            else:
                results.append(_global_view_stage(one, splits, rt))
        return results


@dataclass(frozen=True)
class _Regions:
    """Stages 1 and 2: the splits, the trained detector (on the CPU), every split's region
    arrays and labels, and the detector's validation IoU."""

    splits: dict[str, list[Sample]]
    detector: FasterRCNN
    arrays: dict[str, RegionArrays]
    labels: dict[str, np.ndarray]
    valid_iou: float


def _load_splits(settings: TrainSettings, rt: Runtime) -> dict[str, list[Sample]]:
    return {
        name: load_split(
            ImaGenomeDataset(settings.data, name, image_root=settings.image_root),
            settings.model.detector.image_size,
            settings.limit,
            settings.progress and rt.is_main,
        )
        for name in ("train", "valid", "test")
    }


def _region_stage(
    settings: TrainSettings, splits: dict[str, list[Sample]], rt: Runtime
) -> _Regions:
    detector, valid_iou = train_detector(settings, splits["train"], splits["valid"], rt)
    arrays = {name: extract_split(detector, settings, s, rt) for name, s in splits.items()}
    labels = {name: np.stack([s.labels for s in samples]) for name, samples in splits.items()}
    return _Regions(splits, detector.cpu(), arrays, labels, valid_iou)


def _head_stage(
    settings: TrainSettings, regions: _Regions, rt: Runtime
) -> tuple[CheckpointInfo, Evaluation]:
    """Stage 3 for ``settings.model``'s head, then thresholds, test scores and checkpoint."""
    arrays, labels = regions.arrays, regions.labels
    settings = replace(settings, model=_graphs(settings.model, labels["train"]))
    head = train_head(
        settings, arrays["train"], labels["train"], arrays["valid"], labels["valid"], rt
    )
    result = None
    if rt.is_main:
        result = _finish(settings, rt, regions, head)
    return rt.broadcast(result)  # the others wait here while rank 0 writes


def _global_view_stage(
    settings: TrainSettings, splits: dict[str, list[Sample]], rt: Runtime
) -> tuple[CheckpointInfo, Evaluation]:
    """GlobalView, the image-level baseline: a DenseNet169 trained on the whole images with
    the detector's schedule (epochs, AdamW one-cycle peak, images per step), a CNN over the
    same images; the epoch with the best validation mean AUC is kept, scored image-level."""
    from .model.globalview import GlobalView, image_labels, predict_images

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = GlobalView(settings.model)
    model = rt.wrap(net.to(rt.device))
    train, valid = splits["train"], splits["valid"]
    step = _one_cycle(net, settings, len(train), rt)
    targets = torch.from_numpy(image_labels(np.stack([s.labels for s in train]))).float()
    valid_labels = image_labels(np.stack([s.labels for s in valid]))
    best_auc, best_state = -math.inf, _state(net)
    for epoch in range(settings.detector_epochs):
        order, jitter = _epoch_generators(settings.seed, epoch, rt)
        model.train()
        for batch in _batches(len(train), settings.batch_size, order, rt):
            images = [_jitter(train[i].image, jitter).float().to(rt.device) for i in batch]
            with rt.autocast():
                loss = F.binary_cross_entropy_with_logits(
                    model(images), targets[batch].to(rt.device)
                )
            step(loss)
        model.eval()
        if not rt.is_main:
            continue
        auc = _mean_auc(valid_labels[:, None], predict_images(net, valid)[:, None])
        log.info("globalview epoch %d: loss %.4f, validation mean AUC %.4f", epoch + 1,
                 loss.item(), auc)  # fmt: skip
        if auc > best_auc or math.isnan(best_auc):
            best_auc, best_state = auc, _state(net)
    result = None
    if rt.is_main:
        net.load_state_dict(best_state)
        result = _finish_global_view(settings, rt, net.cpu().eval(), splits)
    return rt.broadcast(result)


def _finish_global_view(
    settings: TrainSettings, rt: Runtime, net: nn.Module, splits: dict[str, list[Sample]]
) -> tuple[CheckpointInfo, Evaluation]:
    """Image-level thresholds on the validation split, test scores and the checkpoint."""
    from .model.globalview import image_labels, predict_images

    labels = {n: image_labels(np.stack([s.labels for s in splits[n]])) for n in ("valid", "test")}
    valid_probs = predict_images(net, splits["valid"])
    evaluation = evaluate_image_level(labels["test"], predict_images(net, splits["test"]))
    # one "region", the whole image: the arrays the calibration reads are [N, 1, M]
    info = _calibrate_and_save(
        settings, rt, lambda config: _configured(net, config), splits,
        labels["valid"][:, None], valid_probs[:, None], {"test": evaluation.to_dict()},
    )  # fmt: skip
    return info, evaluation


def _configured(net: nn.Module, config: ModelConfig) -> nn.Module:
    net.config = config
    return net


def _graphs(config: ModelConfig, train_labels: np.ndarray) -> ModelConfig:
    """``config`` with the graphs its head reads, built from the TRAINING labels: the region
    graph (eqs. 2-3; every checkpoint records it) and, for a CheXGCN head, the findings'."""
    adjacency = build_adjacency(train_labels, tau=config.graph.tau, rule=config.graph.rule)
    graphs: dict[str, Any] = {"adjacency": tuple(tuple(int(v) for v in row) for row in adjacency)}
    if config.head.kind == "chexgcn":
        findings = label_adjacency(
            train_labels, tau=config.head.label_tau, reweight=config.head.label_reweight
        )
        graphs["label_adjacency"] = tuple(tuple(float(v) for v in row) for row in findings)
    return replace(config, **graphs)


def _finish(
    settings: TrainSettings, rt: Runtime, regions: _Regions, head: nn.Module
) -> tuple[CheckpointInfo, Evaluation]:
    """Thresholds on the validation split, test scores and the checkpoint (rank 0 only)."""
    splits, arrays, labels = regions.splits, regions.arrays, regions.labels
    with torch.inference_mode():
        valid_probs = torch.sigmoid(head(arrays["valid"].features).logits).numpy()
        test_probs = torch.sigmoid(head(arrays["test"].features).logits).numpy()
    evaluation = evaluate_arrays(
        labels["test"],
        test_probs,
        arrays["test"].boxes,
        np.stack([s.boxes for s in splits["test"]]),
    )
    metrics = {"validation_detector_iou": round(regions.valid_iou, 4), "test": evaluation.to_dict()}

    def model(config: ModelConfig) -> nn.Module:
        return AnaXNet(config, detector=regions.detector, head=head).eval()

    info = _calibrate_and_save(settings, rt, model, splits, labels["valid"], valid_probs, metrics)
    return info, evaluation


def _calibrate_and_save(
    settings: TrainSettings,
    rt: Runtime,
    model: Callable[[ModelConfig], nn.Module],
    splits: dict[str, list[Sample]],
    valid_labels: np.ndarray,
    valid_probs: np.ndarray,
    metrics: dict[str, Any],
) -> CheckpointInfo:
    """Thresholds on the validation split ([N, regions, M] arrays), then the checkpoint of
    ``model(config with them)`` with its provenance and ``metrics`` (rank 0 only)."""
    rule = settings.calibration
    thresholds = choose_thresholds(valid_labels, valid_probs, rule)
    points = operating_points(valid_labels, valid_probs, thresholds, rule.level)
    return save_checkpoint(
        model(replace(settings.model, thresholds=thresholds)),  # type: ignore[arg-type]
        settings.out,
        provenance={
            **_provenance(settings, rt, {n: len(s) for n, s in splits.items()}),
            "calibration": calibration_record(
                rule,
                points,
                split="valid",
                data=str(settings.data),
                images=len(splits["valid"]),
                command=settings.command,
            ),
        },
        metrics=metrics,
    )


def _init_record(path: Path | None) -> dict[str, str] | str:
    """Where the detector's starting weights came from, with their file's hash."""
    from .model.checkpoint import sha256

    if path is None:
        return "random"
    weights = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    return {"file": str(path), "sha256": sha256(weights)}


def _provenance(settings: TrainSettings, rt: Runtime, counts: dict[str, int]) -> dict[str, Any]:
    from . import __version__

    return {
        "training_data": settings.training_data,
        "images": counts,
        "command": settings.command,
        "software": f"anaxreport {__version__}",
        "seed": settings.seed,
        "world_size": rt.world_size,
        "device": rt.device.type,
        "mixed_precision": str(rt.amp_dtype).removeprefix("torch.") if rt.amp_dtype else None,
        "batch_size_per_process": settings.batch_size,
        "detector_epochs": settings.detector_epochs,
        "detector_init": _init_record(settings.init_detector),
        "detector_finding_loss_weight": settings.finding_loss_weight,
        "head_epochs": settings.head_epochs,
        "optimiser": {
            "detector": f"AdamW one-cycle, max lr {settings.detector_lr}",
            "head": f"Adam, lr {settings.head_lr} (paper)",
        }
        if settings.model.head.kind in LOCALISING_KINDS
        else {"globalview": f"AdamW one-cycle, max lr {settings.detector_lr}"},
    }
