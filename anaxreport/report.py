"""The result objects every outlet reads (DESIGN.md §2).

The model stage returns :class:`RegionFindings` (18 regions: box, score, 9 probabilities); the
rule layer (:mod:`anaxreport.rules`) turns them into a :class:`Report`: one :class:`RegionCall`
per region × finding, report :class:`Statement` s grouped into anatomical :class:`Section` s,
and an impression. Plain frozen dataclasses validated at construction (STYLE.md §2); no tensors
escape here, and the only pydicom object is the source header copy that the DICOM writers need.
Renderers are reached through the ``to_*`` methods and import lazily.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from .geometry import BoundingBox
from .ingest import Radiograph, StudyIdentity
from .render import pretty
from .vocab import FINDINGS, REGIONS, Finding, Laterality, Region, finding, region

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DISCLAIMER",
    "JSON_SCHEMA",
    "ImageInfo",
    "Provenance",
    "Refusal",
    "RegionCall",
    "RegionContributions",
    "RegionFindings",
    "RegionResult",
    "Report",
    "RuleInfo",
    "Section",
    "Statement",
]

#: Names the layout of :meth:`Report.to_dict`; bumped when a key changes meaning or goes away.
JSON_SCHEMA = "anaxreport.report/1"

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
    """Facts about the source image: its geometry (the boxes refer to it) and the technique
    the text report states, copied from the header."""

    rows: int
    columns: int
    modality: str
    view_position: str
    pixel_spacing: tuple[float, float] | None
    study_description: str = ""
    body_part_examined: str = ""
    photometric_interpretation: str = ""

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.columns <= 0:
            raise ValueError(
                f"ImageInfo needs positive rows/columns, got {self.rows}x{self.columns}"
            )

    @classmethod
    def from_radiograph(cls, radiograph: Radiograph) -> ImageInfo:
        header = radiograph.header
        return cls(
            rows=radiograph.rows,
            columns=radiograph.columns,
            modality=radiograph.modality,
            view_position=radiograph.view_position,
            pixel_spacing=radiograph.pixel_spacing,
            study_description=str(header.get("StudyDescription", "") or ""),
            body_part_examined=str(header.get("BodyPartExamined", "") or ""),
            photometric_interpretation=radiograph.photometric_interpretation,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": self.columns,
            "modality": self.modality,
            "view_position": self.view_position,
            "pixel_spacing": self.pixel_spacing,
            "study_description": self.study_description,
            "body_part_examined": self.body_part_examined,
            "box_coordinates": "source pixels, (x1, y1, x2, y2), origin at the top-left "
            "corner of the top-left pixel",
        }


def _check_probability(value: float, *what: str) -> None:
    """``value`` must be a probability; ``what`` names it (joined only for the error: this
    runs for every region × finding of every report)."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{' '.join(what)} must lie in [0, 1], got {value}")


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
        for f, p in zip(FINDINGS, self.probabilities, strict=True):
            _check_probability(p, self.region.name, f.name, "probability")
        _check_probability(self.score, self.region.name, "score")

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
class RegionContributions:
    """Why the model scored what it did, for the explanation overlays (``--explain``).

    ``shares`` [k, k, M]: entry [r, j, m] is region j's share of region r's logit for finding
    m (the head's ``contributions``: for AnaXNet, the attention weights and the classifier of
    eq. 5; a baseline region head uses each region's own feature alone). ``pixels`` is the
    radiograph's display image, which the overlays are drawn on. Both are read-only.
    """

    shares: np.ndarray
    pixels: np.ndarray
    method: str

    def __post_init__(self) -> None:
        k, m = len(REGIONS), len(FINDINGS)
        if self.shares.shape != (k, k, m):
            raise ValueError(f"shares must be {k}x{k}x{m}, got {self.shares.shape}")
        if self.pixels.ndim != 2:
            raise ValueError(f"pixels must be a 2-D image, got {self.pixels.shape}")
        self.shares.flags.writeable = False

    def drivers(self, finding: Finding, targets: tuple[int, ...]) -> np.ndarray:
        """Each region's share [k] of ``finding``'s logits in the ``targets`` regions."""
        return self.shares[list(targets), :, FINDINGS.index(finding)].sum(axis=0)


@dataclass(frozen=True)
class RegionFindings:
    """What the model stage returns: the 18 region results of one image, the per-finding
    operating thresholds of the model (calibrated on validation data, possibly overridden by
    the user) and the provenance. ``header`` is the source header without pixel data, for the
    DICOM writers (SR, GSPS); None when the findings were made by hand."""

    study: StudyIdentity
    image: ImageInfo
    regions: tuple[RegionResult, ...]
    thresholds: tuple[float, ...]
    provenance: Provenance
    header: Dataset | None = field(default=None, compare=False, repr=False)
    #: the explanation, when the model stage was asked for one
    contributions: RegionContributions | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = tuple(r.region.name for r in self.regions)
        if names != tuple(r.name for r in REGIONS):
            raise ValueError(f"needs the {len(REGIONS)} regions in vocab order, got {names}")
        if len(self.thresholds) != len(FINDINGS):
            raise ValueError(
                f"needs {len(FINDINGS)} thresholds (one per finding), got {len(self.thresholds)}"
            )
        for f, t in zip(FINDINGS, self.thresholds, strict=True):
            _check_probability(t, "threshold of", f.name)

    def region(self, key: str | int | Region) -> RegionResult:
        """The result of one region, by name, abbreviation or index."""
        return self.regions[region(key).index]

    def threshold(self, key: str | int | Finding) -> float:
        return self.thresholds[finding(key).index]


@dataclass(frozen=True)
class RegionCall:
    """The rule layer's decision for one region × finding.

    ``present`` is the call at region level (above threshold, plausible there, region found);
    ``reason`` says why not when it is False. The SR's Present/Absent and FHIR's region
    Observations come from these calls; statements may name fewer regions (precedence).
    """

    region: Region
    finding: Finding
    probability: float
    threshold: float
    present: bool
    reason: str = ""

    REASONS = ("", "below threshold", "not plausible in this region", "region not found")

    def __post_init__(self) -> None:
        # the usual case first, in one test (NaN and infinities fail it): 162 calls a report
        if not (0.0 <= self.probability <= 1.0 and 0.0 <= self.threshold <= 1.0):
            _check_probability(self.probability, self.region.name, self.finding.name, "probability")
            _check_probability(self.threshold, self.finding.name, "threshold")
        if self.reason not in self.REASONS:
            raise ValueError(f"RegionCall reason {self.reason!r} not one of {self.REASONS}")
        if self.present == bool(self.reason):
            raise ValueError("a present call has no reason; an absent call needs one")


#: The laterality words a statement can carry ("" for unpaired or unlocated statements).
STATEMENT_LATERALITIES = ("right", "left", "bilateral", "")


@dataclass(frozen=True)
class Statement:
    """One report statement: a finding, where, how sure.

    ``regions`` are the regions it names after precedence and the bilateral merge (empty for a
    finding reported without location, e.g. heart failure); ``probability`` is the lowest
    among them (a statement is as sure as its least sure part; for an unlocated finding, the
    highest of the regions where it is present); ``certainty`` is the word of its probability
    band ("" = stated plainly); ``text`` is the sentence as the rules wrote it.
    """

    finding: Finding
    laterality: str
    regions: tuple[Region, ...]
    probability: float
    certainty: str
    section: str
    weight: int
    text: str

    def __post_init__(self) -> None:
        if self.laterality not in STATEMENT_LATERALITIES:
            raise ValueError(
                f"Statement laterality {self.laterality!r} not in {STATEMENT_LATERALITIES}"
            )
        sides = {r.laterality for r in self.regions} - {Laterality.UNPAIRED}
        expected = {
            "right": {Laterality.RIGHT},
            "left": {Laterality.LEFT},
            "bilateral": {Laterality.RIGHT, Laterality.LEFT},
            "": set(),
        }
        if sides != expected[self.laterality]:
            raise ValueError(
                f"Statement laterality {self.laterality!r} does not match its regions "
                f"{[r.name for r in self.regions]}"
            )
        _check_probability(self.probability, self.finding.name, "statement probability")
        if not self.text:
            raise ValueError("Statement needs a sentence")

    def to_dict(self) -> dict[str, Any]:
        return {
            "finding": self.finding.name,
            "code": {
                "value": self.finding.code.value,
                "scheme": self.finding.code.scheme,
                "meaning": self.finding.code.meaning,
            },
            "laterality": self.laterality,
            "regions": [r.name for r in self.regions],
            "probability": round(self.probability, 4),
            "certainty": self.certainty,
            "section": self.section,
            "text": self.text,
        }


@dataclass(frozen=True)
class Section:
    """A findings section of the report by anatomy (lungs, pleura, heart and mediastinum)."""

    key: str
    title: str
    statements: tuple[Statement, ...]
    normal: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "statements": [s.text for s in self.statements],
            "normal": not self.statements,
            "text": " ".join(s.text for s in self.statements) or self.normal,
        }


@dataclass(frozen=True)
class RuleInfo:
    """Which rules made the statements: the rules file's name, version and sha256."""

    name: str
    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class Report:
    """What :meth:`Reporter.run` returns: the model's region findings and what the rules made
    of them. ``findings`` are the statements in section order; ``impression`` lists the
    statements' sentences by clinical weight, or the normal statement when nothing is present.
    """

    source: RegionFindings
    calls: tuple[RegionCall, ...]
    sections: tuple[Section, ...]
    impression: tuple[str, ...]
    rules: RuleInfo

    def __post_init__(self) -> None:
        expected = [(r, f) for r in REGIONS for f in FINDINGS]
        if [(c.region, c.finding) for c in self.calls] != expected:
            raise ValueError("Report needs one RegionCall per region × finding in vocab order")
        if not self.impression:
            raise ValueError("Report needs an impression (the normal statement if nothing else)")

    # the model's output, delegated so that report.regions etc. read naturally
    @property
    def study(self) -> StudyIdentity:
        return self.source.study

    @property
    def image(self) -> ImageInfo:
        return self.source.image

    @property
    def regions(self) -> tuple[RegionResult, ...]:
        return self.source.regions

    @property
    def provenance(self) -> Provenance:
        return self.source.provenance

    @property
    def header(self) -> Dataset | None:
        return self.source.header

    @property
    def findings(self) -> tuple[Statement, ...]:
        return tuple(s for section in self.sections for s in section.statements)

    @property
    def normal(self) -> bool:
        """True when no statement was made (nothing crossed its threshold where plausible)."""
        return not self.findings

    def region(self, key: str | int | Region) -> RegionResult:
        """The result of one region, by name, abbreviation or index."""
        return self.source.region(key)

    def call(self, region_key: str | int | Region, finding_key: str | int | Finding) -> RegionCall:
        """The rule layer's call for one region × finding."""
        return self.region_calls(region_key)[finding(finding_key).index]

    def region_calls(self, key: str | int | Region) -> tuple[RegionCall, ...]:
        """The rule layer's calls for one region, in finding order."""
        start = region(key).index * len(FINDINGS)
        return self.calls[start : start + len(FINDINGS)]

    @cached_property  # a Report never changes; renderers ask for these a hundred times
    def thresholds(self) -> tuple[float, ...]:
        """The per-finding thresholds the rules applied (model, rules file or user's)."""
        return tuple(c.threshold for c in self.calls[: len(FINDINGS)])

    @cached_property
    def result_key(self) -> tuple[str, ...]:
        """What makes one result, and so the UIDs and ids derived from it
        (:mod:`.render.uids`): the input image, the weights, the rules and the thresholds."""
        return (
            self.study.sop_instance_uid,
            self.provenance.weights_sha256,
            self.rules.sha256,
            ",".join(f"{t:.6g}" for t in self.thresholds),
        )

    def present_calls(self) -> tuple[RegionCall, ...]:
        return self._present_calls

    @cached_property
    def _present_calls(self) -> tuple[RegionCall, ...]:
        return tuple(c for c in self.calls if c.present)

    def to_dict(self) -> dict[str, Any]:
        study = self.study
        return {
            "schema": JSON_SCHEMA,
            "study": {
                "patient_id": study.patient_id,
                "study_instance_uid": study.study_instance_uid,
                "series_instance_uid": study.series_instance_uid,
                "sop_instance_uid": study.sop_instance_uid,
                "accession_number": study.accession_number,
                "study_date": study.study_date,
            },
            "image": self.image.to_dict(),
            "regions": [r.to_dict() for r in self.regions],
            "thresholds": {
                f.name: round(t, 4) for f, t in zip(FINDINGS, self.thresholds, strict=True)
            },
            "findings": [s.to_dict() for s in self.findings],
            "sections": [s.to_dict() for s in self.sections],
            "impression": list(self.impression),
            "normal": self.normal,
            "present": [
                {
                    "region": c.region.name,
                    "finding": c.finding.name,
                    "probability": round(c.probability, 4),
                }
                for c in self.present_calls()
            ],
            "rules": self.rules.to_dict(),
            "model": self.provenance.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return pretty.dumps(self.to_dict(), indent)

    def to_text(self, template: str | os.PathLike[str] | None = None) -> str:
        """The text report from the shipped Jinja2 template or the one at ``template``."""
        if template is None:
            return self._shipped_text
        from .render.text import render_text

        return render_text(self, template)

    @cached_property
    def _shipped_text(self) -> str:
        """The shipped template's text, made once: the FHIR Bundle embeds it as well."""
        from .render.text import render_text

        return render_text(self)

    def to_fhir(self, version: str = "R4B") -> dict[str, Any]:
        """A FHIR Bundle (R4B or R5) as a JSON-ready dict."""
        from .render.fhir import render_fhir

        return render_fhir(self, version)

    def to_sr(self) -> Dataset:
        """A DICOM Comprehensive 3D SR (TID 1500) with the region boxes and calls.

        Its elements and sequences are its own, but many nested items (concept names, finding
        sites, the Present/Absent items) are shared with other SRs this process renders and are
        read-only (:mod:`anaxreport.render.shared`): changing one raises ``TypeError``. To edit
        nested items, ``copy.deepcopy`` the data set first; the copy is an ordinary one.
        """
        from .render.sr import render_sr

        return render_sr(self)

    def to_sr_file(self) -> bytes:
        """:meth:`to_sr` as a DICOM file (PS3.10), written without making the data set: what
        the CLI, the batch CLI and the node store and send."""
        from .render.sr import write_sr

        return write_sr(self)

    def to_gsps(self) -> Dataset:
        """A Grayscale Softcopy Presentation State drawing the same boxes and labels."""
        from .render.gsps import render_gsps

        return render_gsps(self)

    def to_gsps_file(self) -> bytes:
        """:meth:`to_gsps` as a DICOM file (PS3.10)."""
        from .render.gsps import write_gsps

        return write_gsps(self)

    def to_explanation_png(self) -> bytes:
        """The explanation overlays (which regions drove each finding) as PNG bytes; needs
        findings made with ``explain`` (:meth:`Reporter.explain`)."""
        from .render.explain import render_overlay_png, report_overlay

        return render_overlay_png(report_overlay(self))

    def to_explanation_sc(self) -> Dataset:
        """The explanation overlays as a DICOM Secondary Capture in the source's study."""
        from .render.explain import render_overlay_sc, report_overlay

        return render_overlay_sc(report_overlay(self))


#: Names the layout of :meth:`Refusal.to_dict`.
REFUSAL_SCHEMA = "anaxreport.refusal/1"


@dataclass(frozen=True)
class Refusal:
    """An input the gate refused: who and what it was, why, and who refused it. Outlets write
    it where a report would go, so a refused study is visible downstream, not silently absent.
    ``image`` and ``header`` are None when the header could not be read."""

    study: StudyIdentity
    reason: str
    message: str
    source: str
    provenance: Provenance
    image: ImageInfo | None = None
    header: Dataset | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.reason or not self.message:
            raise ValueError("a Refusal needs a reason code and a message")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REFUSAL_SCHEMA,
            "status": "refused",
            "reason": self.reason,
            "message": self.message,
            "source": self.source,
            "sop_instance_uid": self.study.sop_instance_uid,
            "study_instance_uid": self.study.study_instance_uid,
            "patient_id": self.study.patient_id,
            "model": self.provenance.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return pretty.dumps(self.to_dict(), indent)

    def to_fhir(self, version: str = "R4B") -> dict[str, Any]:
        """A FHIR Bundle whose DiagnosticReport is ``cancelled`` with the reason."""
        from .render.fhir import render_refusal

        return render_refusal(self, version)
