"""The result objects every outlet reads: per-region findings, image facts and provenance.

Plain frozen dataclasses validated at construction (STYLE.md §2); no tensors, no pydicom objects
escape here except the header copy that DICOM writers need.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .geometry import BoundingBox
from .ingest import StudyIdentity
from .vocab import FINDINGS, REGIONS, Finding, Region, finding, region

__all__ = ["DISCLAIMER", "ImageInfo", "Provenance", "RegionResult", "Report"]

DISCLAIMER = (
    "Research software output. Not for diagnostic use: not a medical device, not validated "
    "for clinical decisions."
)


@dataclass(frozen=True)
class Provenance:
    """Which model made an output and from what data (every output carries this)."""

    model_name: str
    model_version: str
    weights_sha256: str
    training_data: str
    software: str
    disclaimer: str = DISCLAIMER

    def to_dict(self) -> dict[str, str]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "weights_sha256": self.weights_sha256,
            "training_data": self.training_data,
            "software": self.software,
            "disclaimer": self.disclaimer,
        }


@dataclass(frozen=True)
class ImageInfo:
    """Facts about the source image the boxes refer to."""

    rows: int
    columns: int
    modality: str
    view_position: str
    pixel_spacing: tuple[float, float] | None

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.columns <= 0:
            raise ValueError(
                f"ImageInfo needs positive rows/columns, got {self.rows}x{self.columns}"
            )


@dataclass(frozen=True)
class RegionResult:
    """One region's detection and its 9 finding probabilities (vocab order).

    ``box`` is in source pixels, None when the detector found no box at or above its
    threshold; then ``found`` is False and the probabilities come from a zero feature vector.
    """

    region: Region
    box: BoundingBox | None
    score: float
    probabilities: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.probabilities) != len(FINDINGS):
            raise ValueError(
                f"{self.region.name}: expected {len(FINDINGS)} probabilities, "
                f"got {len(self.probabilities)}"
            )
        if not all(0.0 <= p <= 1.0 and math.isfinite(p) for p in self.probabilities):
            raise ValueError(f"{self.region.name}: probabilities must lie in [0, 1]")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"{self.region.name}: score {self.score} not in [0, 1]")

    @property
    def found(self) -> bool:
        return self.box is not None

    @property
    def name(self) -> str:
        return self.region.name

    def probability(self, key: str | int | Finding) -> float:
        return self.probabilities[finding(key).index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.region.index,
            "name": self.region.name,
            "abbreviation": self.region.abbreviation,
            "found": self.found,
            "box": None if self.box is None else [round(v, 2) for v in self.box.as_tuple()],
            "score": round(self.score, 4),
            "probabilities": {
                f.name: round(p, 4) for f, p in zip(FINDINGS, self.probabilities, strict=True)
            },
        }


@dataclass(frozen=True)
class Report:
    """What :meth:`Reporter.run` returns: the study, the 18 region results in vocab order,
    and the provenance of the model that made them."""

    study: StudyIdentity
    image: ImageInfo
    regions: tuple[RegionResult, ...]
    provenance: Provenance

    def __post_init__(self) -> None:
        names = tuple(r.region.name for r in self.regions)
        if names != tuple(r.name for r in REGIONS):
            raise ValueError(f"Report needs the {len(REGIONS)} regions in vocab order, got {names}")

    def region(self, key: str | int | Region) -> RegionResult:
        """The result of one region, by name, abbreviation or index."""
        return self.regions[region(key).index]

    def to_dict(self) -> dict[str, Any]:
        study = self.study
        return {
            "study": {
                "patient_id": study.patient_id,
                "study_instance_uid": study.study_instance_uid,
                "series_instance_uid": study.series_instance_uid,
                "sop_instance_uid": study.sop_instance_uid,
                "accession_number": study.accession_number,
                "study_date": study.study_date,
            },
            "image": {
                "rows": self.image.rows,
                "columns": self.image.columns,
                "modality": self.image.modality,
                "view_position": self.image.view_position,
                "pixel_spacing": self.image.pixel_spacing,
                "box_coordinates": "source pixels, (x1, y1, x2, y2), origin at the top-left "
                "corner of the top-left pixel",
            },
            "regions": [r.to_dict() for r in self.regions],
            "model": self.provenance.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
