"""The inference form of a trained AnaXNet: the same function, less work per image.

Training keeps BatchNorm as a separate layer; at inference its statistics are constants, so
each BatchNorm that follows a convolution is folded into that convolution's weights and bias
(one pass over the feature map instead of two). The result equals the plain model to float
rounding; ``tests/test_inference.py`` checks boxes and probabilities on the samples.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from .anaxnet import AnaXNet

__all__ = ["fold_batch_norms", "prepare_for_inference"]

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
        norm.weight, norm.bias,
    )  # fmt: skip
    conv.weight, conv.bias = weight, bias
    return conv


def fold_batch_norms(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm that directly follows a convolution in torchvision's
    ResNet layout (``convN`` then ``bnN`` in a block or the stem; ``Sequential(conv, bn)`` in a
    downsample path) into the convolution; the norm becomes an identity. Returns the count."""
    folded = 0
    for parent in list(module.modules()):
        for index in range(1, 4):
            conv, norm = getattr(parent, f"conv{index}", None), getattr(parent, f"bn{index}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, _NORMS):
                _fold(conv, norm)
                setattr(parent, f"bn{index}", nn.Identity())
                folded += 1
        if isinstance(parent, nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], nn.Conv2d) and isinstance(parent[i + 1], _NORMS):
                    _fold(parent[i], parent[i + 1])
                    parent[i + 1] = nn.Identity()
                    folded += 1
    return folded


def prepare_for_inference(model: AnaXNet) -> AnaXNet:
    """An eval-mode copy of ``model`` with its BatchNorms folded (``model`` is not changed)."""
    prepared = copy.deepcopy(model).eval()
    for parameter in prepared.parameters():
        parameter.requires_grad_(False)
    fold_batch_norms(prepared.detector.backbone)
    return prepared
