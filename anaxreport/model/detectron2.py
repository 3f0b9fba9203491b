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
import string
from collections import OrderedDict
from collections.abc import Mapping
from functools import cache
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

#: (detectron2 name, torchvision name) of each kind of tensor, read both ways. Fields in braces
#: are copied across, except that detectron2 numbers ResNet stages res2..res5 and FPN levels
#: 2..5 where torchvision has layer1..4 and blocks 0..3 (:data:`_SHIFTS`).
_NAMES: tuple[tuple[str, str], ...] = (
    ("backbone.bottom_up.stem.conv1.weight", "backbone.body.conv1.weight"),
    ("backbone.bottom_up.stem.conv1.norm.{part}", "backbone.body.bn1.{part}"),
    ("backbone.bottom_up.res{stage}.{block}.conv{conv}.weight",
     "backbone.body.layer{layer}.{block}.conv{conv}.weight"),
    ("backbone.bottom_up.res{stage}.{block}.conv{conv}.norm.{part}",
     "backbone.body.layer{layer}.{block}.bn{conv}.{part}"),
    ("backbone.bottom_up.res{stage}.{block}.shortcut.weight",
     "backbone.body.layer{layer}.{block}.downsample.0.weight"),
    ("backbone.bottom_up.res{stage}.{block}.shortcut.norm.{part}",
     "backbone.body.layer{layer}.{block}.downsample.1.{part}"),
    ("backbone.fpn_lateral{level}.{part}", "backbone.fpn.inner_blocks.{index}.0.{part}"),
    ("backbone.fpn_output{level}.{part}", "backbone.fpn.layer_blocks.{index}.0.{part}"),
    ("proposal_generator.rpn_head.conv.{part}", "rpn.head.conv.0.0.{part}"),
    ("proposal_generator.rpn_head.objectness_logits.{part}", "rpn.head.cls_logits.{part}"),
    ("proposal_generator.rpn_head.anchor_deltas.{part}", "rpn.head.bbox_pred.{part}"),
    ("roi_heads.box_head.fc1.{part}", "roi_heads.box_head.fc6.{part}"),
    ("roi_heads.box_head.fc2.{part}", "roi_heads.box_head.fc7.{part}"),
    (_CLASSIFIER + ".{part}", _CLASSIFIER + ".{part}"),
    (_REGRESSION + ".{part}", _REGRESSION + ".{part}"),
)  # fmt: skip
#: A numbered field of one side → (the other side's field, what to add).
_SHIFTS = {"stage": ("layer", -1), "layer": ("stage", 1), "level": ("index", -2),
           "index": ("level", 2)}  # fmt: skip
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
        target = _renamed(name, to_torchvision=True)
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
        target = _renamed(name, to_torchvision=False)
        if target is None:
            raise WeightsError(f"not our Faster R-CNN's tensor: {name}")
        converted[target] = value.detach().clone()
    for part in ("weight", "bias"):
        scores = converted[f"{_CLASSIFIER}.{part}"]  # background first -> last
        converted[f"{_CLASSIFIER}.{part}"] = torch.cat([scores[1:], scores[:1]])
        converted[f"{_REGRESSION}.{part}"] = converted[f"{_REGRESSION}.{part}"][4:].clone()
    return converted


def _renamed(name: str, to_torchvision: bool) -> str | None:
    """``name`` in the other library's naming (:data:`_NAMES`), or None if no pair knows it."""
    for pair in _NAMES:
        source, target = pair if to_torchvision else pair[::-1]
        match = _pattern(source).fullmatch(name)
        if match is not None:
            fields = match.groupdict()
            for key, value in match.groupdict().items():
                if key in _SHIFTS:
                    other, shift = _SHIFTS[key]
                    fields[other] = str(int(value) + shift)
            return target.format(**fields)
    return None


@cache
def _pattern(template: str) -> re.Pattern[str]:
    """The regex of a name template: ``{part}`` any word, other fields numbers."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field:
            parts.append(rf"(?P<{field}>\w+)" if field == "part" else rf"(?P<{field}>\d+)")
    return re.compile("".join(parts))


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
