"""A random-weight AnaXNet checkpoint small enough for CLI, batch and calibration tests."""

from __future__ import annotations

from pathlib import Path

import torch

from anaxreport.model.anaxnet import AnaXNet
from anaxreport.model.checkpoint import save_checkpoint
from anaxreport.model.config import DetectorConfig, ModelConfig

__all__ = ["tiny_checkpoint"]


def tiny_checkpoint(path: Path, fpn_channels: int = 16, image_size: int = 96) -> Path:
    """Write ``path`` (.json + .safetensors): ResNet-18-FPN, every box kept (threshold 0), the
    same weights every time (seeded without touching the global generator)."""
    config = ModelConfig(
        name="anaxnet-test",
        version="t1",
        detector=DetectorConfig(
            backbone="resnet18",
            fpn_channels=fpn_channels,
            image_size=image_size,
            score_threshold=0.0,
        ),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AnaXNet(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path, provenance={"training_data": "random weights"})
    return path
