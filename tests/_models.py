"""A random-weight AnaXNet checkpoint small enough for CLI, batch and calibration tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anaxreport.model.anaxnet import AnaXNet
from anaxreport.model.checkpoint import save_checkpoint
from anaxreport.model.config import DetectorConfig, ModelConfig

__all__ = ["EngineAsTorch", "inference_model", "tiny_checkpoint"]


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


class EngineAsTorch:
    """The ONNX Runtime engine of a plain model, called and answering as the torch inference
    model does (torch images in, tensors out), so that one test holds both to one reference."""

    runtime = "onnxruntime"

    def __init__(self, model: AnaXNet) -> None:
        from anaxreport.model.engine import OnnxModel

        state = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
        self.engine = OnnxModel(model.config, state)

    def __call__(self, images: list[torch.Tensor], explain: bool = False):
        from anaxreport.model.head import AnaXNetOutput

        out = self.engine([image.numpy() for image in images], explain=explain)
        return AnaXNetOutput(**{
            name: None if value is None else torch.from_numpy(np.asarray(value))
            for name, value in vars(out).items()
        })  # fmt: skip


def inference_model(model: AnaXNet, runtime: str):
    """``model``'s inference form on ``runtime``: ``torch``, ``onnxruntime`` or ``auto``
    (the engine, but torch where GroupNorm does not fold)."""
    from anaxreport.model.inference import InferenceModel

    if runtime == "onnxruntime" or (runtime == "auto" and model.config.detector.norm != "group"):
        return EngineAsTorch(model)
    return InferenceModel.from_model(model)
