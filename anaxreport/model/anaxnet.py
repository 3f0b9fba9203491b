"""AnaXNet: the detector and the anatomical dependency head (:mod:`.head`), composed.

The detector gives one 1024-d feature per region (:mod:`.detector`, torchvision's Faster
R-CNN); the head refines them over the region graph and classifies (paper eqs. 1, 4, 5).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from .baselines import build_head
from .config import ModelConfig
from .detector import build_detector, extract_regions
from .head import AnaXNetHead, AnaXNetOutput, HeadOutput, NormalizedGraphConv, RawGraphConv

__all__ = [
    "AnaXNet",
    "AnaXNetHead",
    "AnaXNetOutput",
    "HeadOutput",
    "NormalizedGraphConv",
    "RawGraphConv",
]


class AnaXNet(nn.Module):
    """Detector → per-region features → anatomical dependency head.

    Composed from swappable parts (torchvision style): pass a trained ``detector`` or ``head``,
    or let them be built from ``config`` (whose ``head.kind`` may name a baseline head,
    :mod:`.baselines`). Images are [C, H, W] tensors in [0, 1] already
    resized to ``config.detector.image_size`` on their longest side (see
    :func:`anaxreport.model.preprocess.to_model_input`).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        detector: FasterRCNN | None = None,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        k = len(config.regions)
        self.detector = detector if detector is not None else build_detector(config.detector, k)
        self.head = head if head is not None else build_head(config)

    def forward(self, images: list[Tensor]) -> AnaXNetOutput:
        regions = extract_regions(
            self.detector,
            images,
            num_regions=len(self.config.regions),
            threshold=self.config.detector.score_threshold,
        )
        out = self.head(regions.features)
        return AnaXNetOutput(
            boxes=regions.boxes,
            scores=regions.scores,
            found=regions.found,
            logits=out.logits,
            attention=out.attention,
        )
