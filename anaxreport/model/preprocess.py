"""From a radiograph's display pixels to the detector's input tensor, and the way back."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..geometry import Resize

__all__ = ["to_model_input"]


def to_model_input(pixels: np.ndarray, image_size: int) -> tuple[Tensor, Resize]:
    """Resize [rows, columns] display pixels in [0, 1] so the longest side is ``image_size``.

    Keeps the aspect ratio (no padding: Faster R-CNN takes any size) and replicates the grey
    channel three times, as ImageNet-shaped backbones expect. Returns the [3, h, w] tensor and
    the :class:`Resize` that maps model-grid boxes back to source pixels.
    """
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2-D [rows, columns], got shape {pixels.shape}")
    resize = Resize.keep_aspect(pixels.shape, image_size)
    image = torch.from_numpy(np.array(pixels, dtype=np.float32))[None, None]
    if resize.model_size != resize.source_size:
        image = F.interpolate(
            image, size=resize.model_size, mode="bilinear", antialias=True, align_corners=False
        )
    return image[0].clamp_(0.0, 1.0).expand(3, -1, -1), resize
