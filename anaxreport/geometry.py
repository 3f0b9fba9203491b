"""Boxes and the one mapping between source pixels and the model's input grid.

Boxes are ``(x1, y1, x2, y2)`` in source pixel coordinates with the origin at the top-left
corner of the top-left pixel (DICOM PS3.3 C.18.6.1.2 for SCOORD), x along columns, y along rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BoundingBox", "Resize"]


@dataclass(frozen=True)
class BoundingBox:
    """An axis-aligned box in source pixels; valid once constructed."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        values = (self.x1, self.y1, self.x2, self.y2)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"BoundingBox coordinates must be finite, got {values}")
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"BoundingBox needs x1 <= x2 and y1 <= y2, got {values}")

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def clip(self, columns: int, rows: int) -> BoundingBox | None:
        """The part of the box inside a ``columns`` × ``rows`` image, or None if nothing is."""
        x1, x2 = min(max(self.x1, 0.0), columns), min(max(self.x2, 0.0), columns)
        y1, y2 = min(max(self.y1, 0.0), rows), min(max(self.y2, 0.0), rows)
        if x2 <= x1 or y2 <= y1:
            return None
        return BoundingBox(x1, y1, x2, y2)

    def iou(self, other: BoundingBox) -> float:
        """Intersection over union with another box (0 when both are empty)."""
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def polyline(self) -> tuple[tuple[float, float], ...]:
        """The closed 5-point (column, row) outline used by SR SCOORD and GSPS POLYLINE."""
        return (
            (self.x1, self.y1),
            (self.x2, self.y1),
            (self.x2, self.y2),
            (self.x1, self.y2),
            (self.x1, self.y1),
        )


@dataclass(frozen=True)
class Resize:
    """How a source image of ``source_size`` was resized to the model's ``model_size``.

    Sizes are ``(rows, columns)``. Each axis has its own scale, so aspect-preserving and
    stretching resizes are both described exactly; a model-grid coordinate x maps to
    ``x * source_columns / model_columns`` in source pixels (pixel-corner convention, no
    half-pixel offset).
    """

    source_size: tuple[int, int]
    model_size: tuple[int, int]

    def __post_init__(self) -> None:
        if min(*self.source_size, *self.model_size) <= 0:
            raise ValueError(
                f"Resize sizes must be positive, got source {self.source_size}, "
                f"model {self.model_size}"
            )

    @classmethod
    def keep_aspect(cls, source_size: tuple[int, int], longest_side: int) -> Resize:
        """Scale so the longer side becomes ``longest_side``, keeping the aspect ratio."""
        rows, columns = source_size
        scale = longest_side / max(rows, columns)
        model = (max(1, round(rows * scale)), max(1, round(columns * scale)))
        return cls(source_size, model)

    @property
    def scale_x(self) -> float:
        """Source columns per model column."""
        return self.source_size[1] / self.model_size[1]

    @property
    def scale_y(self) -> float:
        """Source rows per model row."""
        return self.source_size[0] / self.model_size[0]

    def to_source(self, box: tuple[float, float, float, float]) -> BoundingBox:
        """Map a model-grid box to source pixels, clipped to the source image."""
        x1, y1, x2, y2 = box
        rows, columns = self.source_size
        mapped = BoundingBox(
            min(max(x1 * self.scale_x, 0.0), columns),
            min(max(y1 * self.scale_y, 0.0), rows),
            min(max(x2 * self.scale_x, 0.0), columns),
            min(max(y2 * self.scale_y, 0.0), rows),
        )
        return mapped

    def to_model(self, box: BoundingBox) -> tuple[float, float, float, float]:
        """Map a source-pixel box to the model grid (used for training targets)."""
        return (
            box.x1 / self.scale_x,
            box.y1 / self.scale_y,
            box.x2 / self.scale_x,
            box.y2 / self.scale_y,
        )
