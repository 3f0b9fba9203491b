"""detectron2's Faster R-CNN R-FPN weights in our torchvision detector's layout, and back.

The authors trained their detector with detectron2; torchvision's Faster R-CNN is the same
architecture, so a detectron2 checkpoint's tensors can take the places of ours one for one. Two
conventions differ and are converted:

* the box classifier's background class is detectron2's LAST row (its ``K + 1`` scores are the
  K regions, then background) and torchvision's FIRST;
* detectron2's class-specific box regression has no background rows (``4 K`` outputs), where
  torchvision's has ``4 (K + 1)``: the background's four rows, never used to decode a box, are
  zero here (and a class-agnostic regression, ``4`` outputs, is repeated for every class).

Norm layers become FrozenBatchNorm (``norm = "frozen_batch"``), detectron2's default, which
computes the same at inference as any batch norm.

What a checkpoint's tensors cannot say, the detector's config reproduces
(:class:`~.config.DetectorConfig`; ``train``'s "detector conventions" flags): a ResNet that
strides in a bottleneck's first 1 × 1 convolution (``stride_in_1x1``, detectron2's
``STRIDE_IN_1X1``, its default with MSRA weights), anchors from 32 px (``anchor_base``) that are
not rounded to whole pixels (``round_anchors``), detectron2's three aspect ratios, its
``ROIAlignV2`` region pooling, half-pixel aligned with adaptive sampling (``roi_align``), and
its per-channel input normalisation of BGR 0-255 images (``pixel_mean`` and ``pixel_std`` per
channel, over 255: the grey image goes to all three channels, so their order is the weights').
The computations then match detectron2's up to its level assignment's epsilon (1e-8 inside the
logarithm, torchvision's 1e-6 outside), which can move a box sized exactly at a level's
boundary to the other level, and its RPN's minimum box size (0 against 1e-3 px).

Files are read without running code from them: ``.pth`` by torch's weights-only loader,
``.pkl`` (detectron2's own pickles of numpy arrays) by an unpickler that refuses every global
but the few that rebuild arrays, and ``.safetensors``.
"""

from __future__ import annotations

import codecs
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import WeightsError

try:  # numpy 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray as _multiarray

__all__ = ["detector_weights", "from_detectron2", "read_detectron2", "to_detectron2"]

_CLASSIFIER = "roi_heads.box_predictor.cls_score"
_REGRESSION = "roi_heads.box_predictor.bbox_pred"

_Rename = tuple[str, Callable[[re.Match[str]], str]]

#: detectron2 name → torchvision name, one rule per kind of tensor. detectron2 counts ResNet
#: stages res2..res5 and FPN levels 2..5; torchvision layer1..4 and blocks 0..3.
_FROM_DETECTRON2: tuple[_Rename, ...] = (
    (r"backbone\.bottom_up\.stem\.conv1\.weight", lambda m: "backbone.body.conv1.weight"),
    (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", lambda m: f"backbone.body.bn1.{m[1]}"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(\w+)",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    (r"backbone\.fpn_lateral(\d)\.(\w+)",
     lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (r"backbone\.fpn_output(\d)\.(\w+)",
     lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (r"proposal_generator\.rpn_head\.conv\.(\w+)", lambda m: f"rpn.head.conv.0.0.{m[1]}"),
    (r"proposal_generator\.rpn_head\.objectness_logits\.(\w+)",
     lambda m: f"rpn.head.cls_logits.{m[1]}"),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.(\w+)", lambda m: f"rpn.head.bbox_pred.{m[1]}"),
    (r"roi_heads\.box_head\.fc1\.(\w+)", lambda m: f"roi_heads.box_head.fc6.{m[1]}"),
    (r"roi_heads\.box_head\.fc2\.(\w+)", lambda m: f"roi_heads.box_head.fc7.{m[1]}"),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(\w+)",
     lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}"),
)  # fmt: skip
#: torchvision name → detectron2 name: the inverse of :data:`_FROM_DETECTRON2`.
_TO_DETECTRON2: tuple[_Rename, ...] = (
    (r"backbone\.body\.conv1\.weight", lambda m: "backbone.bottom_up.stem.conv1.weight"),
    (r"backbone\.body\.bn1\.(\w+)", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
    (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(\w+)",
     lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}"),
    (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(\w+)",
     lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}"),
    (r"rpn\.head\.conv\.0\.0\.(\w+)", lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
    (r"rpn\.head\.cls_logits\.(\w+)",
     lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}"),
    (r"rpn\.head\.bbox_pred\.(\w+)",
     lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}"),
    (r"roi_heads\.box_head\.fc6\.(\w+)", lambda m: f"roi_heads.box_head.fc1.{m[1]}"),
    (r"roi_heads\.box_head\.fc7\.(\w+)", lambda m: f"roi_heads.box_head.fc2.{m[1]}"),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(\w+)",
     lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}"),
)  # fmt: skip
_NUMPY_CORES = ("numpy.core", "numpy._core")
#: Buffers detectron2 may keep that are no weights (its input normalisation).
_IGNORED = ("pixel_mean", "pixel_std")


def from_detectron2(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """A detectron2 Faster R-CNN R-FPN state dict (tensors or numpy arrays) as the state dict
    of our torchvision detector (:func:`~.detector.build_detector` with ``norm =
    "frozen_batch"``), float32. Refuses names it does not know, naming them."""
    converted: dict[str, Tensor] = {}
    unknown = []
    for name, value in state.items():
        if name in _IGNORED:
            continue
        target = _renamed(name, _FROM_DETECTRON2)
        if target is None:
            unknown.append(name)
        elif not target.endswith(".num_batches_tracked"):  # a counter (SyncBN), no weight
            tensor = value if isinstance(value, Tensor) else torch.tensor(np.asarray(value))
            converted[target] = tensor.float().clone()
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise WeightsError(
            f"not a detectron2 Faster R-CNN R-FPN state dict: {len(unknown)} unknown tensors "
            f"({shown}{', ...' if len(unknown) > 5 else ''})"
        )
    for part in ("weight", "bias"):
        key = f"{_CLASSIFIER}.{part}"
        if key not in converted or f"{_REGRESSION}.{part}" not in converted:
            raise WeightsError(f"not a detectron2 Faster R-CNN: no {key} / {_REGRESSION}.{part}")
        scores = converted[key]  # background last -> first
        converted[key] = torch.cat([scores[-1:], scores[:-1]])
        classes = len(scores) - 1
        deltas = converted[f"{_REGRESSION}.{part}"]
        if len(deltas) == 4:  # class-agnostic: the same regression for every class
            deltas = deltas.repeat(classes, *([1] * (deltas.dim() - 1)))
        if len(deltas) != 4 * classes:
            raise WeightsError(
                f"{_REGRESSION}.{part} has {len(deltas)} rows; {classes} classes need "
                f"{4 * classes} (or 4, class-agnostic)"
            )
        converted[f"{_REGRESSION}.{part}"] = torch.cat([torch.zeros_like(deltas[:4]), deltas])
    return converted


def to_detectron2(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our torchvision detector's state dict in detectron2's names and conventions (the
    inverse of :func:`from_detectron2`; the background's unused regression rows are dropped
    and batch norms' ``num_batches_tracked`` counters, which detectron2 has not, too)."""
    converted: dict[str, Tensor] = {}
    for name, value in state.items():
        if name.endswith(".num_batches_tracked"):
            continue
        target = _renamed(name, _TO_DETECTRON2)
        if target is None:
            raise WeightsError(f"not our Faster R-CNN's tensor: {name}")
        converted[target] = value.detach().clone()
    for part in ("weight", "bias"):
        scores = converted[f"{_CLASSIFIER}.{part}"]  # background first -> last
        converted[f"{_CLASSIFIER}.{part}"] = torch.cat([scores[1:], scores[:1]])
        converted[f"{_REGRESSION}.{part}"] = converted[f"{_REGRESSION}.{part}"][4:].clone()
    return converted


def _renamed(name: str, rules: tuple[_Rename, ...]) -> str | None:
    """``name`` by the first rule whose pattern matches it whole, or None."""
    for pattern, rename in rules:
        match = re.fullmatch(pattern, name)
        if match is not None:
            return rename(match)
    return None


def read_detectron2(path: str | Path) -> dict[str, Any]:
    """A detectron2 checkpoint's model state dict from ``.pth``, ``.pkl`` or ``.safetensors``,
    read without running anything the file holds (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        if path.suffix == ".pth":
            data = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".pkl":
            with path.open("rb") as handle:
                data = _ArraysOnly(handle, encoding="latin1").load()  # Python 2's too
        else:
            raise WeightsError(f"{path}: a detectron2 checkpoint is .pth, .pkl or .safetensors")
    except WeightsError:
        raise
    except Exception as exc:  # torch's refusals, truncation, not a pickle at all
        raise WeightsError(f"{path}: cannot read it safely: {str(exc).splitlines()[0]}") from exc
    model = data.get("model", data) if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping):
        raise WeightsError(f"{path}: holds no state dict (a mapping of names to tensors)")
    return dict(model)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that can build numpy arrays, dicts and plain values, and nothing else: a
    file naming any other global (a function to call, a class to build) is refused before
    anything of it runs."""

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 writes bytes
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # numpy 2 pickles name numpy._core, numpy 1 numpy.core: the same functions
        **{(f"{m}.multiarray", "_reconstruct"): _multiarray._reconstruct for m in _NUMPY_CORES},
        **{(f"{m}.multiarray", "scalar"): _multiarray.scalar for m in _NUMPY_CORES},
    }

    def find_class(self, module: str, name: str) -> Any:
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise WeightsError(f"refused to load {module}.{name}: weights hold arrays, not code")
        return found


def detector_weights(path: str | Path, target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The weights in ``path`` for a detector whose state dict is ``target``: a detectron2
    checkpoint (``.pth``, ``.pkl``, ``.safetensors`` in its names), or an anaxreport checkpoint
    (``.json``), whose ``detector.*`` tensors are taken. Batch-norm counters ``target`` has and
    the file has not start at 0. Refuses, in one line, weights that do not fit ``target``."""
    from .checkpoint import read_weights

    path = Path(path)
    if path.suffix == ".json":
        state, _ = read_weights(path)
        weights = {
            k.removeprefix("detector."): v for k, v in state.items() if k.startswith("detector.")
        }
    else:
        weights = from_detectron2(read_detectron2(path))
    for name, tensor in target.items():
        if name.endswith(".num_batches_tracked") and name not in weights:
            weights[name] = torch.zeros_like(tensor)
    missing = sorted(set(target) - set(weights))
    extra = sorted(set(weights) - set(target))
    wrong = sorted(n for n in set(target) & set(weights) if weights[n].shape != target[n].shape)
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        what = "missing" if missing else "not in this detector" if extra else "of another shape"
        raise WeightsError(
            f"{path}: the weights do not fit the detector the settings build "
            f"({len(missing)} missing, {len(extra)} extra, {len(wrong)} of another shape; "
            f"e.g. {first}, {what}): check --backbone, --fpn-channels and the anchors"
        )
    return weights
