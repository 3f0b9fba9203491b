"""Images and truth of a dataset split, read once at model size for training and scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import InvalidInputError
from ..geometry import BoundingBox, Resize
from ..ingest import read_radiograph
from ..model.preprocess import to_model_input
from .imagenome import ImaGenomeDataset

__all__ = ["PICTURE_SUFFIXES", "Sample", "load_split", "read_pixels", "source_boxes"]

#: Image files of a dataset that are not DICOM (MIMIC-CXR-JPG's, and PNGs of the same kind).
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True, eq=False)
class Sample:
    """One image at model size with its truth: ``image`` [1, h, w] float16 in [0, 1],
    ``boxes`` [k, 4] in source pixels (NaN rows where the scene graph has none), ``labels``
    [k, M] 0/1."""

    image: Tensor
    resize: Resize
    boxes: np.ndarray
    labels: np.ndarray

    def target(self) -> dict[str, Tensor]:
        """torchvision's detection target in model-grid coordinates."""
        keep = ~np.isnan(self.boxes).any(axis=1)
        model_boxes = [
            self.resize.to_model(BoundingBox(*map(float, box))) for box in self.boxes[keep]
        ]
        return {
            "boxes": torch.tensor(model_boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.from_numpy(np.flatnonzero(keep) + 1).to(torch.int64),
            "findings": torch.from_numpy(self.labels[keep]).to(torch.float32),
        }


def load_split(
    dataset: ImaGenomeDataset, image_size: int, limit: int | None = None, progress: bool = False
) -> list[Sample]:
    """Read, window and resize every image of a split once; training reuses them each epoch."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    samples = []
    for i in tqdm(range(count), desc=f"load {dataset.split}", disable=not progress):
        _, graph = dataset[i]
        pixels = read_pixels(dataset.image_path(i))
        image, resize = to_model_input(pixels, image_size)
        boxes = graph.clipped(pixels.shape[1], pixels.shape[0]).boxes_array()
        samples.append(Sample(image[:1].to(torch.float16), resize, boxes, graph.labels_array()))
    return samples


def read_pixels(path: Path) -> np.ndarray:
    """A dataset's image as display pixels [rows, columns], float32 in [0, 1], 1 = white.

    DICOM goes through :func:`~anaxreport.ingest.read_radiograph` (modality and VOI LUT,
    MONOCHROME1). A JPEG or PNG, as MIMIC-CXR-JPG gives Chest ImaGenome's images, is read as
    stored: its makers windowed the DICOM, inverted MONOCHROME1 and wrote 8-bit display grey
    levels, and the scene graphs' boxes are on those pixels.
    """
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        return read_radiograph(path).pixels
    from PIL import Image

    try:
        with Image.open(path) as picture:
            if picture.mode not in ("L", "I;16"):
                picture = picture.convert("L")  # colour or other modes: their luminance
            grey = np.asarray(picture)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        message = f"{path}: cannot read the image: {exc}"
        raise InvalidInputError(message, reason="undecodable") from exc
    return grey.astype(np.float32) / np.float32(np.iinfo(grey.dtype).max)


def source_boxes(
    boxes: Tensor | np.ndarray, found: Tensor | np.ndarray, resize: Resize
) -> np.ndarray:
    """Model-grid boxes [k, 4] of one image → source pixels, NaN rows where not found."""
    return np.array(
        [
            resize.to_source(tuple(b)).as_tuple() if f else (np.nan,) * 4
            for b, f in zip(boxes.tolist(), found.tolist(), strict=True)
        ],
        dtype=np.float64,
    ).reshape(-1, 4)
