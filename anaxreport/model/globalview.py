"""GlobalView: the paper's image-level baseline, a DenseNet169 over the whole film (Table 3).

It sees the image, not the regions: it gives each of the 9 findings one probability for the
whole study and no box, so it is scored image-level (a finding is present in an image when any
region carries it) and it cannot make a report, which names regions. Its checkpoint is an
ordinary one whose ``head.kind`` is ``globalview``; ``detector.image_size`` and the pixel
normalisation are the input's, as for AnaXNet, and the rest of the detector config is unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import densenet169

from ..errors import WeightsError
from ..evaluate import Evaluation, evaluate_image_level
from .checkpoint import CheckpointInfo, fill, read_weights
from .config import ModelConfig

__all__ = [
    "GlobalView",
    "class_activation_maps",
    "evaluate_global_view",
    "image_labels",
    "load_global_view",
    "predict_images",
]


class GlobalView(nn.Module):
    """DenseNet169 (randomly initialised: no weights can be downloaded here) → 9 logits.

    Images are [1, H, W] in [0, 1] resized to ``image_size`` on their longest side (the
    samples' and the reporter's model input); each is normalised as the detector's input,
    repeated to 3 channels and padded to a square of ``image_size`` at the bottom and right.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.net = densenet169(weights=None, num_classes=len(config.findings))
        detector = config.detector
        self.register_buffer("mean", torch.tensor(detector.channel_means)[:, None, None], False)
        self.register_buffer("std", torch.tensor(detector.channel_stds)[:, None, None], False)

    def batch(self, images: Sequence[Tensor]) -> Tensor:
        """The padded, normalised [B, 3, S, S] input of ``images``."""
        size = self.config.detector.image_size
        weight = self.net.features.conv0.weight
        batch = weight.new_zeros((len(images), 3, size, size))
        for slot, image in zip(batch, images, strict=True):
            height, width = image.shape[-2:]
            pixels = image.to(slot.dtype).expand(3, -1, -1)
            slot[:, :height, :width] = (pixels - self.mean) / self.std
        return batch

    def forward(self, images: Sequence[Tensor]) -> Tensor:
        """Logits [B, M]: one per finding for each whole image."""
        return self.net(self.batch(images))


def image_labels(labels: np.ndarray) -> np.ndarray:
    """Image-level labels [N, M] from region labels [N, k, M]: present in any region."""
    return np.asarray(labels).any(axis=1)


@torch.inference_mode()
def predict_images(model: GlobalView, samples: Sequence[Any], batch_size: int = 8) -> np.ndarray:
    """Probabilities [N, M] for loaded samples (:func:`~anaxreport.data.loader.load_split`)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(samples), batch_size):
        images = [s.image.float().to(device) for s in samples[start : start + batch_size]]
        out.append(torch.sigmoid(model(images)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.config.findings)))


def load_global_view(path: str | Path) -> tuple[GlobalView, CheckpointInfo]:
    """A GlobalView checkpoint (hash checked, nothing unpickled), in eval mode, and its info."""
    state, info = read_weights(path)
    if info.config.head.kind != "globalview":
        raise WeightsError(f"{path}: a {info.config.head.kind} checkpoint, not GlobalView")
    return fill(GlobalView(info.config), state, info), info


def evaluate_global_view(model: GlobalView, samples: Sequence[Any]) -> Evaluation:
    """Table 3's numbers for GlobalView: image-level AUCs (it does not localise)."""
    labels = image_labels(np.stack([s.labels for s in samples]))
    return evaluate_image_level(labels, predict_images(model, samples))


@torch.inference_mode()
def class_activation_maps(model: GlobalView, image: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each finding's class activation map over ``image`` [1, h, w] (the model input), in
    [0, 1] and cropped to the image ([M, h, w]), and the finding probabilities [M].

    DenseNet ends in global average pooling and one linear layer, so Grad-CAM's channel weights
    (the gradients, averaged over the map) are the classifier's weights over the map's size,
    and Grad-CAM is CAM (Zhou et al. 2016): ReLU(Σ_c W_mc A_c), with no backward pass.
    """
    model.eval()
    batch = model.batch([image])
    features = F.relu(model.net.features(batch))  # [1, C, s, s], as DenseNet's forward
    logits = model.net.classifier(F.adaptive_avg_pool2d(features, 1).flatten(1))
    maps = F.relu(torch.einsum("mc,bchw->bmhw", model.net.classifier.weight, features))
    maps = F.interpolate(maps, size=batch.shape[-2:], mode="bilinear", align_corners=False)
    height, width = image.shape[-2:]
    maps = maps[0, :, :height, :width]
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    return (maps / peak).numpy(), torch.sigmoid(logits[0]).numpy()
